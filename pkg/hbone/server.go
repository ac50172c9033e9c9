//lint:file-ignore SA1019 the brief pins golang.org/x/net/http2 (ServeConn on an accepted TLS conn, NewClientConn for our own pool); moving to net/http's HTTP2Config/ClientConn is a follow-up.

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// Flow-control and framing defaults. A stream window of 4 MiB covers the
// bandwidth-delay product of a 10 Gbit/s link at 3 ms RTT, so one stream is not
// window-limited inside a cluster; the connection window of 16 MiB lets four
// such streams run flat out before they share. 256 KiB frames cut per-frame
// overhead on bulk transfers while bounding head-of-line delay between
// streams of one connection to ~0.2 ms at 10 Gbit/s. The client side uses
// x/net's transport defaults, which are larger (4 MiB per stream, 1 GiB per
// connection).
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
	// closes; CloseWrite stops writing, and the end of the stream (HTTP/2
	// END_STREAM) is sent when the handler returns. Relay does the right
	// thing for a TCP backend.
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
	// TrustDomain is the only trust domain clients may come from. Required.
	TrustDomain spiffeid.TrustDomain
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
	// Logger receives refusals; nil means slog.Default().
	Logger *slog.Logger
}

// Server accepts HBONE connections.
type Server struct {
	opts   ServerOptions
	tlsCfg *tls.Config
	h1     *http.Server // carries the graceful-shutdown hook of h2
	h2     *http2.Server

	mu        sync.Mutex
	closed    bool
	listeners map[net.Listener]struct{}
	conns     map[net.Conn]struct{}
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
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	cfg := tlsconfig.MTLSServerConfig(opts.SVID, opts.Bundle, tlsconfig.AuthorizeMemberOf(opts.TrustDomain))
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{http2.NextProtoTLS}
	s := &Server{
		opts:   opts,
		tlsCfg: cfg,
		h1:     &http.Server{},
		h2: &http2.Server{
			MaxConcurrentStreams:         opts.MaxConcurrentStreams,
			MaxUploadBufferPerStream:     opts.StreamWindow,
			MaxUploadBufferPerConnection: opts.ConnWindow,
			MaxReadFrameSize:             DefaultMaxFrameSize,
		},
		listeners: make(map[net.Listener]struct{}),
		conns:     make(map[net.Conn]struct{}),
	}
	if err := http2.ConfigureServer(s.h1, s.h2); err != nil {
		return nil, fmt.Errorf("configure http2: %w", err)
	}
	return s, nil
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

func (s *Server) track(c net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return false
	}
	s.conns[c] = struct{}{}
	s.wg.Add(1)
	return true
}

func (s *Server) untrack(c net.Conn) {
	s.mu.Lock()
	delete(s.conns, c)
	s.mu.Unlock()
	s.wg.Done()
}

