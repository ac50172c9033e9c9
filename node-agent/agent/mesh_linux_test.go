package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"path/filepath"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/enroll"
	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/mesh"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/tunnel"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestMeshDataPath is the whole node agent on one kernel: the real eBPF data
// path captures pod A's connect to pod B, the model resolves B, the bytes go
// through a real HBONE tunnel (mTLS, SPIFFE IDs from a real CA), B's agent
// applies STRICT and an L4 ALLOW for A's identity, and B's app sees A's
// address. A plaintext client outside the mesh is refused by STRICT through
// the tc steering.
func TestMeshDataPath(t *testing.T) {
	dp := loadDatapath(t)

	na, nb := nstest.Pair(t, "mlna-md", netip.MustParseAddr("198.19.4.41"), netip.MustParseAddr("198.19.4.42"))
	idA, idB := "spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/shop/sa/db"

	// The model: both pods enrolled, B STRICT with an ALLOW for A only.
	snap := model.NewSnapshot(model.SnapshotInput{
		Workloads: []*model.Workload{
			{UID: "uid-a", Name: "cart-0", Namespace: "shop", CanonicalName: "cart", IPs: []netip.Addr{na.Addr}, Identity: idA, Enrolled: true},
			{UID: "uid-b", Name: "db-0", Namespace: "shop", CanonicalName: "db", IPs: []netip.Addr{nb.Addr}, Identity: idB, Enrolled: true,
				PeerAuthentication:    model.PeerAuthResult{Mode: model.MTLSStrict},
				AuthorizationPolicies: []model.NamespacedName{{Namespace: "shop", Name: "allow-cart"}}},
		},
		AuthorizationPolicies: []*model.AuthorizationPolicy{{Policy: &policy.Policy{Name: "allow-cart", Namespace: "shop", Action: policy.Allow,
			Rules: []policy.Rule{{From: []policy.Source{{Principals: []string{"cluster.local/ns/shop/sa/cart"}}}}}}}},
	})

	authority := testAuthority(t)
	ag := meshAgent(t, dp, authority, snap)
	ctx := context.Background()
	for _, p := range []enroll.Pod{
		{UID: "uid-a", Namespace: "shop", Name: "cart-0", Workload: "cart", ServiceAccount: "cart", IPs: []netip.Addr{na.Addr}, Netns: na.Path, IfName: "mlna-mda"},
		{UID: "uid-b", Namespace: "shop", Name: "db-0", Workload: "db", ServiceAccount: "db", IPs: []netip.Addr{nb.Addr}, Netns: nb.Path, IfName: "mlna-mdb"},
	} {
		if err := ag.Enroll(ctx, p); err != nil {
			t.Fatalf("enroll %s: %v", p.Name, err)
		}
	}

	app := nstest.MustListen(t)(netns.Listen(nb.Path, nb.Addr.String()+":8080", netns.ListenOptions{}))
	sources := make(chan string, 4)
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			sources <- addrOf(c.RemoteAddr())
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	c, err := netns.Dial(ctx, na.Path, nb.Addr.String()+":8080", netns.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatalf("pod A dials pod B: %v", err)
	}
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, "through the mesh")
	c.(*net.TCPConn).CloseWrite()
	got, err := io.ReadAll(c)
	c.Close()
	if err != nil || string(got) != "through the mesh" {
		t.Fatalf("echo through the mesh = %q, %v", got, err)
	}
	if src := <-sources; src != na.Addr.String() {
		t.Errorf("app in B sees %s; want pod A %s", src, na.Addr)
	}

	// Unenroll A: its connect is no longer captured, so it arrives at B in
	// plaintext, where tc steers it to 15006 and STRICT resets it.
	if err := ag.Unenroll(ctx, enroll.Pod{UID: "uid-a"}); err != nil {
		t.Fatal(err)
	}
	got = nil
	c, err = netns.Dial(ctx, na.Path, nb.Addr.String()+":8080", netns.DialOptions{Timeout: 5 * time.Second})
	if err == nil {
		// The reset may end the connect, the write or the read.
		c.SetDeadline(time.Now().Add(10 * time.Second))
		time.Sleep(50 * time.Millisecond)
		if _, err = io.WriteString(c, "plaintext"); err == nil {
			got, err = io.ReadAll(c)
		}
		c.Close()
	}
	if !errors.Is(err, syscall.ECONNRESET) || len(got) != 0 {
		t.Errorf("plaintext from outside the mesh under STRICT: %q, %v; want a reset", got, err)
	}
	select {
	case src := <-sources:
		t.Errorf("app in B reached in plaintext from %s under STRICT", src)
	default:
	}
}

// testAuthority is a real CA for the trust domain cluster.local.
func testAuthority(t *testing.T) *ca.CA {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	keys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return authority
}

