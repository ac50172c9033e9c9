package controlplane

import (
	"encoding/base64"
	"fmt"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
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
		`Gateway bookinfo/bookinfo-gateway: listener "https": protocol HTTPS needs tls.certificateRefs`,
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
			// One route per match (Gateway API ranks matches one by one),
			// the PathPrefix on whole segments.
			{Name: "bookinfo/bookinfo", Domains: []string{"bookinfo.example.com"}, Routes: []model.L7Route{{
				Name:         "bookinfo.bookinfo.0",
				Origin:       "HTTPRoute/bookinfo/bookinfo",
				Matches:      []model.RouteMatch{{URI: &model.StringMatch{Exact: "/productpage"}}},
				Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			}, {
				Name:         "bookinfo.bookinfo.0",
				Origin:       "HTTPRoute/bookinfo/bookinfo",
				Matches:      []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/static"}}},
				Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 1}},
			}}},
			// The cross-namespace backend without a ReferenceGrant is dropped: 500.
			// The route from namespace "other" is not allowed (from: Same).
			{Name: "bookinfo/cross", Domains: []string{"*"}, Routes: []model.L7Route{{Name: "cross.bookinfo.0", Origin: "HTTPRoute/bookinfo/cross", DirectResponse: &model.DirectResponse{Status: 500}}}},
		}}},
		Clusters: []model.L7Cluster{{Name: cluster, Endpoints: []model.L7Endpoint{{Address: "10.0.0.30:9080", Labels: map[string]string{"app": "productpage"}, Workload: "productpage-v1"}}}},
	}
	if diff := cmp.Diff(want, cfg); diff != "" {
		t.Errorf("L7Config mismatch (-want +got):\n%s", diff)
	}

	// With a ReferenceGrant in "other", the cross-namespace backend is
	// used once it exists.
	grant := `apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: allow-bookinfo, namespace: other}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: bookinfo}]
  to: [{group: "", kind: Service}]
`
	snap, _ = mustBuild(t, inputs(t, bookinfoIngress, grant))
	cfg, _ = snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
	if got := cfg.Listeners[0].VirtualHosts[1].Routes[0]; got.DirectResponse == nil || got.DirectResponse.Status != 500 {
		t.Errorf("cross route, granted, to no Service = %+v; want answered 500 (Gateway API: an invalid backend's requests get 500)", got)
	}
	snap, _ = mustBuild(t, inputs(t, bookinfoIngress, grant, `apiVersion: v1
kind: Service
metadata: {name: web, namespace: other}
spec:
  clusterIP: 10.96.0.31
  ports: [{name: http, port: 80}]
`))
	cfg, _ = snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
	got := cfg.Listeners[0].VirtualHosts[1].Routes[0].Destinations
	if len(got) != 1 || got[0].Cluster != "outbound|80||web.other.svc.cluster.local" {
		t.Errorf("cross route destinations = %+v; want web.other:80 once granted", got)
	}
}

// The tutorial's ingress (issue 6): an Istio Gateway selecting the chart's
// ingress gateway (istio: ingressgateway) on port 80 for any host, HTTPS on
// 443 from a kubernetes.io/tls Secret, and a VirtualService bound to it.
// The configuration belongs to the gateway deployment the selector picks,
// keyed by its pods' gateway-name label, on its Service's target ports.
func TestIstioGatewayL7(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "booking.example.com")
	secret := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: booking-cert, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
`, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key))
	gatewayPod := pod("istio-system", "ingress-1", "10.0.0.50", "n1", "istio=ingressgateway,app=istio-ingressgateway,gateway.networking.k8s.io/gateway-name=istio-ingressgateway")
	gatewaySvc := `apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: istio-system}
spec:
  clusterIP: 10.96.0.50
  selector: {app: istio-ingressgateway}
  ports: [{name: http2, port: 80, targetPort: 8080}, {name: https, port: 443, targetPort: 8443}]
