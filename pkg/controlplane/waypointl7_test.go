package controlplane

import (
	"encoding/base64"
	"fmt"
	"maps"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// bookinfo is Istio's reviews example in an ambient namespace with a waypoint.
func bookinfo(extra ...string) []string {
	docs := []string{
		ns("bookinfo", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint"),
		waypoint("bookinfo", "waypoint", "10.96.9.9", ""),
		pod("bookinfo", "reviews-v1", "10.0.0.1", "n1", "app=reviews,version=v1"),
		pod("bookinfo", "reviews-v2", "10.0.0.2", "n1", "app=reviews,version=v2"),
		`apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
`,
	}
	return append(docs, extra...)
}

// Istio's "Request Routing" task: jason goes to v2, everyone else to v1,
// with the DestinationRule defining the subsets.
const reviewsRouting = `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - name: jason
    match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: reviews, subset: v2}}]
  - name: default
    route:
    - {destination: {host: reviews, subset: v1}, weight: 90}
    - {destination: {host: reviews, subset: v2}, weight: 10}
    timeout: 2s
    retries: {attempts: 3, perTryTimeout: 500ms, retryOn: "5xx,503"}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
`

func TestWaypointL7FromVirtualService(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(reviewsRouting)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	const cluster = "outbound|9080||reviews.bookinfo.svc.cluster.local"
	want := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "port-9080", Port: 9080, VirtualHosts: []model.VirtualHost{{
			Name:    "reviews.bookinfo.svc.cluster.local",
			Domains: []string{"reviews.bookinfo.svc.cluster.local", "reviews", "reviews.bookinfo", "reviews.bookinfo.svc", "10.96.0.20"},
			Routes: []model.L7Route{
				{
					Name:         "jason",
					Origin:       "VirtualService/bookinfo/reviews",
					Matches:      []model.RouteMatch{{Headers: []model.HeaderMatch{{Name: "end-user", Value: model.StringMatch{Exact: "jason"}}}}},
					Destinations: []model.WeightedDestination{{Cluster: cluster, Subset: "v2", Weight: 100}},
				},
				{
					Name:         "default",
					Origin:       "VirtualService/bookinfo/reviews",
					Destinations: []model.WeightedDestination{{Cluster: cluster, Subset: "v1", Weight: 90}, {Cluster: cluster, Subset: "v2", Weight: 10}},
					Timeout:      2 * time.Second,
					Retries:      &model.RetryPolicy{Attempts: 3, PerTryTimeout: 500 * time.Millisecond, RetryOn: []string{"5xx", "retriable-status-codes"}, RetriableStatusCodes: []int{503}},
				},
			},
			// Connections that are not HTTP go to the service.
			TCP: &model.TCPRoute{Name: "default", Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}}},
		}}}},
		Clusters: []model.L7Cluster{{
			Name: cluster,
			Endpoints: []model.L7Endpoint{
				{Address: "10.0.0.1:8080", Labels: map[string]string{"app": "reviews", "version": "v1"}, Workload: "reviews-v1",
					Identity: "spiffe://cluster.local/ns/bookinfo/sa/sa-reviews-v1"},
				{Address: "10.0.0.2:8080", Labels: map[string]string{"app": "reviews", "version": "v2"}, Workload: "reviews-v2",
					Identity: "spiffe://cluster.local/ns/bookinfo/sa/sa-reviews-v2"},
			},
			Subsets: []model.Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}},
			Traffic: model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin}},
		}},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("L7Config mismatch (-want +got):\n%s", diff)
	}
}

func TestWaypointL7DefaultRouteAndRejectedVirtualService(t *testing.T) {
	// Fault injection of 250% passes the CRD schema but not L7 validation: the
	// VirtualService is rejected and the service keeps its default route.
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: bad-fault, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - fault: {abort: {httpStatus: 503, percentage: {value: 250}}}
    route: [{destination: {host: reviews}}]
`)...))
	if !hasRejection(rej, "VirtualService bookinfo/bad-fault", false) {
		t.Errorf("rejections = %v; want bookinfo/bad-fault rejected", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	routes := cfg.Listeners[0].VirtualHosts[0].Routes
	if len(routes) != 1 || routes[0].Name != "default" || routes[0].Destinations[0].Cluster != "outbound|9080||reviews.bookinfo.svc.cluster.local" {
		t.Errorf("routes = %+v; want only the default route to reviews", routes)
	}
}

func TestWaypointL7FromHTTPRouteAndJWT(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /v2}}]
    backendRefs: [{name: reviews, port: 9080}]
    timeouts: {request: 3s}
---
apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: "testing@secure.istio.io"
    jwksUri: "https://raw.githubusercontent.com/istio/istio/release-1.24/security/tools/jwt/samples/jwks.json"
    fromCookies: [session]
`)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	routes := cfg.Listeners[0].VirtualHosts[0].Routes
	wantRoutes := []model.L7Route{{
		Name:         "reviews.bookinfo.0",
		Origin:       "HTTPRoute/bookinfo/reviews",
		Matches:      []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/v2"}}},
		Destinations: []model.WeightedDestination{{Cluster: "outbound|9080||reviews.bookinfo.svc.cluster.local", Weight: 1}},
		Timeout:      3 * time.Second,
	}}
	if diff := cmp.Diff(wantRoutes, routes); diff != "" {
		t.Errorf("routes mismatch (-want +got):\n%s", diff)
	}
	if len(cfg.JWTProviders) != 1 || cfg.JWTProviders[0].Issuer != "testing@secure.istio.io" || !slices.Equal(cfg.JWTProviders[0].FromCookies, []string{"session"}) {
		t.Errorf("JWTProviders = %+v; want the testing@secure.istio.io issuer, token from the session cookie", cfg.JWTProviders)
	}
}

func TestWaypointL7FromGRPCRoute(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews-grpc, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules:
  - matches:
    - method: {service: com.example.Reviews, method: Get}
    - method: {service: com.example.Admin}
      headers: [{name: x-tenant, value: a}]
    filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: x-route, value: grpc}]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {remove: [x-internal]}
    backendRefs: [{name: reviews, port: 9080}]
