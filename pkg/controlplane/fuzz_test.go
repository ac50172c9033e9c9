package controlplane

import (
	"encoding/json"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"
)

// fuzzTranslate feeds JSON-unmarshalled objects of one kind, next to a small
// fixed cluster, through the Builder: whatever the object says, Build must
// not panic, and every rejection must name the object.
func fuzzTranslate(f *testing.F, apiVersion, kind string, seeds ...string) {
	f.Helper()
	for _, s := range seeds {
		for _, doc := range strings.Split(s, "\n---\n") {
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			js, err := yaml.YAMLToJSON([]byte(doc))
			if err != nil || json.Unmarshal(js, &tm) != nil || tm.Kind != kind {
				continue
			}
			f.Add(js)
		}
	}
	f.Add([]byte(`{"metadata":{"name":"x","namespace":"foo"},"spec":{}}`))
	base := []string{
		ns("foo", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=wp"),
		waypoint("foo", "wp", "10.96.9.9", "all"),
		pod("foo", "web", "10.0.0.2", "n1", "app=web"),
		service("foo", "web", "10.96.0.2", "app=web", ""),
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		obj := newObject(apiVersion, kind)
		if json.Unmarshal(data, obj) != nil {
			return
		}
		in := inputs(t, base...)
		if err := in.Add(obj); err != nil {
			t.Fatalf("Add(%T): %v", obj, err)
		}
		b := NewBuilder(BuilderOptions{})
		snap, rej := b.Build(in)
		if snap == nil {
			t.Fatal("Build returned a nil snapshot")
		}
		for _, r := range rej {
			if r.Kind == "" || r.Reason == "" {
				t.Errorf("rejection without kind or reason: %+v", r)
			}
		}
		// A second build over the same inputs gives the same model.
		again, _ := b.Build(in)
		if d := again.Diff(snap); !d.Empty() {
			t.Errorf("rebuild of unchanged inputs changed the model: %+v", d)
		}
	})
}

func FuzzTranslatePeerAuthentication(f *testing.F) {
	fuzzTranslate(f, "security.istio.io/v1", "PeerAuthentication", istioPeerAuthExamples)
}

func FuzzTranslateAuthorizationPolicy(f *testing.F) {
	fuzzTranslate(f, "security.istio.io/v1", "AuthorizationPolicy", istioAuthzExamples)
}

func FuzzTranslateRequestAuthentication(f *testing.F) {
	fuzzTranslate(f, "security.istio.io/v1", "RequestAuthentication", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, name: wp}, {kind: Service, name: web}]
  jwtRules: [{issuer: "issuer-foo", jwksUri: "https://example.com/.well-known/jwks.json"}]
`)
}

func FuzzTranslateServiceEntry(f *testing.F) {
	fuzzTranslate(f, "networking.istio.io/v1", "ServiceEntry", istioServiceEntryExamples)
}

func FuzzTranslateWorkloadEntry(f *testing.F) {
	fuzzTranslate(f, "networking.istio.io/v1", "WorkloadEntry", istioServiceEntryExamples)
}

func FuzzTranslateVirtualService(f *testing.F) {
	fuzzTranslate(f, "networking.istio.io/v1", "VirtualService", reviewsRouting, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: web, namespace: foo}
spec:
  hosts: [web]
  http:
  - match: [{uri: {regex: "/a.*"}, port: 80, withoutHeaders: {x: {prefix: y}}}]
    fault: {delay: {fixedDelay: 1s, percentage: {value: 10}}}
    mirror: {host: web, port: {number: 9090}}
    redirect: {uri: /b, redirectCode: 302}
  - route: [{destination: {host: web, port: {number: 80}}, headers: {request: {set: {a: b}}}}]
    rewrite: {uriRegexRewrite: {match: "^/x(.*)", rewrite: "/y\\1"}}
`, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews-route, namespace: foo}
spec:
  hosts: [reviews.prod.svc.cluster.local]
  http:
  - name: reviews-v2-routes
    match: [{uri: {prefix: "/wpcatalog"}}, {headers: {end-user: {regex: "^j.*"}}}]
    rewrite: {uri: "/newcatalog"}
    route: [{destination: {host: reviews.prod.svc.cluster.local, subset: v2}}]
  - route:
    - {destination: {host: reviews.prod.svc.cluster.local, subset: v1}, weight: 75}
    - {destination: {host: reviews.prod.svc.cluster.local, subset: v2}, weight: 25}
