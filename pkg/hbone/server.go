package hbone

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"

	"github.com/meshlet/meshlet/pkg/rawsock"
)

// Flow-control and framing defaults. A stream window of 4 MiB covers the
// bandwidth-delay product of a 10 Gbit/s link at 3 ms RTT, so one stream is not
// window-limited inside a cluster; the connection window of 16 MiB lets four
// such streams run flat out before they share. 256 KiB frames cut per-frame
// overhead on bulk transfers while bounding head-of-line delay between
// streams of one connection to ~0.2 ms at 10 Gbit/s. The client advertises
// the same windows and frame size.
const (
	DefaultStreamWindow         = 4 << 20
	DefaultConnWindow           = 16 << 20
	DefaultMaxFrameSize         = 256 << 10
	DefaultMaxConcurrentStreams = 1000
	defaultHandshakeTimeout     = 10 * time.Second
)

// ErrServerClosed is returned by Serve after Shutdown or Close.
var ErrServerClosed = errors.New("hbone: server closed")

// Request is one accepted CONNECT stream.
type Request struct {
	// Peer is the client's SPIFFE ID, verified against the trust bundle.
	Peer spiffeid.ID
	// Target is the CONNECT :authority, the address the client wants.
	Target netip.AddrPort
	// Source is the original client's address from the Forwarded header;
	// zero when the client sent none.
	Source netip.AddrPort
	// RemoteAddr is the TCP peer of the tunnel (the other node agent).
	RemoteAddr net.Addr
	// Stream carries the bytes. Reads end with io.EOF when the client half-
	// closes; CloseWrite sends the end of the stream (HTTP/2 END_STREAM), and
	// the handler returning sends it if CloseWrite did not. Relay does the
	// right thing for a TCP backend.
	Stream Stream
}

// Stream is a duplex byte stream with half-close.
type Stream interface {
	io.ReadWriteCloser
	// CloseWrite signals that no more bytes will be written.
	CloseWrite() error
}

// ServerOptions configure a Server.
type ServerOptions struct {
	// SVID is the server's certificate source. Required.
	SVID x509svid.Source
	// Bundle holds the roots that client SVIDs are verified against. Required.
	Bundle x509bundle.Source
	// TrustDomain is the trust domain clients come from (it or one of
	// its aliases). Required.
	TrustDomain spiffeid.TrustDomain
	// TrustDomainAliases, if set, returns the trust domains whose clients
	// pass as td's (Istio's trustDomainAliases; identity.BundleSource's
	// Aliases). It is asked at each handshake, so aliases can change
	// under a running server. Bundle must verify their SVIDs
	// (identity.BundleSource does, with the roots of the trust domain they
	// are aliases of). Nil: TrustDomain's clients only.
	TrustDomainAliases func(td spiffeid.TrustDomain) []spiffeid.TrustDomain
	// Authorize, if set, is asked before the stream is accepted; an error
	// refuses it with 403 and the error's text. Nil accepts every verified peer.
	Authorize func(ctx context.Context, r *Request) error
	// Handler serves an accepted stream. Required. Returning nil ends the
	// stream normally; returning an error resets it (RST_STREAM), so the
	// client never mistakes a failure for a clean end.
	Handler func(ctx context.Context, r *Request) error
	// MaxConcurrentStreams per connection; zero means 1000.
	MaxConcurrentStreams uint32
	// StreamWindow is the per-stream receive window in bytes; zero means 4 MiB.
	StreamWindow int32
	// ConnWindow is the per-connection receive window in bytes; zero means 16 MiB.
	ConnWindow int32
	// HandshakeTimeout bounds the TLS handshake; zero means 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout ends (GOAWAY) a connection that has had no stream for
	// this long; zero means 10 minutes, longer than the Dialer's 5, so a
	// pooled connection is normally closed by its client.
	IdleTimeout time.Duration
	// ReadIdleTimeout sends a health-check ping on a connection silent
	// this long, and PingTimeout closes it when the ping is not answered;
	// zero means 30s and 15s. A client that went away without a FIN (its
	// node died) holds nothing here past that.
	ReadIdleTimeout, PingTimeout time.Duration
	// Logger receives refusals; nil means slog.Default().
	Logger *slog.Logger
	// OnRefusedConn, if set, is told of each connection refused before
	// any stream, with one of the Refused* reasons and the error in
	// words (a node agent counts them as it counts refused streams), and
	// of each connection Reverify closed, with RefusedUntrusted. It runs
	// on the connection's goroutine, or on Reverify's.
	OnRefusedConn func(remote net.Addr, reason, detail string)
}

