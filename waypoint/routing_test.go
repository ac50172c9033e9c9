package waypoint

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

func TestWeightedSplit(t *testing.T) {
	v1, v2 := &named{name: "v1"}, &named{name: "v2"}
	cl := model.L7Cluster{
		Name: "outbound|9080||reviews.default.svc.cluster.local",
		Endpoints: []model.L7Endpoint{
			{Address: backend(t, v1), Labels: map[string]string{"version": "v1"}},
			{Address: backend(t, v2), Labels: map[string]string{"version": "v2"}},
		},
		Subsets: []model.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}},
	}
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "split", Destinations: []model.WeightedDestination{
		{Cluster: cl.Name, Subset: "v1", Weight: 90}, {Cluster: cl.Name, Subset: "v2", Weight: 10},
	}}), nil)
	client := newClient(t)
	const n = 2000
	counts := map[string]int{}
	for i := 0; i < n; i++ {
		code, body := h.get(t, client, "/reviews", nil)
		if code != 200 {
			t.Fatalf("GET /reviews = %d %q; want 200", code, body)
		}
		counts[body]++
	}
	checkShare(t, fmt.Sprintf("v2's requests (counts %v)", counts), counts["v2"], n, 0.10)
	if got := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"reporter": "waypoint", "response_code": "200", "destination_version": "v2"}); got != float64(counts["v2"]) {
		t.Errorf("istio_requests_total{destination_version=v2} = %v; want %d", got, counts["v2"])
	}
}

// TestWeightedDirectResponse: a destination that answers itself (meshd's
// translation of a backendRef that does not resolve) takes its weight's
// share of the requests, answered 500, and the others reach the backend.
func TestWeightedDirectResponse(t *testing.T) {
	a := &named{name: "a"}
	cl := clusterOf("a", backend(t, a))
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "split", Destinations: []model.WeightedDestination{
		{Cluster: cl.Name, Weight: 1},
		{Weight: 1, DirectResponse: &model.DirectResponse{Status: http.StatusInternalServerError}, ResponseHeaders: model.HeaderOps{Set: map[string]string{"x-dest": "invalid"}}},
	}}), nil)
	client := newClient(t)
	const n = 1000
	codes := map[int]int{}
	for i := 0; i < n; i++ {
		req, _ := http.NewRequest(http.MethodGet, h.url+"/reviews", nil)
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("GET /reviews: %v", err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		codes[resp.StatusCode]++
		switch resp.StatusCode {
		case http.StatusOK:
			if string(body) != "a" {
				t.Fatalf("GET /reviews = 200 %q; want 200 from backend a", body)
			}
		case http.StatusInternalServerError:
			if got := resp.Header.Get("x-dest"); got != "invalid" {
				t.Fatalf("GET /reviews = 500 with x-dest %q; want the destination's response header \"invalid\"", got)
			}
		default:
			t.Fatalf("GET /reviews = %d %q; want 200 or 500", resp.StatusCode, body)
		}
	}
	checkShare(t, fmt.Sprintf("requests answered 500 (codes %v)", codes), codes[http.StatusInternalServerError], n, 0.5)
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.n != codes[http.StatusOK] {
		t.Errorf("backend a served %d requests; want the %d answered 200", a.n, codes[http.StatusOK])
	}
}

