package mesh

import (
	"net/netip"
	"slices"
	"sync/atomic"
	"testing"

	"github.com/meshlet/meshlet/pkg/model"
)

// TestLookupHost: names the DNS proxy answers come from the current
// snapshot, in any case and with or without the trailing dot; unknown names
// and headless services are left to the cluster DNS; a new snapshot is
// seen at once.
func TestLookupHost(t *testing.T) {
	var cur atomic.Pointer[model.Snapshot]
	cur.Store(testSnapshot())
	m := New(Options{Snapshot: cur.Load})
	tests := []struct {
		name string
		want []netip.Addr
		ok   bool
	}{
		{"db.shop.svc.cluster.local", []netip.Addr{ip("198.19.3.100")}, true},
		{"DB.Shop.svc.cluster.local.", []netip.Addr{ip("198.19.3.100")}, true},
		{"db.shop", nil, false}, // short names are the client's search path's job
		{"nothing.example", nil, false},
	}
	for _, tt := range tests {
		got, ok := m.LookupHost(tt.name)
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("LookupHost(%q) = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
	cur.Store(model.NewSnapshot(model.SnapshotInput{Services: []*model.Service{
		{Name: "api", Namespace: "shop", Hostnames: []string{"api.partner.example"}, VIPs: []netip.Addr{ip("198.19.3.150")}},
		{Name: "headless", Namespace: "shop", Hostnames: []string{"headless.shop.svc.cluster.local"}},
	}}))
	if got, ok := m.LookupHost("api.partner.example"); !ok || !slices.Equal(got, []netip.Addr{ip("198.19.3.150")}) {
		t.Errorf("after a new snapshot: %v, %v; want the ServiceEntry address", got, ok)
	}
	if _, ok := m.LookupHost("db.shop.svc.cluster.local"); ok {
		t.Error("a service gone from the snapshot is still answered")
	}
	if _, ok := m.LookupHost("headless.shop.svc.cluster.local"); ok {
		t.Error("a headless service is answered by the mesh; the cluster DNS must answer it with its pods")
	}
}
