package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/logfilter"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/rawsock"
)

// ServerOptions configure Proxy.Serve. Zero values are safe defaults.
type ServerOptions struct {
	// TLSConfig, if set, terminates TLS (HTTP/1.1 and HTTP/2 by ALPN) for
	// connections that start with a TLS handshake; nil means plaintext only.
	TLSConfig *tls.Config
	// DetectTimeout bounds the wait for a client's first bytes; a client
	// that sends nothing by then (a server-first protocol) is forwarded as
	// TCP. Zero means 1s.
	DetectTimeout time.Duration
	// MaxConcurrentStreams bounds streams per HTTP/2 connection; zero means
	// 100. It is also the bound on concurrent handlers per connection, which
	// is what contains rapid-reset floods (CVE-2023-44487).
	MaxConcurrentStreams int
	// MaxHeaderBytes bounds request headers (HTTP/1.1 header bytes, HTTP/2
	// header list size after HPACK decoding, so HPACK bombs and CONTINUATION
	// floods are cut off); zero means 60 KiB (Envoy's default).
	MaxHeaderBytes int
	// ReadHeaderTimeout bounds reading request headers; zero means 10s.
	ReadHeaderTimeout time.Duration
	// IdleTimeout closes idle client connections; zero means 5m.
	IdleTimeout time.Duration
	// Misdirected, if set, is asked for every request that came over TLS
	// whether its Host is one that other TLS settings serve than those the
	// handshake chose by the client's server name (SNI): such a request is
	// answered 421 Misdirected Request and goes no further, so that a
	// connection made for a host without client certificates cannot carry
	// requests to a host whose server requires them (and a client that
	// reused an HTTP/2 connection for another host retries on a new one,
	// as RFC 9110 section 15.5.20 has it).
	Misdirected func(serverName, host string) bool
}

// HTTP/2 hardening. The server is net/http's, which bundles
// golang.org/x/net/http2 with its mitigations: handler concurrency per
// connection is bounded by MaxConcurrentStreams and streams reset before
// their handler runs still count against it (rapid reset); header blocks,
// including CONTINUATION frames, are bounded by MaxHeaderBytes and rejected
// as soon as they exceed it (CONTINUATION flood, HPACK bomb); the decoder's
// dynamic table is capped at 4 KiB; queued control frames (PING, SETTINGS
// acks) are bounded and a peer that floods them is disconnected (ping flood);
// flow-control windows are bounded per stream and per connection so memory
// per connection is bounded.
const (
	h2HeaderTable       = 4096
	h2MaxReadFrame      = 16 << 10
	h2ConnReceiveBuffer = 1 << 20
	h2StreamReceiveBuf  = 256 << 10
)

