package controlplane

import (
	"encoding/base64"
	"fmt"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestListenerStatus: what `kubectl get gateway -o yaml` shows in
// status.listeners of meshlet's waypoint and ingress Gateways.
func TestListenerStatus(t *testing.T) {
	const ingress = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: bookinfo, generation: 4}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: admin, port: 8080, protocol: HTTP, allowedRoutes: {namespaces: {from: All}}}
  - {name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: bookinfo-cert}]}}
  - {name: grpc-only, port: 9090, protocol: HTTP, allowedRoutes: {kinds: [{kind: GRPCRoute}, {kind: TCPRoute}]}}
`
	route := func(ns, name, parentRefs string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ` + name + `, namespace: ` + ns + `}
spec:
  parentRefs: ` + parentRefs + `
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
`
	}
	crt, key := testutil.SelfSignedPEM(t, "bookinfo.example.com")
	cert := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: bookinfo-cert, namespace: bookinfo}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
---
`, base64.StdEncoding.EncodeToString(crt), base64.StdEncoding.EncodeToString(key))
	group := gatewayv1.Group(gatewayv1.GroupName)
	httpKinds := []gatewayv1.RouteGroupKind{{Group: &group, Kind: "HTTPRoute"}, {Group: &group, Kind: "GRPCRoute"}}
	listener := func(name string, kinds []gatewayv1.RouteGroupKind, attached int32, conds ...metav1.Condition) gatewayv1.ListenerStatus {
		return gatewayv1.ListenerStatus{Name: gatewayv1.SectionName(name), SupportedKinds: kinds, AttachedRoutes: attached, Conditions: conds}
	}
	c := func(typ string, ok bool, reason string) metav1.Condition { return condition(typ, ok, reason, "", 4) }
	served := []metav1.Condition{c("Accepted", true, "Accepted"), c("Programmed", true, "Programmed"), c("ResolvedRefs", true, "ResolvedRefs")}
	unresolved := []metav1.Condition{c("Accepted", true, "Accepted"), c("Programmed", false, "Invalid"), c("ResolvedRefs", false, "InvalidCertificateRef")}
	tests := []struct {
		name     string
		gateway  string // namespace/name
		extra    string
		want     []gatewayv1.ListenerStatus
		wantNone bool
	}{
		{
			name:    "waypoint made by meshctl waypoint apply, a route bound to its Service",
			gateway: "bookinfo/waypoint",
			extra:   route("bookinfo", "r", `[{group: "", kind: Service, name: reviews, port: 9080}]`),
			want: []gatewayv1.ListenerStatus{{Name: "mesh", AttachedRoutes: 0, Conditions: []metav1.Condition{
				condition("Accepted", true, "Accepted", "", 0), condition("Programmed", true, "Programmed", "", 0), condition("ResolvedRefs", true, "ResolvedRefs", "", 0)}}},
		},
		{
			name:    "ingress: routes counted per listener they attach to and are accepted on",
			gateway: "bookinfo/ingress",
			extra: cert +
				route("bookinfo", "whole", `[{name: ingress}]`) + // every HTTP listener admitting bookinfo
				route("bookinfo", "by-section", `[{name: ingress, sectionName: http}, {name: ingress, port: 80}]`) + // once
				route("bookinfo", "by-port", `[{name: ingress, port: 8080}]`) +
				route("other", "cross-ns", `[{name: ingress, namespace: bookinfo}]`) + // admitted by admin only
				route("bookinfo", "on-https", `[{name: ingress, sectionName: https}]`) +
				// grpc-only takes GRPCRoutes: no HTTPRoute counts there, the one below does
				`apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: g, namespace: bookinfo}
spec:
  parentRefs: [{name: ingress, sectionName: grpc-only}]
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
` +
				`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rejected, namespace: bookinfo}
spec:
  parentRefs: [{name: ingress}]
  rules: [{matches: [{path: {type: RegularExpression, value: "/(unclosed"}}]}]
`,
			want: []gatewayv1.ListenerStatus{
				listener("http", httpKinds, 2, served...),
				listener("admin", httpKinds, 3, served...),
				listener("https", httpKinds, 2, served...), // whole and on-https
				listener("grpc-only", httpKinds[1:], 1, c("Accepted", true, "Accepted"), c("Programmed", true, "Programmed"), c("ResolvedRefs", false, "InvalidRouteKinds")),
			},
		},
		{
			name:    "HTTPS listener whose certificate Secret is missing",
			gateway: "bookinfo/ingress",
			want: []gatewayv1.ListenerStatus{
				listener("http", httpKinds, 0, served...),
				listener("admin", httpKinds, 0, served...),
				listener("https", httpKinds, 0, unresolved...),
				listener("grpc-only", httpKinds[1:], 0, c("Accepted", true, "Accepted"), c("Programmed", true, "Programmed"), c("ResolvedRefs", false, "InvalidRouteKinds")),
			},
		},
		{
			name:    "HTTPS listener whose Secret holds no usable key pair",
			gateway: "bookinfo/ingress",
			extra: `apiVersion: v1
