//lint:file-ignore SA1019 the brief pins golang.org/x/net/http2 (ServeConn on an accepted TLS conn, NewClientConn for our own pool); moving to net/http's HTTP2Config/ClientConn is a follow-up.

package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// Errors a caller branches on.
var (
	// ErrForbidden: the server refused the stream by policy (403).
	ErrForbidden = errors.New("hbone: stream refused by policy")
	// ErrBadTarget: the server refused the CONNECT target as malformed (400).
	ErrBadTarget = errors.New("hbone: CONNECT target refused as malformed")
	// ErrDialerClosed: Dial after Close or Shutdown.
	ErrDialerClosed = errors.New("hbone: dialer closed")
)

// DialerOptions configure a Dialer.
type DialerOptions struct {
	// Bundle holds the roots that server SVIDs are verified against. Required.
	Bundle x509bundle.Source
	// DialContext opens the TCP connection to the HBONE server, e.g. from
	// inside a pod's network namespace. Nil means a net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// HandshakeTimeout bounds dialling plus the TLS handshake; zero means 10s.
	HandshakeTimeout time.Duration
	// IdleTimeout closes a pooled connection with no stream for this long;
	// zero means 5 minutes.
	IdleTimeout time.Duration
	// ReadIdleTimeout sends a health-check ping on a connection silent this
	// long, and PingTimeout closes it when the ping is not answered; zero
	// means 30s and 15s.
	ReadIdleTimeout, PingTimeout time.Duration
}

// Target says where one stream goes.
type Target struct {
	// Local is the SVID the client presents (the source workload's). Required.
	Local x509svid.Source
	// Proxy is the HBONE server's address (the destination pod's or its
	// waypoint's 15008). Required.
	Proxy netip.AddrPort
	// PeerID is the SPIFFE ID the server must present. Required.
	PeerID spiffeid.ID
	// Addr is the CONNECT target (:authority), the final destination. Required.
	Addr netip.AddrPort
	// Source is the original client address, sent in the Forwarded header;
	// zero sends none.
	Source netip.AddrPort
}

// poolKey: connections are shared only between streams of the same local
// identity, to the same server, expecting the same peer identity.
type poolKey struct {
	local spiffeid.ID
	proxy netip.AddrPort
	peer  spiffeid.ID
}

type poolEntry struct {
	mu    sync.Mutex // held while picking or dialling, so concurrent Dials share one new connection
	conns []*http2.ClientConn
}

// Dialer opens HBONE streams over pooled HTTP/2 connections.
type Dialer struct {
	opts DialerOptions
	tr   *http2.Transport

	mu     sync.Mutex
	closed bool
	pool   map[poolKey]*poolEntry
}

// NewDialer checks opts and returns a Dialer.
func NewDialer(opts DialerOptions) (*Dialer, error) {
	if opts.Bundle == nil {
		return nil, errors.New("new hbone dialer: Bundle is required")
	}
	if opts.DialContext == nil {
		opts.DialContext = (&net.Dialer{}).DialContext
	}
	if opts.HandshakeTimeout <= 0 {
		opts.HandshakeTimeout = defaultHandshakeTimeout
	}
	if opts.IdleTimeout <= 0 {
		opts.IdleTimeout = 5 * time.Minute
	}
	if opts.ReadIdleTimeout <= 0 {
		opts.ReadIdleTimeout = 30 * time.Second
	}
	if opts.PingTimeout <= 0 {
		opts.PingTimeout = 15 * time.Second
	}
	return &Dialer{
		opts: opts,
		tr: &http2.Transport{
			IdleConnTimeout:  opts.IdleTimeout,
			ReadIdleTimeout:  opts.ReadIdleTimeout,
			PingTimeout:      opts.PingTimeout,
			MaxReadFrameSize: DefaultMaxFrameSize,
		},
		pool: make(map[poolKey]*poolEntry),
	}, nil
}

