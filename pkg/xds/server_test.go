package xds_test

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

func nodeID(n string) string { return xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: n}.NodeID() }

// TestDeltaAddChangeDelete: each change reaches the client as a delta that
// names only what changed.
func TestDeltaAddChangeDelete(t *testing.T) {
	ts := startServer(t, newPKI(t), 10*time.Millisecond)
	c, ev := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	if err := ts.SetWorkload(workload("w0", "node-a")); err != nil {
		t.Fatal(err)
	}
	eventually(t, "w0", func() bool { _, ok := c.Get(meshv1.WorkloadType, "w0"); return ok })

	tests := []struct {
		name        string
		do          func() error
		wantUpdated []string
		wantRemoved []string
		check       func(t *testing.T)
	}{
		{
			name:        "add",
			do:          func() error { return ts.SetWorkload(workload("w1", "node-a")) },
			wantUpdated: []string{"w1"},
		},
		{
			name: "change",
			do: func() error {
				w := workload("w1", "node-a")
				w.Addresses = []string{"198.18.0.2"}
				return ts.SetWorkload(w)
			},
			wantUpdated: []string{"w1"},
			check: func(t *testing.T) {
				r, _ := c.Get(meshv1.WorkloadType, "w1")
				if got := r.Message.(*meshv1.Workload).GetAddresses(); !slices.Equal(got, []string{"198.18.0.2"}) {
					t.Errorf("w1 addresses = %v; want [198.18.0.2]", got)
				}
			},
		},
		{
			name:        "delete",
			do:          func() error { ts.DeleteWorkload("w1"); return nil },
			wantRemoved: []string{"w1"},
			check: func(t *testing.T) {
				if _, ok := c.Get(meshv1.WorkloadType, "w1"); ok {
					t.Error("w1 still in the client's store after delete")
				}
			},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			n := ev.len()
			if err := tt.do(); err != nil {
				t.Fatal(err)
			}
			eventually(t, "a workload delta", func() bool { return len(ev.since(n, meshv1.WorkloadType)) > 0 })
			got := ev.since(n, meshv1.WorkloadType)[0]
			if !slices.Equal(got.updated, tt.wantUpdated) || !slices.Equal(got.removed, tt.wantRemoved) {
				t.Errorf("delta = updated %v removed %v; want updated %v removed %v", got.updated, got.removed, tt.wantUpdated, tt.wantRemoved)
			}
			if tt.check != nil {
				tt.check(t)
			}
		})
	}
}

