package mesh

import (
	"context"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"

	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

const (
	idCart = "spiffe://cluster.local/ns/shop/sa/cart"
	idDB   = "spiffe://cluster.local/ns/shop/sa/db"
	idWP   = "spiffe://cluster.local/ns/shop/sa/waypoint"
	idBad  = "spiffe://cluster.local/ns/other/sa/intruder"
)

var ip = netip.MustParseAddr

func testSnapshot() *model.Snapshot {
	cart := &model.Workload{UID: "uid-cart", Kind: model.KindPod, Name: "cart-0", Namespace: "shop", CanonicalName: "cart-app", WorkloadName: "cart",
		IPs: []netip.Addr{ip("198.19.3.50")}, Identity: idCart, Enrolled: true,
		PeerAuthentication:    model.PeerAuthResult{Mode: model.MTLSStrict, PortModes: map[uint32]model.MTLSMode{8081: model.MTLSPermissive}},
		AuthorizationPolicies: []model.NamespacedName{{Namespace: "shop", Name: "allow-db"}, {Namespace: "shop", Name: "deny-ip"}}}
	db := &model.Workload{UID: "uid-db", Kind: model.KindPod, Name: "db-0", Namespace: "shop", CanonicalName: "db-app", WorkloadName: "db",
		IPs: []netip.Addr{ip("198.19.3.51")}, Identity: idDB, Enrolled: true}
	out := &model.Workload{UID: "uid-out", Kind: model.KindPod, Name: "legacy-0", Namespace: "plain",
		IPs: []netip.Addr{ip("198.19.3.52")}, Identity: "spiffe://cluster.local/ns/plain/sa/default"}
	wpRef := &model.WaypointRef{Waypoint: model.NamespacedName{Namespace: "shop", Name: "waypoint"}, Addresses: []netip.Addr{ip("198.19.3.200")}}
	return model.NewSnapshot(model.SnapshotInput{
		Workloads: []*model.Workload{cart, db, out},
		Services: []*model.Service{
			{Name: "db", Namespace: "shop", Hostnames: []string{"db.shop.svc.cluster.local"}, VIPs: []netip.Addr{ip("198.19.3.100")},
				Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
				Endpoints: []model.Endpoint{{WorkloadUID: "uid-db", Addresses: []netip.Addr{ip("198.19.3.51")}, Ports: map[uint32]uint32{80: 8080}, Ready: true}}},
			{Name: "empty", Namespace: "shop", Hostnames: []string{"empty.shop.svc.cluster.local"}, VIPs: []netip.Addr{ip("198.19.3.101")}},
			{Name: "reviews", Namespace: "shop", Hostnames: []string{"reviews.shop.svc.cluster.local"}, VIPs: []netip.Addr{ip("198.19.3.102")}, Waypoint: wpRef,
				Endpoints: []model.Endpoint{{WorkloadUID: "uid-db", Addresses: []netip.Addr{ip("198.19.3.51")}, Ready: true}}},
		},
		Waypoints: []*model.Waypoint{{Name: "waypoint", Namespace: "shop", For: model.WaypointForService, Addresses: []netip.Addr{ip("198.19.3.200")}, Identity: idWP}},
		AuthorizationPolicies: []*model.AuthorizationPolicy{
			{Policy: &policy.Policy{Name: "allow-db", Namespace: "shop", Action: policy.Allow,
				Rules: []policy.Rule{{From: []policy.Source{{Principals: []string{"cluster.local/ns/shop/sa/db"}}}}}}},
			{Policy: &policy.Policy{Name: "deny-ip", Namespace: "shop", Action: policy.Deny,
				Rules: []policy.Rule{{From: []policy.Source{{IPBlocks: []string{"198.19.3.66/32"}}}}}}},
		},
	})
}

func TestResolve(t *testing.T) {
	s := testSnapshot()
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	dbW := proxy.Workload{Namespace: "shop", Name: "db", Identity: idDB}
	tests := []struct {
		dst    string
		want   proxy.Destination
		inMesh bool
	}{
		{dst: "198.19.3.51:8080", inMesh: true, want: proxy.Destination{Target: netip.MustParseAddrPort("198.19.3.51:8080"),
			Via: netip.MustParseAddrPort("198.19.3.51:15008"), Identity: idDB, Workload: dbW}},
		{dst: "198.19.3.100:80", inMesh: true, want: proxy.Destination{Target: netip.MustParseAddrPort("198.19.3.51:8080"),
			Via: netip.MustParseAddrPort("198.19.3.51:15008"), Identity: idDB, Workload: dbW, Service: "db.shop.svc.cluster.local"}},
		{dst: "198.19.3.102:9080", inMesh: true, want: proxy.Destination{Target: netip.MustParseAddrPort("198.19.3.102:9080"),
			Via: netip.MustParseAddrPort("198.19.3.200:15008"), Identity: idWP, Service: "reviews.shop.svc.cluster.local"}},
		{dst: "198.19.3.52:8080"}, // workload outside the mesh
		{dst: "198.19.3.101:80"},  // service without endpoints
		{dst: "198.19.3.99:443"},  // unknown address
	}
	for _, tt := range tests {
		got, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort(tt.dst))
		if ok != tt.inMesh {
			t.Errorf("Resolve(%s) in mesh = %v; want %v", tt.dst, ok, tt.inMesh)
			continue
		}
		if d := cmp.Diff(tt.want, got, cmp.Comparer(func(a, b netip.AddrPort) bool { return a == b }), cmpopts.IgnoreFields(proxy.Destination{}, "Release")); d != "" {
			t.Errorf("Resolve(%s) (-want +got):\n%s", tt.dst, d)
		}
		if got.Release != nil {
			got.Release()
		}
	}
	if _, ok := New(Options{}).Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.3.51:8080")); ok {
		t.Error("Resolve with no snapshot yet = in mesh; want passthrough")
	}
}

