package controlplane

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshlet/meshlet/pkg/model"
	waypointproxy "github.com/meshlet/meshlet/waypoint"
)

// TestLocalRateLimitPolicy: a policy on a Service limits that Service's
// routes in its waypoint, one on an HTTPRoute overrides it for that
// route's rules, one on the waypoint Gateway covers what is left; invalid
// policies are reported and skipped, and one that targets nothing is warned.
func TestLocalRateLimitPolicy(t *testing.T) {
	const ratings = `apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /admin}}]
    backendRefs: [{name: reviews, port: 9080}]
  - backendRefs: [{name: reviews, port: 9080}]
`
	policy := func(name, created, targets, limit string) string {
		return `apiVersion: policy.meshlet.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: ` + name + `, namespace: bookinfo, creationTimestamp: "` + created + `"}
spec:
  targetRefs: ` + targets + `
  ` + limit + `
`
	}
	snap, rej := mustBuild(t, inputs(t, bookinfo(ratings,
		policy("per-user", "2026-01-01T00:00:00Z", `[{group: "", kind: Service, name: reviews}]`, "limit: {requests: 10, interval: 1s, burst: 20}\n  key: {type: Header, header: X-User}"),
		policy("admin", "2026-01-02T00:00:00Z", `[{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews}]`, "limit: {requests: 1, interval: 1m}\n  key: {type: Principal}"),
		policy("floor", "2026-01-03T00:00:00Z", `[{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]`, "limit: {requests: 1000, interval: 1s}"),
		policy("newer-same-service", "2026-01-04T00:00:00Z", `[{group: "", kind: Service, name: ratings}, {group: "", kind: Service, name: reviews}]`, "limit: {requests: 5, interval: 1s}"),
		policy("zero", "2026-01-05T00:00:00Z", `[{group: "", kind: Service, name: reviews}]`, "limit: {requests: 0, interval: 1s}"),
		policy("nowhere", "2026-01-06T00:00:00Z", `[{group: "", kind: Service, name: absent}]`, "limit: {requests: 1, interval: 1s}"),
	)...))
	var faults []string
	for _, r := range rej {
		if r.Kind == KindLocalRateLimitPolicy {
			faults = append(faults, r.String())
		}
	}
	all := strings.Join(faults, "\n")
	for _, want := range []string{"zero", "spec.limit.requests 0: want at least 1", "nowhere", "match no route"} {
		if !strings.Contains(all, want) {
			t.Errorf("reports:\n%s\nwant one naming %q", all, want)
		}
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config")
	}
	got := map[string]*model.RateLimit{}
	for _, l := range cfg.Listeners {
		for _, vh := range l.VirtualHosts {
			for _, r := range vh.Routes {
				got[strings.Split(vh.Name, ".")[0]+"/"+r.Name] = r.RateLimit
			}
		}
	}
	want := map[string]*model.RateLimit{
		// The HTTPRoute's rules: its own policy beats the Service's.
		"reviews/reviews.bookinfo.0": {MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Minute, Key: "principal"},
		"reviews/reviews.bookinfo.1": {MaxTokens: 1, TokensPerFill: 1, FillInterval: time.Minute, Key: "principal"},
		// ratings: only the newer Service policy names it.
		"ratings/default": {MaxTokens: 5, TokensPerFill: 5, FillInterval: time.Second},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("rate limits by route (-want +got):\n%s", d)
	}

	// Without the HTTPRoute policy, the older Service policy wins over the
	// newer one, and the Gateway one fills nothing a Service policy covers.
	snap, _ = mustBuild(t, inputs(t, bookinfo(ratings,
		policy("per-user", "2026-01-01T00:00:00Z", `[{group: "", kind: Service, name: reviews}]`, "limit: {requests: 10, interval: 1s, burst: 20}\n  key: {type: Header, header: X-User}"),
		policy("floor", "2026-01-03T00:00:00Z", `[{group: gateway.networking.k8s.io, kind: Gateway, name: waypoint}]`, "limit: {requests: 1000, interval: 1s}"),
		policy("newer-same-service", "2026-01-04T00:00:00Z", `[{group: "", kind: Service, name: reviews}]`, "limit: {requests: 5, interval: 1s}"),
	)...))
	cfg, _ = snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	for _, l := range cfg.Listeners {
		for _, vh := range l.VirtualHosts {
			for _, r := range vh.Routes {
				var want *model.RateLimit
				switch {
				case strings.HasPrefix(vh.Name, "reviews."):
					want = &model.RateLimit{MaxTokens: 20, TokensPerFill: 10, FillInterval: time.Second, Key: "header:x-user"}
				case strings.HasPrefix(vh.Name, "ratings."):
					want = &model.RateLimit{MaxTokens: 1000, TokensPerFill: 1000, FillInterval: time.Second}
				}
				if d := cmp.Diff(want, r.RateLimit); d != "" {
					t.Errorf("%s %s (-want +got):\n%s", vh.Name, r.Name, d)
				}
			}
		}
	}
}