// Serve accepts connections on l until ctx ends, detecting per connection
// HTTP/1.1, HTTP/2 (prior knowledge, or by ALPN over TLS) or anything else,
// which is forwarded as TCP to Config.TCPCluster after L4 authorization.
func (p *Proxy) Serve(ctx context.Context, l net.Listener, opts ServerOptions) error {
	if opts.DetectTimeout == 0 {
		opts.DetectTimeout = time.Second
	}
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = 100
	}
	if opts.MaxHeaderBytes == 0 {
		opts.MaxHeaderBytes = 60 << 10
	}
	if opts.ReadHeaderTimeout == 0 {
		opts.ReadHeaderTimeout = 10 * time.Second
	}
	if opts.IdleTimeout == 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	// net/http serves HTTP/2 only (prior knowledge, or "h2" by ALPN);
	// HTTP/1.x is h1Server's. Without HTTP1 in its protocols, a connection
	// that detect offers as prior knowledge but that is not ("PRI *
	// HTTP/1.1") is closed, not parsed by net/http's HTTP/1 server, whose
	// framing rules are laxer than h1Server's.
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	protos.SetHTTP2(true) // TLS connections come from detect handshaken, "h2" negotiated
	var tlsConfig *tls.Config
	if opts.TLSConfig != nil {
		tlsConfig = opts.TLSConfig.Clone()
		tlsConfig.NextProtos = []string{"h2", "http/1.1"}
	}
	srv := &http.Server{
		Handler:           p,
		Protocols:         &protos,
		MaxHeaderBytes:    opts.MaxHeaderBytes,
		ReadHeaderTimeout: opts.ReadHeaderTimeout,
		IdleTimeout:       opts.IdleTimeout,
		TLSConfig:         tlsConfig,
		ConnContext: func(ctx context.Context, c net.Conn) context.Context {
			return withMisdirected(withConn(ctx, c), opts.Misdirected)
		},
		HTTP2: &http.HTTP2Config{
			MaxConcurrentStreams:          opts.MaxConcurrentStreams,
			MaxDecoderHeaderTableSize:     h2HeaderTable,
			MaxEncoderHeaderTableSize:     h2HeaderTable,
			MaxReadFrameSize:              h2MaxReadFrame,
			MaxReceiveBufferPerConnection: h2ConnReceiveBuffer,
			MaxReceiveBufferPerStream:     h2StreamReceiveBuf,
		},
	}
	h1 := newH1Server(p, &opts)
	httpConns := &chanListener{addr: l.Addr(), conns: make(chan net.Conn), done: make(chan struct{})}
	srvDone := make(chan error, 1)
	go func() { srvDone <- srv.Serve(httpConns) }()

	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	var wg sync.WaitGroup
	var err error
	for {
		c, aerr := l.Accept()
		if aerr != nil {
			if ctx.Err() == nil {
				err = fmt.Errorf("accept: %w", aerr)
			}
			break
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			p.detect(ctx, c, &opts, tlsConfig, httpConns, h1)
		}()
	}
	httpConns.close()
	shutdownCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
	defer cancel()
	go h1.shutdown(shutdownCtx)
	_ = srv.Shutdown(shutdownCtx)
	<-srvDone
	wg.Wait()
	return err
}

// detect sniffs the first bytes of c and hands it to the HTTP/1.x server,
// to net/http's HTTP/2 server or to the TCP forwarder. TLS is terminated
// here so that ALPN picks the server.
func (p *Proxy) detect(ctx context.Context, c net.Conn, opts *ServerOptions, tlsConfig *tls.Config, httpConns *chanListener, h1 *h1Server) {
	cfg := p.cfg.Load()
	if cfg.opaque {
		// A service port declared TCP (or TLS, a database protocol) is
		// forwarded at once: a server-first protocol would otherwise
		// wait out DetectTimeout for bytes its client never sends first.
		peer := p.connPeer(c)
		if vh := cfg.serviceVhost(&peer); vh != nil && vh.opaque {
			p.forwardTCP(ctx, c, cfg, peer)
			return
		}
	}
	if tc, ok := c.(*tls.Conn); ok {
		// The listener terminates TLS (an ingress gateway's, which picks
		// the certificate by SNI): the handshake's protocol picks the server,
		// and the requests know they came over TLS.
		serveTLS(ctx, tc, tc.NetConn(), opts, httpConns, h1)
		return
	}
	br := bufio.NewReaderSize(c, 512)
	_ = c.SetReadDeadline(time.Now().Add(opts.DetectTimeout))
	head, _ := br.Peek(8)
	_ = c.SetReadDeadline(time.Time{})
	pc := &peekedConn{Conn: c, r: br}
	switch {
	case len(head) > 0 && head[0] == 0x16 && tlsConfig != nil:
		serveTLS(ctx, tls.Server(pc, tlsConfig), c, opts, httpConns, h1)
	case bytes.HasPrefix(head, []byte("PRI * HT")):
		if !httpConns.offer(pc) {
			c.Close()
		}
	case looksLikeHTTP(head):
		// The HTTP/1 loop's reads and writes are most of its system
		// calls: see package rawsock.
		pc.Conn = rawsock.Wrap(c)
		h1.serve(pc, c, nil)
	default:
		p.forwardTCP(ctx, pc, cfg, p.connPeer(pc))
	}
}

