package tunnel

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync/atomic"
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
	idCart  = "spiffe://cluster.local/ns/shop/sa/cart"
	idDB    = "spiffe://cluster.local/ns/shop/sa/db"
	idOther = "spiffe://cluster.local/ns/other/sa/intruder"
	mark    = 0x539
)

// newTunnel returns a Tunnel whose SVIDs come from a real pkg/ca CA.
// It trusts c and also the trusted CAs' roots.
func newTunnel(t *testing.T, c *ca.CA, trusted ...*ca.CA) *Tunnel {
	t.Helper()
	bundles := identity.NewBundleSource(c.Bundle())
	for _, o := range trusted {
		if err := bundles.SetBundle(o.Bundle()); err != nil {
			t.Fatal(err)
		}
	}
	tn, err := New(Options{
		TrustDomain: c.TrustDomain(), Bundle: bundles, Mark: mark, DrainTimeout: time.Second,
		SVID: func(ctx context.Context, id spiffeid.ID) (x509svid.Source, error) {
			src := identity.NewSVIDSource(nil)
			r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: func(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
				return c.Sign(ctx, ca.Caller{}, csr, 0)
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

// TestCertificateAskedAtEnrollment: serving a pod's tunnel port asks for
// its certificate at once, before any connection needs it.
func TestCertificateAskedAtEnrollment(t *testing.T) {
	asked := make(chan spiffeid.ID, 4)
	c := newCA(t, "cluster.local")
	tn, err := New(Options{TrustDomain: c.TrustDomain(), Bundle: identity.NewBundleSource(c.Bundle()), Mark: mark, DrainTimeout: time.Second,
		SVID: func(ctx context.Context, id spiffeid.ID) (x509svid.Source, error) {
			asked <- id
			return nil, errors.New("not in this test")
		}})
	if err != nil {
		t.Fatal(err)
	}
	srv, err := tn.Server(proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Identity: idDB}}, nil)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { srv.Shutdown(context.Background()) })
	select {
	case id := <-asked:
		if id.String() != idDB {
			t.Errorf("asked for %s; want %s", id, idDB)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no certificate asked for within 5s of serving the pod's tunnel port; want it at once")
	}
}

func newCA(t *testing.T, domain string) *ca.CA {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(domain)
	k, err := ca.GenerateRoot(d, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Options{TrustDomain: d, Keys: k, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

// TestHBONEBetweenPods: pod A's app connects to pod B's app through A's
// outbound listener, a real HBONE tunnel (mTLS 1.3, SPIFFE-verified both
// ways) into B's 15008, and B's inbound path; B's app sees A's address. An
// ALLOW for cart lets cart in and keeps another identity out; a peer that
// is not the identity the model expects is refused.
func TestHBONEBetweenPods(t *testing.T) {
	na, nb := nstest.Pair(t, "mlna-hb", netip.MustParseAddr("198.19.4.21"), netip.MustParseAddr("198.19.4.22"))
	if err := netns.PrepareReturnPath(nb.Path, netns.ReturnPath{Mark: 0x1000, Table: 1539}); err != nil {
		t.Fatal(err)
	}
	c := newCA(t, "cluster.local")
	tn := newTunnel(t, c)
	podA := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "cart", Identity: idCart}, Netns: na.Path, IPs: []netip.Addr{na.Addr}}
	podB := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "db", Identity: idDB}, Netns: nb.Path, IPs: []netip.Addr{nb.Addr}}
	t.Cleanup(func() { tn.Forget(podA) })

	app := nstest.MustListen(t)(netns.Listen(nb.Path, nb.Addr.String()+":8080", netns.ListenOptions{}))
	sources := make(chan netip.Addr, 8)
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			sources <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().Unmap()
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	// Read by the proxy's goroutines, changed by the test below.
	var expectID atomic.Pointer[string]
	expectID.Store(new(idDB))
	bApp := netip.AddrPortFrom(nb.Addr, 8080)
	start := func(p proxy.Pod) *proxy.Proxy {
		px, err := proxy.Start(proxy.Options{
			Pod: p, Mark: mark, ReturnMark: 0x1000, Errorf: t.Logf,
			OriginalDst: func(net.Conn) (netip.AddrPort, error) { return bApp, nil },
			Resolve: func(proxy.Pod, netip.AddrPort) (proxy.Destination, bool) {
				return proxy.Destination{Target: bApp, Via: netip.AddrPortFrom(nb.Addr, proxy.PortTunnel), Identity: *expectID.Load()}, true
			},
			DialTunnel: tn.Dial,
			Tunnel:     func(h proxy.StreamHandler) (proxy.TunnelServer, error) { return tn.Server(p, h) },
			PeerAuth:   func(proxy.Pod, uint16) proxy.Mode { return proxy.ModeStrict },
			Authorize: func(_ context.Context, r proxy.AuthzRequest) proxy.Decision {
				return proxy.Decision{Allow: r.Principal == idCart, Reason: "allow cart only"}
			},
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { px.Close() })
		return px
	}
	start(podA)
	start(podB)

	call := func() (string, error) {
		c, err := netns.Dial(context.Background(), na.Path, netip.AddrPortFrom(na.Addr, proxy.PortOutbound).String(), netns.DialOptions{Timeout: 5 * time.Second})
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		msg := strings.Repeat("x", 100000)
		go func() { io.WriteString(c, msg); c.(*net.TCPConn).CloseWrite() }()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	got, err := call()
	if err != nil || len(got) != 100000 {
		t.Fatalf("echo through HBONE: %d bytes, %v; want 100000", len(got), err)
	}
	if src := <-sources; src != na.Addr {
		t.Errorf("app in B saw %s; want pod A %s", src, na.Addr)
	}

	// Another identity, with a valid SVID from the same CA, is refused by
	// B's authorization before the stream is accepted.
	intruder := podA
	intruder.Identity = idOther
	_, err = tn.Dial(context.Background(), intruder, proxy.Destination{Target: bApp, Via: netip.AddrPortFrom(nb.Addr, proxy.PortTunnel), Identity: idDB})
	if !errors.Is(err, hbone.ErrForbidden) {
		t.Errorf("stream from %s = %v; want refused (403)", idOther, err)
	}

	// The model expects another identity at B: A's agent refuses to talk to
	// B, so A's app gets a reset, and B's app sees nothing.
	expectID.Store(new("spiffe://cluster.local/ns/shop/sa/not-db"))
	if got, err := call(); err == nil && got != "" {
		t.Errorf("call with a wrong expected peer served %d bytes; want a reset", len(got))
	}
	select {
	case src := <-sources:
		t.Errorf("app in B was reached from %s with a wrong peer identity", src)
	case <-time.After(200 * time.Millisecond):
	}
}

// TestForeignTrustDomain: a peer with a valid SVID from another trust
// domain's CA is refused.
func TestForeignTrustDomain(t *testing.T) {
	na, nb := nstest.Pair(t, "mlna-td", netip.MustParseAddr("198.19.4.31"), netip.MustParseAddr("198.19.4.32"))
	ourCA := newCA(t, "cluster.local")
	// The forger trusts our root, so its side of the handshake succeeds;
	// ours must refuse its certificate.
	ours, theirs := newTunnel(t, ourCA), newTunnel(t, newCA(t, "evil.example"), ourCA)
	podB := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "db", Identity: idDB}, Netns: nb.Path, IPs: []netip.Addr{nb.Addr}}
	px, err := proxy.Start(proxy.Options{Pod: podB, Mark: mark, Errorf: t.Logf,
		Tunnel: func(h proxy.StreamHandler) (proxy.TunnelServer, error) { return ours.Server(podB, h) }})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { px.Close() })
	forged := proxy.Pod{Workload: proxy.Workload{Identity: "spiffe://evil.example/ns/shop/sa/cart"}, Netns: na.Path, IPs: []netip.Addr{na.Addr}}
	t.Cleanup(func() { theirs.Forget(forged) })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = theirs.Dial(ctx, forged, proxy.Destination{Target: netip.AddrPortFrom(nb.Addr, 8080), Via: netip.AddrPortFrom(nb.Addr, proxy.PortTunnel), Identity: idDB})
	if err == nil {
		t.Fatal("a peer from a foreign trust domain opened a stream; want a refused handshake")
	}
	if strings.Contains(err.Error(), "no trust bundle") {
		t.Errorf("the forger's own side failed (%v); the test must reach our server's verification", err)
	}
	t.Logf("foreign peer: %v", err)
}

// echoStreams serves every tunnel stream by echoing it.
type echoStreams struct{}

func (echoStreams) CheckStream(context.Context, proxy.Stream) error { return nil }
func (echoStreams) ServeStream(_ context.Context, s proxy.Stream) error {
	io.Copy(s.Conn, s.Conn)
	return nil
}

// TestServeBeforeMeshdIsUp: a pod's tunnel listener opened while meshd
// cannot issue its certificate (an agent starting beside a meshd not up
// yet) refuses handshakes, and serves once meshd can, without reopening.
func TestServeBeforeMeshdIsUp(t *testing.T) {
	na, nb := nstest.Pair(t, "mlna-up", netip.MustParseAddr("198.19.4.25"), netip.MustParseAddr("198.19.4.26"))
	c := newCA(t, "cluster.local")
	client := newTunnel(t, c)
	var meshdUp atomic.Bool
	working := newTunnel(t, c)
	server, err := New(Options{TrustDomain: c.TrustDomain(), Bundle: identity.NewBundleSource(c.Bundle()), Mark: mark, DrainTimeout: time.Second,
		SVID: func(ctx context.Context, id spiffeid.ID) (x509svid.Source, error) {
			if !meshdUp.Load() {
				return nil, errors.New("meshd unavailable")
			}
			return working.opts.SVID(ctx, id)
		}})
	if err != nil {
		t.Fatal(err)
	}
	podA := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "cart", Identity: idCart}, Netns: na.Path, IPs: []netip.Addr{na.Addr}}
	podB := proxy.Pod{Workload: proxy.Workload{Namespace: "shop", Name: "db", Identity: idDB}, Netns: nb.Path, IPs: []netip.Addr{nb.Addr}}
	t.Cleanup(func() { client.Forget(podA) })
	ln := nstest.MustListen(t)(netns.Listen(nb.Path, netip.AddrPortFrom(nb.Addr, proxy.PortTunnel).String(), netns.ListenOptions{}))
	srv, err := server.Server(podB, echoStreams{})
	if err != nil {
		t.Fatal(err)
	}
	pl, err := poller.Shared()
	if err != nil {
		t.Fatal(err)
	}
	pln, err := pl.Accept(ln, srv.ServeConn)
	if err != nil {
		t.Fatal(err)
	}
	dst := proxy.Destination{Target: netip.AddrPortFrom(nb.Addr, 8080), Via: netip.AddrPortFrom(nb.Addr, proxy.PortTunnel), Identity: idDB}
	echo := func() error {
		ctx, cancel := context.WithTimeout(context.Background(), 15*time.Second)
		defer cancel()
		s, err := client.Dial(ctx, podA, dst)
		if err != nil {
			return err
		}
		defer s.Close()
		return pingEcho(s)
	}
	if err := echo(); err == nil {
		t.Fatal("a stream was served before the server had a certificate")
	}
	meshdUp.Store(true)
	if err := echo(); err != nil {
		t.Fatalf("once meshd issues the certificate: %v; want the stream served on the same listener", err)
	}
	client.Forget(podA) // its pooled connection ends, so the drain has nothing left
	pln.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if err := srv.Shutdown(ctx); err != nil {
		t.Errorf("Shutdown with no stream open: %v; want nil within 10s", err)
	}
}

// pingEcho writes "ping" on an echoing stream and reads it back.
func pingEcho(s io.ReadWriter) error {
	if _, err := io.WriteString(s, "ping"); err != nil {
		return err
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(s, buf); err != nil || string(buf) != "ping" {
		return fmt.Errorf("echo %q, %v", buf, err)
	}
	return nil
}
