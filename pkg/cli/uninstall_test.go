package cli

import (
	"bytes"
	"maps"
	"strings"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"

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
