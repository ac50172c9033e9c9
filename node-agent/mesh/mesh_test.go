package mesh

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/google/go-cmp/cmp/cmpopts"
	"golang.org/x/net/dns/dnsmessage"

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

// dnsServer answers A queries on loopback from names (lower case, no
// trailing dot): a name not there is NXDOMAIN, AAAA is answered with no
// records. It counts the A queries per name.
type dnsServer struct {
	addr    string
	mu      sync.Mutex
	queries map[string]int
	ttls    map[string]uint32 // a name's records' TTL; 30 when not set
}

func startDNS(t *testing.T, names map[string][]string) *dnsServer {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	srv := &dnsServer{addr: pc.LocalAddr().String(), queries: map[string]int{}, ttls: map[string]uint32{}}
	go func() {
		buf := make([]byte, 512)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			var p dnsmessage.Parser
			h, err := p.Start(buf[:n])
			if err != nil {
				continue
			}
			q, err := p.Question()
			if err != nil {
				continue
			}
			name := strings.ToLower(strings.TrimSuffix(q.Name.String(), "."))
			b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RecursionAvailable: true})
			addrs, known := names[name]
			if !known {
				b = dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: h.ID, Response: true, RCode: dnsmessage.RCodeNameError})
			}
			b.StartQuestions()
			b.Question(q)
			b.StartAnswers()
			if q.Type == dnsmessage.TypeA {
				srv.mu.Lock()
				srv.queries[name]++
				ttl, ok := srv.ttls[name]
				if !ok {
					ttl = 30
				}
				srv.mu.Unlock()
				for _, a := range addrs {
					b.AResource(dnsmessage.ResourceHeader{Name: q.Name, Class: dnsmessage.ClassINET, TTL: ttl}, dnsmessage.AResource{A: netip.MustParseAddr(a).As4()})
				}
			}
			out, err := b.Finish()
			if err == nil {
				pc.WriteTo(out, from)
			}
		}
	}()
	return srv
}

func (d *dnsServer) count(name string) int {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.queries[name]
}

// lookup resolves through the server, as the agent resolves through the
// cluster DNS (DNSLookup, with the server's address for resolv.conf's).
func (d *dnsServer) lookup(ctx context.Context, host string) ([]netip.Addr, error) {
	return DNSLookup(func(ctx context.Context, _, _ string) (net.Conn, error) {
		var dl net.Dialer
		return dl.DialContext(ctx, "udp", d.addr)
	})(ctx, host)
}

