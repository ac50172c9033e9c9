package xds

import (
	"fmt"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the server's Prometheus series.
type metrics struct {
	connected       prometheus.Gauge
	refused         prometheus.Counter
	pushes          *prometheus.CounterVec
	debouncedPushes prometheus.Counter
	pushLatency     prometheus.Histogram
	nacks           *prometheus.CounterVec
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	m := &metrics{
		connected: prometheus.NewGauge(prometheus.GaugeOpts{
			Name: "meshd_xds_connected_clients",
			Help: "Authenticated xDS streams currently open.",
		}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_xds_refused_streams_total",
			Help: "xDS streams refused because the client could not be authenticated.",
		}),
		pushes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_pushes_total",
			Help: "Delta responses sent to clients, by type URL.",
		}, []string{"type"}),
		debouncedPushes: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "meshd_xds_debounced_pushes_total",
			Help: "Pushes of a new generation of config after the debounce window.",
		}),
		pushLatency: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "meshd_xds_push_latency_seconds",
			Help:    "Time from the first change of a push to the client's ACK of it.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
		}),
		nacks: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_xds_nacks_total",
			Help: "Responses rejected by clients, by type URL.",
		}, []string{"type"}),
	}
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.connected, m.refused, m.pushes, m.debouncedPushes, m.pushLatency, m.nacks} {
		if err := reg.Register(c); err != nil {
			return nil, fmt.Errorf("register xds metrics: %w", err)
		}
	}
	return m, nil
}
