package cli

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// describeGatewayObjects is a shared ingress Gateway admitting the
// ListenerSets of namespaces labelled shared-gateway=true, with status as
// meshd writes it: team-a's set attached, with a route to its Service;
// team-b's set, in a namespace without the label, NotAllowed.
const describeGatewayObjects = `
apiVersion: v1
kind: Namespace
metadata: {name: infra}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-a, labels: {shared-gateway: "true"}}
---
apiVersion: v1
kind: Namespace
metadata: {name: team-b}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra}
spec:
  gatewayClassName: meshlet
  allowedListeners:
    namespaces:
      from: Selector
      selector: {matchLabels: {shared-gateway: "true"}}
  listeners: [{name: http, port: 80, protocol: HTTP}]
status:
  addresses: [{type: IPAddress, value: 203.0.113.10}]
  attachedListenerSets: 1
  conditions:
  - {type: Accepted, status: "True", reason: Accepted, message: "gateway accepted", lastTransitionTime: "2025-01-01T00:00:00Z"}
  - {type: Programmed, status: "True", reason: Programmed, message: "deployment ready", lastTransitionTime: "2025-01-01T00:00:00Z"}
  listeners:
  - name: http
    attachedRoutes: 0
    supportedKinds: [{kind: HTTPRoute}]
    conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: listener accepted, lastTransitionTime: "2025-01-01T00:00:00Z"}
    - {type: Programmed, status: "True", reason: Programmed, message: configuration pushed to the gateway's proxies, lastTransitionTime: "2025-01-01T00:00:00Z"}
    - {type: ResolvedRefs, status: "True", reason: ResolvedRefs, message: all references resolved, lastTransitionTime: "2025-01-01T00:00:00Z"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: team-a, namespace: team-a}
spec:
  parentRef: {name: edge, namespace: infra}
  listeners: [{name: web, port: 8080, protocol: HTTP, hostname: team-a.example.com}]
status:
  conditions:
  - {type: Accepted, status: "True", reason: Accepted, message: attached to Gateway infra/edge, lastTransitionTime: "2025-01-01T00:00:00Z"}
  - {type: Programmed, status: "True", reason: Programmed, message: configuration pushed to the gateway's proxies, lastTransitionTime: "2025-01-01T00:00:00Z"}
  listeners:
  - name: web
    attachedRoutes: 1
    supportedKinds: [{kind: HTTPRoute}]
    conditions:
    - {type: Accepted, status: "True", reason: Accepted, message: listener accepted, lastTransitionTime: "2025-01-01T00:00:00Z"}
    - {type: Programmed, status: "True", reason: Programmed, message: configuration pushed to the gateway's proxies, lastTransitionTime: "2025-01-01T00:00:00Z"}
    - {type: ResolvedRefs, status: "True", reason: ResolvedRefs, message: all references resolved, lastTransitionTime: "2025-01-01T00:00:00Z"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: team-b, namespace: team-b}
spec:
  parentRef: {name: edge, namespace: infra}
  listeners: [{name: web, port: 8081, protocol: HTTP}]
status:
  conditions:
  - {type: Accepted, status: "False", reason: NotAllowed, message: "Gateway infra/edge does not admit ListenerSets of namespace team-b: its spec.allowedListeners.namespaces.selector does not match this namespace's labels", lastTransitionTime: "2025-01-01T00:00:00Z"}
  - {type: Programmed, status: "False", reason: NotAllowed, message: "not attached: see Accepted", lastTransitionTime: "2025-01-01T00:00:00Z"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: team-a}
spec:
  parentRefs: [{kind: ListenerSet, name: team-a}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: web, port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: team-a}
spec:
  clusterIP: 10.96.0.20
  selector: {app: web}
  ports: [{name: http, port: 8080}]
---
apiVersion: v1
kind: Pod
metadata: {name: web-1, namespace: team-a, uid: web-1-uid, labels: {app: web}}
spec:
  containers: [{name: web, image: web}]
status:
  phase: Running
  podIP: 10.0.0.7
  podIPs: [{ip: 10.0.0.7}]
  conditions: [{type: Ready, status: "True"}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: other, namespace: infra}
spec:
  gatewayClassName: nginx
  listeners: [{name: http, port: 80, protocol: HTTP}]
`