kind: Secret
metadata: {name: bookinfo-cert, namespace: bookinfo}
type: kubernetes.io/tls
data: {tls.crt: "", tls.key: ""}
`,
			want: []gatewayv1.ListenerStatus{
				listener("http", httpKinds, 0, served...),
				listener("admin", httpKinds, 0, served...),
				listener("https", httpKinds, 0, unresolved...),
				listener("grpc-only", httpKinds[1:], 0, c("Accepted", true, "Accepted"), c("Programmed", true, "Programmed"), c("ResolvedRefs", false, "InvalidRouteKinds")),
			},
		},
		{
			name:    "an HTTP and an HTTPS listener on one port: the later conflicts",
			gateway: "bookinfo/mixed",
			extra: cert + `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: mixed, namespace: bookinfo, generation: 4}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: plain, port: 8443, protocol: HTTP}
  - {name: secure, port: 8443, protocol: HTTPS, tls: {certificateRefs: [{name: bookinfo-cert}]}}
  - {name: tcp, port: 9000, protocol: TCP}
  - {name: udp, port: 9001, protocol: UDP}
`,
			want: []gatewayv1.ListenerStatus{
				listener("plain", httpKinds, 0, served...),
				listener("secure", httpKinds, 0, c("Accepted", true, "Accepted"), c("Programmed", false, "Invalid"), c("ResolvedRefs", true, "ResolvedRefs"),
					c("Conflicted", true, "ProtocolConflict")),
				listener("tcp", []gatewayv1.RouteGroupKind{{Group: &group, Kind: "TCPRoute"}}, 0, served...),
				listener("udp", nil, 0, c("Accepted", false, "UnsupportedProtocol"), c("Programmed", false, "Invalid"), c("ResolvedRefs", true, "ResolvedRefs")),
			},
		},
		{name: "Gateway of another class: not meshd's", gateway: "bookinfo/envoy", extra: `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: envoy, namespace: bookinfo}
spec:
  gatewayClassName: envoy-gateway
  listeners: [{name: http, port: 80, protocol: HTTP}]
`, wantNone: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(BuilderOptions{})
			b.Build(inputs(t, append(bookinfo(ns("other", "")), ingress, tt.extra)...))
			var got *ObjectStatus
			for _, st := range b.Status() {
				if st.Kind == KindGateway && st.Namespace+"/"+st.Name == tt.gateway {
					got = &st
				}
			}
			switch {
			case tt.wantNone && got != nil:
				t.Fatalf("Status has %s %s; want none: meshd writes only meshlet classes' listeners", KindGateway, tt.gateway)
			case tt.wantNone:
				return
			case got == nil:
				t.Fatalf("Status has no %s %s", KindGateway, tt.gateway)
			}
			if diff := cmp.Diff(tt.want, got.Listeners, ignoreMessages); diff != "" {
				t.Errorf("status.listeners mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestListenerStatusMessages: the faults name the thing and the fix.
func TestListenerStatusMessages(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, append(bookinfo(), `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: bookinfo}
spec:
  gatewayClassName: meshlet
  listeners: [{name: https, port: 443, protocol: HTTPS, tls: {certificateRefs: [{name: missing}, {name: far, namespace: other}]}}]
