package caclient

import (
	"context"
	"crypto/x509"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// fakeCA answers CreateCertificate with a fixed certificate, after failing
// the first calls with fail's code.
type fakeCA struct {
	securityv1alpha1.UnimplementedIstioCertificateServiceServer
	cert  string
	fails int32
	fail  codes.Code
	calls atomic.Int32
}

func (f *fakeCA) CreateCertificate(context.Context, *securityv1alpha1.IstioCertificateRequest) (*securityv1alpha1.IstioCertificateResponse, error) {
	if n := f.calls.Add(1); n <= f.fails {
		return nil, status.Error(f.fail, "meshd is shutting down")
	}
	return &securityv1alpha1.IstioCertificateResponse{CertChain: []string{f.cert}}, nil
}

func serve(t *testing.T, ln net.Listener, ca *fakeCA) {
	t.Helper()
	s := grpc.NewServer()
	securityv1alpha1.RegisterIstioCertificateServiceServer(s, ca)
	go s.Serve(ln)
	t.Cleanup(s.Stop)
}

func issuer(t *testing.T, addr string) func(context.Context, []byte) ([]*x509.Certificate, error) {
	t.Helper()
	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	issue, err := New(Options{Conn: conn, Token: func(context.Context) (string, error) { return "token", nil }})
	if err != nil {
		t.Fatal(err)
	}
	return issue
}

// While meshd rolls, a certificate asked for while no replica answers (the
// old one stopped, the new one not yet reached) or that a stopping replica
// drops is issued once one answers, within the caller's deadline; a refusal
// on the merits is not asked again.
func TestIssueAcrossMeshdRestart(t *testing.T) {
	certPEM, _ := testutil.SelfSignedPEM(t, "workload")
	cert := string(certPEM)
	t.Run("no meshd listening yet", func(t *testing.T) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close() // connections are refused until the server below starts
		issue := issuer(t, addr)
		ca := &fakeCA{cert: cert}
		go func() {
			time.Sleep(300 * time.Millisecond)
			ln, err := net.Listen("tcp", addr)
			if err != nil {
				t.Errorf("listen again on %s: %v", addr, err)
				return
			}
			serve(t, ln, ca)
		}()
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		if chain, err := issue(ctx, []byte("csr")); err != nil || len(chain) != 1 {
			t.Fatalf("issue while meshd starts: %d certificates, %v; want the certificate once meshd answers", len(chain), err)
		}
	})
	for _, tt := range []struct {
		name      string
		fails     int32
		code      codes.Code
		wantCalls int32
		wantErr   string
	}{
		{name: "dropped by a stopping meshd", fails: 2, code: codes.Unavailable, wantCalls: 3},
		{name: "refused", fails: 1, code: codes.PermissionDenied, wantCalls: 1, wantErr: "PermissionDenied"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			ca := &fakeCA{cert: cert, fails: tt.fails, fail: tt.code}
			serve(t, ln, ca)
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err = issuer(t, ln.Addr().String())(ctx, []byte("csr"))
			if tt.wantErr == "" && err != nil {
				t.Errorf("issue = %v; want the certificate", err)
			}
			if tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Errorf("issue = %v; want an error naming %s", err, tt.wantErr)
			}
			if got := ca.calls.Load(); got != tt.wantCalls {
				t.Errorf("meshd saw %d calls; want %d", got, tt.wantCalls)
			}
		})
	}
}
