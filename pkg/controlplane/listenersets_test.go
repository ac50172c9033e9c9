package controlplane

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// listenerSetCluster is a platform team's ingress Gateway in infra that
// admits ListenerSets from namespaces labelled gateway-access=yes, and
// the objects of three teams: team-a's set adds a host on the Gateway's
// port 80, an HTTPS host on 443 with its own Secret (no grant needed in
// its namespace) and a TCP listener on 80 that clashes with HTTP; team-b's
// newer set asks for team-a's host on 80 and for an HTTPS listener with a
// Secret of infra that only the Gateway is granted; outsider's namespace
// is not admitted.
func listenerSetCluster(t *testing.T, gatewayProgrammed bool) *Inputs {
	t.Helper()
	secret := func(ns, name, host string) string {
		cert, key := testutil.SelfSignedPEM(t, host)
		return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: %s, namespace: %s}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
`, name, ns, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key))
	}
	service := func(ns, name, ip string) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata: {name: %s, namespace: %s}
spec: {clusterIP: %s, selector: {app: %s}, ports: [{name: http, port: 80}]}
`, name, ns, ip, name)
	}
	status := ""
	if gatewayProgrammed {
		status = `status:
  conditions: [{type: Programmed, status: "True", reason: Programmed, message: ready, lastTransitionTime: "2026-01-01T00:00:00Z", observedGeneration: 1}]
`
	}
	return inputs(t, ns("infra", ""), ns("team-a", "gateway-access=yes"), ns("team-b", "gateway-access=yes"), ns("outsider", ""),
		secret("team-a", "a-cert", "a.example.com"), secret("infra", "infra-cert", "b.example.com"),
		service("infra", "shared", "10.96.0.70"), service("team-a", "a", "10.96.0.71"),
		pod("infra", "shared-1", "10.0.0.70", "n1", "app=shared"), pod("team-a", "a-1", "10.0.0.71", "n1", "app=a"),
		`apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: gateways-of-infra, namespace: infra}
spec:
  from: [{group: gateway.networking.k8s.io, kind: Gateway, namespace: team-b}]
  to: [{group: "", kind: Secret, name: infra-cert}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: infra, generation: 1}
spec:
  gatewayClassName: meshlet
  allowedListeners: {namespaces: {from: Selector, selector: {matchLabels: {gateway-access: "yes"}}}}
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: shared.example.com}
`+status+`---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: a-listeners, namespace: team-a, generation: 2, creationTimestamp: "2026-01-01T00:00:00Z"}
spec:
  parentRef: {name: edge, namespace: infra}
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: https, port: 443, protocol: HTTPS, hostname: a.example.com, tls: {certificateRefs: [{name: a-cert}]}}
  - {name: clash, port: 80, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: b-listeners, namespace: team-b, generation: 1, creationTimestamp: "2026-02-01T00:00:00Z"}
spec:
  parentRef: {name: edge, namespace: infra, kind: Gateway, group: gateway.networking.k8s.io}
  listeners:
  - {name: http, port: 80, protocol: HTTP, hostname: a.example.com}
  - {name: https, port: 8443, protocol: HTTPS, hostname: b.example.com, tls: {certificateRefs: [{name: infra-cert, namespace: infra}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: o, namespace: outsider, generation: 1}
spec:
  parentRef: {name: edge, namespace: infra}
  listeners: [{name: http, port: 9090, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: route-a, namespace: team-a}
spec:
  parentRefs: [{kind: ListenerSet, name: a-listeners}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: via-gateway, namespace: team-a}
spec:
  parentRefs: [{name: edge, namespace: infra, sectionName: https}]
  rules: [{backendRefs: [{name: a, port: 80}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: shared, namespace: infra}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: shared, port: 80}]}]
`)
}

