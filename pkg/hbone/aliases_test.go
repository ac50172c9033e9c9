package hbone

import (
	"context"
	"io"
	"net"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
)

// meshCAs are the one root of a mesh that moved from trust domain
// old.example to cluster.local (Istio's trust domain migration), signing
// under both names and under a third, other.example, that is no alias.
type meshCAs struct {
	own, alias, other *testCA
	aliasTD           spiffeid.TrustDomain
}

func newMeshCAs(t *testing.T) *meshCAs {
	t.Helper()
	keys, err := ca.GenerateRoot(td, 0)
	if err != nil {
		t.Fatal(err)
	}
	signer := func(name string) *testCA {
		c, err := ca.New(ca.Options{TrustDomain: spiffeid.RequireTrustDomainFromString(name), Keys: keys,
			Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		return &testCA{ca: c}
	}
	return &meshCAs{own: signer("cluster.local"), alias: signer("old.example"), other: signer("other.example"),
		aliasTD: spiffeid.RequireTrustDomainFromString("old.example")}
}

// bundles is what a node agent holds once meshd pushed the mesh's bundle
// with the alias.
func (m *meshCAs) bundles() *identity.BundleSource {
	b := identity.NewBundleSource(m.own.ca.Bundle())
	b.SetAliases(td, []spiffeid.TrustDomain{m.aliasTD})
	return b
}

// TestServerAcceptsAliasPeers: with trust domain aliases, a client whose
// SVID (from the mesh's CA) names an alias trust domain is served, and the
// handler sees the identity as presented (policies match it so); a client
// of a trust domain that is no alias is refused, though the same root
// signed it, and so is the alias's client by a server that has no aliases.
func TestServerAcceptsAliasPeers(t *testing.T) {
	m := newMeshCAs(t)
	aliasClient := spiffeid.RequireFromString("spiffe://old.example/ns/a/sa/client")
	otherClient := spiffeid.RequireFromString("spiffe://other.example/ns/a/sa/client")
	tests := []struct {
		name      string
		client    *identity.SVIDSource
		aliases   bool // the server reads the bundle source's aliases
		federated bool // the server holds a bundle for other.example too
		want      spiffeid.ID
	}{
		{"client of the trust domain", m.own.svid(t, clientID), true, false, clientID},
		{"client of an alias", m.alias.svid(t, aliasClient), true, false, aliasClient},
		{"client of an alias, server without aliases", m.alias.svid(t, aliasClient), false, false, spiffeid.ID{}},
		{"client of another trust domain, same root", m.other.svid(t, otherClient), true, false, spiffeid.ID{}},
		// Its SVID verifies: the authorizer refuses it.
		{"client of another trust domain with a bundle", m.other.svid(t, otherClient), true, true, spiffeid.ID{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bundles := m.bundles()
			if tt.federated {
				if err := bundles.SetBundle(m.other.ca.Bundle()); err != nil {
					t.Fatal(err)
				}
			}
			seen := make(chan spiffeid.ID, 1)
			opts := ServerOptions{SVID: m.own.svid(t, serverID), Bundle: bundles, TrustDomain: td,
				Handler: func(_ context.Context, r *Request) error {
					seen <- r.Peer
					_, err := io.Copy(r.Stream, r.Stream)
					return err
				}}
			if tt.aliases {
				opts.TrustDomainAliases = bundles.Aliases
			}
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv, err := NewServer(opts)
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			d, err := NewDialer(DialerOptions{Bundle: m.bundles()})
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			c, err := d.Dial(ctxT(t), Target{Local: tt.client, Proxy: ln.Addr().(*net.TCPAddr).AddrPort(), PeerID: serverID, Addr: target})
			if err == nil {
				// A refused client certificate can surface on the first
				// read in TLS 1.3: a served stream echoes.
				defer c.Close()
				if _, err = c.Write([]byte("x")); err == nil {
					_, err = io.ReadFull(c, make([]byte, 1))
				}
			}
			if tt.want.IsZero() {
				if err == nil {
					t.Fatalf("client %s: stream served; want the handshake refused", tt.name)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("client %s: %v; want served", tt.name, err)
			}
			if got := <-seen; got != tt.want {
				t.Errorf("handler saw peer %s; want %s as presented", got, tt.want)
			}
		})
	}
}

// TestDialerAcceptsAliasOfExpectedPeer: the identity the model expects at
// the destination passes in its alias form (the server's certificate still
// names the old trust domain), and nothing else does: another service
// account in the alias, the same path in a trust domain that is no alias,
// or the alias form for a dialer without aliases.
func TestDialerAcceptsAliasOfExpectedPeer(t *testing.T) {
	m := newMeshCAs(t)
	aliasServer := spiffeid.RequireFromString("spiffe://old.example/ns/b/sa/server")
	tests := []struct {
		name    string
		server  *identity.SVIDSource
		peerID  spiffeid.ID // expected
		aliases bool        // the dialer reads the bundle source's aliases
		ok      bool
	}{
		{"server presents the expected identity", m.own.svid(t, serverID), serverID, true, true},
		{"server presents its alias form", m.alias.svid(t, aliasServer), serverID, true, true},
		{"alias form, expected in the alias", m.alias.svid(t, aliasServer), aliasServer, true, true},
		{"trust domain form, expected in the alias", m.own.svid(t, serverID), aliasServer, true, true},
		{"alias form of another service account", m.alias.svid(t, spiffeid.RequireFromString("spiffe://old.example/ns/b/sa/other")), serverID, true, false},
		{"alias form of another namespace", m.alias.svid(t, spiffeid.RequireFromString("spiffe://old.example/ns/c/sa/server")), serverID, true, false},
		{"same path in a trust domain that is no alias", m.other.svid(t, spiffeid.RequireFromString("spiffe://other.example/ns/b/sa/server")), serverID, true, false},
		{"alias form, dialer without aliases", m.alias.svid(t, aliasServer), serverID, false, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			bundles := m.bundles()
			// The server accepts everything of the mesh: what is tested is
			// the client's check of the server.
			ln, err := net.Listen("tcp", "127.0.0.1:0")
			if err != nil {
				t.Fatal(err)
			}
			srv, err := NewServer(ServerOptions{SVID: tt.server, Bundle: bundles, TrustDomain: td, TrustDomainAliases: bundles.Aliases, Handler: echo})
			if err != nil {
				t.Fatal(err)
			}
			go srv.Serve(ln)
			t.Cleanup(func() { srv.Close() })
			opts := DialerOptions{Bundle: bundles}
			if tt.aliases {
				opts.TrustDomainAliases = bundles.Aliases
			}
			d, err := NewDialer(opts)
			if err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { d.Close() })
			c, err := d.Dial(ctxT(t), Target{Local: m.own.svid(t, clientID), Proxy: ln.Addr().(*net.TCPAddr).AddrPort(), PeerID: tt.peerID, Addr: target})
			if !tt.ok {
				if err == nil {
					c.Close()
					t.Fatalf("Dial expecting %s succeeded; want refusal", tt.peerID)
				}
				t.Logf("refused: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("Dial expecting %s: %v; want accepted", tt.peerID, err)
			}
			defer c.Close()
			presented, _ := tt.server.GetX509SVID()
			if c.PeerID() != presented.ID {
				t.Errorf("Conn.PeerID() = %s; want %s, the identity verified", c.PeerID(), presented.ID)
			}
		})
	}
}
