package waypoint

import (
	"bufio"
	"context"
	"io"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// authzSeen records what an authorizer was asked.
type authzSeen struct {
	mu    sync.Mutex
	paths []string
	last  map[string]string // headers of the last check
	body  string
}

func (s *authzSeen) record(path string, h map[string]string, body string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.paths = append(s.paths, path)
	s.last, s.body = h, body
}

func (s *authzSeen) get() ([]string, map[string]string, string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]string(nil), s.paths...), s.last, s.body
}

// httpAuthz is an HTTP ext_authz server like Istio's sample: it allows a
// request carrying "x-ext-authz: allow" and denies the rest with 403.
func httpAuthz(t *testing.T, seen *authzSeen) string {
	return backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h := map[string]string{"host": r.Host}
		for k := range r.Header {
			h[strings.ToLower(k)] = r.Header.Get(k)
		}
		b, _ := io.ReadAll(r.Body)
		seen.record(r.URL.RequestURI(), h, string(b))
		if r.Header.Get("X-Ext-Authz") == "allow" {
			w.Header().Set("X-Ext-Authz-Check-Result", "allowed")
			w.Header().Set("X-User", "alice")
			w.Header().Set("X-Internal", "not for anyone")
			return
		}
		w.Header().Set("X-Ext-Authz-Check-Result", "denied")
		w.WriteHeader(http.StatusForbidden)
		io.WriteString(w, "denied by ext_authz for not having the header")
	}))
}

// authzConfig routes everything to app, with a CUSTOM policy sending
// /admin requests to provider p.
func authzConfig(app string, p model.ExtAuthz, authzAddr string) *Config {
	clusters := []model.L7Cluster{clusterOf("app", app)}
	if authzAddr != "" {
		clusters = append(clusters, clusterOf("authz", authzAddr))
		p.Cluster = "authz"
	}
	cfg := oneRoute(clusters, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.ExtAuthz = []model.ExtAuthz{p}
	cfg.Policies = []*policy.Policy{{Namespace: "shop", Name: "ext", Action: policy.Custom, Provider: "authz",
		Rules: []policy.Rule{{To: []policy.Operation{{Paths: []string{"/admin*"}}}}}}}
	return cfg
}

func TestExtAuthzHTTP(t *testing.T) {
	app := &named{name: "app"}
	appAddr := backend(t, app)
	seen := &authzSeen{}
	authz := httpAuthz(t, seen)
	spec := model.ExtAuthz{Name: "authz", PathPrefix: "/check", IncludeRequestHeaders: []string{"x-ext-authz", "x-b3-*"},
		AdditionalHeaders: map[string]string{"X-From": "waypoint"}, HeadersToUpstreamOnAllow: []string{"x-user"},
		HeadersToDownstreamOnAllow: []string{"x-ext-authz-check-result"}}
	h := start(t, authzConfig(appAddr, spec, authz), nil)
	client := newClient(t)

	if code, body := h.get(t, client, "/public", nil); code != 200 || body != "app" {
		t.Fatalf("GET /public = %d %q; want the app's 200 (no CUSTOM rule matches)", code, body)
	}
	if paths, _, _ := seen.get(); len(paths) != 0 {
		t.Errorf("the authorizer was asked about %v; want nothing for /public", paths)
	}

	// Allowed: the authorizer saw the prefixed path and the listed
	// headers only; the app gets the header the authorizer adds.
	req, _ := http.NewRequest(http.MethodGet, h.url+"/admin/users?page=2", nil)
	req.Host = "shop.example"
	req.Header.Set("X-Ext-Authz", "allow")
	req.Header.Set("X-B3-Traceid", "abc")
	req.Header.Set("X-Secret", "keep me")
	req.Header.Set("X-User", "mallory") // overwritten by the authorizer's
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Ext-Authz-Check-Result") != "allowed" || resp.Header.Get("X-Internal") != "" {
		t.Errorf("allowed request = %d, check result %q, x-internal %q; want 200, allowed, none", resp.StatusCode, resp.Header.Get("X-Ext-Authz-Check-Result"), resp.Header.Get("X-Internal"))
	}
	paths, hdr, _ := seen.get()
	if len(paths) != 1 || paths[0] != "/check/admin/users?page=2" {
		t.Errorf("authorizer asked about %v; want /check/admin/users?page=2", paths)
	}
	if hdr["x-ext-authz"] != "allow" || hdr["x-b3-traceid"] != "abc" || hdr["x-from"] != "waypoint" || hdr["host"] != "shop.example" || hdr["x-secret"] != "" {
		t.Errorf("authorizer saw headers %v; want x-ext-authz, x-b3-traceid, x-from and the host, not x-secret", hdr)
	}
	if got := app.lastRequest(); got == nil || got.Header.Get("X-User") != "alice" || got.Header.Get("X-Secret") != "keep me" {
		t.Errorf("app got %v; want x-user alice from the authorizer and the client's other headers", got.Header)
	}

	// Denied: the authorizer's status, body and headers; the app never
	// sees the request; the access log flags UAEX.
	served := app.count()
	resp, err = client.Do(mustRequest(t, h.url+"/admin/users", nil))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 403 || string(body) != "denied by ext_authz for not having the header" || resp.Header.Get("X-Ext-Authz-Check-Result") != "denied" {
		t.Errorf("denied request = %d %q (check result %q); want the authorizer's 403, body and header", resp.StatusCode, body, resp.Header.Get("X-Ext-Authz-Check-Result"))
	}
	if app.count() != served {
		t.Error("a denied request reached the app")
	}
	if n := h.log.countFlag(t, flagExtAuthzDenied); n != 1 {
		t.Errorf("%d access log lines flagged UAEX; want 1", n)
	}
}