// TestListenerSetsServed: what the gateway serves once ListenerSets attach.
// The set's listeners join the Gateway's: team-a's host on port 80 beside
// the Gateway's own, its HTTPS host on 443 with its own certificate; the
// Gateway's route stays on the Gateway's listener (a Gateway parentRef
// does not reach into sets), and nothing of team-b's conflicting or
// unresolved listeners, nor of the outsider's, is served.
func TestListenerSetsServed(t *testing.T) {
	snap, rej := mustBuild(t, listenerSetCluster(t, true))
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "infra", Name: "edge"})
	if !ok {
		t.Fatalf("no L7 config for infra/edge; rejections %v", rej)
	}
	got := map[uint32]map[string]string{} // port -> domains -> cluster
	for _, l := range cfg.Listeners {
		got[l.Port] = map[string]string{}
		for _, vh := range l.VirtualHosts {
			got[l.Port][strings.Join(vh.Domains, ",")] = vh.Routes[0].Destinations[0].Cluster
		}
	}
	want := map[uint32]map[string]string{
		80:  {"shared.example.com": "outbound|80||shared.infra.svc.cluster.local", "a.example.com": "outbound|80||a.team-a.svc.cluster.local"},
		443: {"a.example.com": "outbound|80||a.team-a.svc.cluster.local"},
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("served hosts (-want +got):\n%s", diff)
	}
	for _, l := range cfg.Listeners {
		if l.Port == 443 && (l.TLS == nil || !strings.Contains(l.TLS.CertPEM, "BEGIN CERTIFICATE") || l.TLS.SNIHosts[0] != "a.example.com") {
			t.Errorf("port 443 TLS %+v; want team-a's a-cert for a.example.com", l.TLS)
		}
	}
	for _, want := range []struct{ kind, name, substr string }{
		{KindListenerSet, "team-b/b-listeners", `listener "http": port 80, protocol HTTP and hostname a.example.com are already a listener of an older ListenerSet attached to Gateway infra/edge's`},
		{KindListenerSet, "team-b/b-listeners", `certificateRefs[0] Secret infra/infra-cert: no ReferenceGrant in infra lets ListenerSets of team-b refer to it`},
		{KindListenerSet, "outsider/o", "not attached to Gateway infra/edge: Gateway infra/edge does not admit ListenerSets of namespace outsider"},
		{KindListenerSet, "team-a/a-listeners", `listener "clash": port 80 already serves listener "http" of Gateway infra/edge over HTTP`},
	} {
		found := false
		for _, r := range rej {
			found = found || (r.Kind == want.kind && r.Namespace+"/"+r.Name == want.name && strings.Contains(r.Reason, want.substr))
		}
		if !found {
			t.Errorf("no rejection of %s %s containing %q in %v", want.kind, want.name, want.substr, rej)
		}
	}
	for _, r := range rej {
		if r.Namespace == "team-b" && (strings.Contains(r.Reason, "team-a") || strings.Contains(r.Reason, "a-listeners")) {
			t.Errorf("team-b is told of team-a's set: %v", r)
		}
	}
}

