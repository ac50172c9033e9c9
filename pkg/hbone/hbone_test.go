//lint:file-ignore SA1019 the brief pins golang.org/x/net/http2 (ServeConn on an accepted TLS conn, NewClientConn for our own pool); moving to net/http's HTTP2Config/ClientConn is a follow-up.

package hbone

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
)

var (
	td       = spiffeid.RequireTrustDomainFromString("cluster.local")
	clientID = spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/client")
	serverID = spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/server")
	target   = netip.MustParseAddrPort("198.18.4.10:8080")
	sourceIP = netip.MustParseAddrPort("198.18.4.20:40000")
)

// testCA is a real CA from pkg/ca for one trust domain.
type testCA struct{ ca *ca.CA }

func newCA(t testing.TB, trustDomain string) *testCA {
	t.Helper()
	d := spiffeid.RequireTrustDomainFromString(trustDomain)
	k, err := ca.GenerateRoot(d, 0)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Options{TrustDomain: d, Keys: k, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	return &testCA{ca: c}
}

func (c *testCA) svid(t testing.TB, id spiffeid.ID) *identity.SVIDSource {
	t.Helper()
	src := identity.NewSVIDSource(nil)
	r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: src, Issue: func(ctx context.Context, csr []byte) ([]*x509.Certificate, error) {
		return c.ca.Sign(ctx, ca.Caller{}, csr, 0)
	}})
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Renew(context.Background()); err != nil {
		t.Fatal(err)
	}
	return src
}

// env is one HBONE server on loopback and a dialer that trusts it.
type env struct {
	ca       *testCA
	srv      *Server
	addr     netip.AddrPort
	accepted atomic.Int32
	dialer   *Dialer
	client   *identity.SVIDSource
	last     chan *Request
}

type countingListener struct {
	net.Listener
	n *atomic.Int32
}

