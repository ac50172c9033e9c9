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
