package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"io"
	"log/slog"
	"net"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// TestGRPCServer: xDS and certificate signing share one TLS port whose
// certificate comes from meshd's CA; a node agent that trusts only the CA
// root (as from istio-ca-root-cert) gets both its config and a certificate.
func TestGRPCServer(t *testing.T) {
	quiet := slog.New(slog.NewTextHandler(io.Discard, nil))
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	keys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	// The token stands for a reviewed node agent on node-a.
	caller := ca.Caller{Username: "system:serviceaccount:meshlet-system:meshlet-node-agent", Namespace: "meshlet-system", ServiceAccount: "meshlet-node-agent", NodeName: "node-a"}
	caSrv, err := ca.NewServer(ca.ServerOptions{CA: authority, Logger: quiet, Authenticate: func(_ context.Context, tok string) (ca.Caller, error) {
		if tok != "agent-token" {
			return ca.Caller{}, ca.ErrUnauthenticated
		}
		return caller, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	xsrv, err := xds.New(xds.Options{Logger: quiet, Debounce: 10 * time.Millisecond, Authenticate: func(_ context.Context, tok string) (xdsnode.Principal, error) {
		if tok != "agent-token" {
			return xdsnode.Principal{}, ca.ErrUnauthenticated
		}
		return principalFor(caller, nil, "meshlet-system/meshlet-node-agent")
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { xsrv.Close() })
	rootPEM := string(ca.EncodePEM(authority.Roots()))
	if err := xsrv.SetTrustBundle(&meshv1.TrustBundle{TrustDomain: "cluster.local", RootsPem: []string{rootPEM}}); err != nil {
		t.Fatal(err)
	}
	if err := xsrv.SetWorkload(&meshv1.Workload{Uid: "w1", Name: "w1", Namespace: "ns1", Node: "node-a", Addresses: []string{"198.18.0.10"}}); err != nil {
		t.Fatal(err)
	}
	xsrv.MarkSynced()
	g, err := newGRPCServer(&servingCert{ca: authority, dnsNames: []string{"meshd.meshlet-system.svc"}}, xsrv, caSrv)
	if err != nil {
		t.Fatal(err)
	}
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(lis)
	t.Cleanup(g.Stop)

	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM([]byte(rootPEM)) {
		t.Fatal("root PEM does not parse")
	}
	clientTLS := &tls.Config{RootCAs: pool, ServerName: "meshd.meshlet-system.svc"}

	c, err := client.New(client.Options{
		Address: lis.Addr().String(), TLS: clientTLS, NodeID: "node-agent~node-a", Logger: quiet,
		Token: func(context.Context) (string, error) { return "agent-token", nil },
		Types: []string{meshv1.WorkloadType, meshv1.TrustBundleType},
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
		t.Fatalf("xDS client did not sync: %v", c.LastError())
	}
	if _, ok := c.Get(meshv1.WorkloadType, "w1"); !ok {
		t.Error("node agent did not receive its workload")
	}

	conn, err := grpc.NewClient(lis.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(clientTLS)))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	id := spiffeid.RequireFromString("spiffe://cluster.local/ns/ns1/sa/default")
	csr, _, err := identity.NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	rctx := metadata.AppendToOutgoingContext(context.Background(), "authorization", "Bearer agent-token")
	resp, err := securityv1alpha1.NewIstioCertificateServiceClient(conn).CreateCertificate(rctx, &securityv1alpha1.IstioCertificateRequest{
		Csr: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr})), ValidityDuration: 3600,
	})
	if err != nil {
		t.Fatalf("CreateCertificate on the xDS port: %v", err)
	}
	blk, _ := pem.Decode([]byte(resp.GetCertChain()[0]))
	leaf, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != id.String() {
		t.Errorf("signed certificate SANs = %v; want [%s]", leaf.URIs, id)
	}
}