// Dial opens one CONNECT stream to t.Addr through the HBONE server at
// t.Proxy, reusing a pooled connection when one can take another stream.
// ctx bounds dialling and the wait for the server's answer, not the stream.
func (d *Dialer) Dial(ctx context.Context, t Target) (*Conn, error) {
	if t.Local == nil || !t.Proxy.IsValid() || t.PeerID.IsZero() || !t.Addr.IsValid() {
		return nil, errors.New("hbone dial: Local, Proxy, PeerID and Addr are required")
	}
	svid, err := t.Local.GetX509SVID()
	if err != nil {
		return nil, fmt.Errorf("hbone dial: local SVID: %w", err)
	}
	key := poolKey{local: svid.ID, proxy: t.Proxy, peer: t.PeerID}
	var (
		resp   *http.Response
		pw     *io.PipeWriter
		cancel context.CancelFunc
	)
	// A pooled connection may have been told to go away (server drain) or
	// died since its last use; such a stream never reached the target, so it
	// is retried once on a fresh connection.
	for attempt := 0; ; attempt++ {
		cc, fresh, err := d.clientConn(ctx, key, t.Local)
		if err != nil {
			return nil, err
		}
		resp, pw, cancel, err = connect(ctx, cc, t)
		if err == nil {
			break
		}
		if fresh || attempt > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("hbone CONNECT %s via %s: %w", t.Addr, t.Proxy, err)
		}
	}
	if resp.StatusCode != http.StatusOK {
		msg, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
		resp.Body.Close()
		cancel()
		pw.Close()
		var kind error
		switch resp.StatusCode {
		case http.StatusForbidden:
			kind = ErrForbidden
		case http.StatusBadRequest:
			kind = ErrBadTarget
		default:
			kind = errors.New("hbone: stream refused")
		}
		return nil, fmt.Errorf("hbone CONNECT %s via %s: %d %q: %w", t.Addr, t.Proxy, resp.StatusCode, string(msg), kind)
	}
	return &Conn{body: resp.Body, pw: pw, cancel: cancel, local: svid.ID, peer: t.PeerID}, nil
}

// connect sends the CONNECT request on cc and waits for the response
// headers; ctx bounds only that wait.
func connect(ctx context.Context, cc *http2.ClientConn, t Target) (*http.Response, *io.PipeWriter, context.CancelFunc, error) {
	pr, pw := io.Pipe()
	streamCtx, cancel := context.WithCancel(context.Background())
	req := &http.Request{
		Method:        http.MethodConnect,
		URL:           &url.URL{Host: t.Addr.String()},
		Host:          t.Addr.String(),
		Header:        make(http.Header),
		Body:          pr,
		ContentLength: -1,
	}
	if t.Source.IsValid() {
		req.Header.Set(ForwardedHeader, formatForwarded(t.Source))
	}
	req = req.WithContext(streamCtx)
	stop := context.AfterFunc(ctx, cancel)
	resp, err := cc.RoundTrip(req)
	stopped := stop()
	if err == nil && !stopped {
		// ctx ended while the response arrived: honour it.
		resp.Body.Close()
		err = ctx.Err()
	}
	if err != nil {
		cancel()
		pw.Close()
		return nil, nil, nil, err
	}
	return resp, pw, cancel, nil
}

// clientConn returns a pooled connection that has reserved room for one
// stream, dialling a new one when none has.
func (d *Dialer) clientConn(ctx context.Context, key poolKey, local x509svid.Source) (cc *http2.ClientConn, fresh bool, err error) {
	d.mu.Lock()
	if d.closed {
		d.mu.Unlock()
		return nil, false, ErrDialerClosed
	}
	e := d.pool[key]
	if e == nil {
		e = &poolEntry{}
		d.pool[key] = e
	}
	d.mu.Unlock()

	e.mu.Lock()
	defer e.mu.Unlock()
	live := e.conns[:0]
	var picked *http2.ClientConn
	for _, cc := range e.conns {
		st := cc.State()
		if st.Closed || st.Closing {
			continue
		}
		live = append(live, cc)
		if picked == nil && cc.ReserveNewRequest() {
			picked = cc
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
	if picked != nil {
		return picked, false, nil
	}
	cc, err = d.dial(ctx, key, local)
	if err != nil {
		return nil, false, err
	}
	if !cc.ReserveNewRequest() {
		cc.Close()
		return nil, false, fmt.Errorf("hbone dial %s: new connection takes no stream", key.proxy)
	}
	d.mu.Lock()
	closed := d.closed
	d.mu.Unlock()
	if closed {
		cc.Close()
		return nil, false, ErrDialerClosed
	}
	e.conns = append(e.conns, cc)
	return cc, true, nil
}

// dial opens TCP, runs the TLS 1.3 handshake verifying the server's SVID is
// key.peer, and starts HTTP/2.
func (d *Dialer) dial(ctx context.Context, key poolKey, local x509svid.Source) (*http2.ClientConn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.HandshakeTimeout)
	defer cancel()
	raw, err := d.opts.DialContext(ctx, "tcp", key.proxy.String())
	if err != nil {
		return nil, fmt.Errorf("hbone dial %s: %w", key.proxy, err)
	}
	cfg := tlsconfig.MTLSClientConfig(local, d.opts.Bundle, tlsconfig.AuthorizeID(key.peer))
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{http2.NextProtoTLS}
	tc := tls.Client(raw, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone handshake with %s (want %s): %w", key.proxy, key.peer, err)
	}
	if p := tc.ConnectionState().NegotiatedProtocol; p != http2.NextProtoTLS {
		tc.Close()
		return nil, fmt.Errorf("hbone handshake with %s: server negotiated %q, want h2", key.proxy, p)
	}
	cc, err := d.tr.NewClientConn(tc)
	if err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone start http2 with %s: %w", key.proxy, err)
	}
	return cc, nil
}

