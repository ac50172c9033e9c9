package xds_test

import (
	"fmt"
	"log/slog"
	"maps"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/protobuf/testing/protocmp"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/testutil"
	"github.com/meshlet/meshlet/pkg/xds"
)

func testSnapshot(version uint64, podIP string) *model.Snapshot {
	wp := &model.WaypointRef{Waypoint: model.NamespacedName{Namespace: "ns1", Name: "waypoint"}, Addresses: []netip.Addr{netip.MustParseAddr("198.18.100.9")}}
	web := &model.Service{
		Name: "web", Namespace: "ns1", Source: model.SourceKubernetes,
		Hostnames: []string{"web.ns1.svc.cluster.local"}, VIPs: []netip.Addr{netip.MustParseAddr("198.18.100.1")},
		Ports:         []model.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, AppProtocol: "HTTP", Protocol: "TCP"}},
		Waypoint:      wp,
		LoadBalancing: model.LBRoundRobin,

		TrafficDistribution: model.TrafficPreferClose,
		NodeLocal:           true,
		SessionAffinity:     10 * time.Minute,
	}
	wpSvc := &model.Service{Name: "waypoint", Namespace: "ns1", Source: model.SourceKubernetes, Hostnames: []string{"waypoint.ns1.svc.cluster.local"}, VIPs: []netip.Addr{netip.MustParseAddr("198.18.100.9")}}
	ext := &model.Service{
		Name: "ext", Namespace: "ns1", Source: model.SourceServiceEntry, Hostnames: []string{"api.example.com"}, External: true, Resolution: "DNS",
		ExportTo:  []string{".", "ns2"},
		Endpoints: []model.Endpoint{{Hostname: "api.example.com", Ports: map[uint32]uint32{443: 443}}},
	}
	a := &model.Workload{
		UID: "uid-a", Name: "web-a", Namespace: "ns1", Node: "node-a", IPs: []netip.Addr{netip.MustParseAddr(podIP)},
		ServiceAccount: "web", Identity: "spiffe://cluster.local/ns/ns1/sa/web", Enrolled: true, Waypoint: wp,
		CanonicalName: "web", CanonicalRevision: "v1", Ready: true, Locality: model.Locality{Region: "west", Zone: "west-a", Subzone: "rack1"},
		Services:              []model.ServiceBinding{{Service: model.NamespacedName{Namespace: "ns1", Name: "web"}, Hostname: "web.ns1.svc.cluster.local", Ports: map[uint32]uint32{80: 8080}}},
		PeerAuthentication:    model.PeerAuthResult{Mode: model.MTLSStrict, PortModes: map[uint32]model.MTLSMode{9090: model.MTLSPermissive}},
		AuthorizationPolicies: []model.NamespacedName{{Namespace: "ns1", Name: "web-allow"}},
	}
	authz := &model.AuthorizationPolicy{Selector: map[string]string{"app": "web"}, Policy: &policy.Policy{
		Name: "web-allow", Namespace: "ns1", Action: policy.Allow,
		Rules: []policy.Rule{{From: []policy.Source{{Namespaces: []string{"ns1"}}}}},
	}}
	b := &model.Workload{UID: "uid-b", Name: "db-b", Namespace: "ns1", Node: "node-b", IPs: []netip.Addr{netip.MustParseAddr("198.18.0.20")}, Identity: "spiffe://cluster.local/ns/ns1/sa/default",
		Locality: model.Locality{Region: "west", Zone: "west-b"}}
	return model.NewSnapshot(model.SnapshotInput{Version: version, Workloads: []*model.Workload{a, b}, Services: []*model.Service{web, wpSvc, ext}, AuthorizationPolicies: []*model.AuthorizationPolicy{authz},
		Waypoints: []*model.Waypoint{{Name: "waypoint", Namespace: "ns1", For: model.WaypointForAll, Addresses: wp.Addresses, Identity: "spiffe://cluster.local/ns/ns1/sa/waypoint"}}})
}

