package main

import (
	"context"
	"crypto/x509"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshlet/meshlet/pkg/ca"
)

// TestServingCert: meshd's serving certificate verifies against the CA root
// the clients get for the names they dial, and is reused, not reissued, on
// every handshake.
func TestServingCert(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("cluster.local")
	keys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	authority, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	s := &servingCert{ca: authority, dnsNames: []string{"meshd.meshlet-system.svc", "meshd.meshlet-system.svc.cluster.local"}}
	c1, err := s.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	for _, r := range authority.Roots() {
		roots.AddCert(r)
	}
	inter := x509.NewCertPool()
	for _, der := range c1.Certificate[1:] {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		inter.AddCert(c)
	}
	for _, name := range s.dnsNames {
		if _, err := c1.Leaf.Verify(x509.VerifyOptions{DNSName: name, Roots: roots, Intermediates: inter}); err != nil {
			t.Errorf("serving certificate does not verify for %s: %v", name, err)
		}
	}
	c2, err := s.get(nil)
	if err != nil {
		t.Fatal(err)
	}
	if c1 != c2 {
		t.Error("a second handshake got a new certificate; want the same until half-life")
	}
}