func describeGatewayText(t *testing.T, yaml, ns, name string) (string, error) {
	t.Helper()
	us, err := decodeObjects([]byte(yaml), "test objects")
	if err != nil {
		t.Fatal(err)
	}
	objs := make([]sourced, len(us))
	for i, u := range us {
		objs[i] = sourced{obj: u}
	}
	findings, snap, err := analyzeModel(objs, AnalyzeOptions{AssumeProfile: "live"})
	if err != nil {
		t.Fatal(err)
	}
	var out bytes.Buffer
	err = describeGateway(&out, objs, snap, findings, ns, name)
	return out.String(), err
}

func TestDescribeGateway(t *testing.T) {
	got, err := describeGatewayText(t, describeGatewayObjects, "infra", "edge")
	if err != nil {
		t.Fatal(err)
	}
	wantDescribed(t, got,
		"Gateway:    infra/edge, class meshlet (ingress)\n",
		"Programmed: True (Programmed): deployment ready\n",
		"Addresses:  203.0.113.10\n",
		"Allowed ListenerSets: from Selector, namespaces matching shared-gateway=true\n",
		"Attached ListenerSets: 1\n",
		// The set's listener: where it comes from, its port and status.
		"  web (ListenerSet team-a/team-a): port 8080 HTTP, hostname team-a.example.com, attachedRoutes 1; Accepted; Programmed; ResolvedRefs\n",
		"  web (ListenerSet team-b/team-b): port 8081 HTTP, hostname *; not served: the ListenerSet is not attached (NotAllowed, see below)\n",
		"  team-a/team-a: Accepted True (Accepted); Programmed True (Programmed)\n",
		"  team-b/team-b: Accepted False (NotAllowed): Gateway infra/edge does not admit ListenerSets of namespace team-b: its spec.allowedListeners.namespaces.selector does not match this namespace's labels;",
		// What is served, from the local translation.
		"  port 8080 (plaintext):\n    hosts team-a.example.com:\n      HTTPRoute team-a/web rule 0 [path prefix /api] -> web.team-a.svc.cluster.local:8080\n",
		"Findings (meshctl analyze):\n  Warning ListenerSet team-b/team-b: not attached to Gateway infra/edge",
	)
	if strings.Contains(got, "port 80 (") {
		t.Errorf("port 80 has no route, yet is shown served:\n%s", got)
	}
}

// TestDescribeGatewayListenerStatus: a listener's unhappy conditions are
// shown with their reason and message, happy ones by name.
func TestDescribeGatewayListenerStatus(t *testing.T) {
	objs := strings.Replace(describeGatewayObjects, `    - {type: ResolvedRefs, status: "True", reason: ResolvedRefs, message: all references resolved, lastTransitionTime: "2025-01-01T00:00:00Z"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet`, `    - {type: ResolvedRefs, status: "True", reason: ResolvedRefs, message: all references resolved, lastTransitionTime: "2025-01-01T00:00:00Z"}
    - {type: Conflicted, status: "True", reason: ProtocolConflict, message: "port 80 is also served by listener \"tcp\" with protocol TCP", lastTransitionTime: "2025-01-01T00:00:00Z"}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet`, 1)
	got, err := describeGatewayText(t, objs, "infra", "edge")
	if err != nil {
		t.Fatal(err)
	}
	want := `  http (Gateway infra/edge): port 80 HTTP, hostname *, attachedRoutes 0; Accepted; Programmed; ResolvedRefs; Conflicted True (ProtocolConflict): port 80 is also served by listener "tcp" with protocol TCP` + "\n"
	wantDescribed(t, got, want)
}

// TestDescribeGatewayRouteFindings: the findings of a route attached
// through one of the Gateway's ListenerSets are the Gateway's too.
func TestDescribeGatewayRouteFindings(t *testing.T) {
	objs := describeGatewayObjects + `
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: broken, namespace: team-a}
spec:
  parentRefs: [{kind: ListenerSet, name: team-a}]
  rules: [{backendRefs: [{name: web, port: 8080}], timeouts: {request: ten seconds}}]
`
	got, err := describeGatewayText(t, objs, "infra", "edge")
	if err != nil {
		t.Fatal(err)
	}
	wantDescribed(t, got, "Warning HTTPRoute team-a/broken: rules[0].timeouts.request")
}