// lbSnapshot is a service with two enrolled endpoints (A .61, B .62) and
// the given load balancing, and a ServiceEntry with one endpoint outside
// the mesh, one that is a mesh pod and one known by hostname only.
func lbSnapshot(lb model.LoadBalancing) *model.Snapshot {
	pod := func(uid, addr string) *model.Workload {
		return &model.Workload{UID: uid, Kind: model.KindPod, Name: uid, Namespace: "shop", IPs: []netip.Addr{ip(addr)}, Identity: idDB, Enrolled: true}
	}
	ep := func(uid, addr string) model.Endpoint {
		return model.Endpoint{WorkloadUID: uid, Addresses: []netip.Addr{ip(addr)}, Ports: map[uint32]uint32{80: 8080}, Ready: true}
	}
	return model.NewSnapshot(model.SnapshotInput{
		Workloads: []*model.Workload{pod("a", "198.19.3.61"), pod("b", "198.19.3.62")},
		Services: []*model.Service{
			{Name: "db", Namespace: "shop", Hostnames: []string{"db.shop.svc.cluster.local"}, VIPs: []netip.Addr{ip("198.19.3.100")},
				Ports: []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}}, LoadBalancing: lb,
				Endpoints: []model.Endpoint{ep("a", "198.19.3.61"), ep("b", "198.19.3.62")}},
			{Name: "partner", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"api.partner.example"},
				VIPs: []netip.Addr{ip("198.19.44.30")}, Ports: []model.ServicePort{{Port: 443, Protocol: "TCP"}}, Resolution: "STATIC",
				Endpoints: []model.Endpoint{{Addresses: []netip.Addr{ip("198.19.200.11")}, Ports: map[uint32]uint32{443: 8443}, Ready: true}}},
			{Name: "inmesh", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"inmesh.example"},
				VIPs: []netip.Addr{ip("198.19.44.31")}, Ports: []model.ServicePort{{Port: 80, Protocol: "TCP"}}, Resolution: "STATIC",
				Endpoints: []model.Endpoint{{Addresses: []netip.Addr{ip("198.19.3.62")}, Ports: map[uint32]uint32{80: 8080}, Ready: true}}},
			{Name: "byname", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"byname.example"},
				VIPs: []netip.Addr{ip("198.19.44.32")}, Ports: []model.ServicePort{{Port: 80, Protocol: "TCP"}}, Resolution: "DNS",
				Endpoints: []model.Endpoint{{Hostname: "backend.partner.example", Ready: true}}},
		},
	})
}