`)...))
	l := statusOf(t, b, KindGateway, "bookinfo", "ingress").Listeners[0]
	want := map[string]string{
		"Accepted":     "listener accepted",
		"Programmed":   "not served: see ResolvedRefs",
		"ResolvedRefs": "certificateRefs[0]: no Secret of type kubernetes.io/tls named missing in namespace bookinfo: create it with kubectl create secret tls missing -n bookinfo --cert=<file> --key=<file>; certificateRefs[1] Secret other/far: no ReferenceGrant in other lets Gateways of bookinfo refer to it: create one (from: group gateway.networking.k8s.io, kind Gateway, namespace bookinfo; to: group \"\", kind Secret), or put the Secret in bookinfo",
	}
	for _, c := range l.Conditions {
		if w, ok := want[c.Type]; ok && c.Message != w {
			t.Errorf("%s message = %q; want %q", c.Type, c.Message, w)
		}
	}
}

// TestGatewayClassStatus: what `kubectl get gatewayclass` shows for the
// classes of meshlet's controllerName (ACCEPTED), and that other
// controllers' classes are left alone.
func TestGatewayClassStatus(t *testing.T) {
	class := func(name, controller string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ` + name + `, generation: 2}
spec: {controllerName: ` + controller + `}
`
	}
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, class("meshlet", "meshlet.dev/gateway-controller"), class("meshlet-waypoint", "meshlet.dev/gateway-controller"),
		class("istio", "istio.io/gateway-controller"), class("custom", "meshlet.dev/gateway-controller")))
	c := func(typ string, ok bool, reason string) metav1.Condition { return condition(typ, ok, reason, "", 2) }
	supported := c("SupportedVersion", true, "SupportedVersion")
	tests := []struct {
		name string
		want []metav1.Condition // nil: no status from meshd
	}{
		{"meshlet", []metav1.Condition{c("Accepted", true, "Accepted"), supported}},
		{"meshlet-waypoint", []metav1.Condition{c("Accepted", true, "Accepted"), supported}},
		{"custom", []metav1.Condition{c("Accepted", false, "Unsupported"), supported}},
		{"istio", nil}, // Istio's own class: its controller answers
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got []metav1.Condition
			for _, st := range b.Status() {
				if st.Kind == KindGatewayClass && st.Name == tt.name {
					got = st.Conditions
					if st.Generation != 2 || st.Namespace != "" {
						t.Errorf("Generation, Namespace = %d, %q; want 2, \"\" (cluster-scoped)", st.Generation, st.Namespace)
					}
				}
			}
			if diff := cmp.Diff(tt.want, got, ignoreMessages); diff != "" {
				t.Errorf("GatewayClass %s conditions mismatch (-want +got):\n%s", tt.name, diff)
			}
		})
	}
	custom := statusOf(t, b, KindGatewayClass, "", "custom").Conditions[0].Message
	if want := "meshlet serves the classes istio, istio-waypoint, meshlet, meshlet-waypoint only; name one of them in gatewayClassName (user-defined classes are not supported)"; custom != want {
		t.Errorf("Accepted message of an unserved class = %q; want %q", custom, want)
	}
}

// TestGatewayClassParametersRef: a class of meshlet's with a parametersRef
// is not Accepted (meshlet takes no parameters), the message naming the
// ref and the fix; its Gateways are still served (see the Decisions in
// listenerstatus.go).
func TestGatewayClassParametersRef(t *testing.T) {
	class := func(name, controller, ref string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: GatewayClass
metadata: {name: ` + name + `, generation: 3}
spec: {controllerName: ` + controller + `, parametersRef: ` + ref + `}
---
`
	}
	const waypoint = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop, generation: 1}
spec:
  gatewayClassName: meshlet-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, class("meshlet", "meshlet.dev/gateway-controller", "{kind: ConfigMap, group: '', name: edge-params, namespace: meshlet-system}")+
		class("meshlet-waypoint", "meshlet.dev/gateway-controller", "{kind: WaypointConfig, group: example.com, name: defaults}")+
		class("custom", "meshlet.dev/gateway-controller", "{kind: ConfigMap, group: '', name: custom-params, namespace: meshlet-system}")+
		class("istio", "istio.io/gateway-controller", "{kind: ConfigMap, group: '', name: istio-params, namespace: istio-system}")+
		waypoint))
	tests := []struct {
		name string
		want *metav1.Condition // Accepted; nil: no status from meshd
	}{{
		name: "meshlet",
		want: &metav1.Condition{Type: "Accepted", Status: "False", Reason: "InvalidParameters",
			Message: "parametersRef ConfigMap meshlet-system/edge-params: meshlet takes no parameters; remove spec.parametersRef (its Gateways are served all the same, without parameters)"},
	}, {
		name: "meshlet-waypoint",
		want: &metav1.Condition{Type: "Accepted", Status: "False", Reason: "InvalidParameters",
			Message: "parametersRef WaypointConfig.example.com defaults: meshlet takes no parameters; remove spec.parametersRef (its Gateways are served all the same, without parameters)"},
	}, {
		name: "custom", // a name meshlet does not serve: that is what to fix first
		want: &metav1.Condition{Type: "Accepted", Status: "False", Reason: "Unsupported",
			Message: "meshlet serves the classes istio, istio-waypoint, meshlet, meshlet-waypoint only; name one of them in gatewayClassName (user-defined classes are not supported)"},
	}, {
		name: "istio", // Istio's own class: its controller answers
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got *metav1.Condition
			for _, st := range b.Status() {
				if st.Kind == KindGatewayClass && st.Name == tt.name {
					got = &st.Conditions[0]
				}
			}
			if diff := cmp.Diff(tt.want, got, cmpopts.IgnoreFields(metav1.Condition{}, "ObservedGeneration", "LastTransitionTime")); diff != "" {
				t.Errorf("GatewayClass %s Accepted mismatch (-want +got):\n%s", tt.name, diff)
			}
		})
	}
	// The waypoint of the class that is not Accepted keeps being served.
	l := statusOf(t, b, KindGateway, "shop", "waypoint").Listeners
	if len(l) != 1 || !meta.IsStatusConditionTrue(l[0].Conditions, "Programmed") {
		t.Errorf("waypoint of a class with a parametersRef: listeners = %+v; want mesh Programmed True", l)
	}
}