// Server accepts HBONE connections.
type Server struct {
	opts   ServerOptions
	tlsCfg *tls.Config
	// authorize is the handshake's check of the client's identity,
	// asked again by Reverify.
	authorize tlsconfig.Authorizer
	// reverifies counts Reverify calls: a connection whose handshake
	// began before one, and which it may have missed, checks itself.
	reverifies atomic.Uint64

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]*conn // nil while the TLS handshake runs
	wg        sync.WaitGroup
}

// NewServer checks opts and returns a Server.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.SVID == nil || opts.Bundle == nil || opts.TrustDomain.IsZero() || opts.Handler == nil {
		return nil, errors.New("new hbone server: SVID, Bundle, TrustDomain and Handler are required")
	}
	if opts.MaxConcurrentStreams == 0 {
		opts.MaxConcurrentStreams = DefaultMaxConcurrentStreams
	}
	if opts.StreamWindow <= 0 {
		opts.StreamWindow = DefaultStreamWindow
	}
	if opts.ConnWindow <= 0 {
		opts.ConnWindow = DefaultConnWindow
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	keepaliveDefaults(&opts.IdleTimeout, &opts.ReadIdleTimeout, &opts.PingTimeout, 10*time.Minute)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	authorize := authorizeMemberOf(opts.TrustDomain, opts.TrustDomainAliases)
	cfg := tlsconfig.MTLSServerConfig(opts.SVID, opts.Bundle, authorize)
	// The client's certificate is verified (or its absence refused) by
	// go-spiffe's verifier, whose errors are marked so that a refusal
	// says whether the peer or the handshake failed. crypto/tls would
	// refuse a missing certificate itself, before any verifier, under
	// RequireAnyClientCert: the verifier refuses it here instead.
	verify := cfg.VerifyPeerCertificate
	cfg.ClientAuth = tls.RequestClientCert
	cfg.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if len(raw) == 0 {
			return &peerError{errors.New("no client certificate")}
		}
		if err := verify(raw, chains); err != nil {
			return &peerError{err}
		}
		return nil
	}
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{http2.NextProtoTLS}
	return &Server{
		opts:      opts,
		tlsCfg:    cfg,
		authorize: authorize,
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]*conn),
	}, nil
}

// Reasons a connection is refused before any stream (OnRefusedConn).
const (
	// RefusedPeer: the client presented no certificate, or one that
	// does not verify against the bundle or names a trust domain the
	// server does not accept.
	RefusedPeer = "peer_unverified"
	// RefusedHandshake: the TLS handshake failed otherwise (version,
	// ALPN, timeout, the client went away).
	RefusedHandshake = "handshake_failed"
	// RefusedProtocol: TLS went through but the client speaks no HTTP/2
	// (no h2 negotiated, no connection preface).
	RefusedProtocol = "not_hbone"
	// RefusedUntrusted: not refused before a stream but closed by
	// Reverify: the client verified at the handshake, and no longer does
	// under the trust of now.
	RefusedUntrusted = "peer_untrusted"
)

// peerError marks a handshake refused for the client's certificate.
type peerError struct{ err error }

func (e *peerError) Error() string { return "client certificate refused: " + e.err.Error() }
func (e *peerError) Unwrap() error { return e.err }

// refuseConn logs and reports a connection refused before any stream.
func (s *Server) refuseConn(remote net.Addr, reason string, err error) {
	s.opts.Logger.Debug("hbone connection refused", "remote", remote, "reason", reason, "err", err)
	if s.opts.OnRefusedConn != nil {
		s.opts.OnRefusedConn(remote, reason, err.Error())
	}
}

// authorizeMemberOf accepts a peer of td or, when aliases is set, of one of
// td's aliases at the time of the handshake.
func authorizeMemberOf(td spiffeid.TrustDomain, aliases func(spiffeid.TrustDomain) []spiffeid.TrustDomain) tlsconfig.Authorizer {
	own := tlsconfig.AuthorizeMemberOf(td)
	if aliases == nil {
		return own
	}
	return func(id spiffeid.ID, chains [][]*x509.Certificate) error {
		err := own(id, chains)
		if err == nil {
			return nil
		}
		for _, a := range aliases(td) {
			if tlsconfig.AuthorizeMemberOf(a)(id, chains) == nil {
				return nil
			}
		}
		return err
	}
}

