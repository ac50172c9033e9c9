package deployer

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	corev1listers "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// TestAttachedListenerSets: reconcile renders with the sets whose
// parentRef names the Gateway and which its allowedListeners admits, in
// merge order; a set of a namespace the cache does not have is not
// admitted by a selector, even one that matches no labels.
func TestAttachedListenerSets(t *testing.T) {
	at := func(min int) metav1.Time { return metav1.NewTime(time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)) }
	set := func(ns, name string, created int, parent string) *gatewayv1.ListenerSet {
		ls := listenerSet(ns, name)
		ls.CreationTimestamp = at(created)
		ls.Spec.ParentRef.Name = gatewayv1.ObjectName(parent)
		return ls
	}
	otherKind := set("bookinfo", "other-kind", 0, "waypoint")
	otherKind.Spec.ParentRef.Kind = ptr(gatewayv1.Kind("Service"))
	sets := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byParent: parentIndex})
	for _, ls := range []*gatewayv1.ListenerSet{
		set("team-b", "b", 1, "waypoint"),
		set("team-a", "a", 2, "waypoint"),
		set("bookinfo", "same", 3, "waypoint"),
		set("gone", "orphan", 0, "waypoint"),
		set("team-a", "elsewhere", 0, "other-gateway"),
		otherKind,
	} {
		if err := sets.Add(ls); err != nil {
			t.Fatal(err)
		}
	}
	nsIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for ns, env := range map[string]string{"bookinfo": "dev", "team-a": "dev", "team-b": "prod"} {
		if err := nsIdx.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"env": env}}}); err != nil {
			t.Fatal(err)
		}
	}
	d := &Deployer{listenerSets: sets, namespaces: corev1listers.NewNamespaceLister(nsIdx)}

	allowing := func(from gatewayv1.FromNamespaces, sel *metav1.LabelSelector) *gatewayv1.Gateway {
		gw := gateway("meshlet")
		gw.Spec.AllowedListeners = &gatewayv1.AllowedListeners{Namespaces: &gatewayv1.ListenerNamespaces{From: &from, Selector: sel}}
		return gw
	}
	notProd := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"prod"}}}}
	tests := []struct {
		name string
		gw   *gatewayv1.Gateway
		want []string
	}{
		{"none by default", gateway("meshlet"), nil},
		{"same", allowing(gatewayv1.NamespacesFromSame, nil), []string{"bookinfo/same"}},
		{"all", allowing(gatewayv1.NamespacesFromAll, nil), []string{"gone/orphan", "team-b/b", "team-a/a", "bookinfo/same"}},
		{"selector", allowing(gatewayv1.NamespacesFromSelector, notProd), []string{"team-a/a", "bookinfo/same"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.attachedListenerSets(tt.gw)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, ls := range got {
				names = append(names, ls.Namespace+"/"+ls.Name)
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Errorf("attached sets (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("without the CRD", func(t *testing.T) {
		got, err := (&Deployer{}).attachedListenerSets(allowing(gatewayv1.NamespacesFromAll, nil))
		if err != nil || got != nil {
			t.Errorf("attachedListenerSets() = %v, %v; want none", got, err)
		}
	})
}