// TestDescribeGatewayTLS: a terminating port says its TLS mode and SNI
// hosts.
func TestDescribeGatewayTLS(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "secure.example.com")
	objs := strings.Replace(describeGatewayObjects, "  listeners: [{name: http, port: 80, protocol: HTTP}]\nstatus:",
		`  listeners:
  - {name: http, port: 80, protocol: HTTP}
  - {name: https, port: 443, protocol: HTTPS, hostname: secure.example.com, tls: {certificateRefs: [{name: edge-cert}]}}
status:`, 1) + fmt.Sprintf(`
---
apiVersion: v1
kind: Secret
metadata: {name: edge-cert, namespace: infra}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: site, namespace: infra}
spec:
  parentRefs: [{name: edge, sectionName: https}]
  rules: [{backendRefs: [{name: site, port: 80, weight: 90}, {name: site-canary, port: 80, weight: 10}]}]
---
apiVersion: v1
kind: Service
metadata: {name: site, namespace: infra}
spec: {clusterIP: 10.96.0.30, selector: {app: site}, ports: [{name: http, port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: site-canary, namespace: infra}
spec: {clusterIP: 10.96.0.31, selector: {app: site-canary}, ports: [{name: http, port: 80}]}
`, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key))
	got, err := describeGatewayText(t, objs, "infra", "edge")
	if err != nil {
		t.Fatal(err)
	}
	want := `  port 443 (TLS SIMPLE, SNI secure.example.com):
    hosts secure.example.com:
      HTTPRoute infra/site rule 0 -> site.infra.svc.cluster.local:80 (weight 90), site-canary.infra.svc.cluster.local:80 (weight 10)
`
	wantDescribed(t, got, want)
	// The listener has no status in the objects: meshd has not written it.
	wantDescribed(t, got, "  https (Gateway infra/edge): port 443 HTTPS, hostname secure.example.com; no status yet (meshd has not written it)\n")
}

func TestDescribeGatewayErrors(t *testing.T) {
	for _, tt := range []struct {
		ns, name string
		want     []string
	}{
		{"infra", "nope", []string{"gateway infra/nope not found, neither a Gateway API nor an Istio one", "gateways.networking.istio.io -A"}},
		{"team-a", "edge", []string{"gateway team-a/edge not found"}},
		{"infra", "other", []string{`gateway infra/other is of class "nginx"`, "meshlet serves the classes istio, meshlet, istio-waypoint and meshlet-waypoint"}},
	} {
		got, err := describeGatewayText(t, describeGatewayObjects, tt.ns, tt.name)
		if err == nil {
			t.Errorf("%s/%s: no error; printed\n%s", tt.ns, tt.name, got)
			continue
		}
		for _, w := range tt.want {
			if !strings.Contains(err.Error(), w) {
				t.Errorf("%s/%s: error %q does not say %q", tt.ns, tt.name, err, w)
			}
		}
	}
}

// TestDescribeGatewayWaypoint: a waypoint's header, its HBONE listener and
// the services bound to it.
func TestDescribeGatewayWaypoint(t *testing.T) {
	objs := describeGatewayObjects + `
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: team-a}
spec:
  gatewayClassName: meshlet-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
status:
  addresses: [{type: IPAddress, value: 10.96.0.99}]
  conditions:
  - {type: Programmed, status: "False", reason: Pending, message: "waiting for the deployment", lastTransitionTime: "2025-01-01T00:00:00Z"}
---
apiVersion: v1
kind: Service
metadata: {name: api, namespace: team-a, labels: {istio.io/use-waypoint: waypoint}}
spec:
  clusterIP: 10.96.0.21
  selector: {app: web}
  ports: [{name: http, port: 80}]
`
	got, err := describeGatewayText(t, objs, "team-a", "waypoint")
	if err != nil {
		t.Fatal(err)
	}
	wantDescribed(t, got,
		"Gateway:    team-a/waypoint, class meshlet-waypoint (waypoint)\n",
		"Accepted:   - (no status yet: meshd has not written it)\n",
		"Programmed: False (Pending): waiting for the deployment\n",
		"  mesh (Gateway team-a/waypoint): port 15008 HBONE, hostname *; no status yet (meshd has not written it)\n",
		"Services bound to it:\n  api.team-a.svc.cluster.local (by the service's label)\n",
	)
	if strings.Contains(got, "ListenerSets") {
		t.Errorf("a waypoint takes no ListenerSets, yet they are shown:\n%s", got)
	}
}