// TestApplySnapshot: a model snapshot reaches a node agent translated, and
// applying an equal snapshot pushes nothing while a change pushes only it.
func TestApplySnapshot(t *testing.T) {
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	if err := ts.Apply(testSnapshot(1, "198.18.0.10")); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()
	c, ev := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)

	wantWaypoint := &meshv1.GatewayAddress{
		Namespace: "ns1", Name: "waypoint", Hostname: "waypoint.ns1.svc.cluster.local", Address: "198.18.100.9", HbonePort: 15008,
		Identity: "spiffe://cluster.local/ns/ns1/sa/waypoint", WaypointFor: "all",
	}
	want := &meshv1.Workload{
		Uid: "uid-a", Name: "web-a", Namespace: "ns1", Addresses: []string{"198.18.0.10"}, Node: "node-a",
		ServiceAccount: "web", Identity: "spiffe://cluster.local/ns/ns1/sa/web", TrustDomain: "cluster.local",
		Waypoint: wantWaypoint, Enrolled: true, CanonicalName: "web", CanonicalRevision: "v1",
		Services: map[string]*meshv1.PortList{"ns1/web.ns1.svc.cluster.local": {Ports: []*meshv1.Port{{ServicePort: 80, TargetPort: 8080}}}},
		// The policies bound to it, so that the agent can tell one is late.
		AuthorizationPolicies: []string{"ns1/web-allow"},
		Locality:              &meshv1.Locality{Region: "west", Zone: "west-a", Subzone: "rack1"},
	}
	r, ok := c.Get(meshv1.WorkloadType, "uid-a")
	if !ok {
		t.Fatalf("node-a has no workload uid-a; has %v", names(c.List(meshv1.WorkloadType)))
	}
	if d := cmp.Diff(want, r.Message, protocmp.Transform()); d != "" {
		t.Errorf("workload uid-a (-want +got):\n%s", d)
	}
	if got := names(c.List(meshv1.WorkloadType)); !slices.Equal(got, []string{"uid-a"}) {
		t.Errorf("node-a workloads = %v; want [uid-a]", got)
	}
	pa, _ := c.Get(meshv1.PeerAuthenticationType, "uid-a")
	wantPA := &meshv1.PeerAuthentication{WorkloadUid: "uid-a", Mode: meshv1.PeerAuthentication_STRICT, PortModes: map[uint32]meshv1.PeerAuthentication_Mode{9090: meshv1.PeerAuthentication_PERMISSIVE}}
	if d := cmp.Diff(wantPA, pa.Message, protocmp.Transform()); d != "" {
		t.Errorf("peer authentication of uid-a (-want +got):\n%s", d)
	}
	az, _ := c.Get(meshv1.AuthorizationType, "ns1/web-allow")
	wantAZ := &meshv1.Authorization{
		Name: "web-allow", Namespace: "ns1", Scope: meshv1.Authorization_WORKLOAD, WorkloadUids: []string{"uid-a"},
		Rules: []*meshv1.Rule{{From: []*meshv1.SourceMatch{{Namespaces: []string{"ns1"}}}}},
	}
	if d := cmp.Diff(wantAZ, az.Message, protocmp.Transform()); d != "" {
		t.Errorf("authorization ns1/web-allow (-want +got):\n%s", d)
	}
	svc, _ := c.Get(meshv1.AddressType, "ns1/web.ns1.svc.cluster.local")
	wantSvc := &meshv1.Address{Type: &meshv1.Address_Service{Service: &meshv1.Service{
		Name: "web", Namespace: "ns1", Hostname: "web.ns1.svc.cluster.local", Vips: []string{"198.18.100.1"},
		Ports:         []*meshv1.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, AppProtocol: "HTTP"}},
		Waypoint:      wantWaypoint,
		LoadBalancing: &meshv1.LoadBalancing{Algorithm: meshv1.LoadBalancing_ROUND_ROBIN},

		TrafficDistribution: "PreferClose",
		NodeLocal:           true,

		SessionAffinitySeconds: 600,
	}}}
	if d := cmp.Diff(wantSvc, svc.Message, protocmp.Transform()); d != "" {
		t.Errorf("service web (-want +got):\n%s", d)
	}
	ext, _ := c.Get(meshv1.AddressType, "ns1/api.example.com")
	if got := ext.Message.(*meshv1.Address).GetService().GetStaticEndpoints(); len(got) != 1 || got[0].GetHostname() != "api.example.com" {
		t.Errorf("ServiceEntry static endpoints = %v; want one DNS endpoint api.example.com", got)
	}
	if got := names(c.List(meshv1.AddressType)); !slices.Equal(got, []string{"ns1/api.example.com", "ns1/waypoint.ns1.svc.cluster.local", "ns1/web.ns1.svc.cluster.local", "uid-a", "uid-b"}) {
		t.Errorf("address index = %v", got)
	}

	pushes := ts.metric(t, "meshd_xds_debounced_pushes_total", "")
	if err := ts.Apply(testSnapshot(2, "198.18.0.10")); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	if got := ts.metric(t, "meshd_xds_debounced_pushes_total", ""); got != pushes {
		t.Errorf("an unchanged snapshot caused %v pushes; want 0", got-pushes)
	}

	n := ev.len()
	if err := ts.Apply(testSnapshot(3, "198.18.0.11")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new pod IP", func() bool {
		r, _ := c.Get(meshv1.WorkloadType, "uid-a")
		a, _ := c.Get(meshv1.AddressType, "uid-a")
		return slices.Equal(r.Message.(*meshv1.Workload).GetAddresses(), []string{"198.18.0.11"}) &&
			slices.Equal(a.Message.(*meshv1.Address).GetWorkload().GetAddresses(), []string{"198.18.0.11"})
	})
	for _, typ := range []string{meshv1.WorkloadType, meshv1.AddressType} {
		var updated []string
		for _, e := range ev.since(n, typ) {
			updated = append(updated, e.updated...)
		}
		if !slices.Equal(updated, []string{"uid-a"}) {
			t.Errorf("%s resources sent for a one-pod change = %v; want [uid-a]", typ, updated)
		}
	}
}

