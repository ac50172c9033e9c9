package controlplane

import (
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

const meshConfigExtAuthz = `apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    defaultConfig: {discoveryAddress: istiod.istio-system.svc:15012}
    extensionProviders:
    - name: sample-ext-authz-http
      envoyExtAuthzHttp:
        service: ext-authz.bookinfo.svc.cluster.local
        port: 8000
        timeout: 2s
        pathPrefix: /check
        includeRequestHeadersInCheck: [x-ext-authz]
        headersToUpstreamOnAllow: [x-user]
        statusOnError: "503"
    - name: sample-ext-authz-grpc
      envoyExtAuthzGrpc: {service: bookinfo/ext-authz.bookinfo.svc.cluster.local, port: 9000, failOpen: true}
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
`

const extAuthzService = `apiVersion: v1
kind: Service
metadata: {name: ext-authz, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.40
  selector: {app: ext-authz}
  ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
`

func customPolicy(provider, target string) string {
	return `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz-` + provider + `, namespace: bookinfo}
spec:
  ` + target + `
  action: CUSTOM
  provider: {name: ` + provider + `}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`
}

// TestExtAuthzConfig: the mesh config's ext_authz providers that CUSTOM
// policies attached to a waypoint name reach the waypoint with a cluster for
// their service and port; the policy names its provider.
func TestExtAuthzConfig(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(meshConfigExtAuthz, extAuthzService,
		pod("bookinfo", "ext-authz", "10.0.0.40", "n1", "app=ext-authz"),
		customPolicy("sample-ext-authz-http", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"),
		customPolicy("sample-ext-authz-grpc", "targetRefs: [{kind: Service, group: \"\", name: reviews}]"),
	)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	want := []model.ExtAuthz{
		{Name: "sample-ext-authz-grpc", GRPC: true, Cluster: "outbound|9000||ext-authz.bookinfo.svc.cluster.local", Authority: "ext-authz.bookinfo.svc.cluster.local:9000", FailOpen: true},
		{Name: "sample-ext-authz-http", Cluster: "outbound|8000||ext-authz.bookinfo.svc.cluster.local", Authority: "ext-authz.bookinfo.svc.cluster.local:8000",
			Timeout: 2 * time.Second, PathPrefix: "/check", StatusOnError: 503, IncludeRequestHeaders: []string{"x-ext-authz"}, HeadersToUpstreamOnAllow: []string{"x-user"}},
	}
	if d := cmp.Diff(want, cfg.ExtAuthz); d != "" {
		t.Errorf("ext authz providers (-want +got):\n%s", d)
	}
	for _, name := range []string{"outbound|8000||ext-authz.bookinfo.svc.cluster.local", "outbound|9000||ext-authz.bookinfo.svc.cluster.local"} {
		var found *model.L7Cluster
		for i := range cfg.Clusters {
			if cfg.Clusters[i].Name == name {
				found = &cfg.Clusters[i]
			}
		}
		if found == nil || len(found.Endpoints) != 1 || found.Endpoints[0].Address[:10] != "10.0.0.40:" {
			t.Errorf("cluster %s = %+v; want the ext-authz pod as its endpoint", name, found)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the config does not validate: %v", err)
	}
	p, ok := snap.AuthorizationPolicy(model.NamespacedName{Namespace: "bookinfo", Name: "ext-authz-sample-ext-authz-http"})
	if !ok || p.Policy.Action != policy.Custom || p.Policy.Provider != "sample-ext-authz-http" {
		t.Errorf("policy = %+v; want CUSTOM with its provider", p)
	}
}

// TestExtAuthzWarnings: what cannot work as written is said, and the
// policy still stands (its requests are denied: fail closed).
func TestExtAuthzWarnings(t *testing.T) {
	for _, tt := range []struct{ name, doc, warned string }{
		{"unknown provider", customPolicy("nobody", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]"), `provider "nobody" is not`},
		{"selector", customPolicy("sample-ext-authz-http", "selector: {matchLabels: {app: reviews}}"), "enforced by waypoints"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, rej := mustBuild(t, inputs(t, bookinfo(meshConfigExtAuthz, extAuthzService, tt.doc)...))
			if !hasRejection(rej, tt.warned, true) {
				t.Errorf("rejections = %v; want a warning %q", rej, tt.warned)
			}
		})
	}
	_, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data: {mesh: "extensionProviders: {name: x}"}
`)...))
	if !hasRejection(rej, "not a valid MeshConfig", false) {
		t.Errorf("rejections = %v; want the mesh config reported", rej)
	}
}

// TestHTTPRouteExternalAuthFilter: an HTTPRoute rule's ExternalAuth filter
// becomes the route's own authorizer on the backendRef's Service and port
// (HTTP: path prefix, Authorization and the allowed headers, the answer's
// headers upstream, all of them without a list; gRPC: the allowed headers;
// forwardBody up to maxSize, truncated); a backendRef that does not
// resolve is reported and the rule answers 500, never unchecked.
func TestHTTPRouteExternalAuthFilter(t *testing.T) {
	const authzSvc = `apiVersion: v1
kind: Service
metadata: {name: authz, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: authz}
  ports: [{name: http, port: 8000}, {name: grpc, port: 9000}]
`
	cfg := bookinfoWaypoint(t, authzSvc+`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /http}}]
    backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: ExternalAuth
      externalAuth:
        protocol: HTTP
        backendRef: {name: authz, port: 8000}
        http: {path: /check, allowedHeaders: [x-user], allowedResponseHeaders: [x-auth-user]}
        forwardBody: {maxSize: 512}
  - matches: [{path: {type: PathPrefix, value: /all}}]
    backendRefs: [{name: reviews, port: 9080}]
    filters:
    - {type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: authz, port: 8000}}}
  - matches: [{path: {type: PathPrefix, value: /grpc}}]
    backendRefs: [{name: reviews, port: 9080}]
    filters:
    - type: ExternalAuth
      externalAuth: {protocol: GRPC, backendRef: {name: authz, port: 9000}, grpc: {allowedHeaders: [x-user]}}