// Serve accepts connections on ln until Shutdown or Close, then returns
// ErrServerClosed. It closes ln when it returns.
func (s *Server) Serve(ln net.Listener) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		ln.Close()
		return ErrServerClosed
	}
	s.listeners[ln] = struct{}{}
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.listeners, ln)
		s.mu.Unlock()
		ln.Close()
	}()
	var delay time.Duration
	for {
		c, err := ln.Accept()
		if err != nil {
			s.mu.Lock()
			closed := s.closed
			s.mu.Unlock()
			if closed {
				return ErrServerClosed
			}
			var ne net.Error
			if errors.As(err, &ne) && ne.Timeout() {
				delay = min(max(2*delay, 5*time.Millisecond), time.Second)
				time.Sleep(delay)
				continue
			}
			return fmt.Errorf("accept: %w", err)
		}
		delay = 0
		if !s.track(c) {
			c.Close()
			return ErrServerClosed
		}
		go s.serveConn(c)
	}
}

// ServeConn serves one connection accepted elsewhere, on a goroutine of its
// own, as Serve serves those it accepts (the node agent accepts for all its
// pods on one poller rather than a goroutine per listener). After Shutdown
// or Close it closes c instead.
func (s *Server) ServeConn(c net.Conn) {
	if !s.track(c) {
		c.Close()
		return
	}
	go s.serveConn(c)
}

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = nil
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// serveConn runs the TLS handshake and the HTTP/2 connection of one client;
// its goroutine is the connection's reader.
func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	defer raw.Close()
	reverifies := s.reverifies.Load()
	rs := rawsock.Wrap(raw)
	tc := tls.Server(rs, s.tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	verifiedAt := time.Now()
	if err != nil {
		reason := RefusedHandshake
		if pe := (*peerError)(nil); errors.As(err, &pe) {
			reason = RefusedPeer
		}
		s.refuseConn(raw.RemoteAddr(), reason, err)
		return
	}
	cs := tc.ConnectionState()
	if cs.NegotiatedProtocol != http2.NextProtoTLS {
		s.refuseConn(raw.RemoteAddr(), RefusedProtocol, fmt.Errorf("the client negotiated %q, not h2", cs.NegotiatedProtocol))
		return
	}
	trust := newPeerTrust(cs, verifiedAt)
	if trust == nil {
		return
	}
	peer := trust.id
	remote := raw.RemoteAddr()
	c := newConn(tc, connConfig{
		trust:        trust,
		gather:       gatherOf(rs),
		server:       true,
		streamWindow: s.opts.StreamWindow,
		connWindow:   s.opts.ConnWindow,
		maxStreams:   s.opts.MaxConcurrentStreams,
		logger:       s.opts.Logger,
		accept: func(st *stream, h *requestHeaders) {
			go s.serveStream(st, h, peer, remote)
		},
	})
	// The client's preface must follow the handshake promptly.
	tc.SetReadDeadline(time.Now().Add(s.opts.HandshakeTimeout))
	if err := c.start(); err != nil {
		c.close(err)
		return
	}
	// Registered after our SETTINGS went out, so that Shutdown's GOAWAY
	// never precedes them.
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.close(nil)
		return
	}
	s.conns[raw] = c
	s.mu.Unlock()
	if err := c.readPreface(); err != nil {
		if !trust.wasRevoked() { // Reverify reported it
			s.refuseConn(remote, RefusedProtocol, fmt.Errorf("no HTTP/2 connection preface: %w", err))
		}
		c.close(err)
		return
	}
	if s.reverifies.Load() != reverifies {
		// The handshake may have verified the trust of before a
		// Reverify that did not see the connection yet.
		s.reverifyConns([]*conn{c})
	}
	tc.SetReadDeadline(time.Time{})
	c.startKeepalive(s.opts.ReadIdleTimeout, s.opts.PingTimeout, s.opts.IdleTimeout)
	c.readLoop()
}

// serveStream checks one CONNECT request, accepts it and runs the handler.
func (s *Server) serveStream(st *stream, h *requestHeaders, peer spiffeid.ID, remote net.Addr) {
	err := s.acceptStream(st, h, peer, remote)
	st.finish(err)
}

