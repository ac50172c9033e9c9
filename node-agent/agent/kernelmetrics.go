package agent

import (
	"strings"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/node-agent/ebpf"
)

// StatsSource is the data path's counters (node-agent/ebpf.Datapath).
type StatsSource interface {
	Stats() (map[uint32]ebpf.Stats, error)
}

// IngressStatsSource is the tc ingress program's node-wide counters
// (node-agent/ebpf.Datapath); a StatsSource that has them exports them too.
type IngressStatsSource interface {
	IngressStats() (ebpf.IngressStats, error)
}

// KernelCollector exports the data path's per-workload counters as
// Prometheus metrics, labelled by namespace, workload and service account
// (never by pod IP or port), read from the maps at scrape time.
type KernelCollector struct {
	agent *Agent
	src   StatsSource

	conns, bytes, packets, retrans, redirects *prometheus.Desc
	rtt                                       *prometheus.Desc
	inbound                                   *prometheus.Desc
}

var kernelLabels = []string{"namespace", "workload", "service_account"}

// NewKernelCollector returns a collector for src's counters with the
// agent's workload names; register it with a prometheus.Registry.
func (a *Agent) NewKernelCollector(src StatsSource) *KernelCollector {
	d := func(name, help string, extra ...string) *prometheus.Desc {
		return prometheus.NewDesc(name, help, append(append([]string{}, kernelLabels...), extra...), nil)
	}
	return &KernelCollector{
		agent:     a,
		src:       src,
		conns:     d("meshlet_kernel_tcp_connections_total", "TCP connections of enrolled pods seen by sockops, by event (opened, closed).", "event"),
		bytes:     d("meshlet_kernel_tcp_bytes_total", "TCP payload bytes of closed connections, by direction (sent, received).", "direction"),
		packets:   d("meshlet_kernel_tcp_packets_total", "TCP data segments of closed connections, by direction.", "direction"),
		retrans:   d("meshlet_kernel_tcp_retransmits_total", "TCP retransmitted segments."),
		redirects: d("meshlet_kernel_redirect_decisions_total", "Connect-time decisions: captured (tcp, dns) or bypassed and why.", "decision"),
		// The kernel keeps bucket counts only, so the histogram's sum is 0.
		rtt: d("meshlet_kernel_tcp_rtt_microseconds", "Smoothed RTT of connections at close (bucket counts; sum not recorded)."),
		// Node-wide: the tc program does not know the pod's workload.
		inbound: prometheus.NewDesc("meshlet_kernel_inbound_decisions_total",
			"SYNs to enrolled pods seen by tc ingress, node-wide: steered to the inbound listener (15006) or passed and why (probe: a kubelet probe, straight to the app).",
			[]string{"decision"}, nil),
	}
}

// Describe implements prometheus.Collector.
func (k *KernelCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{k.conns, k.bytes, k.packets, k.retrans, k.redirects, k.rtt, k.inbound} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (k *KernelCollector) Collect(ch chan<- prometheus.Metric) {
	if is, ok := k.src.(IngressStatsSource); ok {
		if s, err := is.IngressStats(); err == nil {
			for _, v := range []struct {
				decision string
				n        uint64
			}{
				{"steered", s.Steered}, {"passed_probe", s.PassedProbe}, {"passed_excluded_port", s.PassedExcludedPort},
				{"passed_mark", s.PassedMark}, {"passed_source", s.PassedSource}, {"passed_no_listener", s.PassedNoListener},
				{"assign_failed", s.AssignFailed},
			} {
				ch <- prometheus.MustNewConstMetric(k.inbound, prometheus.CounterValue, float64(v.n), v.decision)
			}
		}
	}
	stats, err := k.src.Stats()
	if err != nil {
		return
	}
	names := k.agent.workloadNames()
	// Counters of workload IDs this agent has not named (a previous agent's,
	// kept in the pinned map) all become "unknown": sum them, and any other
	// IDs sharing labels, so each series is emitted once — a duplicate
	// series fails the whole scrape.
	byLabels := map[[3]string]*ebpf.Stats{}
	for id, s := range stats {
		lv, ok := names[id]
		if !ok || len(lv) != 3 {
			lv = []string{"unknown", "unknown", "unknown"}
		}
		key := [3]string{lv[0], lv[1], lv[2]}
		if acc, ok := byLabels[key]; ok {
			addStats(acc, s)
			continue
		}
		sc := s
		byLabels[key] = &sc
	}
	for key, sp := range byLabels {
		lv, s := key[:], *sp
		c := func(d *prometheus.Desc, v uint64, extra ...string) {
			ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), append(append([]string{}, lv...), extra...)...)
		}
		c(k.conns, s.ConnsOpened, "opened")
		c(k.conns, s.ConnsClosed, "closed")
		c(k.bytes, s.BytesSent, "sent")
		c(k.bytes, s.BytesReceived, "received")
		c(k.packets, s.PacketsSent, "sent")
		c(k.packets, s.PacketsReceived, "received")
		c(k.retrans, s.Retransmits)
		c(k.redirects, s.CapturedTCP, "captured_tcp")
		c(k.redirects, s.CapturedDNS, "captured_dns")
		c(k.redirects, s.BypassedMark, "bypassed_agent")
		c(k.redirects, s.BypassedMeshPort, "bypassed_mesh_port")
		c(k.redirects, s.BypassedExcluded, "bypassed_excluded")
		c(k.redirects, s.BypassedFlags, "bypassed_pod_flags")
		buckets := map[float64]uint64{}
		var count uint64
		for i, n := range s.RTT {
			count += n
			if b := ebpf.RTTBucketBound(i); b != 0 {
				buckets[float64(b)] = count // cumulative
			}
		}
		h, err := prometheus.NewConstHistogram(k.rtt, count, 0, buckets, lv...)
		if err == nil {
			ch <- h
		}
	}
}

// addStats adds b's counters to a.
func addStats(a *ebpf.Stats, b ebpf.Stats) {
	a.ConnsOpened += b.ConnsOpened
	a.ConnsClosed += b.ConnsClosed
	a.BytesSent += b.BytesSent
	a.BytesReceived += b.BytesReceived
	a.PacketsSent += b.PacketsSent
	a.PacketsReceived += b.PacketsReceived
	a.Retransmits += b.Retransmits
	for i := range a.RTT {
		a.RTT[i] += b.RTT[i]
	}
	a.CapturedTCP += b.CapturedTCP
	a.CapturedDNS += b.CapturedDNS
	a.BypassedMark += b.BypassedMark
	a.BypassedMeshPort += b.BypassedMeshPort
	a.BypassedExcluded += b.BypassedExcluded
	a.BypassedFlags += b.BypassedFlags
}

// workloadNames maps data path workload IDs to label values.
func (a *Agent) workloadNames() map[uint32][]string {
	a.mu.Lock()
	defer a.mu.Unlock()
	out := make(map[uint32][]string, len(a.workloads))
	for k, id := range a.workloads {
		out[id] = strings.SplitN(k, "/", 3)
	}
	return out
}