// TestLocalRateLimitPolicyFromDynamicInformer: the object as a dynamic
// informer hands it over decodes into the same limit; a stored object with a
// field of the wrong type is reported, not a crash.
func TestLocalRateLimitPolicyFromDynamicInformer(t *testing.T) {
	in := inputs(t, bookinfo()...)
	good := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.meshlet.dev/v1alpha1", "kind": "LocalRateLimitPolicy",
		"metadata": map[string]any{"name": "good", "namespace": "bookinfo"},
		"spec": map[string]any{
			"targetRefs": []any{map[string]any{"group": "", "kind": "Service", "name": "reviews"}},
			"limit":      map[string]any{"requests": int64(3), "interval": "2s"},
		},
	}}
	bad := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "policy.meshlet.dev/v1alpha1", "kind": "LocalRateLimitPolicy",
		"metadata": map[string]any{"name": "bad", "namespace": "bookinfo"},
		"spec":     map[string]any{"limit": map[string]any{"requests": "many"}},
	}}
	for _, o := range []*unstructured.Unstructured{good, bad} {
		if err := in.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	snap, rej := mustBuild(t, in)
	var reported bool
	for _, r := range rej {
		if r.Kind == KindLocalRateLimitPolicy && r.Name == "bad" && strings.Contains(r.Reason, "cannot be read") {
			reported = true
		}
	}
	if !reported {
		t.Errorf("rejections %v; want bookinfo/bad reported as unreadable", rej)
	}
	cfg, _ := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	rl := cfg.Listeners[0].VirtualHosts[0].Routes[0].RateLimit
	if d := cmp.Diff(&model.RateLimit{MaxTokens: 3, TokensPerFill: 3, FillInterval: 2 * time.Second}, rl); d != "" {
		t.Errorf("limit (-want +got):\n%s", d)
	}
}

// TestLocalRateLimitPolicyPerRule: a policy on an HTTPRoute whose rule has
// two path matches limits the rule, not each match: meshd splits the rule
// into one route per match (for precedence), and the waypoint that runs the
// result, with a real backend on loopback, answers 3 requests in all across
// both paths before 429, not 3 per path.
func TestLocalRateLimitPolicyPerRule(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - name: api
    matches: [{path: {type: PathPrefix, value: /a}}, {path: {type: Exact, value: /b}}]
    backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews-extra, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - name: api
    matches: [{path: {type: PathPrefix, value: /c}}]
    backendRefs: [{name: reviews, port: 9080}]
---
apiVersion: policy.meshlet.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: per-rule, namespace: bookinfo}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: HTTPRoute, name: reviews}]
  limit: {requests: 3, interval: 1h}
`)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	if n := len(cfg.Listeners[0].VirtualHosts[0].Routes); n != 3 {
		t.Fatalf("%d routes; want the rule split in 2 and the other route's rule", n)
	}
	// As it travels to the waypoint, with the pods' endpoints replaced by
	// a loopback backend.
	l7JSON, err := json.Marshal(cfg)
	if err != nil {
		t.Fatal(err)
	}
	wc, err := waypointproxy.ConfigFromJSON(l7JSON, nil)
	if err != nil {
		t.Fatal(err)
	}
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	t.Cleanup(app.Close)
	for i := range wc.L7.Clusters {
		wc.L7.Clusters[i].Endpoints = []model.L7Endpoint{{Address: app.Listener.Addr().String()}}
	}
	p, err := waypointproxy.New(waypointproxy.Options{Config: wc})
	if err != nil {
		t.Fatalf("waypointproxy.New() = %v", err)
	}
	t.Cleanup(func() { p.Close() })
	front := httptest.NewServer(p)
	t.Cleanup(front.Close)
	// The other HTTPRoute's rule of the same name is not targeted: /c is
	// never limited and takes nothing from the bucket.
	var got []string
	for i := 0; i < 9; i++ {
		path := []string{"/a/x", "/c", "/b"}[i%3]
		req, err := http.NewRequest(http.MethodGet, front.URL+path, nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "reviews.bookinfo.svc.cluster.local"
		resp, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		got = append(got, fmt.Sprintf("%s %d", path, resp.StatusCode))
	}
	want := []string{"/a/x 200", "/c 200", "/b 200", "/a/x 200", "/c 200", "/b 429", "/a/x 429", "/c 200", "/b 429"}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("requests through the waypoint (-want +got):\n%s", d)
	}
}
