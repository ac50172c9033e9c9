package main

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestScrapeTargets(t *testing.T) {
	pod := func(name, ip string, phase corev1.PodPhase, ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "meshlet-system", Name: name, Annotations: ann,
			Labels: map[string]string{"app.kubernetes.io/name": "meshlet-node-agent"}},
			Spec: corev1.PodSpec{NodeName: "n1"}, Status: corev1.PodStatus{Phase: phase, PodIP: ip}}
	}
	scrape := map[string]string{"prometheus.io/scrape": "true"}
	tests := []struct {
		name string
		pods []*corev1.Pod
		want []targetGroup
	}{
		{"defaults: port 15020, /metrics", []*corev1.Pod{pod("agent", "10.0.0.1", corev1.PodRunning, scrape)},
			[]targetGroup{{Targets: []string{"10.0.0.1:15020"}, Labels: map[string]string{"kubernetes_namespace": "meshlet-system", "kubernetes_pod_name": "agent", "kubernetes_node": "n1", "app": "meshlet-node-agent", "__metrics_path__": "/metrics"}}}},
		{"port and path from annotations", []*corev1.Pod{pod("meshd", "10.0.0.2", corev1.PodRunning, map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15014", "prometheus.io/path": "/stats"})},
			[]targetGroup{{Targets: []string{"10.0.0.2:15014"}, Labels: map[string]string{"kubernetes_namespace": "meshlet-system", "kubernetes_pod_name": "meshd", "kubernetes_node": "n1", "app": "meshlet-node-agent", "__metrics_path__": "/stats"}}}},
		{"not annotated, pending, bad port: none", []*corev1.Pod{
			pod("plain", "10.0.0.3", corev1.PodRunning, nil),
			pod("starting", "", corev1.PodPending, scrape),
			pod("typo", "10.0.0.4", corev1.PodRunning, map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "http"}),
		}, []targetGroup{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if diff := cmp.Diff(tt.want, scrapeTargets(tt.pods)); diff != "" {
				t.Errorf("scrapeTargets mismatch (-want +got):\n%s", diff)
			}
		})
	}
}
