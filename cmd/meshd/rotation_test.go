package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// memStore is a ca.Store held in memory, standing for the cacerts Secret.
type memStore struct {
	mu sync.Mutex
	k  *ca.KeyMaterial
}

func (m *memStore) Load(context.Context) (*ca.KeyMaterial, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.k, nil
}

func (m *memStore) Create(context.Context, *ca.KeyMaterial) error { return ca.ErrExists }

func (m *memStore) set(k *ca.KeyMaterial) {
	m.mu.Lock()
	m.k = k
	m.mu.Unlock()
}

// TestRootRotationDistributesBeforeSigning: when the CA Secret gets a new
// root, every connected client has acknowledged a trust bundle holding it
// before the CA signs anything with it; until then certificates still chain
// to the old root, afterwards to the new one; the old root stays trusted;
// invalid material in the Secret changes nothing.
func TestRootRotationDistributesBeforeSigning(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	oldKeys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	newKeys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Options{TrustDomain: td, Keys: oldKeys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	oldRoot, newRoot := authority.Roots()[0], mustRoot(t, newKeys)

	xsrv, err := xds.New(xds.Options{Logger: quiet, Debounce: 10 * time.Millisecond, Authenticate: func(context.Context, string) (xdsnode.Principal, error) {
		return xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: "node-a"}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xsrv.Close() })
	if err := xsrv.SetTrustBundle(trustBundle(td, authority.Roots())); err != nil {
		t.Fatal(err)
	}
	xsrv.MarkSynced()
	serving := &servingCert{ca: authority, dnsNames: []string{"meshd.meshlet-system.svc"}}
	caSrv, err := ca.NewServer(ca.ServerOptions{CA: authority, Logger: quiet, Authenticate: func(context.Context, string) (ca.Caller, error) { return ca.Caller{}, ca.ErrUnauthenticated }})
	if err != nil {
		t.Fatal(err)
	}
	g, err := newGRPCServer(serving, xsrv, caSrv)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	// A slow client: it takes 300ms to accept a bundle with two roots, and
	// notes whether the CA already signed with the new key at that moment.
	pool := x509.NewCertPool()
	pool.AddCert(oldRoot)
	var signedNewBeforeAck atomic.Bool
	var acceptedBoth atomic.Bool
	c, err := client.New(client.Options{
		Address: lis.Addr().String(), TLS: &tls.Config{RootCAs: pool, ServerName: "meshd.meshlet-system.svc"}, NodeID: "node-agent~node-a", Logger: quiet,
		Token: func(context.Context) (string, error) { return "t", nil },
		Types: []string{meshv1.TrustBundleType},
		Validate: func(_, _ string, m proto.Message) error {
			if len(m.(*meshv1.TrustBundle).GetRootsPem()) == 2 {
				time.Sleep(300 * time.Millisecond)
				if signsUnder(t, authority, newRoot) {
					signedNewBeforeAck.Store(true)
				}
				acceptedBoth.Store(true)
			}
			return nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatalf("client did not sync: %v", c.LastError())
	}
	waitFor(t, "the client's ACK recorded", func() bool { return len(xsrv.Clients()) == 1 && xsrv.Clients()[0].Acked[meshv1.TrustBundleType] != "" })

	store := &memStore{k: oldKeys}
	var published []string
	rot := &caRotation{store: store, authority: authority, xds: xsrv, serving: serving, td: td, ackWait: 10 * time.Second, log: quiet,
		publish: func(_ context.Context, pem string) { published = append(published, pem) }}
	if rot.check(ctx) {
		t.Fatal("rotated with the Secret unchanged")
	}

	// Invalid material: a CA cert with another root's key.
	bad := *newKeys
	bad.CAKey = oldKeys.CAKey
	store.set(&bad)
	if rot.check(ctx) || !signsUnder(t, authority, oldRoot) || len(published) != 0 {
		t.Fatal("invalid CA material was acted on; it must be reported and ignored")
	}

	store.set(newKeys)
	if !rot.check(ctx) {
		t.Fatal("no rotation after the Secret changed")
	}
	if !acceptedBoth.Load() {
		t.Error("rotation finished before the client accepted the bundle with both roots")
	}
	if signedNewBeforeAck.Load() {
		t.Error("the CA signed with the new key before the client had the new root")
	}
	if !signsUnder(t, authority, newRoot) {
		t.Error("after the rotation, certificates do not chain to the new root")
	}
	roots := authority.Roots()
	if len(roots) != 2 || !roots[0].Equal(newRoot) || !roots[1].Equal(oldRoot) {
		t.Errorf("trusted roots after rotation: %d; want the new root then the old one", len(roots))
	}
	if len(published) != 1 || len(pemCerts(t, published[0])) != 2 {
		t.Errorf("istio-ca-root-cert updates %d; want one, with both roots", len(published))
	}
	// meshd's own serving certificate is reissued under the new root, and a
	// client that trusts the published roots verifies it.
	cert, err := serving.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	both := x509.NewCertPool()
	for _, r := range pemCerts(t, published[0]) {
		both.AddCert(r)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{Roots: both}); err != nil || cert.Leaf.CheckSignatureFrom(newRoot) != nil {
		t.Errorf("serving certificate after rotation: verify %v; want one signed by the new root", err)
	}
}

func mustRoot(t *testing.T, k *ca.KeyMaterial) *x509.Certificate {
	t.Helper()
	return pemCerts(t, string(k.RootCert))[0]
}

func pemCerts(t *testing.T, s string) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for rest := []byte(s); ; {
		var b *pem.Block
		if b, rest = pem.Decode(rest); b == nil {
			return out
		}
		c, err := x509.ParseCertificate(b.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
}

// signsUnder signs a workload certificate and reports whether it chains to root.
func signsUnder(t *testing.T, authority *ca.CA, root *x509.Certificate) bool {
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns1/sa/default")
	csr, _, err := identity.NewCSR(id)
	if err != nil {
		t.Error(err)
		return false
	}
	chain, err := authority.Sign(context.Background(), ca.Caller{}, csr, time.Hour)
	if err != nil {
		t.Error(err)
		return false
	}
	roots := x509.NewCertPool()
	roots.AddCert(root)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		inter.AddCert(c)
	}
	_, err = chain[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
	return err == nil
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWithoutAck: during a rotation a client counts as holding the new
// roots only once it has ACKed the trust bundle at the generation that
// pushed them or later; an ACK that moved since the rotation began, but to
// an earlier generation (the aliases changed just before), does not count.
func TestWithoutAck(t *testing.T) {
	const pushed = 7
	clients := []xds.ClientStatus{
		{NodeID: "never", Acked: map[string]string{}},
		{NodeID: "aliases-only", Acked: map[string]string{meshv1.TrustBundleType: "6", meshv1.WorkloadType: "9"}},
		{NodeID: "at", Acked: map[string]string{meshv1.TrustBundleType: "7"}},
		{NodeID: "later", Acked: map[string]string{meshv1.TrustBundleType: "12"}},
		{NodeID: "junk", Acked: map[string]string{meshv1.TrustBundleType: "x"}},
	}
	got := withoutAck(clients, pushed)
	if want := []string{"never", "aliases-only", "junk"}; !slices.Equal(got, want) {
		t.Errorf("withoutAck() = %v; want %v", got, want)
	}
}
