package ebpf

import (
	"net/netip"
	"strings"
	"testing"
)

func TestOptionsWithDefaults(t *testing.T) {
	tests := []struct {
		name    string
		opts    Options
		wantErr string
		check   func(Options) bool
	}{
		{"defaults", Options{CgroupPath: "/sys/fs/cgroup"}, "", func(o Options) bool {
			return o.PinDir == DefaultPinDir && o.OutboundPort == 15001 && o.DNSPort == 15053 && o.InboundPort == 15006
		}},
		{"kept", Options{CgroupPath: "/cg", PinDir: "/p", OutboundPort: 1, DNSPort: 2, InboundPort: 3}, "", func(o Options) bool {
			return o.PinDir == "/p" && o.OutboundPort == 1 && o.DNSPort == 2 && o.InboundPort == 3
		}},
		{"no cgroup", Options{}, "CgroupPath is empty", nil},
		{"exclude everything", Options{CgroupPath: "/cg", ExcludeOutbound: []Exclusion{{Port: 80}, {}}}, "ExcludeOutbound[1]", nil},
		{"exclude an address", Options{CgroupPath: "/cg", ExcludeOutbound: []Exclusion{{Addr: netip.MustParseAddr("198.19.1.1")}}}, "", nil},
		{"zero skip source", Options{CgroupPath: "/cg", IngressSkipSources: []netip.Addr{{}}}, "IngressSkipSources[0]", nil},
		{"dns loop", Options{CgroupPath: "/cg", DNSPort: 53}, "DNSPort is 53", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := tt.opts.withDefaults()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("withDefaults(%+v) error = %v; want one containing %q", tt.opts, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("withDefaults(%+v) = %v", tt.opts, err)
			}
			if tt.check != nil && !tt.check(got) {
				t.Errorf("withDefaults(%+v) = %+v", tt.opts, got)
			}
		})
	}
}

func TestRTTBucketBound(t *testing.T) {
	tests := []struct {
		i    int
		want uint64
	}{{0, 64}, {1, 128}, {10, 65536}, {11, 0}, {-1, 0}}
	for _, tt := range tests {
		if got := RTTBucketBound(tt.i); got != tt.want {
			t.Errorf("RTTBucketBound(%d) = %d; want %d", tt.i, got, tt.want)
		}
	}
}
