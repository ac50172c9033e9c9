package model

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func testSnapshot(version uint64, mutate func(in *SnapshotInput)) *Snapshot {
	wp := &Waypoint{Name: "waypoint", Namespace: "foo", For: WaypointForService, Addresses: []netip.Addr{netip.MustParseAddr("10.96.0.50")}}
	ref := &WaypointRef{Waypoint: wp.Key(), Addresses: wp.Addresses, Source: "namespace"}
	in := SnapshotInput{
		Version: version,
		Workloads: []*Workload{
			{UID: "u2", Name: "b", Namespace: "foo", Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.2")}},
			{UID: "u1", Name: "a", Namespace: "foo", Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("10.0.0.1")}},
			{UID: "u3", Name: "c", Namespace: "bar", Node: "n2", IPs: []netip.Addr{netip.MustParseAddr("10.0.1.1"), netip.MustParseAddr("fd00::1")}},
		},
		Services: []*Service{
			{Name: "web", Namespace: "foo", Source: SourceKubernetes, Hostnames: []string{"web.foo.svc.cluster.local"},
				VIPs: []netip.Addr{netip.MustParseAddr("10.96.0.10")}, Waypoint: ref},
		},
		Waypoints: []*Waypoint{wp},
	}
	if mutate != nil {
		mutate(&in)
	}
	return NewSnapshot(in)
}

func TestSnapshotIndexes(t *testing.T) {
	s := testSnapshot(1, nil)
	tests := []struct {
		ip       string
		wantKind AddressKind
		wantKey  string
	}{
		{"10.0.0.1", AddressWorkload, "u1"},
		{"fd00::1", AddressWorkload, "u3"},
		{"::ffff:10.0.0.2", AddressWorkload, "u2"},
		{"10.96.0.10", AddressService, "foo/web"},
		{"10.9.9.9", 0, ""},
	}
	for _, tt := range tests {
		a, ok := s.Lookup(netip.MustParseAddr(tt.ip))
		var key string
		switch a.Kind {
		case AddressWorkload:
			key = a.Workload.UID
		case AddressService:
			key = a.Service.Key()
		}
		if a.Kind != tt.wantKind || key != tt.wantKey || ok != (tt.wantKind != 0) {
			t.Errorf("Lookup(%s) = %v %q %v; want %v %q", tt.ip, a.Kind, key, ok, tt.wantKind, tt.wantKey)
		}
	}
	var onN1 []string
	for _, w := range s.WorkloadsOnNode("n1") {
		onN1 = append(onN1, w.UID)
	}
	if diff := cmp.Diff([]string{"u1", "u2"}, onN1); diff != "" {
		t.Errorf("WorkloadsOnNode(n1) mismatch (-want +got):\n%s", diff)
	}
	if svc, ok := s.ServiceByHostname("web.foo.svc.cluster.local"); !ok || svc.Name != "web" {
		t.Errorf("ServiceByHostname(web.foo.svc.cluster.local) = %v, %v; want web", svc, ok)
	}
	b := s.WaypointBindings(NamespacedName{"foo", "waypoint"})
	if len(b.Services) != 1 || b.Services[0].Name != "web" || len(b.Workloads) != 0 {
		t.Errorf("WaypointBindings(foo/waypoint) = %+v; want service web only", b)
	}
	if s.TrustDomain() != "cluster.local" || s.RootNamespace() != "istio-system" {
		t.Errorf("defaults = %q %q; want cluster.local istio-system", s.TrustDomain(), s.RootNamespace())
	}
}

func TestSnapshotDiff(t *testing.T) {
	old := testSnapshot(1, nil)
	cur := testSnapshot(2, func(in *SnapshotInput) {
		in.Workloads[0].IPs = []netip.Addr{netip.MustParseAddr("10.0.0.99")}  // u2 changed
		in.Workloads = in.Workloads[:2]                                       // u3 removed
		in.Workloads = append(in.Workloads, &Workload{UID: "u4", Node: "n2"}) // u4 added
		in.Services = nil
	})
	want := Delta{
		WorkloadsChanged: []string{"u2", "u4"},
		WorkloadsRemoved: []string{"u3"},
		ServicesRemoved:  []string{"foo/web"},
	}
	if diff := cmp.Diff(want, cur.Diff(old)); diff != "" {
		t.Errorf("Diff mismatch (-want +got):\n%s", diff)
	}
	if d := testSnapshot(3, nil).Diff(old); !d.Empty() {
		t.Errorf("Diff of equal snapshots = %+v; want empty", d)
	}
	if d := old.Diff(nil); len(d.WorkloadsChanged) != 3 || len(d.ServicesChanged) != 1 || len(d.WaypointsChanged) != 1 {
		t.Errorf("Diff(nil) = %+v; want everything changed", d)
	}
}