// TestResolveServiceEntryByHostname: a ServiceEntry endpoint known by
// hostname (resolution DNS) is resolved by the agent, through a real DNS
// exchange, and the pod's connection to the entry's address goes to what
// the name resolves to; the answer is cached; a name resolving to a
// Service's VIP goes on to that Service's endpoints through the tunnel; a
// name that does not resolve, or only to loopback, passes through and is
// reported.
func TestResolveServiceEntryByHostname(t *testing.T) {
	dns := startDNS(t, map[string][]string{
		"backend.partner.example":    {"198.19.200.21", "198.19.200.22"},
		"db-alias.partner.example":   {"198.19.3.100"},
		"local.partner.example":      {"127.0.0.1"},
		"idle-alias.partner.example": {"198.19.3.110"},
	})
	se := func(name, vip, res, host string, port uint32) *model.Service {
		return &model.Service{Name: name, Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{name + ".example"},
			VIPs: []netip.Addr{ip(vip)}, Ports: []model.ServicePort{{Port: 80, Protocol: "TCP"}}, Resolution: res,
			LoadBalancing: model.LBRoundRobin,
			Endpoints:     []model.Endpoint{{Hostname: host, Ports: map[uint32]uint32{80: port}, Ready: true}}}
	}
	base := lbSnapshot(model.LBDefault)
	s := model.NewSnapshot(model.SnapshotInput{
		Workloads: base.Workloads(),
		Services: append(base.Services(),
			se("strict", "198.19.44.40", "DNS", "backend.partner.example", 9080),
			se("logical", "198.19.44.41", "DNS_ROUND_ROBIN", "backend.partner.example", 9080),
			se("alias", "198.19.44.42", "DNS", "db-alias.partner.example", 80), // db's port 80
			se("dead", "198.19.44.43", "DNS", "dead.partner.example", 9080),
			se("local", "198.19.44.44", "DNS", "local.partner.example", 9080),
			se("idle", "198.19.44.45", "DNS", "idle-alias.partner.example", 80),
			&model.Service{Name: "idle", Namespace: "shop", Hostnames: []string{"idle.shop.svc.cluster.local"}, VIPs: []netip.Addr{ip("198.19.3.110")},
				Ports: []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}}}),
	})
	var reported []string
	var mu sync.Mutex
	m := New(Options{Snapshot: func() *model.Snapshot { return s }, LookupHost: dns.lookup,
		Errorf: func(format string, args ...any) {
			mu.Lock()
			defer mu.Unlock()
			reported = append(reported, fmt.Sprintf(format, args...))
		}})

	targets := func(vip string) map[netip.AddrPort]int {
		seen := map[netip.AddrPort]int{}
		for range 6 {
			d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort(vip+":80"))
			if ok {
				t.Fatalf("Resolve(%s) = %+v in the mesh; want the resolved address directly", vip, d)
			}
			seen[d.Target]++
		}
		return seen
	}
	r1, r2 := netip.MustParseAddrPort("198.19.200.21:9080"), netip.MustParseAddrPort("198.19.200.22:9080")
	if got := targets("198.19.44.40"); len(got) != 2 || got[r1] != 3 || got[r2] != 3 {
		t.Errorf("resolution DNS, round robin: targets %v; want both resolved addresses on port 9080, 3 each", got)
	}
	if got := targets("198.19.44.41"); len(got) != 1 || got[r1] != 6 {
		t.Errorf("resolution DNS_ROUND_ROBIN: targets %v; want the first resolved address only", got)
	}
	if n := dns.count("backend.partner.example"); n != 1 {
		t.Errorf("backend.partner.example was asked %d times for 14 connections; want once (cached)", n)
	}

	d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.44.42:80"))
	if !ok || d.Identity != idDB || d.Via != netip.AddrPortFrom(d.Target.Addr(), proxy.PortTunnel) || d.Service != "alias.example" ||
		(d.Target != netip.MustParseAddrPort("198.19.3.61:8080") && d.Target != netip.MustParseAddrPort("198.19.3.62:8080")) {
		t.Errorf("a name resolving to the db Service's VIP: Resolve = %+v, %v; want a db endpoint through the tunnel", d, ok)
	}

	if d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.44.45:80")); ok || d.Target != netip.MustParseAddrPort("198.19.3.110:80") {
		t.Errorf("a name resolving to the VIP of a Service with no endpoint: Resolve = %+v, %v; want that VIP dialled", d, ok)
	}

	for _, vip := range []string{"198.19.44.43", "198.19.44.44"} {
		if d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort(vip+":80")); ok || d.Target.IsValid() {
			t.Errorf("Resolve(%s) = %+v, %v; want the address dialled (no usable answer)", vip, d, ok)
		}
	}
	m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.44.43:80"))
	if n := dns.count("dead.partner.example"); n != 1 {
		t.Errorf("dead.partner.example was asked %d times for 2 connections within %v; want once (failures cached)", n, failedTTL)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reported) != 2 || !strings.Contains(reported[0]+reported[1], `"dead.partner.example"`) || !strings.Contains(reported[0]+reported[1], `"local.partner.example"`) {
		t.Errorf("reported %q; want one report for each of dead.partner.example and local.partner.example", reported)
	}
}

