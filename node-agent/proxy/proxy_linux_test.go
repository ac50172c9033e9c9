package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/pkg/testutil"
)

const (
	agentMark  = 0x539
	returnMark = 0x1000
	appPort    = 8080
)

var (
	idA   = "spiffe://cluster.local/ns/shop/sa/cart"
	idB   = "spiffe://cluster.local/ns/shop/sa/db"
	idBad = "spiffe://cluster.local/ns/other/sa/intruder"
)

// mesh is two enrolled pods, A (client) and B (server with an echo app),
// in netns on a veth pair, each with its proxy.
type mesh struct {
	a, b       Pod
	pa, pb     *Proxy
	pbShared   atomic.Pointer[Proxy] // pb, for A's Local hook on A's goroutines
	metrics    *Metrics
	tap        *Tap
	reg        *prometheus.Registry
	appSources chan netip.Addr
	// tunnelDials counts DialTunnel calls.
	tunnelDials atomic.Int32
}

type meshConfig struct {
	mode      Mode
	probe     func(netip.Addr, uint16) bool
	authorize func(context.Context, AuthzRequest) Decision
	// lateB starts B's proxy (its tunnel listener) this long after A's:
	// B's node agent enrolling it after the model already says enrolled.
	lateB time.Duration
	// origDst and resolve, when set, replace "every captured connection
	// was going to B's app" and its resolution to B through the tunnel.
	origDst netip.AddrPort
	resolve func(dst netip.AddrPort) (Destination, bool)
	// dns is Options.DNS.
	dns func(c net.Conn, orig netip.AddrPort)
	// local makes A and B pods of one agent (Options.Local).
	local bool
}

func newMesh(t *testing.T, name string, cfg meshConfig) *mesh {
	t.Helper()
	na, nb := nstest.Pair(t, name, netip.MustParseAddr("198.19.4.1"), netip.MustParseAddr("198.19.4.2"))
	m := &mesh{
		a:          Pod{Workload: Workload{Namespace: "shop", Name: "cart", Identity: idA}, Netns: na.Path, IPs: []netip.Addr{na.Addr}},
		b:          Pod{Workload: Workload{Namespace: "shop", Name: "db", Identity: idB}, Netns: nb.Path, IPs: []netip.Addr{nb.Addr}},
		reg:        prometheus.NewRegistry(),
		tap:        &Tap{},
		appSources: make(chan netip.Addr, 16),
	}
	m.metrics = NewMetrics(m.reg)
	if err := netns.PrepareReturnPath(m.b.Netns, netns.ReturnPath{Mark: returnMark, Table: 1539}); err != nil {
		t.Fatal(err)
	}
	// The app in B: echoes, and reports the client address it sees.
	app := nstest.MustListen(t)(netns.Listen(m.b.Netns, netip.AddrPortFrom(nb.Addr, appPort).String(), netns.ListenOptions{}))
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			m.appSources <- addrPort(c.RemoteAddr()).Addr()
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	bApp := netip.AddrPortFrom(nb.Addr, appPort)
	origDst := bApp
	if cfg.origDst.IsValid() {
		origDst = cfg.origDst
	}
	resolve := func(_ Pod, dst netip.AddrPort) (Destination, bool) {
		if dst != bApp {
			return Destination{}, false
		}
		return Destination{Target: dst, Via: netip.AddrPortFrom(nb.Addr, PortTunnel), Identity: idB,
			Workload: m.b.Workload, Service: "db.shop.svc.cluster.local"}, true
	}
	if cfg.resolve != nil {
		resolve = func(_ Pod, dst netip.AddrPort) (Destination, bool) { return cfg.resolve(dst) }
	}
	common := func(p Pod) Options {
		return Options{
			Pod: p, Mark: agentMark, ReturnMark: returnMark, Metrics: m.metrics, Tap: m.tap,
			// No eBPF here: every captured connection was going to B's app
			// (or cfg.origDst).
			OriginalDst: func(net.Conn) (netip.AddrPort, error) { return origDst, nil },
			InboundDst:  func(net.Conn) netip.AddrPort { return bApp },
			Resolve:     resolve,
			DialTunnel: func(ctx context.Context, src Pod, d Destination) (io.ReadWriteCloser, error) {
				m.tunnelDials.Add(1)
				return testDialTunnel(agentMark)(ctx, src, d)
			},
			Tunnel:      newTestTunnel,
			PeerAuth:    func(Pod, uint16) Mode { return cfg.mode },
			ProbeExempt: cfg.probe,
			Authorize:   cfg.authorize,
			DNS:         cfg.dns,
			Errorf:      t.Logf,
		}
	}
	var err error
	oa := common(m.a)
	if cfg.local {
		oa.Local = func(addr netip.Addr) *Proxy {
			if m.b.owns(addr) {
				return m.pbShared.Load()
			}
			return nil
		}
	}
	if m.pa, err = Start(oa); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.pa.Close() })
	startB := func() {
		if m.pb, err = Start(common(m.b)); err != nil {
			t.Error(err)
		}
		m.pbShared.Store(m.pb)
	}
	if cfg.lateB == 0 {
		startB()
		t.Cleanup(func() { m.pb.Close() })
		return m
	}
	started := make(chan struct{})
	time.AfterFunc(cfg.lateB, func() { startB(); close(started) })
	t.Cleanup(func() {
		<-started
		if m.pb != nil {
			m.pb.Close()
		}
	})
	return m
}