func TestMatchRouting(t *testing.T) {
	v1, v2, v3 := &named{name: "v1"}, &named{name: "v2"}, &named{name: "v3"}
	clusters := []model.L7Cluster{clusterOf("v1", backend(t, v1)), clusterOf("v2", backend(t, v2)), clusterOf("v3", backend(t, v3))}
	cfg := oneRoute(clusters,
		model.L7Route{Name: "jason", Matches: []model.RouteMatch{{Headers: []model.HeaderMatch{{Name: "end-user", Value: model.StringMatch{Exact: "jason"}}}}}, Destinations: to("v2")},
		model.L7Route{Name: "regex", Matches: []model.RouteMatch{{URI: &model.StringMatch{Regex: "/api/v[0-9]+/echo"}}}, Destinations: to("v3")},
		model.L7Route{Name: "query", Matches: []model.RouteMatch{{QueryParams: []model.HeaderMatch{{Name: "canary", Value: model.StringMatch{Exact: "yes"}}}}}, Destinations: to("v3")},
		model.L7Route{Name: "method", Matches: []model.RouteMatch{{Method: &model.StringMatch{Exact: "DELETE"}}}, DirectResponse: &model.DirectResponse{Status: 405, Body: "no deletes"}},
		model.L7Route{Name: "secure", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/login"}}}, Redirect: &model.Redirect{Scheme: "https", Code: 301}},
		model.L7Route{Name: "old", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/old"}}}, Redirect: &model.Redirect{URI: "/new", Code: 308}},
		model.L7Route{Name: "rewrite", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/legacy/"}}}, Rewrite: &model.Rewrite{URIPrefix: "/v2/"}, Destinations: to("v2"),
			RequestHeaders: model.HeaderOps{Set: map[string]string{"X-Route": "rewrite"}}, ResponseHeaders: model.HeaderOps{Set: map[string]string{"X-Served-By": "waypoint"}}},
		model.L7Route{Name: "default", Destinations: to("v1")},
	)
	h := start(t, cfg, nil)
	client := newClient(t)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	tests := []struct {
		name, method, path string
		hdr                map[string]string
		wantCode           int
		wantBody           string
	}{
		{name: "end-user jason goes to v2", path: "/productpage", hdr: map[string]string{"end-user": "jason"}, wantCode: 200, wantBody: "v2"},
		{name: "other user goes to v1", path: "/productpage", hdr: map[string]string{"end-user": "alice"}, wantCode: 200, wantBody: "v1"},
		{name: "regex uri", path: "/api/v12/echo", wantCode: 200, wantBody: "v3"},
		{name: "regex is anchored", path: "/api/v1/echo/x", wantCode: 200, wantBody: "v1"},
		{name: "query param", path: "/x?canary=yes", wantCode: 200, wantBody: "v3"},
		{name: "direct response", method: "DELETE", path: "/x", wantCode: 405, wantBody: "no deletes"},
		{name: "redirect", path: "/old/page", wantCode: 308},
		{name: "https redirect", path: "/login?next=%2Fhome", wantCode: 301},
		{name: "rewrite", path: "/legacy/item", wantCode: 200, wantBody: "v2"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			method := tt.method
			if method == "" {
				method = http.MethodGet
			}
			req, _ := http.NewRequest(method, h.url+tt.path, nil)
			for k, v := range tt.hdr {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			body := string(b)
			if resp.StatusCode != tt.wantCode || (tt.wantBody != "" && !strings.Contains(body, tt.wantBody)) {
				t.Errorf("%s %s = %d %q; want %d %q", method, tt.path, resp.StatusCode, body, tt.wantCode, tt.wantBody)
			}
			if tt.name == "redirect" && resp.Header.Get("Location") != "http://"+h.addr+"/new" {
				t.Errorf("Location = %q; want http://%s/new", resp.Header.Get("Location"), h.addr)
			}
			if host, _, _ := strings.Cut(h.addr, ":"); tt.name == "https redirect" && resp.Header.Get("Location") != "https://"+host+"/login?next=%2Fhome" {
				t.Errorf("Location = %q; want https://%s/login?next=%%2Fhome (the http port dropped)", resp.Header.Get("Location"), host)
			}
			if tt.name == "rewrite" {
				last := v2.lastRequest()
				if last.URL.Path != "/v2/item" || last.Header.Get("X-Route") != "rewrite" {
					t.Errorf("upstream saw path %q X-Route %q; want /v2/item rewrite", last.URL.Path, last.Header.Get("X-Route"))
				}
				if resp.Header.Get("X-Served-By") != "waypoint" {
					t.Errorf("response X-Served-By = %q; want waypoint", resp.Header.Get("X-Served-By"))
				}
			}
		})
	}
}

func TestUpdateSwapsConfig(t *testing.T) {
	v1, v2 := &named{name: "v1"}, &named{name: "v2"}
	clusters := []model.L7Cluster{clusterOf("v1", backend(t, v1)), clusterOf("v2", backend(t, v2))}
	h := start(t, oneRoute(clusters, model.L7Route{Name: "r", Destinations: to("v1")}), nil)
	client := newClient(t)
	if _, body := h.get(t, client, "/", nil); body != "v1" {
		t.Fatalf("before Update: body %q; want v1", body)
	}
	if err := h.proxy.Update(oneRoute(clusters, model.L7Route{Name: "r", Destinations: to("nope")})); err == nil {
		t.Fatal("Update(unknown cluster) = nil; want an error")
	}
	if _, body := h.get(t, client, "/", nil); body != "v1" {
		t.Fatalf("after a rejected Update: body %q; want v1 (old config kept)", body)
	}
	if err := h.proxy.Update(oneRoute(clusters, model.L7Route{Name: "r", Destinations: to("v2")})); err != nil {
		t.Fatal(err)
	}
	if _, body := h.get(t, client, "/", nil); body != "v2" {
		t.Fatalf("after Update: body %q; want v2", body)
	}
}

// TestRewriteURI: rewrite.uri as Istio has it: a prefix match has its
// matched prefix replaced (case-insensitively with ignoreUriCase), an exact
// match the whole path, a PathPrefix match its matched segments, and a
// route that does not match on the URI the leading "/" (Envoy's implicit
// prefix match).
func TestRewriteURI(t *testing.T) {
	v2 := &named{name: "v2"}
	rewrite := func(name, to string, m model.RouteMatch) model.L7Route {
		return model.L7Route{Name: name, Matches: []model.RouteMatch{m}, Rewrite: &model.Rewrite{URIPrefix: to}, Destinations: []model.WeightedDestination{{Cluster: "v2", Weight: 100}}}
	}
	cfg := oneRoute([]model.L7Cluster{clusterOf("v2", backend(t, v2))},
		rewrite("exact", "/replaced", model.RouteMatch{URI: &model.StringMatch{Exact: "/exact/path"}}),
		rewrite("any case", "/v3/", model.RouteMatch{URI: &model.StringMatch{Prefix: "/api/", IgnoreCase: true}}),
		rewrite("by header", "/v2/", model.RouteMatch{Headers: []model.HeaderMatch{{Name: "x-rewrite", Value: model.StringMatch{Exact: "yes"}}}}),
		rewrite("segments", "/v4", model.RouteMatch{URI: &model.StringMatch{PathPrefix: "/seg/"}}),
		rewrite("segments to root", "/", model.RouteMatch{URI: &model.StringMatch{PathPrefix: "/root"}}),
	)
	h := start(t, cfg, nil)
	client := newClient(t)
	for _, tt := range []struct {
		path, header, want string
	}{
		{"/exact/path", "", "/replaced"},
		{"/API/items/1", "", "/v3/items/1"},
		{"/foo/bar", "yes", "/v2/foo/bar"},
		{"/seg/items", "", "/v4/items"},
		{"/seg", "", "/v4"},
		{"/root/x", "", "/x"},
		{"/root", "", "/"},
	} {
		hdr := map[string]string{}
		if tt.header != "" {
			hdr["x-rewrite"] = tt.header
		}
		if code, body := h.get(t, client, tt.path, hdr); code != 200 {
			t.Fatalf("GET %s = %d %q; want 200", tt.path, code, body)
		}
		if got := v2.lastRequest().URL.Path; got != tt.want {
			t.Errorf("GET %s reached the backend as %s; want %s", tt.path, got, tt.want)
		}
	}
}

// TestRedirectDerivePort: Istio's redirect derivePort: FROM_REQUEST_PORT
// keeps the request's port even to another scheme, FROM_PROTOCOL_DEFAULT
// drops it (the scheme's default port).
func TestRedirectDerivePort(t *testing.T) {
	redirect := func(name, prefix string, rd model.Redirect) model.L7Route {
		return model.L7Route{Name: name, Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: prefix}}}, Redirect: &rd}
	}
	h := start(t, oneRoute(nil,
		redirect("keep", "/keep", model.Redirect{Scheme: "https", DerivePort: "FROM_REQUEST_PORT", Code: 302}),
		redirect("default", "/default", model.Redirect{Authority: "shop.example:8443", DerivePort: "FROM_PROTOCOL_DEFAULT", Code: 302}),
	), nil)
	client := newClient(t)
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	host, port, _ := strings.Cut(h.addr, ":")
	for _, tt := range []struct{ path, want string }{
		{"/keep/x", "https://" + host + ":" + port + "/keep/x"},
		{"/default/x", "http://shop.example/default/x"},
	} {
		resp, err := client.Get(h.url + tt.path)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if got := resp.Header.Get("Location"); resp.StatusCode != 302 || got != tt.want {
			t.Errorf("GET %s = %d Location %q; want 302 %q", tt.path, resp.StatusCode, got, tt.want)
		}
	}
}

