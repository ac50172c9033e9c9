package deployer

import (
	"cmp"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// ListenerSets (Gateway API GEP-1713, standard since v1.5) add listeners to
// a Gateway from other objects, possibly of other namespaces. The
// deployer opens their ports on an ingress Gateway's Service; meshd's
// build (pkg/controlplane) serves them and writes their status. Both
// decide which ListenerSets a Gateway takes with the functions below, so
// that a port is open exactly when the gateway may serve it.

// ListenerSetParent returns the namespace and name of the Gateway ls
// names in spec.parentRef; ok is false when the reference names another
// kind or group (no Gateway takes the set).
func ListenerSetParent(ls *gatewayv1.ListenerSet) (namespace, name string, ok bool) {
	ref := ls.Spec.ParentRef
	if ref.Group != nil && *ref.Group != gatewayv1.GroupName {
		return "", "", false
	}
	if ref.Kind != nil && *ref.Kind != "Gateway" {
		return "", "", false
	}
	namespace = ls.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		namespace = string(*ref.Namespace)
	}
	return namespace, string(ref.Name), true
}

// ListenerSetAllowed reports whether gw's spec.allowedListeners admits
// ListenerSets of namespace setNamespace, whose labels are nsLabels: None
// (the default) admits none, Same the Gateway's namespace, All every
// namespace, Selector the namespaces its label selector matches (none
// when it has no selector or an invalid one).
func ListenerSetAllowed(gw *gatewayv1.Gateway, setNamespace string, nsLabels map[string]string) bool {
	a := gw.Spec.AllowedListeners
	if a == nil || a.Namespaces == nil || a.Namespaces.From == nil {
		return false
	}
	switch *a.Namespaces.From {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSame:
		return setNamespace == gw.Namespace
	case gatewayv1.NamespacesFromSelector:
		if a.Namespaces.Selector == nil {
			return false
		}
		sel, err := metav1.LabelSelectorAsSelector(a.Namespaces.Selector)
		return err == nil && sel.Matches(labels.Set(nsLabels))
	}
	return false
}

// SortListenerSets orders sets as Gateway API merges their listeners into
// their Gateway's, after the Gateway's own: oldest first, then by
// namespace/name.
func SortListenerSets(sets []*gatewayv1.ListenerSet) {
	slices.SortStableFunc(sets, func(a, b *gatewayv1.ListenerSet) int {
		if c := a.CreationTimestamp.Compare(b.CreationTimestamp.Time); c != 0 {
			return c
		}
		return cmp.Or(cmp.Compare(a.Namespace, b.Namespace), cmp.Compare(a.Name, b.Name))
	})
}
