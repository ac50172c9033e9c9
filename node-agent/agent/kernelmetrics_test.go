package agent

import (
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/node-agent/ebpf"
)

// statsMap is a StatsSource holding fixed counters.
type statsMap map[uint32]ebpf.Stats

func (s statsMap) Stats() (map[uint32]ebpf.Stats, error) { return s, nil }

// TestKernelCollectorAfterRestart: counters a previous agent left under
// workload IDs this agent never assigned are reported once, summed, as
// "unknown" — never as duplicate series, which would fail the whole scrape.
func TestKernelCollectorAfterRestart(t *testing.T) {
	a := &Agent{workloads: map[string]uint32{"shop/cart/cart": 1}}
	src := statsMap{
		1: {ConnsOpened: 5, CapturedTCP: 5},
		7: {ConnsOpened: 2, CapturedDNS: 3},
		9: {ConnsOpened: 4, CapturedDNS: 1},
	}
	reg := prometheus.NewPedanticRegistry()
	reg.MustRegister(a.NewKernelCollector(src))
	if _, err := reg.Gather(); err != nil {
		t.Fatalf("scrape fails: %v", err)
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name   string
		labels map[string]string
		want   float64
	}{
		{"meshlet_kernel_tcp_connections_total", map[string]string{"namespace": "shop", "workload": "cart", "event": "opened"}, 5},
		{"meshlet_kernel_tcp_connections_total", map[string]string{"namespace": "unknown", "workload": "unknown", "event": "opened"}, 6},
		{"meshlet_kernel_redirect_decisions_total", map[string]string{"namespace": "unknown", "decision": "captured_dns"}, 4},
	}
	for _, tt := range tests {
		got, n := 0.0, 0
		for _, mf := range mfs {
			if mf.GetName() != tt.name {
				continue
			}
		metrics:
			for _, m := range mf.GetMetric() {
				have := map[string]string{}
				for _, l := range m.GetLabel() {
					have[l.GetName()] = l.GetValue()
				}
				for k, v := range tt.labels {
					if have[k] != v {
						continue metrics
					}
				}
				got += m.GetCounter().GetValue()
				n++
			}
		}
		if n != 1 || got != tt.want {
			t.Errorf("%s%v: %d series summing to %v; want one series of %v", tt.name, tt.labels, n, got, tt.want)
		}
	}
}