// wantAppSawA waits for B's app to accept a connection and checks that it
// came from pod A's address.
func (m *mesh) wantAppSawA(t *testing.T) {
	t.Helper()
	select {
	case src := <-m.appSources:
		if src != m.a.IPs[0] {
			t.Errorf("app saw client %s; want pod A's address %s", src, m.a.IPs[0])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("app never saw the connection")
	}
}

// dialFrom connects from pod p's netns to addr as an app would.
func dialFrom(t *testing.T, p Pod, addr netip.AddrPort) net.Conn {
	t.Helper()
	c, err := netns.Dial(context.Background(), p.Netns, addr.String(), netns.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	return c
}

// roundTrip writes msg and reads back its echo, closing the write side.
func roundTrip(c net.Conn, msg string) (string, error) {
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	c.(interface{ CloseWrite() error }).CloseWrite()
	b, err := io.ReadAll(c)
	return string(b), err
}

func TestOutboundThroughTunnel(t *testing.T) {
	m := newMesh(t, "mlna-ot", meshConfig{mode: ModeStrict})
	msg := strings.Repeat("payload ", 1000) // 8000 bytes
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	got, err := roundTrip(c, msg)
	if err != nil || got != msg {
		t.Fatalf("echo through the tunnel: %d bytes, %v; want the %d bytes sent", len(got), err, len(msg))
	}
	m.wantAppSawA(t)
	// Both reporters count the connection and every byte.
	waitClosed(t, m, 2)
	m.wantBothReported(t, len(msg))
}

// wantBothReported checks that the source and the destination each counted
// one mutual-TLS connection from A to B, closed, with n bytes each way.
func (m *mesh) wantBothReported(t *testing.T, n int) {
	t.Helper()
	for _, rep := range []struct {
		reporter string
		src      []string
		svc      string
	}{
		{"source", []string{"cart", "shop", idA}, "db.shop.svc.cluster.local"},
		{"destination", []string{"unknown", "unknown", idA}, "unknown"},
	} {
		labels := append(append([]string{rep.reporter}, rep.src...), "db", "shop", idB, rep.svc, "mutual_tls")
		for _, c := range []struct {
			vec  *prometheus.CounterVec
			name string
			want float64
		}{
			{m.metrics.opened, "opened", 1},
			{m.metrics.closed, "closed", 1},
			{m.metrics.received, "received", float64(n)},
			{m.metrics.sent, "sent", float64(n)},
		} {
			if got := value(c.vec.WithLabelValues(labels...)); got != c.want {
				t.Errorf("istio_tcp %s (reporter=%s) = %v; want %v", c.name, rep.reporter, got, c.want)
			}
		}
	}
}

// TestOutboundWaitsForEnrollingPeer: the model says B is in the mesh before
// B's node agent listens on its tunnel port (meshd's push beat the agent's
// own watch): A's connection waits for the listener instead of failing.
func TestOutboundWaitsForEnrollingPeer(t *testing.T) {
	m := newMesh(t, "mlna-le", meshConfig{mode: ModeStrict, lateB: 300 * time.Millisecond})
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if got, err := roundTrip(c, "early"); err != nil || got != "early" {
		t.Fatalf("echo while B's tunnel listener was still to come = %q, %v; want early", got, err)
	}
	if got := value(m.metrics.refused.WithLabelValues("source", "db", "shop", ReasonDialFailed)); got != 0 {
		t.Errorf("refused dial_failed = %v; want 0", got)
	}
}

// TestOutboundToChosenEndpointOutsideMesh: a service endpoint outside the
// mesh (a ServiceEntry's address) that Resolve chose is dialled directly,
// not the address the app dialled (a VIP nothing listens on), and the
// resolver hears once that the connection ended.
func TestOutboundToChosenEndpointOutsideMesh(t *testing.T) {
	vip := netip.MustParseAddrPort("198.19.4.100:80")
	released := make(chan struct{}, 4)
	var bApp atomic.Pointer[netip.AddrPort] // known once the pods are up
	m := newMesh(t, "mlna-ep", meshConfig{mode: ModePermissive, origDst: vip, resolve: func(dst netip.AddrPort) (Destination, bool) {
		if dst != vip {
			return Destination{}, false
		}
		return Destination{Target: *bApp.Load(), Service: "api.partner.example", Release: func() { released <- struct{}{} }}, false
	}})
	bApp.Store(new(netip.AddrPortFrom(m.b.IPs[0], appPort)))
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if got, err := roundTrip(c, "direct"); err != nil || got != "direct" {
		t.Fatalf("echo through the chosen endpoint = %q, %v; want direct", got, err)
	}
	m.wantAppSawA(t)
	waitClosed(t, m, 1)
	select {
	case <-released:
	case <-time.After(5 * time.Second):
		t.Fatal("Release was not called after the connection ended")
	}
	select {
	case <-released:
		t.Error("Release called twice for one connection")
	case <-time.After(100 * time.Millisecond):
	}
	if got := value(m.metrics.opened.WithLabelValues("source", "cart", "shop", idA, "unknown", "unknown", "unknown", "api.partner.example", "none")); got != 1 {
		t.Errorf("passthrough connections opened = %v; want 1", got)
	}
}

func waitClosed(t *testing.T, m *mesh, n int) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if closed := testutil.MetricSum(t, m.reg, "istio_tcp_connections_closed_total", nil); closed >= float64(n) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("fewer than %d connections closed in time", n)
}

func refused(m *mesh, reporter string, w Workload, reason string) float64 {
	return value(m.metrics.refused.WithLabelValues(reporter, w.Name, w.Namespace, reason))
}

func TestInboundPolicy(t *testing.T) {
	m := newMesh(t, "mlna-ip", meshConfig{mode: ModeStrict, authorize: func(_ context.Context, r AuthzRequest) Decision {
		// ALLOW from cart only.
		return Decision{Allow: r.Principal == idA, Reason: "allow-cart"}
	}})
	tests := []struct {
		name       string
		identity   string
		target     netip.AddrPort
		wantReason string // empty: served
	}{
		{name: "allowed identity", identity: idA, target: netip.AddrPortFrom(m.b.IPs[0], appPort)},
		{name: "other identity", identity: idBad, target: netip.AddrPortFrom(m.b.IPs[0], appPort), wantReason: ReasonDenied},
		{name: "not this pod", identity: idA, target: netip.MustParseAddrPort("198.19.4.99:8080"), wantReason: ReasonNotThisPod},
		{name: "mesh port", identity: idA, target: netip.AddrPortFrom(m.b.IPs[0], PortInbound), wantReason: ReasonMeshPort},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			before := refused(m, "destination", m.b.Workload, tt.wantReason)
			c, err := dialTestTunnel(ctx, m.a.Netns, tt.identity, agentMark, Destination{
				Target: tt.target, Via: netip.AddrPortFrom(m.b.IPs[0], PortTunnel),
			})
			if tt.wantReason != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantReason) {
					t.Fatalf("stream from %s to %s: %v; want refused %s", tt.identity, tt.target, err, tt.wantReason)
				}
				if got := refused(m, "destination", m.b.Workload, tt.wantReason); got != before+1 {
					t.Errorf("refused{reason=%s} = %v; want %v", tt.wantReason, got, before+1)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			if got, err := roundTrip(c, "hello"); err != nil || got != "hello" {
				t.Errorf("echo = %q, %v; want hello", got, err)
			}
		})
	}
}