// TestListenerSetStatus: what `kubectl get listenerset -o yaml` and the
// Gateway's status show, and the routes' parents.
func TestListenerSetStatus(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(listenerSetCluster(t, true))
	type entry struct {
		Name       string
		Attached   int32
		Conditions []metav1.Condition
	}
	entries := func(st ObjectStatus) []entry {
		var out []entry
		for _, l := range st.Listeners {
			out = append(out, entry{string(l.Name), l.AttachedRoutes, l.Conditions})
		}
		return out
	}
	c := func(typ string, ok bool, reason string, gen int64) metav1.Condition {
		return condition(typ, ok, reason, "", gen)
	}
	served := func(name string, routes int32, gen int64) entry {
		return entry{name, routes, []metav1.Condition{c("Accepted", true, "Accepted", gen), c("Programmed", true, "Programmed", gen), c("ResolvedRefs", true, "ResolvedRefs", gen)}}
	}

	a := statusOf(t, b, KindListenerSet, "team-a", "a-listeners")
	if diff := cmp.Diff([]metav1.Condition{c("Accepted", true, "Accepted", 2), c("Programmed", true, "Programmed", 2)}, a.Conditions, ignoreMessages); diff != "" {
		t.Errorf("team-a/a-listeners conditions (-want +got):\n%s", diff)
	}
	wantA := []entry{served("http", 1, 2), served("https", 1, 2), {"clash", 0, []metav1.Condition{
		c("Accepted", false, "PortUnavailable", 2), c("Programmed", false, "PortUnavailable", 2), c("ResolvedRefs", true, "ResolvedRefs", 2), c("Conflicted", true, "ProtocolConflict", 2)}}}
	if diff := cmp.Diff(wantA, entries(a), ignoreMessages); diff != "" {
		t.Errorf("team-a/a-listeners listeners (-want +got):\n%s", diff)
	}

	bs := statusOf(t, b, KindListenerSet, "team-b", "b-listeners")
	if diff := cmp.Diff([]metav1.Condition{c("Accepted", false, "ListenersNotValid", 1), c("Programmed", false, "ListenersNotValid", 1)}, bs.Conditions, ignoreMessages); diff != "" {
		t.Errorf("team-b/b-listeners conditions (-want +got):\n%s", diff)
	}
	wantB := []entry{{"http", 0, []metav1.Condition{c("Accepted", false, "PortUnavailable", 1), c("Programmed", false, "PortUnavailable", 1), c("ResolvedRefs", true, "ResolvedRefs", 1), c("Conflicted", true, "HostnameConflict", 1)}},
		{"https", 0, []metav1.Condition{c("Accepted", true, "Accepted", 1), c("Programmed", false, "Invalid", 1), c("ResolvedRefs", false, "RefNotPermitted", 1)}}}
	if diff := cmp.Diff(wantB, entries(bs), ignoreMessages); diff != "" {
		t.Errorf("team-b/b-listeners listeners (-want +got):\n%s", diff)
	}

	o := statusOf(t, b, KindListenerSet, "outsider", "o")
	if diff := cmp.Diff([]metav1.Condition{c("Accepted", false, "NotAllowed", 1), c("Programmed", false, "NotAllowed", 1)}, o.Conditions, ignoreMessages); diff != "" || len(o.Listeners) != 0 {
		t.Errorf("outsider/o conditions (-want +got):\n%s; listeners %v, want none", diff, o.Listeners)
	}
	if msg := o.Conditions[0].Message; !strings.Contains(msg, "selector does not match this namespace's labels") {
		t.Errorf("outsider/o Accepted message %q; want the selector named", msg)
	}

	gw := statusOf(t, b, KindGateway, "infra", "edge")
	if gw.AttachedListenerSets == nil || *gw.AttachedListenerSets != 1 {
		t.Errorf("Gateway attachedListenerSets = %v; want 1 (team-a's; team-b's has no valid listener, outsider's is not admitted)", gw.AttachedListenerSets)
	}
	if diff := cmp.Diff([]entry{served("http", 1, 1)}, entries(gw), ignoreMessages); diff != "" {
		t.Errorf("Gateway listeners (-want +got): the sets' listeners are not the Gateway's\n%s", diff)
	}

	for _, want := range []struct {
		ns, name string
		ok       bool
		reason   string
		msg      string
	}{
		{"team-a", "route-a", true, "Accepted", `attached to ListenerSet team-a/a-listeners listener "http"`},
		{"team-a", "via-gateway", false, "NoMatchingParent", "Gateway infra/edge has no listener matching the parentRef's sectionName and port"},
		{"infra", "shared", true, "Accepted", `attached to Gateway infra/edge listener "http"`},
	} {
		rt := statusOf(t, b, KindHTTPRoute, want.ns, want.name)
		if len(rt.Parents) != 1 {
			t.Errorf("HTTPRoute %s/%s parents %+v; want one", want.ns, want.name, rt.Parents)
			continue
		}
		acc := meta.FindStatusCondition(rt.Parents[0].Conditions, "Accepted")
		if acc == nil || (acc.Status == metav1.ConditionTrue) != want.ok || acc.Reason != want.reason || !strings.Contains(acc.Message, want.msg) {
			t.Errorf("HTTPRoute %s/%s Accepted %+v; want %v %s %q", want.ns, want.name, acc, want.ok, want.reason, want.msg)
		}
	}
}

