package mesh

import (
	"context"
	"testing"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/controlplane"
	"github.com/meshlet/meshlet/pkg/model"
)

// TestTrustDomainAlias: on a mesh moving from trust domain old.example to
// example.org (mesh config trustDomainAliases: [old.example]), meshd's
// own build of an ALLOW for cluster.local/ns/shop/sa/cart admits the cart
// peer presenting spiffe://old.example/ns/shop/sa/cart, judged by its
// principal as presented, and not another service account of the alias,
// nor cart in a trust domain that is no alias; the peer is named as the
// workload at its address, with its identity as presented.
func TestTrustDomainAlias(t *testing.T) {
	in := &controlplane.Inputs{}
	for _, o := range []runtime.Object{
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "istio", Namespace: "istio-system"},
			Data: map[string]string{"mesh": "trustDomainAliases: [old.example]\n"}},
		aliasTestPod("cart", "198.19.3.50"),
		aliasTestPod("db", "198.19.3.51"),
		&securityv1.AuthorizationPolicy{ObjectMeta: metav1.ObjectMeta{Name: "allow-cart", Namespace: "shop"},
			Spec: securityapi.AuthorizationPolicy{
				Selector: &typeapi.WorkloadSelector{MatchLabels: map[string]string{"app": "db"}},
				Rules:    []*securityapi.Rule{{From: []*securityapi.Rule_From{{Source: &securityapi.Source{Principals: []string{"cluster.local/ns/shop/sa/cart"}}}}}},
			}},
	} {
		if err := in.Add(o); err != nil {
			t.Fatal(err)
		}
	}
	snap, rej := controlplane.NewBuilder(controlplane.BuilderOptions{TrustDomain: "example.org"}).Build(in)
	for _, r := range rej {
		t.Logf("rejection: %v", r)
	}
	m := New(Options{Snapshot: func() *model.Snapshot { return snap }})
	var db proxy.Pod
	for _, w := range snap.Workloads() {
		if w.Name == "db" {
			db = proxy.Pod{UID: w.UID, IPs: w.IPs}
		}
	}
	if db.UID == "" {
		t.Fatal("no db workload in the snapshot")
	}
	tests := []struct {
		principal string
		want      bool
	}{
		{"spiffe://example.org/ns/shop/sa/cart", true},
		{"spiffe://old.example/ns/shop/sa/cart", true},
		{"spiffe://old.example/ns/shop/sa/db", false},
		{"spiffe://old.example/ns/other/sa/cart", false},
		{"spiffe://cluster.local/ns/shop/sa/cart", false},
		{"spiffe://foreign.example/ns/shop/sa/cart", false},
	}
	for _, tt := range tests {
		d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: db, Principal: tt.principal, Source: ip("198.19.3.50"), Port: 8080})
		if d.Allow != tt.want {
			t.Errorf("Authorize(peer %s) = %+v; want allow=%v", tt.principal, d, tt.want)
		}
	}

	cart := ip("198.19.3.50")
	for _, tt := range []struct {
		peer string
		want proxy.Workload
	}{
		{"spiffe://old.example/ns/shop/sa/cart", proxy.Workload{Namespace: "shop", Name: "cart", Identity: "spiffe://old.example/ns/shop/sa/cart"}},
		{"spiffe://example.org/ns/shop/sa/cart", proxy.Workload{Namespace: "shop", Name: "cart", Identity: "spiffe://example.org/ns/shop/sa/cart"}},
		{"spiffe://old.example/ns/shop/sa/db", proxy.Workload{Namespace: "shop", Identity: "spiffe://old.example/ns/shop/sa/db"}},
		{"spiffe://foreign.example/ns/shop/sa/cart", proxy.Workload{Namespace: "shop", Identity: "spiffe://foreign.example/ns/shop/sa/cart"}},
	} {
		if got := m.PeerWorkload(cart, tt.peer); got != tt.want {
			t.Errorf("PeerWorkload(%s, %s) = %+v; want %+v", cart, tt.peer, got, tt.want)
		}
	}
}

func aliasTestPod(name, addr string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: "shop", UID: types.UID("uid-" + name), Labels: map[string]string{"app": name}},
		Spec:       corev1.PodSpec{NodeName: "n1", ServiceAccountName: name, Containers: []corev1.Container{{Name: "app"}}},
		Status: corev1.PodStatus{Phase: corev1.PodRunning, PodIP: addr, PodIPs: []corev1.PodIP{{IP: addr}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}},
	}
}