func TestPlaintextInbound(t *testing.T) {
	tests := []struct {
		name      string
		mode      Mode
		probe     func(netip.Addr, uint16) bool
		onlyAllow string // an L4 ALLOW for this identity only
		wantReset bool
	}{
		{name: "STRICT", mode: ModeStrict, wantReset: true},
		{name: "PERMISSIVE", mode: ModePermissive},
		// A kubelet probe from the node (here: pod A's address) to the app's
		// probe port is served under STRICT; anything else is not.
		{name: "STRICT probe", mode: ModeStrict, probe: func(src netip.Addr, port uint16) bool {
			return src == netip.MustParseAddr("198.19.4.1") && port == appPort
		}},
		{name: "STRICT other port exempt", mode: ModeStrict, wantReset: true, probe: func(src netip.Addr, port uint16) bool {
			return port == 9999
		}},
		// An ALLOW policy for some identity does not stop the kubelet's
		// probes either (Istio's probes bypass ztunnel): the pod stays Ready.
		{name: "STRICT probe, ALLOW for another identity", mode: ModeStrict, onlyAllow: idB, probe: func(src netip.Addr, port uint16) bool {
			return src == netip.MustParseAddr("198.19.4.1") && port == appPort
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cfg := meshConfig{mode: tt.mode, probe: tt.probe}
			if tt.onlyAllow != "" {
				cfg.authorize = func(_ context.Context, r AuthzRequest) Decision {
					return Decision{Allow: r.Principal == tt.onlyAllow, Reason: "allow-" + tt.onlyAllow}
				}
			}
			m := newMesh(t, "mlna-pt", cfg)
			c, err := netns.Dial(context.Background(), m.a.Netns, netip.AddrPortFrom(m.b.IPs[0], PortInbound).String(), netns.DialOptions{Timeout: 5 * time.Second})
			var got string
			if err == nil {
				// The reset may come before or after the handshake completes.
				defer c.Close()
				c.SetDeadline(time.Now().Add(10 * time.Second))
				got, err = roundTrip(c, "plain")
			}
			if tt.wantReset {
				if !errors.Is(err, syscall.ECONNRESET) || got != "" {
					t.Fatalf("plaintext under STRICT: read %q, %v; want a reset and nothing served", got, err)
				}
				if n := refused(m, "destination", m.b.Workload, ReasonStrict); n != 1 {
					t.Errorf("refused{reason=%s} = %v; want 1", ReasonStrict, n)
				}
				return
			}
			if err != nil || got != "plain" {
				t.Fatalf("plaintext under PERMISSIVE: %q, %v; want the echo", got, err)
			}
			if src := <-m.appSources; src != m.a.IPs[0] {
				t.Errorf("app saw %s; want the client %s", src, m.a.IPs[0])
			}
		})
	}
}

