package cli

import (
	"bytes"
	"errors"
	"maps"
	"strings"
	"testing"

	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshlet/meshlet/pkg/meshstatus"
	"github.com/meshlet/meshlet/pkg/model"
)

// TestRemoveRedirectionAnnotations: uninstall takes the node agents' status
// annotation off every pod that has it, in every namespace, and leaves a
// user's value and other annotations alone.
func TestRemoveRedirectionAnnotations(t *testing.T) {
	pod := func(ns, name string, ann map[string]string) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Annotations: ann}}
	}
	kube := fake.NewClientset(
		pod("shop", "cart", map[string]string{model.AnnotationRedirection: "enabled", "team": "shop"}),
		pod("shop", "legacy", map[string]string{model.AnnotationRedirection: "disabled"}),
		pod("shop", "plain", nil),
		pod("web", "front", map[string]string{model.AnnotationRedirection: "enabled"}),
	)
	var progress bytes.Buffer
	n, err := removeRedirectionAnnotations(t.Context(), &clients{kube: kube}, &progress)
	if err != nil || n != 2 {
		t.Fatalf("removeRedirectionAnnotations = %d, %v; want 2 removed\n%s", n, err, progress.String())
	}
	want := map[string]map[string]string{
		"shop/cart": {"team": "shop"}, "shop/legacy": {model.AnnotationRedirection: "disabled"}, "shop/plain": nil, "web/front": {},
	}
	for key, ann := range want {
		ns, name, _ := strings.Cut(key, "/")
		p, err := kube.CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !maps.Equal(p.Annotations, ann) {
			t.Errorf("pod %s annotations = %v; want %v", key, p.Annotations, ann)
		}
	}
}

// TestDeleteMeshdMadeGoesOnWithoutARight: uninstall's clean-up of what
// meshd made at run time deletes all it may, and names what it could not
// delete with the right to check, instead of stopping at the first refusal
// (here, no right to delete Leases).
func TestDeleteMeshdMadeGoesOnWithoutARight(t *testing.T) {
	const meshNS = "meshlet-system"
	root := func(ns string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "istio-ca-root-cert", Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}}}
	}
	kube := fake.NewClientset(
		root("shop"), root("web"),
		&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: "meshd-status-a", Labels: map[string]string{meshstatus.Label: "true"}}},
		&coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: meshNS, Name: meshstatus.LeaderLease}},
		&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart", Annotations: map[string]string{model.AnnotationRedirection: "enabled"}}},
	)
	forbidden := func(resource, name string) error {
		return apierrors.NewForbidden(schema.GroupResource{Resource: resource}, name, errors.New("no RBAC rule allows it"))
	}
	// No right to delete Leases, nor ConfigMaps in namespace web.
	kube.PrependReactor("delete", "leases", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return true, nil, forbidden("leases", meshstatus.LeaderLease)
	})
	kube.PrependReactor("delete", "configmaps", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return a.GetNamespace() == "web", nil, forbidden("configmaps", "istio-ca-root-cert")
	})
	var progress bytes.Buffer
	n, err := deleteMeshdMade(t.Context(), &clients{kube: kube}, meshNS, &progress)
	if n != 3 {
		t.Errorf("deleted %d; want shop's root ConfigMap, the status report and the pod's annotation\n%s", n, progress.String())
	}
	for _, want := range []string{
		"delete Lease " + meshNS + "/" + meshstatus.LeaderLease, "kubectl auth can-i delete leases -n " + meshNS,
		"delete ConfigMap web/istio-ca-root-cert", "kubectl auth can-i delete configmaps -n web",
	} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error = %v; want it to say %q", err, want)
		}
	}
	cms, _ := kube.CoreV1().ConfigMaps("").List(t.Context(), metav1.ListOptions{})
	if len(cms.Items) != 1 || cms.Items[0].Namespace != "web" {
		t.Errorf("ConfigMaps left: %v; want web's root ConfigMap only", cms.Items)
	}
	p, _ := kube.CoreV1().Pods("shop").Get(t.Context(), "cart", metav1.GetOptions{})
	if _, ok := p.Annotations[model.AnnotationRedirection]; ok {
		t.Errorf("pod shop/cart keeps %s; want it removed", model.AnnotationRedirection)
	}
}