// serveTLS completes tc's handshake, within ReadHeaderTimeout, and hands
// it to the HTTP/2 server or the HTTP/1.x one by the protocol it
// negotiated. c is the accepted connection under it.
func serveTLS(ctx context.Context, tc *tls.Conn, c net.Conn, opts *ServerOptions, httpConns *chanListener, h1 *h1Server) {
	_ = c.SetDeadline(time.Now().Add(opts.ReadHeaderTimeout))
	if err := tc.HandshakeContext(ctx); err != nil {
		c.Close()
		return
	}
	_ = c.SetDeadline(time.Time{})
	st := tc.ConnectionState()
	if st.NegotiatedProtocol == "h2" {
		if !httpConns.offer(tc) {
			c.Close()
		}
		return
	}
	h1.serve(tc, c, &st)
}

// looksLikeHTTP reports whether b starts with an HTTP/1 method token and a
// space (the HTTP/2 preface starts with "PRI * ").
func looksLikeHTTP(b []byte) bool {
	for i, c := range b {
		if c == ' ' {
			return i >= 3
		}
		if c < 'A' || c > 'Z' {
			return false
		}
	}
	return false
}

// forwardTCP is the L4 fallback for a connection that is not HTTP: L4
// authorization, then a byte pipe to an endpoint of Config.TCPCluster when
// set, else of the tcp route of the virtual host of the service the client
// dialled (a waypoint's; Peer.DestinationService on the listener of its
// port). A connection with neither is closed.
func (p *Proxy) forwardTCP(ctx context.Context, c net.Conn, cfg *compiled, peer Peer) {
	defer c.Close()
	if up := cfg.tcpCluster; up != nil {
		if p.allowL4(ctx, cfg, peer) {
			p.relay(ctx, c, up, peer, "-")
		}
		return
	}
	if vh := cfg.serviceVhost(&peer); vh != nil {
		if len(vh.pass) > 0 {
			// TLSRoutes bound to the service: a TLS connection goes by its
			// server name; anything else, and a name none claims, on to
			// the tcp routes with what was read replayed.
			sni, pc, isTLS, err := peekTLS(c)
			if err != nil {
				p.logf("waypoint: connection from %s to service %q: %v; closed", peer.IP, peer.DestinationService, err)
				return
			}
			if r, _ := bestPassthrough(vh.pass, sni); isTLS && r != nil {
				p.forwardRoute(ctx, pc, cfg, peer, r.Name, r.Destinations)
				return
			}
			c = pc
		}
		if r := pickTCP(vh.matched, vh.tcp, &peer); r != nil {
			p.forwardRoute(ctx, c, cfg, peer, r.Name, r.Destinations)
			return
		}
	}
	if rt := cfg.workloadRoute(&peer); rt != nil {
		if p.allowL4(ctx, cfg, peer) {
			p.relay(ctx, c, rt.dests[0].up, peer, rt.name)
		}
		return
	}
	p.logf("waypoint: connection from %s to %s (service %q) is not HTTP and has no tcp route; closed", peer.IP, c.LocalAddr(), peer.DestinationService)
}

// peekTLS reads c's TLS ClientHello, when it starts with one (isTLS), for
// its server name. The connection returned replays what was read. A
// connection that starts as TLS and sends no whole ClientHello within
// peekTLSTimeout is an error: what it sent cannot be relayed any more.
func peekTLS(c net.Conn) (sni string, _ net.Conn, isTLS bool, err error) {
	pc, isPeeked := c.(*peekedConn)
	if !isPeeked {
		pc = &peekedConn{Conn: c, r: bufio.NewReaderSize(c, 512)}
	}
	_ = pc.Conn.SetReadDeadline(time.Now().Add(peekTLSTimeout))
	first, perr := pc.r.Peek(1)
	_ = pc.Conn.SetReadDeadline(time.Time{})
	if perr != nil || first[0] != 0x16 { // not a TLS handshake record
		return "", pc, false, nil
	}
	sni, tc, err := PeekServerName(pc, peekTLSTimeout)
	if err != nil {
		return "", nil, true, err
	}
	return sni, tc, true, nil
}