func mustRequest(t *testing.T, url string, hdr map[string]string) *http.Request {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "shop.example"
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	return req
}

// TestExtAuthzFailures: an authorizer that cannot be reached denies with
// statusOnError (403 by default) unless failOpen; a policy naming a
// provider the config lacks denies (fail closed); a body over the limit is
// 413 unless partial bodies are allowed, and the authorizer sees at most
// the limit while the app gets the whole body.
func TestExtAuthzFailures(t *testing.T) {
	app := &named{name: "app"}
	appAddr := backend(t, app)
	down := tcpBackend(t, func(c net.Conn) {}) // closes every connection at once
	client := newClient(t)
	for _, tt := range []struct {
		name string
		spec model.ExtAuthz
		addr string
		want int
	}{
		{"unreachable: 403", model.ExtAuthz{Name: "authz"}, down, 403},
		{"unreachable with statusOnError 503", model.ExtAuthz{Name: "authz", StatusOnError: 503}, down, 503},
		{"unreachable, failOpen", model.ExtAuthz{Name: "authz", FailOpen: true}, down, 200},
		{"no service: 403", model.ExtAuthz{Name: "authz"}, "", 403},
		{"provider not configured: 403", model.ExtAuthz{Name: "other"}, down, 403},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, authzConfig(appAddr, tt.spec, tt.addr), nil)
			if code, _ := h.get(t, client, "/admin", map[string]string{"X-Ext-Authz": "allow"}); code != tt.want {
				t.Errorf("GET /admin = %d; want %d", code, tt.want)
			}
		})
	}

	seen := &authzSeen{}
	authz := httpAuthz(t, seen)
	post := func(h *harness) (int, string) {
		req, _ := http.NewRequest(http.MethodPost, h.url+"/admin", strings.NewReader("0123456789"))
		req.Header.Set("X-Ext-Authz", "allow")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}
	h := start(t, authzConfig(appAddr, model.ExtAuthz{Name: "authz", IncludeRequestHeaders: []string{"x-ext-authz"}, IncludeBody: &model.ExtAuthzBody{MaxBytes: 4}}, authz), nil)
	if code, _ := post(h); code != http.StatusRequestEntityTooLarge {
		t.Errorf("POST 10 bytes, limit 4 = %d; want 413", code)
	}
	bodyApp := &bodyRecorder{}
	h = start(t, authzConfig(backend(t, bodyApp), model.ExtAuthz{Name: "authz", IncludeRequestHeaders: []string{"x-ext-authz"}, IncludeBody: &model.ExtAuthzBody{MaxBytes: 4, AllowPartial: true}}, authz), nil)
	if code, _ := post(h); code != 200 {
		t.Fatalf("POST with a partial body allowed = %d; want 200", code)
	}
	if _, _, body := seen.get(); body != "0123" {
		t.Errorf("authorizer saw body %q; want the first 4 bytes", body)
	}
	if got := bodyApp.get(); got != "0123456789" {
		t.Errorf("app got body %q; want all 10 bytes", got)
	}
}

