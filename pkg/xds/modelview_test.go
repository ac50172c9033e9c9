package xds_test

import (
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/xds/modelview"
)

// TestModelRoundTrip: a node agent that rebuilds the model from what it was
// sent answers the data-path questions as meshd's own model does.
func TestModelRoundTrip(t *testing.T) {
	orig := testSnapshot(1, "198.18.0.10")
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	if err := ts.Apply(orig); err != nil {
		t.Fatal(err)
	}
	pki := ts.pki
	mustSet(t, ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: []string{pki.rootPEM}}))
	ts.MarkSynced()
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	got := modelview.Build(c, 1)

	if got.TrustDomain() != "cluster.local" {
		t.Errorf("TrustDomain() = %q; want cluster.local", got.TrustDomain())
	}
	for _, ip := range []string{"198.18.0.10", "198.18.0.20", "198.18.100.1"} {
		a, _ := orig.Lookup(netip.MustParseAddr(ip))
		b, ok := got.Lookup(netip.MustParseAddr(ip))
		if !ok || a.Kind != b.Kind {
			t.Errorf("Lookup(%s) kind = %v (found %v); want %v", ip, b.Kind, ok, a.Kind)
			continue
		}
		if a.Kind == model.AddressWorkload {
			if diff := cmp.Diff(a.Workload.Identity, b.Workload.Identity); diff != "" || a.Workload.Enrolled != b.Workload.Enrolled || a.Workload.Ready != b.Workload.Ready ||
				a.Workload.Locality != b.Workload.Locality {
				t.Errorf("Lookup(%s) workload = %+v; want identity/enrolled/ready/locality of %+v", ip, b.Workload, a.Workload)
			}
		} else if a.Service.TrafficDistribution != b.Service.TrafficDistribution || a.Service.NodeLocal != b.Service.NodeLocal ||
			a.Service.SessionAffinity != b.Service.SessionAffinity {
			t.Errorf("Lookup(%s) service traffic distribution = %q, node-local %v, affinity %v; want %q, %v, %v", ip,
				b.Service.TrafficDistribution, b.Service.NodeLocal, b.Service.SessionAffinity,
				a.Service.TrafficDistribution, a.Service.NodeLocal, a.Service.SessionAffinity)
		}
	}
	wp, ok := got.Waypoint(model.NamespacedName{Namespace: "ns1", Name: "waypoint"})
	want, _ := orig.Waypoint(model.NamespacedName{Namespace: "ns1", Name: "waypoint"})
	if !ok || wp.For != want.For || wp.Identity != want.Identity || !slices.Equal(wp.Addresses, want.Addresses) {
		t.Errorf("Waypoint(ns1/waypoint) = %+v; want %+v", wp, want)
	}
	if ext, ok := got.ServiceByHostname("api.example.com"); !ok || !ext.VisibleTo("ns2") || ext.VisibleTo("ns3") {
		t.Errorf("api.example.com = %+v; want exported to ns1 and ns2 only, as sent", ext)
	}
	web, _ := got.ServiceByHostname("web.ns1.svc.cluster.local")
	wantEP := []model.Endpoint{{WorkloadUID: "uid-a", Addresses: []netip.Addr{netip.MustParseAddr("198.18.0.10")}, Ports: map[uint32]uint32{80: 8080}, Ready: true}}
	if d := cmp.Diff(wantEP, web.Endpoints, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("web endpoints (-want +got):\n%s", d)
	}
	if web.LoadBalancing != model.LBRoundRobin || web.Waypoint == nil {
		t.Errorf("web = LB %q waypoint %v; want ROUND_ROBIN and ns1/waypoint", web.LoadBalancing, web.Waypoint)
	}
	w, ok := got.Workload("uid-a")
	if !ok {
		t.Fatal("no workload uid-a")
	}
	for _, port := range []uint32{80, 9090} {
		ow, _ := orig.Workload("uid-a")
		if g, w := w.PeerAuthentication.ModeFor(port), ow.PeerAuthentication.ModeFor(port); g != w {
			t.Errorf("uid-a ModeFor(%d) = %s; want %s", port, g, w)
		}
	}
	if want := []model.NamespacedName{{Namespace: "ns1", Name: "web-allow"}}; !slices.Equal(w.AuthorizationPolicies, want) {
		t.Errorf("uid-a policies = %v; want %v", w.AuthorizationPolicies, want)
	}
	policies := func(s *model.Snapshot) []*policy.Policy {
		var out []*policy.Policy
		ow, _ := s.Workload("uid-a")
		for _, n := range ow.AuthorizationPolicies {
			ap, _ := s.AuthorizationPolicy(n)
			out = append(out, ap.Policy)
		}
		return out
	}
	tests := []struct {
		ns   string
		want bool
	}{{"ns1", true}, {"ns2", false}}
	for _, tt := range tests {
		req := &policy.Request{SourceNamespace: tt.ns, SourcePrincipal: "cluster.local/ns/" + tt.ns + "/sa/x", DestinationPort: 8080}
		if g, o := policy.EvaluateL4(policies(got), req).Allow, policy.EvaluateL4(policies(orig), req).Allow; g != o || g != tt.want {
			t.Errorf("EvaluateL4 from %s: rebuilt %v, original %v; want %v", tt.ns, g, o, tt.want)
		}
	}
}
