package xds_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"io"
	"log/slog"
	"math/big"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

var allTypes = []string{meshv1.WorkloadType, meshv1.AddressType, meshv1.AuthorizationType, meshv1.PeerAuthenticationType, meshv1.TrustBundleType}

var quiet = slog.New(slog.NewTextHandler(io.Discard, nil))

// testPKI is a throwaway CA and a serving certificate for 127.0.0.1.
type testPKI struct {
	server  *tls.Config
	client  *tls.Config
	rootPEM string
}

func newPKI(t testing.TB) testPKI {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test root"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "meshd"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		DNSNames: []string{"meshd.meshlet-system.svc"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return testPKI{
		server:  &tls.Config{Certificates: []tls.Certificate{{Certificate: [][]byte{der}, PrivateKey: key}}},
		client:  &tls.Config{RootCAs: pool, ServerName: "meshd.meshlet-system.svc"},
		rootPEM: string(pemBlock(caDER)),
	}
}

func pemBlock(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// tokenAuth authenticates "node:<name>" and "waypoint:<ns>/<name>" tokens,
// standing in for meshd's TokenReview.
func tokenAuth(_ context.Context, tok string) (xdsnode.Principal, error) {
	if n, ok := strings.CutPrefix(tok, "node:"); ok {
		return xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: n}, nil
	}
	if w, ok := strings.CutPrefix(tok, "waypoint:"); ok {
		ns, name, _ := strings.Cut(w, "/")
		return xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: ns, Name: name}, nil
	}
	return xdsnode.Principal{}, errors.New("token not recognised")
}

// testServer is an xds.Server on a TLS gRPC server on loopback.
type testServer struct {
	*xds.Server
	addr string
	reg  *prometheus.Registry
	pki  testPKI
	g    *grpc.Server
}

// startServer starts a server that is marked synced at once (so it serves
// an empty state); use startUnsynced to fill it first.
func startServer(t testing.TB, pki testPKI, debounce time.Duration) *testServer {
	t.Helper()
	ts := startUnsynced(t, pki, debounce)
	ts.MarkSynced()
	eventually(t, "the first push", func() bool { return ts.metric(t, "meshd_xds_debounced_pushes_total", "") >= 1 })
	return ts
}

func startUnsynced(t testing.TB, pki testPKI, debounce time.Duration) *testServer {
	t.Helper()
	reg := prometheus.NewRegistry()
	s, err := xds.New(xds.Options{Authenticate: tokenAuth, Debounce: debounce, Registry: reg, Logger: quiet})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	ts := &testServer{Server: s, reg: reg, pki: pki}
	ts.serve(t, "127.0.0.1:0")
	return ts
}

// serve starts a gRPC server for ts.Server on addr.
func (ts *testServer) serve(t testing.TB, addr string) {
	t.Helper()
	var lis net.Listener
	var err error
	for range 50 { // the old listener's port may take a moment to free
		if lis, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatal(err)
	}
	g, err := xds.NewGRPCServer(ts.pki.server)
	if err != nil {
		t.Fatal(err)
	}
	ts.Register(g)
	go g.Serve(lis)
	t.Cleanup(g.Stop)
	ts.g = g
	ts.addr = lis.Addr().String()
}

// events records what a client applied.
type events struct {
	mu  sync.Mutex
	log []event
}

type event struct {
	typeURL          string
	updated, removed []string
}

func (e *events) add(t string, u, r []string) {
	e.mu.Lock()
	defer e.mu.Unlock()
	e.log = append(e.log, event{t, append([]string(nil), u...), append([]string(nil), r...)})
}

func (e *events) since(n int, typeURL string) []event {
	e.mu.Lock()
	defer e.mu.Unlock()
	var out []event
	for _, ev := range e.log[n:] {
		if ev.typeURL == typeURL {
			out = append(out, ev)
		}
	}
	return out
}

func (e *events) len() int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return len(e.log)
}

type clientOpts struct {
	token    string
	nodeID   string
	validate func(string, string, proto.Message) error
	// types are the subscribed types; nil means allTypes.
	types []string
	// onChange replaces the event log when set.
	onChange func(typeURL string, updated, removed []string)
	// metadata is the node metadata sent on each stream.
	metadata func() *structpb.Struct
}

// startClient runs a client against ts until the test ends.
func startClient(t testing.TB, ts *testServer, o clientOpts) (*client.Client, *events) {
	t.Helper()
	ev := &events{}
	onChange := ev.add
	types := allTypes
	if o.types != nil {
		types = o.types
	}
	if o.onChange != nil {
		onChange = o.onChange
	}
	c, err := client.New(client.Options{
		Address:    ts.addr,
		TLS:        ts.pki.client,
		Token:      func(context.Context) (string, error) { return o.token, nil },
		NodeID:     o.nodeID,
		Types:      types,
		Validate:   o.validate,
		OnChange:   onChange,
		Metadata:   o.metadata,
		MinBackoff: 20 * time.Millisecond,
		MaxBackoff: 200 * time.Millisecond,
		Logger:     quiet,
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); c.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return c, ev
}

func waitSynced(t testing.TB, c *client.Client) {
	t.Helper()
	select {
	case <-c.Synced():
	case <-time.After(10 * time.Second):
		t.Fatalf("client did not sync within 10s (last error: %v)", c.LastError())
	}
}

// eventually polls cond for up to 10s.
func eventually(t testing.TB, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

func workload(uid, node string) *meshv1.Workload {
	return &meshv1.Workload{
		Uid: uid, Name: uid, Namespace: "ns1", Node: node, Addresses: []string{"198.18.0.1"},
		ServiceAccount: "default", Identity: "spiffe://cluster.local/ns/ns1/sa/default", Enrolled: true,
	}
}

// metric reads one series of ts's registry: a counter's or gauge's value or
// a histogram's sample count;
// label is the "type" label's value, "" for a series without labels. A
// series not yet created reads 0.
func (ts *testServer) metric(t testing.TB, name, label string) float64 {
	t.Helper()
	mfs, err := ts.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name {
			continue
		}
		for _, m := range mf.GetMetric() {
			if label != "" && (len(m.GetLabel()) == 0 || m.GetLabel()[0].GetValue() != label) {
				continue
			}
			return m.GetCounter().GetValue() + m.GetGauge().GetValue() + float64(m.GetHistogram().GetSampleCount())
		}
	}
	return 0
}