type bodyRecorder struct {
	mu   sync.Mutex
	body string
}

func (b *bodyRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	data, _ := io.ReadAll(r.Body)
	b.mu.Lock()
	b.body = string(data)
	b.mu.Unlock()
}

func (b *bodyRecorder) get() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.body
}

// grpcAuthz is Envoy's Authorization service: it allows requests with
// "x-ext-authz: allow" (adding a header for the app and one for the
// client) and denies the rest with 401.
type grpcAuthz struct {
	authv3.UnimplementedAuthorizationServer
	seen *authzSeen
}

func (g *grpcAuthz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	hr := req.GetAttributes().GetRequest().GetHttp()
	g.seen.record(hr.GetPath(), hr.GetHeaders(), string(hr.GetRawBody()))
	if hr.GetHeaders()["x-ext-authz"] == "allow" {
		return &authv3.CheckResponse{Status: &status.Status{Code: 0}, HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: &authv3.OkHttpResponse{
			Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-user", Value: "bob"}},
				// Not header fields: dropped.
				{Header: &corev3.HeaderValue{Key: ":path", Value: "/evil"}}, {Header: &corev3.HeaderValue{Key: "x-split", Value: "a\r\nx-injected: 1"}}},
			HeadersToRemove:      []string{"x-ext-authz"},
			ResponseHeadersToAdd: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-ext-authz-check-result", Value: "allowed"}}},
		}}}, nil
	}
	return &authv3.CheckResponse{Status: &status.Status{Code: 7}, HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
		Status:  &typev3.HttpStatus{Code: typev3.StatusCode_Unauthorized},
		Headers: []*corev3.HeaderValueOption{{Header: &corev3.HeaderValue{Key: "x-ext-authz-check-result", Value: "denied"}}},
		Body:    "denied by the gRPC authorizer",
	}}}, nil
}

func TestExtAuthzGRPC(t *testing.T) {
	seen := &authzSeen{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, &grpcAuthz{seen: seen})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)

	app := &named{name: "app"}
	h := start(t, authzConfig(backend(t, app), model.ExtAuthz{Name: "authz", GRPC: true, Authority: "authz.shop.svc.cluster.local:9000"}, l.Addr().String()), nil)
	client := newClient(t)
	resp, err := client.Do(mustRequest(t, h.url+"/admin/users?page=2", map[string]string{"X-Ext-Authz": "allow"}))
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("X-Ext-Authz-Check-Result") != "allowed" {
		t.Errorf("allowed request = %d (check result %q); want 200, allowed", resp.StatusCode, resp.Header.Get("X-Ext-Authz-Check-Result"))
	}
	if got := app.lastRequest(); got == nil || got.Header.Get("X-User") != "bob" || got.Header.Get("X-Ext-Authz") != "" ||
		got.URL.Path != "/admin/users" || got.Header.Get("X-Split") != "" || got.Header.Get("X-Injected") != "" {
		t.Errorf("app got %v with headers %v; want x-user bob added, x-ext-authz removed, and nothing else the authorizer sent", got.URL, got.Header)
	}
	paths, hdr, _ := seen.get()
	if len(paths) != 1 || paths[0] != "/admin/users?page=2" || hdr[":authority"] != "shop.example" || hdr["x-ext-authz"] != "allow" {
		t.Errorf("authorizer asked about %v with headers %v; want /admin/users?page=2 from shop.example", paths, hdr)
	}

	resp, err = client.Do(mustRequest(t, h.url+"/admin/users", nil))
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 401 || string(body) != "denied by the gRPC authorizer" || resp.Header.Get("X-Ext-Authz-Check-Result") != "denied" {
		t.Errorf("denied request = %d %q (check result %q); want the authorizer's 401, body and header", resp.StatusCode, body, resp.Header.Get("X-Ext-Authz-Check-Result"))
	}
}

