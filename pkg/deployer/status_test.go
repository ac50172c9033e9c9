package deployer

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

func TestStatus(t *testing.T) {
	now := time.Date(2026, 11, 23, 22, 0, 0, 0, time.UTC)
	earlier := metav1.NewTime(now.Add(-time.Hour))
	clusterIP := &corev1.Service{Spec: corev1.ServiceSpec{ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}}}
	lb := clusterIP.DeepCopy()
	lb.Spec.Type = corev1.ServiceTypeLoadBalancer
	lb.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.18.0.10"}, {Hostname: "gw.example"}}
	ready := &appsv1.Deployment{Status: appsv1.DeploymentStatus{ReadyReplicas: 1}}
	acceptedEarlier := gateway("istio-waypoint")
	acceptedEarlier.Status.Conditions = []metav1.Condition{{Type: "Accepted", Status: metav1.ConditionTrue, LastTransitionTime: earlier}}

	type cond struct {
		Type, Status, Reason string
		At                   time.Time
	}
	type addr struct{ Type, Value string }
	tests := []struct {
		name      string
		gw        *gatewayv1.Gateway
		dep       *appsv1.Deployment
		svc       *corev1.Service
		rejected  error
		wantConds []cond
		wantAddrs []addr
	}{
		{"waypoint not ready", gateway("istio-waypoint"), &appsv1.Deployment{}, clusterIP, nil,
			[]cond{{"Accepted", "True", "Accepted", now}, {"Programmed", "False", "Pending", now}},
			[]addr{{"IPAddress", "10.96.0.10"}}},
		{"waypoint ready keeps Accepted's transition time", acceptedEarlier, ready, clusterIP, nil,
			[]cond{{"Accepted", "True", "Accepted", earlier.Time}, {"Programmed", "True", "Programmed", now}},
			[]addr{{"IPAddress", "10.96.0.10"}}},
		{"ingress uses load balancer addresses", gateway("meshlet"), ready, lb, nil,
			[]cond{{"Accepted", "True", "Accepted", now}, {"Programmed", "True", "Programmed", now}},
			[]addr{{"IPAddress", "198.18.0.10"}, {"Hostname", "gw.example"}}},
		{"ingress without load balancer falls back to the cluster IP", gateway("meshlet"), ready, clusterIP, nil,
			[]cond{{"Accepted", "True", "Accepted", now}, {"Programmed", "True", "Programmed", now}},
			[]addr{{"IPAddress", "10.96.0.10"}}},
		{"parameters rejected: what runs keeps its addresses", acceptedEarlier, ready, clusterIP, &ParamsError{msg: "parametersRef ConfigMap \"p\": no such ConfigMap"},
			[]cond{{"Accepted", "False", "InvalidParameters", now}, {"Programmed", "False", "Invalid", now}},
			[]addr{{"IPAddress", "10.96.0.10"}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Status(tt.gw, tt.dep, tt.svc, now, tt.rejected).Status
			var conds []cond
			for _, c := range st.Conditions {
				conds = append(conds, cond{*c.Type, string(*c.Status), *c.Reason, c.LastTransitionTime.Time})
			}
			var addrs []addr
			for _, a := range st.Addresses {
				addrs = append(addrs, addr{string(*a.Type), *a.Value})
			}
			if diff := cmp.Diff(tt.wantConds, conds); diff != "" {
				t.Errorf("conditions (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantAddrs, addrs); diff != "" {
				t.Errorf("addresses (-want +got):\n%s", diff)
			}
		})
	}
}
