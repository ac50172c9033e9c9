package certs

import (
	"context"
	"errors"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/meshlet/meshlet/pkg/ca"
)

// startCA serves a real pkg/ca CA over gRPC on loopback. Token "node-1" is
// a node agent that may hold identities in namespace shop only.
func startCA(t *testing.T) *grpc.ClientConn {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	k, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Options{TrustDomain: td, Keys: k, Authorizer: func(_ context.Context, _ ca.Caller, id spiffeid.ID) error {
		if !strings.HasPrefix(id.Path(), "/ns/shop/") {
			return errors.New("no pod of that identity on this node")
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := ca.NewServer(ca.ServerOptions{CA: c, Authenticate: func(_ context.Context, token string) (ca.Caller, error) {
		if token != "node-1" {
			return ca.Caller{}, errors.New("bad token")
		}
		return ca.Caller{Username: "system:serviceaccount:meshlet-system:meshlet-node-agent"}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	gs := grpc.NewServer()
	securityv1alpha1.RegisterIstioCertificateServiceServer(gs, srv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go gs.Serve(ln)
	t.Cleanup(gs.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return conn
}

func TestSVID(t *testing.T) {
	conn := startCA(t)
	tests := []struct {
		name    string
		token   string
		id      string
		wantErr string
	}{
		{name: "issued", token: "node-1", id: "spiffe://cluster.local/ns/shop/sa/cart"},
		{name: "identity not on node", token: "node-1", id: "spiffe://cluster.local/ns/other/sa/x", wantErr: "PermissionDenied"},
		{name: "bad token", token: "stolen", id: "spiffe://cluster.local/ns/shop/sa/cart", wantErr: "Unauthenticated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m, err := New(Options{Conn: conn, TTL: time.Hour, Token: func(context.Context) (string, error) { return tt.token, nil }})
			if err != nil {
				t.Fatal(err)
			}
			defer m.Close()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			id := spiffeid.RequireFromString(tt.id)
			src, err := m.SVID(ctx, id)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("SVID(%s) = %v; want error containing %q", id, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			svid, err := src.GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			if svid.ID != id {
				t.Errorf("SVID ID = %s; want %s", svid.ID, id)
			}
			if got := svid.Certificates[0].NotAfter.Sub(svid.Certificates[0].NotBefore); got < 55*time.Minute || got > 65*time.Minute {
				t.Errorf("certificate lifetime %s; want the requested 1h", got)
			}
			again, err := m.SVID(ctx, id)
			if err != nil || again != src {
				t.Errorf("second SVID(%s) = %p, %v; want the same source %p", id, again, err, src)
			}
			// The config dump shows the certificate held, public facts
			// only, as a user compares it with what a peer presents.
			dump := m.Dump()
			leaf := svid.Certificates[0]
			if len(dump) != 1 || dump[0].Identity != id.String() || dump[0].SerialNumber != leaf.SerialNumber.Text(16) ||
				!dump[0].NotAfter.Equal(leaf.NotAfter) || dump[0].Issuer != leaf.Issuer.String() || dump[0].Chain != len(svid.Certificates) {
				t.Errorf("Dump() = %+v; want the one certificate of %s (serial %x, not after %s, issuer %s)", dump, id, leaf.SerialNumber, leaf.NotAfter, leaf.Issuer)
			}
			if len(dump) == 1 && dump[0].State(time.Now()) != "valid" {
				t.Errorf("fresh certificate state %q; want valid", dump[0].State(time.Now()))
			}
		})
	}
}