// TestApplySharedValues: a workload value shared between two snapshots (as
// the builder shares unchanged ones) is still re-sent when something it
// refers to elsewhere in the snapshot, its waypoint, changed.
func TestApplySharedValues(t *testing.T) {
	ref := &model.WaypointRef{Waypoint: model.NamespacedName{Namespace: "ns1", Name: "wp"}, Addresses: []netip.Addr{netip.MustParseAddr("198.18.100.9")}}
	w := &model.Workload{UID: "uid-a", Name: "a", Namespace: "ns1", Node: "node-a", IPs: []netip.Addr{netip.MustParseAddr("198.18.0.10")}, Waypoint: ref, Ready: true}
	snap := func(v uint64, identity string) *model.Snapshot {
		return model.NewSnapshot(model.SnapshotInput{Version: v, Workloads: []*model.Workload{w},
			Waypoints: []*model.Waypoint{{Name: "wp", Namespace: "ns1", Addresses: ref.Addresses, Identity: identity}}})
	}
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	if err := ts.Apply(snap(1, "spiffe://cluster.local/ns/ns1/sa/wp-old")); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	if err := ts.Apply(snap(2, "spiffe://cluster.local/ns/ns1/sa/wp-new")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the new waypoint identity", func() bool {
		r, _ := c.Get(meshv1.WorkloadType, "uid-a")
		return r.Message.(*meshv1.Workload).GetWaypoint().GetIdentity() == "spiffe://cluster.local/ns/ns1/sa/wp-new"
	})
}

// TestApplyWorkloadLabels: a workload's labels go to proxies only as far as
// they are used: app and version (what a waypoint reports of a client), and
// the keys a waypoint route's sourceLabels names once one does, on the
// address resource, which waypoints read their clients from, with the
// canonical revision.
func TestApplyWorkloadLabels(t *testing.T) {
	w := &model.Workload{UID: "uid-a", Name: "a", Namespace: "ns1", Node: "node-a", IPs: []netip.Addr{netip.MustParseAddr("198.18.0.10")},
		Identity: "spiffe://cluster.local/ns/ns1/sa/a", Enrolled: true, Ready: true, CanonicalName: "web", CanonicalRevision: "v1",
		Labels: map[string]string{"app": "web", "version": "v1", "team": "blue", "tier": "db", "pod-template-hash": "5d4f"}}
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", VirtualHosts: []model.VirtualHost{{Name: "web", Domains: []string{"*"}, Routes: []model.L7Route{{
			Name: "blue", Matches: []model.RouteMatch{{SourceLabels: map[string]string{"team": "blue"}}}, Destinations: []model.WeightedDestination{{Cluster: "web"}},
		}}}}}},
		Clusters: []model.L7Cluster{{Name: "web"}},
	}
	snap := func(v uint64, cfg *model.L7Config) *model.Snapshot {
		in := model.SnapshotInput{Version: v, TrustDomain: "cluster.local", Workloads: []*model.Workload{w}}
		if cfg != nil {
			in.L7 = map[model.NamespacedName]*model.L7Config{{Namespace: "ns1", Name: "wp"}: cfg}
		}
		return model.NewSnapshot(in)
	}
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	if err := ts.Apply(snap(1, nil)); err != nil {
		t.Fatal(err)
	}
	ts.MarkSynced()
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	labels := func() (map[string]string, string) {
		a, _ := c.Get(meshv1.AddressType, "uid-a")
		aw := a.Message.(*meshv1.Address).GetWorkload()
		return aw.GetLabels(), aw.GetCanonicalRevision()
	}
	want := map[string]string{"app": "web", "version": "v1"}
	if al, rev := labels(); !maps.Equal(al, want) || rev != "v1" {
		t.Errorf("labels sent: %v (revision %q); want %v and v1", al, rev, want)
	}
	if err := ts.Apply(snap(2, l7)); err != nil {
		t.Fatal(err)
	}
	want["team"] = "blue"
	eventually(t, "the label a route matches on sent", func() bool {
		al, _ := labels()
		return maps.Equal(al, want)
	})
	// A tcp route's sourceLabels count too.
	l7.Listeners[0].VirtualHosts[0].TCPMatched = []model.TCPRoute{{Name: "db", Matches: []model.TCPMatch{{SourceLabels: map[string]string{"tier": "db"}}},
		Destinations: []model.WeightedDestination{{Cluster: "web"}}}}
	if err := ts.Apply(snap(3, l7)); err != nil {
		t.Fatal(err)
	}
	want["tier"] = "db"
	eventually(t, "the label a tcp route matches on sent", func() bool {
		al, _ := labels()
		return maps.Equal(al, want)
	})
}