func (l countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

func echo(_ context.Context, r *Request) error {
	_, err := io.Copy(r.Stream, r.Stream)
	return err
}

// serveLoopback serves opts on a loopback port (through wrap, when set)
// until the test ends.
func serveLoopback(t testing.TB, opts ServerOptions, wrap func(net.Listener) net.Listener) (*Server, netip.AddrPort) {
	t.Helper()
	srv, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().(*net.TCPAddr).AddrPort()
	if wrap != nil {
		ln = wrap(ln)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	return srv, addr
}

func newEnv(t testing.TB, handler func(context.Context, *Request) error, mutate func(*ServerOptions)) *env {
	t.Helper()
	e := &env{ca: newCA(t, "cluster.local"), last: make(chan *Request, 1000)}
	if handler == nil {
		handler = echo
	}
	opts := ServerOptions{
		SVID:        e.ca.svid(t, serverID),
		Bundle:      identity.NewBundleSource(e.ca.ca.Bundle()),
		TrustDomain: td,
		Handler: func(ctx context.Context, r *Request) error {
			select {
			case e.last <- r:
			default: // benchmarks open more streams than the buffer holds
			}
			return handler(ctx, r)
		},
	}
	if mutate != nil {
		mutate(&opts)
	}
	e.srv, e.addr = serveLoopback(t, opts, func(ln net.Listener) net.Listener { return countingListener{ln, &e.accepted} })
	e.client = e.ca.svid(t, clientID)
	d, err := NewDialer(DialerOptions{Bundle: identity.NewBundleSource(e.ca.ca.Bundle())})
	if err != nil {
		t.Fatal(err)
	}
	e.dialer = d
	t.Cleanup(func() { d.Close() })
	return e
}

func (e *env) target() Target {
	return Target{Local: e.client, Proxy: e.addr, PeerID: serverID, Addr: target, Source: sourceIP}
}

func ctxT(t testing.TB) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestRoundTrip(t *testing.T) {
	e := newEnv(t, nil, nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("hello")); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 5)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "hello" {
		t.Fatalf("echo = %q, %v; want hello", buf, err)
	}
	if err := c.CloseWrite(); err != nil {
		t.Fatal(err)
	}
	if rest, err := io.ReadAll(c); err != nil || len(rest) != 0 {
		t.Fatalf("after CloseWrite: read %q, %v; want clean EOF", rest, err)
	}
	r := <-e.last
	if r.Peer != clientID || r.Target != target || r.Source != sourceIP {
		t.Errorf("server saw peer %s target %s source %s; want %s %s %s", r.Peer, r.Target, r.Source, clientID, target, sourceIP)
	}
	if c.PeerID() != serverID {
		t.Errorf("client PeerID = %s; want %s", c.PeerID(), serverID)
	}
}

func TestConcurrentStreamsShareOneConnection(t *testing.T) {
	e := newEnv(t, nil, nil)
	ctx := ctxT(t)
	// Warm the pool so every stream finds the connection (and its SETTINGS).
	c0, err := e.dialer.Dial(ctx, e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c0.Close()
	const streams = 100
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, streams)
	for i := range streams {
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			c, err := e.dialer.Dial(ctx, e.target())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, 4096)
			go func() { c.Write(msg); c.CloseWrite() }()
			got, err := io.ReadAll(c)
			if err != nil || !bytes.Equal(got, msg) {
				errs <- fmt.Errorf("stream %d: got %d bytes, %v; want its 4096 bytes back", i, len(got), err)
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if n := e.accepted.Load(); n != 1 {
		t.Errorf("server accepted %d TCP connections; want 1 shared by all streams", n)
	}
	if n := e.dialer.PooledConns(); n != 1 {
		t.Errorf("pool holds %d connections; want 1", n)
	}
}

func TestPeerVerification(t *testing.T) {
	e := newEnv(t, nil, nil)
	foreign := newCA(t, "evil.example")
	otherSameTD := newCA(t, "cluster.local")
	foreignSrc := foreign.svid(t, spiffeid.RequireFromString("spiffe://evil.example/ns/a/sa/client"))
	forgedSrc := otherSameTD.svid(t, clientID)
	tests := []struct {
		name   string
		target func() Target
		dialer func() *Dialer
	}{
		{
			name: "server has another SPIFFE ID than expected",
			target: func() Target {
				t := e.target()
				t.PeerID = spiffeid.RequireFromString("spiffe://cluster.local/ns/b/sa/other")
				return t
			},
		},
		{
			name: "expected peer in a foreign trust domain",
			target: func() Target {
				t := e.target()
				t.PeerID = spiffeid.RequireFromString("spiffe://evil.example/ns/b/sa/server")
				return t
			},
		},
		{
			name: "client SVID from a foreign trust domain",
			target: func() Target {
				t := e.target()
				t.Local = foreignSrc
				return t
			},
		},
		{
			name: "client SVID from a forged CA in our trust domain",
			target: func() Target {
				t := e.target()
				t.Local = forgedSrc
				return t
			},
		},
		{
			name: "client trusts another root than the server's",
			dialer: func() *Dialer {
				d, _ := NewDialer(DialerOptions{Bundle: identity.NewBundleSource(otherSameTD.ca.Bundle())})
				return d
			},
			target: e.target,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := e.dialer
			if tt.dialer != nil {
				d = tt.dialer()
				defer d.Close()
			}
			c, err := d.Dial(ctxT(t), tt.target())
			if err == nil {
				// A refused client certificate can surface on the first read
				// in TLS 1.3; the stream must not carry data either way.
				c.Close()
				t.Fatal("Dial succeeded; want refusal")
			}
			t.Logf("refused: %v", err)
		})
	}
	select {
	case r := <-e.last:
		t.Errorf("server handler ran for peer %s; want no stream served", r.Peer)
	default:
	}
}

func TestServerRefusesClientWithoutCertificate(t *testing.T) {
	e := newEnv(t, nil, nil)
	cfg := tlsconfig.TLSClientConfig(identity.NewBundleSource(e.ca.ca.Bundle()), tlsconfig.AuthorizeID(serverID))
	cfg.NextProtos = []string{"h2"}
	conn, err := tls.Dial("tcp", e.addr.String(), cfg)
	if err == nil {
		// TLS 1.3: the client finishes first; the server's refusal arrives as an alert.
		conn.SetReadDeadline(time.Now().Add(10 * time.Second))
		_, err = conn.Read(make([]byte, 1))
		conn.Close()
	}
	if err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Fatalf("handshake without client certificate: err = %v; want a certificate-required alert", err)
	}
}