// TestListenerSetParentNotProgrammed: a set attached to a Gateway whose
// proxy is not ready yet is Accepted, not Programmed.
func TestListenerSetParentNotProgrammed(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(listenerSetCluster(t, false))
	a := statusOf(t, b, KindListenerSet, "team-a", "a-listeners")
	want := []metav1.Condition{condition("Accepted", true, "Accepted", "", 2), condition("Programmed", false, "ParentNotProgrammed", "", 2)}
	if diff := cmp.Diff(want, a.Conditions, ignoreMessages); diff != "" {
		t.Errorf("conditions (-want +got):\n%s", diff)
	}
}

// TestListenerSetNotAllowed: a Gateway admits no ListenerSet by default,
// and Same admits its own namespace's only; a waypoint takes none. Their
// listeners get no status (they are not the Gateway's).
func TestListenerSetNotAllowed(t *testing.T) {
	set := func(ns, gw string) string {
		return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: extra, namespace: %s, generation: 1}
spec:
  parentRef: {name: %s, namespace: infra}
  listeners: [{name: more, port: 8080, protocol: HTTP}]
`, ns, gw)
	}
	gateway := func(name, class, allowed string) string {
		return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: %s, namespace: infra}
spec:
  gatewayClassName: %s
%s  listeners: [{name: http, port: 80, protocol: HTTP}]
`, name, class, allowed)
	}
	for _, tt := range []struct {
		name, gw, setNS string
		reason          string
		msg             string
	}{
		{"default None", gateway("edge", "meshlet", ""), "infra", "NotAllowed", "from is None (the default)"},
		{"Same, other namespace", gateway("edge", "meshlet", "  allowedListeners: {namespaces: {from: Same}}\n"), "team-a", "NotAllowed", "from is Same (namespace infra only)"},
		{"waypoint", gateway("edge", "istio-waypoint", "  allowedListeners: {namespaces: {from: All}}\n"), "infra", "NotAllowed", "is a waypoint"},
		{"Same, own namespace", gateway("edge", "meshlet", "  allowedListeners: {namespaces: {from: Same}}\n"), "infra", "Accepted", ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(BuilderOptions{})
			b.Build(inputs(t, ns("infra", ""), ns("team-a", ""), tt.gw, set(tt.setNS, "edge")))
			st := statusOf(t, b, KindListenerSet, tt.setNS, "extra")
			acc := meta.FindStatusCondition(st.Conditions, "Accepted")
			if acc == nil || acc.Reason != tt.reason || !strings.Contains(acc.Message, tt.msg) {
				t.Errorf("Accepted %+v; want reason %s, message with %q", acc, tt.reason, tt.msg)
			}
			served := len(st.Listeners) == 1 && meta.IsStatusConditionTrue(st.Listeners[0].Conditions, "Accepted")
			if served != (tt.reason == "Accepted") {
				t.Errorf("listener on 8080 accepted = %v (%+v); want %v", served, st.Listeners, tt.reason == "Accepted")
			}
		})
	}
}

// TestListenerSetOfAnotherController: a set whose parent is a Gateway of
// another class, or a Gateway meshd cannot see, gets no status from meshd.
func TestListenerSetOfAnotherController(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: theirs, namespace: infra}
spec:
  gatewayClassName: envoy
  allowedListeners: {namespaces: {from: All}}
  listeners: [{name: http, port: 80, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: s1, namespace: infra}
spec:
  parentRef: {name: theirs}
  listeners: [{name: more, port: 8080, protocol: HTTP}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: s2, namespace: infra}
spec:
  parentRef: {name: unseen}
  listeners: [{name: more, port: 8080, protocol: HTTP}]
`))
	for _, st := range b.Status() {
		if st.Kind == KindListenerSet {
			t.Errorf("status for %s/%s: %+v; want none", st.Namespace, st.Name, st)
		}
	}
}
