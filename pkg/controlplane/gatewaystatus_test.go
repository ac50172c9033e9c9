package controlplane

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// statusOf returns the status the build computed for kind namespace/name.
func statusOf(t *testing.T, b *Builder, kind, namespace, name string) ObjectStatus {
	t.Helper()
	for _, st := range b.Status() {
		if st.Kind == kind && st.Namespace == namespace && st.Name == name {
			return st
		}
	}
	t.Fatalf("no status for %s %s/%s in %+v", kind, namespace, name, b.Status())
	return ObjectStatus{}
}

// cond is a condition as a user reads it in status (gen 3, no time yet).
func cond(typ string, ok bool, reason string) metav1.Condition {
	return condition(typ, ok, reason, "", 3)
}

// ignoreMessages compares conditions by type, status, reason and generation:
// messages are for people and checked where they matter.
var ignoreMessages = cmp.FilterPath(func(p cmp.Path) bool { return p.Last().String() == ".Message" }, cmp.Ignore())

// TestRouteStatus: what `kubectl get httproute -o yaml` shows in
// status.parents for routes on meshlet's parents.
func TestRouteStatus(t *testing.T) {
	const others = `apiVersion: v1
kind: Namespace
metadata: {name: plain}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: plain}
spec: {clusterIP: 10.96.1.1, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: other}
spec: {clusterIP: 10.96.1.2, ports: [{name: http, port: 9080}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: bookinfo}
spec:
  gatewayClassName: meshlet
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy, namespace: bookinfo}
spec:
  gatewayClassName: envoy-gateway
  listeners: [{name: http, port: 80, protocol: HTTP}]
`
	route := func(parentRefs, backendRefs string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: bookinfo, generation: 3}
spec:
  parentRefs: ` + parentRefs + `
  rules: [{backendRefs: ` + backendRefs + `}]
`
	}
	const (
		reviews     = `[{name: reviews, port: 9080}]`
		svcParent   = `[{group: "", kind: Service, name: reviews, port: 9080}]`
		accepted    = "Accepted"
		resolvedRef = "ResolvedRefs"
	)
	svcRef := gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: "reviews", Port: ptrTo(gatewayv1.PortNumber(9080))}
	gwRef := func(name string, section string) gatewayv1.ParentReference {
		r := gatewayv1.ParentReference{Name: gatewayv1.ObjectName(name)}
		if section != "" {
			r.SectionName = ptrTo(gatewayv1.SectionName(section))
		}
		return r
	}
	parent := func(ref gatewayv1.ParentReference, acc bool, accReason string, res bool, resReason string) gatewayv1.RouteParentStatus {
		return gatewayv1.RouteParentStatus{ParentRef: ref, ControllerName: ControllerName,
			Conditions: []metav1.Condition{cond(accepted, acc, accReason), cond(resolvedRef, res, resReason)}}
	}
	tests := []struct {
		name  string
		extra string
		want  []gatewayv1.RouteParentStatus
	}{
		{"Service parent bound to a waypoint", route(svcParent, reviews),
			[]gatewayv1.RouteParentStatus{parent(svcRef, true, accepted, true, resolvedRef)}},
		{"Service parent without a waypoint is pending",
			route(`[{group: "", kind: Service, name: web, namespace: plain}]`, `[{name: web, namespace: plain, port: 80}]`) + `---
apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: from-bookinfo, namespace: plain}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bookinfo}]
  to: [{group: "", kind: Service}]