`)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, _ := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	want := []model.RouteMatch{
		{URI: &model.StringMatch{Exact: "/com.example.Reviews/Get"}},
		{URI: &model.StringMatch{Prefix: "/com.example.Admin/"}, Headers: []model.HeaderMatch{{Name: "x-tenant", Value: model.StringMatch{Exact: "a"}}}},
	}
	// One route per match, as for HTTPRoute, each the rule's.
	routes := cfg.Listeners[0].VirtualHosts[0].Routes
	var got []model.RouteMatch
	for _, r := range routes {
		if r.Name != "reviews-grpc.bookinfo.0" || len(r.Matches) != 1 {
			t.Fatalf("route %s with %d matches; want reviews-grpc.bookinfo.0 with one", r.Name, len(r.Matches))
		}
		got = append(got, r.Matches[0])
		// The rule's filters apply (they were dropped).
		if r.RequestHeaders.Set["x-route"] != "grpc" || len(r.ResponseHeaders.Remove) != 1 || r.ResponseHeaders.Remove[0] != "x-internal" {
			t.Errorf("header filters = request %+v, response %+v; want x-route set, x-internal removed", r.RequestHeaders, r.ResponseHeaders)
		}
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("matches mismatch (-want +got):\n%s", diff)
	}
}

// A waypoint routes to a ServiceEntry of another namespace only when the
// entry is exported to the waypoint's namespace: otherwise the route's
// cluster has no endpoints (Istio gives the proxy no cluster for the host).
func TestWaypointL7ServiceEntryExportTo(t *testing.T) {
	const cluster = "outbound|9080||ratings.partner.example"
	for _, tt := range []struct {
		exportTo  string
		endpoints int
	}{{`"*"`, 1}, {`bookinfo`, 1}, {`"."`, 0}, {`other`, 0}} {
		t.Run(tt.exportTo, func(t *testing.T) {
			snap, _ := mustBuild(t, inputs(t, bookinfo(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ratings-ext, namespace: partner}
spec:
  hosts: [ratings.partner.example]
  ports: [{number: 9080, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: 10.1.0.9}]
  exportTo: [`+tt.exportTo+`]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http: [{route: [{destination: {host: ratings.partner.example, port: {number: 9080}}}]}]
`)...))
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config for bookinfo/waypoint")
			}
			got := -1
			for _, c := range cfg.Clusters {
				if c.Name == cluster {
					got = len(c.Endpoints)
				}
			}
			if got != tt.endpoints {
				t.Errorf("ServiceEntry exportTo [%s]: cluster %s has %d endpoints (-1: no cluster); want %d", tt.exportTo, cluster, got, tt.endpoints)
			}
		})
	}
}

// TestWaypointL7VirtualServiceCORS: a VirtualService route's corsPolicy
// reaches the waypoint's route (it was dropped), the deprecated allowOrigin
// list too.
func TestWaypointL7VirtualServiceCORS(t *testing.T) {
	r := reviewsRoute(t, `  - name: api
    corsPolicy:
      allowOrigins: [{exact: "https://shop.example"}, {regex: "https://.*\\.partner\\.example"}]
      allowOrigin: ["https://legacy.example"]
      allowMethods: [GET, POST]
      allowHeaders: [x-token]
      exposeHeaders: [x-trace]
      maxAge: 1h
      allowCredentials: true
    route: [{destination: {host: reviews}}]
`)
	want := &model.CORSPolicy{
		AllowOrigins: []model.StringMatch{{Exact: "https://shop.example"}, {Regex: `https://.*\.partner\.example`}, {Exact: "https://legacy.example"}},
		AllowMethods: []string{"GET", "POST"}, AllowHeaders: []string{"x-token"}, ExposeHeaders: []string{"x-trace"},
		MaxAge: time.Hour, AllowCredentials: true,
	}
	if diff := cmp.Diff(want, r.CORS); diff != "" {
		t.Errorf("route CORS (-want +got):\n%s", diff)
	}
}

