package cli

import (
	"strings"
	"testing"
)

// TestEdges: the node agents' connection counts (destination side only)
// and the waypoints' request counts, summed over proxies per pair of
// workloads, with how they were secured and the identities proved;
// plaintext edges first; -n keeps edges with the namespace at either end.
func TestEdges(t *testing.T) {
	agent1 := `# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",source_workload="client",source_workload_namespace="shop",source_principal="spiffe://cluster.local/ns/shop/sa/client",destination_workload="echo",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 7
istio_tcp_connections_opened_total{reporter="source",source_workload="client",source_workload_namespace="shop",destination_workload="echo",destination_workload_namespace="shop",connection_security_policy="unknown"} 100
istio_tcp_connections_opened_total{reporter="destination",source_workload="unknown",source_workload_namespace="unknown",source_principal="unknown",destination_workload="echo",destination_workload_namespace="shop",connection_security_policy="none"} 2
istio_tcp_connections_opened_total{reporter="destination",source_workload="a",source_workload_namespace="other",destination_workload="b",destination_workload_namespace="other",connection_security_policy="mutual_tls"} 1
`
	agent2 := `# TYPE istio_tcp_connections_opened_total counter
istio_tcp_connections_opened_total{reporter="destination",source_workload="client",source_workload_namespace="shop",source_principal="spiffe://cluster.local/ns/shop/sa/client",destination_workload="echo",destination_workload_namespace="shop",connection_security_policy="mutual_tls"} 3
istio_tcp_connections_opened_total{reporter="destination",source_workload="web",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="data",connection_security_policy="mutual_tls"} 4
istio_tcp_connections_opened_total{reporter="destination",source_workload="web",source_workload_namespace="shop",destination_workload="db",destination_workload_namespace="data",connection_security_policy="none"} 1
`
	waypoint := `# TYPE istio_requests_total counter
istio_requests_total{reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="echo",destination_workload_namespace="shop",response_code="200",connection_security_policy="mutual_tls"} 40
istio_requests_total{reporter="waypoint",source_workload="client",source_workload_namespace="shop",destination_workload="echo",destination_workload_namespace="shop",response_code="503",connection_security_policy="mutual_tls"} 2
istio_requests_total{reporter="waypoint",source_workload="ui",source_workload_namespace="shop",destination_workload="echo",destination_workload_namespace="shop",response_code="200",connection_security_policy="none"} 5
`
	edges := map[edgeKey]*edge{}
	for _, txt := range []string{agent1, agent2, waypoint} {
		fams, err := parseMetrics([]byte(txt))
		if err != nil {
			t.Fatal(err)
		}
		addEdges(edges, fams)
	}
	var b strings.Builder
	printEdges(&b, edgeRows(edges, "shop"))
	out := b.String()
	for i, want := range [][]string{
		{"SOURCE", "DESTINATION", "SECURED"},
		{"shop/ui", "shop/echo", "NO (plaintext)", "-", "5"},
		{"shop/web", "data/db", "PARTLY (plaintext too)", "4/1", "-"},
		{"unknown", "shop/echo", "NO (plaintext)", "0/2", "-", "-"},
		{"shop/client", "shop/echo", "yes", "10/0", "42", "spiffe://cluster.local/ns/shop/sa/client"},
	} {
		lines := strings.Split(out, "\n")
		if i >= len(lines) || !containsAllWords(lines[i], want...) {
			t.Errorf("meshctl metrics edges -n shop, line %d; want %q in:\n%s", i, want, out)
		}
	}
	if strings.Contains(out, "other/") || strings.Count(strings.TrimSpace(out), "\n") != 4 {
		t.Errorf("-n shop printed:\n%s\nwant the four edges touching shop only", out)
	}
	b.Reset()
	printEdges(&b, edgeRows(map[edgeKey]*edge{}, ""))
	if !strings.Contains(b.String(), "no traffic between workloads seen yet") {
		t.Errorf("no edges printed %q", b.String())
	}
}

func containsAllWords(line string, words ...string) bool {
	for _, w := range words {
		if !strings.Contains(line, w) {
			return false
		}
	}
	return true
}