// TestPathPrefixMatch: a PathPrefix matches whole path segments (Gateway
// API), a trailing slash in it ignored; "/" matches every path.
func TestPathPrefixMatch(t *testing.T) {
	tests := []struct {
		prefix     string
		ignoreCase bool
		path       string
		want       bool
	}{
		{prefix: "/api", path: "/api", want: true},
		{prefix: "/api", path: "/api/", want: true},
		{prefix: "/api", path: "/api/x", want: true},
		{prefix: "/api", path: "/apiv2", want: false},
		{prefix: "/api", path: "/ap", want: false},
		{prefix: "/api/", path: "/api", want: true},
		{prefix: "/api/", path: "/api/", want: true},
		{prefix: "/api/", path: "/api/x", want: true},
		{prefix: "/api/", path: "/apiv2", want: false},
		{prefix: "/api/", path: "/ap", want: false},
		{prefix: "/", path: "/", want: true},
		{prefix: "/", path: "/api", want: true},
		{prefix: "/", path: "/apiv2/x", want: true},
		{prefix: "/api", path: "/API/x", want: false},
		{prefix: "/api", ignoreCase: true, path: "/API/x", want: true},
		{prefix: "/API", ignoreCase: true, path: "/api", want: true},
		{prefix: "/API", ignoreCase: true, path: "/apiv2", want: false},
	}
	for _, tt := range tests {
		m, err := compileStr(&model.StringMatch{PathPrefix: tt.prefix, IgnoreCase: tt.ignoreCase})
		if err != nil {
			t.Fatalf("compileStr(PathPrefix %q) = %v", tt.prefix, err)
		}
		if got := m.match(tt.path); got != tt.want {
			t.Errorf("PathPrefix %q (ignoreCase %v) on %q = %v; want %v", tt.prefix, tt.ignoreCase, tt.path, got, tt.want)
		}
	}
}

