package controlplane

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// Istio's "Mutual TLS Migration" and PeerAuthentication reference examples,
// in the versions users write (v1beta1 in the seed manifests, v1 today).
const istioPeerAuthExamples = `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata:
  name: default
  namespace: istio-system
  creationTimestamp: "2024-01-01T00:00:00Z"
spec:
  mtls:
    mode: STRICT
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: default
  namespace: foo
  creationTimestamp: "2024-01-02T00:00:00Z"
spec:
  mtls:
    mode: PERMISSIVE
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata:
  name: finance
  namespace: foo
  creationTimestamp: "2024-01-03T00:00:00Z"
spec:
  selector:
    matchLabels:
      app: finance
  mtls:
    mode: STRICT
  portLevelMtls:
    8080:
      mode: DISABLE
`

func TestPeerAuthenticationTranslation(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, istioPeerAuthExamples,
		pod("foo", "finance", "10.0.0.1", "n1", "app=finance"),
		pod("foo", "web", "10.0.0.2", "n1", "app=web"),
		pod("bar", "api", "10.0.0.3", "n1", "app=api"),
	))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	tests := []struct {
		ns, name string
		port     uint32
		want     model.MTLSMode
	}{
		// Workload policy STRICT with port 8080 DISABLE (Istio's port-level example).
		{"foo", "finance", 80, model.MTLSStrict},
		{"foo", "finance", 8080, model.MTLSDisable},
		// Namespace policy overrides the mesh-wide STRICT.
		{"foo", "web", 80, model.MTLSPermissive},
		// Mesh-wide STRICT from the root namespace.
		{"bar", "api", 80, model.MTLSStrict},
	}
	for _, tt := range tests {
		w := workloadByName(t, snap, tt.ns, tt.name)
		if got := w.PeerAuthentication.ModeFor(tt.port); got != tt.want {
			t.Errorf("%s/%s port %d mode = %s; want %s (policies %v)", tt.ns, tt.name, tt.port, got, tt.want, w.PeerAuthentication.Policies)
		}
	}
}

func TestPeerAuthenticationRejections(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		reason  string
		warning bool
	}{
		{"unknown mode", "mtls: {mode: 7}", "mtls.mode 7", false},
		{"port out of range", "selector: {matchLabels: {app: x}}\nportLevelMtls: {70000: {mode: STRICT}}", "out of range", false},
		{"port-level without selector", "portLevelMtls: {80: {mode: STRICT}}", "ignored without a selector", true},
		{"selector matching nothing", "selector: {matchLabels: {app: ghost}}\nmtls: {mode: STRICT}", "matches no workload", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: p, namespace: foo}\nspec:\n  " +
				strings.ReplaceAll(tt.spec, "\n", "\n  ") + "\n"
			snap, rej := mustBuild(t, inputs(t, doc, pod("foo", "web", "10.0.0.2", "n1", "app=web")))
			if !hasRejection(rej, tt.reason, tt.warning) {
				t.Fatalf("rejections = %v; want one (warning=%v) containing %q", rej, tt.warning, tt.reason)
			}
			got := len(snap.PeerAuthentications())
			if want := map[bool]int{true: 1, false: 0}[tt.warning]; got != want {
				t.Errorf("PeerAuthentications() has %d policies; want %d (warnings keep the object, rejections skip it)", got, want)
			}
		})
	}
}

// Istio's AuthorizationPolicy reference examples: allow-read in a namespace,
// a deny on a workload, a mesh-wide policy, and one bound to a waypoint.
const istioAuthzExamples = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-nothing, namespace: istio-system}
spec: {}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-read, namespace: foo}
spec:
  action: ALLOW
  rules:
  - from:
    - source:
        principals: ["cluster.local/ns/default/sa/sleep"]
    - source:
        namespaces: ["test"]
        ipBlocks: ["203.0.113.0/24"]
    to:
    - operation:
        ports: ["8080"]
---
apiVersion: security.istio.io/v1beta1
kind: AuthorizationPolicy
metadata: {name: deny-httpbin, namespace: foo}
spec:
  selector:
    matchLabels: {app: httpbin}
  action: DENY
  rules:
  - from:
    - source: {notNamespaces: ["foo"]}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-l7, namespace: foo}