`
	backend := pod("booking", "booking-1", "10.0.0.40", "n1", "app=booking")
	gwKey := model.NamespacedName{Namespace: "istio-system", Name: "istio-ingressgateway"}
	const cluster = "outbound|8080||booking-service.booking.svc.cluster.local"
	route := model.L7Route{
		Name:         "booking.booking.0",
		Origin:       "VirtualService/booking/booking",
		Matches:      []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/api/v1/booking"}}},
		Destinations: []model.WeightedDestination{{Cluster: cluster, Weight: 100}},
	}
	vhost := model.VirtualHost{Name: "booking/booking", Domains: []string{"*"}, Routes: []model.L7Route{route}}

	t.Run("no gateway pod", func(t *testing.T) {
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, backend))
		if !hasRejection(rej, "Gateway.networking.istio.io booking/booking-gateway: selector map[istio:ingressgateway] matches no gateway pod", true) {
			t.Errorf("rejections = %v; want a warning that no pod serves the gateway", rej)
		}
		if names := snap.L7Names(); len(names) != 0 {
			t.Errorf("L7Names() = %v; nothing serves the Gateway, so no configuration", names)
		}
	})
	t.Run("served", func(t *testing.T) {
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, secret, gatewayPod, gatewaySvc, backend))
		if hasRejection(rej, "booking-gateway", true) {
			t.Errorf("rejections = %v; want none for the Gateway", rej)
		}
		cfg, ok := snap.L7Config(gwKey)
		if !ok {
			t.Fatalf("no L7 config for %s; have %v", gwKey, snap.L7Names())
		}
		want := &model.L7Config{
			Listeners: []model.L7Listener{
				{Name: "http", Port: 8080, VirtualHosts: []model.VirtualHost{vhost}},
				{Name: "https", Port: 8443, VirtualHosts: []model.VirtualHost{vhost},
					TLS: &model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(cert), KeyPEM: string(key), SNIHosts: []string{"*"}}},
			},
			Clusters: []model.L7Cluster{{Name: cluster, Endpoints: []model.L7Endpoint{{Address: "10.0.0.40:8080", Labels: map[string]string{"app": "booking"}, Workload: "booking-1"}}}},
		}
		if diff := cmp.Diff(want, cfg); diff != "" {
			t.Errorf("L7Config mismatch (-want +got):\n%s", diff)
		}
		if diff := cmp.Diff([]model.NamespacedName{gwKey}, snap.L7Names()); diff != "" {
			t.Errorf("L7Names() mismatch (-want +got):\n%s", diff)
		}
		// A gateway-only VirtualService does not route mesh traffic.
		if len(snap.Waypoints()) != 0 {
			t.Errorf("unexpected waypoints: %v", snap.Waypoints())
		}
	})
	// servedListener builds the booking ingress with docs and returns the
	// gateway's listener on port, wanting no Gateway reported.
	servedListener := func(t *testing.T, docs string, port uint32) *model.L7Listener {
		t.Helper()
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, secret, gatewayPod, gatewaySvc, backend, docs))
		if hasRejection(rej, "gateway", true) {
			t.Errorf("rejections = %v; want none for the Gateways", rej)
		}
		cfg, ok := snap.L7Config(gwKey)
		if !ok {
			t.Fatalf("no L7 config for %s", gwKey)
		}
		for i := range cfg.Listeners {
			if cfg.Listeners[i].Port == port {
				return &cfg.Listeners[i]
			}
		}
		t.Fatalf("listeners %+v; want one on %d", cfg.Listeners, port)
		return nil
	}
	// A PASSTHROUGH server on the HTTPS server's port: connections whose
	// SNI a VirtualService's tls route names go to its destination
	// untouched; the rest are terminated as before.
	t.Run("TLS passthrough beside HTTPS", func(t *testing.T) {
		https := servedListener(t, `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: nginx-gateway, namespace: booking}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-nginx, protocol: TLS}
    hosts: [nginx.example.com]
    tls: {mode: PASSTHROUGH}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: nginx, namespace: booking}
spec:
  hosts: [nginx.example.com]
  gateways: [nginx-gateway]
  tls:
  - match: [{port: 443, sniHosts: [nginx.example.com]}]
    route: [{destination: {host: my-nginx, port: {number: 443}}}]
---
apiVersion: v1
kind: Service
metadata: {name: my-nginx, namespace: booking}
spec:
  clusterIP: 10.96.0.41
  selector: {app: my-nginx}
  ports: [{name: https, port: 443}]
`, 8443)
		want := []model.PassthroughRoute{{Name: "nginx.booking.tls.0", SNIHosts: []string{"nginx.example.com"},
			Destinations: []model.WeightedDestination{{Cluster: "outbound|443||my-nginx.booking.svc.cluster.local", Weight: 100}}}}
		if https.TLS == nil || len(https.VirtualHosts) != 1 {
			t.Fatalf("listener %+v; want 8443 terminating booking's certificate with its virtual host", https)
		}
		if d := cmp.Diff(want, https.Passthrough); d != "" {
			t.Errorf("passthrough routes (-want +got):\n%s", d)
		}
	})
	// Istio's TCP traffic shifting task: a TCP server and a VirtualService's
	// tcp route splitting 80/20 between two subsets.
	t.Run("TCP server", func(t *testing.T) {
		l := servedListener(t, `apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: tcp-echo-gateway, namespace: booking}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: tcp-echo, namespace: booking}
