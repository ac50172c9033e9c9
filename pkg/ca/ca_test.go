package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

var td = spiffeid.RequireTrustDomainFromString("cluster.local")

func allowAll(context.Context, Caller, spiffeid.ID) error { return nil }

func newTestCA(t testing.TB, opts Options) *CA {
	t.Helper()
	if opts.Keys == nil {
		k, err := GenerateRoot(td, 0)
		if err != nil {
			t.Fatal(err)
		}
		opts.Keys = k
	}
	if opts.TrustDomain.IsZero() {
		opts.TrustDomain = td
	}
	if opts.Authorizer == nil {
		opts.Authorizer = allowAll
	}
	c, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func csrWith(t testing.TB, tmpl *x509.CertificateRequest) []byte {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		t.Fatal(err)
	}
	return der
}

func mustURL(s string) *url.URL {
	u, err := url.Parse(s)
	if err != nil {
		panic(err)
	}
	return u
}

func TestSign(t *testing.T) {
	refuseOther := func(_ context.Context, c Caller, id spiffeid.ID) error {
		w, err := identity.FromID(id)
		if err != nil {
			return err
		}
		if w.Namespace != c.Namespace || w.ServiceAccount != c.ServiceAccount {
			return errors.New("caller is another service account")
		}
		return nil
	}
	caller := Caller{Username: "system:serviceaccount:default:web", Namespace: "default", ServiceAccount: "web"}
	tests := []struct {
		name    string
		csr     *x509.CertificateRequest
		wantErr error // nil means signed
	}{
		{"valid", &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web")}}, nil},
		{"two URI SANs", &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web"), mustURL("spiffe://cluster.local/ns/default/sa/db")}}, ErrBadCSR},
		{"foreign trust domain", &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://evil.example/ns/default/sa/web")}}, ErrBadCSR},
		{"DNS SAN only", &x509.CertificateRequest{DNSNames: []string{"web.default.svc"}}, ErrBadCSR},
		{"DNS SAN besides the SPIFFE ID", &x509.CertificateRequest{DNSNames: []string{"web"}, URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web")}}, ErrBadCSR},
		{"not a SPIFFE URI", &x509.CertificateRequest{URIs: []*url.URL{mustURL("https://cluster.local/ns/default/sa/web")}}, ErrBadCSR},
		{"not a workload path", &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/admin")}}, ErrBadCSR},
		{"identity the authorizer refuses", &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/kube-system/sa/admin")}}, ErrNotAuthorized},
	}
	c := newTestCA(t, Options{Authorizer: refuseOther})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			chain, err := c.Sign(context.Background(), caller, csrWith(t, tt.csr), 0)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("Sign() error = %v; want %v", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("Sign() error = %v", err)
			}
			id, _, err := x509svid.Verify(chain, c.Bundle())
			if err != nil {
				t.Fatalf("x509svid.Verify() = %v", err)
			}
			if got, want := id.String(), "spiffe://cluster.local/ns/default/sa/web"; got != want {
				t.Errorf("signed ID = %s; want %s", got, want)
			}
			if got := chain[0].NotAfter.Sub(chain[0].NotBefore); got != DefaultTTL+backdate {
				t.Errorf("lifetime = %s; want %s (24h TTL plus backdate)", got, DefaultTTL+backdate)
			}
		})
	}
}

func TestSignRefusesBadBytes(t *testing.T) {
	c := newTestCA(t, Options{})
	der := csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web")}})
	der[len(der)-3] ^= 0xff // break the signature
	if _, err := c.Sign(context.Background(), Caller{}, der, 0); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("Sign(tampered) error = %v; want ErrBadCSR", err)
	}
	if _, err := c.Sign(context.Background(), Caller{}, []byte("junk"), 0); !errors.Is(err, ErrBadCSR) {
		t.Fatalf("Sign(junk) error = %v; want ErrBadCSR", err)
	}
}

func TestSignTTL(t *testing.T) {
	now := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := newTestCA(t, Options{MaxTTL: 48 * time.Hour, Now: func() time.Time { return now }})
	der := csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web")}})
	tests := []struct {
		ask, want time.Duration
	}{
		{0, 24 * time.Hour},
		{time.Hour, time.Hour},
		{48 * time.Hour, 48 * time.Hour},
		{30 * 24 * time.Hour, 48 * time.Hour},
	}
	for _, tt := range tests {
		chain, err := c.Sign(context.Background(), Caller{}, der, tt.ask)
		if err != nil {
			t.Fatal(err)
		}
		if got := chain[0].NotAfter.Sub(now); got != tt.want {
			t.Errorf("Sign(ttl %s): lifetime %s; want %s", tt.ask, got, tt.want)
		}
	}
	if _, err := c.Sign(context.Background(), Caller{}, der, -time.Second); !errors.Is(err, ErrBadCSR) {
		t.Errorf("Sign(negative TTL) error = %v; want ErrBadCSR", err)
	}
}

// intermediate builds Istio-style plugged-in cacerts: a root and an
// intermediate that signs.
func intermediate(t *testing.T) *KeyMaterial {
	t.Helper()
	root, err := GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	p, err := root.parse()
	if err != nil {
		t.Fatal(err)
	}
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: "intermediate"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(30 * 24 * time.Hour),
		KeyUsage: x509.KeyUsageCertSign, BasicConstraintsValid: true, IsCA: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.cert, key.Public(), p.key)
	if err != nil {
		t.Fatal(err)
	}
	keyDER, _ := x509.MarshalPKCS8PrivateKey(key)
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &KeyMaterial{
		CACert:    certPEM,
		CAKey:     pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		CertChain: append(append([]byte{}, certPEM...), root.RootCert...),
		RootCert:  root.RootCert,
	}
}

func TestPluggedInIntermediate(t *testing.T) {
	k := intermediate(t)
	k2, err := FromSecretData(k.SecretData())
	if err != nil {
		t.Fatalf("FromSecretData() = %v", err)
	}
	c := newTestCA(t, Options{Keys: k2})
	chain, err := c.Sign(context.Background(), Caller{}, csrWith(t, &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/a/sa/b")}}), 0)
	if err != nil {
		t.Fatal(err)
	}
	if len(chain) != 2 {
		t.Fatalf("chain length = %d; want 2 (leaf, intermediate)", len(chain))
	}
	if _, _, err := x509svid.Verify(chain, c.Bundle()); err != nil {
		t.Fatalf("x509svid.Verify() = %v", err)
	}
	if chain[0].NotAfter.After(chain[1].NotAfter) {
		t.Errorf("leaf outlives its issuer")
	}
}

func TestFromSecretDataErrors(t *testing.T) {
	good := intermediate(t).SecretData()
	other, _ := GenerateRoot(td, 0)
	tests := []struct {
		name    string
		mutate  func(map[string][]byte)
		wantSub string
	}{
		{"missing key", func(m map[string][]byte) { delete(m, CAKeyFile) }, CAKeyFile},
		{"missing root", func(m map[string][]byte) { delete(m, RootCertFile) }, RootCertFile},
		{"key of another cert", func(m map[string][]byte) { m[CAKeyFile] = other.CAKey }, "does not match"},
		{"root that did not sign", func(m map[string][]byte) { m[RootCertFile] = other.RootCert }, "verify"},
		{"garbage key", func(m map[string][]byte) { m[CAKeyFile] = []byte("nope") }, CAKeyFile},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := map[string][]byte{}
			for k, v := range good {
				m[k] = v
			}
			tt.mutate(m)
			_, err := FromSecretData(m)
			if err == nil || !strings.Contains(err.Error(), tt.wantSub) {
				t.Fatalf("FromSecretData() = %v; want an error mentioning %q", err, tt.wantSub)
			}
		})
	}
}

func TestServingCertificate(t *testing.T) {
	c := newTestCA(t, Options{})
	cert, err := c.ServingCertificate([]string{"meshd.meshlet-system.svc"}, 0)
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	for _, r := range c.Roots() {
		pool.AddCert(r)
	}
	if _, err := cert.Leaf.Verify(x509.VerifyOptions{DNSName: "meshd.meshlet-system.svc", Roots: pool}); err != nil {
		t.Fatalf("verify serving cert: %v", err)
	}
}

func FuzzSignCSR(f *testing.F) {
	c := newTestCA(f, Options{})
	f.Add(csrWith(f, &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web")}}))
	f.Add(csrWith(f, &x509.CertificateRequest{DNSNames: []string{"x"}}))
	f.Add([]byte{0x30, 0x03, 0x02, 0x01, 0x00})
	f.Fuzz(func(t *testing.T, der []byte) {
		chain, err := c.Sign(context.Background(), Caller{}, der, 0)
		if err != nil {
			return
		}
		// Anything signed must be a valid SVID of our trust domain, one URI SAN, no other SAN.
		id, _, err := x509svid.Verify(chain, c.Bundle())
		if err != nil {
			t.Fatalf("signed chain does not verify: %v", err)
		}
		if !id.MemberOf(td) || len(chain[0].URIs) != 1 || len(chain[0].DNSNames) != 0 || len(chain[0].IPAddresses) != 0 {
			t.Fatalf("signed certificate breaks the SVID rules: %v", chain[0])
		}
	})
}

func BenchmarkSignCSR(b *testing.B) {
	c := newTestCA(b, Options{})
	der := csrWith(b, &x509.CertificateRequest{URIs: []*url.URL{mustURL("spiffe://cluster.local/ns/default/sa/web")}})
	b.ReportAllocs()
	for b.Loop() {
		if _, err := c.Sign(context.Background(), Caller{}, der, 0); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N)/b.Elapsed().Seconds(), "CSRs/s")
}