// conns returns every pooled connection and empties the pool.
func (d *Dialer) drain() []*http2.ClientConn {
	d.mu.Lock()
	d.closed = true
	entries := make([]*poolEntry, 0, len(d.pool))
	for _, e := range d.pool {
		entries = append(entries, e)
	}
	d.pool = map[poolKey]*poolEntry{}
	d.mu.Unlock()
	var out []*http2.ClientConn
	for _, e := range entries {
		e.mu.Lock()
		out = append(out, e.conns...)
		e.conns = nil
		e.mu.Unlock()
	}
	return out
}

// Shutdown refuses new Dials and closes every pooled connection once its
// open streams end, or at once when ctx ends.
func (d *Dialer) Shutdown(ctx context.Context) error {
	conns := d.drain()
	errs := make([]error, len(conns))
	var wg sync.WaitGroup
	for i, cc := range conns {
		wg.Add(1)
		go func() {
			defer wg.Done()
			errs[i] = cc.Shutdown(ctx)
			if errs[i] != nil {
				errs[i] = errors.Join(errs[i], cc.Close())
			}
		}()
	}
	wg.Wait()
	return errors.Join(errs...)
}

// Close refuses new Dials and closes every pooled connection at once,
// resetting open streams.
func (d *Dialer) Close() error {
	var errs []error
	for _, cc := range d.drain() {
		errs = append(errs, cc.Close())
	}
	return errors.Join(errs...)
}

// PooledConns returns how many HTTP/2 connections the pool holds, for tests
// and metrics.
func (d *Dialer) PooledConns() int {
	d.mu.Lock()
	entries := make([]*poolEntry, 0, len(d.pool))
	for _, e := range d.pool {
		entries = append(entries, e)
	}
	d.mu.Unlock()
	n := 0
	for _, e := range entries {
		e.mu.Lock()
		n += len(e.conns)
		e.mu.Unlock()
	}
	return n
}

// Conn is the client end of one HBONE stream.
type Conn struct {
	body   io.ReadCloser
	pw     *io.PipeWriter
	cancel context.CancelFunc
	local  spiffeid.ID
	peer   spiffeid.ID
}

// Read reads bytes the server sent; io.EOF when it ended the stream.
func (c *Conn) Read(p []byte) (int, error) { return c.body.Read(p) }

// Write sends bytes to the server.
func (c *Conn) Write(p []byte) (int, error) { return c.pw.Write(p) }

// CloseWrite ends the client's side of the stream (HTTP/2 END_STREAM); the
// server reads io.EOF, and reads here continue until the server ends.
func (c *Conn) CloseWrite() error { return c.pw.Close() }

// Close ends the stream in both directions (RST_STREAM if not finished).
func (c *Conn) Close() error {
	c.pw.CloseWithError(net.ErrClosed)
	err := c.body.Close()
	c.cancel()
	return err
}

// PeerID returns the server's verified SPIFFE ID.
func (c *Conn) PeerID() spiffeid.ID { return c.peer }

// LocalID returns the SPIFFE ID the client presented.
func (c *Conn) LocalID() spiffeid.ID { return c.local }
