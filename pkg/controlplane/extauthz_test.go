package controlplane

import (
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
