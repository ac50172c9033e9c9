package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"log/slog"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

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

// TestMergeEntriesMaxItems: what is written never holds more entries than
// the CRD's maxItems (32 parents, 16 ancestors), which UpdateStatus would
// refuse whole: the other controllers' entries are kept, first, and as
// many of meshd's as fit, in the build's order.
func TestMergeEntriesMaxItems(t *testing.T) {
	now := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	parent := func(controller gatewayv1.GatewayController, name string) gatewayv1.RouteParentStatus {
		return gatewayv1.RouteParentStatus{ParentRef: svcParentRef(name), ControllerName: controller, Conditions: []metav1.Condition{}}
	}
	const envoy = "gateway.envoyproxy.io/gatewayclass-controller"
	list := func(controller gatewayv1.GatewayController, prefix string, n int) []gatewayv1.RouteParentStatus {
		var out []gatewayv1.RouteParentStatus
		for i := range n {
			out = append(out, parent(controller, fmt.Sprintf("%s%d", prefix, i)))
		}
		return out
	}
	ours := func(n int) []gatewayv1.RouteParentStatus { return list(controlplane.ControllerName, "svc", n) }
	tests := []struct {
		name             string
		current, desired []gatewayv1.RouteParentStatus
		want             []gatewayv1.RouteParentStatus
		wantLeftOut      int
	}{
		{"5 others and 30 of meshd's: meshd's first 27", list(envoy, "eg", 5), ours(30), append(list(envoy, "eg", 5), ours(27)...), 3},
		{"exactly 32: all written", list(envoy, "eg", 2), ours(30), append(list(envoy, "eg", 2), ours(30)...), 0},
		{"meshd's old entries do not count", append(ours(32), parent(envoy, "eg0")), ours(32), append(list(envoy, "eg", 1), ours(31)...), 1},
		{"others alone over the limit: kept, meshd's left out", list(envoy, "eg", 33), ours(1), list(envoy, "eg", 33), 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := mergeEntries(tt.current, tt.desired, now)
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("mergeEntries mismatch (-want +got):\n%s", diff)
			}
			if n, _, _ := entriesLeftOut(tt.current, tt.desired); n != tt.wantLeftOut {
				t.Errorf("entriesLeftOut = %d; want %d", n, tt.wantLeftOut)
			}
		})
	}

	// Ancestors: 16.
	var others, mine []gatewayv1.PolicyAncestorStatus
	for i := range 10 {
		others = append(others, gatewayv1.PolicyAncestorStatus{AncestorRef: svcParentRef(fmt.Sprint("gw", i)), ControllerName: "istio.io/gateway-controller", Conditions: []metav1.Condition{}})
	}
	for i := range 8 {
		mine = append(mine, gatewayv1.PolicyAncestorStatus{AncestorRef: svcParentRef(fmt.Sprint("svc", i)), ControllerName: controlplane.ControllerName, Conditions: []metav1.Condition{}})
	}
	if diff := cmp.Diff(append(slices.Clone(others), mine[:6]...), mergeEntries(others, mine, now)); diff != "" {
		t.Errorf("mergeEntries(10 others' ancestors, 8 of meshd's) mismatch (-want +got):\n%s", diff)
	}
}

// TestNoteLeftOut: entries left out are warned about once per object
// generation, not on every build.
func TestNoteLeftOut(t *testing.T) {
	var buf bytes.Buffer
	w := newGatewayStatusWriter(nil, slog.New(slog.NewJSONHandler(&buf, nil)))
	route := &gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "r", Generation: 2}}
	for i := range 5 {
		route.Status.Parents = append(route.Status.Parents, gatewayv1.RouteParentStatus{ParentRef: svcParentRef(fmt.Sprint("eg", i)), ControllerName: "gateway.envoyproxy.io/gatewayclass-controller"})
	}
	st := func(gen int64, n int) controlplane.ObjectStatus {
		s := controlplane.ObjectStatus{Kind: controlplane.KindHTTPRoute, Namespace: "bookinfo", Name: "r", Generation: gen}
		for i := range n {
			s.Parents = append(s.Parents, gatewayv1.RouteParentStatus{ParentRef: svcParentRef(fmt.Sprint("svc", i)), ControllerName: controlplane.ControllerName})
		}
		return s
	}
	warnings := func() []map[string]any {
		var out []map[string]any
		dec := json.NewDecoder(bytes.NewReader(buf.Bytes()))
		for {
			var m map[string]any
			if err := dec.Decode(&m); err != nil {
				return out
			}
			out = append(out, m)
		}
	}
	for _, step := range []struct {
		st   controlplane.ObjectStatus
		want int // warnings logged so far
	}{
		{st(2, 30), 1}, // 3 left out
		{st(2, 30), 1}, // the next build: said already
		{st(3, 30), 2}, // a new generation
		{st(3, 10), 2}, // all fit
		{st(3, 30), 3}, // over again
	} {
		w.noteLeftOut(route, step.st)
		if got := warnings(); len(got) != step.want {
			t.Fatalf("after noteLeftOut(generation %d, %d parents): %d warnings %v; want %d", step.st.Generation, len(step.st.Parents), len(got), got, step.want)
		}
	}
	first := warnings()[0]
	if first["level"] != "WARN" || first["leftOut"] != 3.0 || first["maxItems"] != 32.0 || first["name"] != "r" {
		t.Errorf("warning = %v; want level WARN, leftOut 3, maxItems 32, name r", first)
	}
}

