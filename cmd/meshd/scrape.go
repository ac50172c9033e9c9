package main

import (
	"encoding/json"
	"net"
	"net/http"
	"sort"
	"strconv"

	corev1 "k8s.io/api/core/v1"
)

// Prometheus HTTP service discovery (http_sd_configs) on the metrics port:
// the demo profile's Prometheus learns the mesh's scrape targets from meshd
// rather than from the Kubernetes API, so it needs no API permissions and
// works with Prometheus builds that lack Kubernetes discovery (Debian's).
// The rule is the usual annotation convention: every running pod annotated
// prometheus.io/scrape=true, on prometheus.io/port (default 15020) and
// prometheus.io/path (default /metrics).
const (
	scrapeAnnotation = "prometheus.io/scrape"
	portAnnotation   = "prometheus.io/port"
	pathAnnotation   = "prometheus.io/path"
	defaultScrape    = 15020
)

// targetGroup is one entry of Prometheus's HTTP SD response.
type targetGroup struct {
	Targets []string          `json:"targets"`
	Labels  map[string]string `json:"labels"`
}

// scrapeTargets lists the annotated pods' endpoints, sorted.
func scrapeTargets(pods []*corev1.Pod) []targetGroup {
	out := []targetGroup{}
	for _, p := range pods {
		if p.Annotations[scrapeAnnotation] != "true" || p.Status.Phase != corev1.PodRunning || p.Status.PodIP == "" || p.DeletionTimestamp != nil {
			continue
		}
		port := defaultScrape
		if v := p.Annotations[portAnnotation]; v != "" {
			n, err := strconv.Atoi(v)
			if err != nil || n <= 0 || n > 65535 {
				continue // not a port: the pod's annotation is wrong, skip it
			}
			port = n
		}
		path := p.Annotations[pathAnnotation]
		if path == "" || path[0] != '/' {
			path = "/metrics"
		}
		// kubernetes_* names: a target label "namespace" would rename the
		// node agents' own per-workload "namespace" label to exported_namespace.
		labels := map[string]string{"kubernetes_namespace": p.Namespace, "kubernetes_pod_name": p.Name, "kubernetes_node": p.Spec.NodeName, "__metrics_path__": path}
		if c := p.Labels["app.kubernetes.io/name"]; c != "" {
			labels["app"] = c
		}
		out = append(out, targetGroup{Targets: []string{net.JoinHostPort(p.Status.PodIP, strconv.Itoa(port))}, Labels: labels})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Targets[0] < out[j].Targets[0] })
	return out
}

func scrapeHandler(pods func() []*corev1.Pod) http.HandlerFunc {
	return func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(scrapeTargets(pods()))
	}
}