// serveConn runs the TLS handshake and the HTTP/2 connection of one client.
func (s *Server) serveConn(raw net.Conn) {
	defer s.untrack(raw)
	defer raw.Close()
	tc := tls.Server(raw, s.tlsCfg)
	ctx, cancel := context.WithTimeout(context.Background(), s.opts.HandshakeTimeout)
	err := tc.HandshakeContext(ctx)
	cancel()
	if err != nil {
		s.opts.Logger.Debug("hbone handshake refused", "remote", raw.RemoteAddr(), "err", err)
		return
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != http2.NextProtoTLS {
		s.opts.Logger.Debug("hbone client did not negotiate h2", "remote", raw.RemoteAddr(), "alpn", p)
		return
	}
	// The verified peer travels in the connection's context: net/http leaves
	// Request.TLS nil for CONNECT, which has no :scheme.
	certs := tc.ConnectionState().PeerCertificates
	if len(certs) == 0 {
		return
	}
	peer, err := x509svid.IDFromCert(certs[0])
	if err != nil {
		return
	}
	base := context.WithValue(context.Background(), peerKey{}, peerInfo{id: peer, addr: raw.RemoteAddr()})
	s.h2.ServeConn(tc, &http2.ServeConnOpts{Context: base, BaseConfig: s.h1, Handler: http.HandlerFunc(s.serveStream)})
}

type peerKey struct{}

type peerInfo struct {
	id   spiffeid.ID
	addr net.Addr
}

// serveStream checks one CONNECT request, accepts it and runs the handler.
func (s *Server) serveStream(w http.ResponseWriter, r *http.Request) {
	if r.Method != http.MethodConnect {
		http.Error(w, "hbone: only CONNECT is served", http.StatusMethodNotAllowed)
		return
	}
	target, err := netip.ParseAddrPort(r.Host)
	if err != nil || target.Port() == 0 || target.Addr().IsUnspecified() {
		http.Error(w, fmt.Sprintf("hbone: CONNECT authority %q is not ip:port", r.Host), http.StatusBadRequest)
		return
	}
	req := &Request{Target: netip.AddrPortFrom(target.Addr().Unmap(), target.Port())}
	if fwd := r.Header.Get(ForwardedHeader); fwd != "" {
		src, err := parseForwarded(fwd)
		if err != nil {
			http.Error(w, "hbone: "+err.Error(), http.StatusBadRequest)
			return
		}
		req.Source = src
	}
	pi, ok := r.Context().Value(peerKey{}).(peerInfo)
	if !ok {
		http.Error(w, "hbone: no verified client identity", http.StatusForbidden)
		return
	}
	peer := pi.id
	req.Peer, req.RemoteAddr = pi.id, pi.addr
	if s.opts.Authorize != nil {
		if err := s.opts.Authorize(r.Context(), req); err != nil {
			s.opts.Logger.Info("hbone stream refused", "peer", peer, "target", target, "reason", err)
			http.Error(w, "hbone: "+err.Error(), http.StatusForbidden)
			return
		}
	}
	rc := http.NewResponseController(w)
	w.WriteHeader(http.StatusOK)
	if err := rc.Flush(); err != nil {
		return
	}
	st := &serverStream{body: r.Body, w: w, rc: rc}
	req.Stream = st
	if err := s.opts.Handler(r.Context(), req); err != nil {
		s.opts.Logger.Debug("hbone stream reset", "peer", peer, "target", target, "err", err)
		// Resets the stream (RST_STREAM INTERNAL_ERROR) instead of ending it
		// cleanly, so the client sees the failure.
		panic(http.ErrAbortHandler)
	}
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
	s.mu.Unlock()
	// Runs http2's graceful shutdown (GOAWAY) on every served connection.
	errs = append(errs, s.h1.Shutdown(ctx))
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

// serverStream is the server end of one CONNECT stream.
type serverStream struct {
	body io.ReadCloser
	w    http.ResponseWriter
	rc   *http.ResponseController

	mu          sync.Mutex
	writeClosed bool
}

func (s *serverStream) Read(p []byte) (int, error) { return s.body.Read(p) }

func (s *serverStream) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.writeClosed {
		return 0, fmt.Errorf("write hbone stream: %w", net.ErrClosed)
	}
	n, err := s.w.Write(p)
	if err != nil {
		return n, fmt.Errorf("write hbone stream: %w", err)
	}
	if err := s.rc.Flush(); err != nil {
		return n, fmt.Errorf("flush hbone stream: %w", err)
	}
	return n, nil
}

// CloseWrite stops writes. HTTP/2 lets a server end its side of a stream only
// by finishing the response, which net/http does when the handler returns:
// END_STREAM goes out then.
func (s *serverStream) CloseWrite() error {
	s.mu.Lock()
	s.writeClosed = true
	s.mu.Unlock()
	return nil
}

// Close stops writes and reads; the handler should return after it.
func (s *serverStream) Close() error {
	s.CloseWrite()
	return s.body.Close()
}