// TestWriteListenerSetStatus: through the API, a ListenerSet gets meshd's
// conditions and listeners and its Gateway the count of attached sets, as
// kubectl get shows them; writing the same build again updates nothing.
func TestWriteListenerSetStatus(t *testing.T) {
	ctx := context.Background()
	epoch := metav1.NewTime(time.Unix(0, 0).UTC())
	ls := &gatewayv1.ListenerSet{ObjectMeta: metav1.ObjectMeta{Namespace: "team-a", Name: "team-a", Generation: 1}}
	ls.Status.Conditions = []metav1.Condition{ // the CRD's default
		{Type: "Accepted", Status: "Unknown", Reason: "Pending", Message: "Waiting for controller", LastTransitionTime: epoch},
		{Type: "Programmed", Status: "Unknown", Reason: "Pending", Message: "Waiting for controller", LastTransitionTime: epoch},
	}
	gw := &gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Namespace: "ingress", Name: "ingress", Generation: 3}}
	// Created through the typed client: the fakes' trackers file objects
	// handed to the constructor under the first version their scheme knows
	// the kind at (v1beta1 for a Gateway), and NewClientset's field
	// management knows no v1 Gateway.
	client := gatewayfake.NewSimpleClientset()
	if _, err := client.GatewayV1().ListenerSets("team-a").Create(ctx, ls, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := client.GatewayV1().Gateways("ingress").Create(ctx, gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	inputs := func() *controlplane.Inputs {
		t.Helper()
		in := &controlplane.Inputs{}
		gotSet, err := client.GatewayV1().ListenerSets("team-a").Get(ctx, "team-a", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		gotGw, err := client.GatewayV1().Gateways("ingress").Get(ctx, "ingress", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range []runtime.Object{gotSet, gotGw} {
			if err := in.Add(o); err != nil {
				t.Fatal(err)
			}
		}
		return in
	}
	accepted := []metav1.Condition{
		{Type: "Accepted", Status: "True", Reason: "Accepted", Message: "attached to ingress/ingress", ObservedGeneration: 1},
		{Type: "Programmed", Status: "True", Reason: "Programmed", ObservedGeneration: 1},
	}
	group := gatewayv1.Group(gatewayv1.GroupName)
	listener := gatewayv1.ListenerStatus{Name: "http", SupportedKinds: []gatewayv1.RouteGroupKind{{Group: &group, Kind: "HTTPRoute"}}, AttachedRoutes: 1,
		Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 1}}}
	one := int32(1)
	status := []controlplane.ObjectStatus{
		{Kind: controlplane.KindListenerSet, Namespace: "team-a", Name: "team-a", Generation: 1, Conditions: accepted, Listeners: []gatewayv1.ListenerStatus{listener}},
		{Kind: controlplane.KindGateway, Namespace: "ingress", Name: "ingress", Generation: 3, AttachedListenerSets: &one},
	}
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	w := newGatewayStatusWriter(client, slog.New(slog.NewTextHandler(&bytes.Buffer{}, nil)))
	w.now = func() time.Time { return now }
	w.writeBatch(ctx, statusBatch{status: status, in: inputs()})

	gotSet, err := client.GatewayV1().ListenerSets("team-a").Get(ctx, "team-a", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	stamped := metav1.NewTime(now)
	wantConds := []metav1.Condition{accepted[0], accepted[1]}
	wantConds[0].LastTransitionTime, wantConds[1].LastTransitionTime = stamped, stamped
	if diff := cmp.Diff(wantConds, gotSet.Status.Conditions); diff != "" {
		t.Errorf("ListenerSet status.conditions (-want +got):\n%s", diff)
	}
	wantListener := gatewayv1.ListenerEntryStatus{Name: "http", SupportedKinds: listener.SupportedKinds, AttachedRoutes: 1,
		Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 1, LastTransitionTime: stamped}}}
	if diff := cmp.Diff([]gatewayv1.ListenerEntryStatus{wantListener}, gotSet.Status.Listeners); diff != "" {
		t.Errorf("ListenerSet status.listeners (-want +got):\n%s", diff)
	}
	gotGw, err := client.GatewayV1().Gateways("ingress").Get(ctx, "ingress", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := gotGw.Status.AttachedListenerSets; got == nil || *got != 1 {
		t.Errorf("Gateway status.attachedListenerSets = %v; want 1", got)
	}

	// The next build, an hour on, says the same: nothing is written.
	now = now.Add(time.Hour)
	client.ClearActions()
	w.writeBatch(ctx, statusBatch{status: status, in: inputs()})
	for _, a := range client.Actions() {
		if a.GetVerb() == "update" {
			t.Errorf("second write of the same status: %s %s/%s; want no update", a.GetVerb(), a.GetResource().Resource, a.GetSubresource())
		}
	}

	// The set no longer programmed, written from an object read anew (as
	// after a conflict): Programmed from now, Accepted keeps its time.
	notProgrammed := status[0]
	notProgrammed.Conditions = []metav1.Condition{accepted[0], {Type: "Programmed", Status: "False", Reason: "Invalid", ObservedGeneration: 1}}
	w.write(ctx, notProgrammed, nil)
	if gotSet, err = client.GatewayV1().ListenerSets("team-a").Get(ctx, "team-a", metav1.GetOptions{}); err != nil {
		t.Fatal(err)
	}
	wantConds[1] = metav1.Condition{Type: "Programmed", Status: "False", Reason: "Invalid", ObservedGeneration: 1, LastTransitionTime: metav1.NewTime(now)}
	if diff := cmp.Diff(wantConds, gotSet.Status.Conditions); diff != "" {
		t.Errorf("ListenerSet status.conditions after Programmed turned False (-want +got):\n%s", diff)
	}
}

// TestWithStatusBackendTrafficPolicy: an XBackendTrafficPolicy's
// ancestors are merged as a BackendTLSPolicy's: meshd's entry written
// beside another controller's, nothing written when it already says it or
// when the policy is at another generation.
func TestWithStatusBackendTrafficPolicy(t *testing.T) {
	t0 := metav1.NewTime(time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC))
	other := gatewayv1.PolicyAncestorStatus{AncestorRef: gatewayv1.ParentReference{Name: "gw"}, ControllerName: "istio.io/gateway-controller", Conditions: []metav1.Condition{}}
	policy := &gatewayxv1alpha1.XBackendTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Name: "p", Namespace: "bookinfo", Generation: 2}}
	policy.Status.Ancestors = []gatewayv1.PolicyAncestorStatus{other}
	desired := controlplane.ObjectStatus{Kind: controlplane.KindXBackendTrafficPolicy, Namespace: "bookinfo", Name: "p", Generation: 2,
		Ancestors: []gatewayv1.PolicyAncestorStatus{{AncestorRef: svcParentRef("reviews"), ControllerName: controlplane.ControllerName,
			Conditions: []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 2}}}}}
	obj, changed := withStatus(policy, desired, t0)
	if !changed {
		t.Fatal("withStatus(policy without meshd's entry) changed = false; want a write")
	}
	got := obj.(*gatewayxv1alpha1.XBackendTrafficPolicy).Status.Ancestors
	if len(got) != 2 || got[0].ControllerName != other.ControllerName || got[1].ControllerName != controlplane.ControllerName || !got[1].Conditions[0].LastTransitionTime.Equal(&t0) {
		t.Errorf("written ancestors %+v; want the other controller's, then meshd's stamped", got)
	}
	if len(policy.Status.Ancestors) != 1 {
		t.Error("withStatus modified the informer's object; want a copy")
	}
	if _, changed := withStatus(obj, desired, metav1.NewTime(t0.Add(time.Hour))); changed {
		t.Error("withStatus(policy already saying it) changed = true; want no write")
	}
	stale := desired
	stale.Generation = 1
	if _, changed := withStatus(policy, stale, t0); changed {
		t.Error("withStatus(status of another generation) changed = true; want no write")
	}
}
