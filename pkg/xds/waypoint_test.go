package xds_test

import (
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/xds/modelview"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// TestWaypointConfig: a waypoint gets its own L7 config and the policies
// that target it, exactly as meshd's model has them; a node agent may not
// subscribe to waypoint configs.
func TestWaypointConfig(t *testing.T) {
	wpName := model.NamespacedName{Namespace: "ns1", Name: "waypoint"}
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", Port: 80, VirtualHosts: []model.VirtualHost{{
			Name: "web", Domains: []string{"web.ns1.svc.cluster.local"},
			Routes: []model.L7Route{{Name: "r0", Destinations: []model.WeightedDestination{{Cluster: "web", Weight: 100}}, Timeout: 3 * time.Second}},
		}}}},
		Clusters: []model.L7Cluster{{Name: "web", Endpoints: []model.L7Endpoint{{Address: "198.18.0.10:8080"}}}},
	}
	targeted := &policy.Policy{Name: "wp-deny", Namespace: "ns1", Action: policy.Deny, Rules: []policy.Rule{{To: []policy.Operation{{Methods: []string{"DELETE"}}}}}}
	other := &policy.Policy{Name: "other-wp", Namespace: "ns1", Action: policy.Deny}
	snap := model.NewSnapshot(model.SnapshotInput{
		Waypoints: []*model.Waypoint{{Name: "waypoint", Namespace: "ns1", For: model.WaypointForService}, {Name: "other", Namespace: "ns1"}},
		L7:        map[model.NamespacedName]*model.L7Config{wpName: l7, {Namespace: "ns1", Name: "other"}: {}},
		AuthorizationPolicies: []*model.AuthorizationPolicy{
			{Policy: targeted, Targets: []model.PolicyTarget{{Kind: "Gateway", Namespace: "ns1", Name: "waypoint"}}},
			{Policy: other, Targets: []model.PolicyTarget{{Kind: "Gateway", Namespace: "ns1", Name: "other"}}},
		},
	})
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	if err := ts.Apply(snap); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()

	types := append(slices.Clone(allTypes), meshv1.WaypointConfigType)
	c, _ := startClient(t, ts, clientOpts{token: "waypoint:ns1/waypoint", nodeID: xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: "ns1", Name: "waypoint"}.NodeID(), types: types})
	waitSynced(t, c)
	if got := names(c.List(meshv1.WaypointConfigType)); !slices.Equal(got, []string{"ns1/waypoint"}) {
		t.Fatalf("waypoint configs = %v; want only its own [ns1/waypoint]", got)
	}
	r, _ := c.Get(meshv1.WaypointConfigType, "ns1/waypoint")
	gotL7, gotPolicies, err := modelview.DecodeWaypointConfig(r.Message.(*meshv1.WaypointConfig))
	if err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(l7, gotL7); d != "" {
		t.Errorf("L7 config (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]*policy.Policy{targeted}, gotPolicies); d != "" {
		t.Errorf("policies (-want +got):\n%s", d)
	}
	wc := proto.Clone(r.Message).(*meshv1.WaypointConfig)
	wc.L7Json = []byte(`{"Listeners":[],"Bogus":1}`)
	if _, _, err := modelview.DecodeWaypointConfig(wc); err == nil {
		t.Error("DecodeWaypointConfig accepted an unknown field")
	}

	agent, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a"), types: []string{meshv1.WaypointConfigType}})
	eventually(t, "refusal", func() bool { return agent.LastError() != nil })
	if got := status.Code(errors.Unwrap(agent.LastError())); got != codes.InvalidArgument {
		t.Errorf("node agent subscribing to waypoint configs: %v; want code InvalidArgument", agent.LastError())
	}
}

// TestIngressGatewayConfig: an ingress gateway has an L7 config but is not a
// waypoint (no service is bound to it); it still gets its own config, a
// policy targeting the gateway by name and one selecting its pods.
func TestIngressGatewayConfig(t *testing.T) {
	gw := model.NamespacedName{Namespace: "istio-system", Name: "booking-gateway"}
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http-80", Port: 80, VirtualHosts: []model.VirtualHost{{
			Name: "booking", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "api", Destinations: []model.WeightedDestination{{Cluster: "booking", Weight: 100}}}},
		}}}},
		Clusters: []model.L7Cluster{{Name: "booking", Endpoints: []model.L7Endpoint{{Address: "198.18.0.20:8080"}}}},
	}
	allowGet := &policy.Policy{Name: "edge", Namespace: "istio-system", Action: policy.Allow, Rules: []policy.Rule{{To: []policy.Operation{{Methods: []string{"GET"}}}}}}
	// One selecting the gateway's pods (meshd bound it: PodPolicies),
	// which the gateway enforces, and one selecting other pods.
	bySelector := &policy.Policy{Name: "edge-ips", Namespace: "istio-system", Action: policy.Deny, Rules: []policy.Rule{{From: []policy.Source{{RemoteIPBlocks: []string{"203.0.113.0/24"}}}}}}
	elsewhere := &policy.Policy{Name: "app", Namespace: "istio-system", Action: policy.Deny}
	l7.PodPolicies = []model.NamespacedName{{Namespace: "istio-system", Name: "edge-ips"}}
	snap := model.NewSnapshot(model.SnapshotInput{
		L7: map[model.NamespacedName]*model.L7Config{gw: l7},
		AuthorizationPolicies: []*model.AuthorizationPolicy{
			{Policy: allowGet, Targets: []model.PolicyTarget{{Kind: "Gateway", Namespace: gw.Namespace, Name: gw.Name}}},
			{Policy: bySelector, Selector: map[string]string{"istio": "ingressgateway"}},
			{Policy: elsewhere, Selector: map[string]string{"app": "other"}},
		},
	})
	if len(snap.Waypoints()) != 0 {
		t.Fatalf("setup: the ingress gateway must not be a waypoint")
	}
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	if err := ts.Apply(snap); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()
	c, _ := startClient(t, ts, clientOpts{token: "waypoint:istio-system/booking-gateway", nodeID: xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: gw.Namespace, Name: gw.Name}.NodeID(), types: []string{meshv1.WaypointConfigType}})
	waitSynced(t, c)
	r, ok := c.Get(meshv1.WaypointConfigType, gw.String())
	if !ok {
		t.Fatalf("ingress gateway got configs %v; want its own %s", names(c.List(meshv1.WaypointConfigType)), gw)
	}
	gotL7, gotPolicies, err := modelview.DecodeWaypointConfig(r.Message.(*meshv1.WaypointConfig))
	if err != nil {
		t.Fatal(err)
	}
	wantL7 := *l7
	wantL7.PodPolicies = nil // meshd's, not sent
	if d := cmp.Diff(&wantL7, gotL7); d != "" {
		t.Errorf("L7 config (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]*policy.Policy{allowGet, bySelector}, gotPolicies); d != "" {
		t.Errorf("policies (-want +got):\n%s", d)
	}
}