// TestViews: a node agent sees only its node's workloads (and their
// policies) but the whole address index; a waypoint sees what it serves.
func TestViews(t *testing.T) {
	pki := newPKI(t)
	ts := startUnsynced(t, pki, 10*time.Millisecond)
	wa := workload("wa", "node-a")
	wb := workload("wb", "node-b")
	wb.Waypoint = &meshv1.GatewayAddress{Namespace: "ns1", Name: "wp", Hostname: "wp.ns1.svc.cluster.local", HbonePort: 15008}
	// wc has no waypoint of its own but backs api, whose waypoint is wp: wp
	// forwards to it, so it sees it.
	wc := workload("wc", "node-a")
	wc.Services = map[string]*meshv1.PortList{"ns1/api.ns1.svc.cluster.local": {Ports: []*meshv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	mustSet(t, ts.SetService(&meshv1.Service{Name: "api", Namespace: "ns1", Hostname: "api.ns1.svc.cluster.local", Vips: []string{"198.18.100.2"},
		Waypoint: &meshv1.GatewayAddress{Namespace: "ns1", Name: "wp", Hostname: "wp.ns1.svc.cluster.local", HbonePort: 15008}}))
	for _, w := range []*meshv1.Workload{wa, wb, wc} {
		if err := ts.SetWorkload(w); err != nil {
			t.Fatal(err)
		}
		if err := ts.SetPeerAuthentication(&meshv1.PeerAuthentication{WorkloadUid: w.Uid, Mode: meshv1.PeerAuthentication_STRICT}); err != nil {
			t.Fatal(err)
		}
	}
	mustSet(t, ts.SetService(&meshv1.Service{Name: "web", Namespace: "ns1", Hostname: "web.ns1.svc.cluster.local", Vips: []string{"198.18.100.1"}}))
	mustSet(t, ts.SetAuthorization(&meshv1.Authorization{Name: "only-b", Namespace: "ns1", Scope: meshv1.Authorization_WORKLOAD, WorkloadUids: []string{"wb"}, Action: meshv1.Authorization_DENY}))
	mustSet(t, ts.SetAuthorization(&meshv1.Authorization{Name: "ns-wide", Namespace: "ns1", Scope: meshv1.Authorization_NAMESPACE}))
	mustSet(t, ts.SetAuthorization(&meshv1.Authorization{Name: "other-ns", Namespace: "ns2", Scope: meshv1.Authorization_NAMESPACE}))
	mustSet(t, ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: []string{pki.rootPEM}}))

	ts.MarkSynced()

	wantAddresses := []string{"ns1/api.ns1.svc.cluster.local", "ns1/web.ns1.svc.cluster.local", "wa", "wb", "wc"}
	tests := []struct {
		name      string
		token     string
		nodeID    string
		workloads []string
		authz     []string
	}{
		{"node-a", "node:node-a", nodeID("node-a"), []string{"wa", "wc"}, []string{"ns1/ns-wide"}},
		{"node-b", "node:node-b", nodeID("node-b"), []string{"wb"}, []string{"ns1/ns-wide", "ns1/only-b"}},
		{"node-c (empty)", "node:node-c", nodeID("node-c"), nil, nil},
		{"waypoint", "waypoint:ns1/wp", xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: "ns1", Name: "wp"}.NodeID(), []string{"wb", "wc"}, []string{"ns1/ns-wide", "ns1/only-b"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, _ := startClient(t, ts, clientOpts{token: tt.token, nodeID: tt.nodeID})
			waitSynced(t, c)
			if got := names(c.List(meshv1.WorkloadType)); !slices.Equal(got, tt.workloads) {
				t.Errorf("workloads = %v; want %v", got, tt.workloads)
			}
			if got := names(c.List(meshv1.PeerAuthenticationType)); !slices.Equal(got, tt.workloads) {
				t.Errorf("peer authentications = %v; want %v", got, tt.workloads)
			}
			if got := names(c.List(meshv1.AuthorizationType)); !slices.Equal(got, tt.authz) {
				t.Errorf("authorizations = %v; want %v", got, tt.authz)
			}
			if got := names(c.List(meshv1.AddressType)); !slices.Equal(got, wantAddresses) {
				t.Errorf("address index = %v; want %v", got, wantAddresses)
			}
			if got := names(c.List(meshv1.TrustBundleType)); !slices.Equal(got, []string{"cluster.local"}) {
				t.Errorf("trust bundles = %v; want [cluster.local]", got)
			}
		})
	}
}

// TestACKAndNACK: an accepted response is recorded as ACKed; a rejected one
// keeps the client's old state, and the server keeps the client's error and
// counts it.
func TestACKAndNACK(t *testing.T) {
	ts := startServer(t, newPKI(t), 10*time.Millisecond)
	reject := func(typeURL, name string, _ proto.Message) error {
		if typeURL == meshv1.WorkloadType && strings.HasPrefix(name, "bad") {
			return errors.New("workload name starts with bad")
		}
		return nil
	}
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a"), validate: reject})
	waitSynced(t, c)

	mustSet(t, ts.SetWorkload(workload("good", "node-a")))
	eventually(t, "good applied", func() bool { _, ok := c.Get(meshv1.WorkloadType, "good"); return ok })
	eventually(t, "ACK of the workload push", func() bool {
		cl := ts.Clients()
		return len(cl) == 1 && cl[0].Acked[meshv1.WorkloadType] == "2" // generation 1 was the empty start
	})
	if cl := ts.Clients(); cl[0].LastNACK != nil {
		t.Fatalf("LastNACK = %+v before any rejection", cl[0].LastNACK)
	}
	if n := ts.metric(t, "meshd_xds_push_latency_seconds", ""); n < 1 {
		t.Errorf("meshd_xds_push_latency_seconds has %v samples after an ACKed push; want at least 1", n)
	}
	nacks := func() float64 { return ts.metric(t, "meshd_xds_nacks_total", meshv1.WorkloadType) }
	if n := nacks(); n != 0 {
		t.Fatalf("meshd_xds_nacks_total = %v before any rejection; want 0", n)
	}

	mustSet(t, ts.SetWorkload(workload("bad1", "node-a")))
	eventually(t, "NACK", func() bool { return ts.Clients()[0].LastNACK != nil })
	nack := ts.Clients()[0].LastNACK
	if nack.TypeURL != meshv1.WorkloadType || !strings.Contains(nack.Message, "workload name starts with bad") {
		t.Errorf("LastNACK = %+v; want the workload type and the client's error", nack)
	}
	if n := nacks(); n != 1 {
		t.Errorf("meshd_xds_nacks_total = %v; want 1", n)
	}
	if _, ok := c.Get(meshv1.WorkloadType, "bad1"); ok {
		t.Error("the client applied a response it rejected")
	}
	if _, ok := c.Get(meshv1.WorkloadType, "good"); !ok {
		t.Error("the client lost its last good state after a NACK")
	}
}