spec:
  hosts: ["*"]
  gateways: [tcp-echo-gateway]
  tcp:
  - match: [{port: 31400}]
    route:
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v1}, weight: 80}
    - {destination: {host: tcp-echo, port: {number: 9000}, subset: v2}, weight: 20}
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo, namespace: booking}
spec:
  clusterIP: 10.96.0.42
  selector: {app: tcp-echo}
  ports: [{name: tcp, port: 9000}]
`, 31400)
		const c = "outbound|9000||tcp-echo.booking.svc.cluster.local"
		want := &model.TCPRoute{Name: "tcp-echo.booking.tcp.0", Destinations: []model.WeightedDestination{
			{Cluster: c, Subset: "v1", Weight: 80}, {Cluster: c, Subset: "v2", Weight: 20}}}
		if d := cmp.Diff(want, l.TCP); d != "" {
			t.Errorf("tcp route on 31400 (-want +got):\n%s", d)
		}
	})
	// AuthorizationPolicies that select the gateway's pods (by selector,
	// namespace-wide, mesh-wide) apply to it, as Istio applies them to a
	// gateway's Envoy; one selecting other pods does not.
	t.Run("policies selecting its pods", func(t *testing.T) {
		authz := func(name, ns, selector string) string {
			return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s, namespace: %s}
spec:
  %s
  action: DENY
  rules: [{from: [{source: {remoteIpBlocks: [203.0.113.0/24]}}]}]
`, name, ns, selector)
		}
		snap, _ := mustBuild(t, inputs(t, istioBookingIngress, secret, gatewayPod, gatewaySvc, backend,
			authz("edge-deny", "istio-system", "selector: {matchLabels: {istio: ingressgateway}}"),
			authz("ns-wide", "istio-system", ""),
			authz("other-app", "istio-system", "selector: {matchLabels: {app: other}}"),
			authz("booking-only", "booking", "")))
		cfg, ok := snap.L7Config(gwKey)
		if !ok {
			t.Fatalf("no L7 config for %s", gwKey)
		}
		want := []model.NamespacedName{{Namespace: "istio-system", Name: "edge-deny"}, {Namespace: "istio-system", Name: "ns-wide"}}
		if d := cmp.Diff(want, cfg.PodPolicies); d != "" {
			t.Errorf("policies bound to the gateway's pods (-want +got):\n%s", d)
		}
	})
	// A CUSTOM policy selecting the gateway's pods: the gateway asks the
	// provider (no warning about node agents), and has it in its config.
	t.Run("external authorization at the gateway", func(t *testing.T) {
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, secret, gatewayPod, gatewaySvc, backend, `apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - {name: edge-authz, envoyExtAuthzHttp: {service: booking-service.booking.svc.cluster.local, port: 8080}}
`, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: edge-authz, namespace: istio-system}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: CUSTOM
  provider: {name: edge-authz}
  rules: [{}]
`))
		if hasRejection(rej, "edge-authz", true) {
			t.Errorf("rejections = %v; want no warning for a CUSTOM policy its gateway enforces", rej)
		}
		cfg, ok := snap.L7Config(gwKey)
		if !ok || !slices.Contains(cfg.PodPolicies, model.NamespacedName{Namespace: "istio-system", Name: "edge-authz"}) ||
			len(cfg.ExtAuthz) != 1 || cfg.ExtAuthz[0].Cluster != "outbound|8080||booking-service.booking.svc.cluster.local" {
			t.Errorf("gateway config %+v; want the CUSTOM policy bound and its provider with a cluster", cfg)
		}
	})
	// RequestAuthentications selecting its pods, or targeting it, give the
	// gateway their JWT rules (Istio's "JWT at ingress"); one selecting
	// other pods does not.
	t.Run("request authentications", func(t *testing.T) {
		ra := func(name, ns, selector, issuer string) string {
			return fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: %s, namespace: %s}
spec:
  %s
  jwtRules: [{issuer: %s, jwksUri: "https://issuer.example.com/jwks"}]
`, name, ns, selector, issuer)
		}
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, secret, gatewayPod, gatewaySvc, backend,
			ra("edge-jwt", "istio-system", "selector: {matchLabels: {istio: ingressgateway}}", "edge.example.com"),
			ra("by-name", "istio-system", "targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: istio-ingressgateway}]", "named.example.com"),
			ra("other-app", "istio-system", "selector: {matchLabels: {app: other}}", "other.example.com")))
		cfg, ok := snap.L7Config(gwKey)
		if !ok {
			t.Fatalf("no L7 config for %s (rejections %v)", gwKey, rej)
		}
		var issuers []string
		for _, p := range cfg.JWTProviders {
			issuers = append(issuers, p.Issuer)
		}
		if d := cmp.Diff([]string{"named.example.com", "edge.example.com"}, issuers); d != "" {
			t.Errorf("the gateway's JWT issuers (-want +got):\n%s", d)
		}
	})
	// exportTo: a VirtualService bound to the gateway but not exported to
	// the gateway's namespace is not served, and a backend Service not
	// exported there gives the route a cluster without endpoints.
	t.Run("exportTo", func(t *testing.T) {
		exported := func(vsTo, svcTo string) string {
			doc := strings.Replace(istioBookingIngress, "  gateways: [booking-gateway]\n", "  gateways: [booking-gateway]\n  exportTo: ["+vsTo+"]\n", 1)
			return strings.Replace(doc, "metadata: {name: booking-service, namespace: booking}",
				"metadata: {name: booking-service, namespace: booking, annotations: {networking.istio.io/exportTo: \""+svcTo+"\"}}", 1)
		}
		tests := []struct {
			name, vsTo, svcTo string
			routed, endpoints bool
		}{
			{"both exported to the gateway's namespace", `"istio-system"`, "istio-system,booking", true, true},
			{"VirtualService exported everywhere", `"*"`, "*", true, true},
			{"VirtualService kept in its namespace", `"."`, "*", false, false},
			{"Service kept in its namespace", `"*"`, ".", true, false},
		}
		for _, tt := range tests {
			t.Run(tt.name, func(t *testing.T) {
				snap, _ := mustBuild(t, inputs(t, exported(tt.vsTo, tt.svcTo), secret, gatewayPod, gatewaySvc, backend))
				cfg, _ := snap.L7Config(gwKey)
				routed, endpoints := false, false
				if cfg != nil {
					for _, l := range cfg.Listeners {
						for _, vh := range l.VirtualHosts {
							routed = routed || vh.Name == "booking/booking"
						}
					}
					for _, c := range cfg.Clusters {
						endpoints = endpoints || (c.Name == cluster && len(c.Endpoints) > 0)
					}
				}
				if routed != tt.routed || endpoints != tt.endpoints {
					t.Errorf("VirtualService exportTo %s, Service exportTo %q: routed %v, backend endpoints %v; want %v, %v",
						tt.vsTo, tt.svcTo, routed, endpoints, tt.routed, tt.endpoints)
				}
			})
		}
	})
	t.Run("certificates by SNI on one port", func(t *testing.T) {
		apiCert, apiKey := testutil.SelfSignedPEM(t, "api.example.com")
		second := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: api-cert, namespace: istio-system}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
---
apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: api-gateway, namespace: booking}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: https-api, protocol: HTTPS}
    hosts: ["api.example.com"]
    tls: {mode: SIMPLE, credentialName: api-cert}
  - port: {number: 443, name: https-more, protocol: HTTPS}
    hosts: ["more.example.com"]
    tls: {mode: SIMPLE, credentialName: booking-cert}