`,
			[]gatewayv1.RouteParentStatus{parent(gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: "web", Namespace: ptrTo(gatewayv1.Namespace("plain"))},
				false, "Pending", true, resolvedRef)}},
		{"Service parent that does not exist", route(`[{group: "", kind: Service, name: nothing}]`, reviews),
			[]gatewayv1.RouteParentStatus{parent(gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: "nothing"},
				false, "NoMatchingParent", true, resolvedRef)}},
		{"ingress Gateway of a meshlet class", route(`[{name: ingress}]`, reviews),
			[]gatewayv1.RouteParentStatus{parent(gwRef("ingress", ""), true, accepted, true, resolvedRef)}},
		{"the waypoint Gateway itself: routes go through its Services", route(`[{name: waypoint}]`, reviews),
			[]gatewayv1.RouteParentStatus{parent(gwRef("waypoint", ""), false, "NotAllowedByListeners", true, resolvedRef)}},
		{"Gateway of another class: no entry", route(`[{name: envoy}]`, reviews), nil},
		{"Gateway meshd cannot see: no entry", route(`[{name: unknown}]`, reviews), nil},
		{"sectionName matching no listener", route(`[{name: ingress, sectionName: https}]`, reviews),
			[]gatewayv1.RouteParentStatus{parent(gwRef("ingress", "https"), false, "NoMatchingParent", true, resolvedRef)}},
		{"missing backend Service", route(svcParent, `[{name: reviews, port: 9080}, {name: nosuch, port: 80}]`),
			[]gatewayv1.RouteParentStatus{parent(svcRef, true, accepted, false, "BackendNotFound")}},
		{"cross-namespace backend without ReferenceGrant", route(svcParent, `[{name: ratings, namespace: other, port: 9080}]`),
			[]gatewayv1.RouteParentStatus{parent(svcRef, true, accepted, false, "RefNotPermitted")}},
		{"backend of a kind meshlet does not route to", route(svcParent, `[{group: example.com, kind: Bucket, name: b}]`),
			[]gatewayv1.RouteParentStatus{parent(svcRef, true, accepted, false, "InvalidKind")}},
		{"invalid route: not accepted", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: bookinfo, generation: 3}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}, {name: envoy}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]
    backendRefs: [{name: reviews, port: 9080}]
`, []gatewayv1.RouteParentStatus{parent(svcRef, false, "UnsupportedValue", true, resolvedRef)}},
		{"a parentRef written twice gets one entry", route(`[{group: "", kind: Service, name: reviews, port: 9080}, {group: "", kind: Service, name: reviews, port: 9080}]`, reviews),
			[]gatewayv1.RouteParentStatus{parent(svcRef, true, accepted, true, resolvedRef)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(BuilderOptions{})
			b.Build(inputs(t, append(bookinfo(others), tt.extra)...))
			st := statusOf(t, b, KindHTTPRoute, "bookinfo", "r")
			if st.Generation != 3 {
				t.Errorf("Generation = %d; want the route's 3", st.Generation)
			}
			if diff := cmp.Diff(tt.want, st.Parents, ignoreMessages); diff != "" {
				t.Errorf("status.parents mismatch (-want +got):\n%s", diff)
			}
		})
	}
	t.Run("listener not admitting the route's namespace", func(t *testing.T) {
		b := NewBuilder(BuilderOptions{})
		b.Build(inputs(t, append(bookinfo(others), `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: other, generation: 3}
spec:
  parentRefs: [{name: ingress, namespace: bookinfo}]
  rules: [{backendRefs: [{name: ratings, port: 9080}]}]
`)...))
		want := []gatewayv1.RouteParentStatus{parent(gatewayv1.ParentReference{Name: "ingress", Namespace: ptrTo(gatewayv1.Namespace("bookinfo"))}, false, "NotAllowedByListeners", true, resolvedRef)}
		if diff := cmp.Diff(want, statusOf(t, b, KindHTTPRoute, "other", "r").Parents, ignoreMessages); diff != "" {
			t.Errorf("status.parents mismatch (-want +got):\n%s", diff)
		}
	})
}

// TestRouteStatusMessages: the messages name the thing and the fix.
func TestRouteStatusMessages(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: r, namespace: bookinfo, generation: 1}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: nosuch, port: 80}, {name: ratings, namespace: other, port: 9080}]}]
`)...))
	st := statusOf(t, b, KindHTTPRoute, "bookinfo", "r")
	if len(st.Parents) != 1 {
		t.Fatalf("parents = %+v; want one", st.Parents)
	}
	got := st.Parents[0].Conditions
	want := []metav1.Condition{
		condition("Accepted", true, "Accepted", "applied to requests for Service bookinfo/reviews by its waypoint bookinfo/waypoint", 1),
		condition("ResolvedRefs", false, "BackendNotFound", "backendRef Service bookinfo/nosuch not found; backendRef Service other/ratings: no ReferenceGrant in namespace other allows HTTPRoutes from bookinfo to refer to it", 1),
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("conditions mismatch (-want +got):\n%s", diff)
	}
}

// TestRouteStatusGRPCAndOrder: GRPCRoutes get status too, and Status is
// sorted by kind, namespace and name whatever the input order.
func TestRouteStatusGRPCAndOrder(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: z, namespace: bookinfo}
spec: {parentRefs: [{group: "", kind: Service, name: reviews}]}
---
apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: bookinfo, generation: 2}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: a, namespace: bookinfo}
spec: {parentRefs: [{group: "", kind: Service, name: reviews}]}
`)...))
	var got []string
	for _, st := range b.Status() {
		got = append(got, st.Kind+" "+st.Namespace+"/"+st.Name)
	}
	if diff := cmp.Diff([]string{"GRPCRoute bookinfo/g", "Gateway bookinfo/waypoint", "HTTPRoute bookinfo/a", "HTTPRoute bookinfo/z"}, got); diff != "" {
		t.Errorf("Status order mismatch (-want +got):\n%s", diff)
	}
	g := statusOf(t, b, KindGRPCRoute, "bookinfo", "g")
	if len(g.Parents) != 1 || g.Parents[0].Conditions[0].Status != metav1.ConditionTrue || g.Parents[0].Conditions[0].ObservedGeneration != 2 {
		t.Errorf("GRPCRoute parents = %+v; want one, Accepted, observedGeneration 2", g.Parents)
	}
}

