package ca

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"net"
	"net/url"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/ca/caclient"
	"github.com/meshlet/meshlet/pkg/identity"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// TestGRPCOverTLS runs the Istio certificate service on loopback TLS with a
// serving certificate from the same CA and calls it as istio-agent would.
func TestGRPCOverTLS(t *testing.T) {
	authz := func(_ context.Context, c Caller, id spiffeid.ID) error {
		if id.Path() != "/ns/"+c.Namespace+"/sa/"+c.ServiceAccount {
			return errors.New("not the caller's own identity")
		}
		return nil
	}
	c := newTestCA(t, Options{Authorizer: authz})
	authn := func(_ context.Context, tok string) (Caller, error) {
		if tok != "web-token" {
			return Caller{}, ErrUnauthenticated
		}
		return Caller{Username: "system:serviceaccount:default:web", Namespace: "default", ServiceAccount: "web"}, nil
	}
	srv, err := NewServer(ServerOptions{CA: c, Authenticate: authn})
	if err != nil {
		t.Fatal(err)
	}
	serving, err := c.ServingCertificate([]string{"meshd.meshlet-system.svc"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer(grpc.Creds(credentials.NewTLS(&tls.Config{Certificates: []tls.Certificate{*serving}, MinVersion: tls.VersionTLS13})))
	securityv1alpha1.RegisterIstioCertificateServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)

	pool := x509.NewCertPool()
	for _, r := range c.Roots() {
		pool.AddCert(r)
	}
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(credentials.NewTLS(&tls.Config{RootCAs: pool, ServerName: "meshd.meshlet-system.svc"})))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := securityv1alpha1.NewIstioCertificateServiceClient(conn)

	csrPEM := func(uri string) string {
		der := csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{mustURL(uri)}})
		return string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}))
	}
	tests := []struct {
		name  string
		token string
		csr   string
		want  codes.Code
	}{
		{"own identity", "web-token", csrPEM("spiffe://cluster.local/ns/default/sa/web"), codes.OK},
		{"foreign service account", "web-token", csrPEM("spiffe://cluster.local/ns/default/sa/db"), codes.PermissionDenied},
		{"forged token", "forged", csrPEM("spiffe://cluster.local/ns/default/sa/web"), codes.Unauthenticated},
		{"no token", "", csrPEM("spiffe://cluster.local/ns/default/sa/web"), codes.Unauthenticated},
		{"not PEM", "web-token", "hello", codes.InvalidArgument},
		{"foreign trust domain", "web-token", csrPEM("spiffe://other.example/ns/default/sa/web"), codes.InvalidArgument},
	}
	t.Run("issuer with renewer", func(t *testing.T) {
		issue, err := caclient.New(caclient.Options{Conn: conn, Token: func(context.Context) (string, error) { return "web-token", nil }, TTL: time.Hour})
		if err != nil {
			t.Fatal(err)
		}
		id := spiffeid.RequireFromString("spiffe://cluster.local/ns/default/sa/web")
		src := identity.NewSVIDSource(nil)
		r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: issue})
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Renew(context.Background()); err != nil {
			t.Fatalf("Renew() through gRPC = %v", err)
		}
		svid, _ := src.GetX509SVID()
		if _, _, err := x509svid.Verify(svid.Certificates, c.Bundle()); err != nil {
			t.Fatal(err)
		}
		if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); got != time.Hour+backdate {
			t.Errorf("lifetime %s; want the 1h asked for", got)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx := context.Background()
			if tt.token != "" {
				ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tt.token)
			}
			resp, err := client.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{Csr: tt.csr, ValidityDuration: 3600})
			if got := status.Code(err); got != tt.want {
				t.Fatalf("CreateCertificate() code = %s (%v); want %s", got, err, tt.want)
			}
			if err != nil {
				return
			}
			var certs []*x509.Certificate
			for _, s := range resp.CertChain {
				cs, err := parsePEMCerts([]byte(s))
				if err != nil {
					t.Fatal(err)
				}
				certs = append(certs, cs...)
			}
			if len(certs) < 2 || !certs[len(certs)-1].Equal(c.Roots()[0]) {
				t.Fatalf("cert_chain has %d certificates; want leaf first and the root last", len(certs))
			}
			id, _, err := x509svid.Verify(certs[:len(certs)-1], c.Bundle())
			if err != nil || id.String() != "spiffe://cluster.local/ns/default/sa/web" {
				t.Fatalf("x509svid.Verify() = %v, %v", id, err)
			}
		})
	}
}
