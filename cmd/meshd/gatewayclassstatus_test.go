package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

// TestWithOwnedStatus: meshd writes a Gateway's status.listeners and
// leaves the deployer's conditions and addresses as they are; it writes a
// GatewayClass's Accepted and SupportedVersion and keeps other conditions;
// an unchanged status (times aside) or another generation is no write.
func TestWithOwnedStatus(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	later := metav1.NewTime(t0.Add(time.Hour))
	mesh := gatewayv1.ListenerStatus{Name: "mesh", Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 1}}}
	gwStatus := controlplane.ObjectStatus{Kind: controlplane.KindGateway, Namespace: "bookinfo", Name: "waypoint", Generation: 1, Listeners: []gatewayv1.ListenerStatus{mesh}}
	deployerCond := routeCond("Programmed", "True", "Programmed", t0)
	gateway := func(gen int64, listeners ...gatewayv1.ListenerStatus) *gatewayv1.Gateway {
		gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "waypoint", Generation: gen}}
		gw.Status.Conditions = []metav1.Condition{deployerCond}
		gw.Status.Listeners = listeners
		return gw
	}
	written := mesh
	written.Conditions = []metav1.Condition{routeCond("Accepted", "True", "Accepted", t0)}
	written.Conditions[0].ObservedGeneration = 1
	stale := mesh
	stale.Name = "removed-from-spec"

	acceptedSupported := []metav1.Condition{
		{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 2},
		{Type: "SupportedVersion", Status: "True", Reason: "SupportedVersion", ObservedGeneration: 2},
	}
	classStatus := controlplane.ObjectStatus{Kind: controlplane.KindGatewayClass, Name: "meshlet", Generation: 2, Conditions: acceptedSupported}
	class := func(gen int64, conds ...metav1.Condition) *gatewayv1.GatewayClass {
		gc := &gatewayv1.GatewayClass{ObjectMeta: metav1.ObjectMeta{Name: "meshlet", Generation: gen}}
		gc.Status.Conditions = conds
		return gc
	}
	// What the CRD defaults a new class's status to, and a condition of
	// another writer's type.
	pending := metav1.Condition{Type: "Accepted", Status: "Unknown", Reason: "Pending", Message: "Waiting for controller"}
	foreign := routeCond("example.com/Audited", "True", "Audited", t0)
	stampedAt := func(cs []metav1.Condition, at metav1.Time) []metav1.Condition {
		out := make([]metav1.Condition, len(cs))
		for i, c := range cs {
			c.LastTransitionTime = at
			out[i] = c
		}
		return out
	}
	stamped := func(cs []metav1.Condition) []metav1.Condition { return stampedAt(cs, later) }
	// The class given a parametersRef (generation 3): Accepted turns False
	// InvalidParameters now; SupportedVersion keeps its time.
	invalidParams := []metav1.Condition{
		{Type: "Accepted", Status: "False", Reason: "InvalidParameters", ObservedGeneration: 3},
		{Type: "SupportedVersion", Status: "True", Reason: "SupportedVersion", ObservedGeneration: 3},
	}
	invalidStatus := controlplane.ObjectStatus{Kind: controlplane.KindGatewayClass, Name: "meshlet", Generation: 3, Conditions: invalidParams}
	invalidWritten := []metav1.Condition{stamped(invalidParams[:1])[0], stampedAt(invalidParams[1:], metav1.NewTime(t0))[0]}

	// meshd's own Gateway condition types (spec.tls): added beside the
	// deployer's, kept in time, removed once they no longer apply.
	insecure := metav1.Condition{Type: "InsecureFrontendValidationMode", Status: "True", Reason: "ConfigurationChanged", ObservedGeneration: 1}
	withInsecure := gwStatus
	withInsecure.Conditions = []metav1.Condition{insecure}
	insecureWritten := stampedAt([]metav1.Condition{insecure}, metav1.NewTime(t0))[0]
	gatewayWith := func(conds ...metav1.Condition) *gatewayv1.Gateway {
		gw := gateway(1, written)
		gw.Status.Conditions = append(gw.Status.Conditions, conds...)
		return gw
	}

	tests := []struct {
		name          string
		obj           any
		st            controlplane.ObjectStatus
		wantChanged   bool
		wantListeners []gatewayv1.ListenerStatus
		wantConds     []metav1.Condition
	}{
		{"gateway without listeners: written, the deployer's conditions kept", gateway(1), gwStatus, true,
			[]gatewayv1.ListenerStatus{{Name: "mesh", Conditions: stamped(mesh.Conditions)}}, []metav1.Condition{deployerCond}},
		{"gateway already says it an hour ago: no write", gateway(1, written), gwStatus, false, nil, nil},
		{"a listener gone from the spec is dropped, the time of one kept", gateway(1, written, stale), gwStatus, true,
			[]gatewayv1.ListenerStatus{written}, []metav1.Condition{deployerCond}},
		{"gateway at another generation: no write", gateway(2), gwStatus, false, nil, nil},
		{"gateway's insecure frontend validation: its condition added", gateway(1, written), withInsecure, true,
			[]gatewayv1.ListenerStatus{written}, []metav1.Condition{deployerCond, stamped([]metav1.Condition{insecure})[0]}},
		{"gateway's condition already there: no write", gatewayWith(insecureWritten), withInsecure, false, nil, nil},
		{"gateway's insecure mode gone: its condition removed, the deployer's kept", gatewayWith(insecureWritten), gwStatus, true,
			[]gatewayv1.ListenerStatus{written}, []metav1.Condition{deployerCond}},
		{"new class: the CRD's Pending replaced", class(2, pending), classStatus, true, nil, stamped(acceptedSupported)},
		{"class with another writer's condition: kept", class(2, foreign), classStatus, true, nil, append([]metav1.Condition{foreign}, stamped(acceptedSupported)...)},
		{"class already accepted an hour ago: no write", class(2, stampedAt(acceptedSupported, metav1.NewTime(t0))...), classStatus, false, nil, nil},
		{"class at another generation: no write", class(3), classStatus, false, nil, nil},
		{"class given a parametersRef: Accepted False InvalidParameters from now", class(3, stampedAt(acceptedSupported, metav1.NewTime(t0))...), invalidStatus, true, nil, invalidWritten},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out any
			var changed bool
			switch o := tt.obj.(type) {
			case *gatewayv1.Gateway:
				obj, ch := withStatus(o, tt.st, later)
				out, changed = obj, ch
			case *gatewayv1.GatewayClass:
				obj, ch := withStatus(o, tt.st, later)
				out, changed = obj, ch
			}
			if changed != tt.wantChanged {
				t.Fatalf("withStatus changed = %v; want %v", changed, tt.wantChanged)
			}
			if !changed {
				return
			}
			switch o := out.(type) {
			case *gatewayv1.Gateway:
				if diff := cmp.Diff(tt.wantListeners, o.Status.Listeners); diff != "" {
					t.Errorf("status.listeners mismatch (-want +got):\n%s", diff)
				}
				if diff := cmp.Diff(tt.wantConds, o.Status.Conditions); diff != "" {
					t.Errorf("status.conditions (the deployer's) mismatch (-want +got):\n%s", diff)
				}
			case *gatewayv1.GatewayClass:
				if diff := cmp.Diff(tt.wantConds, o.Status.Conditions); diff != "" {
					t.Errorf("status.conditions mismatch (-want +got):\n%s", diff)
				}
			}
		})
	}
}

