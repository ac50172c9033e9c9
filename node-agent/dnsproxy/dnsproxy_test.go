package dnsproxy

import (
	"net/netip"
	"testing"
)

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