// TestApplyWorkloadLabelKeysBound: past 64 label keys in the waypoints'
// sourceLabels matches, the keys sent with workloads are app, version and
// the first others in order, and the keys left out are warned about once
// (matches on them can never match), not at every apply.
func TestApplyWorkloadLabelKeysBound(t *testing.T) {
	labels := map[string]string{"app": "web", "version": "v1"}
	var routes []model.L7Route
	for i := range 70 {
		k := fmt.Sprintf("a-key-%02d", i) // sorts before app and version
		labels[k] = "x"
		routes = append(routes, model.L7Route{Name: k, Matches: []model.RouteMatch{{SourceLabels: map[string]string{k: "x"}}},
			Destinations: []model.WeightedDestination{{Cluster: "web"}}})
	}
	w := &model.Workload{UID: "uid-a", Name: "a", Namespace: "ns1", Node: "node-a", IPs: []netip.Addr{netip.MustParseAddr("198.18.0.10")},
		Identity: "spiffe://cluster.local/ns/ns1/sa/a", Enrolled: true, Ready: true, Labels: labels}
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", VirtualHosts: []model.VirtualHost{{Name: "web", Domains: []string{"*"}, Routes: routes}}}},
		Clusters:  []model.L7Cluster{{Name: "web"}},
	}
	snap := func(v uint64) *model.Snapshot {
		return model.NewSnapshot(model.SnapshotInput{Version: v, TrustDomain: "cluster.local", Workloads: []*model.Workload{w},
			L7: map[model.NamespacedName]*model.L7Config{{Namespace: "ns1", Name: "wp"}: l7}})
	}
	var log testutil.Buffer // read while the server may write
	s, err := xds.New(xds.Options{Authenticate: tokenAuth, Registry: prometheus.NewRegistry(), Logger: slog.New(slog.NewTextHandler(&log, nil))})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ts := &testServer{Server: s, reg: prometheus.NewRegistry(), pki: newPKI(t)}
	ts.serve(t, "127.0.0.1:0")
	for v := range uint64(2) {
		if err := ts.Apply(snap(v + 1)); err != nil {
			t.Fatal(err)
		}
	}
	ts.MarkSynced()
	out := log.String()
	if n := strings.Count(out, "sourceLabels"); n != 1 || !strings.Contains(out, "a-key-69") || strings.Contains(out, "a-key-61 ") {
		t.Errorf("warnings: %q; want one naming the keys past the bound (a-key-62 to a-key-69)", out)
	}
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	a, _ := c.Get(meshv1.AddressType, "uid-a")
	sent := a.Message.(*meshv1.Address).GetWorkload().GetLabels()
	if len(sent) != 64 || sent["app"] != "web" || sent["version"] != "v1" || sent["a-key-61"] != "x" || sent["a-key-62"] != "" {
		t.Errorf("labels sent (%d): %v; want app, version and a-key-00 to a-key-61", len(sent), sent)
	}
}