// TestDebounceBurst: 100 changes inside the debounce window reach the client
// as one push carrying all of them.
func TestDebounceBurst(t *testing.T) {
	ts := startServer(t, newPKI(t), 300*time.Millisecond)
	c, ev := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	pushesBefore := ts.metric(t, "meshd_xds_debounced_pushes_total", "")
	n := ev.len()
	start := time.Now()
	for i := range 100 {
		mustSet(t, ts.SetWorkload(workload("w"+string(rune('a'+i/26))+string(rune('a'+i%26)), "node-a")))
	}
	if d := time.Since(start); d > 250*time.Millisecond {
		t.Skipf("the burst took %v, longer than the debounce window; machine too loaded to judge", d)
	}
	eventually(t, "100 workloads", func() bool { return len(c.List(meshv1.WorkloadType)) == 100 })
	time.Sleep(400 * time.Millisecond) // anything late would arrive now
	got := ev.since(n, meshv1.WorkloadType)
	var sizes []int
	for _, e := range got {
		sizes = append(sizes, len(e.updated))
	}
	if !slices.Equal(sizes, []int{100}) {
		t.Errorf("workload responses after the burst carried %v resources; want one response carrying 100", sizes)
	}
	if d := ts.metric(t, "meshd_xds_debounced_pushes_total", "") - pushesBefore; d != 1 {
		t.Errorf("meshd_xds_debounced_pushes_total moved by %v; want 1", d)
	}
}

// TestReconnectResume: a client keeps its state while meshd is away, and on
// reconnecting (here to a second replica with the same config plus one
// change) is sent only the change.
func TestReconnectResume(t *testing.T) {
	pki := newPKI(t)
	ts := startServer(t, pki, 10*time.Millisecond)
	var all []*meshv1.Workload
	for i := range 20 {
		w := workload("w"+string(rune('a'+i)), "node-a")
		all = append(all, w)
		mustSet(t, ts.SetWorkload(w))
	}
	c, ev := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	eventually(t, "20 workloads", func() bool { return len(c.List(meshv1.WorkloadType)) == 20 })

	addr := ts.addr
	ts.g.Stop()
	eventually(t, "disconnect", func() bool { return !c.Connected() })
	if got := len(c.List(meshv1.WorkloadType)); got != 20 {
		t.Fatalf("client holds %d workloads while disconnected; want its last 20", got)
	}

	// The replica: same config, except wa changed and wt deleted.
	replica := startUnsynced(t, pki, 10*time.Millisecond)
	replica.g.Stop()
	for _, w := range all[:19] {
		if w.Uid == "wa" {
			w = proto.Clone(w).(*meshv1.Workload)
			w.Addresses = []string{"198.18.0.9"}
		}
		mustSet(t, replica.SetWorkload(w))
	}
	replica.MarkSynced() // as meshd does once its informers have synced
	eventually(t, "the replica's first push", func() bool { return replica.metric(t, "meshd_xds_debounced_pushes_total", "") >= 1 })
	n := ev.len()
	replica.serve(t, addr)

	eventually(t, "resync", func() bool {
		r, ok := c.Get(meshv1.WorkloadType, "wa")
		_, gone := c.Get(meshv1.WorkloadType, "wt")
		return ok && r.Message.(*meshv1.Workload).GetAddresses()[0] == "198.18.0.9" && !gone
	})
	var updated, removed []string
	for _, e := range ev.since(n, meshv1.WorkloadType) {
		updated = append(updated, e.updated...)
		removed = append(removed, e.removed...)
	}
	if !slices.Equal(updated, []string{"wa"}) || !slices.Equal(removed, []string{"wt"}) {
		t.Errorf("after reconnect: updated %v removed %v; want updated [wa] removed [wt] and nothing resent", updated, removed)
	}
	var addrUpdated []string
	for _, e := range ev.since(n, meshv1.AddressType) {
		addrUpdated = append(addrUpdated, e.updated...)
	}
	if !slices.Equal(addrUpdated, []string{"wa"}) {
		t.Errorf("address index resent %v after reconnect; want only [wa]", addrUpdated)
	}
}