// reviewsRoute builds bookinfo with a VirtualService for reviews whose http
// routes are the given YAML list items, and returns the waypoint's first
// route.
func reviewsRoute(t *testing.T, httpRoutes string) model.L7Route {
	t.Helper()
	cfg := bookinfoWaypoint(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
`+httpRoutes)
	if len(cfg.Listeners) == 0 || len(cfg.Listeners[0].VirtualHosts) == 0 || len(cfg.Listeners[0].VirtualHosts[0].Routes) == 0 {
		t.Fatalf("no route in the waypoint's config: %+v", cfg)
	}
	return cfg.Listeners[0].VirtualHosts[0].Routes[0]
}

// reviewsHTTPRoute is an HTTPRoute bound to the reviews Service's port 9080
// (bookinfo), with rules (YAML list items, indented two spaces).
func reviewsHTTPRoute(rules string) string {
	return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
` + rules
}

// bookinfoWaypoint builds bookinfo with doc added, wants no rejection, and
// returns the bookinfo waypoint's L7 config.
func bookinfoWaypoint(t *testing.T, doc string) *model.L7Config {
	t.Helper()
	return bookinfoWaypointWarned(t, doc, "")
}

// bookinfoWaypointWarned is bookinfoWaypoint wanting the one warning
// containing warned (none when it is "").
func bookinfoWaypointWarned(t *testing.T, doc, warned string) *model.L7Config {
	t.Helper()
	snap, rej := mustBuild(t, inputs(t, bookinfo(doc)...))
	switch {
	case warned == "" && len(rej) != 0:
		t.Errorf("rejections = %v; want none", rej)
	case warned != "" && !hasRejection(rej, warned, true):
		t.Errorf("rejections = %v; want a warning %q", rej, warned)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	return cfg
}

// reviewsTraffic builds bookinfo with a DestinationRule for reviews whose
// trafficPolicy is the given YAML flow map, and returns the traffic policy
// of the waypoint's reviews cluster.
func reviewsTraffic(t *testing.T, trafficPolicy string) model.TrafficPolicy {
	t.Helper()
	cfg := bookinfoWaypoint(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: `+trafficPolicy+`
`)
	if len(cfg.Clusters) == 0 {
		t.Fatalf("no cluster in the waypoint's config: %+v", cfg)
	}
	return cfg.Clusters[0].Traffic
}

// TestWaypointL7OutlierDefaults: a DestinationRule's outlierDetection
// without consecutive5xxErrors ejects after 5 errors (Istio's default), and
// an explicit 0 turns that detector off.
func TestWaypointL7OutlierDefaults(t *testing.T) {
	for _, tt := range []struct {
		name, od string
		want     int
	}{
		{"unset", "{baseEjectionTime: 1m}", 5},
		{"zero", "{consecutive5xxErrors: 0, consecutiveGatewayErrors: 3}", 0},
		{"set", "{consecutive5xxErrors: 2}", 2},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tp := reviewsTraffic(t, "{outlierDetection: "+tt.od+"}")
			if tp.Outlier == nil {
				t.Fatalf("no outlier detection in the waypoint's cluster: %+v", tp)
			}
			if got := tp.Outlier.Consecutive5xxErrors; got != tt.want {
				t.Errorf("consecutive 5xx errors = %d; want %d", got, tt.want)
			}
		})
	}
}

// reviewsRouteOf is a Gateway API route of kind (HTTPRoute, GRPCRoute) in
// bookinfo, attached to the reviews Service's port 9080, created at created,
// with the YAML list items rules.
func reviewsRouteOf(kind, name, created, rules string) string {
	return `apiVersion: gateway.networking.k8s.io/v1
kind: ` + kind + `
metadata: {name: ` + name + `, namespace: bookinfo, creationTimestamp: "` + created + `"}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
` + rules
}

// TestWaypointL7HTTPRoutePrecedence: HTTPRoute rules reach the waypoint in
// Gateway API's precedence, not in the order they were written: an Exact
// path, then the longest PathPrefix, then more header matches; a tie goes
// to the older HTTPRoute. A PathPrefix matches whole segments.
func TestWaypointL7HTTPRoutePrecedence(t *testing.T) {
	route := func(name, created, rules string) string { return reviewsRouteOf("HTTPRoute", name, created, rules) }
	snap, rej := mustBuild(t, inputs(t, bookinfo(
		route("a-newer", "2026-01-02T00:00:00Z", `  - name: catch-all
    backendRefs: [{name: reviews, port: 9080}]
  - name: api
    matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: newer-x
    matches: [{path: {type: PathPrefix, value: /x}}]
    backendRefs: [{name: reviews, port: 9080}]
`),
		"---\n"+route("b-older", "2026-01-01T00:00:00Z", `  - name: api-canary
    matches: [{path: {type: PathPrefix, value: /api}, headers: [{name: x-canary, value: "yes"}]}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: special-or-root
    matches: [{path: {type: Exact, value: /api/special}}, {path: {type: PathPrefix, value: /}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: older-x
    matches: [{path: {type: PathPrefix, value: /x/}}]
    backendRefs: [{name: reviews, port: 9080}]
`))...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	var got []string
	for _, r := range cfg.Listeners[0].VirtualHosts[0].Routes {
		got = append(got, r.Name)
	}
	want := []string{"special-or-root", "api-canary", "api", "older-x", "newer-x", "special-or-root", "catch-all"}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("route order (-want +got):\n%s", diff)
	}
	api := cfg.Listeners[0].VirtualHosts[0].Routes[2].Matches[0].URI
	if api.PathPrefix == "" {
		t.Fatalf("route api matches %+v; want a PathPrefix", *api)
	}
	for path, match := range map[string]bool{"/api": true, "/api/": true, "/api/v1": true, "/apiv2": false, "/ap": false} {
		if model.HasPathPrefix(path, api.PathPrefix) != match {
			t.Errorf("PathPrefix /api on %s: match %v; want %v", path, !match, match)
		}
	}
}

// TestWaypointL7ConsistentHash: a DestinationRule's consistentHash reaches
// the waypoint with the httpCookie's ttl and path, and by query parameter.
func TestWaypointL7ConsistentHash(t *testing.T) {
	for _, tt := range []struct {
		name, lb string
		want     model.ConsistentHash
	}{
		{"cookie", "{consistentHash: {httpCookie: {name: route, ttl: 30m, path: /shop}}}", model.ConsistentHash{Cookie: "route", CookieTTL: 30 * time.Minute, CookiePath: "/shop"}},
		{"query parameter", "{consistentHash: {httpQueryParameterName: cart}}", model.ConsistentHash{QueryParam: "cart"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tp := reviewsTraffic(t, "{loadBalancer: "+tt.lb+"}")
			if tp.LB.ConsistentHash == nil {
				t.Fatalf("no consistent hash in the waypoint's cluster: %+v", tp)
			}
			if diff := cmp.Diff(tt.want, *tp.LB.ConsistentHash); diff != "" {
				t.Errorf("consistent hash (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWaypointL7RedirectDerivePort: a VirtualService redirect's derivePort
// reaches the waypoint (it was dropped).
func TestWaypointL7RedirectDerivePort(t *testing.T) {
	r := reviewsRoute(t, `  - name: to-https
    redirect: {scheme: https, derivePort: FROM_REQUEST_PORT}
`)
	if rd := r.Redirect; rd == nil || rd.Scheme != "https" || rd.DerivePort != "FROM_REQUEST_PORT" {
		t.Errorf("redirect = %+v; want https, derivePort FROM_REQUEST_PORT", rd)
	}
}

// TestWaypointL7VirtualServiceRetryBackoff: a VirtualService's
// retries.backoff reaches the waypoint as the route's Backoff; a value that
// is not positive is reported on the VirtualService and ignored.
func TestWaypointL7VirtualServiceRetryBackoff(t *testing.T) {
	tests := []struct {
		name    string
		retries string
		want    model.RetryPolicy
		warned  string // part of the warning; empty means none
	}{
		{name: "backoff", retries: "{attempts: 3, retryOn: 5xx, backoff: 200ms}", want: model.RetryPolicy{Attempts: 3, RetryOn: []string{"5xx"}, Backoff: 200 * time.Millisecond}},
		{name: "no backoff", retries: "{attempts: 3, retryOn: 5xx}", want: model.RetryPolicy{Attempts: 3, RetryOn: []string{"5xx"}}},
		{name: "zero backoff", retries: "{attempts: 3, retryOn: 5xx, backoff: 0s}", want: model.RetryPolicy{Attempts: 3, RetryOn: []string{"5xx"}}, warned: "http[0].retries.backoff 0s is not positive; ignored"},
		{name: "negative backoff", retries: "{attempts: 3, retryOn: 5xx, backoff: -1s}", want: model.RetryPolicy{Attempts: 3, RetryOn: []string{"5xx"}}, warned: "http[0].retries.backoff -1s is not positive; ignored"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			warned := ""
			if tt.warned != "" {
				warned = "VirtualService bookinfo/reviews: " + tt.warned
			}
			cfg := bookinfoWaypointWarned(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: `+tt.retries+`
`, warned)
			r := cfg.Listeners[0].VirtualHosts[0].Routes[0]
			if r.Retries == nil {
				t.Fatalf("route %+v has no retry policy; want %+v", r, tt.want)
			}
			if diff := cmp.Diff(tt.want, *r.Retries); diff != "" {
				t.Errorf("retry policy (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWaypointL7HTTPRouteRetryAndTimeouts: an HTTPRoute rule's retry.backoff
// and timeouts reach the waypoint: request as the route timeout,
// backendRequest as each try's (with the default retries when the rule has
// no retry stanza); "0s" disables either, and a value the waypoint cannot
// use is reported on the route.
func TestWaypointL7HTTPRouteRetryAndTimeouts(t *testing.T) {
	safe := []string{"connect-failure", "refused-stream", "reset"} // a stanza without codes
	defaultWith := func(perTry time.Duration) *model.RetryPolicy {
		rp := model.DefaultRetry
		rp.PerTryTimeout = perTry
		return &rp
	}
	tests := []struct {
		name     string
		rule     string // the rule's fields besides backendRefs
		timeout  time.Duration
		retries  *model.RetryPolicy
		reported string // part of the warning; empty means none
	}{{
		name:    "retry backoff",
		rule:    "retry: {attempts: 2, backoff: 200ms}",
		retries: &model.RetryPolicy{Attempts: 2, RetryOn: safe, Backoff: 200 * time.Millisecond},
	}, {
		name:    "backendRequest without a retry stanza: the default retries, each try bounded",
		rule:    "timeouts: {request: 10s, backendRequest: 2s}",
		timeout: 10 * time.Second,
		retries: defaultWith(2 * time.Second),
	}, {
		name:    "backendRequest with a retry stanza",
		rule:    "retry: {attempts: 3, backoff: 50ms}\n    timeouts: {backendRequest: 1s}",
		retries: &model.RetryPolicy{Attempts: 3, RetryOn: safe, Backoff: 50 * time.Millisecond, PerTryTimeout: time.Second},
	}, {
		name:    "request 0s: no route timeout",
		rule:    "timeouts: {request: 0s, backendRequest: 5s}",
		retries: defaultWith(5 * time.Second),
	}, {
		name:    "backendRequest 0s: no per-try timeout",
		rule:    "timeouts: {request: 3s, backendRequest: 0s}",
		timeout: 3 * time.Second,
	}, {
		name:     "backendRequest over request: request bounds each try",
		rule:     "timeouts: {request: 1s, backendRequest: 5s}",
		timeout:  time.Second,
		retries:  defaultWith(time.Second),
		reported: "rules[0].timeouts.backendRequest 5s is longer than timeouts.request 1s",
	}, {
		name:     "unparsable request",
		rule:     "timeouts: {request: soon, backendRequest: 2s}",
		retries:  defaultWith(2 * time.Second),
		reported: `rules[0].timeouts.request "soon" is not a duration (want one such as "10s"`,
	}, {
		name:     "unparsable backendRequest",
		rule:     "timeouts: {request: 2s, backendRequest: 1x}",
		timeout:  2 * time.Second,
		reported: `rules[0].timeouts.backendRequest "1x" is not a duration (want one such as "10s"`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			reported := ""
			if tt.reported != "" {
				reported = "HTTPRoute bookinfo/reviews: " + tt.reported
			}
			cfg := bookinfoWaypointWarned(t, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - backendRefs: [{name: reviews, port: 9080}]
    `+tt.rule+`
`, reported)
			r := cfg.Listeners[0].VirtualHosts[0].Routes[0]
			if r.Timeout != tt.timeout {
				t.Errorf("route timeout = %v; want %v", r.Timeout, tt.timeout)
			}
			if diff := cmp.Diff(tt.retries, r.Retries); diff != "" {
				t.Errorf("retry policy (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWaypointL7GRPCRoutePrecedence: GRPCRoute matches reach the waypoint
// in Gateway API's precedence, not in the order written: more characters
// in the service, then in the method, then more header matches; a tie
// goes to the older GRPCRoute, then the first rule. A request for
// com.example.Reviews/Get reaches the newer route's service+method rule,
// not the older one's service-only rule.
func TestWaypointL7GRPCRoutePrecedence(t *testing.T) {
	route := func(name, created, rules string) string { return reviewsRouteOf("GRPCRoute", name, created, rules) }
	snap, rej := mustBuild(t, inputs(t, bookinfo(
		route("a-older", "2026-01-01T00:00:00Z", `  - name: older-service
    matches: [{method: {service: com.example.Reviews}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: older-catch-all
    backendRefs: [{name: reviews, port: 9080}]
  - name: older-method
    matches: [{method: {method: Get}}]
    backendRefs: [{name: reviews, port: 9080}]
`),
		"---\n"+route("b-newer", "2026-01-02T00:00:00Z", `  - name: newer-service-method
    matches: [{method: {service: com.example.Reviews, method: Get}}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: newer-method-or-service-header
    matches: [{method: {method: Get}}, {method: {service: com.example.Reviews}, headers: [{name: x-tenant, value: a}]}]
    backendRefs: [{name: reviews, port: 9080}]
  - name: newer-longer-service
    matches: [{method: {service: com.example.ReviewsAdmin}}]
    backendRefs: [{name: reviews, port: 9080}]
`))...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	var got []string
	for _, r := range cfg.Listeners[0].VirtualHosts[0].Routes {
		got = append(got, r.Name)
	}
	want := []string{
		"newer-longer-service",           // 24 service characters
		"newer-service-method",           // 19, method 3
		"newer-method-or-service-header", // 19, one header
		"older-service",                  // 19
		"older-method",                   // method 3, older
		"newer-method-or-service-header", // method 3
		"older-catch-all",
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("route order (-want +got):\n%s", diff)
	}
}

// TestWaypointL7TLSOrigination: a DestinationRule's trafficPolicy.tls
// (SIMPLE, MUTUAL) for a ServiceEntry bound to the waypoint reaches its
// cluster as TLS origination, with the CA and client certificate from the
// credentialName Secret in the waypoint's namespace and the SNI defaulting
// to the host; port-level settings apply per port; ISTIO_MUTUAL and DISABLE
// originate nothing (mesh endpoints are reached over HBONE already). A
// MUTUAL without a usable Secret is reported and leaves the cluster without
// endpoints: 503, never a request in the clear.
func TestWaypointL7TLSOrigination(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "waypoint-client")
	ca, _ := testutil.SelfSignedPEM(t, "partner root")
	b64 := base64.StdEncoding.EncodeToString
	se := `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: bookinfo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.partner.example]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}, {number: 8080, name: http-alt, protocol: HTTP, targetPort: 443}]
  resolution: DNS
`
	secret := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: partner-client, namespace: bookinfo}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s, ca.crt: %s}
`, b64(cert), b64(key), b64(ca))
	dr := func(tls string) string {
		return `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: partner, namespace: bookinfo}
spec:
  host: api.partner.example
  trafficPolicy:
    tls: ` + tls + `
    portLevelSettings:
    - port: {number: 8080}
      tls: {mode: DISABLE}
`
	}
	tests := []struct {
		name     string
		tls      string
		want     *model.UpstreamTLS
		reported string
	}{
		{name: "simple, system roots", tls: "{mode: SIMPLE}",
			want: &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example"}},
		{name: "simple with the Secret's CA, sni, subjectAltNames", tls: "{mode: SIMPLE, credentialName: partner-client, sni: edge.partner.example, subjectAltNames: [api.partner.example]}",
			want: &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "edge.partner.example", SubjectAltNames: []string{"api.partner.example"}, CAPEM: string(ca)}},
		{name: "mutual", tls: "{mode: MUTUAL, credentialName: partner-client}",
			want: &model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "api.partner.example", CAPEM: string(ca), ClientCertPEM: string(cert), ClientKeyPEM: string(key)}},
		{name: "insecureSkipVerify", tls: "{mode: SIMPLE, insecureSkipVerify: true}",
			want: &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", InsecureSkipVerify: true}},
		{name: "istio mutual", tls: "{mode: ISTIO_MUTUAL}"},
		{name: "mutual without credentialName", tls: "{mode: MUTUAL, clientCertificate: /etc/certs/cert.pem, privateKey: /etc/certs/key.pem}",
			reported: "trafficPolicy.tls: mode MUTUAL needs credentialName"},
		{name: "missing Secret", tls: "{mode: SIMPLE, credentialName: nowhere}",
			reported: `trafficPolicy.tls.credentialName "nowhere": no Secret of type kubernetes.io/tls named so in namespace bookinfo`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t, bookinfo(se, secret, dr(tt.tls))...))
			if tt.reported == "" && len(rej) != 0 {
				t.Errorf("rejections = %v; want none", rej)
			}
			if tt.reported != "" && !hasRejection(rej, tt.reported, true) {
				t.Errorf("rejections = %v; want a warning on the DestinationRule containing %q", rej, tt.reported)
			}
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config for bookinfo/waypoint")
			}
			clusters := map[string]model.L7Cluster{}
			for _, c := range cfg.Clusters {
				clusters[c.Name] = c
			}
			c80, ok := clusters["outbound|80||api.partner.example"]
			if !ok {
				t.Fatalf("clusters %v; want outbound|80||api.partner.example", slices.Collect(maps.Keys(clusters)))
			}
			if diff := cmp.Diff(tt.want, c80.Traffic.TLS); diff != "" {
				t.Errorf("port 80 TLS origination (-want +got):\n%s", diff)
			}
			wantEndpoints := []model.L7Endpoint{{Address: "api.partner.example:443"}}
			if tt.reported != "" && tt.want == nil && tt.name != "istio mutual" {
				wantEndpoints = nil
			}
			if diff := cmp.Diff(wantEndpoints, c80.Endpoints, cmpopts.EquateEmpty()); diff != "" {
				t.Errorf("port 80 endpoints (-want +got):\n%s", diff)
			}
			if c := clusters["outbound|8080||api.partner.example"]; c.Traffic.TLS != nil {
				t.Errorf("port 8080 (tls DISABLE at port level): TLS %v; want none", c.Traffic.TLS)
			}
		})
	}
}

// TestWaypointL7CredentialParsedOncePerBuild: a credentialName Secret named
// by the DestinationRules of several hosts — each host a cluster per port,
// its subsets each a TLS setting of their own — is parsed once per build
// (ca.crt once, the key pair once), and every cluster still gets its TLS.
// A Secret whose key pair is unusable is still reported on every
// DestinationRule that names it.
func TestWaypointL7CredentialParsedOncePerBuild(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "waypoint-client")
	ca, _ := testutil.SelfSignedPEM(t, "partner root")
	b64 := base64.StdEncoding.EncodeToString
	hosts := []string{"a", "b", "c"}
	var docs []string
	for _, h := range hosts {
		docs = append(docs, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner-%[1]s, namespace: bookinfo, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [%[1]s.partner.example]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}, {number: 8080, name: http-alt, protocol: HTTP, targetPort: 443}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: partner-%[1]s, namespace: bookinfo}
spec:
  host: %[1]s.partner.example
  trafficPolicy:
    tls: {mode: MUTUAL, credentialName: partner-client}
  subsets:
  - name: blue
    trafficPolicy: {tls: {mode: MUTUAL, credentialName: partner-client, sni: blue.%[1]s.partner.example}}
`, h))
	}
	secret := func(key []byte) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: partner-client, namespace: bookinfo, resourceVersion: "7"}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s, ca.crt: %s}
`, b64(cert), b64(key), b64(ca))
	}
	parses := map[string]int{}
	credentialParsed = func(key, part string) { parses[key+" "+part]++ }
	t.Cleanup(func() { credentialParsed = nil })

	b := NewBuilder(BuilderOptions{})
	snap, rej := b.Build(inputs(t, bookinfo(append(docs, secret(key))...)...))
	if hasRejection(rej, "tls", true) || hasRejection(rej, "tls", false) {
		t.Errorf("rejections = %v; want none about TLS", rej)
	}
	want := map[string]int{"bookinfo/partner-client@7 ca.crt": 1, "bookinfo/partner-client@7 key pair": 1}
	if diff := cmp.Diff(want, parses); diff != "" {
		t.Errorf("Secret parses in one build (-want +got):\n%s", diff)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	originating := 0
	for _, c := range cfg.Clusters {
		if !strings.HasSuffix(c.Name, ".partner.example") {
			continue
		}
		tlsOf := []*model.UpstreamTLS{c.Traffic.TLS}
		for _, s := range c.Subsets {
			tlsOf = append(tlsOf, s.Traffic.TLS)
		}
		for _, u := range tlsOf {
			if u == nil || u.ClientCertPEM != string(cert) || u.ClientKeyPEM != string(key) || u.CAPEM != string(ca) {
				t.Errorf("cluster %s: TLS %+v; want MUTUAL with the Secret's certificate, key and CA", c.Name, u)
				continue
			}
			originating++
		}
	}
	if want := len(hosts) * 2 * 2; originating != want {
		t.Errorf("%d TLS settings from the Secret; want %d (3 hosts, 2 ports, trafficPolicy and a subset)", originating, want)
	}

	// The next build parses again: the cache lives for one build.
	clear(parses)
	b.Build(inputs(t, bookinfo(append(docs, secret(key))...)...))
	if diff := cmp.Diff(want, parses); diff != "" {
		t.Errorf("Secret parses in the next build (-want +got):\n%s", diff)
	}

	clear(parses)
	_, rej = b.Build(inputs(t, bookinfo(append(docs, secret([]byte("not a key")))...)...))
	if diff := cmp.Diff(want, parses); diff != "" {
		t.Errorf("parses of a Secret with an unusable key pair (-want +got):\n%s", diff)
	}
	for _, h := range hosts {
		found := false
		for _, r := range rej {
			found = found || r.Kind == KindDestinationRule && r.Name == "partner-"+h && r.Warning &&
				strings.Contains(r.Reason, `credentialName "partner-client": tls.crt and tls.key do not form a usable key pair`)
		}
		if !found {
			t.Errorf("rejections = %v; want the unusable key pair reported on DestinationRule bookinfo/partner-%s", rej, h)
		}
	}
}

// TestWaypointTCPRoutes follows Istio's TCP traffic shifting task in ambient
// mode: connections to a Service behind a waypoint that are not HTTP are
// forwarded to the Service itself, or by weight to the backends of the
// oldest TCPRoute bound to the Service (and port), or by a VirtualService's
// tcp route; a younger TCPRoute on the same port is not accepted, and says
// which route the port takes.
func TestWaypointTCPRoutes(t *testing.T) {
	svc := func(name, ip string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: bookinfo}
spec: {clusterIP: %s, selector: {app: %s}, ports: [{name: tcp, port: 9000}]}
`, name, ip, name)
	}
	b := NewBuilder(BuilderOptions{})
	snap, rej := b.Build(inputs(t, bookinfo(
		pod("bookinfo", "db-0", "10.0.0.9", "n1", "app=db,role=primary"),
		svc("tcp-echo", "10.96.0.40"), svc("tcp-echo-v1", "10.96.0.41"), svc("tcp-echo-v2", "10.96.0.42"), svc("db", "10.96.0.43"),
		`apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: tcp-echo, namespace: bookinfo, creationTimestamp: "2026-01-01T00:00:01Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: tcp-echo, port: 9000}]
  rules:
  - backendRefs:
    - {name: tcp-echo-v1, port: 9000, weight: 80}
    - {name: tcp-echo-v2, port: 9000, weight: 20}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: tcp-echo-later, namespace: bookinfo, creationTimestamp: "2026-01-01T00:00:02Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: tcp-echo}]
  rules: [{backendRefs: [{name: tcp-echo-v2, port: 9000}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: db, namespace: bookinfo}
spec:
  hosts: [db]
  tcp:
  - match: [{sourceLabels: {app: reports}}, {sourceNamespace: analytics, destinationSubnets: [10.96.0.0/16, 10.96.0.43]}]
    route:
    - {destination: {host: db}}
  - match: [{destinationSubnets: [not-a-subnet]}, {port: 9001, sourceNamespace: other}]
    route:
    - {destination: {host: db}}
  - match: [{port: 9000}]
    route:
    - {destination: {host: db, subset: primary}, weight: 100}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: db, namespace: bookinfo}
spec:
  host: db
  subsets: [{name: primary, labels: {role: primary}}]
`)...))
	// A match whose subnet does not parse is left out, warned; a match for
	// another port does not apply.
	const ignored = `warning VirtualService bookinfo/db: tcp[1].match[0].destinationSubnets: "not-a-subnet" is neither a CIDR nor an address`
	if len(rej) != 1 || !strings.HasPrefix(rej[0].String(), ignored) {
		t.Errorf("rejections = %v; want one: %s...", rej, ignored)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	got := map[string]*model.TCPRoute{}
	var matched []model.TCPRoute
	for _, l := range cfg.Listeners {
		for _, vh := range l.VirtualHosts {
			got[fmt.Sprintf("%s:%d", vh.Name, l.Port)] = vh.TCP
			matched = append(matched, vh.TCPMatched...)
			// Ports named tcp are declared TCP: relayed unread.
			if want := l.Port == 9000; vh.Opaque != want {
				t.Errorf("%s:%d opaque = %v; want %v", vh.Name, l.Port, vh.Opaque, want)
			}
		}
	}
	cl := func(host string, port uint32) string { return clusterName(host+".bookinfo.svc.cluster.local", port) }
	want := map[string]*model.TCPRoute{
		"reviews.bookinfo.svc.cluster.local:9080": {Name: "default", Destinations: []model.WeightedDestination{{Cluster: cl("reviews", 9080), Weight: 1}}},
		"tcp-echo.bookinfo.svc.cluster.local:9000": {Name: "bookinfo/tcp-echo", Destinations: []model.WeightedDestination{
			{Cluster: cl("tcp-echo-v1", 9000), Weight: 80}, {Cluster: cl("tcp-echo-v2", 9000), Weight: 20},
		}},
		"tcp-echo-v1.bookinfo.svc.cluster.local:9000": {Name: "default", Destinations: []model.WeightedDestination{{Cluster: cl("tcp-echo-v1", 9000), Weight: 1}}},
		"tcp-echo-v2.bookinfo.svc.cluster.local:9000": {Name: "default", Destinations: []model.WeightedDestination{{Cluster: cl("tcp-echo-v2", 9000), Weight: 1}}},
		"db.bookinfo.svc.cluster.local:9000":          {Name: "db.bookinfo.tcp.2", Destinations: []model.WeightedDestination{{Cluster: cl("db", 9000), Subset: "primary", Weight: 100}}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("tcp routes by virtual host (-want +got):\n%s", d)
	}
	// The routes for some clients come first, with their conditions.
	wantMatched := []model.TCPRoute{{Name: "db.bookinfo.tcp.0", Destinations: []model.WeightedDestination{{Cluster: cl("db", 9000), Weight: 100}},
		Matches: []model.TCPMatch{{SourceLabels: map[string]string{"app": "reports"}}, {SourceNamespace: "analytics", DestinationSubnets: []string{"10.96.0.0/16", "10.96.0.43"}}}}}
	if d := cmp.Diff(wantMatched, matched); d != "" {
		t.Errorf("tcp routes with conditions (-want +got):\n%s", d)
	}
	for _, tt := range []struct {
		name     string
		accepted bool
		reason   string
	}{
		{"tcp-echo", true, "Accepted"},
		{"tcp-echo-later", false, "NotAllowedByListeners"},
	} {
		st := statusOf(t, b, "TCPRoute", "bookinfo", tt.name)
		if len(st.Parents) != 1 {
			t.Fatalf("TCPRoute %s: parents %+v; want one", tt.name, st.Parents)
		}
		c := meta.FindStatusCondition(st.Parents[0].Conditions, "Accepted")
		if c == nil || (c.Status == metav1.ConditionTrue) != tt.accepted || c.Reason != tt.reason {
			t.Errorf("TCPRoute %s: Accepted %+v; want %v %s", tt.name, c, tt.accepted, tt.reason)
		}
		if !tt.accepted && !strings.Contains(c.Message, "port 9000 by TCPRoute bookinfo/tcp-echo") {
			t.Errorf("TCPRoute %s: message %q; want it to name the route that takes port 9000", tt.name, c.Message)
		}
	}
}

// TestWaypointForWorkloads: a waypoint for workloads (or all) gets the
// enrolled workloads bound to it, by address, so that it forwards what is
// addressed to them; one for services (the default) gets none, and a
// waypoint with workloads but no service still gets a config.
func TestWaypointForWorkloads(t *testing.T) {
	docs := func(waypointFor string) []string {
		return []string{
			ns("shop", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint"),
			waypoint("shop", "waypoint", "10.96.9.9", waypointFor),
			pod("shop", "db-0", "10.0.0.7", "n1", "app=db,version=v3,team=blue"),
			pod("shop", "cache-0", "10.0.0.8", "n1", "app=cache"),
		}
	}
	for _, tt := range []struct {
		waypointFor string
		want        []model.L7Workload
	}{
		{"workload", []model.L7Workload{
			{Addresses: []string{"10.0.0.8"}, Name: "cache-0", Namespace: "shop", Labels: map[string]string{"app": "cache"}, Identity: "spiffe://cluster.local/ns/shop/sa/sa-cache-0"},
			{Addresses: []string{"10.0.0.7"}, Name: "db-0", Namespace: "shop", Labels: map[string]string{"app": "db", "version": "v3"}, Identity: "spiffe://cluster.local/ns/shop/sa/sa-db-0"},
		}},
		{"all", []model.L7Workload{
			{Addresses: []string{"10.0.0.8"}, Name: "cache-0", Namespace: "shop", Labels: map[string]string{"app": "cache"}, Identity: "spiffe://cluster.local/ns/shop/sa/sa-cache-0"},
			{Addresses: []string{"10.0.0.7"}, Name: "db-0", Namespace: "shop", Labels: map[string]string{"app": "db", "version": "v3"}, Identity: "spiffe://cluster.local/ns/shop/sa/sa-db-0"},
		}},
		{"", nil},
	} {
		snap, _ := mustBuild(t, inputs(t, docs(tt.waypointFor)...))
		cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "shop", Name: "waypoint"})
		if tt.want == nil {
			if ok {
				t.Errorf("waypoint-for %q with no service: config %+v; want none", tt.waypointFor, cfg)
			}
			continue
		}
		if !ok {
			t.Fatalf("waypoint-for %q: no config", tt.waypointFor)
		}
		if d := cmp.Diff(tt.want, cfg.Workloads); d != "" {
			t.Errorf("waypoint-for %q: workloads (-want +got):\n%s", tt.waypointFor, d)
		}
	}
}

// TestConnectionPoolFields: a DestinationRule's connectionPool reaches the
// waypoint whole: retries, connection age, TCP idle timeout (0s: never),
// keepalive probes, HTTP/2 pings, and the upstream HTTP version, which
// follows the port's declared protocol, the DestinationRule's
// h2UpgradePolicy and useClientProtocol, and the mesh config's
// h2UpgradePolicy for HTTP ports (Istio's shouldH2Upgrade).
func TestConnectionPoolFields(t *testing.T) {
	tp := reviewsTraffic(t, `{connectionPool: {
      tcp: {maxConnectionDuration: 30m, idleTimeout: 0s, tcpKeepalive: {time: 60s, interval: 10s, probes: 3}},
      http: {maxRetries: 7, http2KeepAlive: {interval: 30s, timeout: 5s}}}}`)
	want := model.ConnectionPool{MaxRetries: 7, MaxConnectionDuration: 30 * time.Minute, TCPIdleTimeout: model.NoTimeout,
		TCPKeepalive:   &model.TCPKeepalive{Time: time.Minute, Interval: 10 * time.Second, Probes: 3},
		H2PingInterval: 30 * time.Second, H2PingTimeout: 5 * time.Second}
	if diff := cmp.Diff(want, tp.Pool); diff != "" {
		t.Errorf("pool (-want +got):\n%s", diff)
	}
	if tp := reviewsTraffic(t, `{connectionPool: {tcp: {idleTimeout: 2m}}}`); tp.Pool.TCPIdleTimeout != 2*time.Minute {
		t.Errorf("tcp idleTimeout 2m = %v", tp.Pool.TCPIdleTimeout)
	}

	upgradeMesh := `apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: "h2UpgradePolicy: UPGRADE"
`
	svc := func(portName, appProtocol string) string {
		app := ""
		if appProtocol != "" {
			app = ", appProtocol: " + appProtocol
		}
		return `apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports: [{name: ` + portName + `, port: 9080` + app + `}]
`
	}
	dr := func(http string) string {
		return `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings
  trafficPolicy: {connectionPool: {http: ` + http + `}}
`
	}
	for _, tt := range []struct {
		name      string
		docs      []string
		protocol  model.UpstreamProtocol
		upgrade   bool
		useClient bool
	}{
		{"http port", []string{svc("http", "")}, model.UpstreamAuto, false, false},
		{"grpc port", []string{svc("grpc", "")}, model.UpstreamHTTP2, false, false},
		{"h2c appProtocol", []string{svc("web", "kubernetes.io/h2c")}, model.UpstreamHTTP2, false, false},
		{"undeclared port", []string{svc("web", "")}, model.UpstreamAuto, false, false},
		{"DestinationRule UPGRADE", []string{svc("http", ""), dr("{h2UpgradePolicy: UPGRADE}")}, model.UpstreamAuto, true, false},
		{"DestinationRule useClientProtocol", []string{svc("http", ""), dr("{useClientProtocol: true}")}, model.UpstreamAuto, false, true},
		{"mesh UPGRADE", []string{svc("http", ""), upgradeMesh}, model.UpstreamAuto, true, false},
		{"mesh UPGRADE, DestinationRule DO_NOT_UPGRADE", []string{svc("http", ""), upgradeMesh, dr("{h2UpgradePolicy: DO_NOT_UPGRADE}")}, model.UpstreamAuto, false, false},
		{"mesh UPGRADE, DestinationRule without policy", []string{svc("http", ""), upgradeMesh, dr("{maxRetries: 2}")}, model.UpstreamAuto, true, false},
		{"mesh UPGRADE, undeclared port", []string{svc("web", ""), upgradeMesh}, model.UpstreamAuto, false, false},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := bookinfoWaypoint(t, strings.Join(tt.docs, "---\n"))
			var c *model.L7Cluster
			for i := range cfg.Clusters {
				if strings.Contains(cfg.Clusters[i].Name, "ratings") {
					c = &cfg.Clusters[i]
				}
			}
			if c == nil {
				t.Fatalf("no ratings cluster in %+v", cfg.Clusters)
			}
			if c.Protocol != tt.protocol || c.Traffic.Pool.H2Upgrade != tt.upgrade || c.Traffic.Pool.UseClientProtocol != tt.useClient {
				t.Errorf("protocol %q, h2Upgrade %v, useClientProtocol %v; want %q, %v, %v",
					c.Protocol, c.Traffic.Pool.H2Upgrade, c.Traffic.Pool.UseClientProtocol, tt.protocol, tt.upgrade, tt.useClient)
			}
		})
	}
}

// TestWarmupFields: loadBalancer.warmup (and the older warmupDurationSecs)
// reach the waypoint with Istio's defaults (10%, aggression 1) for round
// robin and least request; with another load balancer it is warned and
// left out, as Envoy's slow start does not apply there.
func TestWarmupFields(t *testing.T) {
	for _, tt := range []struct {
		lb   string
		want *model.Warmup
	}{
		{"{simple: ROUND_ROBIN, warmup: {duration: 60s, minimumPercent: 20, aggression: 2}}", &model.Warmup{Duration: time.Minute, MinPercent: 20, Aggression: 2}},
		{"{warmup: {duration: 90s}}", &model.Warmup{Duration: 90 * time.Second, MinPercent: 10, Aggression: 1}},
		{"{simple: LEAST_REQUEST, warmupDurationSecs: 30s}", &model.Warmup{Duration: 30 * time.Second, MinPercent: 10, Aggression: 1}},
	} {
		if got := reviewsTraffic(t, "{loadBalancer: "+tt.lb+"}").LB.Warmup; !cmp.Equal(got, tt.want) {
			t.Errorf("%s: warmup %+v; want %+v", tt.lb, got, tt.want)
		}
	}
	cfg := bookinfoWaypointWarned(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {loadBalancer: {simple: RANDOM, warmup: {duration: 60s}}}
`, "loadBalancer.warmup (with this load balancer, or these values) not implemented")
	if w := cfg.Clusters[0].Traffic.LB.Warmup; w != nil {
		t.Errorf("warmup with RANDOM: %+v; want none", w)
	}
}

// TestRetryBudgetFields: trafficPolicy.retryBudget reaches the waypoint,
// with Istio's defaults (20%, at least 3), port-level settings keeping it.
func TestRetryBudgetFields(t *testing.T) {
	if b := reviewsTraffic(t, "{retryBudget: {percent: 50, minRetryConcurrency: 2}}").RetryBudget; b == nil || *b != (model.RetryBudget{Percent: 50, MinConcurrency: 2}) {
		t.Errorf("retryBudget = %+v; want 50%%, 2", b)
	}
	if b := reviewsTraffic(t, "{retryBudget: {}, portLevelSettings: [{port: {number: 9080}, connectionPool: {http: {maxRetries: 4}}}]}").RetryBudget; b == nil || *b != (model.RetryBudget{Percent: 20, MinConcurrency: 3}) {
		t.Errorf("retryBudget {} with port-level settings = %+v; want Istio's defaults 20%%, 3", b)
	}
}

// TestRetryHostFields: a VirtualService's retryIgnorePreviousHosts: false
// and retryRemoteLocalities reach the waypoint's retry policy.
func TestRetryHostFields(t *testing.T) {
	cfg := bookinfoWaypoint(t, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {prefix: /a}}]
    route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryIgnorePreviousHosts: false, retryRemoteLocalities: true}
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryIgnorePreviousHosts: true}
`)
	routes := cfg.Listeners[0].VirtualHosts[0].Routes
	if len(routes) != 2 || routes[0].Retries == nil || routes[1].Retries == nil {
		t.Fatalf("routes %+v; want two with retries", routes)
	}
	if r := routes[0].Retries; !r.SameHosts || !r.RemoteLocalities {
		t.Errorf("first route's retries %+v; want same hosts allowed and remote localities", r)
	}
	if r := routes[1].Retries; r.SameHosts || r.RemoteLocalities {
		t.Errorf("second route's retries %+v; want neither", r)
	}
}

// TestOutlierSplitFields: splitExternalLocalOriginErrors reaches the
// waypoint with consecutiveLocalOriginFailures, Envoy's 5 when unset.
func TestOutlierSplitFields(t *testing.T) {
	for od, want := range map[string]int{
		"{splitExternalLocalOriginErrors: true}":                                    5,
		"{splitExternalLocalOriginErrors: true, consecutiveLocalOriginFailures: 2}": 2,
	} {
		o := reviewsTraffic(t, "{outlierDetection: "+od+"}").Outlier
		if o == nil || !o.SplitLocalOrigin || o.ConsecutiveLocalOriginFailures != want {
			t.Errorf("%s: outlier %+v; want split, %d local failures", od, o, want)
		}
	}
}

// TestWaypointTLSRoutes: TLSRoutes bound to a Service (GAMMA, Istio's
// waypoint TLSRoute) become the service's passthrough routes at its
// waypoint, by their hostnames (any name without), for the port they name
// or all; their status says they are applied.
func TestWaypointTLSRoutes(t *testing.T) {
	svc := func(name, ip string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: bookinfo}
spec: {clusterIP: %s, selector: {app: %s}, ports: [{name: https, port: 443}, {name: tls-alt, port: 8443}]}
`, name, ip, name)
	}
	b := NewBuilder(BuilderOptions{})
	snap, rej := b.Build(inputs(t, bookinfo(
		svc("secure", "10.96.0.50"), svc("secure-a", "10.96.0.51"), svc("secure-b", "10.96.0.52"),
		`apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: by-name, namespace: bookinfo, creationTimestamp: "2026-01-01T00:00:01Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: secure, port: 443}]
  hostnames: [a.example.com]
  rules: [{backendRefs: [{name: secure-a, port: 443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: rest, namespace: bookinfo, creationTimestamp: "2026-01-01T00:00:02Z"}
spec:
  parentRefs: [{group: "", kind: Service, name: secure}]
  rules: [{backendRefs: [{name: secure-b, port: 443}]}]
`)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	got := map[uint32][]model.PassthroughRoute{}
	for _, l := range cfg.Listeners {
		for _, vh := range l.VirtualHosts {
			if vh.Name == "secure.bookinfo.svc.cluster.local" {
				got[l.Port] = vh.Passthrough
			}
		}
	}
	cl := func(host string) string { return clusterName(host+".bookinfo.svc.cluster.local", 443) }
	want := map[uint32][]model.PassthroughRoute{
		443: {
			{Name: "bookinfo/by-name", SNIHosts: []string{"a.example.com"}, Destinations: []model.WeightedDestination{{Cluster: cl("secure-a"), Weight: 1}}},
			{Name: "bookinfo/rest", SNIHosts: []string{"*"}, Destinations: []model.WeightedDestination{{Cluster: cl("secure-b"), Weight: 1}}},
		},
		8443: {{Name: "bookinfo/rest", SNIHosts: []string{"*"}, Destinations: []model.WeightedDestination{{Cluster: cl("secure-b"), Weight: 1}}}},
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("passthrough routes by port (-want +got):\n%s", d)
	}
	for _, name := range []string{"by-name", "rest"} {
		st := statusOf(t, b, "TLSRoute", "bookinfo", name)
		if len(st.Parents) != 1 {
			t.Fatalf("TLSRoute %s: parents %+v; want one", name, st.Parents)
		}
		if c := meta.FindStatusCondition(st.Parents[0].Conditions, "Accepted"); c == nil || c.Status != metav1.ConditionTrue || !strings.Contains(c.Message, "TLS connections") {
			t.Errorf("TLSRoute %s: Accepted %+v; want True, applied to TLS connections", name, c)
		}
	}
}

// TestTunnelFields: trafficPolicy.tunnel (CONNECT, the default protocol)
// reaches the waypoint; POST, or a tunnel without a target, is warned and
// left out.
func TestTunnelFields(t *testing.T) {
	if tn := reviewsTraffic(t, "{tunnel: {targetHost: api.example.com, targetPort: 443}}").Tunnel; tn == nil || *tn != (model.Tunnel{TargetHost: "api.example.com", TargetPort: 443}) {
		t.Errorf("tunnel = %+v; want api.example.com:443", tn)
	}
	for tunnel, warned := range map[string]string{
		"{protocol: POST, targetHost: api.example.com, targetPort: 443}": "tunnel.protocol POST (CONNECT is)",
		"{targetHost: api.example.com}":                                  "want a host name or address and a port",
	} {
		cfg := bookinfoWaypointWarned(t, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {tunnel: `+tunnel+`}
`, warned)
		if tn := cfg.Clusters[0].Traffic.Tunnel; tn != nil {
			t.Errorf("%s: tunnel %+v; want none", tunnel, tn)
		}
	}
}

// TestProxyProtocolFields: trafficPolicy.proxyProtocol reaches the
// waypoint as its version (V1 when unset, as Istio's enum defaults).
func TestProxyProtocolFields(t *testing.T) {
	for pp, want := range map[string]int{"{}": 1, "{version: V1}": 1, "{version: V2}": 2} {
		if got := reviewsTraffic(t, "{proxyProtocol: "+pp+"}").ProxyProtocol; got != want {
			t.Errorf("proxyProtocol %s: version %d; want %d", pp, got, want)
		}
	}
}

// TestWaypointVirtualServiceTLS: a VirtualService's tls routes become the
// service's passthrough routes at its waypoint, by their sniHosts, for
// the port they match; TLSRoutes bound to the Service win over them.
func TestWaypointVirtualServiceTLS(t *testing.T) {
	docs := []string{`apiVersion: v1
kind: Service
metadata: {name: secure, namespace: bookinfo}
spec: {clusterIP: 10.96.0.50, selector: {app: secure}, ports: [{name: https, port: 443}]}
---
apiVersion: v1
kind: Service
metadata: {name: secure-b, namespace: bookinfo}
spec: {clusterIP: 10.96.0.52, selector: {app: secure-b}, ports: [{name: https, port: 443}]}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: secure, namespace: bookinfo}
spec:
  hosts: [secure]
  tls:
  - match: [{port: 443, sniHosts: [b.example.com]}]
    route: [{destination: {host: secure-b}}]
`}
	passthrough := func(cfg *model.L7Config) []model.PassthroughRoute {
		for _, l := range cfg.Listeners {
			for _, vh := range l.VirtualHosts {
				if vh.Name == "secure.bookinfo.svc.cluster.local" {
					return vh.Passthrough
				}
			}
		}
		return nil
	}
	got := passthrough(bookinfoWaypoint(t, strings.Join(docs, "---\n")))
	want := []model.PassthroughRoute{{Name: "secure.bookinfo.tls.0", SNIHosts: []string{"b.example.com"},
		Destinations: []model.WeightedDestination{{Cluster: clusterName("secure-b.bookinfo.svc.cluster.local", 443), Weight: 100}}}}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("passthrough routes (-want +got):\n%s", d)
	}
	withRoute := append(docs, `apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: by-route, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: secure}]
  hostnames: [c.example.com]
  rules: [{backendRefs: [{name: secure-b, port: 443}]}]
`)
	if got := passthrough(bookinfoWaypoint(t, strings.Join(withRoute, "---\n"))); len(got) != 1 || got[0].Name != "bookinfo/by-route" {
		t.Errorf("with a TLSRoute bound to the Service: %+v; want its route alone", got)
	}
}
