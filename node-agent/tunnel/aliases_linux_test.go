package tunnel

import (
	"context"
	"crypto/x509"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/poller"
	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/hbone"
	"github.com/meshlet/meshlet/pkg/identity"
)

const (
	idCartOld = "spiffe://old.example/ns/shop/sa/cart"
	idDBOld   = "spiffe://old.example/ns/shop/sa/db"
)

// aliasTunnel is a node agent's tunnel on a mesh that moved from trust
// domain old.example to cluster.local with its root: one pkg/ca key signs
// SVIDs in cluster.local, old.example, and evil.example (to show that
// the root alone admits no one), and the agent holds the mesh's bundle
// with alias old.example, as meshd pushes it.
func aliasTunnel(t *testing.T) *Tunnel {
	t.Helper()
	keys, err := ca.GenerateRoot(spiffeid.RequireTrustDomainFromString("cluster.local"), 0)
	if err != nil {
		t.Fatal(err)
	}
	signers := map[spiffeid.TrustDomain]*ca.CA{}
	for _, name := range []string{"cluster.local", "old.example", "evil.example"} {
		d := spiffeid.RequireTrustDomainFromString(name)
		c, err := ca.New(ca.Options{TrustDomain: d, Keys: keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
		if err != nil {
			t.Fatal(err)
		}
		signers[d] = c
	}
	mesh := signers[spiffeid.RequireTrustDomainFromString("cluster.local")]
	bundles := identity.NewBundleSource(mesh.Bundle())
	bundles.SetAliases(mesh.TrustDomain(), []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("old.example")})
	tn, err := New(Options{
		TrustDomain: mesh.TrustDomain(), Bundle: bundles, TrustDomainAliases: bundles.Aliases, Mark: mark, DrainTimeout: time.Second,
		SVID: func(ctx context.Context, id spiffeid.ID) (x509svid.Source, error) {
			src := identity.NewSVIDSource(nil)
			r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: func(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
				return signers[id.TrustDomain()].Sign(ctx, ca.Caller{}, csr, 0)
			}})
			if err != nil {
				return nil, err
			}
			return src, r.Renew(ctx)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	return tn
}

// peerRecorder echoes every stream and reports the peers it served.
type peerRecorder chan string

func (p peerRecorder) CheckStream(_ context.Context, s proxy.Stream) error {
	p <- s.Peer
	return nil
}

func (peerRecorder) ServeStream(_ context.Context, s proxy.Stream) error {
	io.Copy(s.Conn, s.Conn)
	return nil
}

// refusalRecorder is a peerRecorder told of the connections refused
// before any stream (proxy.ConnRefuser), by reason.
type refusalRecorder struct {
	peerRecorder
	refused chan string
}

func (r refusalRecorder) RefuseConn(_ net.Addr, reason, _ string) { r.refused <- reason }

// serveDB serves HBONE on port of pod B (ns) as shop/db with identity,
// streams and refusals going to rec, until the test ends.
func serveDB(t *testing.T, tn *Tunnel, pl *poller.Poller, ns nstest.Pod, port uint16, identity string, rec refusalRecorder) {
	t.Helper()
	pod := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "db", Identity: identity}, Netns: ns.Path, IPs: []netip.Addr{ns.Addr}}
	ln := nstest.MustListen(t)(netns.Listen(ns.Path, netip.AddrPortFrom(ns.Addr, port).String(), netns.ListenOptions{}))
	srv, err := tn.Server(pod, rec)
	if err != nil {
		t.Fatal(err)
	}
	pln, err := pl.Accept(ln, srv.ServeConn)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		pln.Close()
		ctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		srv.Shutdown(ctx)
	})
}