// peekTLSTimeout bounds the wait for a TLS client's first bytes.
const peekTLSTimeout = 10 * time.Second

// allowL4 evaluates the policies that apply to a connection forwarded
// whole (L4 fallback, TLS passthrough, tcp routes) on what is known of it
// without reading it: its source, destination and port, as Envoy's RBAC
// network filter does. A CUSTOM policy that matches asks its authorizer
// first, as Envoy's network ext_authz filter does: a gRPC provider is told
// the connection's source and destination (there is no request); an HTTP
// provider cannot be asked about a connection, so it denies (fail closed).
// A denial is logged.
func (p *Proxy) allowL4(ctx context.Context, cfg *compiled, peer Peer) bool {
	pols := cfg.policiesFor(peer.DestinationService)
	if len(pols) == 0 {
		return true
	}
	d := policy.EvaluateTCP(pols, &policy.Request{
		SourcePrincipal: peer.Principal, SourceNamespace: peer.Namespace,
		SourceIP: peer.IP, DestinationIP: peer.DestinationIP, DestinationPort: peer.DestinationPort,
	})
	if d.Check != "" {
		x := cfg.extAuthz[d.Check]
		switch {
		case x == nil:
			p.logf("waypoint: tcp from %s denied: policy %s names provider %q, which the mesh config does not define (fail closed)", peer.IP, d.CheckPolicy, d.Check)
			return false
		case !x.spec.GRPC:
			p.logf("waypoint: tcp from %s denied: policy %s asks provider %q, an HTTP authorizer, which cannot check a connection; use an envoyExtAuthzGrpc provider for TCP traffic (fail closed)", peer.IP, d.CheckPolicy, d.Check)
			return false
		}
		if v := x.check(ctx, &authzRequest{peer: peer}); !v.allow {
			p.logf("waypoint: tcp from %s denied by provider %q of policy %s %s", peer.IP, d.Check, d.CheckPolicy, v.details)
			return false
		}
	}
	if !d.Allow {
		p.logf("waypoint: tcp from %s denied: %s", peer.IP, d.Reason)
	}
	return d.Allow
}

// connPeer describes the client of a connection forwarded whole.
func (p *Proxy) connPeer(c net.Conn) Peer {
	if pc, ok := c.(*peekedConn); ok {
		c = pc.Conn // ConnPeer knows the connection as it was accepted
	}
	peer := Peer{}
	if p.opts.ConnPeer != nil {
		peer = p.opts.ConnPeer(c)
	}
	if !peer.IP.IsValid() {
		peer.IP = RemoteIP(c)
	}
	peer.defaultDestination(c.LocalAddr())
	return peer
}