// meshAgent is a whole node agent on dp: a real HBONE tunnel whose SVIDs
// authority signs, the model snap, and the agent with its proxies. Each call
// is a separate agent process would be: its own tunnel, pool and listeners.
func meshAgent(t *testing.T, dp Datapath, authority *ca.CA, snap *model.Snapshot) *Agent {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	tn, err := tunnel.New(tunnel.Options{TrustDomain: td, Bundle: identity.NewBundleSource(authority.Bundle()), Mark: DefaultAgentMark, DrainTimeout: time.Second,
		SVID: func(ctx context.Context, id spiffeid.ID) (x509svid.Source, error) {
			src := identity.NewSVIDSource(nil)
			r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: func(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
				return authority.Sign(ctx, ca.Caller{}, csr, 0)
			}})
			if err != nil {
				return nil, err
			}
			return src, r.Renew(ctx)
		}})
	if err != nil {
		t.Fatal(err)
	}
	m := mesh.New(mesh.Options{Snapshot: func() *model.Snapshot { return snap }, Dial: tn.Dial, Server: tn.Server, Forget: tn.Forget})
	ag, err := New(Options{NodeName: "node-1", Datapath: dp, Mesh: m, DrainTimeout: time.Second, Errorf: t.Logf,
		HostAddrs: func() []netip.Addr { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		ag.Drain(ctx)
	})
	return ag
}

// handoffMesh is the two pods the handoff tests roll agents over: pod A
// (cart) dials pod B (db, STRICT when strict), whose app echoes on 8080;
// enroll puts both in an agent.
type handoffMesh struct {
	na, nb    nstest.Pod
	snap      *model.Snapshot
	authority *ca.CA
	enroll    func(ag *Agent)
}

func newHandoffMesh(t *testing.T, name string, a, b netip.Addr, strict bool) *handoffMesh {
	t.Helper()
	na, nb := nstest.Pair(t, name, a, b)
	idA, idB := "spiffe://cluster.local/ns/shop/sa/cart", "spiffe://cluster.local/ns/shop/sa/db"
	wb := &model.Workload{UID: "uid-b", Name: "db-0", Namespace: "shop", CanonicalName: "db", IPs: []netip.Addr{nb.Addr}, Identity: idB, Enrolled: true}
	if strict {
		wb.PeerAuthentication = model.PeerAuthResult{Mode: model.MTLSStrict}
	}
	snap := model.NewSnapshot(model.SnapshotInput{Workloads: []*model.Workload{
		{UID: "uid-a", Name: "cart-0", Namespace: "shop", CanonicalName: "cart", IPs: []netip.Addr{na.Addr}, Identity: idA, Enrolled: true}, wb,
	}})
	pods := []enroll.Pod{
		{UID: "uid-a", Namespace: "shop", Name: "cart-0", Workload: "cart", ServiceAccount: "cart", IPs: []netip.Addr{na.Addr}, Netns: na.Path, IfName: name + "a"},
		{UID: "uid-b", Namespace: "shop", Name: "db-0", Workload: "db", ServiceAccount: "db", IPs: []netip.Addr{nb.Addr}, Netns: nb.Path, IfName: name + "b"},
	}
	app := nstest.MustListen(t)(netns.Listen(nb.Path, nb.Addr.String()+":8080", netns.ListenOptions{}))
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()
	return &handoffMesh{na: na, nb: nb, snap: snap, authority: testAuthority(t), enroll: func(ag *Agent) {
		for _, p := range pods {
			if err := ag.Enroll(context.Background(), p); err != nil {
				t.Fatalf("enroll %s: %v", p.Name, err)
			}
		}
	}}
}

// echoOnce writes msg on c and reads it back from the echo app.
func echoOnce(c net.Conn, msg string) error {
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return err
	}
	buf := make([]byte, len(msg))
	if _, err := io.ReadFull(c, buf); err != nil {
		return err
	}
	if string(buf) != msg {
		return fmt.Errorf("echo %q; want %q", buf, msg)
	}
	return nil
}

// dial opens a connection from pod A to pod B's app.
func (m *handoffMesh) dial() (net.Conn, error) {
	return netns.Dial(context.Background(), m.na.Path, m.nb.Addr.String()+":8080", netns.DialOptions{Timeout: 5 * time.Second})
}

