package identity_test

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// handshake runs a TLS handshake of client against a server on loopback
// presenting cert, and returns the client's error.
func handshake(t *testing.T, client *tls.Config, cert *tls.Certificate) error {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		s := tls.Server(c, &tls.Config{Certificates: []tls.Certificate{*cert}, MinVersion: tls.VersionTLS13})
		_ = s.SetDeadline(time.Now().Add(5 * time.Second))
		_ = s.Handshake()
	}()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := (&tls.Dialer{Config: client}).DialContext(ctx, "tcp", ln.Addr().String())
	if err != nil {
		return err
	}
	return c.Close()
}

// TestMeshdClientTLS: a proxy verifies meshd against the root it started
// with and, once meshd has pushed a rotation's new root, against that too,
// so that meshd serving with a certificate of the new root is accepted
// before the mounted root file changes. Every other check stays: the server
// name, the trust domain of the pushed bundle, a certificate of no trusted
// root.
func TestMeshdClientTLS(t *testing.T) {
	const name = "meshd.meshlet-system.svc"
	newAuthority := func() *ca.CA {
		k, err := ca.GenerateRoot(td, 0)
		if err != nil {
			t.Fatal(err)
		}
		c, err := ca.New(ca.Options{TrustDomain: td, Keys: k, DefaultTTL: time.Hour, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	serving := func(c *ca.CA, names ...string) *tls.Certificate {
		cert, err := c.ServingCertificate(names, time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return cert
	}
	oldCA, newCA := newAuthority(), newAuthority()
	mounted := x509.NewCertPool()
	for _, r := range oldCA.Roots() {
		mounted.AddCert(r)
	}
	base := &tls.Config{RootCAs: mounted, ServerName: name, MinVersion: tls.VersionTLS13}
	bundles := identity.NewBundleSource(oldCA.Bundle())
	cfg := identity.MeshdClientTLS(base, td, bundles)

	if err := handshake(t, cfg, serving(oldCA, name)); err != nil {
		t.Errorf("meshd with a certificate of the mounted root: %v; want accepted", err)
	}
	err := handshake(t, cfg, serving(newCA, name))
	if err == nil || !strings.Contains(err.Error(), "verify meshd's certificate") {
		t.Errorf("meshd with a certificate of a root not pushed yet: %v; want refused", err)
	}

	// Another trust domain's bundle holding the new root trusts nothing here.
	other := spiffeid.RequireTrustDomainFromString("other.example")
	if err := bundles.SetBundle(x509bundle.FromX509Authorities(other, newCA.Roots())); err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, cfg, serving(newCA, name)); err == nil {
		t.Error("meshd with a certificate of a root pushed for another trust domain: accepted; want refused")
	}

	// The rotation pushes old and new roots.
	if err := bundles.SetBundle(x509bundle.FromX509Authorities(td, append(oldCA.Roots(), newCA.Roots()...))); err != nil {
		t.Fatal(err)
	}
	if err := handshake(t, cfg, serving(newCA, name)); err != nil {
		t.Errorf("meshd with a certificate of the pushed new root: %v; want accepted", err)
	}
	if err := handshake(t, cfg, serving(oldCA, name)); err != nil {
		t.Errorf("meshd with a certificate of the mounted root after the push: %v; want accepted", err)
	}
	err = handshake(t, cfg, serving(newCA, "evil.example"))
	if err == nil || !strings.Contains(err.Error(), "evil.example") {
		t.Errorf("a certificate of the pushed root for another name: %v; want refused naming it", err)
	}
	if base.InsecureSkipVerify || base.VerifyConnection != nil {
		t.Error("MeshdClientTLS changed the config it was given")
	}
}