`, base64.StdEncoding.EncodeToString(apiCert), base64.StdEncoding.EncodeToString(apiKey))
		parses := map[string]int{}
		credentialParsed = func(key, part string) { parses[key+" "+part]++ }
		t.Cleanup(func() { credentialParsed = nil })
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, secret, second, gatewayPod, gatewaySvc, backend))
		if hasRejection(rej, "gateway", true) {
			t.Errorf("rejections = %v; want none: servers on one port with their own certificates are served by SNI", rej)
		}
		// booking-cert serves two servers of two gateways: parsed once.
		for k, n := range parses {
			if n != 1 {
				t.Errorf("%s parsed %d times in one build; want once", k, n)
			}
		}
		if len(parses) != 2 {
			t.Errorf("key pairs parsed: %v; want api-cert's and booking-cert's, once each", parses)
		}
		cfg, ok := snap.L7Config(gwKey)
		if !ok || len(cfg.Listeners) != 2 {
			t.Fatalf("config = %+v; want the HTTP and HTTPS listeners", cfg)
		}
		l := cfg.Listeners[1]
		// Gateways in name order: api-gateway's first server opens the port.
		wantDefault := &model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(apiCert), KeyPEM: string(apiKey), SNIHosts: []string{"api.example.com"}}
		wantSNI := []model.ListenerTLS{{Mode: model.TLSModeSimple, CertPEM: string(cert), KeyPEM: string(key), SNIHosts: []string{"more.example.com", "*"}}}
		if l.Port != 8443 || !cmp.Equal(wantDefault, l.TLS) || !cmp.Equal(wantSNI, l.SNI) {
			t.Errorf("HTTPS listener port %d TLS %v SNI %v; want 8443, api-cert for api.example.com, booking-cert for more.example.com and *", l.Port, l.TLS, l.SNI)
		}
	})
	t.Run("missing secret", func(t *testing.T) {
		snap, rej := mustBuild(t, inputs(t, istioBookingIngress, gatewayPod, gatewaySvc, backend))
		if !hasRejection(rej, `servers[1] (port 443): tls.credentialName "booking-cert": no Secret of type kubernetes.io/tls named so in namespace istio-system`, true) {
			t.Errorf("rejections = %v; want the missing Secret named with the fix", rej)
		}
		cfg, _ := snap.L7Config(gwKey)
		if cfg == nil || len(cfg.Listeners) != 1 || cfg.Listeners[0].Port != 8080 {
			t.Errorf("config = %+v; the HTTP server is still served", cfg)
		}
	})
	t.Run("https redirect and MUTUAL", func(t *testing.T) {
		gw := strings.Replace(istioBookingIngress, "    hosts: [\"*\"]\n  - port: {number: 443", "    hosts: [\"*\"]\n    tls: {httpsRedirect: true}\n  - port: {number: 443", 1)
		gw = strings.Replace(gw, "mode: SIMPLE", "mode: MUTUAL", 1)
		snap, rej := mustBuild(t, inputs(t, gw, secret, gatewayPod, gatewaySvc, backend))
		if !hasRejection(rej, "tls.mode MUTUAL: Secret istio-system/booking-cert has no usable ca.crt", true) {
			t.Errorf("rejections = %v; want the missing client CA named", rej)
		}
		cfg, _ := snap.L7Config(gwKey)
		if cfg == nil || len(cfg.Listeners) != 1 {
			t.Fatalf("config = %+v; want the redirecting HTTP listener only", cfg)
		}
		want := []model.VirtualHost{{Name: "https-redirect/booking/booking-gateway", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "https-redirect", Redirect: &model.Redirect{Scheme: "https", Code: 301}}}}}
		if diff := cmp.Diff(want, cfg.Listeners[0].VirtualHosts); diff != "" {
			t.Errorf("redirect virtual hosts mismatch (-want +got):\n%s", diff)
		}
	})
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

// TestIngressGRPCRoutePrecedence: on a Gateway API ingress too, GRPCRoute
// matches go in Gateway API's precedence: a longer service first, even
// against an exact service and method, then the newer route's
// service+method match before the older route's service-only one.
func TestIngressGRPCRoutePrecedence(t *testing.T) {
	route := func(name, created, method string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: ` + name + `, namespace: bookinfo, creationTimestamp: "` + created + `"}
spec:
  parentRefs: [{name: grpc-gateway}]
  hostnames: [grpc.example.com]
  rules: [{matches: [{method: ` + method + `}], backendRefs: [{name: reviews, port: 9080}]}]
`
	}
	snap, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: grpc-gateway, namespace: bookinfo}
