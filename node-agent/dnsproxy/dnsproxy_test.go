package dnsproxy

import (
	"net/netip"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestSearchDomains(t *testing.T) {
	tests := []struct {
		in, want []string
	}{
		{KubeSearchDomains("shop", "cluster.local"), []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}},
		{[]string{"Cluster.Local.", "svc.cluster.local", "", ".", "Shop.svc.cluster.local."}, []string{"shop.svc.cluster.local", "svc.cluster.local", "cluster.local"}},
		{[]string{"corp.example", "a.b"}, []string{"corp.example", "a.b"}},
		{nil, nil},
	}
	for _, tt := range tests {
		if got := searchDomains(tt.in); !cmp.Equal(got, tt.want) {
			t.Errorf("searchDomains(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}

func TestForwardable(t *testing.T) {
	tests := []struct {
		orig string
		want bool
	}{
		{"198.19.46.3:53", true},
		{"[fd00::53]:53", true},
		{"[::ffff:198.19.46.3]:53", true},
		{"169.254.20.10:53", true}, // node-local DNS cache
		{"127.0.0.1:15053", false}, // the proxy itself
		{"[::1]:15053", false},
		{"[::ffff:127.0.0.1]:15053", false},
		{"127.0.0.53:53", false}, // the agent's loopback is not the pod's
		{"198.19.46.2:15053", false},
		{"0.0.0.0:53", false},
		{"[::]:53", false},
		{"198.19.46.3:0", false},
	}
	for _, tt := range tests {
		if got := forwardable(netip.MustParseAddrPort(tt.orig)); got != tt.want {
			t.Errorf("forwardable(%s) = %v; want %v", tt.orig, got, tt.want)
		}
	}
	if forwardable(netip.AddrPort{}) {
		t.Errorf("forwardable(zero AddrPort) = true; want false")
	}
}