// TestBackendTLSPolicyStatus: status.ancestors of BackendTLSPolicies, one
// per targeted Service.
func TestBackendTLSPolicyStatus(t *testing.T) {
	ca, _ := testutil.SelfSignedPEM(t, "reviews root")
	svc := gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: "reviews"}
	ancestor := func(ref gatewayv1.ParentReference, acc bool, accReason string, res bool, resReason string) gatewayv1.PolicyAncestorStatus {
		return gatewayv1.PolicyAncestorStatus{AncestorRef: ref, ControllerName: ControllerName, Conditions: []metav1.Condition{
			condition("Accepted", acc, accReason, "", 0), condition("ResolvedRefs", res, resReason, "", 0)}}
	}
	withCM := func(cm string) string {
		return `{hostname: ` + reviewsSNI + `, caCertificateRefs: [{group: "", kind: ConfigMap, name: ` + cm + `}]}`
	}
	tests := []struct {
		name string
		docs []string
		want []gatewayv1.PolicyAncestorStatus
	}{
		{"accepted", []string{backendTLSPolicy("p", "2024-01-01T00:00:00Z", wholeReviews, withCM("ca")), configMap("ca", caCertKey, string(ca))},
			[]gatewayv1.PolicyAncestorStatus{ancestor(svc, true, "Accepted", true, "ResolvedRefs")}},
		{"missing CA ConfigMap", []string{backendTLSPolicy("p", "2024-01-01T00:00:00Z", wholeReviews, withCM("nothing"))},
			[]gatewayv1.PolicyAncestorStatus{ancestor(svc, false, "NoValidCACertificate", false, "InvalidCACertificateRef")}},
		{"CA of a kind meshlet does not read", []string{backendTLSPolicy("p", "2024-01-01T00:00:00Z", wholeReviews, `{hostname: `+reviewsSNI+`, caCertificateRefs: [{group: "", kind: Secret, name: ca}]}`)},
			[]gatewayv1.PolicyAncestorStatus{ancestor(svc, false, "NoValidCACertificate", false, "InvalidKind")}},
		{"invalid hostname", []string{backendTLSPolicy("p", "2024-01-01T00:00:00Z", wholeReviews, `{hostname: "*.example.com", wellKnownCACertificates: System}`)},
			[]gatewayv1.PolicyAncestorStatus{ancestor(svc, false, "Invalid", true, "ResolvedRefs")}},
		{"older policy holds the target", []string{backendTLSPolicy("old", "2023-01-01T00:00:00Z", wholeReviews, systemRoots), backendTLSPolicy("p", "2024-01-01T00:00:00Z", wholeReviews, systemRoots)},
			[]gatewayv1.PolicyAncestorStatus{ancestor(svc, false, "Conflicted", true, "ResolvedRefs")}},
		{"target Service missing, port target kept apart", []string{backendTLSPolicy("p", "2024-01-01T00:00:00Z", `[{group: "", kind: Service, name: nosuch}, {group: "", kind: Service, name: reviews, sectionName: http}, {group: apps, kind: Deployment, name: reviews}]`, systemRoots)},
			[]gatewayv1.PolicyAncestorStatus{
				ancestor(gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: "nosuch"}, false, "TargetNotFound", true, "ResolvedRefs"),
				ancestor(gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: "reviews", SectionName: ptrTo(gatewayv1.SectionName("http"))}, true, "Accepted", true, "ResolvedRefs"),
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(BuilderOptions{})
			b.Build(inputs(t, bookinfo(tt.docs...)...))
			st := statusOf(t, b, KindBackendTLSPolicy, "bookinfo", "p")
			if diff := cmp.Diff(tt.want, st.Ancestors, ignoreMessages); diff != "" {
				t.Errorf("status.ancestors mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