// relay connects c to an endpoint of up and copies both ways until either
// side ends; Istio's TCP metrics count the connection, and the access log
// has a line for it once it ends, as Envoy logs a TCP proxy's connections
// (no request: method, path and protocol "-", response code 0; route is
// the route that chose up).
func (p *Proxy) relay(ctx context.Context, c net.Conn, up *upstream, peer Peer, route string) {
	start := time.Now()
	var read, written int64
	var upstreamAddr string
	logConn := func(flag string) {
		cfg := p.cfg.Load()
		if al := cfg.telemetry.AccessLog; p.log == nil || (al != nil && !*al) {
			return
		}
		if cfg.logFilter != nil {
			a := connAttributes(c, peer, upstreamAddr)
			a.Duration = time.Since(start)
			if !cfg.logFilter.Match(a) {
				return
			}
		}
		rec := &record{start: start, method: "-", path: "-", protocol: "-", peer: peer, bytesIn: read, bytesOut: written,
			upstreamHost: upstreamAddr, upstreamClust: up.name(), downstreamRem: addrString(c.RemoteAddr()), downstreamLoc: c.LocalAddr(), routeName: route}
		if flag != "" {
			rec.flag(flag)
		}
		p.log.log(cfg.logFormat, rec, nil, nil, nil)
	}
	ep, err := up.pick(nil, up.hashKey(nil, "", peer))
	if err != nil {
		p.logf("waypoint: tcp to %s: %v", up.name(), err)
		logConn(flagNoHealthy)
		return
	}
	upstreamAddr = ep.addr
	dial := up.dial // the proxy's dialer with the cluster's keepalive and tunnel
	pool := &up.policy.Pool
	connectTimeout := pool.ConnectTimeout
	if connectTimeout == 0 {
		connectTimeout = 10 * time.Second
	}
	dctx, cancel := context.WithTimeout(ctx, connectTimeout)
	if up.policy.ProxyProtocol != 0 {
		dctx = withProxyAddrs(dctx, proxyAddrs{src: addrPortOf(c.RemoteAddr()), dst: addrPortOf(c.LocalAddr())})
	}
	back, err := dial(dctx, "tcp", ep.addr)
	cancel()
	if err != nil {
		up.report(ep, 0)
		p.logf("waypoint: tcp to %s: %v", ep.addr, err)
		logConn(flagConnFailure)
		return
	}
	defer back.Close()
	var m tcpCounters
	if tm := p.cfg.Load().telemetry.RequestMetrics; tm == nil || *tm {
		m = p.metrics.tcp(peer, destFor(up), func() *logfilter.Attributes { return connAttributes(c, peer, ep.addr) })
	}
	inc(m.opened, 1)
	defer func() { inc(m.closed, 1) }()
	stop := context.AfterFunc(ctx, func() { c.Close(); back.Close() })
	defer stop()
	client := &countingConn{ReadWriteCloser: c}
	// Istio's tcp.idleTimeout (1h unless set; 0s: none) and
	// tcp.maxConnectionDuration end the relay, flagged SI and DT.
	var ended atomic.Pointer[string]
	end := func(flag string) func() {
		return func() {
			if ended.CompareAndSwap(nil, &flag) {
				c.Close()
				back.Close()
			}
		}
	}
	idle := pool.TCPIdleTimeout
	switch idle {
	case 0:
		idle = time.Hour
	case model.NoTimeout:
		idle = 0
	}
	if idle > 0 {
		defer client.closeWhenIdle(idle, end(flagStreamIdleTimeout))()
	}
	if d := pool.MaxConnectionDuration; d > 0 {
		defer time.AfterFunc(d, end(flagDurationTimeout)).Stop()
	}
	pipe(client, back)
	read, written = client.read.Load(), client.written.Load()
	inc(m.received, float64(read))
	inc(m.sent, float64(written))
	flag := ""
	if f := ended.Load(); f != nil {
		flag = *f
	}
	logConn(flag)
}

// setKeepalive turns on TCP keepalive probes on c as k says (Istio's
// tcpKeepalive), when c is a TCP connection the proxy dialled itself.
func setKeepalive(c net.Conn, k *model.TCPKeepalive) {
	if k == nil {
		return
	}
	if tc, ok := c.(*net.TCPConn); ok {
		_ = tc.SetKeepAliveConfig(net.KeepAliveConfig{Enable: true, Idle: k.Time, Interval: k.Interval, Count: k.Probes})
	}
}

// inc adds v to c unless c is not exported (nil).
func inc(c prometheus.Counter, v float64) {
	if c != nil {
		c.Add(v)
	}
}