func TestDrain(t *testing.T) {
	m := newMesh(t, "mlna-dr", meshConfig{mode: ModePermissive})
	// A long connection is open when the drain starts.
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if _, err := io.WriteString(c, "first"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		drained <- m.pa.Drain(ctx)
	}()
	// New connections are refused once the listener is closed.
	deadline := time.Now().Add(5 * time.Second)
	for {
		nc, err := netns.Dial(context.Background(), m.a.Netns, netip.AddrPortFrom(m.a.IPs[0], PortOutbound).String(), netns.DialOptions{Timeout: time.Second})
		if err != nil {
			break
		}
		nc.Close()
		if time.Now().After(deadline) {
			t.Fatal("15001 still accepts while draining")
		}
		time.Sleep(10 * time.Millisecond)
	}
	// The open connection still works, and the drain ends when it closes.
	if got, err := roundTrip(c, "second"); err != nil || got != "second" {
		t.Fatalf("open connection during drain: %q, %v; want the echo", got, err)
	}
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("Drain = %v; want nil (the connection finished in time)", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Drain did not return after the last connection closed")
	}
}

func value(c prometheus.Counter) float64 {
	var m dto.Metric
	if err := c.Write(&m); err != nil {
		panic(err)
	}
	return m.GetCounter().GetValue()
}
