package controlplane

import (
	"regexp"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
)

// TestHTTPRouteFilters: each Gateway API filter becomes the waypoint route
// behaviour the spec defines; one that cannot be honoured is reported and
// its requests are answered 500, never served without it.
func TestHTTPRouteFilters(t *testing.T) {
	const cluster = "outbound|9080||reviews.bookinfo.svc.cluster.local"
	route := reviewsHTTPRoute
	tests := []struct {
		name     string
		rules    string
		want     model.L7Route
		rejected string // part of the reported fault; empty means none
	}{{
		name: "header modifiers on the rule and on one backend",
		rules: `  - filters:
    - type: RequestHeaderModifier
      requestHeaderModifier: {set: [{name: X-Env, value: canary}], add: [{name: X-Trace, value: "1"}], remove: [X-Debug]}
    - type: ResponseHeaderModifier
      responseHeaderModifier: {set: [{name: Cache-Control, value: no-store}]}
    backendRefs:
    - name: reviews
      port: 9080
      filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: X-Backend, value: v1}]}}]
`,
		want: model.L7Route{
			Destinations:    []model.WeightedDestination{{Cluster: cluster, Weight: 1, RequestHeaders: model.HeaderOps{Set: map[string]string{"x-backend": "v1"}}}},
			RequestHeaders:  model.HeaderOps{Set: map[string]string{"x-env": "canary"}, Add: map[string]string{"x-trace": "1"}, Remove: []string{"x-debug"}},
			ResponseHeaders: model.HeaderOps{Set: map[string]string{"cache-control": "no-store"}},
		},
	}, {
		name: "redirect to https answers by itself",
		rules: `  - filters: [{type: RequestRedirect, requestRedirect: {scheme: https, port: 443}}]
`,
		want: model.L7Route{Redirect: &model.Redirect{Scheme: "https", Port: 443, Code: 302}},
	}, {
		name: "rewrite of the matched prefix, on a segment boundary",
		rules: `  - matches: [{path: {type: PathPrefix, value: /api/}}]
    filters: [{type: URLRewrite, urlRewrite: {hostname: reviews.internal, path: {type: ReplacePrefixMatch, replacePrefixMatch: /v2}}}]
    backendRefs: [{name: reviews, port: 9080}]
`,
		want: model.L7Route{
			Matches:      []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/api/"}}},
			Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			Rewrite:      &model.Rewrite{Authority: "reviews.internal", URIRegex: &model.RegexRewrite{Pattern: `^/api(/.*)?$`, Substitution: "/v2${1}"}},
		},
	}, {
		name: "full path rewrite keeps a literal dollar",
		rules: `  - filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplaceFullPath, replaceFullPath: /price$}}}]
    backendRefs: [{name: reviews, port: 9080}]
`,
		want: model.L7Route{
			Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			Rewrite:      &model.Rewrite{URIRegex: &model.RegexRewrite{Pattern: "^.*$", Substitution: "/price$$"}},
		},
	}, {
		name: "mirror a fraction",
		rules: `  - filters: [{type: RequestMirror, requestMirror: {backendRef: {name: reviews, port: 9080}, fraction: {numerator: 1, denominator: 4}}}]
    backendRefs: [{name: reviews, port: 9080}]
`,
		want: model.L7Route{
			Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			Mirrors:      []model.Mirror{{Cluster: cluster, Percent: 25}},
		},
	}, {
		name: "retry on codes, and on connection errors",
		rules: `  - retry: {attempts: 3, codes: [503, 504]}
    backendRefs: [{name: reviews, port: 9080}]
`,
		want: model.L7Route{
			Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			Retries:      &model.RetryPolicy{Attempts: 3, RetryOn: []string{"connect-failure", "refused-stream", "reset", "retriable-status-codes"}, RetriableStatusCodes: []int{503, 504}},
		},
	}, {
		name: "a retry backoff that is no duration: 500",
		rules: `  - retry: {attempts: 2, backoff: later}
    backendRefs: [{name: reviews, port: 9080}]
`,
		want:     model.L7Route{DirectResponse: &model.DirectResponse{Status: 500}},
		rejected: `retry.backoff "later" is not a duration (want one such as "100ms")`,
	}, {
		name: "an ExtensionRef is never skipped: 500",
		rules: `  - matches: [{path: {type: PathPrefix, value: /admin}}]
    filters: [{type: ExtensionRef, extensionRef: {group: example.com, kind: Auth, name: strict}}]
    backendRefs: [{name: reviews, port: 9080}]
`,
		want: model.L7Route{
			Matches:        []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/admin"}}},
			DirectResponse: &model.DirectResponse{Status: 500},
		},
		rejected: "ExtensionRef Auth/strict is not supported",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t, bookinfo(route(tt.rules))...))
			var faults []string
			for _, r := range rej {
				faults = append(faults, r.String())
			}
			if got := strings.Join(faults, "; "); tt.rejected == "" && got != "" || !strings.Contains(got, tt.rejected) {
				t.Errorf("reported %q; want %q", got, tt.rejected)
			}
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config for bookinfo/waypoint")
			}
			routes := cfg.Listeners[0].VirtualHosts[0].Routes
			if len(routes) != 1 {
				t.Fatalf("%d routes; want 1", len(routes))
			}
			tt.want.Name, tt.want.Origin = "reviews.bookinfo.0", "HTTPRoute/bookinfo/reviews"
			if d := cmp.Diff(tt.want, routes[0]); d != "" {
				t.Errorf("route (-want +got):\n%s", d)
			}
		})
	}
}

