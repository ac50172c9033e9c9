package controlplane

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

// seDoc is a ServiceEntry of namespace foo with one TLS port; extra is the
// rest of its spec, indented.
func seDoc(name, hosts, extra string) string {
	return `apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: ` + name + `, namespace: foo, generation: 3}
spec:
  hosts: [` + hosts + `]
  ports: [{number: 443, name: tls, protocol: TLS}]
` + extra
}

// seAddresses returns the recorded addresses of foo/name, failing when the
// build recorded no entry for it.
func seAddresses(t *testing.T, b *Builder, name string) ServiceEntryAddresses {
	t.Helper()
	for _, st := range b.ServiceEntryStatus() {
		if st.Namespace == "foo" && st.Name == name {
			return st
		}
	}
	t.Fatalf("ServiceEntryStatus() = %+v; want an entry for foo/%s", b.ServiceEntryStatus(), name)
	return ServiceEntryAddresses{}
}

// TestServiceEntryStatusAddresses: every ServiceEntry gets an entry; one
// that got an automatic address lists it for each of its hosts, in
// spec.hosts order, the address the snapshot serves; any other lists none
// (so meshd clears what it wrote before).
func TestServiceEntryStatusAddresses(t *testing.T) {
	tests := []struct {
		name  string
		docs  []string
		entry string
		hosts []string // each listed with the entry's VIP; nil: no addresses
	}{
		{"one host, resolution DNS",
			[]string{seDoc("github", "api.github.com", "  resolution: DNS\n")},
			"github", []string{"api.github.com"}},
		{"DNS_ROUND_ROBIN with a hostname endpoint",
			[]string{seDoc("partner", "api.partner.example", "  resolution: DNS_ROUND_ROBIN\n  endpoints: [{address: edge.partner.example}]\n")},
			"partner", []string{"api.partner.example"}},
		{"several hosts with endpoints: one address, listed for each host in spec order",
			[]string{seDoc("multi", "b.example.org, a.example.org", "  resolution: DNS\n  endpoints: [{address: edge.example.org}]\n")},
			"multi", []string{"b.example.org", "a.example.org"}},
		{"several hosts without endpoints get none",
			[]string{seDoc("twohosts", "a.example.org, b.example.org", "  resolution: DNS\n")},
			"twohosts", nil},
		{"spec.addresses set",
			[]string{seDoc("fixed", "fixed.example.org", "  resolution: DNS\n  addresses: [198.19.9.9]\n")},
			"fixed", nil},
		{"resolution STATIC",
			[]string{seDoc("static", "static.example.org", "  resolution: STATIC\n  endpoints: [{address: 192.0.2.7}]\n")},
			"static", nil},
		{"resolution NONE",
			[]string{seDoc("none", "none.example.org", "  resolution: NONE\n")},
			"none", nil},
		{"rejected as a duplicate host (newer entry)",
			[]string{
				seDoc("older", "dup.example.org", "  resolution: DNS\n"),
				strings.Replace(seDoc("newer", "dup.example.org", "  resolution: DNS\n"), "generation: 3", "generation: 3, creationTimestamp: '2030-01-01T00:00:00Z'", 1),
			},
			"newer", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := NewBuilder(BuilderOptions{})
			snap, _ := b.Build(inputs(t, tt.docs...))
			got := seAddresses(t, b, tt.entry)
			want := ServiceEntryAddresses{Namespace: "foo", Name: tt.entry, Generation: 3}
			if tt.hosts != nil {
				svc, ok := snap.Service("se/foo/" + tt.entry)
				if !ok || len(svc.VIPs) != 1 || !IsAutoAllocated(svc.VIPs[0]) {
					t.Fatalf("snapshot service of foo/%s = %+v; want one automatic VIP", tt.entry, svc)
				}
				for _, h := range tt.hosts {
					want.Addresses = append(want.Addresses, HostAddress{Host: h, Value: svc.VIPs[0]})
				}
			}
			if diff := cmp.Diff(want, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
				t.Errorf("ServiceEntryStatus() for foo/%s (-want +got):\n%s", tt.entry, diff)
			}
		})
	}
}

// TestServiceEntryStatusStable: the recorded addresses are the same build
// after build and from one Builder to another (replicas agree), sorted by
// namespace and name; an entry that gains spec.addresses lists none, and
// one that loses them gets its address back.
func TestServiceEntryStatusStable(t *testing.T) {
	docs := []string{
		seDoc("zeta", "zeta.example.org", "  resolution: DNS\n"),
		seDoc("alpha", "alpha.example.org", "  resolution: DNS\n"),
		seDoc("multi", "m1.example.org, m2.example.org", "  resolution: DNS\n  endpoints: [{address: edge.example.org}]\n"),
	}
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, docs...))
	first := b.ServiceEntryStatus()
	var names []string
	for _, st := range first {
		names = append(names, st.Name)
	}
	if want := []string{"alpha", "multi", "zeta"}; !cmp.Equal(names, want) {
		t.Errorf("ServiceEntryStatus() names = %v; want %v", names, want)
	}
	opt := cmp.Comparer(func(a, b netip.Addr) bool { return a == b })
	b.Build(inputs(t, docs...))
	if diff := cmp.Diff(first, b.ServiceEntryStatus(), opt); diff != "" {
		t.Errorf("second build (-first +second):\n%s", diff)
	}
	other := NewBuilder(BuilderOptions{})
	other.Build(inputs(t, docs...))
	if diff := cmp.Diff(first, other.ServiceEntryStatus(), opt); diff != "" {
		t.Errorf("another Builder (-first +other):\n%s", diff)
	}

	withAddr := append([]string{seDoc("zeta", "zeta.example.org", "  resolution: DNS\n  addresses: [198.19.9.9]\n")}, docs[1:]...)
	b.Build(inputs(t, withAddr...))
	if got := seAddresses(t, b, "zeta"); len(got.Addresses) != 0 {
		t.Errorf("zeta with spec.addresses: %+v; want no addresses", got)
	}
	if diff := cmp.Diff(first[0], seAddresses(t, b, "alpha"), opt); diff != "" {
		t.Errorf("alpha changed when zeta gained addresses (-before +after):\n%s", diff)
	}
	b.Build(inputs(t, docs...))
	if diff := cmp.Diff(first, b.ServiceEntryStatus(), opt); diff != "" {
		t.Errorf("zeta without spec.addresses again (-first +now):\n%s", diff)
	}
}
