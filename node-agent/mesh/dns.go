package mesh

import (
	"net/netip"
	"strings"

	"github.com/meshlet/meshlet/pkg/model"
)

// hostIndex is the name → addresses index of one snapshot.
type hostIndex struct {
	snap  *model.Snapshot
	hosts map[string][]netip.Addr
}

// LookupHost returns the virtual addresses the mesh has for a fully
// qualified name (any case, trailing dot or not): a Service's cluster IPs
// or a ServiceEntry's addresses. ok is false for names the mesh does not
// know (and for headless services, which the cluster DNS answers with
// their pods), so the DNS proxy forwards those.
func (m *Mesh) LookupHost(name string) (addrs []netip.Addr, ok bool) {
	s := m.snapshot()
	if s == nil {
		return nil, false
	}
	m.hostsMu.Lock()
	idx := m.hosts
	if idx == nil || idx.snap != s {
		idx = &hostIndex{snap: s, hosts: map[string][]netip.Addr{}}
		for _, svc := range s.Services() {
			if len(svc.VIPs) == 0 {
				continue
			}
			for _, h := range svc.Hostnames {
				h = strings.ToLower(strings.TrimSuffix(h, "."))
				if _, taken := idx.hosts[h]; !taken {
					idx.hosts[h] = svc.VIPs
				}
			}
		}
		m.hosts = idx
	}
	m.hostsMu.Unlock()
	addrs, ok = idx.hosts[strings.ToLower(strings.TrimSuffix(name, "."))]
	return addrs, ok
}