// TestResolveLoadBalancing: a service VIP's endpoint is picked by the
// service's load balancing, as a DestinationRule sets it.
func TestResolveLoadBalancing(t *testing.T) {
	vip := netip.MustParseAddrPort("198.19.3.100:80")
	a, b := netip.MustParseAddrPort("198.19.3.61:8080"), netip.MustParseAddrPort("198.19.3.62:8080")
	resolve := func(t *testing.T, m *Mesh) proxy.Destination {
		t.Helper()
		d, ok := m.Resolve(proxy.Pod{}, vip)
		if !ok || (d.Target != a && d.Target != b) || d.Via != netip.AddrPortFrom(d.Target.Addr(), proxy.PortTunnel) {
			t.Fatalf("Resolve(VIP) = %+v, %v; want an endpoint through its tunnel port", d, ok)
		}
		return d
	}
	for _, lb := range []model.LoadBalancing{model.LBDefault, model.LBLeastRequest} {
		t.Run("least request "+string(lb), func(t *testing.T) {
			s := lbSnapshot(lb)
			m := New(Options{Snapshot: func() *model.Snapshot { return s }})
			// Connections one at a time (each ended before the next) go
			// round the endpoints.
			var seq []netip.AddrPort
			for range 4 {
				d := resolve(t, m)
				seq = append(seq, d.Target)
				d.Release()
			}
			if seq[0] == seq[1] || seq[1] == seq[2] || seq[2] == seq[3] {
				t.Errorf("one-at-a-time connections went to %v; want the endpoints in turn", seq)
			}
			// Ten long connections spread evenly; those on B end: new
			// ones go to B, which now has fewer open.
			var held, onB []proxy.Destination
			for range 10 {
				d := resolve(t, m)
				if d.Target == a {
					held = append(held, d)
				} else {
					onB = append(onB, d)
				}
			}
			if len(held) != 5 {
				t.Fatalf("10 concurrent connections put %d on A; want 5 (the fewer open each time)", len(held))
			}
			for _, d := range onB {
				d.Release()
			}
			for i := range 20 {
				d := resolve(t, m)
				if d.Target != b {
					t.Fatalf("connection %d with 5 open on A went to %s; want B (fewer open)", i, d.Target)
				}
				d.Release()
				d.Release() // a second call is harmless
			}
			for _, d := range held {
				d.Release()
			}
			if n := m.conns.open(a); n != 0 {
				t.Errorf("open connections counted on A after all ended = %d; want 0", n)
			}
		})
	}
	t.Run("round robin", func(t *testing.T) {
		s := lbSnapshot(model.LBRoundRobin)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		prev := resolve(t, m).Target // held: round robin does not look at load
		for range 6 {
			d := resolve(t, m)
			if d.Target == prev {
				t.Fatalf("round robin gave %s twice in a row", d.Target)
			}
			prev = d.Target
		}
	})
	t.Run("random", func(t *testing.T) {
		s := lbSnapshot(model.LBRandom)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		seen := map[netip.AddrPort]int{}
		for range 200 {
			seen[resolve(t, m).Target]++
		}
		if seen[a] == 0 || seen[b] == 0 {
			t.Errorf("random over 200 connections: %v; want both endpoints", seen)
		}
	})
	t.Run("passthrough", func(t *testing.T) {
		s := lbSnapshot(model.LBPassthrough)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		if d, ok := m.Resolve(proxy.Pod{}, vip); ok || d.Target.IsValid() {
			t.Errorf("PASSTHROUGH: Resolve = %+v, %v; want the address dialled, outside the tunnel", d, ok)
		}
	})
}

// TestResolveServiceEntryEndpoints: a ServiceEntry's static endpoint
// outside the mesh is dialled directly on its target port; one that is a
// mesh pod goes through the tunnel with the pod's identity; an endpoint
// known by hostname only leaves the connection to the address dialled.
func TestResolveServiceEntryEndpoints(t *testing.T) {
	s := lbSnapshot(model.LBDefault)
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.44.30:443"))
	if ok || d.Target != netip.MustParseAddrPort("198.19.200.11:8443") || d.Service != "api.partner.example" {
		t.Errorf("ServiceEntry endpoint outside the mesh: Resolve = %+v, %v; want 198.19.200.11:8443 directly, service api.partner.example", d, ok)
	}
	d, ok = m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.44.31:80"))
	if !ok || d.Target != netip.MustParseAddrPort("198.19.3.62:8080") || d.Identity != idDB || d.Via != netip.MustParseAddrPort("198.19.3.62:15008") {
		t.Errorf("ServiceEntry endpoint that is a mesh pod: Resolve = %+v, %v; want the tunnel to 198.19.3.62", d, ok)
	}
	if d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.44.32:80")); ok || d.Target.IsValid() {
		t.Errorf("ServiceEntry endpoint by hostname: Resolve = %+v, %v; want the address dialled", d, ok)
	}
}

