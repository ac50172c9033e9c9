package controlplane

import (
	"net/netip"
)

// This file records the addresses the build allocated automatically to
// ServiceEntries (allocateServiceEntryVIPs), for cmd/meshd to write in
// their status.addresses, the field where Istio (1.23+, ambient) shows its
// own automatic allocation: `kubectl get serviceentry -o yaml` then says
// which address the mesh's DNS proxy answers a host with.
//
// Decisions:
//   - An entry gets one status entry per host and allocated address, hosts
//     in spec.hosts order. meshlet gives an entry one address for all its
//     hosts (an entry with several hosts gets one only when it has
//     endpoints), so every host of it lists the same value; that is what
//     the DNS proxy answers for each.
//   - Only IPv4 is allocated. Istio also allocates from 2001:2::/48, but
//     the node agent steers a connection to a ServiceEntry's VIP only to
//     endpoints of the VIP's family (mesh.pickEndpoint): a DNS entry for a
//     host that resolves to IPv4 alone, the common case, would leave a
//     connection to its IPv6 VIP nowhere to go, and an AAAA answer nothing
//     serves breaks clients that prefer IPv6.
//   - status.addresses has no field naming its writer, so the entries
//     whose value lies in the automatic range (IsAutoAllocated) are the
//     allocator's, and meshd replaces them; any other entry is left as it
//     is. Istio's allocator writes the same range into the same field: a
//     cluster running both has two writers of it and the last one wins
//     (meshd's DNS proxy answers meshd's address whatever the status says,
//     as meshd never reads status.addresses back: the allocation is a
//     function of the ServiceEntries alone).

// ServiceEntryAddresses is the status.addresses meshd computed for one
// ServiceEntry: only the automatically allocated ones.
type ServiceEntryAddresses struct {
	Namespace, Name string
	// Generation is the entry's metadata.generation the addresses were
	// computed for.
	Generation int64
	// Addresses are one per host and address, in spec.hosts order. Empty
	// when the entry got none (it has spec.addresses, another resolution,
	// or was rejected): any address meshd wrote before is to be removed.
	Addresses []HostAddress
}

// HostAddress is one entry of status.addresses: Host answers to Value.
type HostAddress struct {
	Host  string
	Value netip.Addr
}

// IsAutoAllocated reports whether a is in the range automatic allocation
// draws from (Istio's and meshlet's alike), i.e. whether a status.addresses
// entry with that value belongs to the allocator.
func IsAutoAllocated(a netip.Addr) bool { return autoVIPs.Contains(a.Unmap()) }

// ServiceEntryStatus returns the addresses the last Build allocated: one
// entry per ServiceEntry of its inputs, sorted by namespace and name. The
// caller must not modify it.
func (b *Builder) ServiceEntryStatus() []ServiceEntryAddresses { return b.seStatus }

func (bd *build) serviceEntryStatus() []ServiceEntryAddresses {
	out := make([]ServiceEntryAddresses, 0, len(bd.in.serviceEnts))
	for _, k := range sortedKeys(bd.in.serviceEnts) {
		c := bd.in.serviceEnts[k]
		st := ServiceEntryAddresses{Namespace: c.meta.Namespace, Name: c.meta.Name, Generation: c.meta.Generation}
		if ms := bd.autoAllocated[k]; ms != nil {
			for _, h := range ms.Hostnames {
				for _, v := range ms.VIPs {
					st.Addresses = append(st.Addresses, HostAddress{Host: h, Value: v})
				}
			}
		}
		out = append(out, st)
	}
	return out
}