// TestTrustDomainAliases: over real HBONE between two pods, a pod whose
// SVID still names the alias trust domain is served, seen with the
// identity it presents (policies judge that); the identity the model
// expects at the destination passes in its alias form, and another service
// account's in the alias does not; a peer of a trust domain that is no
// alias is refused though the same root signed it.
func TestTrustDomainAliases(t *testing.T) {
	na, nb := nstest.Pair(t, "mlna-al", netip.MustParseAddr("198.19.4.41"), netip.MustParseAddr("198.19.4.42"))
	tn := aliasTunnel(t)
	pl, err := poller.Shared()
	if err != nil {
		t.Fatal(err)
	}
	// Pod B's 15008 twice: as db with a certificate of the trust domain,
	// and (port 15009) as db with one still in the alias.
	refused := make(chan string, 16)
	serve := func(port uint16, identity string) peerRecorder {
		rec := make(peerRecorder, 16)
		serveDB(t, tn, pl, nb, port, identity, refusalRecorder{rec, refused})
		return rec
	}
	own, alias := serve(proxy.PortTunnel, idDB), serve(proxy.PortTunnel+1, idDBOld)

	echo := func(from string, via uint16, expect string) error {
		src := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "cart", Identity: from}, Netns: na.Path, IPs: []netip.Addr{na.Addr}}
		defer tn.Forget(src)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := tn.Dial(ctx, src, proxy.Destination{Target: netip.AddrPortFrom(nb.Addr, 8080), Via: netip.AddrPortFrom(nb.Addr, via), Identity: expect})
		if err != nil {
			return err
		}
		defer s.Close()
		return pingEcho(s)
	}
	tests := []struct {
		name         string
		from         string
		via          uint16
		expect       string
		rec          peerRecorder
		wantServed   bool
		wantPeerSeen string
		wantRefused  string // the server's report of the refused connection, if it refused it
	}{
		{"client of the trust domain", idCart, proxy.PortTunnel, idDB, own, true, idCart, ""},
		{"client whose SVID names the alias", idCartOld, proxy.PortTunnel, idDB, own, true, idCartOld, ""},
		{"expected identity presented in its alias form", idCart, proxy.PortTunnel + 1, idDB, alias, true, idCart, ""},
		// The client refuses the server: pod B's side sees the handshake fail.
		{"another service account expected, alias form presented", idCart, proxy.PortTunnel + 1, "spiffe://cluster.local/ns/shop/sa/not-db", alias, false, "", hbone.RefusedHandshake},
		{"client of a trust domain that is no alias", "spiffe://evil.example/ns/shop/sa/cart", proxy.PortTunnel, idDB, own, false, "", hbone.RefusedPeer},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := echo(tt.from, tt.via, tt.expect)
			if !tt.wantServed {
				if err == nil {
					t.Fatalf("stream from %s expecting %s served; want refused", tt.from, tt.expect)
				}
				t.Logf("refused: %v", err)
				select {
				case p := <-tt.rec:
					t.Errorf("pod B's handler saw peer %s; want no stream", p)
				default:
				}
				select {
				case r := <-refused:
					if r != tt.wantRefused {
						t.Errorf("pod B's server reported the connection refused as %q; want %q", r, tt.wantRefused)
					}
				case <-time.After(5 * time.Second):
					t.Errorf("pod B's server reported no refused connection; want %q", tt.wantRefused)
				}
				return
			}
			if err != nil {
				t.Fatalf("stream from %s expecting %s: %v; want served", tt.from, tt.expect, err)
			}
			if p := <-tt.rec; p != tt.wantPeerSeen {
				t.Errorf("pod B's handler saw peer %s; want %s, as presented", p, tt.wantPeerSeen)
			}
		})
	}
}

// TestReverifyWhenAliasTakenBack: the node agent's wiring of a trust
// change (the bundle source's Watch calling Tunnel.Reverify, as
// cmd/node-agent does): once the alias is taken back, pod B's 15008
// closes the connection of the client whose SVID names the alias, its
// open stream fails and the proxy is told peer_untrusted, while the
// stream of a client of the trust domain keeps echoing.
func TestReverifyWhenAliasTakenBack(t *testing.T) {
	na, nb := nstest.Pair(t, "mlna-rv", netip.MustParseAddr("198.19.4.51"), netip.MustParseAddr("198.19.4.52"))
	tn := aliasTunnel(t)
	bundles := tn.opts.Bundle.(*identity.BundleSource)
	ctx, cancel := context.WithCancel(context.Background())
	watched := make(chan struct{})
	go func() { defer close(watched); bundles.Watch(ctx, func() { tn.Reverify() }) }()
	t.Cleanup(func() { cancel(); <-watched })
	pl, err := poller.Shared()
	if err != nil {
		t.Fatal(err)
	}
	refused := make(chan string, 16)
	serveDB(t, tn, pl, nb, proxy.PortTunnel, idDB, refusalRecorder{make(peerRecorder, 16), refused})
	open := func(from string) io.ReadWriteCloser {
		t.Helper()
		src := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "cart", Identity: from}, Netns: na.Path, IPs: []netip.Addr{na.Addr}}
		t.Cleanup(func() { tn.Forget(src) })
		dctx, dcancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer dcancel()
		s, err := tn.Dial(dctx, src, proxy.Destination{Target: netip.AddrPortFrom(nb.Addr, 8080), Via: netip.AddrPortFrom(nb.Addr, proxy.PortTunnel), Identity: idDB})
		if err != nil {
			t.Fatalf("stream from %s: %v", from, err)
		}
		t.Cleanup(func() { s.Close() })
		if err := pingEcho(s); err != nil {
			t.Fatalf("stream from %s: %v", from, err)
		}
		return s
	}
	aliased, own := open(idCartOld), open(idCart)

	bundles.SetAliases(spiffeid.RequireTrustDomainFromString("cluster.local"), nil)
	select {
	case r := <-refused:
		if r != hbone.RefusedUntrusted {
			t.Errorf("pod B's proxy was told %q; want %q", r, hbone.RefusedUntrusted)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("pod B's proxy was told of no closed connection after the alias was taken back")
	}
	done := make(chan error, 1)
	go func() { done <- pingEcho(aliased) }()
	select {
	case err := <-done:
		if err == nil {
			t.Error("the alias client's stream still echoes; want it ended")
		}
	case <-time.After(5 * time.Second):
		t.Error("the alias client's stream neither echoes nor fails")
	}
	if err := pingEcho(own); err != nil {
		t.Errorf("the trust domain client's stream: %v; want untouched", err)
	}
}
