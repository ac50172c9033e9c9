//lint:file-ignore SA1019 the interop peers are x/net's own http2.Server and Transport on purpose: the standard HTTP/2 stack a ztunnel-like peer would be.

package hbone

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// These tests hold the hand-built HTTP/2 connection to a standard peer
// (x/net's Transport and Server, as Istio's ztunnel would be) and drive the
// server frame by frame to check the bounds a network-facing server needs.

// TestStockClientInterop drives the server with x/net's http2.Transport
// sending a CONNECT request with a streaming body.
func TestStockClientInterop(t *testing.T) {
	e := newEnv(t, nil, nil)
	hc := rawClient(t, e)
	pr, pw := io.Pipe()
	req, _ := http.NewRequestWithContext(ctxT(t), http.MethodConnect, "", pr)
	req.URL = &url.URL{Scheme: "https", Host: target.String()}
	req.Host = target.String()
	req.Header.Set(ForwardedHeader, formatForwarded(sourceIP))
	resp, err := hc.Transport.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("CONNECT status %d; want 200", resp.StatusCode)
	}
	msg := bytes.Repeat([]byte("0123456789abcdef"), 10<<10) // 160 KiB, several frames
	go func() {
		pw.Write(msg)
		pw.Close()
	}()
	got, err := io.ReadAll(resp.Body)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo through a stock client: %d bytes, %v; want the %d bytes sent", len(got), err, len(msg))
	}
	if r := <-e.last; r.Peer != clientID || r.Target != target || r.Source != sourceIP {
		t.Errorf("server saw peer %s target %s source %s; want %s %s %s", r.Peer, r.Target, r.Source, clientID, target, sourceIP)
	}
}

// TestStockServerInterop dials an x/net http2.Server with the Dialer.
func TestStockServerInterop(t *testing.T) {
	e := newEnv(t, nil, nil)
	scfg := tlsconfig.MTLSServerConfig(e.srv.opts.SVID, e.srv.opts.Bundle, tlsconfig.AuthorizeMemberOf(td))
	scfg.MinVersion = tls.VersionTLS13
	scfg.NextProtos = []string{"h2"}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	seen := make(chan string, 1)
	h := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodConnect || r.Host != target.String() {
			http.Error(w, "want CONNECT "+target.String(), http.StatusBadRequest)
			return
		}
		seen <- r.Header.Get(ForwardedHeader)
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		rc.Flush()
		buf := make([]byte, 32<<10)
		for {
			n, err := r.Body.Read(buf)
			if n > 0 {
				w.Write(buf[:n])
				rc.Flush()
			}
			if err != nil {
				return
			}
		}
	})
	srv := &http2.Server{}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				// ServeConn checks the TLS version, so the handshake goes first.
				if c.(*tls.Conn).Handshake() != nil {
					c.Close()
					return
				}
				srv.ServeConn(c, &http2.ServeConnOpts{Handler: h})
			}()
		}
	}()
	tg := e.target()
	tg.Proxy = ln.Addr().(*net.TCPAddr).AddrPort()
	c, err := e.dialer.Dial(ctxT(t), tg)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	msg := bytes.Repeat([]byte("x"), 200<<10)
	go func() {
		c.Write(msg)
		c.CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, msg) {
		t.Fatalf("echo from a stock server: %d bytes, %v; want %d", len(got), err, len(msg))
	}
	if fwd := <-seen; fwd != formatForwarded(sourceIP) {
		t.Errorf("stock server saw Forwarded %q; want %q", fwd, formatForwarded(sourceIP))
	}
	tg.Addr = netip.MustParseAddrPort("198.18.4.10:22") // the stock server refuses any other authority
	if _, err := e.dialer.Dial(ctxT(t), tg); err == nil {
		t.Error("Dial of a target the stock server refuses succeeded")
	}
}

// frameConn is a raw HTTP/2 client over a verified TLS connection.
type frameConn struct {
	t    *testing.T
	tc   *tls.Conn
	fr   *http2.Framer
	hbuf bytes.Buffer
	henc *hpack.Encoder
}