// TestUnauthorized: a client with a bad token, or reading another node's
// data, is refused and gets nothing.
func TestUnauthorized(t *testing.T) {
	ts := startServer(t, newPKI(t), 10*time.Millisecond)
	mustSet(t, ts.SetWorkload(workload("wa", "node-a")))
	tests := []struct {
		name     string
		token    string
		nodeID   string
		wantCode codes.Code
	}{
		{"unknown token", "forged", nodeID("node-a"), codes.Unauthenticated},
		{"empty token", "", nodeID("node-a"), codes.Unauthenticated},
		{"other node", "node:node-b", nodeID("node-a"), codes.PermissionDenied},
		{"waypoint as node agent", "waypoint:ns1/wp", nodeID("node-a"), codes.PermissionDenied},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, ev := startClient(t, ts, clientOpts{token: tt.token, nodeID: tt.nodeID})
			eventually(t, "refusal", func() bool { return c.LastError() != nil })
			if got := status.Code(errors.Unwrap(c.LastError())); got != tt.wantCode {
				t.Errorf("stream error = %v; want code %v", c.LastError(), tt.wantCode)
			}
			if n := ev.len(); n != 0 {
				t.Errorf("refused client applied %d responses; want 0", n)
			}
			if _, ok := c.Get(meshv1.WorkloadType, "wa"); ok {
				t.Error("refused client holds node-a's workload")
			}
		})
	}
	if cl := ts.Clients(); len(cl) != 0 {
		t.Errorf("server lists %d connected clients after refusing all; want 0", len(cl))
	}
	if got := ts.metric(t, "meshd_xds_connected_clients", ""); got != 0 {
		t.Errorf("meshd_xds_connected_clients = %v after refusing all; want 0", got)
	}
}

// TestBadInput: the server refuses malformed resources with a clear error.
func TestBadInput(t *testing.T) {
	ts := startServer(t, newPKI(t), 10*time.Millisecond)
	tests := []struct {
		name string
		err  error
		want string
	}{
		{"workload without uid", ts.SetWorkload(&meshv1.Workload{Name: "x", Namespace: "ns"}), "has no uid"},
		{"workload bad IP", ts.SetWorkload(&meshv1.Workload{Uid: "u", Addresses: []string{"300.1.1.1"}}), "is not an IP"},
		{"service bad VIP", ts.SetService(&meshv1.Service{Namespace: "ns", Hostname: "h", Vips: []string{"nope"}}), "is not an IP"},
		{"authz bad ipBlock", ts.SetAuthorization(&meshv1.Authorization{Name: "a", Namespace: "ns", Rules: []*meshv1.Rule{{From: []*meshv1.SourceMatch{{IpBlocks: []string{"10.0.0.0/33"}}}}}}), "neither a CIDR nor an IP"},
		{"trust bundle not PEM", ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "td", RootsPem: []string{"junk"}}), "not a PEM CERTIFICATE"},
		{"two roots in one entry", ts.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "td", RootsPem: []string{ts.pki.rootPEM + ts.pki.rootPEM}}), "one root per entry"},
	}
	for _, tt := range tests {
		if tt.err == nil || !strings.Contains(tt.err.Error(), tt.want) {
			t.Errorf("%s: err = %v; want one containing %q", tt.name, tt.err, tt.want)
		}
	}
}