// connAttributes are a forwarded connection's attributes for the TCP
// metrics' tagOverrides expressions: no request, only its ends.
func connAttributes(c net.Conn, peer Peer, upstream string) *logfilter.Attributes {
	a := &logfilter.Attributes{Connection: true, SourcePrincipal: spiffeURI(peer.Principal), MutualTLS: peer.Principal != "", UpstreamAddress: upstream}
	if peer.IP.IsValid() {
		a.SourceAddress = peer.IP.String()
	}
	if peer.DestinationIP.IsValid() {
		a.DestinationAddress, a.DestinationPort = peer.DestinationIP.String(), int(peer.DestinationPort)
	} else if ap, err := netip.ParseAddrPort(addrString(c.LocalAddr())); err == nil {
		a.DestinationAddress, a.DestinationPort = ap.Addr().String(), int(ap.Port())
	}
	return a
}

// countingConn counts the bytes of one side of a pipe.
type countingConn struct {
	io.ReadWriteCloser
	read, written atomic.Int64
	// lastActive is the time (UnixNano) of the last byte either way, kept
	// when closeWhenIdle watches.
	lastActive atomic.Int64
	watched    bool
}

func (c *countingConn) Read(b []byte) (int, error) {
	n, err := c.ReadWriteCloser.Read(b)
	c.read.Add(int64(n))
	if c.watched && n > 0 {
		c.lastActive.Store(time.Now().UnixNano())
	}
	return n, err
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.ReadWriteCloser.Write(b)
	c.written.Add(int64(n))
	if c.watched && n > 0 {
		c.lastActive.Store(time.Now().UnixNano())
	}
	return n, err
}

// closeWhenIdle calls end once no byte has gone through c, either way, for
// idle; the returned function stops watching. Call it before the copying
// starts. Every byte a relay moves passes through c, read from the client
// or written to it.
func (c *countingConn) closeWhenIdle(idle time.Duration, end func()) (stop func()) {
	c.watched = true
	c.lastActive.Store(time.Now().UnixNano())
	var t *time.Timer
	var mu sync.Mutex
	stopped := false
	var check func()
	check = func() {
		mu.Lock()
		defer mu.Unlock()
		if stopped {
			return
		}
		if quiet := time.Since(time.Unix(0, c.lastActive.Load())); quiet < idle {
			t = time.AfterFunc(idle-quiet, check)
			return
		}
		end()
	}
	t = time.AfterFunc(idle, check)
	return func() {
		mu.Lock()
		stopped = true
		t.Stop()
		mu.Unlock()
	}
}

// CloseWrite half-closes when the wrapped conn supports it.
func (c *countingConn) CloseWrite() error {
	if cw, ok := c.ReadWriteCloser.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return c.ReadWriteCloser.Close()
}

// pipe copies both ways until one side ends, then closes both.
func pipe(a, b io.ReadWriteCloser) {
	done := make(chan struct{}, 2)
	go copyHalf(a, b, done)
	go copyHalf(b, a, done)
	<-done
	// Give the other direction a moment to drain a half-closed stream.
	t := time.NewTimer(5 * time.Second)
	select {
	case <-done:
	case <-t.C:
	}
	t.Stop()
	a.Close()
	b.Close()
}

// copyHalf copies one direction of a pipe, then half-closes dst.
func copyHalf(dst io.WriteCloser, src io.Reader, done chan<- struct{}) {
	_, _ = io.Copy(dst, src)
	if cw, ok := dst.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
	done <- struct{}{}
}