// TestReplacePrefixMatchPaths: the rewritten path a backend sees, for the
// prefix replacements Gateway API's conformance tests use.
func TestReplacePrefixMatchPaths(t *testing.T) {
	tests := []struct {
		prefix, replace, path, want string
	}{
		{"/api", "/v2", "/api", "/v2"},
		{"/api", "/v2", "/api/users", "/v2/users"},
		{"/api/", "/v2/", "/api/users", "/v2/users"},
		{"/api", "/", "/api", "/"},
		{"/api", "/", "/api/users", "/users"},
		{"/", "/app", "/x/y", "/app/x/y"},
	}
	for _, tt := range tests {
		rt := `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: "` + tt.prefix + `"}}]
    filters: [{type: URLRewrite, urlRewrite: {path: {type: ReplacePrefixMatch, replacePrefixMatch: "` + tt.replace + `"}}}]
    backendRefs: [{name: reviews, port: 9080}]
`
		snap, _ := mustBuild(t, inputs(t, bookinfo(rt)...))
		cfg, _ := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
		rw := cfg.Listeners[0].VirtualHosts[0].Routes[0].Rewrite
		if rw == nil || rw.URIRegex == nil {
			t.Fatalf("%s → %s: no regex rewrite", tt.prefix, tt.replace)
		}
		got := regexp.MustCompile(rw.URIRegex.Pattern).ReplaceAllString(tt.path, rw.URIRegex.Substitution)
		if got != tt.want {
			t.Errorf("prefix %s replaced by %s: %s → %s; want %s", tt.prefix, tt.replace, tt.path, got, tt.want)
		}
	}
}

// TestDestinationRulePortLevelSettings: Istio's example — a port's settings
// replace the destination-level policy for that port only.
func TestDestinationRulePortLevelSettings(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: reviews}
  ports: [{name: http, port: 80, targetPort: 8080}, {name: admin, port: 9000, targetPort: 9000}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: ratings, namespace: bookinfo}
spec:
  host: ratings
  trafficPolicy:
    loadBalancer: {simple: LEAST_REQUEST}
    connectionPool: {tcp: {maxConnections: 100}}
    portLevelSettings:
    - port: {number: 9000}
      loadBalancer: {simple: ROUND_ROBIN}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: ratings, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - route: [{destination: {host: ratings}}]
`)...))
	for _, r := range rej {
		if !r.Warning {
			t.Errorf("rejected: %s", r)
		}
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config")
	}
	got := map[string]model.TrafficPolicy{}
	for _, c := range cfg.Clusters {
		got[c.Name] = c.Traffic
	}
	http := got["outbound|80||ratings.bookinfo.svc.cluster.local"]
	admin := got["outbound|9000||ratings.bookinfo.svc.cluster.local"]
	if http.LB.Simple != model.LBLeastRequest || http.Pool.MaxConnections != 100 {
		t.Errorf("port 80 policy = %+v; want the destination-level LEAST_REQUEST with 100 connections", http)
	}
	if admin.LB.Simple != model.LBRoundRobin || admin.Pool.MaxConnections != 0 {
		t.Errorf("port 9000 policy = %+v; want its own ROUND_ROBIN and no inherited connection limit", admin)
	}
}

// TestVirtualServiceRegexRewrite: Istio's uriRegexRewrite example, with
// Envoy's backslash group references, gives the path Istio documents.
func TestVirtualServiceRegexRewrite(t *testing.T) {
	rw := reviewsRoute(t, `  - match: [{uri: {prefix: /service}}]
    rewrite:
      uriRegexRewrite: {match: '^/service/([^/]+)(/.*)$', rewrite: '\2/instance/\1'}
    route: [{destination: {host: reviews}}]
`).Rewrite
	if rw == nil || rw.URIRegex == nil {
		t.Fatal("no regex rewrite")
	}
	got := regexp.MustCompile(rw.URIRegex.Pattern).ReplaceAllString("/service/foo/v1/api", rw.URIRegex.Substitution)
	if got != "/v1/api/instance/foo" {
		t.Errorf("/service/foo/v1/api rewritten to %q; want /v1/api/instance/foo", got)
	}
}

// TestVirtualServiceExportTo: a VirtualService kept to its own namespace
// ("exportTo: [.]") is not used by a waypoint in another namespace, one
// exported there is (Istio's cross-namespace configuration sharing).
func TestVirtualServiceExportTo(t *testing.T) {
	vs := func(ns, exportTo string) string {
		return `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-abort, namespace: ` + ns + `}
spec:
  hosts: [reviews.bookinfo.svc.cluster.local]
  exportTo: ` + exportTo + `
  http:
  - fault: {abort: {httpStatus: 418, percentage: {value: 100}}}
    route: [{destination: {host: reviews.bookinfo.svc.cluster.local}}]
`
	}
	tests := []struct {
		name  string
		doc   string
		abort bool
	}{
		{"same namespace, exported to .", vs("bookinfo", `["."]`), true},
		{"other namespace, exported to .", vs("frontend", `["."]`), false},
		{"other namespace, exported to bookinfo", vs("frontend", `[bookinfo]`), true},
		{"other namespace, exported to *", vs("frontend", `["*"]`), true},
		{"same namespace, exported nowhere", vs("bookinfo", `["~"]`), false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, _ := mustBuild(t, inputs(t, bookinfo(ns("frontend", ""), tt.doc)...))
			cfg, _ := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			r := cfg.Listeners[0].VirtualHosts[0].Routes[0]
			if got := r.Fault != nil && r.Fault.Abort != nil; got != tt.abort {
				t.Errorf("waypoint in bookinfo applies the VirtualService: %v; want %v", got, tt.abort)
			}
		})
	}
}