spec:
  targetRefs:
  - {kind: Service, group: "", name: httpbin}
  action: ALLOW
  rules:
  - to:
    - operation: {methods: ["GET"]}
`

// A root-namespace policy with a selector applies to the matching workloads
// of every namespace (Istio: "If set to root namespace, the policy applies
// to all namespaces in a mesh"; the selector narrows it).
const rootSelectorPolicy = `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny-legacy, namespace: istio-system}
spec:
  selector:
    matchLabels: {app: api}
  action: DENY
  rules:
  - to:
    - operation: {ports: ["9000"]}
`

func TestAuthorizationPolicyBinding(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, istioAuthzExamples+"---\n"+rootSelectorPolicy,
		pod("foo", "httpbin", "10.0.0.1", "n1", "app=httpbin"),
		pod("foo", "web", "10.0.0.2", "n1", "app=web"),
		pod("bar", "api", "10.0.0.3", "n1", "app=api"),
	))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	tests := []struct {
		ns, name string
		want     []model.NamespacedName
	}{
		{"foo", "httpbin", []model.NamespacedName{{Namespace: "foo", Name: "allow-read"}, {Namespace: "foo", Name: "deny-httpbin"}, {Namespace: "istio-system", Name: "allow-nothing"}}},
		{"foo", "web", []model.NamespacedName{{Namespace: "foo", Name: "allow-read"}, {Namespace: "istio-system", Name: "allow-nothing"}}},
		{"bar", "api", []model.NamespacedName{{Namespace: "istio-system", Name: "allow-nothing"}, {Namespace: "istio-system", Name: "deny-legacy"}}},
	}
	for _, tt := range tests {
		w := workloadByName(t, snap, tt.ns, tt.name)
		if diff := cmp.Diff(tt.want, w.AuthorizationPolicies); diff != "" {
			t.Errorf("%s/%s AuthorizationPolicies mismatch (-want +got):\n%s", tt.ns, tt.name, diff)
		}
	}
}

func TestAuthorizationPolicyRejections(t *testing.T) {
	tests := []struct {
		name    string
		spec    string
		reason  string
		warning bool
	}{
		{"bad ipBlock", `rules: [{from: [{source: {ipBlocks: ["10.0.0.0/33"]}}]}]`, "ip block", false},
		{"bad port", `rules: [{to: [{operation: {ports: ["http"]}}]}]`, "want a number 1-65535", false},
		{"unknown action", `action: 9`, "action 9", false},
		{"custom unsupported", `action: CUSTOM`, "CUSTOM", false},
		{"selector and targetRefs", `{selector: {matchLabels: {app: a}}, targetRefs: [{kind: Gateway, name: wp}]}`, "only one of selector", false},
		{"bad targetRef kind", `targetRefs: [{kind: Pod, name: x}]`, "targetRef kind", false},
		{"selector matching nothing", `selector: {matchLabels: {app: ghost}}`, "matches no workload", true},
		{"trust domains", `rules: [{from: [{source: {trustDomains: [td]}}]}]`, "trustDomains is not supported", false},
		{"serviceAccounts with principals", `rules: [{from: [{source: {serviceAccounts: [a/b], principals: [x]}}]}]`, "cannot be set with principals", false},
		{"bad serviceAccount", `rules: [{from: [{source: {serviceAccounts: [nobody]}}]}]`, "want namespace/name", false},
		{"when without values", `rules: [{when: [{key: source.ip}]}]`, "set values or notValues", false},
		{"cross-namespace targetRef", `targetRefs: [{kind: Gateway, name: wp, namespace: other}]`, "its own namespace", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			doc := "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: foo}\nspec:\n  " + tt.spec + "\n"
			snap, rej := mustBuild(t, inputs(t, doc, pod("foo", "web", "10.0.0.2", "n1", "app=web")))
			if !hasRejection(rej, tt.reason, tt.warning) {
				t.Fatalf("rejections = %v; want one (warning=%v) containing %q", rej, tt.warning, tt.reason)
			}
			bound := len(workloadByName(t, snap, "foo", "web").AuthorizationPolicies) > 0
			if !tt.warning && bound {
				t.Errorf("a rejected policy was bound to foo/web")
			}
		})
	}
}

// Istio's ServiceEntry reference examples: an external HTTPS API (DNS), and a
// MESH_INTERNAL entry selecting VMs (WorkloadEntries) by label.
const istioServiceEntryExamples = `apiVersion: networking.istio.io/v1alpha3
kind: ServiceEntry
metadata: {name: external-svc-https, namespace: foo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [api.dropboxapi.com, www.googleapis.com]
  location: MESH_EXTERNAL
  ports:
  - {number: 443, name: https, protocol: TLS}
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: details-svc, namespace: foo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  hosts: [details.bookinfo.com]
  addresses: [240.0.0.1]
  location: MESH_INTERNAL
  ports:
  - {number: 80, name: http, protocol: HTTP, targetPort: 8080}
  resolution: STATIC
  workloadSelector:
    labels: {app: details-legacy}
---
apiVersion: networking.istio.io/v1beta1
kind: WorkloadEntry
metadata: {name: details-vm-1, namespace: foo, uid: we-1}
spec:
  serviceAccount: details-legacy
  address: 192.0.2.10
  labels: {app: details-legacy, instance-id: vm1}
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: newer-duplicate, namespace: bar, creationTimestamp: "2024-02-01T00:00:00Z"}
spec:
  hosts: [details.bookinfo.com]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