spec:
  gatewayClassName: istio
  listeners: [{name: http, port: 80, protocol: HTTP}]
`,
		"---\n"+route("older", "2026-01-01T00:00:00Z", "{service: com.example.Reviews}"),
		"---\n"+route("newer", "2026-01-02T00:00:00Z", "{service: com.example.Reviews, method: Get}"),
		"---\n"+route("admin", "2026-01-03T00:00:00Z", "{service: com.example.ReviewsAdmin}"),
	)...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "grpc-gateway"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/grpc-gateway")
	}
	var got []string
	for _, r := range cfg.Listeners[0].VirtualHosts[0].Routes {
		got = append(got, r.Name)
	}
	if want := []string{"admin.bookinfo.0", "newer.bookinfo.0", "older.bookinfo.0"}; !slices.Equal(got, want) {
		t.Errorf("routes %q; want %q", got, want)
	}
}

// TestIngressUseWaypoint: an ingress gateway sends a service's requests to
// its endpoints, bypassing the service's waypoint (Istio's default), unless
// istio.io/ingress-use-waypoint=true is on the service or its namespace:
// then the gateway's cluster for it is the service's VIP, which its HBONE
// dial takes to the waypoint; the service's own label wins over its
// namespace's. The config names the waypoint to reach the VIP through (its
// HBONE address and identity), so the gateway never depends on the
// service's own resource arriving first; a waypoint with no address yet
// leaves the cluster without endpoints (503), never reached around. Pod
// endpoints carry the identity of their enrolled workload. The waypoint's
// own config keeps the endpoints.
func TestIngressUseWaypoint(t *testing.T) {
	productpage := func(labels string) string {
		return `apiVersion: v1
kind: Service
metadata: {name: productpage, namespace: bookinfo, labels: {` + labels + `}}
spec:
  clusterIP: 10.96.0.30
  selector: {app: productpage}
  ports: [{name: http, port: 9080}]