// TestHostResolverRefresh: an expired answer is served while one lookup in
// the background refreshes it; a failure is retried once it expires.
func TestHostResolverRefresh(t *testing.T) {
	var mu sync.Mutex
	now := time.Unix(1000, 0)
	answer, calls := "198.19.200.31", 0
	fail := false
	refreshed := make(chan struct{}, 4)
	r := &hostResolver{
		now:    func() time.Time { mu.Lock(); defer mu.Unlock(); return now },
		errorf: func(string, ...any) {},
		lookup: func(ctx context.Context, host string) ([]netip.Addr, error) {
			mu.Lock()
			defer mu.Unlock()
			calls++
			defer func() { refreshed <- struct{}{} }()
			if fail {
				return nil, errors.New("SERVFAIL")
			}
			return []netip.Addr{netip.MustParseAddr(answer)}, nil
		},
	}
	advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
	get := func() string {
		t.Helper()
		a, err := r.addrs("api.partner.example")
		if err != nil || len(a) != 1 {
			return fmt.Sprint(a, err)
		}
		return a[0].String()
	}
	if got := get(); got != "198.19.200.31" {
		t.Fatalf("first lookup: %s", got)
	}
	<-refreshed
	mu.Lock()
	answer = "198.19.200.32"
	mu.Unlock()
	advance(resolvedTTL + time.Second)
	if got := get(); got != "198.19.200.31" {
		t.Errorf("expired answer while refreshing: %s; want the old one served", got)
	}
	<-refreshed
	if got := get(); got != "198.19.200.32" {
		t.Errorf("after the refresh: %s; want the new answer", got)
	}
	mu.Lock()
	if calls != 2 {
		t.Errorf("lookups: %d; want 2 (first, one refresh)", calls)
	}
	fail = true
	mu.Unlock()
	r.entries = nil // a new name's story: failures
	if _, err := r.addrs("api.partner.example"); err == nil {
		t.Fatal("failing lookup: want an error")
	}
	<-refreshed
	mu.Lock()
	fail = false
	mu.Unlock()
	if _, err := r.addrs("api.partner.example"); err == nil {
		t.Error("within failedTTL: want the cached failure")
	}
	advance(failedTTL + time.Second)
	if got := get(); got != "198.19.200.32" {
		t.Errorf("after failedTTL: %s; want a new lookup's answer", got)
	}
}

// TestHostResolverTTL: through a real DNS exchange, an answer is kept for
// its records' TTL (not refreshed before it, refreshed after), bounded to
// [minResolvedTTL, maxResolvedTTL].
func TestHostResolverTTL(t *testing.T) {
	dns := startDNS(t, map[string][]string{
		"minute.partner.example":  {"198.19.200.41"},
		"zero.partner.example":    {"198.19.200.42"},
		"day.partner.example":     {"198.19.200.43"},
		"default.partner.example": {"198.19.200.44"},
	})
	dns.mu.Lock()
	dns.ttls["minute.partner.example"] = 60
	dns.ttls["zero.partner.example"] = 0
	dns.ttls["day.partner.example"] = 86400
	dns.mu.Unlock()
	for _, tt := range []struct {
		host string
		keep time.Duration // how long the answer is kept
	}{
		{"minute.partner.example", time.Minute},
		{"zero.partner.example", minResolvedTTL},
		{"day.partner.example", maxResolvedTTL},
		{"default.partner.example", 30 * time.Second}, // the test server's TTL
	} {
		t.Run(tt.host, func(t *testing.T) {
			var mu sync.Mutex
			now := time.Unix(1000, 0)
			r := &hostResolver{lookup: dns.lookup, errorf: t.Logf,
				now: func() time.Time { mu.Lock(); defer mu.Unlock(); return now }}
			advance := func(d time.Duration) { mu.Lock(); now = now.Add(d); mu.Unlock() }
			if _, err := r.addrs(tt.host); err != nil {
				t.Fatal(err)
			}
			advance(tt.keep - time.Second)
			r.addrs(tt.host)
			time.Sleep(50 * time.Millisecond) // a refresh, had one started, would have asked by now
			if n := dns.count(tt.host); n != 1 {
				t.Fatalf("asked %d times within the TTL; want once", n)
			}
			advance(2 * time.Second)
			r.addrs(tt.host)
			deadline := time.Now().Add(5 * time.Second)
			for dns.count(tt.host) < 2 && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if n := dns.count(tt.host); n != 2 {
				t.Errorf("asked %d times once the answer was %v old; want a refresh", n, tt.keep+time.Second)
			}
		})
	}
}