`

func TestServiceEntryTranslation(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, istioServiceEntryExamples))
	// Oldest wins for a duplicate host: bar/newer-duplicate is the one rejected.
	if !hasRejection(rej, "ServiceEntry bar/newer-duplicate: duplicate host: details.bookinfo.com is already served by se/foo/details-svc", false) {
		t.Errorf("rejections = %v; want bar/newer-duplicate rejected for its duplicate host", rej)
	}
	if _, ok := snap.Service("se/bar/newer-duplicate"); ok {
		t.Errorf("the rejected ServiceEntry is in the snapshot")
	}
	ext, ok := snap.ServiceByHostname("www.googleapis.com")
	if !ok || !ext.External || ext.Resolution != "DNS" || ext.Ports[0].AppProtocol != "TLS" {
		t.Errorf("www.googleapis.com = %+v; want the external DNS service with a TLS port", ext)
	}
	// DNS resolution without endpoints: the hosts themselves are resolved.
	var hosts []string
	for _, ep := range ext.Endpoints {
		if ep.Ports[443] != 443 || !ep.Ready || len(ep.Addresses) != 0 {
			t.Errorf("endpoint %+v; want a hostname on 443", ep)
		}
		hosts = append(hosts, ep.Hostname)
	}
	if !slices.Equal(hosts, []string{"api.dropboxapi.com", "www.googleapis.com"}) {
		t.Errorf("endpoints by hostname %q; want each host of the entry", hosts)
	}
	details, ok := snap.ServiceByHostname("details.bookinfo.com")
	if !ok {
		t.Fatal("details.bookinfo.com not found")
	}
	if len(details.Endpoints) != 1 || details.Endpoints[0].WorkloadUID != "we-1" || details.Endpoints[0].Ports[80] != 8080 {
		t.Errorf("details endpoints = %+v; want the WorkloadEntry on 80->8080", details.Endpoints)
	}
	a, ok := snap.Lookup(mustAddr("240.0.0.1"))
	if !ok || a.Service != details {
		t.Errorf("Lookup(240.0.0.1) = %+v; want details-svc", a)
	}
	vm, ok := snap.Lookup(mustAddr("192.0.2.10"))
	if !ok || vm.Workload == nil || vm.Workload.Identity != "spiffe://cluster.local/ns/foo/sa/details-legacy" || vm.Workload.Kind != model.KindWorkloadEntry {
		t.Errorf("Lookup(192.0.2.10) = %+v; want the WorkloadEntry with its SPIFFE identity", vm)
	}
}

// TestExportTo: a ServiceEntry's exportTo and a Service's
// networking.istio.io/exportTo annotation reach the model; an invalid
// annotation is reported and the Service kept, exported everywhere.
func TestExportTo(t *testing.T) {
	annotated := func(name, v string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: foo, annotations: {networking.istio.io/exportTo: %q}}
spec: {clusterIP: 10.96.0.%d, ports: [{port: 80}]}
`, name, v, len(name))
	}
	snap, rej := mustBuild(t, inputs(t, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: foo}
spec:
  hosts: [api.partner.example]
  ports: [{number: 443, name: tls, protocol: TLS}]
  exportTo: [".", bar]
`, annotated("local", "."), annotated("two", "bar, baz"), annotated("broken", "*,bar")))
	se, _ := snap.Service("se/foo/partner")
	if se == nil || !slices.Equal(se.ExportTo, []string{".", "bar"}) || !se.VisibleTo("foo") || !se.VisibleTo("bar") || se.VisibleTo("baz") {
		t.Errorf("ServiceEntry = %+v; want exported to foo and bar only", se)
	}
	if svc, _ := snap.Service("foo/local"); svc == nil || !svc.VisibleTo("foo") || svc.VisibleTo("bar") {
		t.Errorf("Service with exportTo . = %+v; want visible in foo only", svc)
	}
	if svc, _ := snap.Service("foo/two"); svc == nil || !slices.Equal(svc.ExportTo, []string{"bar", "baz"}) {
		t.Errorf("Service with exportTo \"bar, baz\" = %+v; want [bar baz]", svc)
	}
	if svc, _ := snap.Service("foo/broken"); svc == nil || len(svc.ExportTo) != 0 || !svc.VisibleTo("elsewhere") {
		t.Errorf("Service with an invalid exportTo = %+v; want kept, exported everywhere", svc)
	}
	if !hasRejection(rej, "networking.istio.io/exportTo", true) {
		t.Errorf("rejections = %v; want a warning for foo/broken's annotation", rej)
	}
}

func TestValidationRejectsAndKeepsTheRest(t *testing.T) {
	tests := []struct {
		name   string
		doc    string
		reason string
	}{
		{"VirtualService bad regex", `apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: vs, namespace: foo}