// acceptStream answers the request and runs the handler; the error resets
// the stream.
func (s *Server) acceptStream(st *stream, h *requestHeaders, peer spiffeid.ID, remote net.Addr) (err error) {
	defer func() {
		if p := recover(); p != nil {
			s.opts.Logger.Error("hbone handler panicked", "peer", peer, "panic", p)
			err = fmt.Errorf("handler panic: %v", p)
		}
	}()
	switch {
	case h.truncated:
		return st.refuse(http.StatusRequestHeaderFieldsTooLarge, "hbone: request headers too large")
	case h.method != http.MethodConnect:
		return st.refuse(http.StatusMethodNotAllowed, "hbone: only CONNECT is served")
	case h.protocol != "" || h.scheme != "" || h.path != "":
		return st.refuse(http.StatusBadRequest, "hbone: extended CONNECT is not served")
	}
	target, err := netip.ParseAddrPort(h.authority)
	if err != nil || target.Port() == 0 || target.Addr().IsUnspecified() {
		return st.refuse(http.StatusBadRequest, fmt.Sprintf("hbone: CONNECT authority %q is not ip:port", h.authority))
	}
	req := &Request{Peer: peer, RemoteAddr: remote, Target: netip.AddrPortFrom(target.Addr().Unmap(), target.Port())}
	if h.forwarded != "" {
		src, err := parseForwarded(h.forwarded)
		if err != nil {
			return st.refuse(http.StatusBadRequest, "hbone: "+err.Error())
		}
		req.Source = src
	}
	if s.opts.Authorize != nil {
		if err := s.opts.Authorize(st.ctx, req); err != nil {
			s.opts.Logger.Info("hbone stream refused", "peer", peer, "target", target, "reason", err)
			return st.refuse(http.StatusForbidden, "hbone: "+err.Error())
		}
	}
	if err := st.respond(http.StatusOK, ""); err != nil {
		return err
	}
	req.Stream = &serverStream{s: st}
	if err := s.opts.Handler(st.ctx, req); err != nil {
		s.opts.Logger.Debug("hbone stream reset", "peer", peer, "target", target, "err", err)
		return err
	}
	return nil
}

// Reverify verifies every established connection's client again, as its
// handshake did (the chain against Bundle's roots of now, and the trust
// domain or one of its aliases of now), and closes those that no longer
// pass: GOAWAY, then the connection and the streams on it end at once
// (conn.refuseStreams says why without a grace). Each closed connection is
// logged and reported to OnRefusedConn (RefusedUntrusted) once; Reverify
// returns how many it closed, when they are closed. Those that pass are
// left as they are. Call it when the trust changed (identity.BundleSource's
// Watch): it is safe beside traffic, handshakes, Shutdown and other
// Reverify calls, and a connection whose peer's roots did not change costs
// it no signature check.
func (s *Server) Reverify() int {
	s.reverifies.Add(1)
	s.mu.Lock()
	conns := make([]*conn, 0, len(s.conns))
	for _, c := range s.conns {
		if c != nil { // nil: in the handshake, which checks itself after
			conns = append(conns, c)
		}
	}
	s.mu.Unlock()
	return s.reverifyConns(conns)
}

func (s *Server) reverifyConns(conns []*conn) int {
	closed := reverifyConns(conns, func(c *conn) error {
		return c.cfg.trust.recheck(s.opts.Bundle, s.authorize)
	}, s.opts.Logger)
	if s.opts.OnRefusedConn != nil {
		for _, u := range closed {
			s.opts.OnRefusedConn(u.remote, RefusedUntrusted, fmt.Sprintf("peer %s no longer trusted: %v", u.peer, u.err))
		}
	}
	return len(closed)
}

// Shutdown stops accepting, tells every client to open no new stream
// (GOAWAY), waits for open streams to finish or ctx to end, then closes
// everything.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	s.closed = true
	var errs []error
	for ln := range s.listeners {
		errs = append(errs, ignoreClosed(ln.Close()))
	}
	for _, c := range s.conns {
		// nil: still in the handshake; serveConn sees closed and stops.
		if c != nil {
			c.shutdown()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		errs = append(errs, s.Close(), ctx.Err())
	}
	return errors.Join(errs...)
}