`
	}
	const cluster = "outbound|9080||productpage.bookinfo.svc.cluster.local"
	podEndpoint := []model.L7Endpoint{{Address: "10.0.0.30:9080", Labels: map[string]string{"app": "productpage"}, Workload: "productpage-v1",
		Identity: "spiffe://cluster.local/ns/bookinfo/sa/sa-productpage-v1"}}
	viaVIP := []model.L7Endpoint{{Address: "10.96.0.30:9080", Via: &model.L7Via{
		Waypoint: model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"},
		Address:  "10.96.9.9:15008", Identity: "spiffe://cluster.local/ns/bookinfo/sa/waypoint",
	}}}
	withAddress := waypoint("bookinfo", "waypoint", "10.96.9.9", "")
	noAddress := withAddress[:strings.Index(withAddress, "status:")]
	for _, tt := range []struct {
		name, nsLabels, svcLabels, waypoint string
		want                                []model.L7Endpoint
	}{
		{"no label: endpoints", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint", "", withAddress, podEndpoint},
		{"service label", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint", "istio.io/ingress-use-waypoint: 'true'", withAddress, viaVIP},
		{"namespace label", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint,istio.io/ingress-use-waypoint=true", "", withAddress, viaVIP},
		{"service says false over its namespace", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint,istio.io/ingress-use-waypoint=true", "istio.io/ingress-use-waypoint: 'false'", withAddress, podEndpoint},
		{"no waypoint: endpoints", "istio.io/dataplane-mode=ambient,istio.io/ingress-use-waypoint=true", "", withAddress, podEndpoint},
		{"waypoint without an address yet: no endpoints", "istio.io/dataplane-mode=ambient,istio.io/use-waypoint=waypoint", "istio.io/ingress-use-waypoint: 'true'", noAddress, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ingress := bookinfoIngress[:strings.Index(bookinfoIngress, "apiVersion: v1\nkind: Service\nmetadata: {name: productpage")]
			snap, _ := mustBuild(t, inputs(t, ingress, productpage(tt.svcLabels),
				ns("bookinfo", tt.nsLabels), tt.waypoint,
				pod("bookinfo", "productpage-v1", "10.0.0.30", "n1", "app=productpage")))
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
			if !ok {
				t.Fatal("no L7 config for bookinfo/bookinfo-gateway")
			}
			var got []model.L7Endpoint
			for _, c := range cfg.Clusters {
				if c.Name == cluster {
					got = c.Endpoints
				}
			}
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("ingress cluster endpoints (-want +got):\n%s", diff)
			}
			if wp, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"}); ok {
				for _, c := range wp.Clusters {
					if c.Name == cluster && !cmp.Equal(c.Endpoints, podEndpoint) {
						t.Errorf("the waypoint's own cluster endpoints %+v; want the pod", c.Endpoints)
					}
				}
			}
		})
	}
}

// TestIngressGatewayHTTPS: Gateway API listeners that share a port are
// served together — two HTTP listeners on 80 with their hostnames each
// route their own host (the second was lost before), and two HTTPS
// listeners on 443 terminate TLS with their Secrets' certificates chosen by
// SNI; the routes attached to both reach the HTTPS port's hosts.
func TestIngressGatewayHTTPS(t *testing.T) {
	secret := func(ns, name, host string) (string, string) {
		cert, key := testutil.SelfSignedPEM(t, host)
		return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: %s, namespace: %s}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
`, name, ns, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key)), string(cert)
	}
	secA, certA := secret("shop", "a-cert", "a.example.com")
	secB, certB := secret("shop", "b-cert", "b.example.com")
	secC, certC := secret("certs", "c-cert", "c.example.com") // another namespace's, granted
	secD, _ := secret("certs", "d-cert", "d.example.com")     // not granted
	grant := `apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: gateways-of-shop, namespace: certs}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: shop}]
  to: [{group: "", kind: Secret, name: c-cert}]
`
	route := func(name, svc, sections string) string {
		return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: %s, namespace: shop}
spec:
  parentRefs: %s
  rules: [{backendRefs: [{name: %s, port: 80}]}]
