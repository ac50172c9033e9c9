package controlplane

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/meshlet/meshlet/pkg/model"
)

// TestDefaultGateways: a route asking for default Gateways
// (useDefaultGateways All) and naming no parent is served by the ingress
// Gateway claiming the default scope, on its hosts, and its status names
// that Gateway; another Gateway does not take it, nor does the default
// Gateway take a route that does not ask; a route that names the default
// Gateway itself gets one parents entry, not two.
func TestDefaultGateways(t *testing.T) {
	route := func(name, extra string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ` + name + `, namespace: app}
spec:
` + extra + `  hostnames: [` + name + `.example.com]
  rules: [{backendRefs: [{name: web, port: 80}]}]
`
	}
	gateway := func(name, extra string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ` + name + `, namespace: infra}
spec:
  gatewayClassName: meshlet
` + extra + `  listeners: [{name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}]
`
	}
	b := NewBuilder(BuilderOptions{})
	snap, rej := b.Build(inputs(t, ns("infra", ""), ns("app", ""), pod("app", "web-1", "10.0.0.80", "n1", "app=web"), `apiVersion: v1
kind: Service
metadata: {name: web, namespace: app}
spec: {clusterIP: 10.96.0.80, selector: {app: web}, ports: [{name: http, port: 80}]}
`, gateway("edge", "  defaultScope: All\n"), gateway("other", ""),
		route("wants", "  useDefaultGateways: All\n"),
		route("plain", ""),
		route("named", "  useDefaultGateways: All\n  parentRefs: [{name: edge, namespace: infra, sectionName: http}]\n")))
	if hasRejection(rej, "wants", true) || !hasRejection(rej, "no parentRefs: the route is attached to nothing", true) {
		t.Errorf("rejections %v; want only the plain route told it is attached to nothing", rej)
	}
	hosts := func(gw string) []string {
		var out []string
		if cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "infra", Name: gw}); ok {
			for _, l := range cfg.Listeners {
				for _, vh := range l.VirtualHosts {
					out = append(out, vh.Domains...)
				}
			}
		}
		return out
	}
	if got := hosts("edge"); !cmp.Equal(got, []string{"wants.example.com", "named.example.com"}, cmpopts.SortSlices(func(a, b string) bool { return a < b })) {
		t.Errorf("default Gateway serves %v; want wants.example.com and named.example.com", got)
	}
	if got := hosts("other"); len(got) != 0 {
		t.Errorf("a Gateway without the default scope serves %v; want nothing", got)
	}
	for _, tt := range []struct {
		name    string
		parents int
	}{{"wants", 1}, {"named", 1}, {"plain", 0}} {
		st := statusOf(t, b, KindHTTPRoute, "app", tt.name)
		if len(st.Parents) != tt.parents {
			t.Errorf("route %s parents %+v; want %d", tt.name, st.Parents, tt.parents)
			continue
		}
		if tt.parents == 1 {
			p := st.Parents[0]
			if p.ParentRef.Name != "edge" || p.ParentRef.Namespace == nil || *p.ParentRef.Namespace != "infra" || !meta.IsStatusConditionTrue(p.Conditions, "Accepted") {
				t.Errorf("route %s parent %+v; want infra/edge Accepted", tt.name, p)
			}
		}
	}
}
