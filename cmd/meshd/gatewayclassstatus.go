package main

import (
	"reflect"
	"slices"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

// withOwnedStatus is withStatus for the objects whose status fields meshd
// owns outright rather than sharing entry by entry: a Gateway's
// status.listeners, status.attachedListenerSets (when st has it: the
// build counts it for every Gateway of a meshlet class) and the condition
// types of controlplane.GatewayOwnedConditions (its other conditions and
// addresses are pkg/deployer's, left as read, so that the two writers
// never undo each other; the UpdateStatus resourceVersion check turns a
// deployer write in between into a conflict and a fresh merge); a
// ListenerSet's status.listeners and its Accepted and Programmed
// conditions; and a GatewayClass's Accepted and SupportedVersion
// conditions. Conditions of other types are kept on ListenerSets and
// GatewayClasses, as the Gateway API asks of every writer.
func withOwnedStatus(obj runtime.Object, st controlplane.ObjectStatus, now metav1.Time) (runtime.Object, bool) {
	switch o := obj.(type) {
	case *gatewayv1.Gateway:
		if o.Generation != st.Generation {
			return nil, false
		}
		merged := mergeListeners(o.Status.Listeners, st.Listeners, now)
		conds := ownedGatewayConditions(o.Status.Conditions, st.Conditions, now)
		attached := o.Status.AttachedListenerSets
		if st.AttachedListenerSets != nil {
			n := *st.AttachedListenerSets
			attached = &n
		}
		if sameListeners(o.Status.Listeners, merged) && reflect.DeepEqual(clearTimes(o.Status.Conditions), clearTimes(conds)) &&
			reflect.DeepEqual(o.Status.AttachedListenerSets, attached) {
			return nil, false
		}
		c := o.DeepCopy()
		c.Status.Listeners, c.Status.Conditions, c.Status.AttachedListenerSets = merged, conds, attached
		return c, true
	case *gatewayv1.ListenerSet:
		if o.Generation != st.Generation {
			return nil, false
		}
		current := convertListeners[gatewayv1.ListenerStatus](o.Status.Listeners)
		merged := mergeListeners(current, st.Listeners, now)
		conds := mergeConditionTypes(o.Status.Conditions, st.Conditions, now)
		if sameListeners(current, merged) && reflect.DeepEqual(clearTimes(o.Status.Conditions), clearTimes(conds)) {
			return nil, false
		}
		c := o.DeepCopy()
		c.Status.Listeners, c.Status.Conditions = convertListeners[gatewayv1.ListenerEntryStatus](merged), conds
		return c, true
	case *gatewayv1.GatewayClass:
		if o.Generation != st.Generation {
			return nil, false
		}
		merged := mergeConditionTypes(o.Status.Conditions, st.Conditions, now)
		if reflect.DeepEqual(clearTimes(o.Status.Conditions), clearTimes(merged)) {
			return nil, false
		}
		c := o.DeepCopy()
		c.Status.Conditions = merged
		return c, true
	}
	return nil, false
}

// listenerStatus is an entry of a Gateway's status.listeners or of a
// ListenerSet's: the two types have the same fields.
type listenerStatus interface {
	gatewayv1.ListenerStatus | gatewayv1.ListenerEntryStatus
}

// convertListeners converts a status.listeners list between a Gateway's
// and a ListenerSet's entry type, so that one merge serves both; nil
// stays nil.
func convertListeners[T, F listenerStatus](in []F) []T {
	if in == nil {
		return nil
	}
	out := make([]T, len(in))
	for i, l := range in {
		out[i] = T(l)
	}
	return out
}

// mergeListeners returns desired, each listener's conditions keeping the
// lastTransitionTime of the same-named listener in current where status
// and reason did not change. Listeners no longer in the spec are dropped:
// the list is meshd's alone. A ListenerSet's are merged as a Gateway's
// (convertListeners).
func mergeListeners(current, desired []gatewayv1.ListenerStatus, now metav1.Time) []gatewayv1.ListenerStatus {
	out := make([]gatewayv1.ListenerStatus, len(desired))
	for i, l := range desired {
		var old []metav1.Condition
		if j := slices.IndexFunc(current, func(c gatewayv1.ListenerStatus) bool { return c.Name == l.Name }); j >= 0 {
			old = current[j].Conditions
		}
		l.Conditions = mergeConditions(old, l.Conditions, now)
		out[i] = l
	}
	return out
}

// sameListeners compares two status.listeners without lastTransitionTimes
// (nil and empty alike, the lists and their supportedKinds: the API
// server returns an empty list as none, and a ListenerSet's entries
// leave an empty supportedKinds out).
func sameListeners(a, b []gatewayv1.ListenerStatus) bool {
	return slices.EqualFunc(a, b, func(x, y gatewayv1.ListenerStatus) bool {
		x.Conditions, y.Conditions = clearTimes(x.Conditions), clearTimes(y.Conditions)
		if len(x.SupportedKinds) == 0 && len(y.SupportedKinds) == 0 {
			x.SupportedKinds, y.SupportedKinds = nil, nil
		}
		return reflect.DeepEqual(x, y)
	})
}

// ownedGatewayConditions returns a Gateway's conditions with those of the
// types meshd writes (controlplane.GatewayOwnedConditions) as desired has
// them: updated, added, or removed when desired lacks them; the others
// (pkg/deployer's) kept as they are.
func ownedGatewayConditions(current, desired []metav1.Condition, now metav1.Time) []metav1.Condition {
	kept := slices.DeleteFunc(slices.Clone(current), func(c metav1.Condition) bool {
		return slices.Contains(controlplane.GatewayOwnedConditions, c.Type) &&
			!slices.ContainsFunc(desired, func(d metav1.Condition) bool { return d.Type == c.Type })
	})
	if len(kept) == len(current) && len(desired) == 0 {
		return current // nothing of meshd's: as it was (nil stays nil)
	}
	return mergeConditionTypes(kept, desired, now)
}

// mergeConditionTypes returns current with the conditions of desired's
// types replaced (in place, or appended when new), stamped as
// mergeConditions does; conditions of other types are kept as they are.
func mergeConditionTypes(current, desired []metav1.Condition, now metav1.Time) []metav1.Condition {
	stamped := mergeConditions(current, desired, now)
	out := slices.Clone(current)
	for _, c := range stamped {
		if i := slices.IndexFunc(out, func(o metav1.Condition) bool { return o.Type == c.Type }); i >= 0 {
			out[i] = c
		} else {
			out = append(out, c)
		}
	}
	return out
}