// TestWithStatusListenerSet: meshd writes a ListenerSet's Accepted and
// Programmed conditions and its status.listeners, keeping a condition's
// lastTransitionTime while its status and reason stay, and conditions of
// other types as they are; a status for another generation, or one the
// set already shows (times aside), is no write.
func TestWithStatusListenerSet(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	later := metav1.NewTime(t0.Add(time.Hour))
	epoch := metav1.NewTime(time.Unix(0, 0).UTC())
	cond := func(typ string, status metav1.ConditionStatus, reason string, at metav1.Time) metav1.Condition {
		return metav1.Condition{Type: typ, Status: status, Reason: reason, ObservedGeneration: 1, LastTransitionTime: at}
	}
	// What the CRD defaults a new set's status to.
	pending := []metav1.Condition{
		{Type: "Accepted", Status: "Unknown", Reason: "Pending", Message: "Waiting for controller", LastTransitionTime: epoch},
		{Type: "Programmed", Status: "Unknown", Reason: "Pending", Message: "Waiting for controller", LastTransitionTime: epoch},
	}
	foreign := cond("example.com/Audited", "True", "Audited", t0)
	group := gatewayv1.Group(gatewayv1.GroupName)
	httpKinds := []gatewayv1.RouteGroupKind{{Group: &group, Kind: "HTTPRoute"}, {Group: &group, Kind: "GRPCRoute"}}
	// The build's status: the set and its one listener accepted and
	// programmed, two routes attached.
	listener := func(resolved metav1.ConditionStatus, reason string, attached int32, at, resolvedAt metav1.Time) gatewayv1.ListenerStatus {
		return gatewayv1.ListenerStatus{Name: "http", SupportedKinds: httpKinds, AttachedRoutes: attached, Conditions: []metav1.Condition{
			cond("Accepted", "True", "Accepted", at), cond("Programmed", "True", "Programmed", at), cond("ResolvedRefs", resolved, reason, resolvedAt)}}
	}
	setConds := func(at metav1.Time) []metav1.Condition {
		return []metav1.Condition{cond("Accepted", "True", "Accepted", at), cond("Programmed", "True", "Programmed", at)}
	}
	status := func(l gatewayv1.ListenerStatus) controlplane.ObjectStatus {
		return controlplane.ObjectStatus{Kind: controlplane.KindListenerSet, Namespace: "team-a", Name: "team-a", Generation: 1,
			Conditions: setConds(metav1.Time{}), Listeners: []gatewayv1.ListenerStatus{l}}
	}
	st := status(listener("True", "ResolvedRefs", 2, metav1.Time{}, metav1.Time{}))
	entry := func(l gatewayv1.ListenerStatus) gatewayv1.ListenerEntryStatus {
		return gatewayv1.ListenerEntryStatus(l)
	}
	set := func(gen int64, conds []metav1.Condition, listeners ...gatewayv1.ListenerEntryStatus) *gatewayv1.ListenerSet {
		ls := &gatewayv1.ListenerSet{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "team-a", Generation: gen}}
		ls.Status.Conditions, ls.Status.Listeners = conds, listeners
		return ls
	}
	writtenAtT0 := entry(listener("True", "ResolvedRefs", 2, t0, t0))
	gone := writtenAtT0
	gone.Name = "removed-from-spec"

	tests := []struct {
		name          string
		obj           *gatewayv1.ListenerSet
		st            controlplane.ObjectStatus
		wantChanged   bool
		wantConds     []metav1.Condition
		wantListeners []gatewayv1.ListenerEntryStatus
	}{
		{"new set: the CRD's Pending replaced, its listener written", set(1, pending), st, true,
			setConds(later), []gatewayv1.ListenerEntryStatus{entry(listener("True", "ResolvedRefs", 2, later, later))}},
		{"already written an hour ago: no write", set(1, setConds(t0), writtenAtT0), st, false, nil, nil},
		{"a listener's reference broken: that condition from now, the others keep their time",
			set(1, setConds(t0), writtenAtT0), status(listener("False", "InvalidCertificateRef", 2, metav1.Time{}, metav1.Time{})), true,
			setConds(t0), []gatewayv1.ListenerEntryStatus{entry(listener("False", "InvalidCertificateRef", 2, t0, later))}},
		{"a route more attached: written, times kept", set(1, setConds(t0), writtenAtT0),
			status(listener("True", "ResolvedRefs", 3, metav1.Time{}, metav1.Time{})), true,
			setConds(t0), []gatewayv1.ListenerEntryStatus{entry(listener("True", "ResolvedRefs", 3, t0, t0))}},
		{"another writer's condition kept, in its place", set(1, append([]metav1.Condition{foreign}, pending...)), st, true,
			append([]metav1.Condition{foreign}, setConds(later)...), []gatewayv1.ListenerEntryStatus{entry(listener("True", "ResolvedRefs", 2, later, later))}},
		{"another writer's condition beside meshd's written ones: no write", set(1, append(setConds(t0), foreign), writtenAtT0), st, false, nil, nil},
		{"a listener gone from the spec is dropped", set(1, setConds(t0), writtenAtT0, gone), st, true,
			setConds(t0), []gatewayv1.ListenerEntryStatus{writtenAtT0}},
		{"set at another generation: no write", set(2, pending), st, false, nil, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := tt.obj.DeepCopy()
			out, changed := withStatus(tt.obj, tt.st, later)
			if diff := cmp.Diff(before, tt.obj); diff != "" {
				t.Errorf("withStatus modified the informer's object; want a copy (-before +after):\n%s", diff)
			}
			if changed != tt.wantChanged {
				t.Fatalf("withStatus changed = %v; want %v", changed, tt.wantChanged)
			}
			if !changed {
				return
			}
			ls, ok := out.(*gatewayv1.ListenerSet)
			if !ok {
				t.Fatalf("withStatus returned %T; want *ListenerSet", out)
			}
			if diff := cmp.Diff(tt.wantConds, ls.Status.Conditions); diff != "" {
				t.Errorf("status.conditions mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.wantListeners, ls.Status.Listeners); diff != "" {
				t.Errorf("status.listeners mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWithStatusAttachedListenerSets: a Gateway's status.attachedListenerSets
// is set from the build's count, a change of it alone is a write, and a
// status without a count leaves the Gateway's as it is.
func TestWithStatusAttachedListenerSets(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	later := metav1.NewTime(t0.Add(time.Hour))
	count := func(n int32) *int32 { return &n }
	deployerCond := routeCond("Programmed", "True", "Programmed", t0.Time)
	http := gatewayv1.ListenerStatus{Name: "http", Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 1, LastTransitionTime: t0}}}
	gateway := func(attached *int32) *gatewayv1.Gateway {
		gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "ingress", Name: "ingress", Generation: 1}}
		gw.Status.Conditions = []metav1.Condition{deployerCond}
		gw.Status.Listeners = []gatewayv1.ListenerStatus{http}
		gw.Status.AttachedListenerSets = attached
		return gw
	}
	st := func(attached *int32) controlplane.ObjectStatus {
		desired := http
		desired.Conditions = clearTimes(http.Conditions)
		return controlplane.ObjectStatus{Kind: controlplane.KindGateway, Namespace: "ingress", Name: "ingress", Generation: 1,
			Listeners: []gatewayv1.ListenerStatus{desired}, AttachedListenerSets: attached}
	}
	tests := []struct {
		name        string
		gw          *gatewayv1.Gateway
		st          controlplane.ObjectStatus
		wantChanged bool
		want        *int32
	}{
		{"first count: written", gateway(nil), st(count(2)), true, count(2)},
		{"none attached: written as 0", gateway(nil), st(count(0)), true, count(0)},
		{"count unchanged: no write", gateway(count(2)), st(count(2)), false, nil},
		{"a set detached, nothing else changed: written", gateway(count(2)), st(count(1)), true, count(1)},
		{"no count in the status: the Gateway's left as it is", gateway(count(2)), st(nil), false, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			out, changed := withStatus(tt.gw, tt.st, later)
			if changed != tt.wantChanged {
				t.Fatalf("withStatus changed = %v; want %v", changed, tt.wantChanged)
			}
			if !changed {
				return
			}
			got := out.(*gatewayv1.Gateway).Status
			if diff := cmp.Diff(tt.want, got.AttachedListenerSets); diff != "" {
				t.Errorf("status.attachedListenerSets mismatch (-want +got):\n%s", diff)
			}
			if diff := cmp.Diff(tt.gw.Status.Listeners, got.Listeners); diff != "" {
				t.Errorf("status.listeners changed (-before +after):\n%s", diff)
			}
			if diff := cmp.Diff([]metav1.Condition{deployerCond}, got.Conditions); diff != "" {
				t.Errorf("status.conditions (the deployer's) changed (-want +got):\n%s", diff)
			}
		})
	}

	// The build's count is not shared with what is written.
	n := count(2)
	out, _ := withStatus(gateway(nil), st(n), later)
	*n = 5
	if got := out.(*gatewayv1.Gateway).Status.AttachedListenerSets; got == nil || *got != 2 {
		t.Errorf("status.attachedListenerSets = %v after the build's value changed; want 2, a copy", got)
	}
}