`, name, sections, svc)
	}
	service := func(name, ip string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: shop}
spec: {clusterIP: %s, selector: {app: %s}, ports: [{name: http, port: 80}]}
`, name, ip, name)
	}
	snap, rej := mustBuild(t, inputs(t, ns("shop", ""), ns("certs", ""), secA, secB, secC, secD, grant, service("a", "10.96.0.61"), service("b", "10.96.0.62"),
		pod("shop", "a-1", "10.0.0.61", "n1", "app=a"), pod("shop", "b-1", "10.0.0.62", "n1", "app=b"),
		`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: http-a, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: http-b, port: 80, protocol: HTTP, hostname: b.example.com}
  - {name: https-a, port: 443, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: a-cert}]}}
  - {name: https-b, port: 443, protocol: HTTPS, hostname: b.example.com, tls: {mode: Terminate, certificateRefs: [{name: b-cert}]}}
  - {name: passthrough, port: 8443, protocol: HTTPS, tls: {mode: Passthrough}}
  - {name: https-c, port: 9443, protocol: HTTPS, tls: {certificateRefs: [{name: c-cert, namespace: certs}]}}
  - {name: https-d, port: 10443, protocol: HTTPS, tls: {certificateRefs: [{name: d-cert, namespace: certs}]}}
`,
		route("a", "a", "[{name: edge, sectionName: http-a}, {name: edge, sectionName: https-a}, {name: edge, sectionName: https-c}, {name: edge, sectionName: https-d}]"),
		route("b", "b", "[{name: edge, sectionName: http-b}, {name: edge, sectionName: https-b}]"),
	))
	if len(rej) != 2 || !hasRejection(rej, `listener "passthrough": protocol HTTPS with tls.mode Passthrough`, true) ||
		!hasRejection(rej, `listener "https-d": certificateRefs[0] Secret certs/d-cert: no ReferenceGrant in certs`, true) {
		t.Errorf("rejections = %v; want the passthrough listener's and https-d's (no grant) only", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "shop", Name: "edge"})
	if !ok {
		t.Fatal("no L7 config for shop/edge")
	}
	hosts := func(l model.L7Listener) map[string]string {
		out := map[string]string{}
		for _, vh := range l.VirtualHosts {
			for _, r := range vh.Routes {
				out[strings.Join(vh.Domains, ",")] = r.Destinations[0].Cluster
			}
		}
		return out
	}
	want := map[string]string{"a.example.com": "outbound|80||a.shop.svc.cluster.local", "b.example.com": "outbound|80||b.shop.svc.cluster.local"}
	if len(cfg.Listeners) != 3 {
		t.Fatalf("listeners %+v; want one on 80, 443 and 9443", cfg.Listeners)
	}
	plain, secure, granted := cfg.Listeners[0], cfg.Listeners[1], cfg.Listeners[2]
	if granted.Port != 9443 || granted.TLS == nil || granted.TLS.CertPEM != certC || !slices.Equal(granted.TLS.SNIHosts, []string{"*"}) {
		t.Errorf("port 9443: port %d TLS %v; want the granted certs/c-cert for any SNI", granted.Port, granted.TLS)
	}
	if plain.Port != 80 || plain.TLS != nil || !cmp.Equal(hosts(plain), want) {
		t.Errorf("port 80: port %d, TLS %v, hosts %v; want plaintext with %v", plain.Port, plain.TLS, hosts(plain), want)
	}
	if secure.Port != 443 || !cmp.Equal(hosts(secure), want) {
		t.Errorf("port 443: port %d, hosts %v; want %v", secure.Port, hosts(secure), want)
	}
	if secure.TLS == nil || secure.TLS.CertPEM != certA || !slices.Equal(secure.TLS.SNIHosts, []string{"a.example.com"}) ||
		len(secure.SNI) != 1 || secure.SNI[0].CertPEM != certB || !slices.Equal(secure.SNI[0].SNIHosts, []string{"b.example.com"}) {
		t.Errorf("port 443 TLS %v, SNI %v; want a.example.com's certificate by default and b.example.com's by SNI", secure.TLS, secure.SNI)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("config does not validate: %v", err)
	}
}

// TestIngressGatewayL4: Gateway API's TLS passthrough and TCP listeners. A
// TLSRoute attached to a TLS listener (tls.mode Passthrough) sends the
// connections whose server name its hostnames name to its backends,
// untouched, on a port it shares with an HTTPS listener that terminates
// another host; the oldest TCPRoute attached to a TCP listener takes its
// connections by weight. Route status: accepted where a listener takes the
// kind; a second TCPRoute on the TCP listener, an HTTPRoute naming the TLS
// listener and a TCPRoute naming a Service are not.
func TestIngressGatewayL4(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "shop.example.com")
	service := func(name, ip string, port int) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: shop}
spec: {clusterIP: %s, selector: {app: %s}, ports: [{name: p, port: %d}]}
`, name, ip, name, port)
	}
	age := 0 // each route younger than the one before
	route := func(kind, name, parents, extra string) string {
		age++
		return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: %s
metadata: {name: %s, namespace: shop, creationTimestamp: "2026-01-01T00:00:0%dZ"}
spec:
  parentRefs: %s
%s`, kind, name, age, parents, extra)
	}
	b := NewBuilder(BuilderOptions{})
	snap, rej := b.Build(inputs(t, ns("shop", ""), fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
`, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key)),
		service("my-nginx", "10.96.0.71", 443), service("tcp-echo", "10.96.0.72", 9000), service("tcp-echo-v2", "10.96.0.73", 9000), service("web", "10.96.0.74", 80),
		`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop, generation: 2}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: tls, port: 443, protocol: TLS, hostname: "*.example.com", tls: {mode: Passthrough}}
  - {name: https, port: 443, protocol: HTTPS, hostname: shop.example.com, tls: {certificateRefs: [{name: shop-cert}]}}
  - {name: tcp, port: 9000, protocol: TCP}
