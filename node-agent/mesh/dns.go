package mesh

import (
	"net/netip"
	"strings"

	"github.com/meshlet/meshlet/pkg/model"
)

// hostIndex is the name → services index of one snapshot.
type hostIndex struct {
	snap  *model.Snapshot
	hosts map[string][]*model.Service // by lower-case name, in snapshot order
}

// LookupHost returns the virtual addresses the mesh has for a fully
// qualified name (any case, trailing dot or not) asked by a pod of
// namespace ns: a Service's cluster IPs or a ServiceEntry's addresses,
// exported to ns. ok is false for names the mesh does not know or does not
// export to ns (and for headless services, which the cluster DNS answers
// with their pods), so the DNS proxy forwards those.
func (m *Mesh) LookupHost(ns, name string) (addrs []netip.Addr, ok bool) {
	s := m.snapshot()
	if s == nil {
		return nil, false
	}
	m.hostsMu.Lock()
	idx := m.hosts
	if idx == nil || idx.snap != s {
		idx = &hostIndex{snap: s, hosts: map[string][]*model.Service{}}
		for _, svc := range s.Services() {
			if len(svc.VIPs) == 0 {
				continue
			}
			for _, h := range svc.Hostnames {
				h = strings.ToLower(strings.TrimSuffix(h, "."))
				idx.hosts[h] = append(idx.hosts[h], svc)
			}
		}
		m.hosts = idx
	}
	m.hostsMu.Unlock()
	// Of the services exported to ns that claim the name, the one of ns
	// itself wins, as in Istio; else the first in the snapshot's order.
	var first *model.Service
	for _, svc := range idx.hosts[strings.ToLower(strings.TrimSuffix(name, "."))] {
		switch {
		case !svc.VisibleTo(ns):
		case svc.Namespace == ns:
			return svc.VIPs, true
		case first == nil:
			first = svc
		}
	}
	if first == nil {
		return nil, false
	}
	return first.VIPs, true
}
