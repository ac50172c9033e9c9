package hbone

import (
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshlet/meshlet/pkg/identity"
)

// refusal is one OnRefusedConn report.
type refusal struct{ reason, detail string }

// startServer serves opts on loopback until the test ends, reporting
// refused connections to the returned channel (the first 16).
func startServer(t *testing.T, opts ServerOptions) (*Server, netip.AddrPort, chan refusal) {
	t.Helper()
	refused := make(chan refusal, 16)
	opts.OnRefusedConn = func(_ net.Addr, reason, detail string) {
		select {
		case refused <- refusal{reason, detail}:
		default:
		}
	}
	if opts.Handler == nil {
		opts.Handler = echo
	}
	srv, addr := serveLoopback(t, opts, nil)
	return srv, addr, refused
}

func newDialer(t *testing.T, opts DialerOptions) *Dialer {
	t.Helper()
	d, err := NewDialer(opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	return d
}

// ping sends one byte on an echoed stream and reads it back; a stream
// that does not answer within 5s is closed.
func ping(c *Conn) error {
	t := time.AfterFunc(5*time.Second, func() { c.Close() })
	defer t.Stop()
	if _, err := c.Write([]byte("x")); err != nil {
		return err
	}
	_, err := io.ReadFull(c, make([]byte, 1))
	return err
}

// dialOpen opens a stream and checks that it is served.
func dialOpen(t *testing.T, d *Dialer, tg Target) *Conn {
	t.Helper()
	c, err := d.Dial(ctxT(t), tg)
	if err != nil {
		t.Fatalf("Dial as %v to %s: %v", tg.Local, tg.PeerID, err)
	}
	t.Cleanup(func() { c.Close() })
	if err := ping(c); err != nil {
		t.Fatalf("stream as %s: %v; want echoed", c.LocalID(), err)
	}
	return c
}

// wantRefused checks that a fresh connection with tg is refused at the
// handshake (a refused client certificate can surface at the first read
// in TLS 1.3).
func wantRefused(t *testing.T, d *Dialer, tg Target) {
	t.Helper()
	c, err := d.Dial(ctxT(t), tg)
	if err == nil {
		defer c.Close()
		err = ping(c)
	}
	if err == nil {
		t.Fatalf("a fresh stream as %v to %s was served; want the handshake refused", tg.Local, tg.PeerID)
	}
}

// TestServerReverifyAfterAliasTakenBack: a server of cluster.local with
// alias old.example serves a client whose SVID names old.example; once
// the alias is taken back, Reverify closes that client's connection
// (its open stream fails, its pool lets the connection go, the server
// reports it as peer_untrusted) and a fresh one is refused at the
// handshake, while a client of cluster.local on another connection is
// untouched and keeps its stream.
func TestServerReverifyAfterAliasTakenBack(t *testing.T) {
	m := newMeshCAs(t)
	bundles := m.bundles()
	srv, addr, refused := startServer(t, ServerOptions{SVID: m.own.svid(t, serverID), Bundle: bundles, TrustDomain: td, TrustDomainAliases: bundles.Aliases})
	aliasClient := m.alias.svid(t, spiffeid.RequireFromString("spiffe://old.example/ns/a/sa/client"))
	ownClient := m.own.svid(t, clientID)
	// The clients' node agents keep trusting the server: what is tested is
	// the server's side.
	d := newDialer(t, DialerOptions{Bundle: m.bundles()})
	tg := func(local *identity.SVIDSource) Target {
		return Target{Local: local, Proxy: addr, PeerID: serverID, Addr: target}
	}
	aliased := dialOpen(t, d, tg(aliasClient))
	own := dialOpen(t, d, tg(ownClient))
	if n := d.PooledConns(); n != 2 {
		t.Fatalf("PooledConns() = %d; want 2, one per client identity", n)
	}

	if n := srv.Reverify(); n != 0 {
		t.Fatalf("Reverify() with the trust unchanged closed %d connections; want 0", n)
	}
	bundles.SetAliases(td, nil)
	if n := srv.Reverify(); n != 1 {
		t.Fatalf("Reverify() after the alias was taken back closed %d connections; want 1", n)
	}
	if err := ping(aliased); err == nil {
		t.Error("the alias client's open stream still echoes; want it ended")
	} else {
		t.Logf("alias client's stream: %v", err)
	}
	select {
	case r := <-refused:
		if r.reason != RefusedUntrusted || !strings.Contains(r.detail, "old.example") {
			t.Errorf("reported %q (%s); want %q naming the peer", r.reason, r.detail, RefusedUntrusted)
		}
	case <-time.After(5 * time.Second):
		t.Error("the closed connection was not reported to OnRefusedConn")
	}
	waitFor(t, "the client's pool to let the closed connection go", func() bool { return d.PooledConns() == 1 })
	if err := ping(own); err != nil {
		t.Errorf("the cluster.local client's stream on another connection: %v; want it untouched", err)
	}
	if n := srv.Reverify(); n != 0 {
		t.Errorf("a second Reverify() closed %d connections; want 0, each is closed once", n)
	}
	wantRefused(t, d, tg(aliasClient))
	select {
	case r := <-refused:
		if r.reason != RefusedPeer {
			t.Errorf("the fresh alias connection was reported %q; want %q", r.reason, RefusedPeer)
		}
	case <-time.After(5 * time.Second):
		t.Error("the fresh alias connection's refusal was not reported")
	}
	dialOpen(t, d, tg(ownClient))
}

// TestDialerReverifyAfterAliasTakenBack: a pooled connection to a server
// that presents the expected identity in its alias form is closed by the
// Dialer's Reverify once the alias is taken back: at once no Dial picks
// it, its open stream fails, and a fresh connection is refused; a pooled
// connection to a server presenting the identity itself stays.
func TestDialerReverifyAfterAliasTakenBack(t *testing.T) {
	m := newMeshCAs(t)
	aliasServer := m.alias.svid(t, spiffeid.RequireFromString("spiffe://old.example/ns/b/sa/server"))
	_, aliasAddr, _ := startServer(t, ServerOptions{SVID: aliasServer, Bundle: m.bundles(), TrustDomain: td, TrustDomainAliases: m.bundles().Aliases})
	_, ownAddr, _ := startServer(t, ServerOptions{SVID: m.own.svid(t, serverID), Bundle: m.bundles(), TrustDomain: td})
	bundles := m.bundles()
	d := newDialer(t, DialerOptions{Bundle: bundles, TrustDomainAliases: bundles.Aliases})
	client := m.own.svid(t, clientID)
	toAlias := Target{Local: client, Proxy: aliasAddr, PeerID: serverID, Addr: target}
	toOwn := Target{Local: client, Proxy: ownAddr, PeerID: serverID, Addr: target}
	aliased, own := dialOpen(t, d, toAlias), dialOpen(t, d, toOwn)

	bundles.SetAliases(td, nil)
	if n := d.Reverify(); n != 1 {
		t.Fatalf("Reverify() closed %d connections; want 1", n)
	}
	if n := d.PooledConns(); n != 1 {
		t.Errorf("PooledConns() right after Reverify = %d; want 1, the closed one taken out at once", n)
	}
	if err := ping(aliased); err == nil {
		t.Error("the stream to the alias server still echoes; want it ended")
	}
	if err := ping(own); err != nil {
		t.Errorf("the stream to the cluster.local server: %v; want it untouched", err)
	}
	wantRefused(t, d, toAlias)
}

// TestReverifyAfterRootRotation: peers whose certificates chain to root
// R1 keep their connections while the bundle holds R1 and R2 (a CA
// rotation under way), and lose them once it holds R2 alone (the rotation
// finished), on the server's side and the client's; a peer of R2 keeps
// its own.
func TestReverifyAfterRootRotation(t *testing.T) {
	r1, r2 := newCA(t, "cluster.local"), newCA(t, "cluster.local")
	both := x509bundle.FromX509Authorities(td, append(r1.ca.Bundle().X509Authorities(), r2.ca.Bundle().X509Authorities()...))
	serverBundles, clientBundles := identity.NewBundleSource(r1.ca.Bundle()), identity.NewBundleSource(r1.ca.Bundle())
	srv, addr, refused := startServer(t, ServerOptions{SVID: r1.svid(t, serverID), Bundle: serverBundles, TrustDomain: td})
	d := newDialer(t, DialerOptions{Bundle: clientBundles})
	tg := func(local *identity.SVIDSource) Target {
		return Target{Local: local, Proxy: addr, PeerID: serverID, Addr: target}
	}
	c1 := dialOpen(t, d, tg(r1.svid(t, clientID)))

	for _, b := range []*identity.BundleSource{serverBundles, clientBundles} {
		if err := b.SetBundle(both); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.Reverify(); n != 0 {
		t.Errorf("server Reverify() with R1+R2 closed %d connections; want 0", n)
	}
	if n := d.Reverify(); n != 0 {
		t.Errorf("client Reverify() with R1+R2 closed %d connections; want 0", n)
	}
	if err := ping(c1); err != nil {
		t.Fatalf("stream of R1 peers with R1+R2 trusted: %v; want untouched", err)
	}

	// The client's side: the server's certificate is of R1.
	if err := clientBundles.SetBundle(r2.ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	if n := d.Reverify(); n != 1 {
		t.Fatalf("client Reverify() with R2 alone closed %d connections; want 1", n)
	}
	if err := ping(c1); err == nil {
		t.Error("the stream to the R1 server still echoes; want it ended")
	}

	// The server's side: an R1 client loses its connection, an R2 client
	// keeps its own.
	d2 := newDialer(t, DialerOptions{Bundle: identity.NewBundleSource(both)})
	old := dialOpen(t, d2, tg(r1.svid(t, clientID)))
	renewed := dialOpen(t, d2, tg(r2.svid(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/renewed"))))
	if err := serverBundles.SetBundle(r2.ca.Bundle()); err != nil {
		t.Fatal(err)
	}
	if n := srv.Reverify(); n != 1 {
		t.Fatalf("server Reverify() with R2 alone closed %d connections; want 1", n)
	}
	if err := ping(old); err == nil {
		t.Error("the R1 client's stream still echoes; want it ended")
	}
	if err := ping(renewed); err != nil {
		t.Errorf("the R2 client's stream: %v; want untouched", err)
	}
	select {
	case r := <-refused:
		if r.reason != RefusedUntrusted {
			t.Errorf("reported %q; want %q", r.reason, RefusedUntrusted)
		}
	case <-time.After(5 * time.Second):
		t.Error("the closed connection was not reported")
	}
}

// TestReverifyRacesHandshakes: handshakes that run while the alias is
// taken back and Reverify runs are not missed: once every dial is done,
// no connection of the alias's client is left on the server, whichever
// view of the trust its handshake read.
func TestReverifyRacesHandshakes(t *testing.T) {
	m := newMeshCAs(t)
	bundles := m.bundles()
	srv, addr, _ := startServer(t, ServerOptions{SVID: m.own.svid(t, serverID), Bundle: bundles, TrustDomain: td, TrustDomainAliases: bundles.Aliases})
	aliasClient := m.alias.svid(t, spiffeid.RequireFromString("spiffe://old.example/ns/a/sa/client"))
	var wg sync.WaitGroup
	stop := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				select {
				case <-stop:
					return
				default:
				}
				// A dialer each time, kept: a fresh handshake each time,
				// and its connection stays open unless the server ends it.
				d := newDialer(t, DialerOptions{Bundle: m.bundles()})
				if c, err := d.Dial(ctxT(t), Target{Local: aliasClient, Proxy: addr, PeerID: serverID, Addr: target}); err == nil {
					c.Close()
				}
			}
		}()
	}
	time.Sleep(100 * time.Millisecond)
	bundles.SetAliases(td, nil)
	srv.Reverify()
	time.Sleep(100 * time.Millisecond)
	close(stop)
	wg.Wait()
	waitFor(t, "no connection of the alias's client left on the server", func() bool {
		srv.mu.Lock()
		defer srv.mu.Unlock()
		for _, c := range srv.conns {
			if c == nil || c.cfg.trust == nil || !c.cfg.trust.id.MemberOf(m.aliasTD) {
				continue
			}
			select {
			case <-c.done:
			default:
				return false
			}
		}
		return true
	})
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("waited 5s for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