// rawClient speaks HTTP/2 over a verified TLS connection, so a test can send
// CONNECT requests the Dialer would never build.
func rawClient(t *testing.T, e *env) *http.Client {
	t.Helper()
	tr := &http2.Transport{DialTLSContext: func(ctx context.Context, network, addr string, _ *tls.Config) (net.Conn, error) {
		cfg := tlsconfig.MTLSClientConfig(e.client, identity.NewBundleSource(e.ca.ca.Bundle()), tlsconfig.AuthorizeID(serverID))
		cfg.NextProtos = []string{"h2"}
		return (&tls.Dialer{Config: cfg}).DialContext(ctx, network, e.addr.String())
	}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr}
}

func TestServerRefusesBadRequests(t *testing.T) {
	e := newEnv(t, nil, func(o *ServerOptions) {
		o.Authorize = func(_ context.Context, r *Request) error {
			if r.Target.Port() == 22 {
				return errors.New("port 22 is not allowed")
			}
			return nil
		}
	})
	hc := rawClient(t, e)
	tests := []struct {
		name      string
		method    string
		authority string
		forwarded string
		want      int
	}{
		{"host name authority", http.MethodConnect, "example.com:80", "", http.StatusBadRequest},
		{"no port", http.MethodConnect, "198.18.4.10", "", http.StatusBadRequest},
		{"port zero", http.MethodConnect, "198.18.4.10:0", "", http.StatusBadRequest},
		{"unspecified address", http.MethodConnect, "0.0.0.0:80", "", http.StatusBadRequest},
		{"malformed Forwarded", http.MethodConnect, "198.18.4.10:80", `for="nonsense"`, http.StatusBadRequest},
		{"policy refusal", http.MethodConnect, "198.18.4.10:22", "", http.StatusForbidden},
		{"not CONNECT", http.MethodGet, "198.18.4.10:80", "", http.StatusMethodNotAllowed},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			req, _ := http.NewRequestWithContext(ctxT(t), tt.method, "https://"+tt.authority+"/", nil)
			if tt.method == http.MethodConnect {
				req.URL.Path = ""
			}
			req.Host = tt.authority
			if tt.forwarded != "" {
				req.Header.Set(ForwardedHeader, tt.forwarded)
			}
			resp, err := hc.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.want {
				t.Errorf("%s %s: status %d; want %d", tt.method, tt.authority, resp.StatusCode, tt.want)
			}
		})
	}
	// The Dialer reports a policy refusal as ErrForbidden.
	tg := e.target()
	tg.Addr = netip.MustParseAddrPort("198.18.4.10:22")
	if _, err := e.dialer.Dial(ctxT(t), tg); !errors.Is(err, ErrForbidden) {
		t.Errorf("Dial to a refused port: %v; want ErrForbidden", err)
	}
}

