package main

import (
	"context"
	"errors"
	"log/slog"
	"reflect"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/wait"
	"k8s.io/client-go/util/retry"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

// gatewayStatusWriter writes the Gateway API status each build computes
// (controlplane.Builder.Status) on HTTPRoutes, GRPCRoutes, TLSRoutes,
// TCPRoutes, BackendTLSPolicies and XBackendTrafficPolicies: meshd's
// entries in status.parents and
// status.ancestors; and on Gateways, ListenerSets and GatewayClasses the
// fields meshd owns outright (withOwnedStatus, gatewayclassstatus.go).
//
// Both lists are listType=atomic in the CRDs, so server-side apply would
// make meshd own the whole list and drop the entries of other controllers
// (a route may name an Envoy Gateway and a meshlet Service in one
// parentRefs). So the writer reads, merges (mergeEntries:
// others' entries kept as they are) and calls UpdateStatus, whose
// resourceVersion check makes a concurrent writer's change a conflict;
// on conflict it reads the object again and merges anew, with backoff.
//
// Replicas run without leader election and all write: the status is a
// function of the inputs and lastTransitionTime is kept while a
// condition's status and reason stay, so replicas that see the same
// objects want the same status, and an object whose status already says
// it (compared without lastTransitionTimes) is not written again.
//
// status.parents holds at most 32 entries and status.ancestors 16 (the
// CRDs' maxItems), others' entries included, and an update carrying more
// is refused whole. So mergeEntries keeps the others' entries and
// as many of meshd's, in the build's order, as fit; the writer warns once
// per object generation about those left out (noteLeftOut). Other
// controllers' entries are never dropped, even when they alone fill the
// list.
//
// Builds hand over their result without waiting (submit): a newer result
// replaces one not yet started, and writes run on at most statusWorkers
// goroutines, so a slow or refusing API server never delays config pushes.
type gatewayStatusWriter struct {
	gw  gatewayclient.Interface
	log *slog.Logger
	// now stamps changed conditions; nil means time.Now.
	now   func() time.Time
	queue statusQueue[statusBatch]

	// warnedMu guards warned: writes run on several goroutines.
	warnedMu sync.Mutex
	// warned holds, per kind/namespace/name, the generation and count of
	// the entries left out last warned about (noteLeftOut).
	warned map[string]leftOutWarning
}

// leftOutWarning is what noteLeftOut last warned about for an object.
type leftOutWarning struct {
	generation int64
	leftOut    int
}

// statusBatch is one build's status with the inputs it was computed from
// (the informers' objects, whose status is compared with it).
type statusBatch struct {
	status []controlplane.ObjectStatus
	in     *controlplane.Inputs
}

// statusWorkers bounds the concurrent status writes.
const statusWorkers = 4

func newGatewayStatusWriter(gw gatewayclient.Interface, log *slog.Logger) *gatewayStatusWriter {
	return &gatewayStatusWriter{gw: gw, log: log, queue: newStatusQueue[statusBatch]()}
}

// submit queues a build's status, replacing one still waiting; it never blocks.
func (w *gatewayStatusWriter) submit(status []controlplane.ObjectStatus, in *controlplane.Inputs) {
	w.queue.put(statusBatch{status: status, in: in})
}

func (w *gatewayStatusWriter) run(ctx context.Context) {
	w.queue.run(ctx, func(b statusBatch) { w.writeBatch(ctx, b) })
}

func (w *gatewayStatusWriter) stamp() metav1.Time {
	if w.now != nil {
		return metav1.NewTime(w.now())
	}
	return metav1.NewTime(time.Now())
}

func (w *gatewayStatusWriter) writeBatch(ctx context.Context, b statusBatch) {
	writeEach(ctx, b.status, func(st controlplane.ObjectStatus) bool {
		cached := b.in.GatewayAPIObject(st.Kind, st.Namespace, st.Name)
		if cached == nil {
			return false
		}
		w.noteLeftOut(cached, st)
		_, changed := withStatus(cached, st, w.stamp()) // else the informer's copy already says it: no write
		return changed
	}, func(st controlplane.ObjectStatus) {
		w.write(ctx, st, b.in.GatewayAPIObject(st.Kind, st.Namespace, st.Name))
	})
}

// statusBackoff spaces the retries of a write that conflicted or failed
// for a reason that may pass (the API server busy or restarting).
var statusBackoff = wait.Backoff{Steps: 5, Duration: 100 * time.Millisecond, Factor: 2, Jitter: 0.2}

// write brings one object's status to st, starting from the informer's
// copy (cached); it logs, never returns, a failure.
func (w *gatewayStatusWriter) write(ctx context.Context, st controlplane.ObjectStatus, cached runtime.Object) {
	obj := cached
	err := retry.OnError(statusBackoff, retriableStatusError, func() error {
		if obj == nil {
			var err error
			if obj, err = w.get(ctx, st); err != nil {
				return err
			}
		}
		next, changed := withStatus(obj, st, w.stamp())
		if !changed {
			return nil
		}
		err := w.update(ctx, next)
		if err != nil {
			obj = nil // read it again: someone else wrote in between
		}
		return err
	})
	switch {
	case err == nil, apierrors.IsNotFound(err), errors.Is(err, context.Canceled):
		// Written, unchanged, or deleted meanwhile.
	case apierrors.IsForbidden(err):
		w.log.Error("write Gateway API status: forbidden; grant meshd's ClusterRole the verb update on this resource's status subresource (group gateway.networking.k8s.io)",
			"kind", st.Kind, "namespace", st.Namespace, "name", st.Name, "resource", statusResource(st.Kind), "verb", "update", "err", err)
	default:
		w.log.Warn("write Gateway API status", "kind", st.Kind, "namespace", st.Namespace, "name", st.Name, "err", err)
	}
}

// statusResource is the subresource UpdateStatus needs for kind.
func statusResource(kind string) string {
	switch kind {
	case controlplane.KindHTTPRoute:
		return "httproutes/status"
	case controlplane.KindGRPCRoute:
		return "grpcroutes/status"
	case controlplane.KindTLSRoute:
		return "tlsroutes/status"
	case controlplane.KindTCPRoute:
		return "tcproutes/status"
	case controlplane.KindGateway:
		return "gateways/status"
	case controlplane.KindListenerSet:
		return "listenersets/status"
	case controlplane.KindGatewayClass:
		return "gatewayclasses/status"
	case controlplane.KindXBackendTrafficPolicy:
		return "xbackendtrafficpolicies/status"
	default:
		return "backendtlspolicies/status"
	}
}

func (w *gatewayStatusWriter) get(ctx context.Context, st controlplane.ObjectStatus) (runtime.Object, error) {
	v1 := w.gw.GatewayV1()
	switch st.Kind {
	case controlplane.KindHTTPRoute:
		return v1.HTTPRoutes(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindGRPCRoute:
		return v1.GRPCRoutes(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindTLSRoute:
		return v1.TLSRoutes(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindTCPRoute:
		return v1.TCPRoutes(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindGateway:
		return v1.Gateways(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindListenerSet:
		return v1.ListenerSets(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindGatewayClass:
		return v1.GatewayClasses().Get(ctx, st.Name, metav1.GetOptions{})
	case controlplane.KindXBackendTrafficPolicy:
		return w.gw.ExperimentalV1alpha1().XBackendTrafficPolicies(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	default:
		return v1.BackendTLSPolicies(st.Namespace).Get(ctx, st.Name, metav1.GetOptions{})
	}
}

func (w *gatewayStatusWriter) update(ctx context.Context, obj runtime.Object) error {
	v1 := w.gw.GatewayV1()
	var err error
	switch o := obj.(type) {
	case *gatewayv1.HTTPRoute:
		_, err = v1.HTTPRoutes(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.GRPCRoute:
		_, err = v1.GRPCRoutes(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.TLSRoute:
		_, err = v1.TLSRoutes(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.TCPRoute:
		_, err = v1.TCPRoutes(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.BackendTLSPolicy:
		_, err = v1.BackendTLSPolicies(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.Gateway:
		_, err = v1.Gateways(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.ListenerSet:
		_, err = v1.ListenerSets(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayv1.GatewayClass:
		_, err = v1.GatewayClasses().UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	case *gatewayxv1alpha1.XBackendTrafficPolicy:
		_, err = w.gw.ExperimentalV1alpha1().XBackendTrafficPolicies(o.Namespace).UpdateStatus(ctx, o, metav1.UpdateOptions{FieldManager: "meshd"})
	}
	return err
}

// withStatus returns a copy of obj (an HTTPRoute, GRPCRoute, TLSRoute,
// TCPRoute, BackendTLSPolicy, XBackendTrafficPolicy, Gateway, ListenerSet
// or GatewayClass)
// carrying st merged into its status, and whether that differs from obj's
// status. An object whose generation is not the one st was computed for
// is left alone: st is stale, or the object is, and the next build brings
// the right one.
func withStatus(obj runtime.Object, st controlplane.ObjectStatus, now metav1.Time) (runtime.Object, bool) {
	// The merge reads the cached object and builds new lists: the object
	// is copied only when its status changes, not on every build.
	if ps := policyStatus(obj); ps != nil {
		merged, changed := mergeIfChanged(obj.(metav1.Object).GetGeneration(), ps.Ancestors, st.Generation, st.Ancestors, now)
		if !changed {
			return nil, false
		}
		out := obj.DeepCopyObject()
		policyStatus(out).Ancestors = merged
		return out, true
	}
	switch obj.(type) {
	case *gatewayv1.Gateway, *gatewayv1.ListenerSet, *gatewayv1.GatewayClass:
		return withOwnedStatus(obj, st, now) // gatewayclassstatus.go
	}
	var route *gatewayv1.RouteStatus // of the cached object: read only
	switch o := obj.(type) {
	case *gatewayv1.HTTPRoute:
		route = &o.Status.RouteStatus
	case *gatewayv1.GRPCRoute:
		route = &o.Status.RouteStatus
	case *gatewayv1.TLSRoute:
		route = &o.Status.RouteStatus
	case *gatewayv1.TCPRoute:
		route = &o.Status.RouteStatus
	default:
		return nil, false
	}
	merged, changed := mergeIfChanged(obj.(metav1.Object).GetGeneration(), route.Parents, st.Generation, st.Parents, now)
	if !changed {
		return nil, false
	}
	out := obj.DeepCopyObject()
	switch o := out.(type) {
	case *gatewayv1.HTTPRoute:
		o.Status.Parents = merged
	case *gatewayv1.GRPCRoute:
		o.Status.Parents = merged
	case *gatewayv1.TLSRoute:
		o.Status.Parents = merged
	case *gatewayv1.TCPRoute:
		o.Status.Parents = merged
	}
	return out, true
}

// policyStatus is the status of obj when it is a policy meshd writes
// status.ancestors of (a BackendTLSPolicy or an XBackendTrafficPolicy),
// nil otherwise.
func policyStatus(obj runtime.Object) *gatewayv1.PolicyStatus {
	switch o := obj.(type) {
	case *gatewayv1.BackendTLSPolicy:
		return &o.Status
	case *gatewayxv1alpha1.XBackendTrafficPolicy:
		return &o.Status
	}
	return nil
}

// noteLeftOut warns when not all of st's entries fit in obj's status
// (entriesLeftOut), once per object, generation and count, so that a
// status that stays over the limit does not warn on every build.
func (w *gatewayStatusWriter) noteLeftOut(obj runtime.Object, st controlplane.ObjectStatus) {
	var n, limit, others int
	switch o := obj.(type) {
	case *gatewayv1.HTTPRoute:
		n, limit, others = entriesLeftOut(o.Status.Parents, st.Parents)
	case *gatewayv1.GRPCRoute:
		n, limit, others = entriesLeftOut(o.Status.Parents, st.Parents)
	case *gatewayv1.TLSRoute:
		n, limit, others = entriesLeftOut(o.Status.Parents, st.Parents)
	case *gatewayv1.TCPRoute:
		n, limit, others = entriesLeftOut(o.Status.Parents, st.Parents)
	default:
		ps := policyStatus(obj)
		if ps == nil {
			return
		}
		n, limit, others = entriesLeftOut(ps.Ancestors, st.Ancestors)
	}
	key := st.Kind + "/" + st.Namespace + "/" + st.Name
	w.warnedMu.Lock()
	defer w.warnedMu.Unlock()
	if n == 0 {
		delete(w.warned, key)
		return
	}
	now := leftOutWarning{generation: st.Generation, leftOut: n}
	if w.warned[key] == now {
		return
	}
	if w.warned == nil {
		w.warned = map[string]leftOutWarning{}
	}
	w.warned[key] = now
	w.log.Warn("write Gateway API status: more entries than the CRD's maxItems allow; meshd's last ones, in spec order, are left out",
		"kind", st.Kind, "namespace", st.Namespace, "name", st.Name, "generation", st.Generation,
		"maxItems", limit, "otherControllersEntries", others, "meshdEntries", len(st.Parents)+len(st.Ancestors), "leftOut", n)
}

// maxParents and maxAncestors are the CRDs' maxItems of a route's
// status.parents and a policy's status.ancestors.
const (
	maxParents   = 32
	maxAncestors = 16
)

// maxEntries is the CRD's maxItems for a list of S.
func maxEntries[S statusEntry]() int {
	var s S
	if _, ok := any(s).(gatewayv1.PolicyAncestorStatus); ok {
		return maxAncestors
	}
	return maxParents
}

// entriesLeftOut says how many of desired (meshd's entries) do not fit
// beside the entries of other controllers in current, within limit, the
// CRD's maxItems; others is how many entries those controllers have.
func entriesLeftOut[S statusEntry](current, desired []S) (n, limit, others int) {
	limit = maxEntries[S]()
	for _, e := range current {
		if _, c, _ := entryParts(&e); c != controlplane.ControllerName {
			others++
		}
	}
	room := max(limit-others, 0)
	return max(len(desired)-room, 0), limit, others
}

// statusEntry is an entry of status.parents or status.ancestors.
type statusEntry interface {
	gatewayv1.RouteParentStatus | gatewayv1.PolicyAncestorStatus
}

// entryParts gives access to what merging reads and writes in an entry.
func entryParts[S statusEntry](e *S) (ref gatewayv1.ParentReference, controller gatewayv1.GatewayController, conds *[]metav1.Condition) {
	switch v := any(e).(type) {
	case *gatewayv1.RouteParentStatus:
		return v.ParentRef, v.ControllerName, &v.Conditions
	case *gatewayv1.PolicyAncestorStatus:
		return v.AncestorRef, v.ControllerName, &v.Conditions
	}
	panic("unreachable")
}

// mergeIfChanged merges desired (computed for generation want) into the
// object's current entries (at generation gen); changed is false when the
// generations differ or the merge says what current says.
func mergeIfChanged[S statusEntry](gen int64, current []S, want int64, desired []S, now metav1.Time) (merged []S, changed bool) {
	if gen != want {
		return nil, false
	}
	merged = mergeEntries(current, desired, now)
	return merged, !sameIgnoringTimes(current, merged)
}

// mergeEntries returns current with meshd's entries replaced by desired:
// the entries of other controllers first, as they were, then desired in
// its order, as many as fit within the CRD's maxItems (entriesLeftOut).
// Conditions keep their lastTransitionTime where status and reason did
// not change (mergeConditions). Never nil: the field is required.
func mergeEntries[S statusEntry](current, desired []S, now metav1.Time) []S {
	if n, _, _ := entriesLeftOut(current, desired); n > 0 {
		desired = desired[:len(desired)-n]
	}
	out := make([]S, 0, len(current)+len(desired))
	var ours []S
	for _, e := range current {
		if _, c, _ := entryParts(&e); c == controlplane.ControllerName {
			ours = append(ours, e)
		} else {
			out = append(out, e)
		}
	}
	for _, d := range desired {
		ref, _, conds := entryParts(&d)
		var old []metav1.Condition
		for _, e := range ours {
			if r, _, c := entryParts(&e); reflect.DeepEqual(r, ref) {
				old = *c
				break
			}
		}
		*conds = mergeConditions(old, *conds, now)
		out = append(out, d)
	}
	return out
}

// mergeConditions stamps want's conditions: one whose type had the same
// status and reason in old keeps old's lastTransitionTime, any other
// gets now.
func mergeConditions(old, want []metav1.Condition, now metav1.Time) []metav1.Condition {
	out := make([]metav1.Condition, len(want))
	for i, c := range want {
		c.LastTransitionTime = now
		for _, o := range old {
			if o.Type == c.Type && o.Status == c.Status && o.Reason == c.Reason {
				c.LastTransitionTime = o.LastTransitionTime
			}
		}
		out[i] = c
	}
	return out
}

// sameIgnoringTimes compares two parents or ancestors lists without their
// conditions' lastTransitionTimes, so that the same status computed at
// another moment (or by another replica) is not written again.
func sameIgnoringTimes[S statusEntry](a, b []S) bool {
	if len(a) != len(b) {
		return false
	}
	return reflect.DeepEqual(withoutTimes(a), withoutTimes(b))
}

func withoutTimes[S statusEntry](list []S) []S {
	out := make([]S, len(list))
	for i, e := range list {
		_, _, conds := entryParts(&e)
		*conds = clearTimes(*conds)
		out[i] = e
	}
	return out
}

func clearTimes(cs []metav1.Condition) []metav1.Condition {
	out := make([]metav1.Condition, len(cs))
	for i, c := range cs {
		c.LastTransitionTime = metav1.Time{}
		out[i] = c
	}
	return out
}