spec:
  hosts: [reviews]
  http:
  - match: [{uri: {regex: "(unclosed"}}]
    route: [{destination: {host: reviews}}]
`, "regex"},
		{"VirtualService duplicate host", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: foo}
spec:
  hosts: [reviews, reviews]
  http: [{route: [{destination: {host: reviews}}]}]
`, "duplicate host"},
		{"VirtualService route without destination", `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: foo}
spec:
  hosts: [reviews]
  http: [{route: [{weight: 100}]}]
`, "no destination host"},
		{"ServiceEntry DNS wildcard without endpoints", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: foo}
spec:
  hosts: ["*.partner.example"]
  ports: [{number: 443, name: tls, protocol: TLS}]
  resolution: DNS
`, "a wildcard host cannot be resolved"},
		{"DestinationRule unknown load balancer", `apiVersion: networking.istio.io/v1beta1
kind: DestinationRule
metadata: {name: dr, namespace: foo}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: 42}}
`, "not a known algorithm"},
		{"DestinationRule duplicate subset", `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: dr, namespace: foo}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v1, labels: {version: v2}}]
`, "defined twice"},
		{"ServiceEntry bad address", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: foo}
spec:
  hosts: [x.example.com]
  addresses: [not-an-ip]
  ports: [{number: 80, name: http, protocol: HTTP}]
`, "not an IP address"},
		{"ServiceEntry unknown protocol", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 80, name: http, protocol: GOPHER}]