`)
}

func FuzzTranslateDestinationRule(f *testing.F) {
	fuzzTranslate(f, "networking.istio.io/v1", "DestinationRule", reviewsRouting, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: foo}
spec:
  host: web
  trafficPolicy:
    loadBalancer: {consistentHash: {httpHeaderName: x-user}}
    connectionPool: {tcp: {maxConnections: 10, connectTimeout: 1s}, http: {http2MaxRequests: 5}}
    outlierDetection: {consecutive5xxErrors: 3, interval: 5s, baseEjectionTime: 30s}
  subsets: [{name: v1, labels: {version: v1}}]
`, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: bookinfo-ratings, namespace: foo}
spec:
  host: ratings.prod.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: LEAST_REQUEST}}
  subsets:
  - name: testversion
    labels: {version: v3}
    trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
`)
}

func FuzzTranslateIstioGateway(f *testing.F) {
	fuzzTranslate(f, "networking.istio.io/v1", "Gateway", `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: my-gateway, namespace: foo}
spec:
  selector: {app: my-gateway-controller}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [uk.bookinfo.com, eu.bookinfo.com]
`)
}

func FuzzTranslateGateway(f *testing.F) {
	fuzzTranslate(f, "gateway.networking.k8s.io/v1", "Gateway", waypoint("foo", "wp2", "10.96.9.8", "workload"))
}

func FuzzTranslateHTTPRoute(f *testing.F) {
	fuzzTranslate(f, "gateway.networking.k8s.io/v1", "HTTPRoute", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: foo}
spec:
  parentRefs: [{group: "", kind: Service, name: web, port: 80}, {group: "", kind: Service, name: web}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/v[0-9]+/.*"}, headers: [{name: x, value: y}]}]
    backendRefs: [{name: web, port: 80, weight: 90}]
`)
}

func FuzzTranslateGRPCRoute(f *testing.F) {
	fuzzTranslate(f, "gateway.networking.k8s.io/v1", "GRPCRoute", `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: grpc, namespace: foo}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{method: {service: com.example.User, method: Login}}]
    backendRefs: [{name: web, port: 9090}]
`)
}

func FuzzTranslatePod(f *testing.F) {
	fuzzTranslate(f, "v1", "Pod", pod("foo", "other", "10.0.0.3", "n2", "app=web,istio.io/use-waypoint=wp"))
}

func FuzzTranslateService(f *testing.F) {
	fuzzTranslate(f, "v1", "Service", service("foo", "other", "10.96.0.3", "app=web", "istio.io/use-waypoint=none"))
}

func FuzzTranslateEndpointSlice(f *testing.F) {
	fuzzTranslate(f, "discovery.k8s.io/v1", "EndpointSlice", `apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: web-x, namespace: foo, labels: {kubernetes.io/service-name: web}}
addressType: IPv4
ports: [{name: http, port: 8080}]
endpoints: [{addresses: [10.0.0.9]}]
`)
}

func FuzzTranslateTelemetry(f *testing.F) {
	fuzzTranslate(f, "telemetry.istio.io/v1", "Telemetry", `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: wp-debug, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: wp}]
  accessLogging: [{disabled: false, providers: [{name: envoy}]}]
  tracing: [{randomSamplingPercentage: 50}]
  metrics: [{overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]
`)
}

func FuzzTranslateLocalRateLimitPolicy(f *testing.F) {
	fuzzTranslate(f, "policy.meshlet.dev/v1alpha1", "LocalRateLimitPolicy", `apiVersion: policy.meshlet.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: web-limit, namespace: foo}
spec:
  targetRefs: [{group: "", kind: Service, name: web}, {group: gateway.networking.k8s.io, kind: Gateway, name: wp}]
  limit: {requests: 10, interval: 1s, burst: 20}
  key: {type: Header, header: x-user, maxKeys: 100}
`)
}
