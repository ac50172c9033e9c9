package proxy

import (
	"github.com/prometheus/client_golang/prometheus"
)

// Metrics are Istio's standard TCP metrics plus meshlet's refusals. Labels
// are bounded by workload: never a pod IP or a port.
type Metrics struct {
	opened, closed, sent, received *prometheus.CounterVec
	refused                        *prometheus.CounterVec
}

// istioLabels are the labels of Istio's TCP metrics that meshlet fills.
var istioLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal",
	"destination_workload", "destination_workload_namespace", "destination_principal",
	"destination_service",
	"connection_security_policy",
}

// NewMetrics creates the metrics and registers them with reg (nil means
// not registered).
func NewMetrics(reg prometheus.Registerer) *Metrics {
	cv := func(name, help string, labels []string) *prometheus.CounterVec {
		return prometheus.NewCounterVec(prometheus.CounterOpts{Name: name, Help: help}, labels)
	}
	m := &Metrics{
		opened:   cv("istio_tcp_connections_opened_total", "TCP connections opened.", istioLabels),
		closed:   cv("istio_tcp_connections_closed_total", "TCP connections closed.", istioLabels),
		sent:     cv("istio_tcp_sent_bytes_total", "Bytes sent to the downstream (client) side of TCP connections.", istioLabels),
		received: cv("istio_tcp_received_bytes_total", "Bytes received from the downstream (client) side of TCP connections.", istioLabels),
		refused: cv("meshlet_tcp_connections_refused_total", "Connections refused (reset) by the node agent, by reason.",
			[]string{"reporter", "destination_workload", "destination_workload_namespace", "reason"}),
	}
	if reg != nil {
		reg.MustRegister(m.opened, m.closed, m.sent, m.received, m.refused)
	}
	return m
}

// connLabels are one connection's label values.
type connLabels struct {
	reporter  string
	src, dst  Workload
	service   string
	mutualTLS bool
}

func (l connLabels) values() []string {
	policy := "none"
	if l.mutualTLS {
		policy = "mutual_tls"
	}
	or := func(s string) string {
		if s == "" {
			return "unknown"
		}
		return s
	}
	return []string{
		l.reporter,
		or(l.src.Name), or(l.src.Namespace), or(l.src.Identity),
		or(l.dst.Name), or(l.dst.Namespace), or(l.dst.Identity),
		or(l.service),
		policy,
	}
}

// connCounters are the counters of one connection, resolved once, and its
// own byte counts (for its tap event).
type connCounters struct {
	closed, sent, received counter
	// bytes: received by one copy direction, sent by the other, read once
	// both have ended.
	bytes byteCounts
}

// byteCounts are a connection's bytes from the client (received) and to
// it (sent).
type byteCounts struct{ received, sent int64 }

// nopCounter counts nothing: a connection's counters without Metrics, whose
// bytes a tap still reports.
type nopCounter struct{}

func (nopCounter) Add(float64) {}

// counter is what a connection's counts go to: a Prometheus counter, or
// two (counterPair).
type counter interface{ Add(float64) }

// counterPair counts into both: a connection on the same-node path is
// reported by its source and by its destination, as a tunnelled one is by
// the agents at both ends.
type counterPair [2]counter

func (p counterPair) Add(v float64) {
	p[0].Add(v)
	p[1].Add(v)
}

// joinCounters counts a connection into a and b; either may be nil.
func joinCounters(a, b *connCounters) *connCounters {
	if a == nil {
		return b
	}
	if b == nil {
		return a
	}
	return &connCounters{
		closed:   counterPair{a.closed, b.closed},
		sent:     counterPair{a.sent, b.sent},
		received: counterPair{a.received, b.received},
	}
}

func (m *Metrics) open(l connLabels) *connCounters {
	if m == nil {
		return nil
	}
	v := l.values()
	m.opened.WithLabelValues(v...).Inc()
	return &connCounters{closed: m.closed.WithLabelValues(v...), sent: m.sent.WithLabelValues(v...), received: m.received.WithLabelValues(v...)}
}

func (m *Metrics) refuse(reporter string, dst Workload, reason string) {
	if m == nil {
		return
	}
	m.refused.WithLabelValues(reporter, dst.Name, dst.Namespace, reason).Inc()
}