`)
	byPath := map[string]*model.ExtAuthz{}
	for _, l := range cfg.Listeners {
		for _, vh := range l.VirtualHosts {
			for _, r := range vh.Routes {
				if len(r.Matches) == 1 && r.Matches[0].URI != nil {
					byPath[r.Matches[0].URI.PathPrefix] = r.ExtAuthz
				}
			}
		}
	}
	const cluster = "outbound|8000||authz.bookinfo.svc.cluster.local"
	want := map[string]*model.ExtAuthz{
		"/http": {Name: "HTTPRoute/bookinfo/reviews/reviews.bookinfo.0", Cluster: cluster, Authority: "authz.bookinfo.svc.cluster.local:8000",
			PathPrefix: "/check", IncludeRequestHeaders: []string{"Authorization", "x-user"}, HeadersToUpstreamOnAllow: []string{"x-auth-user"},
			IncludeBody: &model.ExtAuthzBody{MaxBytes: 512, AllowPartial: true}},
		"/all": {Name: "HTTPRoute/bookinfo/reviews/reviews.bookinfo.1", Cluster: cluster, Authority: "authz.bookinfo.svc.cluster.local:8000",
			IncludeRequestHeaders: []string{"Authorization"}, HeadersToUpstreamOnAllow: []string{"*"}},
		"/grpc": {Name: "HTTPRoute/bookinfo/reviews/reviews.bookinfo.2", GRPC: true, Cluster: "outbound|9000||authz.bookinfo.svc.cluster.local",
			Authority: "authz.bookinfo.svc.cluster.local:9000", IncludeRequestHeaders: []string{"x-user"}},
	}
	if diff := cmp.Diff(want, byPath); diff != "" {
		t.Errorf("route authorizers (-want +got):\n%s", diff)
	}
	if !slices.ContainsFunc(cfg.Clusters, func(c model.L7Cluster) bool { return c.Name == cluster && len(c.Endpoints) == 0 }) {
		t.Errorf("clusters %v; want %s (no endpoints: no authz pod)", cfg.Clusters, cluster)
	}

	cfg = bookinfoWaypointWarned(t, reviewsHTTPRoute(`  - backendRefs: [{name: reviews, port: 9080}]
    filters:
    - {type: ExternalAuth, externalAuth: {protocol: HTTP, backendRef: {name: authz, namespace: security, port: 8000}}}
`), "HTTPRoute bookinfo/reviews: rules[0]: filters[0] (ExternalAuth): externalAuth backend authz does not resolve")
	if r := cfg.Listeners[0].VirtualHosts[0].Routes[0]; r.DirectResponse == nil || r.DirectResponse.Status != 500 || len(r.Destinations) != 0 {
		t.Errorf("route with an unresolved authorizer = %+v; want a 500 answer, nothing forwarded", r)
	}
}
