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
		got, ok := m.LookupHost("shop", tt.name)
		if ok != tt.ok || !slices.Equal(got, tt.want) {
			t.Errorf("LookupHost(%q) = %v, %v; want %v, %v", tt.name, got, ok, tt.want, tt.ok)
		}
	}
	cur.Store(model.NewSnapshot(model.SnapshotInput{Services: []*model.Service{
		{Name: "api", Namespace: "shop", Hostnames: []string{"api.partner.example"}, VIPs: []netip.Addr{ip("198.19.3.150")}},
		{Name: "headless", Namespace: "shop", Hostnames: []string{"headless.shop.svc.cluster.local"}},
	}}))
	if got, ok := m.LookupHost("shop", "api.partner.example"); !ok || !slices.Equal(got, []netip.Addr{ip("198.19.3.150")}) {
		t.Errorf("after a new snapshot: %v, %v; want the ServiceEntry address", got, ok)
	}
	if _, ok := m.LookupHost("shop", "db.shop.svc.cluster.local"); ok {
		t.Error("a service gone from the snapshot is still answered")
	}
	if _, ok := m.LookupHost("shop", "headless.shop.svc.cluster.local"); ok {
		t.Error("a headless service is answered by the mesh; the cluster DNS must answer it with its pods")
	}
}

// TestLookupHostExportTo: a name is answered only to pods of the namespaces
// its service is exported to; where two services claim a name, each
// namespace gets the one it sees.
func TestLookupHostExportTo(t *testing.T) {
	m := New(Options{Snapshot: func() *model.Snapshot {
		return model.NewSnapshot(model.SnapshotInput{Services: []*model.Service{
			{Name: "private", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"api.partner.example"},
				VIPs: []netip.Addr{ip("198.19.3.150")}, ExportTo: []string{"."}},
			{Name: "public", Namespace: "infra", Source: model.SourceServiceEntry, Hostnames: []string{"api.partner.example"},
				VIPs: []netip.Addr{ip("198.19.3.151")}, ExportTo: []string{"*"}},
			{Name: "hidden", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"hidden.example"},
				VIPs: []netip.Addr{ip("198.19.3.152")}, ExportTo: []string{"~"}},
			{Name: "ops", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"ops.example"},
				VIPs: []netip.Addr{ip("198.19.3.153")}, ExportTo: []string{"ops"}},
		}})
	}})
	tests := []struct {
		ns, name string
		want     []netip.Addr
	}{
		{"shop", "api.partner.example", []netip.Addr{ip("198.19.3.150")}},
		{"billing", "api.partner.example", []netip.Addr{ip("198.19.3.151")}},
		{"shop", "hidden.example", nil},
		{"ops", "ops.example", []netip.Addr{ip("198.19.3.153")}},
		{"shop", "ops.example", nil},
	}
	for _, tt := range tests {
		got, ok := m.LookupHost(tt.ns, tt.name)
		if ok != (tt.want != nil) || !slices.Equal(got, tt.want) {
			t.Errorf("LookupHost(%q, %q) = %v, %v; want %v", tt.ns, tt.name, got, ok, tt.want)
		}
	}
}