func dialFrames(t *testing.T, e *env, settings ...http2.Setting) *frameConn {
	t.Helper()
	cfg := tlsconfig.MTLSClientConfig(e.client, identity.NewBundleSource(e.ca.ca.Bundle()), tlsconfig.AuthorizeID(serverID))
	cfg.NextProtos = []string{"h2"}
	tc, err := tls.Dial("tcp", e.addr.String(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { tc.Close() })
	f := &frameConn{t: t, tc: tc, fr: http2.NewFramer(tc, tc)}
	f.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	f.henc = hpack.NewEncoder(&f.hbuf)
	if _, err := io.WriteString(tc, http2.ClientPreface); err != nil {
		t.Fatal(err)
	}
	if err := f.fr.WriteSettings(settings...); err != nil {
		t.Fatal(err)
	}
	return f
}

func (f *frameConn) connect(id uint32, authority string) {
	f.t.Helper()
	f.hbuf.Reset()
	f.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
	f.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: authority})
	if err := f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: f.hbuf.Bytes(), EndHeaders: true}); err != nil {
		f.t.Fatal(err)
	}
}

// next returns the next frame that is not SETTINGS, WINDOW_UPDATE or a
// PING ack; nil when the connection ended.
func (f *frameConn) next() http2.Frame {
	f.t.Helper()
	f.tc.SetReadDeadline(time.Now().Add(10 * time.Second))
	for {
		fr, err := f.fr.ReadFrame()
		if err != nil {
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				f.t.Fatal("no frame from the server within 10s")
			}
			return nil
		}
		switch fr := fr.(type) {
		case *http2.SettingsFrame, *http2.WindowUpdateFrame:
			continue
		case *http2.PingFrame:
			if fr.IsAck() {
				continue
			}
		}
		return fr
	}
}

// expectGoAway reads until GOAWAY and checks its code; the connection must
// then end.
func (f *frameConn) expectGoAway(code http2.ErrCode) {
	f.t.Helper()
	for {
		fr := f.next()
		if fr == nil {
			f.t.Fatalf("connection ended without GOAWAY %v", code)
		}
		if ga, ok := fr.(*http2.GoAwayFrame); ok {
			if ga.ErrCode != code {
				f.t.Fatalf("GOAWAY %v; want %v", ga.ErrCode, code)
			}
			break
		}
	}
	for f.next() != nil {
	}
}

func (f *frameConn) expectReset(id uint32, code http2.ErrCode) {
	f.t.Helper()
	for {
		fr := f.next()
		if fr == nil {
			f.t.Fatalf("connection ended; want RST_STREAM %v on stream %d", code, id)
		}
		if rst, ok := fr.(*http2.RSTStreamFrame); ok && rst.StreamID == id {
			if rst.ErrCode != code {
				f.t.Fatalf("RST_STREAM %v on stream %d; want %v", rst.ErrCode, id, code)
			}
			return
		}
	}
}

func (f *frameConn) expectStatus(id uint32, status string) {
	f.t.Helper()
	for {
		fr := f.next()
		if fr == nil {
			f.t.Fatalf("connection ended; want :status %s on stream %d", status, id)
		}
		if h, ok := fr.(*http2.MetaHeadersFrame); ok && h.StreamID == id {
			if got := h.PseudoValue("status"); got != status {
				f.t.Fatalf("stream %d :status %s; want %s", id, got, status)
			}
			return
		}
	}
}

