package main

import (
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	corev1 "k8s.io/api/core/v1"
)

// newHTTPServers builds meshd's plain-HTTP servers: metrics (15014) for
// Prometheus, health (15021) for the kubelet, and the admin server (15000)
// whose /debug/xds shows every client's ACK/NACK state. The admin address is
// checked to be loopback by parseFlags: debug data never leaves the pod.
// clients reports the xDS clients; ready reports whether meshd has built its
// first model and listens, so a rollout waits for a replica that can serve.
// pods lists the cluster's pods for the Prometheus service discovery at
// /sd/prometheus on the metrics port (scrape.go).
func newHTTPServers(cfg config, reg *prometheus.Registry, clients func() any, ready func() bool, pods func() []*corev1.Pod) []*http.Server {
	metrics := http.NewServeMux()
	metrics.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	metrics.Handle("GET /sd/prometheus", scrapeHandler(pods))

	health := http.NewServeMux()
	health.HandleFunc("/healthz/live", func(w http.ResponseWriter, _ *http.Request) {
		fmt.Fprintln(w, "ok")
	})
	health.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		if !ready() {
			http.Error(w, "not ready: building the first model or shutting down", http.StatusServiceUnavailable)
			return
		}
		fmt.Fprintln(w, "ok")
	})

	admin := http.NewServeMux()
	admin.HandleFunc("/debug/xds", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(clients())
	})

	srv := func(addr string, h http.Handler) *http.Server {
		return &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second}
	}
	return []*http.Server{srv(cfg.metricsAddr, metrics), srv(cfg.healthAddr, health), srv(cfg.adminAddr, admin)}
}

// requireLoopback refuses an address that is not on a loopback IP, so the
// admin endpoints cannot be exposed by a flag typo.
func requireLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if ip := net.ParseIP(host); ip == nil || !ip.IsLoopback() {
		if host != "localhost" {
			return fmt.Errorf("%q is not a loopback address; use 127.0.0.1:<port>", addr)
		}
	}
	return nil
}
