package controlplane

import (
	"encoding/json"
	"math"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
	waypointproxy "github.com/meshlet/meshlet/waypoint"
)

// TestInvalidBackendAnswers500: a backendRef that does not resolve keeps
// its weight and its share of the requests is answered 500 by the
// waypoint (Gateway API: "requests that would have been sent to an
// invalid backend MUST receive a 500"); the valid backend gets the rest.
// A rule whose only backend is invalid answers every request 500.
func TestInvalidBackendAnswers500(t *testing.T) {
	const valid = `{name: reviews, port: 9080, weight: 1}`
	tests := []struct {
		name, kind, backends string
		want500              float64 // share of requests answered 500
	}{
		{"missing Service", "HTTPRoute", valid + `, {name: nosuch, port: 9080, weight: 1}`, 0.5},
		{"wrong kind", "HTTPRoute", valid + `, {group: example.com, kind: Bucket, name: b, weight: 1}`, 0.5},
		{"cross-namespace without ReferenceGrant", "HTTPRoute", valid + `, {name: ratings, namespace: other, port: 9080, weight: 1}`, 0.5},
		{"weights kept", "HTTPRoute", `{name: reviews, port: 9080, weight: 3}, {name: nosuch, port: 9080, weight: 1}`, 0.25},
		{"invalid backend of weight 0", "HTTPRoute", valid + `, {name: nosuch, port: 9080, weight: 0}`, 0},
		{"only backend invalid", "HTTPRoute", `{name: nosuch, port: 9080}`, 1},
		{"GRPCRoute missing Service", "GRPCRoute", valid + `, {name: nosuch, port: 9080, weight: 1}`, 0.5},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, _ := mustBuild(t, inputs(t, bookinfo(`apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec:
  clusterIP: 10.96.0.21
  ports: [{name: http, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: `+tt.kind+`
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules: [{backendRefs: [`+tt.backends+`]}]
`)...))
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config for bookinfo/waypoint")
			}
			const n = 400
			codes := throughWaypoint(t, cfg, "reviews.bookinfo.svc.cluster.local", n)
			for code := range codes {
				if code != http.StatusOK && code != http.StatusInternalServerError {
					t.Errorf("status codes seen %v; want only 200 and 500", codes)
				}
			}
			// Five standard deviations of the binomial.
			tol := 5 * math.Sqrt(n*tt.want500*(1-tt.want500))
			if got := float64(codes[http.StatusInternalServerError]); math.Abs(got-n*tt.want500) > tol {
				t.Errorf("%v of %d requests answered 500 (codes %v); want %.0f ± %.0f", got, n, codes, n*tt.want500, tol)
			}
		})
	}
}

// throughWaypoint runs cfg, as it travels to the waypoint, in a waypoint
// whose clusters' endpoints are replaced by a loopback backend answering
// 200, sends n GETs for host and returns how many got each status code.
func throughWaypoint(t *testing.T, cfg *model.L7Config, host string, n int) map[int]int {
	t.Helper()
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
	codes := map[int]int{}
	for i := 0; i < n; i++ {
		req, err := http.NewRequest(http.MethodGet, front.URL+"/", nil)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = host
		resp, err := front.Client().Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		codes[resp.StatusCode]++
	}
	return codes
}

// TestInvalidBackendTranslation: the destination of an invalid backendRef
// is a direct 500 with the ref's weight, in the ref's place, so that a
// backend's own filters stay with their backend.
func TestInvalidBackendTranslation(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs:
    - {name: ratings, namespace: other, port: 9080, weight: 2}
    - name: reviews
      port: 9080
      weight: 3
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-b, value: reviews}]}}]
`)...))
	if want := "backendRef other/ratings: no ReferenceGrant in other allows it; its requests are answered 500"; !hasRejection(rej, want, true) {
		t.Errorf("rejections = %v; want a warning %q", rej, want)
	}
	cfg, _ := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	want := []model.WeightedDestination{
		{Weight: 2, DirectResponse: &model.DirectResponse{Status: 500}},
		{Cluster: "outbound|9080||reviews.bookinfo.svc.cluster.local", Weight: 3, RequestHeaders: model.HeaderOps{Set: map[string]string{"x-b": "reviews"}}},
	}
	if d := cmp.Diff(want, cfg.Listeners[0].VirtualHosts[0].Routes[0].Destinations); d != "" {
		t.Errorf("destinations (-want +got):\n%s", d)
	}
}