`, "not a protocol"},
		{"ServiceEntry exportTo with a bad namespace", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  exportTo: [Not_A_Namespace]
`, "exportTo"},
		{"ServiceEntry exportTo star with others", `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: se, namespace: foo}
spec:
  hosts: [x.example.com]
  ports: [{number: 443, name: tls, protocol: TLS}]
  exportTo: ["*", bar]
`, "may not be combined"},
		{"WorkloadEntry without IP", `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: we, namespace: foo}
spec: {address: vm.example.com}
`, "needs an IP"},
		{"HTTPRoute bad regex", `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: rt, namespace: foo}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{path: {type: RegularExpression, value: "[z-a]"}}]
    backendRefs: [{name: web, port: 80}]
`, "regex"},
		{"GRPCRoute bad header regex", `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: rt, namespace: foo}
spec:
  parentRefs: [{name: gw}]
  rules:
  - matches: [{headers: [{type: RegularExpression, name: x, value: "*"}]}]
`, "regex"},
		{"RequestAuthentication without issuer", `apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt, namespace: foo}
spec:
  jwtRules: [{jwksUri: "https://example.com/jwks"}]
`, "no issuer"},
		{"waypoint with unknown waypoint-for", `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: wp, namespace: foo, labels: {istio.io/waypoint-for: everything}}
spec: {gatewayClassName: istio-waypoint, listeners: [{name: mesh, port: 15008, protocol: HBONE}]}
`, "waypoint-for"},
		{"Istio Gateway without servers", `apiVersion: networking.istio.io/v1alpha3
kind: Gateway
metadata: {name: gw, namespace: foo}
spec: {selector: {istio: ingressgateway}}
`, "servers is empty"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t, tt.doc,
				pod("foo", "web", "10.0.0.2", "n1", "app=web"),
				service("foo", "web", "10.96.0.2", "app=web", "")))
			if !hasRejection(rej, tt.reason, false) {
				t.Fatalf("rejections = %v; want one containing %q", rej, tt.reason)
			}
			// Everything else is still built.
			if svc, ok := snap.Service("foo/web"); !ok || len(svc.Endpoints) != 1 {
				t.Errorf("foo/web missing or without endpoints after a rejection elsewhere")
			}
		})
	}
}

func TestDestinationRuleLoadBalancing(t *testing.T) {
	// Istio: a DestinationRule in the service's namespace is preferred over
	// one in the root namespace; short hosts resolve in the rule's namespace.
	snap, rej := mustBuild(t, inputs(t, service("foo", "web", "10.96.0.2", "app=web", ""), `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: mesh-default, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
spec:
  host: web.foo.svc.cluster.local
  trafficPolicy: {loadBalancer: {simple: RANDOM}}
---
apiVersion: networking.istio.io/v1alpha3
kind: DestinationRule
metadata: {name: web, namespace: foo, creationTimestamp: "2024-06-01T00:00:00Z"}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: LEAST_CONN}}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web-newer, namespace: foo, creationTimestamp: "2024-07-01T00:00:00Z"}
spec:
  host: web
  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
`))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	svc, _ := snap.Service("foo/web")
	if svc.LoadBalancing != model.LBLeastRequest {
		t.Errorf("LoadBalancing = %q; want LEAST_REQUEST (oldest rule of the service's own namespace)", svc.LoadBalancing)
	}
}

func TestInputsAddRejectsUnknownTypes(t *testing.T) {
	var in Inputs
	if err := in.Add(nil); err == nil {
		t.Error("Add(nil) = nil; want an error")
	}
	if err := in.Add(&corev1.PersistentVolume{}); err == nil || !strings.Contains(err.Error(), "unsupported type") {
		t.Errorf("Add(*corev1.PersistentVolume) = %v; want an unsupported type error", err)
	}
}