// TestRouteExtAuthz: a route's own authorizer (Gateway API's ExternalAuth
// filter) checks every request of that route and no other's, after the
// policies: over HTTP with the path prefix, Authorization and the allowed
// headers only, its answer's headers (not its framing or Content-Type)
// going upstream, a denial answered with its status; over gRPC with only
// the allowed headers; an authorizer that cannot be reached denies.
func TestRouteExtAuthz(t *testing.T) {
	seen := &authzSeen{}
	authzHTTP := httpAuthz(t, seen)
	gseen := &authzSeen{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, &grpcAuthz{seen: gseen})
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	app := &named{name: "app"}
	appAddr := backend(t, app)
	prefix := func(p string) []model.RouteMatch { return []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: p}}} }
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", appAddr), clusterOf("authz", authzHTTP), clusterOf("gauthz", l.Addr().String()), clusterOf("down", "127.0.0.1:1")},
		model.L7Route{Name: "http", Matches: prefix("/http"), Destinations: to("app"), ExtAuthz: &model.ExtAuthz{
			Name: "HTTPRoute/shop/web/http", Cluster: "authz", Authority: "authz.shop.svc.cluster.local:8000", PathPrefix: "/check",
			IncludeRequestHeaders: []string{"Authorization", "X-Ext-Authz"}, HeadersToUpstreamOnAllow: []string{"*"}}},
		model.L7Route{Name: "grpc", Matches: prefix("/grpc"), Destinations: to("app"), ExtAuthz: &model.ExtAuthz{
			Name: "HTTPRoute/shop/web/grpc", GRPC: true, Cluster: "gauthz", Authority: "gauthz.shop.svc.cluster.local:9000",
			IncludeRequestHeaders: []string{"x-ext-authz"}}},
		model.L7Route{Name: "down", Matches: prefix("/down"), Destinations: to("app"), ExtAuthz: &model.ExtAuthz{
			Name: "HTTPRoute/shop/web/down", Cluster: "down", Authority: "down:1"}},
		model.L7Route{Name: "open", Destinations: to("app")})
	h := start(t, cfg, nil)
	client := newClient(t)
	do := func(path string, hdr map[string]string) (int, string) {
		t.Helper()
		resp, err := client.Do(mustRequest(t, h.url+path, hdr))
		if err != nil {
			t.Fatal(err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		return resp.StatusCode, string(b)
	}

	if code, body := do("/http/a?x=1", map[string]string{"X-Ext-Authz": "allow", "Authorization": "Bearer t", "X-Secret": "s"}); code != 200 || body != "app" {
		t.Fatalf("allowed request = %d %q", code, body)
	}
	paths, hdr, _ := seen.get()
	if len(paths) != 1 || paths[0] != "/check/http/a?x=1" || hdr["authorization"] != "Bearer t" || hdr["x-secret"] != "" || hdr["host"] != "shop.example" {
		t.Errorf("HTTP check of %v with headers %v; want /check/http/a?x=1 with Authorization, without X-Secret, Host shop.example", paths, hdr)
	}
	got := app.lastRequest()
	if got.Header.Get("X-User") != "alice" || got.Header.Get("X-Ext-Authz-Check-Result") != "allowed" || got.Header.Get("Content-Length") != "" || got.Header.Get("Content-Type") != "" {
		t.Errorf("upstream headers %v; want the authorizer's X-User and check result, not its Content-Length or Content-Type", got.Header)
	}
	if code, body := do("/http/a", nil); code != 403 || body != "denied by ext_authz for not having the header" {
		t.Errorf("denied request = %d %q; want the authorizer's 403 and body", code, body)
	}
	if code, _ := do("/open", nil); code != 200 {
		t.Errorf("a route without the filter = %d; want 200", code)
	}
	if paths, _, _ := seen.get(); len(paths) != 2 {
		t.Errorf("the HTTP authorizer was asked %d times; want 2 (its route's requests only)", len(paths))
	}

	if code, _ := do("/grpc/x", map[string]string{"X-Ext-Authz": "allow", "X-Secret": "s"}); code != 200 {
		t.Errorf("gRPC-checked allowed request = %d", code)
	}
	if _, ghdr, _ := gseen.get(); ghdr["x-ext-authz"] != "allow" || ghdr["x-secret"] != "" {
		t.Errorf("gRPC check headers %v; want x-ext-authz only (allowedHeaders)", ghdr)
	}
	if code, _ := do("/grpc/x", nil); code != 401 {
		t.Errorf("gRPC-checked denied request = %d; want 401", code)
	}
	if code, _ := do("/down", map[string]string{"X-Ext-Authz": "allow"}); code != 403 {
		t.Errorf("with its authorizer unreachable = %d; want 403 (fail closed)", code)
	}
}

// tcpAuthz is a gRPC Authorization service for connections: it allows the
// source principals in allow and records what it was asked.
type tcpAuthz struct {
	authv3.UnimplementedAuthorizationServer
	allow map[string]bool
	mu    sync.Mutex
	asked []*authv3.AttributeContext
}

func (a *tcpAuthz) Check(_ context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	a.mu.Lock()
	a.asked = append(a.asked, req.GetAttributes())
	a.mu.Unlock()
	if a.allow[req.GetAttributes().GetSource().GetPrincipal()] {
		return &authv3.CheckResponse{Status: &status.Status{Code: 0}}, nil
	}
	return &authv3.CheckResponse{Status: &status.Status{Code: 7}}, nil
}

// TestExtAuthzTCP: a CUSTOM policy on a service the waypoint relays whole
// asks a gRPC provider about each connection (source and destination, no
// request), as Envoy's network ext_authz filter does: an allowed client is
// relayed, another closed; a provider that is an HTTP authorizer cannot be
// asked about a connection, so the policy denies (fail closed).
func TestExtAuthzTCP(t *testing.T) {
	authz := &tcpAuthz{allow: map[string]bool{"spiffe://cluster.local/ns/shop/sa/reports": true}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	authv3.RegisterAuthorizationServer(srv, authz)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	db := tcpBackend(t, func(c net.Conn) { io.WriteString(c, "db\n") })

	relayed := func(grpcProvider bool, principal string) string {
		cfg := &Config{L7: &model.L7Config{
			Listeners: []model.L7Listener{{Name: "p", VirtualHosts: []model.VirtualHost{{
				Name: "db.shop.svc.cluster.local", Domains: []string{"db"}, Opaque: true,
				Routes: []model.L7Route{{Name: "default", Destinations: to("db")}},
				TCP:    &model.TCPRoute{Name: "default", Destinations: to("db")},
			}}}},
			Clusters: []model.L7Cluster{clusterOf("db", db), clusterOf("authz", l.Addr().String())},
			ExtAuthz: []model.ExtAuthz{{Name: "authz", GRPC: grpcProvider, Cluster: "authz", Authority: "authz.shop.svc.cluster.local:9000"}},
		}}
		cfg.Policies = []*policy.Policy{{Namespace: "shop", Name: "ext", Action: policy.Custom, Provider: "authz", Rules: []policy.Rule{{}}}}
		h := start(t, cfg, func(o *Options) {
			o.ConnPeer = func(net.Conn) Peer {
				return Peer{Principal: principal, Namespace: "shop", IP: netip.MustParseAddr("198.18.3.7"),
					DestinationService: "db.shop.svc.cluster.local", DestinationIP: netip.MustParseAddr("198.18.9.5"), DestinationPort: 9000}
			}
		})
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}

	if got := relayed(true, "cluster.local/ns/shop/sa/reports"); got != "db" {
		t.Errorf("a client the gRPC provider allows: relayed %q; want db", got)
	}
	if got := relayed(true, "cluster.local/ns/shop/sa/web"); got != "" {
		t.Errorf("a client the gRPC provider denies: relayed %q; want the connection closed", got)
	}
	authz.mu.Lock()
	asked := slices.Clone(authz.asked)
	authz.mu.Unlock()
	if len(asked) != 2 {
		t.Fatalf("provider asked %d times; want once per connection", len(asked))
	}
	a := asked[0]
	if a.GetRequest() != nil || a.GetSource().GetAddress().GetSocketAddress().GetAddress() != "198.18.3.7" ||
		a.GetDestination().GetAddress().GetSocketAddress().GetPortValue() != 9000 {
		t.Errorf("provider asked about %v; want the connection's source and destination, no request", a)
	}
	if got := relayed(false, "cluster.local/ns/shop/sa/reports"); got != "" {
		t.Errorf("a CUSTOM policy whose provider is an HTTP authorizer: relayed %q; want the connection closed (fail closed)", got)
	}
}