// TestTTLConnStream: over a stream (DNS over TCP), messages are put
// together from reads of any size, each one's TTL seen once.
func TestTTLConnStream(t *testing.T) {
	msg := func(ttl uint32) []byte {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{Response: true})
		b.StartQuestions()
		name := dnsmessage.MustNewName("api.partner.example.")
		b.Question(dnsmessage.Question{Name: name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		b.StartAnswers()
		b.CNAMEResource(dnsmessage.ResourceHeader{Name: name, Class: dnsmessage.ClassINET, TTL: ttl + 100},
			dnsmessage.CNAMEResource{CNAME: dnsmessage.MustNewName("lb.partner.example.")})
		b.AResource(dnsmessage.ResourceHeader{Name: dnsmessage.MustNewName("lb.partner.example."), Class: dnsmessage.ClassINET, TTL: ttl},
			dnsmessage.AResource{A: [4]byte{198, 19, 200, 51}})
		out, err := b.Finish()
		if err != nil {
			t.Fatal(err)
		}
		return append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)
	}
	for _, chunk := range []int{1, 3, 1000} {
		o := &ttlObserver{}
		a, b := net.Pipe()
		c := &ttlConn{Conn: a, o: o, stream: true}
		stream := append(msg(120), msg(45)...)
		go func() {
			for p := stream; len(p) > 0; {
				n := min(chunk, len(p))
				b.Write(p[:n])
				p = p[n:]
			}
			b.Close()
		}()
		io.Copy(io.Discard, c)
		a.Close()
		if got := o.result(); got != 45*time.Second {
			t.Errorf("reads of %d bytes: TTL %v; want 45s (the smallest record's, of both messages)", chunk, got)
		}
	}
}