// TestRouteLine: one line per route, whatever it does.
func TestRouteLine(t *testing.T) {
	origin := "HTTPRoute/shop/web"
	for _, tt := range []struct {
		r    model.L7Route
		want string
	}{
		{model.L7Route{Name: "web.shop.1", Origin: origin, Redirect: &model.Redirect{Scheme: "https", Port: 443, Code: 301}},
			"HTTPRoute shop/web rule 1 -> redirect 301 to scheme https, port 443"},
		{model.L7Route{Name: "login", Origin: origin, Matches: []model.RouteMatch{{URI: &model.StringMatch{Exact: "/login"}, Method: &model.StringMatch{Exact: "POST"}}, {URI: &model.StringMatch{Regex: "/l.*"}}},
			DirectResponse: &model.DirectResponse{Status: 403}},
			"HTTPRoute shop/web rule login [path /login POST or path ~ /l.*] -> responds 403"},
		{model.L7Route{Name: "vs.shop.0", Destinations: []model.WeightedDestination{{Cluster: "outbound|8080|v2|web.shop.svc.cluster.local", Weight: 1}}},
			"vs.shop.0 -> web.shop.svc.cluster.local:8080 subset v2"},
	} {
		if got := routeLine(tt.r); got != tt.want {
			t.Errorf("routeLine = %q; want %q", got, tt.want)
		}
	}
}

// wantDescribed fails t for each of wants that the describe output got
// does not contain.
func wantDescribed(t *testing.T, got string, wants ...string) {
	t.Helper()
	for _, want := range wants {
		if !strings.Contains(got, want) {
			t.Errorf("no %q in\n%s", want, got)
		}
	}
}

// TestDescribeIstioGateway: an Istio Gateway is described by its servers,
// the gateway deployment its selector picks, the VirtualServices bound to
// it (by name in its namespace, or namespace/name), what meshd serves there,
// and the findings about it and them.
func TestDescribeIstioGateway(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "shop.example.com")
	objs := fmt.Sprintf(`
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: meshlet-system}
---
apiVersion: v1
kind: Pod
metadata: {name: istio-ingressgateway-1, namespace: meshlet-system, labels: {istio: ingressgateway, gateway.networking.k8s.io/gateway-name: istio-ingressgateway}}
spec: {nodeName: n1, containers: [{name: gw, image: meshlet/waypoint}]}
status: {phase: Running, podIP: 10.0.0.9}
---
apiVersion: v1
kind: Service
metadata: {name: istio-ingressgateway, namespace: meshlet-system}
spec:
  selector: {istio: ingressgateway}
  clusterIP: 10.96.0.9
  ports: [{name: http, port: 80, targetPort: 8080}, {name: https, port: 443, targetPort: 8443}]
---
apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: meshlet-system}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
---
apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.20, ports: [{name: http, port: 8080}]}
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: shop-gw, namespace: shop}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: [shop.example.com]
    tls: {httpsRedirect: true}
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: [shop.example.com]
    tls: {mode: SIMPLE, credentialName: shop-cert}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: shop, namespace: shop}
spec:
  hosts: [shop.example.com]
  gateways: [shop-gw]
  http: [{match: [{uri: {prefix: /api}}], route: [{destination: {host: web, port: {number: 8080}}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inside, namespace: shop}
spec:
  hosts: [web]
  http: [{route: [{destination: {host: web}}]}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: elsewhere, namespace: other}
spec:
  hosts: [shop.example.com]
  gateways: [shop/shop-gw]
  http: [{route: [{destination: {host: nowhere.other.svc.cluster.local}}]}]
`, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key))
	got, err := describeGatewayText(t, objs, "shop", "shop-gw")
	if err != nil {
		t.Fatal(err)
	}
	wantDescribed(t, got,
		"Gateway:    shop/shop-gw (Istio networking.istio.io)\nSelector:   istio=ingressgateway\n",
		"Gateway deployments (selected pods):\n  meshlet-system/istio-ingressgateway (1 pods)\n",
		"  port 80 HTTP (http), hosts shop.example.com, redirects to HTTPS\n",
		"  port 443 HTTPS (https), hosts shop.example.com, TLS SIMPLE with Secret shop-cert\n",
		"  shop/shop: hosts shop.example.com\n",
		"  other/elsewhere: hosts shop.example.com\n",
		"On meshlet-system/istio-ingressgateway:\nServed (the configuration meshd pushes to the gateway):\n",
		"  port 8443 (TLS SIMPLE, SNI shop.example.com):\n",
		"      VirtualService shop/shop rule 0 [path prefix /api] -> web.shop.svc.cluster.local:8080\n",
		"Findings (meshctl analyze):\n  Error VirtualService other/elsewhere: destination host nowhere.other.svc.cluster.local matches no service",
	)
	if strings.Contains(got, "shop/inside") {
		t.Errorf("a VirtualService not naming the Gateway is shown bound:\n%s", got)
	}
}