// TestResolveExportTo: a service VIP not exported to the client's namespace
// is not the mesh's there: the connection passes through, as to any address
// the mesh does not know.
func TestResolveExportTo(t *testing.T) {
	db := &model.Workload{UID: "uid-db", Kind: model.KindPod, Name: "db-0", Namespace: "shop",
		IPs: []netip.Addr{ip("198.19.3.51")}, Identity: idDB, Enrolled: true}
	s := model.NewSnapshot(model.SnapshotInput{
		Workloads: []*model.Workload{db},
		Services: []*model.Service{{Name: "db", Namespace: "shop", Hostnames: []string{"db.shop.svc.cluster.local"},
			VIPs: []netip.Addr{ip("198.19.3.100")}, ExportTo: []string{"."},
			Ports:     []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
			Endpoints: []model.Endpoint{{WorkloadUID: "uid-db", Addresses: []netip.Addr{ip("198.19.3.51")}, Ports: map[uint32]uint32{80: 8080}, Ready: true}}}},
	})
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	vip := netip.MustParseAddrPort("198.19.3.100:80")
	if d, ok := m.Resolve(proxy.Pod{Workload: proxy.Workload{Namespace: "shop"}}, vip); !ok || d.Identity != idDB {
		t.Errorf("from its own namespace: Resolve = %+v, %v; want db's endpoint", d, ok)
	}
	if d, ok := m.Resolve(proxy.Pod{Workload: proxy.Workload{Namespace: "billing"}}, vip); ok {
		t.Errorf("from a namespace it is not exported to: Resolve = %+v; want passthrough", d)
	}
}

func TestPeerAuth(t *testing.T) {
	s := testSnapshot()
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	tests := []struct {
		uid  string
		port uint16
		want proxy.Mode
	}{
		{"uid-cart", 8080, proxy.ModeStrict},
		{"uid-cart", 8081, proxy.ModePermissive},
		{"uid-db", 8080, proxy.ModePermissive},
		{"uid-unknown", 8080, proxy.ModePermissive},
	}
	for _, tt := range tests {
		if got := m.PeerAuth(proxy.Pod{UID: tt.uid}, tt.port); got != tt.want {
			t.Errorf("PeerAuth(%s, %d) = %v; want %v", tt.uid, tt.port, got, tt.want)
		}
	}
}

func TestAuthorize(t *testing.T) {
	s := testSnapshot()
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	cart := proxy.Pod{UID: "uid-cart", IPs: []netip.Addr{ip("198.19.3.50")}}
	tests := []struct {
		name      string
		pod       proxy.Pod
		principal string
		src       string
		want      bool
	}{
		{name: "allowed principal", pod: cart, principal: idDB, src: "198.19.3.51", want: true},
		{name: "other principal", pod: cart, principal: idBad, src: "198.19.3.51", want: false},
		{name: "plaintext", pod: cart, src: "198.19.3.51", want: false},
		{name: "deny wins over allow", pod: cart, principal: idDB, src: "198.19.3.66", want: false},
		{name: "no policies", pod: proxy.Pod{UID: "uid-db"}, principal: idBad, src: "198.19.3.50", want: true},
	}
	for _, tt := range tests {
		d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: tt.pod, Principal: tt.principal, Source: ip(tt.src), Port: 8080})
		if d.Allow != tt.want {
			t.Errorf("%s: Authorize = %+v; want allow=%v", tt.name, d, tt.want)
		}
	}
}

// TestDecisionsWaitForConfig: an agent that has just started, or a local
// pod meshd has not pushed yet, waits for the config instead of deciding
// without it; inbound is refused if there is still none for the pod when
// the wait ends.
func TestDecisionsWaitForConfig(t *testing.T) {
	cart := proxy.Pod{UID: "uid-cart", IPs: []netip.Addr{ip("198.19.3.50")}}
	intruder := proxy.AuthzRequest{Pod: cart, Principal: idBad, Source: ip("198.19.3.51"), Port: 8080}
	pushLater := func(st *Store, s *model.Snapshot) {
		time.AfterFunc(50*time.Millisecond, func() { st.Set(s) })
	}

	st := NewStore()
	m := New(Options{Snapshot: st.Load, Changed: st.Changed, Wait: 10 * time.Second})
	pushLater(st, testSnapshot())
	if d := m.Authorize(context.Background(), intruder); d.Allow {
		t.Errorf("before the first config: Authorize = %+v; want the pushed policy's deny", d)
	}

	// meshd's push with cart trails cart's enrollment.
	st = NewStore()
	m = New(Options{Snapshot: st.Load, Changed: st.Changed, Wait: 10 * time.Second})
	st.Set(model.NewSnapshot(model.SnapshotInput{}))
	pushLater(st, testSnapshot())
	if got := m.PeerAuth(cart, 8080); got != proxy.ModeStrict {
		t.Errorf("pod pushed after its enrollment: PeerAuth = %v; want STRICT from the push", got)
	}
	st = NewStore()
	m = New(Options{Snapshot: st.Load, Changed: st.Changed, Wait: 10 * time.Second})
	pushLater(st, testSnapshot())
	if d, ok := m.Resolve(cart, netip.MustParseAddrPort("198.19.3.51:8080")); !ok || d.Identity != idDB {
		t.Errorf("before the first config: Resolve = %+v, %v; want the tunnel to db", d, ok)
	}

	// No config within the wait: refused, saying why.
	st = NewStore()
	m = New(Options{Snapshot: st.Load, Changed: st.Changed, Wait: 20 * time.Millisecond})
	d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: cart, Principal: idDB, Source: ip("198.19.3.51"), Port: 8080})
	if d.Allow || !strings.Contains(d.Reason, "meshd") {
		t.Errorf("no config at all: Authorize = %+v; want refused, naming meshd", d)
	}
	// A pod the config still lacks when the wait ends: refused (its
	// policies are unknown), and its next decision does not wait again.
	st.Set(testSnapshot())
	m = New(Options{Snapshot: st.Load, Changed: st.Changed, Wait: time.Second})
	newPod := proxy.Pod{UID: "uid-new"}
	if d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: newPod, Principal: idDB, Port: 8080}); d.Allow || !strings.Contains(d.Reason, "meshd") {
		t.Errorf("pod not in the config: Authorize = %+v; want refused, naming meshd", d)
	}
	began := time.Now()
	m.PeerAuth(newPod, 8080)
	if took := time.Since(began); took >= time.Second {
		t.Errorf("second decision for a pod the config lacks waited %v; want no second wait", took)
	}
}