`,
		route("TLSRoute", "nginx", "[{name: edge, sectionName: tls}]", `  hostnames: [nginx.example.com]
  rules: [{backendRefs: [{name: my-nginx, port: 443}, {name: missing, port: 443}]}]
`),
		route("TCPRoute", "echo", "[{name: edge, sectionName: tcp}]", `  rules: [{backendRefs: [{name: tcp-echo, port: 9000, weight: 80}, {name: tcp-echo-v2, port: 9000, weight: 20}]}]
`),
		route("TCPRoute", "echo-later", "[{name: edge, sectionName: tcp}]", `  rules: [{backendRefs: [{name: tcp-echo, port: 9000}]}]
`),
		route("TCPRoute", "to-service", `[{group: "", kind: Service, name: web, port: 80}]`, `  rules: [{backendRefs: [{name: web, port: 80}]}]
`),
		route("HTTPRoute", "shop", "[{name: edge, sectionName: https}]", `  rules: [{backendRefs: [{name: web, port: 80}]}]
`),
		route("HTTPRoute", "wrong", "[{name: edge, sectionName: tls}]", `  rules: [{backendRefs: [{name: web, port: 80}]}]
`),
	))
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "shop", Name: "edge"})
	if !ok {
		t.Fatal("no L7 config for shop/edge")
	}
	if len(cfg.Listeners) != 2 {
		t.Fatalf("listeners %+v; want 443 and 9000", cfg.Listeners)
	}
	tlsPort, tcpPort := cfg.Listeners[0], cfg.Listeners[1]
	wantPass := []model.PassthroughRoute{{Name: "shop/nginx", SNIHosts: []string{"nginx.example.com"},
		Destinations: []model.WeightedDestination{{Cluster: "outbound|443||my-nginx.shop.svc.cluster.local", Weight: 1},
			{Cluster: "outbound|443||missing.shop.svc.cluster.local", Weight: 1}}}} // its share refused: no endpoints
	if d := cmp.Diff(wantPass, tlsPort.Passthrough); d != "" {
		t.Errorf("port 443 passthrough routes (-want +got):\n%s", d)
	}
	if tlsPort.TLS == nil || len(tlsPort.VirtualHosts) != 1 || tlsPort.VirtualHosts[0].Domains[0] != "shop.example.com" {
		t.Errorf("port 443: TLS %v hosts %+v; want shop.example.com terminated beside the passthrough", tlsPort.TLS, tlsPort.VirtualHosts)
	}
	wantTCP := &model.TCPRoute{Name: "shop/echo", Destinations: []model.WeightedDestination{
		{Cluster: "outbound|9000||tcp-echo.shop.svc.cluster.local", Weight: 80}, {Cluster: "outbound|9000||tcp-echo-v2.shop.svc.cluster.local", Weight: 20}}}
	if d := cmp.Diff(wantTCP, tcpPort.TCP); d != "" {
		t.Errorf("port 9000 tcp route (-want +got):\n%s", d)
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("config does not validate: %v", err)
	}
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none (route status says what is not served)", rej)
	}
	for _, tt := range []struct {
		kind, name string
		accepted   bool
		reason     string
	}{
		{"TLSRoute", "nginx", true, "Accepted"},
		{"TCPRoute", "echo", true, "Accepted"},
		{"TCPRoute", "echo-later", false, "NotAllowedByListeners"}, // the listener forwards to the oldest
		{"HTTPRoute", "shop", true, "Accepted"},
		{"HTTPRoute", "wrong", false, "NotAllowedByListeners"},
		{"TCPRoute", "to-service", false, "Pending"}, // Service web has no waypoint
	} {
		st := statusOf(t, b, tt.kind, "shop", tt.name)
		if len(st.Parents) != 1 {
			t.Errorf("%s %s: parents %+v; want one", tt.kind, tt.name, st.Parents)
			continue
		}
		c := meta.FindStatusCondition(st.Parents[0].Conditions, "Accepted")
		if c == nil || (c.Status == metav1.ConditionTrue) != tt.accepted || c.Reason != tt.reason {
			t.Errorf("%s %s: Accepted %+v; want %v %s", tt.kind, tt.name, c, tt.accepted, tt.reason)
		}
	}
	ls := statusOf(t, b, KindGateway, "shop", "edge").Listeners
	for _, l := range ls {
		if !meta.IsStatusConditionTrue(l.Conditions, "Programmed") {
			t.Errorf("listener %s: %+v; want Programmed", l.Name, l.Conditions)
		}
	}
	if len(ls) != 3 || ls[0].AttachedRoutes != 1 || ls[2].AttachedRoutes != 1 {
		t.Errorf("listeners %+v; want tls and tcp with 1 route attached each", ls)
	}
}
