package main

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

func svcParentRef(name string) gatewayv1.ParentReference {
	g, k := gatewayv1.Group(""), gatewayv1.Kind("Service")
	return gatewayv1.ParentReference{Group: &g, Kind: &k, Name: gatewayv1.ObjectName(name)}
}

func routeCond(typ string, status metav1.ConditionStatus, reason string, at time.Time) metav1.Condition {
	return metav1.Condition{Type: typ, Status: status, Reason: reason, ObservedGeneration: 2, LastTransitionTime: metav1.NewTime(at)}
}

// TestMergeParents: meshd replaces only its own entries of status.parents,
// keeps other controllers' as they are, and keeps a condition's
// lastTransitionTime while its status and reason stay.
func TestMergeParents(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	now := metav1.NewTime(t0.Add(time.Hour))
	envoy := gatewayv1.RouteParentStatus{ParentRef: gatewayv1.ParentReference{Name: "eg"}, ControllerName: "gateway.envoyproxy.io/gatewayclass-controller",
		Conditions: []metav1.Condition{routeCond("Accepted", "True", "Accepted", t0)}}
	ours := func(name string, conds ...metav1.Condition) gatewayv1.RouteParentStatus {
		return gatewayv1.RouteParentStatus{ParentRef: svcParentRef(name), ControllerName: controlplane.ControllerName, Conditions: conds}
	}
	tests := []struct {
		name             string
		current, desired []gatewayv1.RouteParentStatus
		want             []gatewayv1.RouteParentStatus
	}{
		{"first write stamps now",
			nil,
			[]gatewayv1.RouteParentStatus{ours("reviews", routeCond("Accepted", "True", "Accepted", time.Time{}))},
			[]gatewayv1.RouteParentStatus{ours("reviews", routeCond("Accepted", "True", "Accepted", now.Time))}},
		{"another controller's entry is preserved, ours follow it",
			[]gatewayv1.RouteParentStatus{ours("old", routeCond("Accepted", "True", "Accepted", t0)), envoy},
			[]gatewayv1.RouteParentStatus{ours("reviews", routeCond("Accepted", "True", "Accepted", time.Time{}))},
			[]gatewayv1.RouteParentStatus{envoy, ours("reviews", routeCond("Accepted", "True", "Accepted", now.Time))}},
		{"unchanged status and reason keep their time; a changed one is stamped",
			[]gatewayv1.RouteParentStatus{ours("reviews", routeCond("Accepted", "True", "Accepted", t0), routeCond("ResolvedRefs", "True", "ResolvedRefs", t0))},
			[]gatewayv1.RouteParentStatus{ours("reviews", routeCond("Accepted", "True", "Accepted", time.Time{}), routeCond("ResolvedRefs", "False", "BackendNotFound", time.Time{}))},
			[]gatewayv1.RouteParentStatus{ours("reviews", routeCond("Accepted", "True", "Accepted", t0), routeCond("ResolvedRefs", "False", "BackendNotFound", now.Time))}},
		{"no parents served any more: ours removed, others kept",
			[]gatewayv1.RouteParentStatus{envoy, ours("reviews", routeCond("Accepted", "True", "Accepted", t0))},
			nil,
			[]gatewayv1.RouteParentStatus{envoy}},
		{"nothing at all stays an empty list, not null (the field is required)", nil, nil, []gatewayv1.RouteParentStatus{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeEntries(tt.current, tt.desired, now)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("mergeParents mismatch (-want +got):\n%s", diff)
			}
		})
	}
}

// TestWithStatus: an object is written only when its status would change
// (times aside), and never for another generation than the status was
// computed for; what is written keeps the others' entries.
func TestWithStatus(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	desired := controlplane.ObjectStatus{Kind: controlplane.KindHTTPRoute, Namespace: "bookinfo", Name: "r", Generation: 2,
		Parents: []gatewayv1.RouteParentStatus{{ParentRef: svcParentRef("reviews"), ControllerName: controlplane.ControllerName,
			Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 2}}}}}
	envoy := gatewayv1.RouteParentStatus{ParentRef: gatewayv1.ParentReference{Name: "eg"}, ControllerName: "gateway.envoyproxy.io/gatewayclass-controller"}
	route := func(gen int64, parents ...gatewayv1.RouteParentStatus) *gatewayv1.HTTPRoute {
		r := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "r", Generation: gen}}
		r.Status.Parents = parents
		return r
	}
	written := desired.Parents[0]
	written.Conditions = []metav1.Condition{routeCond("Accepted", "True", "Accepted", t0)}

	later := metav1.NewTime(t0.Add(time.Hour))
	if _, changed := withStatus(route(2, envoy, written), desired, later); changed {
		t.Error("withStatus(already written an hour ago) changed = true; want no write: only the time would differ")
	}
	if _, changed := withStatus(route(3, envoy), desired, later); changed {
		t.Error("withStatus(route at generation 3, status for 2) changed = true; want no write until the build for 3")
	}
	obj, changed := withStatus(route(2, envoy), desired, later)
	if !changed {
		t.Fatal("withStatus(route without meshd's entry) changed = false; want a write")
	}
	fresh := desired.Parents[0]
	fresh.Conditions = []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 2, LastTransitionTime: later}}
	if diff := cmp.Diff([]gatewayv1.RouteParentStatus{envoy, fresh}, obj.(*gatewayv1.HTTPRoute).Status.Parents); diff != "" {
		t.Errorf("written parents mismatch (-want +got):\n%s", diff)
	}
	in := route(2, envoy)
	withStatus(in, desired, later)
	if len(in.Status.Parents) != 1 {
		t.Error("withStatus modified the informer's object; want a copy")
	}
}

// TestMergeAncestors: the same rules for a BackendTLSPolicy's ancestors.
func TestMergeAncestors(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	other := gatewayv1.PolicyAncestorStatus{AncestorRef: gatewayv1.ParentReference{Name: "gw"}, ControllerName: "istio.io/gateway-controller"}
	mine := gatewayv1.PolicyAncestorStatus{AncestorRef: svcParentRef("reviews"), ControllerName: controlplane.ControllerName,
		Conditions: []metav1.Condition{routeCond("Accepted", "True", "Accepted", t0)}}
	want := mine
	desired := mine
	desired.Conditions = []metav1.Condition{routeCond("Accepted", "True", "Accepted", time.Time{})}
	got := mergeEntries([]gatewayv1.PolicyAncestorStatus{mine, other}, []gatewayv1.PolicyAncestorStatus{desired}, metav1.NewTime(t0.Add(time.Hour)))
	if diff := cmp.Diff([]gatewayv1.PolicyAncestorStatus{other, want}, got); diff != "" {
		t.Errorf("mergeAncestors mismatch (-want +got):\n%s", diff)
	}
	if !sameIgnoringTimes([]gatewayv1.PolicyAncestorStatus{other, want}, got) {
		t.Error("sameIgnoringTimes(equal lists) = false")
	}
}

// TestStatusSubmitNeverBlocks: a build hands its status over without
// waiting, the newest replacing one not yet written.
func TestStatusSubmitNeverBlocks(t *testing.T) {
	w := newGatewayStatusWriter(nil, nil)
	for i := range 3 {
		w.submit([]controlplane.ObjectStatus{{Name: string(rune('a' + i))}}, &controlplane.Inputs{})
	}
	b := <-w.queue
	if len(b.status) != 1 || b.status[0].Name != "c" {
		t.Errorf("queued status = %+v; want only the last build's", b.status)
	}
}