func TestNamespaceOf(t *testing.T) {
	tests := []struct{ id, want string }{
		{idCart, "shop"},
		{"cluster.local/ns/a/sa/b", "a"},
		{"", ""},
		{"spiffe://td/other", ""},
	}
	for _, tt := range tests {
		if got := namespaceOf(tt.id); got != tt.want {
			t.Errorf("namespaceOf(%q) = %q; want %q", tt.id, got, tt.want)
		}
	}
}

func TestPeerWorkload(t *testing.T) {
	m := New(Options{Snapshot: testSnapshot})
	tests := []struct {
		name string
		src  netip.Addr
		peer string
		want proxy.Workload
	}{
		{"the workload at the address, with the peer's identity", ip("198.19.3.50"), idCart,
			proxy.Workload{Namespace: "shop", Name: "cart", Identity: idCart}},
		{"a waypoint forwarding for cart: only the peer is known", ip("198.19.3.50"), idWP,
			proxy.Workload{Namespace: "shop", Identity: idWP}},
		{"an address the model does not know", ip("198.19.3.99"), idBad,
			proxy.Workload{Namespace: "other", Identity: idBad}},
		{"no address", netip.Addr{}, idDB, proxy.Workload{Namespace: "shop", Identity: idDB}},
	}
	for _, tt := range tests {
		if got := m.PeerWorkload(tt.src, tt.peer); got != tt.want {
			t.Errorf("%s: PeerWorkload(%s, %s) = %+v; want %+v", tt.name, tt.src, tt.peer, got, tt.want)
		}
	}
}

// TestAuthorizeDestinationAddress: a destination ipBlocks rule on a
// dual-stack pod matches the address the client reached, not always the
// pod's first one.
func TestAuthorizeDestinationAddress(t *testing.T) {
	v4, v6 := ip("198.19.3.70"), ip("fd00::70")
	w := &model.Workload{UID: "uid-ds", Kind: model.KindPod, Name: "ds-0", Namespace: "shop", IPs: []netip.Addr{v4, v6}, Identity: idDB, Enrolled: true,
		AuthorizationPolicies: []model.NamespacedName{{Namespace: "shop", Name: "deny-v6"}}}
	s := model.NewSnapshot(model.SnapshotInput{
		Workloads: []*model.Workload{w},
		AuthorizationPolicies: []*model.AuthorizationPolicy{{Policy: &policy.Policy{Name: "deny-v6", Namespace: "shop", Action: policy.Deny,
			Rules: []policy.Rule{{When: []policy.Condition{{Key: "destination.ip", Values: []string{"fd00::70/128"}}}}}}}},
	})
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	pod := proxy.Pod{UID: "uid-ds", IPs: []netip.Addr{v4, v6}}
	if d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: pod, Principal: idCart, Destination: v6, Port: 8080}); d.Allow {
		t.Errorf("to the pod's IPv6 address: %+v; want denied", d)
	}
	if d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: pod, Principal: idCart, Destination: v4, Port: 8080}); !d.Allow {
		t.Errorf("to the pod's IPv4 address: %+v; want allowed", d)
	}
}
