package controlplane

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
)

// Istio's "Getting started" ingress for bookinfo, on the Gateway API.
const bookinfoIngress = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: bookinfo-gateway, namespace: bookinfo}
spec:
  gatewayClassName: istio
  listeners:
  - {name: http, port: 80, protocol: HTTP, allowedRoutes: {namespaces: {from: Same}}}
  - {name: https, port: 443, protocol: HTTPS}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: bookinfo, namespace: bookinfo}
spec:
  parentRefs: [{name: bookinfo-gateway}]
  hostnames: [bookinfo.example.com]
  rules:
  - matches:
    - path: {type: Exact, value: /productpage}
    - path: {type: PathPrefix, value: /static}
    backendRefs: [{name: productpage, port: 9080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: elsewhere, namespace: other}
spec:
  parentRefs: [{name: bookinfo-gateway, namespace: bookinfo}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: cross, namespace: bookinfo}
spec:
  parentRefs: [{name: bookinfo-gateway, sectionName: http}]
  rules: [{backendRefs: [{name: web, namespace: other, port: 80}]}]
---
apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.30
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
`

func TestIngressGatewayL7(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfoIngress, pod("bookinfo", "productpage-v1", "10.0.0.30", "n1", "app=productpage")))
	for _, want := range []string{
		`Gateway bookinfo/bookinfo-gateway: listener "https": protocol HTTPS is not served`,
		"HTTPRoute bookinfo/cross: backendRef other/web: no ReferenceGrant",
	} {
		if !hasRejection(rej, want, true) {
			t.Errorf("rejections = %v; want a warning %q", rej, want)
		}
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/bookinfo-gateway")
	}
	const cluster = "outbound|9080||productpage.bookinfo.svc.cluster.local"
	want := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", Port: 80, VirtualHosts: []model.VirtualHost{
			{Name: "bookinfo/bookinfo", Domains: []string{"bookinfo.example.com"}, Routes: []model.L7Route{{
				Name:         "bookinfo.bookinfo.0",
				Matches:      []model.RouteMatch{{URI: &model.StringMatch{Exact: "/productpage"}}, {URI: &model.StringMatch{Prefix: "/static"}}},
				Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			}}},
			// The cross-namespace backend without a ReferenceGrant is dropped: 500.
			// The route from namespace "other" is not allowed (from: Same).
			{Name: "bookinfo/cross", Domains: []string{"*"}, Routes: []model.L7Route{{Name: "cross.bookinfo.0", DirectResponse: &model.DirectResponse{Status: 500}}}},
		}}},
		Clusters: []model.L7Cluster{{Name: cluster, Endpoints: []model.L7Endpoint{{Address: "10.0.0.30:9080", Labels: map[string]string{"app": "productpage"}}}}},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("L7Config mismatch (-want +got):\n%s", diff)
	}

	// With a ReferenceGrant in "other", the cross-namespace backend is used.
	snap, _ = mustBuild(t, inputs(t, bookinfoIngress, `apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: allow-bookinfo, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bookinfo}]
  to: [{group: "", kind: Service}]
`))
	cfg, _ = snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
	got := cfg.Listeners[0].VirtualHosts[1].Routes[0].Destinations
	if len(got) != 1 || got[0].Cluster != "outbound|80||web.other.svc.cluster.local" {
		t.Errorf("cross route destinations = %+v; want web.other:80 once granted", got)
	}
}

// The tutorial's ingress (issue 6): an Istio Gateway on port 80 for any host
// and a VirtualService bound to it, in the versions the seed manifests use.
func TestIstioGatewayL7(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, istioBookingIngress, pod("booking", "booking-1", "10.0.0.40", "n1", "app=booking")))
	_, withPod := mustBuild(t, inputs(t, istioBookingIngress, pod("istio-system", "ingress-1", "10.0.0.50", "n1", "istio=ingressgateway")))
	if hasRejection(withPod, "matches no gateway pod", true) {
		t.Errorf("rejections = %v; a pod labelled istio=ingressgateway serves the gateway", withPod)
	}
	testIstioGatewayL7(t, snap, rej)
}

const istioBookingIngress = `apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: booking-gateway, namespace: booking}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: booking-cert}
---
apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: booking, namespace: booking}
spec:
  hosts: ["*"]
  gateways: [booking-gateway]
  http:
  - match: [{uri: {prefix: /api/v1/booking}}]
    route: [{destination: {host: booking-service, port: {number: 8080}}}]
---
apiVersion: v1
kind: Service
metadata: {name: booking-service, namespace: booking}
spec:
  clusterIP: 10.96.0.40
  selector: {app: booking}
  ports: [{name: http, port: 8080}]
`

func testIstioGatewayL7(t *testing.T, snap *model.Snapshot, rej []Rejection) {
	t.Helper()
	if !hasRejection(rej, "servers[1]: protocol HTTPS is not served", true) {
		t.Errorf("rejections = %v; want a warning about the HTTPS server", rej)
	}
	if !hasRejection(rej, "Gateway.networking.istio.io booking/booking-gateway: selector map[istio:ingressgateway] matches no gateway pod", true) {
		t.Errorf("rejections = %v; want a warning that no pod serves the gateway", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "booking", Name: "booking-gateway"})
	if !ok {
		t.Fatal("no L7 config for booking/booking-gateway")
	}
	const cluster = "outbound|8080||booking-service.booking.svc.cluster.local"
	want := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", Port: 80, VirtualHosts: []model.VirtualHost{{
			Name: "booking/booking", Domains: []string{"*"},
			Routes: []model.L7Route{{
				Name:         "booking.booking.0",
				Matches:      []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/api/v1/booking"}}},
				Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 100}},
			}},
		}}}},
		Clusters: []model.L7Cluster{{Name: cluster, Endpoints: []model.L7Endpoint{{Address: "10.0.0.40:8080", Labels: map[string]string{"app": "booking"}}}}},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("L7Config mismatch (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]model.NamespacedName{{Namespace: "booking", Name: "booking-gateway"}}, snap.L7Names()); diff != "" {
		t.Errorf("L7Names() mismatch (-want +got):\n%s", diff)
	}
	// A gateway-only VirtualService does not route mesh traffic.
	if len(snap.Waypoints()) != 0 {
		t.Errorf("unexpected waypoints: %v", snap.Waypoints())
	}
}

func TestHostIntersection(t *testing.T) {
	tests := []struct {
		vs, server []string
		want       []string
	}{
		{[]string{"a.example.com"}, []string{"*"}, []string{"a.example.com"}},
		{[]string{"a.example.com"}, []string{"*.example.com"}, []string{"a.example.com"}},
		{[]string{"a.example.com"}, []string{"b.example.com"}, nil},
		{[]string{"*"}, []string{"b.example.com"}, []string{"b.example.com"}},
		{[]string{"*.example.com"}, []string{"b.example.com"}, []string{"b.example.com"}},
	}
	for _, tt := range tests {
		if got := hostIntersection(tt.vs, tt.server); !cmp.Equal(got, tt.want) {
			t.Errorf("hostIntersection(%v, %v) = %v; want %v", tt.vs, tt.server, got, tt.want)
		}
	}
}
