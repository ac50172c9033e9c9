package cli

import (
	"bytes"
	"math"
	"strings"
	"testing"
	"time"
)

func scrape(t *testing.T, at time.Time, texts ...string) *sample {
	t.Helper()
	s := newSample(at)
	for _, txt := range texts {
		fams, err := parseMetrics([]byte(txt))
		if err != nil {
			t.Fatalf("parse: %v", err)
		}
		s.add(fams)
	}
	return s
}

const agentMetrics = `# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",destination_workload="echo",destination_workload_namespace="shop"} %OPENED%
istio_tcp_connections_opened_total{reporter="source",destination_workload="echo",destination_workload_namespace="shop"} 1000
# TYPE istio_tcp_connections_closed_total counter
istio_tcp_connections_closed_total{reporter="destination",destination_workload="echo",destination_workload_namespace="shop"} %CLOSED%
# TYPE istio_tcp_received_bytes_total counter
istio_tcp_received_bytes_total{reporter="destination",destination_workload="echo",destination_workload_namespace="shop"} %IN%
# TYPE meshlet_kernel_tcp_rtt_microseconds histogram
meshlet_kernel_tcp_rtt_microseconds_bucket{namespace="shop",workload="echo",service_account="default",le="100"} 2
meshlet_kernel_tcp_rtt_microseconds_bucket{namespace="shop",workload="echo",service_account="default",le="1000"} 10
meshlet_kernel_tcp_rtt_microseconds_bucket{namespace="shop",workload="echo",service_account="default",le="+Inf"} 10
meshlet_kernel_tcp_rtt_microseconds_sum{namespace="shop",workload="echo",service_account="default"} 0
meshlet_kernel_tcp_rtt_microseconds_count{namespace="shop",workload="echo",service_account="default"} 10
`

const waypointMetrics = `# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",destination_workload="echo",destination_workload_namespace="shop",response_code="200"} %OK%
istio_requests_total{reporter="waypoint",destination_workload="echo",destination_workload_namespace="shop",response_code="503"} %ERR%
istio_requests_total{reporter="waypoint",destination_workload="other",destination_workload_namespace="elsewhere",response_code="200"} 5
`

func fill(tmpl string, kv ...string) string {
	return strings.NewReplacer(kv...).Replace(tmpl)
}

func TestTopRates(t *testing.T) {
	t0 := time.Unix(1000, 0)
	prev := scrape(t, t0, fill(agentMetrics, "%OPENED%", "10", "%CLOSED%", "8", "%IN%", "1000"), fill(waypointMetrics, "%OK%", "100", "%ERR%", "0"))
	cur := scrape(t, t0.Add(2*time.Second), fill(agentMetrics, "%OPENED%", "30", "%CLOSED%", "25", "%IN%", "5000"), fill(waypointMetrics, "%OK%", "190", "%ERR%", "10"))
	rows := topRows(prev, cur, "shop")
	if len(rows) != 1 {
		t.Fatalf("rows = %+v; want one for shop/echo (the namespace filter drops elsewhere/other)", rows)
	}
	r := rows[0]
	tests := []struct {
		name      string
		got, want float64
	}{
		{"new connections per second", r.connRate, 10},
		{"open connections", r.open, 5},
		{"bytes in per second", r.inRate, 2000},
		{"requests per second", r.reqRate, 50},
		{"error percent", r.errPercent, 10},
		{"RTT p50 (µs)", r.rttP50, 100 + 900*(5.0-2)/(10-2)},
	}
	for _, tt := range tests {
		if math.Abs(tt.got-tt.want) > 1e-9 {
			t.Errorf("%s = %v; want %v", tt.name, tt.got, tt.want)
		}
	}
	var out bytes.Buffer
	printTop(&out, rows, 2*time.Second)
	if !strings.Contains(out.String(), "WORKLOAD") || !strings.Contains(out.String(), "echo") || !strings.Contains(out.String(), "437µs") {
		t.Errorf("table:\n%s\nwant a header and echo with RTT 437µs", out.String())
	}
	// A proxy that restarted: its counters start again from zero.
	restarted := scrape(t, t0.Add(4*time.Second), fill(agentMetrics, "%OPENED%", "4", "%CLOSED%", "0", "%IN%", "10"), fill(waypointMetrics, "%OK%", "2", "%ERR%", "0"))
	if r := topRows(cur, restarted, "shop")[0]; r.connRate != 2 || r.reqRate != 1 {
		t.Errorf("after a counter reset: %v conn/s, %v req/s; want 2 and 1", r.connRate, r.reqRate)
	}
}