// TestAuthorizationPolicyEnforcement follows Istio's "allow-read" example end
// to end: the translated policy, bound to the workload, decides connections
// with pkg/policy the way a node agent will.
func TestAuthorizationPolicyEnforcement(t *testing.T) {
	snap, _ := mustBuild(t, inputs(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow-sleep, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep"]}}]
    to: [{operation: {ports: ["8080"]}}]
  - from: [{source: {serviceAccounts: ["ops/admin"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: waypoint-only, namespace: foo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  rules: [{to: [{operation: {methods: [GET]}}]}]
`, pod("foo", "httpbin", "10.0.0.1", "n1", "app=httpbin")))
	w := workloadByName(t, snap, "foo", "httpbin")
	policies := snap.PoliciesFor(w)
	if len(policies) != 1 || policies[0].Name != "allow-sleep" {
		t.Fatalf("PoliciesFor(httpbin) = %v; want only allow-sleep (waypoint-only targets a waypoint)", policies)
	}
	tests := []struct {
		principal string
		port      uint32
		want      bool
	}{
		{"spiffe://cluster.local/ns/default/sa/sleep", 8080, true},
		{"spiffe://cluster.local/ns/default/sa/sleep", 9090, false},
		{"spiffe://cluster.local/ns/default/sa/other", 8080, false},
		{"spiffe://cluster.local/ns/ops/sa/admin", 9090, true},
	}
	for _, tt := range tests {
		d := policy.EvaluateL4(policies, &policy.Request{SourcePrincipal: tt.principal, DestinationIP: mustAddr("10.0.0.1"), DestinationPort: tt.port})
		if d.Allow != tt.want {
			t.Errorf("EvaluateL4(%s -> :%d) = %v (%s); want %v", tt.principal, tt.port, d.Allow, d.Reason, tt.want)
		}
	}
	wp, ok := snap.AuthorizationPolicy(model.NamespacedName{Namespace: "foo", Name: "waypoint-only"})
	if !ok || len(wp.Targets) != 1 || wp.Targets[0] != (model.PolicyTarget{Kind: "Gateway", Namespace: "foo", Name: "waypoint"}) {
		t.Errorf("waypoint-only = %+v; want it targeting Gateway foo/waypoint", wp)
	}
}

func TestDanglingReferenceWarnings(t *testing.T) {
	_, rej := mustBuild(t, inputs(t, service("foo", "web", "10.96.0.2", "app=web", ""),
		pod("foo", "web-v1", "10.0.0.2", "n1", "app=web,version=v1"), `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: vs, namespace: foo}
spec:
  hosts: [web]
  http:
  - route:
    - {destination: {host: web, subset: v1}, weight: 50}
    - {destination: {host: web, subset: v9}, weight: 25}
    - {destination: {host: nowhere}, weight: 25}
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: web, namespace: foo}
spec:
  host: web
  subsets: [{name: v1, labels: {version: v1}}, {name: v2, labels: {version: v2}}]
`))
	for _, want := range []string{
		`VirtualService foo/vs: destination web.foo.svc.cluster.local subset "v9" is not defined`,
		"VirtualService foo/vs: destination host nowhere.foo.svc.cluster.local matches no service",
		`DestinationRule foo/web: subset "v2" (labels map[version:v2]) selects no endpoint`,
	} {
		if !hasRejection(rej, want, true) {
			t.Errorf("rejections = %v; want a warning %q", rej, want)
		}
	}
	if hasRejection(rej, `subset "v1"`, true) {
		t.Errorf("rejections = %v; subset v1 is defined and selects web-v1", rej)
	}
}

func TestPeerAuthenticationConflictWarnings(t *testing.T) {
	_, rej := mustBuild(t, inputs(t, pod("foo", "web", "10.0.0.2", "n1", "app=web,tier=front"), `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: old, namespace: istio-system, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: new, namespace: istio-system, creationTimestamp: "2024-02-01T00:00:00Z"}
spec: {mtls: {mode: PERMISSIVE}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: by-app, namespace: foo, creationTimestamp: "2024-01-01T00:00:00Z"}
spec: {selector: {matchLabels: {app: web}}, mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: by-tier, namespace: foo, creationTimestamp: "2024-03-01T00:00:00Z"}
spec: {selector: {matchLabels: {tier: front}}, mtls: {mode: DISABLE}}
`))
	for _, want := range []string{
		"PeerAuthentication istio-system/new: conflicts with the older mesh-wide policy istio-system/old",
		"PeerAuthentication foo/by-tier: conflicts with the older workload policy foo/by-app",
	} {
		if !hasRejection(rej, want, true) {
			t.Errorf("rejections = %v; want a warning %q", rej, want)
		}
	}
	if hasRejection(rej, "istio-system/old: conflicts", true) || hasRejection(rej, "foo/by-app: conflicts", true) {
		t.Errorf("rejections = %v; the oldest policies must not be reported", rej)
	}
}

// TestServiceEntryAutoAllocation: a ServiceEntry with resolution DNS and no
// addresses gets a virtual IP in 240.240.0.0/16 (Istio's automatic
// allocation), the same one build after build, another entry another one;
// an address some entry claims is never handed out again; entries with
// addresses, another resolution, or several hosts and no endpoints get
// none (the last reported).
func TestServiceEntryAutoAllocation(t *testing.T) {
	se := func(name, host, extra string) string {
		return `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ` + name + `, namespace: foo}
spec:
  hosts: [` + host + `]
  ports: [{number: 443, name: tls, protocol: TLS}]
` + extra
	}
	vip := func(t *testing.T, snap *model.Snapshot, name string) netip.Addr {
		t.Helper()
		s, ok := snap.Service("se/foo/" + name)
		if !ok {
			t.Fatalf("no service for ServiceEntry foo/%s", name)
		}
		if len(s.VIPs) != 1 {
			return netip.Addr{}
		}
		return s.VIPs[0]
	}
	docs := []string{
		se("github", "api.github.com", "  resolution: DNS\n"),
		se("partner", "api.partner.example", "  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: edge.partner.example}]\n"),
		se("static", "static.partner.example", "  resolution: STATIC\n  endpoints: [{address: 192.0.2.7}]\n"),
		se("none", "none.partner.example", "  resolution: NONE\n"),
		se("fixed", "fixed.partner.example", "  resolution: DNS\n  addresses: [198.19.9.9]\n"),
		se("twohosts", "a.example.org, b.example.org", "  resolution: DNS\n"),
	}
	snap, rej := mustBuild(t, inputs(t, docs...))
	gh, partner := vip(t, snap, "github"), vip(t, snap, "partner")
	auto := netip.MustParsePrefix("240.240.0.0/16")
	if !auto.Contains(gh) || !auto.Contains(partner) || gh == partner {
		t.Errorf("allocated %v and %v; want two different addresses in %v", gh, partner, auto)
	}
	for name, want := range map[string]netip.Addr{"static": {}, "none": {}, "fixed": netip.MustParseAddr("198.19.9.9"), "twohosts": {}} {
		if got := vip(t, snap, name); got != want {
			t.Errorf("ServiceEntry %s: VIP %v; want %v", name, got, want)
		}
	}
	if !hasRejection(rej, "ServiceEntry foo/twohosts: no address is allocated to an entry with several hosts and no endpoints", true) {
		t.Errorf("rejections = %v; want a warning for the two-host entry", rej)
	}
	a, ok := snap.Lookup(gh)
	if !ok || a.Service == nil || a.Service.Hostname() != "api.github.com" {
		t.Errorf("Lookup(%v) = %+v; want the api.github.com entry", gh, a)
	}

	again, _ := mustBuild(t, inputs(t, docs...))
	if vip(t, again, "github") != gh || vip(t, again, "partner") != partner {
		t.Errorf("a second build allocated %v, %v; want the same %v, %v", vip(t, again, "github"), vip(t, again, "partner"), gh, partner)
	}
	// A newer entry claiming github's address explicitly: github moves on.
	claimed, _ := mustBuild(t, inputs(t, append(docs, se("claim", "claim.example.org", "  resolution: STATIC\n  addresses: ["+gh.String()+"]\n  endpoints: [{address: 192.0.2.8}]\n"))...))
	if got := vip(t, claimed, "github"); got == gh || !auto.Contains(got) || vip(t, claimed, "claim") != gh {
		t.Errorf("with %v claimed by another entry, github got %v; want another address in %v", gh, got, auto)
	}
}

// TestTrafficDistributionAndLocality: a workload's locality comes from its
// node's topology labels; a service's traffic distribution from Istio's
// annotation on it, else its spec.trafficDistribution, else the annotation
// on its namespace (ServiceEntries too); an unknown value is warned about
// and ignored.
func TestTrafficDistributionAndLocality(t *testing.T) {
	svc := func(name, annotations, spec string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: foo, annotations: {%s}}
spec: {clusterIP: 10.96.0.%d, ports: [{port: 80}]%s}
`, name, annotations, len(name), spec)
	}
	snap, rej := mustBuild(t, inputs(t, `apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {topology.kubernetes.io/region: west, topology.kubernetes.io/zone: west-a, topology.istio.io/subzone: rack1}}
`, `apiVersion: v1
kind: Namespace
metadata: {name: bar, annotations: {networking.istio.io/traffic-distribution: PreferSameNode}}
`, ns("foo", ""),
		pod("foo", "web", "10.0.0.7", "node-1", "app=web"),
		pod("foo", "elsewhere", "10.0.0.8", "node-unknown", "app=web"),
		svc("plain", "", ""),
		svc("spec", "", ", trafficDistribution: PreferClose"),
		svc("annotated", "networking.istio.io/traffic-distribution: PreferSameNode", ", trafficDistribution: PreferClose"),
		svc("bogus", "networking.istio.io/traffic-distribution: Nearest", ""),
		svc("local-only", "", ", internalTrafficPolicy: Local"),
		svc("cluster-wide", "", ", internalTrafficPolicy: Cluster"),
		`apiVersion: v1
kind: Service
metadata: {name: inherits, namespace: bar}
spec: {clusterIP: 10.96.1.1, ports: [{port: 80}]}
`, `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: foo, annotations: {networking.istio.io/traffic-distribution: PreferSameZone}}
spec: {hosts: [api.partner.example], ports: [{number: 443, name: tls, protocol: TLS}], resolution: DNS}
`))
	if w := workloadByName(t, snap, "foo", "web"); w.Locality != (model.Locality{Region: "west", Zone: "west-a", Subzone: "rack1"}) {
		t.Errorf("workload on node-1 has locality %+v; want west/west-a/rack1 from the node's labels", w.Locality)
	}
	if w := workloadByName(t, snap, "foo", "elsewhere"); w.Locality != (model.Locality{}) {
		t.Errorf("workload on an unknown node has locality %+v; want none", w.Locality)
	}
	for key, want := range map[string]model.TrafficDistribution{
		"foo/plain": "", "foo/spec": model.TrafficPreferClose, "foo/annotated": model.TrafficPreferSameNode,
		"foo/bogus": "", "bar/inherits": model.TrafficPreferSameNode, "se/foo/partner": model.TrafficPreferSameZone,
	} {
		if s, ok := snap.Service(key); !ok || s.TrafficDistribution != want {
			t.Errorf("service %s: traffic distribution %q (found %v); want %q", key, s.TrafficDistribution, ok, want)
		}
	}
	for key, want := range map[string]bool{"foo/local-only": true, "foo/cluster-wide": false, "foo/plain": false} {
		if s, ok := snap.Service(key); !ok || s.NodeLocal != want {
			t.Errorf("service %s: node-local %v (found %v); want %v (internalTrafficPolicy)", key, s.NodeLocal, ok, want)
		}
	}
	if !hasRejection(rej, `"Nearest"`, true) {
		t.Errorf("rejections = %v; want a warning naming foo/bogus's value", rej)
	}
	if hasRejection(rej, "label the nodes", true) {
		t.Errorf("rejections = %v; want no warning about unlabelled nodes (node-1 has a zone)", rej)
	}

	// A WorkloadEntry's own locality field (Istio's "region/zone/subzone").
	snap, _ = mustBuild(t, inputs(t, `apiVersion: networking.istio.io/v1
kind: WorkloadEntry
metadata: {name: vm-1, namespace: foo}
spec: {address: 10.1.0.5, locality: west/west-b}
`))
	if w := workloadByName(t, snap, "foo", "vm-1"); w.Locality != (model.Locality{Region: "west", Zone: "west-b"}) {
		t.Errorf("WorkloadEntry with locality west/west-b: %+v; want region west, zone west-b", w.Locality)
	}

	// Nodes without topology labels: PreferClose cannot prefer anything,
	// and the service is told so; with no node known (a file analysis),
	// nothing is said.
	unlabelled := `apiVersion: v1
kind: Node
metadata: {name: node-1}
`
	_, rej = mustBuild(t, inputs(t, unlabelled, svc("spec", "", ", trafficDistribution: PreferClose")))
	if !hasRejection(rej, "label the nodes", true) {
		t.Errorf("rejections = %v; want a warning that no node has a zone", rej)
	}
	_, rej = mustBuild(t, inputs(t, svc("spec", "", ", trafficDistribution: PreferClose")))
	if hasRejection(rej, "label the nodes", true) {
		t.Errorf("rejections without nodes = %v; want none about labels", rej)
	}
}