// TestHandoff is a rolling update of the node agent on one kernel: while pod
// A keeps opening new connections to pod B through the mesh, a second agent
// enrolls the same pods beside the first (SO_REUSEPORT listeners), then the
// first drains and exits. No new connection may fail, and a connection
// established through the first agent keeps working through its drain.
func TestHandoff(t *testing.T) {
	dp := loadDatapath(t)
	m := newHandoffMesh(t, "mlna-ho", netip.MustParseAddr("198.19.4.45"), netip.MustParseAddr("198.19.4.46"), true)
	echo, dial := echoOnce, m.dial

	old := meshAgent(t, dp, m.authority, m.snap)
	m.enroll(old)
	long, err := dial()
	if err != nil {
		t.Fatalf("pod A dials pod B: %v", err)
	}
	defer long.Close()
	if err := echo(long, "before"); err != nil {
		t.Fatalf("through the first agent: %v", err)
	}

	// New connections from four clients, each one echo, until stopped.
	var (
		mu       sync.Mutex
		ok       int
		failures []string
	)
	stop := make(chan struct{})
	var loaders sync.WaitGroup
	for range 4 {
		loaders.Go(func() {
			for i := 0; i < 20000; i++ {
				select {
				case <-stop:
					return
				default:
				}
				c, err := dial()
				if err == nil {
					err = echo(c, "new")
					c.Close()
				}
				mu.Lock()
				if err == nil {
					ok++
				} else if len(failures) < 1000 {
					failures = append(failures, err.Error())
				}
				mu.Unlock()
			}
		})
	}
	answered := func() int { mu.Lock(); defer mu.Unlock(); return ok }
	waitAnswered := func(n int) {
		deadline := time.Now().Add(20 * time.Second)
		for answered() < n && time.Now().Before(deadline) {
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitAnswered(50)
	// The rolling update: the new agent comes up beside the old one...
	next := meshAgent(t, dp, m.authority, m.snap)
	m.enroll(next)
	waitAnswered(answered() + 50)
	// ...then the old one drains while the established connection is open.
	drained := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		drained <- old.Drain(ctx)
	}()
	time.Sleep(200 * time.Millisecond)
	if err := echo(long, "during the drain"); err != nil {
		t.Errorf("connection established before the drain: %v; want it served to its end", err)
	}
	long.Close()
	select {
	case err := <-drained:
		if err != nil {
			t.Errorf("old agent's drain: %v; want it to end once its connections closed", err)
		}
	case <-time.After(15 * time.Second):
		t.Fatal("old agent's drain did not end")
	}
	waitAnswered(answered() + 50)
	close(stop)
	loaders.Wait()
	mu.Lock()
	defer mu.Unlock()
	t.Logf("new connections during the handoff: %d answered, %d failed", ok, len(failures))
	if len(failures) > 0 {
		t.Errorf("%d new connections failed during the handoff; first: %v", len(failures), failures[0])
	}
}

// loadDatapath loads the real eBPF data path into a fresh cgroup and bpffs
// (root and a capable kernel required), removed when the test ends.
func loadDatapath(t *testing.T) *ebpf.Datapath {
	t.Helper()
	testutil.RequireRoot(t)
	if err := ebpf.CheckKernel(); err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	cg := testutil.EnterCgroup(t, "mlna")
	dp, err := ebpf.Load(ebpf.Options{PinDir: filepath.Join(testutil.MountBPFFS(t), "meshlet"), CgroupPath: cg,
		AgentMark: DefaultAgentMark, IngressSkipMark: DefaultAgentMark})
	if err != nil {
		t.Fatalf("load data path: %v", err)
	}
	t.Cleanup(func() { dp.Uninstall() })
	return dp
}

// TestHandoffWaitsForSuccessor: an agent told to stop before its successor
// has opened its listeners in a pod (a successor late for that pod, or none
// yet) keeps serving there until they appear, then drains; the pod is never
// without a listener.
func TestHandoffWaitsForSuccessor(t *testing.T) {
	dp := loadDatapath(t)
	m := newHandoffMesh(t, "mlna-hw", netip.MustParseAddr("198.19.4.49"), netip.MustParseAddr("198.19.4.50"), false)
	roundTrip := func() error {
		c, err := m.dial()
		if err != nil {
			return err
		}
		defer c.Close()
		return echoOnce(c, "ping")
	}

	old := meshAgent(t, dp, m.authority, m.snap)
	m.enroll(old)
	if err := roundTrip(); err != nil {
		t.Fatalf("through the first agent: %v", err)
	}
	handedOff := make(chan error, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		handedOff <- old.Handoff(ctx, 10*time.Second)
	}()
	time.Sleep(300 * time.Millisecond)
	if err := roundTrip(); err != nil {
		t.Errorf("new connection while the old agent waits for a successor: %v; want it served by the old agent", err)
	}
	select {
	case err := <-handedOff:
		t.Fatalf("handoff ended (%v) with no successor listening", err)
	default:
	}
	began := time.Now()
	next := meshAgent(t, dp, m.authority, m.snap)
	m.enroll(next)
	select {
	case err := <-handedOff:
		if err != nil {
			t.Errorf("handoff: %v", err)
		}
		t.Logf("handoff ended %s after the successor enrolled the pods", time.Since(began).Round(time.Millisecond))
	case <-time.After(8 * time.Second):
		t.Fatal("handoff did not end once the successor listened in every pod")
	}
	if err := roundTrip(); err != nil {
		t.Errorf("through the successor: %v", err)
	}
	for _, ns := range []nstest.Pod{m.na, m.nb} {
		counts, err := netns.Listeners(ns.Path, 15001, 15006, 15008)
		for _, port := range []uint16{15001, 15006, 15008} {
			if err != nil || counts[port] != 1 {
				t.Errorf("%s port %d: %d listeners (%v); want the successor's only", ns.Path, port, counts[port], err)
			}
		}
	}
}