// TestResolveTrafficDistribution: a service with PreferClose sends a
// client's connections to the ready endpoints of its zone, then of its
// region when its zone has none, then anywhere; PreferSameNode to its
// node's, then anywhere; without one (or from a client whose place is
// unknown) every ready endpoint takes connections.
func TestResolveTrafficDistribution(t *testing.T) {
	west := func(zone string) model.Locality { return model.Locality{Region: "west", Zone: zone} }
	type ep struct {
		name, node string
		loc        model.Locality
		ready      bool
	}
	tests := []struct {
		name       string
		dist       model.TrafficDistribution
		clientNode string
		clientLoc  model.Locality
		eps        []ep
		want       []string // the endpoints that may be picked; none: no endpoint (passthrough)
		local      bool     // internalTrafficPolicy: Local
	}{
		{"prefer close: same zone", model.TrafficPreferClose, "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), true}, {"a2", "n2", west("a"), true}, {"b1", "n3", west("b"), true}}, []string{"a1", "a2"}, false},
		{"prefer close: zone empty, same region", model.TrafficPreferClose, "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), false}, {"b1", "n3", west("b"), true}, {"e1", "n4", model.Locality{Region: "east", Zone: "a"}, true}}, []string{"b1"}, false},
		{"prefer close: region empty, anywhere", model.TrafficPreferClose, "n1", west("a"),
			[]ep{{"e1", "n4", model.Locality{Region: "east", Zone: "a"}, true}, {"e2", "n5", model.Locality{Region: "east", Zone: "b"}, true}}, []string{"e1", "e2"}, false},
		{"prefer same zone: subzone ranks too", model.TrafficPreferSameZone, "n1", model.Locality{Region: "west", Zone: "a", Subzone: "rack1"},
			[]ep{{"r1", "n2", model.Locality{Region: "west", Zone: "a", Subzone: "rack1"}, true}, {"r2", "n3", model.Locality{Region: "west", Zone: "a", Subzone: "rack2"}, true}}, []string{"r1"}, false},
		{"prefer same node", model.TrafficPreferSameNode, "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), true}, {"a2", "n2", west("a"), true}}, []string{"a1"}, false},
		{"prefer same node: none ready there", model.TrafficPreferSameNode, "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), false}, {"a2", "n2", west("a"), true}, {"b1", "n3", west("b"), true}}, []string{"a2", "b1"}, false},
		{"none: every endpoint", "", "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), true}, {"b1", "n3", west("b"), true}}, []string{"a1", "b1"}, false},
		{"client's place unknown: every endpoint", model.TrafficPreferClose, "n1", model.Locality{},
			[]ep{{"a1", "n1", west("a"), true}, {"b1", "n3", west("b"), true}}, []string{"a1", "b1"}, false},
		{"internal traffic policy local: this node's endpoints only", "", "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), true}, {"a3", "n1", west("a"), true}, {"a2", "n2", west("a"), true}}, []string{"a1", "a3"}, true},
		{"internal traffic policy local: none ready on this node, no endpoint", "", "n1", west("a"),
			[]ep{{"a1", "n1", west("a"), false}, {"a2", "n2", west("a"), true}}, nil, true},
		{"internal traffic policy local wins over prefer close", model.TrafficPreferClose, "n1", west("a"),
			[]ep{{"a2", "n2", west("a"), true}, {"b1", "n1", west("b"), true}}, []string{"b1"}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			client := &model.Workload{UID: "uid-client", Kind: model.KindPod, Name: "client", Namespace: "shop", Node: tt.clientNode,
				Locality: tt.clientLoc, IPs: []netip.Addr{ip("198.19.4.1")}, Identity: idCart, Enrolled: true, Ready: true}
			ws := []*model.Workload{client}
			svc := &model.Service{Name: "api", Namespace: "shop", Hostnames: []string{"api.shop.svc.cluster.local"},
				VIPs: []netip.Addr{ip("198.19.4.100")}, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
				TrafficDistribution: tt.dist, NodeLocal: tt.local, LoadBalancing: model.LBRoundRobin}
			byAddr := map[netip.Addr]string{}
			for i, e := range tt.eps {
				a := netip.AddrFrom4([4]byte{198, 19, 4, byte(10 + i)})
				byAddr[a] = e.name
				ws = append(ws, &model.Workload{UID: "uid-" + e.name, Kind: model.KindPod, Name: e.name, Namespace: "shop", Node: e.node,
					Locality: e.loc, IPs: []netip.Addr{a}, Identity: idDB, Enrolled: true, Ready: e.ready})
				svc.Endpoints = append(svc.Endpoints, model.Endpoint{WorkloadUID: "uid-" + e.name, Addresses: []netip.Addr{a}, Ports: map[uint32]uint32{80: 8080}, Ready: e.ready})
			}
			s := model.NewSnapshot(model.SnapshotInput{Workloads: ws, Services: []*model.Service{svc}})
			m := New(Options{Snapshot: func() *model.Snapshot { return s }})
			got := map[string]bool{}
			for range 4 * len(tt.eps) {
				d, ok := m.Resolve(proxy.Pod{UID: "uid-client"}, netip.MustParseAddrPort("198.19.4.100:80"))
				if len(tt.want) == 0 {
					if ok || d.Target.IsValid() {
						t.Fatalf("Resolve = %+v, %v; want no endpoint (passthrough to the VIP)", d, ok)
					}
					continue
				}
				if !ok {
					t.Fatalf("Resolve = %+v, %v; want an endpoint", d, ok)
				}
				got[byAddr[d.Target.Addr()]] = true
			}
			want := map[string]bool{}
			for _, w := range tt.want {
				want[w] = true
			}
			if !cmp.Equal(got, want) {
				t.Errorf("connections went to %v; want exactly %v", got, want)
			}
		})
	}
}
