package agent

import (
	"context"
	"crypto/x509"
	"errors"
	"io"
	"net"
	"net/netip"
	"path/filepath"
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
	testutil.RequireRoot(t)
	if err := ebpf.CheckKernel(); err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	cg := enterCgroup(t)
	dp, err := ebpf.Load(ebpf.Options{PinDir: filepath.Join(mountBPFFS(t), "meshlet"), CgroupPath: cg,
		AgentMark: DefaultAgentMark, IngressSkipMark: DefaultAgentMark})
	if err != nil {
		t.Fatalf("load data path: %v", err)
	}
	t.Cleanup(func() { dp.Uninstall() })

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

	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	keys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
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
	m := mesh.New(mesh.Options{Snapshot: func() *model.Snapshot { return snap }, Dial: tn.Dial, Serve: tn.Serve, Forget: tn.Forget})
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