func TestHalfClose(t *testing.T) {
	t.Run("client half-closes, server answers after EOF", func(t *testing.T) {
		e := newEnv(t, func(_ context.Context, r *Request) error {
			in, err := io.ReadAll(r.Stream) // returns at the client's END_STREAM
			if err != nil {
				return err
			}
			_, err = r.Stream.Write(append([]byte("got:"), in...))
			return err
		}, nil)
		c, err := e.dialer.Dial(ctxT(t), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("ping"))
		if err := c.CloseWrite(); err != nil {
			t.Fatal(err)
		}
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "got:ping" {
			t.Fatalf("read %q, %v; want got:ping then EOF", got, err)
		}
	})
	t.Run("server ends first, client reads EOF", func(t *testing.T) {
		e := newEnv(t, func(_ context.Context, r *Request) error {
			_, err := r.Stream.Write([]byte("bye"))
			return err
		}, nil)
		c, err := e.dialer.Dial(ctxT(t), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "bye" {
			t.Fatalf("read %q, %v; want bye then EOF", got, err)
		}
	})
	t.Run("handler failure resets the stream", func(t *testing.T) {
		e := newEnv(t, func(_ context.Context, r *Request) error {
			r.Stream.Write([]byte("partial"))
			return errors.New("backend refused")
		}, nil)
		c, err := e.dialer.Dial(ctxT(t), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if _, err := io.ReadAll(c); err == nil {
			t.Fatal("read ended cleanly; want a reset error so a failure is never taken for a clean end")
		}
		// The same through WriteTo (io.Copy's way, the node agent's and
		// the relay's), which hands over received chunks.
		c2, err := e.dialer.Dial(ctxT(t), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer c2.Close()
		var got bytes.Buffer
		if _, err := io.Copy(&got, c2); err == nil {
			t.Fatalf("copy ended cleanly after %q; want a reset error", got.String())
		}
	})
}

func TestLargeTransfer(t *testing.T) {
	if testing.Short() {
		t.Skip("64 MiB transfer skipped in -short mode")
	}
	e := newEnv(t, nil, nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	const size = 64 << 20
	rng := rand.NewChaCha8([32]byte{1})
	sent := sha256.New()
	go func() {
		buf := make([]byte, 256<<10)
		for n := 0; n < size; n += len(buf) {
			rng.Read(buf)
			sent.Write(buf)
			if _, err := c.Write(buf); err != nil {
				return
			}
		}
		c.CloseWrite()
	}()
	got := sha256.New()
	n, err := io.Copy(got, c)
	if err != nil || n != size {
		t.Fatalf("echoed %d bytes, %v; want %d", n, err, size)
	}
	if !bytes.Equal(sent.Sum(nil), got.Sum(nil)) {
		t.Fatal("echoed bytes differ from the bytes sent")
	}
}

func TestGracefulShutdown(t *testing.T) {
	e := newEnv(t, nil, nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	done := make(chan error, 1)
	go func() { done <- e.srv.Shutdown(ctxT(t)) }()
	time.Sleep(50 * time.Millisecond)
	// The open stream keeps working while the server drains.
	c.Write([]byte("still here"))
	buf := make([]byte, 10)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "still here" {
		t.Fatalf("stream during drain: %q, %v", buf, err)
	}
	select {
	case err := <-done:
		t.Fatalf("Shutdown returned (%v) with a stream open", err)
	default:
	}
	c.CloseWrite()
	io.ReadAll(c)
	if err := <-done; err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}
	if _, err := e.dialer.Dial(ctxT(t), e.target()); err == nil {
		t.Fatal("Dial after server shutdown succeeded")
	}
}

func TestParseForwarded(t *testing.T) {
	tests := []struct {
		in      string
		want    netip.AddrPort
		wantErr bool
	}{
		{`for="198.18.0.1:1234"`, netip.MustParseAddrPort("198.18.0.1:1234"), false},
		{`for="[2001:db8::1]:80";proto=https`, netip.MustParseAddrPort("[2001:db8::1]:80"), false},
		{`for=198.18.0.1, for=10.0.0.1`, netip.MustParseAddrPort("198.18.0.1:0"), false},
		{`proto=https`, netip.AddrPort{}, true},
		{`for=unknown`, netip.AddrPort{}, true},
	}
	for _, tt := range tests {
		got, err := parseForwarded(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("parseForwarded(%q) = %v, %v; want %v (error %v)", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
	if got, _ := parseForwarded(formatForwarded(sourceIP)); got != sourceIP {
		t.Errorf("round trip of %v = %v", sourceIP, got)
	}
}