// Close stops accepting and closes every connection at once.
func (s *Server) Close() error {
	s.mu.Lock()
	s.closed = true
	var errs []error
	for ln := range s.listeners {
		errs = append(errs, ignoreClosed(ln.Close()))
	}
	for c := range s.conns {
		errs = append(errs, ignoreClosed(c.Close()))
	}
	s.mu.Unlock()
	s.wg.Wait()
	return errors.Join(errs...)
}

func ignoreClosed(err error) error {
	if errors.Is(err, net.ErrClosed) {
		return nil
	}
	return err
}

// refuse answers with status and a text body, as http.Error does, and ends
// the stream. A refusal is a clean end, not an error.
func (st *stream) refuse(status int, msg string) error {
	if err := st.respond(status, msg+"\n"); err != nil {
		return err
	}
	return st.closeWrite()
}

// respond sends the response HEADERS and, if body is not empty, a DATA
// frame with it.
func (st *stream) respond(status int, body string) error {
	c := st.c
	fields := []hpack.HeaderField{{Name: ":status", Value: strconv.Itoa(status)}}
	if body != "" {
		fields = append(fields,
			hpack.HeaderField{Name: "content-type", Value: "text/plain; charset=utf-8"},
			hpack.HeaderField{Name: "x-content-type-options", Value: "nosniff"},
		)
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	err := st.writeErrLocked()
	maxFrame := c.peerMaxFrame
	c.mu.Unlock()
	if err != nil {
		return err
	}
	err = c.writeHeaders(st.id, fields, false, maxFrame)
	// The body is short and the peer's window at least 64 KiB: it needs no
	// flow control beyond the accounting.
	if err == nil && body != "" {
		c.mu.Lock()
		st.sendWindow -= int32(len(body))
		c.sendWindow -= int32(len(body))
		c.mu.Unlock()
		err = c.fr.WriteData(st.id, false, []byte(body))
	}
	if err == nil {
		err = c.writeCtlLocked(true)
	}
	if err != nil {
		c.close(err)
		return fmt.Errorf("send response: %w", err)
	}
	return nil
}

// finish ends a server stream after its handler returned: a failure resets
// it (RST_STREAM INTERNAL_ERROR), so the client never takes it for a clean
// end; success sends END_STREAM if CloseWrite did not, then, if the client
// has not ended its side, RST_STREAM NO_ERROR to tell it to stop sending
// (RFC 9113 §8.1).
func (st *stream) finish(handlerErr error) {
	c := st.c
	c.wmu.Lock()
	c.mu.Lock()
	sendEnd := false
	if !c.closed && st.resetErr == nil {
		if handlerErr != nil {
			c.resetLocked(st, http2.ErrCodeInternal)
		} else {
			sendEnd = !st.sentEnd
			st.sentEnd = true
			if !st.recvEnd {
				c.resetLocked(st, http2.ErrCodeNo)
			}
		}
	}
	st.closed = true
	st.dropBufferLocked()
	st.readCond.Broadcast()
	st.writeCond.Broadcast()
	c.removeLocked(st)
	c.mu.Unlock()
	var err error
	if sendEnd {
		err = c.fr.WriteData(st.id, true, nil)
	}
	if err == nil {
		err = c.writeCtlLocked(true)
	}
	c.wmu.Unlock()
	st.cancel()
	if err != nil {
		c.close(err)
	}
}

// serverStream is the server end of one CONNECT stream.
type serverStream struct{ s *stream }

func (s *serverStream) Read(p []byte) (int, error) { return s.s.read(context.Background(), p) }

// WriteTo writes what the client sends to w until it ends the stream, as
// (*Conn).WriteTo does.
func (s *serverStream) WriteTo(w io.Writer) (int64, error) { return s.s.writeTo(w) }

func (s *serverStream) Write(p []byte) (int, error) { return s.s.write(p) }

// CloseWrite sends END_STREAM: the client reads io.EOF.
func (s *serverStream) CloseWrite() error { return s.s.closeWrite() }

// Close stops reads and writes; the handler should return after it, which
// ends the stream on the wire.
func (s *serverStream) Close() error {
	st := s.s
	c := st.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if !st.closed {
		st.closed = true
		st.dropBufferLocked()
		st.readCond.Broadcast()
		st.writeCond.Broadcast()
	}
	return nil
}
