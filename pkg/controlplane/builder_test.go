package controlplane

import (
	"fmt"
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// ns renders a Namespace with labels ("k=v,k=v").
func ns(name, labels string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: %s\n  labels: {%s}\n", name, yamlLabels(labels))
}

// pod renders a running, ready pod.
func pod(namespace, name, ip, node, labels string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata:
  name: %[2]s
  namespace: %[1]s
  uid: uid-%[1]s-%[2]s
  labels: {%[5]s}
spec:
  nodeName: %[4]s
  serviceAccountName: sa-%[2]s
  containers:
  - name: app
    ports:
    - name: http-web
      containerPort: 8080
status:
  phase: Running
  podIP: %[3]s
  podIPs: [{ip: %[3]s}]
  conditions: [{type: Ready, status: "True"}]
`, namespace, name, ip, node, yamlLabels(labels))
}

func service(namespace, name, vip, selector, labels string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Service
metadata:
  name: %[2]s
  namespace: %[1]s
  labels: {%[5]s}
spec:
  clusterIP: %[3]s
  selector: {%[4]s}
  ports:
  - name: http
    port: 80
    targetPort: http-web
  - name: grpc-api
    port: 9090
`, namespace, name, vip, yamlLabels(selector), yamlLabels(labels))
}

func waypoint(namespace, name, addr, waypointFor string) string {
	lbl := ""
	if waypointFor != "" {
		lbl = "istio.io/waypoint-for=" + waypointFor
	}
	return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata:
  name: %[2]s
  namespace: %[1]s
  labels: {%[4]s}
spec:
  gatewayClassName: istio-waypoint
  listeners:
  - name: mesh
    port: 15008
    protocol: HBONE
status:
  addresses:
  - type: IPAddress
    value: %[3]s
`, namespace, name, addr, yamlLabels(lbl))
}

func yamlLabels(s string) string {
	if s == "" {
		return ""
	}
	var parts []string
	for _, kv := range strings.Split(s, ",") {
		k, v, _ := strings.Cut(kv, "=")
		parts = append(parts, fmt.Sprintf("%q: %q", k, v))
	}
	return strings.Join(parts, ", ")
}

func mustBuild(t *testing.T, in *Inputs) (*model.Snapshot, []Rejection) {
	t.Helper()
	snap, rej := NewBuilder(BuilderOptions{}).Build(in)
	return snap, rej
}

func workloadByName(t *testing.T, s *model.Snapshot, namespace, name string) *model.Workload {
	t.Helper()
	for _, w := range s.Workloads() {
		if w.Namespace == namespace && w.Name == name {
			return w
		}
	}
	t.Fatalf("no workload %s/%s in snapshot", namespace, name)
	return nil
}

func TestEnrollment(t *testing.T) {
	tests := []struct {
		name     string
		nsLabels string
		pod      string
		want     bool
		reason   string
	}{
		{"namespace ambient", "istio.io/dataplane-mode=ambient", pod("app", "a", "10.0.0.1", "n1", ""), true, "namespace label"},
		{"pod ambient", "", pod("app", "a", "10.0.0.1", "n1", "istio.io/dataplane-mode=ambient"), true, "pod label"},
		{"pod opts out", "istio.io/dataplane-mode=ambient", pod("app", "a", "10.0.0.1", "n1", "istio.io/dataplane-mode=none"), false, "=none"},
		{"no labels", "", pod("app", "a", "10.0.0.1", "n1", ""), false, "neither pod nor namespace"},
		{"host network never", "istio.io/dataplane-mode=ambient",
			strings.Replace(pod("app", "a", "10.0.0.1", "n1", "istio.io/dataplane-mode=ambient"), "spec:\n", "spec:\n  hostNetwork: true\n", 1), false, "host network"},
		{"sidecar pods are left to the sidecar", "istio.io/dataplane-mode=ambient",
			strings.Replace(pod("app", "a", "10.0.0.1", "n1", ""), "  - name: app\n", "  - name: istio-proxy\n  - name: app\n", 1), false, "sidecar"},
		{"finished pod", "istio.io/dataplane-mode=ambient",
			strings.Replace(pod("app", "a", "10.0.0.1", "n1", ""), "phase: Running", "phase: Succeeded", 1), false, "finished"},
		{"unknown pod mode", "", pod("app", "a", "10.0.0.1", "n1", "istio.io/dataplane-mode=sidecar"), false, "not a known mode"},
		{"redirection disabled by annotation (Istio's opt-out)", "istio.io/dataplane-mode=ambient",
			strings.Replace(pod("app", "a", "10.0.0.1", "n1", ""), "  labels:", "  annotations: {ambient.istio.io/redirection: disabled}\n  labels:", 1), false, "ambient.istio.io/redirection=disabled"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, _ := mustBuild(t, inputs(t, ns("app", tt.nsLabels), tt.pod))
			w := workloadByName(t, snap, "app", "a")
			if w.Enrolled != tt.want || !strings.Contains(w.EnrollReason, tt.reason) {
				t.Errorf("Enrolled = %v (%q); want %v (reason containing %q)", w.Enrolled, w.EnrollReason, tt.want, tt.reason)
			}
		})
	}
}

func TestWorkloadFields(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t,
		ns("shop", "istio.io/dataplane-mode=ambient"),
		pod("shop", "reviews-v2", "10.0.0.7", "node-1", "app=reviews,version=v2"),
		pod("shop", "other", "10.0.0.8", "node-2", "service.istio.io/canonical-name=canon,app=x"),
		// A Deployment's pod with no app label: named by its Deployment.
		strings.Replace(pod("shop", "web-7d9f8c-x2x4q", "10.0.0.9", "node-2", "pod-template-hash=7d9f8c"), "  labels:",
			"  ownerReferences: [{apiVersion: apps/v1, kind: ReplicaSet, name: web-7d9f8c, uid: rs-1, controller: true}]\n  labels:", 1),
		service("shop", "reviews", "10.96.0.7", "app=reviews", ""),
	))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	w := workloadByName(t, snap, "shop", "reviews-v2")
	want := &model.Workload{
		UID: "uid-shop-reviews-v2", Kind: model.KindPod, Name: "reviews-v2", Namespace: "shop",
		IPs: []netip.Addr{netip.MustParseAddr("10.0.0.7")}, Node: "node-1", ServiceAccount: "sa-reviews-v2",
		Identity:      "spiffe://cluster.local/ns/shop/sa/sa-reviews-v2",
		Labels:        map[string]string{"app": "reviews", "version": "v2"},
		CanonicalName: "reviews", CanonicalRevision: "v2", WorkloadName: "reviews-v2",
		Enrolled: true, EnrollReason: "namespace label istio.io/dataplane-mode=ambient",
		Services: []model.ServiceBinding{{
			Service:  model.NamespacedName{Namespace: "shop", Name: "reviews"},
			Hostname: "reviews.shop.svc.cluster.local",
			// http targets the named container port http-web=8080; grpc-api has no targetPort so it is 9090.
			Ports: map[uint32]uint32{80: 8080, 9090: 9090},
		}},
		PeerAuthentication: model.PeerAuthResult{Mode: model.MTLSPermissive},
		Ready:              true,
	}
	if diff := cmp.Diff(want, w, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("workload mismatch (-want +got):\n%s", diff)
	}
	if o := workloadByName(t, snap, "shop", "other"); o.CanonicalName != "canon" || o.CanonicalRevision != "latest" {
		t.Errorf("canonical = %q/%q; want canon/latest", o.CanonicalName, o.CanonicalRevision)
	}
	if d := workloadByName(t, snap, "shop", "web-7d9f8c-x2x4q"); d.WorkloadName != "web" || d.CanonicalName != "web" {
		t.Errorf("a Deployment's pod: workload %q, canonical name %q; want web and web (Istio's canonical name falls back to the workload's)", d.WorkloadName, d.CanonicalName)
	}

	// The indexes a node agent needs.
	if a, ok := snap.Lookup(netip.MustParseAddr("10.96.0.7")); !ok || a.Kind != model.AddressService || a.Service.Name != "reviews" {
		t.Errorf("Lookup(10.96.0.7) = %+v, %v; want service reviews", a, ok)
	}
	if a, ok := snap.Lookup(netip.MustParseAddr("10.0.0.8")); !ok || a.Kind != model.AddressWorkload || a.Workload.Name != "other" {
		t.Errorf("Lookup(10.0.0.8) = %+v, %v; want workload other", a, ok)
	}
	if ws := snap.WorkloadsOnNode("node-1"); len(ws) != 1 || ws[0].Name != "reviews-v2" {
		t.Errorf("WorkloadsOnNode(node-1) = %v; want [reviews-v2]", ws)
	}
	svc, ok := snap.ServiceByHostname("reviews.shop.svc.cluster.local")
	if !ok {
		t.Fatal("ServiceByHostname(reviews.shop.svc.cluster.local) not found")
	}
	wantPorts := []model.ServicePort{
		{Name: "http", Port: 80, Protocol: "TCP", AppProtocol: "HTTP", TargetPortName: "http-web"},
		{Name: "grpc-api", Port: 9090, Protocol: "TCP", AppProtocol: "GRPC", TargetPort: 9090},
	}
	if diff := cmp.Diff(wantPorts, svc.Ports); diff != "" {
		t.Errorf("service ports mismatch (-want +got):\n%s", diff)
	}
	if len(svc.Endpoints) != 1 || svc.Endpoints[0].WorkloadUID != "uid-shop-reviews-v2" || !svc.Endpoints[0].Ready {
		t.Errorf("endpoints = %+v; want the one ready reviews-v2 pod", svc.Endpoints)
	}
}

func TestSelectorlessServiceUsesEndpointSlices(t *testing.T) {
	snap, _ := mustBuild(t, inputs(t, `apiVersion: v1
kind: Service
metadata: {name: db, namespace: data}
spec:
  clusterIP: 10.96.1.1
  ports: [{name: pg, port: 5432}]
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata:
  name: db-abc
  namespace: data
  labels: {kubernetes.io/service-name: db}
addressType: IPv4
ports: [{name: pg, port: 15432}]
endpoints:
- addresses: [192.168.5.5]
  conditions: {ready: true}
- addresses: [192.168.5.6]
  conditions: {ready: false}
- addresses: [192.168.5.7]
  conditions: {ready: false, serving: true, terminating: true}
`))
	svc, _ := snap.Service("data/db")
	// A terminating endpoint still serving is Draining (for sessions).
	want := []model.Endpoint{
		{Addresses: []netip.Addr{netip.MustParseAddr("192.168.5.5")}, Ports: map[uint32]uint32{5432: 15432}, Ready: true},
		{Addresses: []netip.Addr{netip.MustParseAddr("192.168.5.6")}, Ports: map[uint32]uint32{5432: 15432}, Ready: false},
		{Addresses: []netip.Addr{netip.MustParseAddr("192.168.5.7")}, Ports: map[uint32]uint32{5432: 15432}, Ready: false, Draining: true},
	}
	if diff := cmp.Diff(want, svc.Endpoints, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("endpoints mismatch (-want +got):\n%s", diff)
	}
}

func TestWaypointBinding(t *testing.T) {
	tests := []struct {
		name        string
		nsLabels    string
		podLabels   string
		svcLabels   string
		waypointFor string
		wantPod     string // waypoint name bound to the workload, "" none
		wantSvc     string
		wantWarn    string
	}{
		// Istio: "istio.io/use-waypoint" on a namespace applies to its services
		// (waypoint-for defaults to service), not to workload-addressed traffic.
		{name: "namespace label, default service waypoint", nsLabels: "istio.io/use-waypoint=wp", wantSvc: "wp"},
		{name: "namespace label, workload waypoint", nsLabels: "istio.io/use-waypoint=wp", waypointFor: "workload", wantPod: "wp"},
		{name: "namespace label, all", nsLabels: "istio.io/use-waypoint=wp", waypointFor: "all", wantPod: "wp", wantSvc: "wp"},
		{name: "waypoint-for none binds nothing", nsLabels: "istio.io/use-waypoint=wp", waypointFor: "none"},
		// Pod and service labels override the namespace label.
		{name: "pod opts out with none", nsLabels: "istio.io/use-waypoint=wp", podLabels: "istio.io/use-waypoint=none", waypointFor: "all", wantSvc: "wp"},
		{name: "service opts out with none", nsLabels: "istio.io/use-waypoint=wp", svcLabels: "istio.io/use-waypoint=none", waypointFor: "all", wantPod: "wp"},
		{name: "service label", svcLabels: "istio.io/use-waypoint=wp", wantSvc: "wp"},
		{name: "pod label on a service-only waypoint is ignored", podLabels: "istio.io/use-waypoint=wp", wantWarn: "waypoint app/wp has istio.io/waypoint-for=service"},
		{name: "pod label, workload waypoint", podLabels: "istio.io/use-waypoint=wp", waypointFor: "workload", wantPod: "wp"},
		{name: "pod label names a missing waypoint", podLabels: "istio.io/use-waypoint=nope", waypointFor: "all", wantWarn: "no waypoint Gateway app/nope"},
		// Another namespace's waypoint: only if its HBONE listener allows
		// routes from this namespace (Istio; the default is Same).
		{name: "cross-namespace waypoint allowing all", svcLabels: "istio.io/use-waypoint=shared,istio.io/use-waypoint-namespace=infra", wantSvc: "shared"},
		{name: "cross-namespace waypoint allowing its namespace only", svcLabels: "istio.io/use-waypoint=private,istio.io/use-waypoint-namespace=infra",
			wantWarn: "waypoint infra/private does not accept namespace app"},
		{name: "namespace label, cross-namespace waypoint allowing its namespace only", nsLabels: "istio.io/use-waypoint=private,istio.io/use-waypoint-namespace=infra",
			wantWarn: "waypoint infra/private does not accept namespace app"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t,
				ns("app", tt.nsLabels), ns("infra", ""),
				waypoint("app", "wp", "10.96.9.9", tt.waypointFor),
				strings.Replace(waypoint("infra", "shared", "10.96.9.10", ""), "protocol: HBONE", "protocol: HBONE\n    allowedRoutes: {namespaces: {from: All}}", 1),
				waypoint("infra", "private", "10.96.9.11", ""),
				pod("app", "web", "10.0.0.1", "n1", "app=web,"+tt.podLabels),
				service("app", "web", "10.96.0.1", "app=web", tt.svcLabels),
			))
			w := workloadByName(t, snap, "app", "web")
			svc, _ := snap.Service("app/web")
			name := func(r *model.WaypointRef) string {
				if r == nil {
					return ""
				}
				return r.Waypoint.Name
			}
			if name(w.Waypoint) != tt.wantPod || name(svc.Waypoint) != tt.wantSvc {
				t.Errorf("waypoints: workload %q, service %q; want %q, %q", name(w.Waypoint), name(svc.Waypoint), tt.wantPod, tt.wantSvc)
			}
			if tt.wantWarn != "" && !hasRejection(rej, tt.wantWarn, true) {
				t.Errorf("rejections = %v; want a warning containing %q", rej, tt.wantWarn)
			}
			if tt.wantSvc == "wp" && svc.Waypoint.Addresses[0] != netip.MustParseAddr("10.96.9.9") {
				t.Errorf("waypoint address = %v; want 10.96.9.9", svc.Waypoint.Addresses)
			}
		})
	}
}

func hasRejection(rej []Rejection, substr string, warning bool) bool {
	for _, r := range rej {
		if strings.Contains(r.String(), substr) && r.Warning == warning {
			return true
		}
	}
	return false
}

func TestWaypointBindingsIndex(t *testing.T) {
	snap, _ := mustBuild(t, inputs(t,
		ns("app", "istio.io/use-waypoint=wp"),
		waypoint("app", "wp", "10.96.9.9", "all"),
		pod("app", "web", "10.0.0.1", "n1", "app=web"),
		service("app", "web", "10.96.0.1", "app=web", ""),
		// The waypoint's own pod and service must not be bound to itself.
		pod("app", "wp-pod", "10.0.0.9", "n1", "gateway.networking.k8s.io/gateway-name=wp"),
		service("app", "wp", "10.96.9.9", "gateway.networking.k8s.io/gateway-name=wp", "gateway.networking.k8s.io/gateway-name=wp"),
	))
	b := snap.WaypointBindings(model.NamespacedName{Namespace: "app", Name: "wp"})
	var got []string
	for _, s := range b.Services {
		got = append(got, "svc:"+s.Name)
	}
	for _, w := range b.Workloads {
		got = append(got, "wl:"+w.Name)
	}
	if diff := cmp.Diff([]string{"svc:web", "wl:web"}, got); diff != "" {
		t.Errorf("WaypointBindings(app/wp) mismatch (-want +got):\n%s", diff)
	}
}

func mustAddr(s string) netip.Addr { return netip.MustParseAddr(s) }

func TestSelectorIndex(t *testing.T) {
	mk := func(name string, sel map[string]string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "ns"}, Spec: corev1.ServiceSpec{Selector: sel}}
	}
	idx := &selectorIndex{byPair: map[string][]*corev1.Service{}}
	for _, s := range []*corev1.Service{
		mk("a", map[string]string{"app": "a"}),
		mk("a-v1", map[string]string{"app": "a", "version": "v1"}),
		mk("tier", map[string]string{"tier": "x"}),
		mk("none", nil),
	} {
		idx.add(s)
	}
	tests := []struct {
		labels map[string]string
		want   []string
	}{
		{map[string]string{"app": "a", "version": "v2"}, []string{"a"}},
		{map[string]string{"app": "a", "version": "v1", "tier": "x"}, []string{"a", "a-v1", "tier"}},
		{map[string]string{"version": "v1"}, nil},
		{nil, nil},
	}
	for _, tt := range tests {
		var got []string
		for _, s := range idx.matching(tt.labels) {
			got = append(got, s.Name)
		}
		if diff := cmp.Diff(tt.want, got); diff != "" {
			t.Errorf("matching(%v) mismatch (-want +got):\n%s", tt.labels, diff)
		}
	}
}

func TestBuildEmpty(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	for _, in := range []*Inputs{nil, {}} {
		snap, rej := b.Build(in)
		if snap == nil || len(snap.Workloads()) != 0 || len(rej) != 0 {
			t.Errorf("Build(%v) = %v, %v; want an empty snapshot and no rejections", in, snap, rej)
		}
	}
}