// TestVirtualHostByDestination: a waypoint picks the virtual host of the
// service the client dialled (the HBONE target), not the Host header: an
// ingress gateway's request carrying its external Host reaches the
// service's routes, and a Host naming another service does not route the
// request there (policies apply by the dialled service too). Without a
// dialled service (an ingress gateway's own listener) the Host decides.
func TestVirtualHostByDestination(t *testing.T) {
	reviews := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "reviews") }))
	ratings := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { fmt.Fprint(w, "ratings") }))
	cfg := &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", VirtualHosts: []model.VirtualHost{
			{Name: "reviews.shop.svc.cluster.local", Domains: []string{"reviews.shop.svc.cluster.local", "reviews"}, Routes: []model.L7Route{{Name: "r", Destinations: to("reviews")}}},
			{Name: "ratings.shop.svc.cluster.local", Domains: []string{"ratings.shop.svc.cluster.local", "ratings"}, Routes: []model.L7Route{{Name: "r", Destinations: to("ratings")}}},
		}}},
		Clusters: []model.L7Cluster{clusterOf("reviews", reviews), clusterOf("ratings", ratings)},
	}}
	var dialled atomic.Value
	dialled.Store("")
	h := start(t, cfg, func(o *Options) {
		o.Peer = func(*http.Request) Peer { return Peer{DestinationService: dialled.Load().(string)} }
	})
	client := newClient(t)
	for _, tt := range []struct {
		dialled, host, want string
		code                int
	}{
		{"reviews.shop.svc.cluster.local", "bookinfo.example.com", "reviews", 200},
		{"reviews.shop.svc.cluster.local", "ratings", "reviews", 200},
		{"", "ratings", "ratings", 200},
		{"", "bookinfo.example.com", "", 404},
	} {
		dialled.Store(tt.dialled)
		code, body := h.get(t, client, "/", map[string]string{"Host": tt.host})
		if code != tt.code || code == 200 && body != tt.want {
			t.Errorf("dialled %q, Host %q: %d %q; want %d %q", tt.dialled, tt.host, code, body, tt.code, tt.want)
		}
	}
}
