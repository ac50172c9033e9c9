package enroll

import (
	"errors"
	"net/netip"
	"testing"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
)

func TestFindNetns(t *testing.T) {
	a, b := nstest.Pair(t, "mlna-fn", netip.MustParseAddr("198.19.3.30"), netip.MustParseAddr("198.19.3.31"))
	tests := []struct {
		ips  []netip.Addr
		want string
	}{
		{ips: []netip.Addr{a.Addr}, want: a.Path},
		{ips: []netip.Addr{netip.MustParseAddr("2001:db8::1"), b.Addr}, want: b.Path},
	}
	for _, tt := range tests {
		got, err := FindNetns(FindOptions{}, "", tt.ips)
		if err != nil || got != tt.want {
			t.Errorf("FindNetns(%v) = %q, %v; want %q", tt.ips, got, err, tt.want)
		}
	}
	if _, err := FindNetns(FindOptions{}, "no-such-uid", []netip.Addr{netip.MustParseAddr("198.19.3.99")}); !errors.Is(err, ErrNetnsNotFound) {
		t.Errorf("FindNetns(unused IP) = %v; want ErrNetnsNotFound", err)
	}
}