// handleUpgrade hands a 101 response (WebSocket and other upgrades) over to
// a byte pipe between the client and the upstream connection.
func (p *Proxy) handleUpgrade(w *responseWriter, rec *record, resp *http.Response) {
	back, ok := resp.Body.(io.ReadWriteCloser)
	if !ok {
		resp.Body.Close()
		p.localReply(w, rec, false, http.StatusBadGateway, flagUpstreamReset, "upgrade_failed", "upstream upgrade response has no connection")
		return
	}
	defer back.Close()
	copyHeader(w.Header(), answerHeader(resp))
	conn, brw, err := http.NewResponseController(w).Hijack()
	if err != nil {
		p.localReply(w, rec, false, http.StatusBadGateway, "", "upgrade_failed", "cannot hijack the client connection")
		return
	}
	defer conn.Close()
	w.status = http.StatusSwitchingProtocols
	resp.Header = w.Header()
	resp.Body = nil
	if err := resp.Write(brw); err != nil {
		return
	}
	if err := brw.Flush(); err != nil {
		return
	}
	var client io.ReadWriteCloser = conn
	if brw.Reader.Buffered() > 0 {
		client = &peekedConn{Conn: conn, r: brw.Reader}
	}
	pipe(client, back)
}

type connKey struct{}

// withConn records the connection accepted by Serve in the request context.
func withConn(ctx context.Context, c net.Conn) context.Context {
	if tc, ok := c.(*tls.Conn); ok {
		c = tc.NetConn()
	}
	if pc, ok := c.(*peekedConn); ok {
		c = pc.Conn
	}
	return context.WithValue(ctx, connKey{}, c)
}

type misdirectedKey struct{}

// withMisdirected records ServerOptions.Misdirected, if set, in a
// connection's context.
func withMisdirected(ctx context.Context, check func(serverName, host string) bool) context.Context {
	if check == nil {
		return ctx
	}
	return context.WithValue(ctx, misdirectedKey{}, check)
}

// misdirected reports whether req, which came over TLS, is for a host the
// connection's server does not serve (ServerOptions.Misdirected).
func misdirected(req *http.Request) bool {
	if req.TLS == nil {
		return false
	}
	check, ok := req.Context().Value(misdirectedKey{}).(func(serverName, host string) bool)
	return ok && check(req.TLS.ServerName, req.Host)
}

// ConnFromContext returns the connection, as Serve's listener accepted it,
// that carries the request: a Peer hook uses it to find the client identity
// of an HBONE stream (whose RemoteAddr and LocalAddr are the client and the
// original destination).
func ConnFromContext(ctx context.Context) (net.Conn, bool) {
	c, ok := ctx.Value(connKey{}).(net.Conn)
	return c, ok
}

// chanListener is a net.Listener fed with already-detected connections.
type chanListener struct {
	addr  net.Addr
	conns chan net.Conn
	once  sync.Once
	done  chan struct{}
}

func (l *chanListener) offer(c net.Conn) bool {
	select {
	case l.conns <- c:
		return true
	case <-l.done:
		return false
	}
}

func (l *chanListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

func (l *chanListener) close()         { l.once.Do(func() { close(l.done) }) }
func (l *chanListener) Close() error   { l.close(); return nil }
func (l *chanListener) Addr() net.Addr { return l.addr }

// peekedConn is a conn whose first bytes sit in a bufio.Reader; once they
// are read, reads go to Conn itself (a rawsock.Conn's reads are not bufio's).
type peekedConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *peekedConn) Read(b []byte) (int, error) {
	if c.r.Buffered() == 0 {
		return c.Conn.Read(b)
	}
	return c.r.Read(b)
}

// CloseWrite half-closes when the underlying conn supports it.
func (c *peekedConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("close write not supported")
}

// responseWriter records the status and bytes written for telemetry.
type responseWriter struct {
	http.ResponseWriter
	status  int
	written int64
	aborted bool
}

func (w *responseWriter) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

func (w *responseWriter) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	n, err := w.ResponseWriter.Write(b)
	w.written += int64(n)
	return n, err
}

// Unwrap lets http.ResponseController reach Flush and Hijack.
func (w *responseWriter) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// abort ends the response mid-body so the client sees a broken stream, not
// a short success (as httputil.ReverseProxy does).
func (w *responseWriter) abort() {
	w.aborted = true
	panic(http.ErrAbortHandler)
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}
