package proxy

import (
	"fmt"
	"net/netip"
	"net/url"
	"testing"

	"github.com/meshlet/meshlet/pkg/configdump"
)

// TestConnFilter: what each query parameter of the agent's tap selects,
// and the parameters it refuses.
func TestConnFilter(t *testing.T) {
	ev := configdump.ConnEvent{Kind: "refused", Reporter: "destination", Source: "shop/cart", SourceAddr: "198.19.4.1:40000",
		Destination: "pay/db", DestinationAddr: "198.19.4.2:8080"}
	plain := configdump.ConnEvent{Kind: "opened", Reporter: "destination", Source: "198.19.4.9", SourceAddr: "198.19.4.9:1",
		Destination: "pay/db", DestinationAddr: "198.19.4.2:8080"}
	tests := []struct {
		query       string
		want, plain bool
	}{
		{"", true, true},
		{"namespace=shop", true, false},
		{"namespace=pay", true, true},
		{"namespace=other", false, false},
		{"workload=shop/cart", true, false},
		{"workload=cart", true, false},
		{"workload=pay/cart", false, false},
		{"workload=db", true, true},
		{"kind=refused", true, false},
		{"kind=opened,closed", false, true},
		{"port=8080", true, true},
		{"port=80", false, false},
		{"ip=198.19.4.1", true, false},
		{"ip=198.19.4.7,198.19.4.9", false, true},
		{"ip=198.19.4.7&ip=198.19.4.2", true, true},
		{"reporter=source", false, false},
		{"reporter=destination&kind=refused&namespace=shop&port=8080", true, false},
	}
	for _, tt := range tests {
		q, _ := url.ParseQuery(tt.query)
		match, err := parseConnFilter(q)
		if err != nil {
			t.Errorf("parseConnFilter(%q): %v", tt.query, err)
			continue
		}
		if got := match(&ev); got != tt.want {
			t.Errorf("filter %q on the refused event = %v; want %v", tt.query, got, tt.want)
		}
		if got := match(&plain); got != tt.plain {
			t.Errorf("filter %q on the plaintext event = %v; want %v", tt.query, got, tt.plain)
		}
	}
	for _, bad := range []string{"kind=denied", "port=0", "port=70000", "ip=cart", "reporter=both"} {
		q, _ := url.ParseQuery(bad)
		if _, err := parseConnFilter(q); err == nil {
			t.Errorf("parseConnFilter(%q) = nil error; want one", bad)
		}
	}
}

// TestTapCostsNothingWhileNobodyTaps: the event sites allocate nothing
// while the hub has no tap, not even a refusal's words.
func TestTapCostsNothingWhileNobodyTaps(t *testing.T) {
	p := &Proxy{opts: Options{Tap: &Tap{}}}
	info := connInfo{connLabels: connLabels{reporter: "source", src: Workload{Namespace: "shop", Name: "cart"}},
		srcAddr: netip.MustParseAddrPort("198.19.4.1:40000"), dstAddr: netip.MustParseAddrPort("198.19.4.2:8080")}
	if n := testing.AllocsPerRun(100, func() {
		opened := p.tapOpened(&info)
		p.tapClosed(&info, opened, byteCounts{received: 1, sent: 2})
		p.refuse(&info, ReasonDenied, func() string { return fmt.Sprintf("denied from %s", info.srcAddr) })
	}); n != 0 {
		t.Errorf("event sites with no tap open: %v allocations; want 0", n)
	}
}