func TestServerProtocolBounds(t *testing.T) {
	block := make(chan struct{})
	t.Cleanup(func() { close(block) })
	blocking := func(ctx context.Context, r *Request) error {
		select {
		case <-block:
		case <-ctx.Done():
		}
		return nil
	}
	t.Run("streams beyond MaxConcurrentStreams are refused", func(t *testing.T) {
		e := newEnv(t, blocking, func(o *ServerOptions) { o.MaxConcurrentStreams = 2 })
		f := dialFrames(t, e)
		f.connect(1, target.String())
		f.expectStatus(1, "200")
		f.connect(3, target.String())
		f.expectStatus(3, "200")
		f.connect(5, target.String())
		f.expectReset(5, http2.ErrCodeRefusedStream)
	})
	t.Run("DATA beyond the stream window", func(t *testing.T) {
		e := newEnv(t, blocking, func(o *ServerOptions) { o.StreamWindow = 1024 })
		f := dialFrames(t, e)
		f.connect(1, target.String())
		f.expectStatus(1, "200")
		f.fr.WriteData(1, false, make([]byte, 2048))
		f.expectReset(1, http2.ErrCodeFlowControl)
	})
	t.Run("DATA beyond the connection window", func(t *testing.T) {
		e := newEnv(t, blocking, func(o *ServerOptions) { o.ConnWindow = 65535; o.StreamWindow = 1 << 20 })
		f := dialFrames(t, e)
		f.connect(1, target.String())
		f.expectStatus(1, "200")
		for range 5 {
			f.fr.WriteData(1, false, make([]byte, 16<<10))
		}
		f.expectGoAway(http2.ErrCodeFlowControl)
	})
	t.Run("DATA on an idle stream", func(t *testing.T) {
		e := newEnv(t, nil, nil)
		f := dialFrames(t, e)
		f.fr.WriteData(7, false, []byte("x"))
		f.expectGoAway(http2.ErrCodeProtocol)
	})
	t.Run("PING flood", func(t *testing.T) {
		e := newEnv(t, nil, nil)
		f := dialFrames(t, e)
		go func() {
			for range 3 * maxControlFramesPerSecond {
				if f.fr.WritePing(false, [8]byte{}) != nil {
					return
				}
			}
		}()
		f.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	})
	t.Run("SETTINGS flood", func(t *testing.T) {
		e := newEnv(t, nil, nil)
		f := dialFrames(t, e)
		go func() {
			for range 3 * maxControlFramesPerSecond {
				if f.fr.WriteSettings() != nil {
					return
				}
			}
		}()
		f.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	})
	t.Run("RST_STREAM flood", func(t *testing.T) {
		e := newEnv(t, nil, nil)
		f := dialFrames(t, e)
		f.connect(1, target.String())
		go func() {
			for range 3 * maxResetsPerSecond {
				if f.fr.WriteRSTStream(1, http2.ErrCodeCancel) != nil {
					return
				}
			}
		}()
		f.expectGoAway(http2.ErrCodeEnhanceYourCalm)
	})
	t.Run("header block beyond the list size", func(t *testing.T) {
		e := newEnv(t, nil, nil)
		f := dialFrames(t, e)
		f.hbuf.Reset()
		f.henc.WriteField(hpack.HeaderField{Name: ":method", Value: "CONNECT"})
		f.henc.WriteField(hpack.HeaderField{Name: ":authority", Value: target.String()})
		f.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: f.hbuf.Bytes()})
		go func() {
			// A CONTINUATION flood: the server must stop reading it.
			big := bytes.Repeat([]byte{0x40, 0x01, 'a', 0x7f}, 4<<10)
			for range 1000 {
				if f.fr.WriteContinuation(1, false, big) != nil {
					return
				}
			}
		}()
		for f.next() != nil {
		}
	})
	t.Run("server blocks on the client's window", func(t *testing.T) {
		const size = 1000
		e := newEnv(t, func(_ context.Context, r *Request) error {
			_, err := r.Stream.Write(bytes.Repeat([]byte("y"), size))
			return err
		}, nil)
		f := dialFrames(t, e, http2.Setting{ID: http2.SettingInitialWindowSize, Val: 100})
		f.connect(1, target.String())
		f.expectStatus(1, "200")
		got := 0
		for got < 100 {
			d, ok := f.next().(*http2.DataFrame)
			if !ok {
				t.Fatal("want DATA")
			}
			got += len(d.Data())
		}
		f.tc.SetReadDeadline(time.Now().Add(200 * time.Millisecond))
		if fr, err := f.fr.ReadFrame(); err == nil {
			if _, ok := fr.(*http2.DataFrame); ok {
				t.Fatalf("server sent DATA beyond the 100-byte window")
			}
		}
		f.fr.WriteWindowUpdate(1, size)
		for got < size {
			d, ok := f.next().(*http2.DataFrame)
			if !ok {
				t.Fatal("want DATA after WINDOW_UPDATE")
			}
			got += len(d.Data())
		}
		if got != size {
			t.Fatalf("got %d bytes; want %d", got, size)
		}
	})
	t.Run("CONNECT refused by status keeps the connection", func(t *testing.T) {
		e := newEnv(t, nil, nil)
		f := dialFrames(t, e)
		f.connect(1, "example.com:80")
		f.expectStatus(1, "400")
		f.connect(3, target.String())
		f.expectStatus(3, "200")
	})
}

