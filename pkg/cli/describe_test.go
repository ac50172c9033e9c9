package cli

import (
	"net/netip"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"github.com/meshlet/meshlet/pkg/model"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestRefusedByReason(t *testing.T) {
	metrics := []byte(`# HELP meshlet_tcp_connections_refused_total Connections refused (reset) by the node agent, by reason.
# TYPE meshlet_tcp_connections_refused_total counter
meshlet_tcp_connections_refused_total{destination_workload="echo",destination_workload_namespace="shop",reason="policy_denied",reporter="destination"} 3
meshlet_tcp_connections_refused_total{destination_workload="echo",destination_workload_namespace="shop",reason="plaintext_strict",reporter="destination"} 2
meshlet_tcp_connections_refused_total{destination_workload="echo",destination_workload_namespace="other",reason="policy_denied",reporter="destination"} 7
meshlet_tcp_connections_refused_total{destination_workload="web",destination_workload_namespace="shop",reason="policy_denied",reporter="destination"} 5
istio_tcp_connections_opened_total{destination_workload="echo"} 9
`)
	got := refusedByReason(metrics, "shop", "echo")
	if diff := cmp.Diff(map[string]float64{"policy_denied": 3, "plaintext_strict": 2}, got); diff != "" {
		t.Errorf("refusedByReason mismatch (-want +got):\n%s", diff)
	}
}

func TestEnrollment(t *testing.T) {
	labelled := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{LabelDataplaneMode: "ambient"}}}
	plain := &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "plain"}}
	pod := func(labels map[string]string, host bool) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: labels}, Spec: corev1.PodSpec{HostNetwork: host}}
	}
	tests := []struct {
		name string
		pod  *corev1.Pod
		ns   *corev1.Namespace
		want bool
		why  string
	}{
		{"namespace label", pod(nil, false), labelled, true, "namespace shop has istio.io/dataplane-mode=ambient"},
		{"pod opts out", pod(map[string]string{LabelDataplaneMode: "none"}, false), labelled, false, "the pod's label istio.io/dataplane-mode=none opts it out"},
		{"host network", pod(nil, true), labelled, false, "hostNetwork pods are never enrolled"},
		{"pod opts in", pod(map[string]string{LabelDataplaneMode: "ambient"}, false), plain, true, "the pod's label istio.io/dataplane-mode=ambient"},
		{"not labelled: the fix", pod(nil, false), plain, false, "namespace plain has no istio.io/dataplane-mode=ambient label: run meshctl ambient enable plain"},
	}
	for _, tt := range tests {
		got, why := enrollment(tt.pod, tt.ns)
		if got != tt.want || why != tt.why {
			t.Errorf("%s: enrollment = %v %q; want %v %q", tt.name, got, why, tt.want, tt.why)
		}
	}
}

// TestWaypointText: describe says a bound waypoint carries the traffic only
// when its istio.io/waypoint-for takes that kind (service by default).
func TestWaypointText(t *testing.T) {
	name := model.NamespacedName{Namespace: "shop", Name: "waypoint"}
	ref := &model.WaypointRef{Waypoint: name, Source: "namespace", Addresses: []netip.Addr{netip.MustParseAddr("198.18.9.9")}}
	for _, tt := range []struct {
		waypointFor, kind model.WaypointFor
		want              string
	}{
		{"", model.WaypointForService, "shop/waypoint (bound by the namespace's istio.io/use-waypoint label)"},
		{"", model.WaypointForWorkload, "none: shop/waypoint is bound, but it takes service traffic only (istio.io/waypoint-for=service)"},
		{model.WaypointForWorkload, model.WaypointForWorkload, "shop/waypoint (bound by the namespace's istio.io/use-waypoint label)"},
		{model.WaypointForWorkload, model.WaypointForService, "none: shop/waypoint is bound, but it takes workload traffic only (istio.io/waypoint-for=workload)"},
		{model.WaypointForAll, model.WaypointForWorkload, "shop/waypoint (bound by the namespace's istio.io/use-waypoint label)"},
		{model.WaypointForNone, model.WaypointForService, "none: shop/waypoint is bound, but it takes no traffic (istio.io/waypoint-for=none)"},
	} {
		snap := model.NewSnapshot(model.SnapshotInput{Waypoints: []*model.Waypoint{{Name: "waypoint", Namespace: "shop", For: tt.waypointFor, Addresses: ref.Addresses}}})
		if got := waypointText(snap, ref, tt.kind); got != tt.want {
			t.Errorf("waypoint-for %q, %s traffic: %q; want %q", tt.waypointFor, tt.kind, got, tt.want)
		}
	}
	if got := waypointText(model.NewSnapshot(model.SnapshotInput{}), ref, model.WaypointForService); !strings.Contains(got, "not deployed yet") {
		t.Errorf("a waypoint not in the model: %q; want it said not deployed", got)
	}
}