func mustSet(t *testing.T, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func names[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

// TestNotServedBeforeSync: until meshd marks its state synced, clients are
// turned away (so none mistakes a half-built start-up state for the truth)
// and then get the whole state at once.
func TestNotServedBeforeSync(t *testing.T) {
	ts := startUnsynced(t, newPKI(t), 10*time.Millisecond)
	mustSet(t, ts.SetWorkload(workload("w1", "node-a")))
	c, ev := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	eventually(t, "refusal", func() bool { return c.LastError() != nil })
	if got := status.Code(errors.Unwrap(c.LastError())); got != codes.Unavailable {
		t.Errorf("stream error before sync = %v; want code Unavailable", c.LastError())
	}
	time.Sleep(50 * time.Millisecond) // well past the debounce window
	if n := ev.len(); n != 0 {
		t.Fatalf("client applied %d responses before sync; want 0", n)
	}
	mustSet(t, ts.SetWorkload(workload("w2", "node-a")))
	ts.MarkSynced()
	waitSynced(t, c)
	if got := names(c.List(meshv1.WorkloadType)); !slices.Equal(got, []string{"w1", "w2"}) {
		t.Errorf("workloads after sync = %v; want [w1 w2]", got)
	}
}

// TestChangeWhileAway: a node agent that comes back after a change it
// missed gets the current state, not the view of its last connection.
func TestChangeWhileAway(t *testing.T) {
	ts := startServer(t, newPKI(t), 10*time.Millisecond)
	mustSet(t, ts.SetWorkload(workload("w1", "node-a")))
	t.Run("first connection", func(t *testing.T) {
		c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
		eventually(t, "w1", func() bool { _, ok := c.Get(meshv1.WorkloadType, "w1"); return ok })
		if got := ts.metric(t, "meshd_xds_connected_clients", ""); got != 1 {
			t.Errorf("meshd_xds_connected_clients = %v while connected; want 1", got)
		}
		if got := ts.metric(t, "meshd_xds_pushes_total", meshv1.WorkloadType); got < 1 {
			t.Errorf("meshd_xds_pushes_total{type=Workload} = %v; want at least 1", got)
		}
	}) // the client stops here
	eventually(t, "disconnect", func() bool { return len(ts.Clients()) == 0 })
	if got := ts.metric(t, "meshd_xds_connected_clients", ""); got != 0 {
		t.Errorf("meshd_xds_connected_clients = %v after disconnect; want 0", got)
	}
	pushes := ts.metric(t, "meshd_xds_debounced_pushes_total", "")
	mustSet(t, ts.SetWorkload(workload("w2", "node-a")))
	eventually(t, "the push", func() bool { return ts.metric(t, "meshd_xds_debounced_pushes_total", "") > pushes })
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a")})
	waitSynced(t, c)
	if got := names(c.List(meshv1.WorkloadType)); !slices.Equal(got, []string{"w1", "w2"}) {
		t.Errorf("workloads after reconnect = %v; want [w1 w2]", got)
	}
}

// TestMaxDebounce: a steady stream of changes, each inside the debounce
// window of the last, still gets pushed every MaxDebounce.
func TestMaxDebounce(t *testing.T) {
	reg := prometheus.NewRegistry()
	s, err := xds.New(xds.Options{Authenticate: tokenAuth, Debounce: 200 * time.Millisecond, MaxDebounce: 400 * time.Millisecond, Registry: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ts := &testServer{Server: s, reg: reg}
	s.MarkSynced()
	eventually(t, "the first push", func() bool { return ts.metric(t, "meshd_xds_debounced_pushes_total", "") == 1 })
	for i := range 50 { // 1.5s of changes 30ms apart
		mustSet(t, s.SetWorkload(workload(fmt.Sprintf("w%d", i), "node-a")))
		time.Sleep(30 * time.Millisecond)
	}
	if got := ts.metric(t, "meshd_xds_debounced_pushes_total", "") - 1; got < 2 {
		t.Errorf("pushes during 1.5s of steady changes = %v; want at least 2 (one per MaxDebounce of 400ms)", got)
	}
}

// TestReportedCertificates: a client's certificates, reported in its node
// metadata, show in its status with a meshd that never signed them;
// malformed entries are skipped and the list is bounded.
func TestReportedCertificates(t *testing.T) {
	ts := startServer(t, newPKI(t), 10*time.Millisecond)
	notAfter := time.Date(2031, 5, 4, 3, 2, 1, 0, time.UTC)
	md := func() *structpb.Struct {
		s := xdsnode.CertsMetadata([]xdsnode.NodeCert{{Identity: "spiffe://cluster.local/ns/shop/sa/cart", NotAfter: notAfter}})
		list := s.Fields[xdsnode.MetadataCertificates].GetListValue()
		list.Values = append(list.Values,
			structpb.NewStringValue("not an entry"),
			structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{"identity": structpb.NewStringValue("spiffe://x/y")}}))
		for range 1000 {
			list.Values = append(list.Values, list.Values[0])
		}
		return s
	}
	c, _ := startClient(t, ts, clientOpts{token: "node:node-a", nodeID: nodeID("node-a"), metadata: md})
	waitSynced(t, c)
	eventually(t, "the client listed", func() bool { return len(ts.Clients()) == 1 })
	certs := ts.Clients()[0].Certs
	if len(certs) == 0 || len(certs) > 512 {
		t.Fatalf("%d certificates reported; want 1 to 512 (bounded)", len(certs))
	}
	for _, c := range certs {
		if c.Identity != "spiffe://cluster.local/ns/shop/sa/cart" || !c.NotAfter.Equal(notAfter) {
			t.Fatalf("reported certificate %+v; want cart's, expiring %s (malformed entries skipped)", c, notAfter)
		}
	}
}