// TestClientIdleClose checks that a pooled connection with no stream is
// closed after IdleTimeout and a new Dial opens another.
func TestClientIdleClose(t *testing.T) {
	e := newEnv(t, nil, nil)
	d, err := NewDialer(DialerOptions{Bundle: identity.NewBundleSource(e.ca.ca.Bundle()), IdleTimeout: 50 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	c, err := d.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	c.CloseWrite()
	io.ReadAll(c)
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for d.PooledConns() != 0 {
		if time.Now().After(deadline) {
			t.Fatal("idle connection still pooled after 5s; want closed after 50ms")
		}
		time.Sleep(10 * time.Millisecond)
	}
	c, err = d.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatalf("Dial after the idle close: %v", err)
	}
	c.Close()
	if n := e.accepted.Load(); n != 2 {
		t.Errorf("server accepted %d connections; want 2", n)
	}
}

// TestClientResetOnClose checks that closing an unfinished stream resets it
// and that the server's handler sees its context end.
func TestClientResetOnClose(t *testing.T) {
	ended := make(chan error, 1)
	e := newEnv(t, func(ctx context.Context, r *Request) error {
		_, err := io.Copy(io.Discard, r.Stream)
		<-ctx.Done()
		ended <- err
		return nil
	}, nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	c.Write([]byte("x"))
	c.Close()
	select {
	case err := <-ended:
		if err == nil || !strings.Contains(err.Error(), "CANCEL") {
			t.Errorf("server read ended with %v; want a CANCEL reset", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("handler still running 10s after the client closed")
	}
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("Read after Close succeeded")
	}
}

// TestRoundTripAllocs guards the data path: a 1 KiB echo on an open stream
// allocates about what the same echo over plain TLS does (2 in
// BenchmarkStreamRoundTrip/tls), counting the server's side.
func TestRoundTripAllocs(t *testing.T) {
	if testing.Short() || raceEnabled {
		t.Skip("allocation count skipped in -short mode and under the race detector")
	}
	e := newEnv(t, nil, nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	buf := make([]byte, 1024)
	echo := func() {
		if _, err := c.Write(buf); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			t.Fatal(err)
		}
	}
	for range 10 {
		echo()
	}
	if n := testing.AllocsPerRun(200, echo); n > 4 {
		t.Errorf("1 KiB echo allocates %.1f times; want at most 4", n)
	}
}

// TestDialAfterServerRestart checks that a pooled connection the server
// drained (GOAWAY) is not reused, and a Dial to the restarted server opens a
// new one.
func TestDialAfterServerRestart(t *testing.T) {
	e := newEnv(t, nil, nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	c.Close()
	if err := e.srv.Shutdown(ctxT(t)); err != nil {
		t.Fatalf("Shutdown() = %v", err)
	}
	srv, err := NewServer(e.srv.opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", e.addr.String())
	if err != nil {
		t.Skipf("cannot listen on %s again: %v", e.addr, err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	c, err = e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatalf("Dial after the server restarted: %v", err)
	}
	defer c.Close()
	c.Write([]byte("again"))
	c.CloseWrite()
	if got, err := io.ReadAll(c); err != nil || string(got) != "again" {
		t.Fatalf("echo = %q, %v; want again", got, err)
	}
	if n := e.dialer.PooledConns(); n != 1 {
		t.Errorf("pool holds %d connections; want 1 (the drained one dropped)", n)
	}
}

// TestClientPingTimeout checks that a connection whose server falls silent
// is detected by the keepalive ping and its streams fail.
func TestClientPingTimeout(t *testing.T) {
	e := newEnv(t, nil, nil)
	// A TCP relay to the server that can stop forwarding the server's bytes.
	var silent atomic.Bool
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			cc, err := ln.Accept()
			if err != nil {
				return
			}
			sc, err := net.Dial("tcp", e.addr.String())
			if err != nil {
				cc.Close()
				return
			}
			t.Cleanup(func() { cc.Close(); sc.Close() })
			go io.Copy(sc, cc)
			go func() {
				buf := make([]byte, 32<<10)
				for {
					n, err := sc.Read(buf)
					if err != nil {
						return
					}
					if !silent.Load() {
						cc.Write(buf[:n])
					}
				}
			}()
		}
	}()
	d, err := NewDialer(DialerOptions{
		Bundle: identity.NewBundleSource(e.ca.ca.Bundle()),
		DialContext: func(ctx context.Context, network, _ string) (net.Conn, error) {
			return (&net.Dialer{}).DialContext(ctx, network, ln.Addr().String())
		},
		ReadIdleTimeout: 50 * time.Millisecond,
		PingTimeout:     50 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	c, err := d.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	silent.Store(true)
	done := make(chan error, 1)
	go func() {
		_, err := c.Read(make([]byte, 1))
		done <- err
	}()
	select {
	case err := <-done:
		if err == nil {
			t.Fatal("Read on a silent connection succeeded")
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream on a silent connection still open after 10s; want the ping timeout to close it")
	}
	if n := d.PooledConns(); n != 0 {
		t.Errorf("pool holds %d connections; want the dead one dropped", n)
	}
}

// TestServerKeepalive: the server pings a silent client and closes the
// connection when the ping goes unanswered (a client whose node died sends
// no FIN), and ends a connection that has carried no stream for its idle
// timeout with a GOAWAY.
func TestServerKeepalive(t *testing.T) {
	t.Run("unanswered ping", func(t *testing.T) {
		e := newEnv(t, nil, func(o *ServerOptions) {
			o.ReadIdleTimeout, o.PingTimeout = 50*time.Millisecond, 50*time.Millisecond
		})
		f := dialFrames(t, e)
		// Read, never answer: the server's PING must be followed by the
		// connection's end.
		pinged := false
		for fr := f.next(); fr != nil; fr = f.next() {
			if p, ok := fr.(*http2.PingFrame); ok && !p.IsAck() {
				pinged = true
			}
		}
		if !pinged {
			t.Error("connection closed without a PING first")
		}
	})
	t.Run("answered pings keep it", func(t *testing.T) {
		e := newEnv(t, nil, func(o *ServerOptions) {
			o.ReadIdleTimeout, o.PingTimeout = 50*time.Millisecond, 50*time.Millisecond
		})
		c, err := e.dialer.Dial(ctxT(t), e.target())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		time.Sleep(400 * time.Millisecond) // several ping rounds
		if _, err := c.Write([]byte("still here")); err != nil {
			t.Fatal(err)
		}
		c.CloseWrite()
		if got, err := io.ReadAll(c); err != nil || string(got) != "still here" {
			t.Fatalf("echo after pings = %q, %v; want still here", got, err)
		}
	})
	t.Run("idle", func(t *testing.T) {
		e := newEnv(t, nil, func(o *ServerOptions) { o.IdleTimeout = 100 * time.Millisecond })
		f := dialFrames(t, e)
		var goAway *http2.GoAwayFrame
		for fr := f.next(); fr != nil; fr = f.next() {
			if g, ok := fr.(*http2.GoAwayFrame); ok {
				goAway = g
			}
		}
		if goAway == nil || goAway.ErrCode != http2.ErrCodeNo {
			t.Errorf("idle connection ended with GOAWAY %+v; want GOAWAY NO_ERROR", goAway)
		}
	})
}

// TestFlowControlStress runs many concurrent echo streams through small
// server windows, so writers on both ends block on stream and connection
// windows and must be woken by WINDOW_UPDATEs.
func TestFlowControlStress(t *testing.T) {
	if testing.Short() {
		t.Skip("stress test skipped in -short mode")
	}
	e := newEnv(t, nil, func(o *ServerOptions) {
		o.StreamWindow = 16 << 10
		o.ConnWindow = 64 << 10
	})
	const (
		streams = 20
		size    = 512 << 10
	)
	errs := make(chan error, streams)
	for i := range streams {
		go func() {
			c, err := e.dialer.Dial(ctxT(t), e.target())
			if err != nil {
				errs <- err
				return
			}
			defer c.Close()
			msg := bytes.Repeat([]byte{byte(i)}, size)
			go func() {
				for off := 0; off < size; off += 7000 {
					if _, err := c.Write(msg[off:min(off+7000, size)]); err != nil {
						return
					}
				}
				c.CloseWrite()
			}()
			got, err := io.ReadAll(c)
			if err == nil && !bytes.Equal(got, msg) {
				err = errors.New("echo differs from the bytes sent")
			}
			errs <- err
		}()
	}
	for range streams {
		select {
		case err := <-errs:
			if err != nil {
				t.Error(err)
			}
		case <-time.After(60 * time.Second):
			t.Fatal("streams stalled for 60s: a writer was not woken")
		}
	}
}
