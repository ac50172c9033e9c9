package hbone

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
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
	// TrustDomainAliases, if set, returns the trust domains that name the
	// same workloads as td (Istio's trustDomainAliases;
	// identity.BundleSource's Aliases): a server presenting
	// Target.PeerID's path in one of those of PeerID's trust domain passes
	// as PeerID (Bundle must verify its SVID). It is asked for each new
	// connection. Nil: PeerID only.
	TrustDomainAliases func(td spiffeid.TrustDomain) []spiffeid.TrustDomain
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
	// Logger receives the connections Reverify closed; nil means
	// slog.Default().
	Logger *slog.Logger
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
	conns []*conn
}

// remove forgets a closed connection.
func (e *poolEntry) remove(c *conn) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for i, x := range e.conns {
		if x == c {
			e.conns = slices.Delete(e.conns, i, i+1)
			return
		}
	}
}

// Dialer opens HBONE streams over pooled HTTP/2 connections.
type Dialer struct {
	opts DialerOptions

	mu     sync.Mutex
	closed bool
	pool   map[poolKey]*poolEntry
	// live is every pooled connection, for Reverify: walking the pool
	// would wait on each entry's lock, which a dial holds.
	live map[*conn]poolKey
	// reverifies counts Reverify calls: a connection whose handshake
	// began before one, and which it may have missed, is checked before
	// it serves.
	reverifies atomic.Uint64
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
	keepaliveDefaults(&opts.IdleTimeout, &opts.ReadIdleTimeout, &opts.PingTimeout, 5*time.Minute)
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Dialer{opts: opts, pool: make(map[poolKey]*poolEntry), live: make(map[*conn]poolKey)}, nil
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
	fields := connectFields(t)
	var s *stream
	var c *conn
	// A pooled connection may have been told to go away (server drain) or
	// died since its last use; such a stream never reached the target, so it
	// is retried once on a fresh connection.
	for attempt := 0; ; attempt++ {
		var fresh bool
		c, fresh, err = d.clientConn(ctx, key, t.Local)
		if err != nil {
			return nil, err
		}
		s, err = c.connect(ctx, fields)
		if err == nil {
			break
		}
		if fresh || attempt > 0 || ctx.Err() != nil {
			return nil, fmt.Errorf("hbone CONNECT %s via %s: %w", t.Addr, t.Proxy, err)
		}
	}
	if s.status != http.StatusOK {
		var msg []byte
		buf := make([]byte, 512)
		for len(msg) < len(buf) {
			n, err := s.read(ctx, buf[len(msg):])
			msg = buf[:len(msg)+n]
			if err != nil {
				break
			}
		}
		s.close()
		var kind error
		switch s.status {
		case http.StatusForbidden:
			kind = ErrForbidden
		case http.StatusBadRequest:
			kind = ErrBadTarget
		default:
			kind = errors.New("hbone: stream refused")
		}
		return nil, fmt.Errorf("hbone CONNECT %s via %s: %d %q: %w", t.Addr, t.Proxy, s.status, string(msg), kind)
	}
	return &Conn{s: s, local: svid.ID, peer: c.cfg.peer}, nil
}

// connectFields is the CONNECT request's header block.
func connectFields(t Target) []hpack.HeaderField {
	fields := []hpack.HeaderField{
		{Name: ":method", Value: http.MethodConnect},
		{Name: ":authority", Value: t.Addr.String()},
	}
	if t.Source.IsValid() {
		fields = append(fields, hpack.HeaderField{Name: "forwarded", Value: formatForwarded(t.Source)})
	}
	return fields
}

// connect opens a stream with a reservation from reserve, sends the CONNECT
// request and waits for the response headers; ctx bounds only that wait.
func (c *conn) connect(ctx context.Context, fields []hpack.HeaderField) (*stream, error) {
	s, err := c.openStream(fields)
	if err != nil {
		return nil, err
	}
	stop := context.AfterFunc(ctx, func() {
		c.mu.Lock()
		s.readCond.Broadcast()
		c.mu.Unlock()
	})
	c.mu.Lock()
	for !s.responded && s.resetErr == nil && ctx.Err() == nil {
		s.readCond.Wait()
	}
	switch {
	case ctx.Err() != nil:
		err = ctx.Err()
	case s.responded:
	default:
		err = s.resetErr
	}
	c.mu.Unlock()
	stop()
	if err != nil {
		s.close()
		return nil, err
	}
	return s, nil
}

// reserve promises the caller one stream on c, if c takes another.
func (c *conn) reserve() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed || c.closing || c.goAwayRecv || c.goAwaySent {
		return false
	}
	if c.nextStreamID+2*uint32(c.reserved) > maxStreamID-2 {
		// Out of stream IDs: retire the connection after its last stream.
		c.closing = true
		if len(c.streams) == 0 && c.reserved == 0 {
			go c.flushAndClose(nil)
		}
		return false
	}
	if uint64(len(c.streams)+c.reserved) >= uint64(c.peerMaxStreams) {
		return false
	}
	c.reserved++
	return true
}

// usable reports whether the pool should keep c.
func (c *conn) usable() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return !c.closed && !c.closing && !c.goAwayRecv && !c.goAwaySent
}

// openStream turns a reservation into a stream and sends its HEADERS. The
// ID is taken under the write lock so that IDs go out in order.
func (c *conn) openStream(fields []hpack.HeaderField) (*stream, error) {
	c.wmu.Lock()
	c.mu.Lock()
	c.reserved--
	if c.closed || c.goAwayRecv || c.goAwaySent {
		closeNow := c.closing && !c.closed && len(c.streams) == 0 && c.reserved == 0
		c.mu.Unlock()
		c.wmu.Unlock()
		if closeNow {
			go c.flushAndClose(nil)
		}
		return nil, errGoneAway
	}
	id := c.nextStreamID
	c.nextStreamID += 2
	s := c.newStreamLocked(id)
	maxFrame := c.peerMaxFrame
	c.mu.Unlock()
	err := c.writeHeaders(id, fields, false, maxFrame)
	if err == nil {
		err = c.writeCtlLocked(true)
	}
	c.wmu.Unlock()
	if err != nil {
		c.close(err)
		return nil, fmt.Errorf("send CONNECT: %w", err)
	}
	return s, nil
}

// clientConn returns a pooled connection that has reserved room for one
// stream, dialling a new one when none has.
func (d *Dialer) clientConn(ctx context.Context, key poolKey, local x509svid.Source) (c *conn, fresh bool, err error) {
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
	var picked *conn
	for _, c := range e.conns {
		if picked == nil && c.reserve() {
			picked = c
		}
		if picked == c || c.usable() {
			live = append(live, c)
		}
	}
	clear(e.conns[len(live):])
	e.conns = live
	if picked != nil {
		return picked, false, nil
	}
	reverifies := d.reverifies.Load()
	c, err = d.dial(ctx, key, local, e)
	if err != nil {
		return nil, false, err
	}
	if !c.reserve() {
		c.close(nil)
		return nil, false, fmt.Errorf("hbone dial %s: new connection takes no stream", key.proxy)
	}
	d.mu.Lock()
	closed := d.closed
	if !closed {
		d.live[c] = key
	}
	d.mu.Unlock()
	if closed {
		c.close(nil)
		return nil, false, ErrDialerClosed
	}
	e.conns = append(e.conns, c)
	if d.reverifies.Load() != reverifies {
		// The handshake may have verified the trust of before a Reverify
		// that did not see the connection yet.
		if d.reverifyConns(map[*conn]poolKey{c: key}) > 0 {
			return nil, false, fmt.Errorf("hbone dial %s: %w", key.proxy, errUntrusted)
		}
	}
	return c, true, nil
}

// dial opens TCP, runs the TLS 1.3 handshake verifying the server's SVID is
// key.peer, and starts HTTP/2.
func (d *Dialer) dial(ctx context.Context, key poolKey, local x509svid.Source, e *poolEntry) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, d.opts.HandshakeTimeout)
	defer cancel()
	raw, err := d.opts.DialContext(ctx, "tcp", key.proxy.String())
	if err != nil {
		return nil, fmt.Errorf("hbone dial %s: %w", key.proxy, err)
	}
	cfg := tlsconfig.MTLSClientConfig(local, d.opts.Bundle, tlsconfig.AuthorizeOneOf(d.peerIDs(key.peer)...))
	cfg.MinVersion = tls.VersionTLS13
	cfg.NextProtos = []string{http2.NextProtoTLS}
	rs := rawsock.Wrap(raw)
	tc := tls.Client(rs, cfg)
	if err := tc.HandshakeContext(ctx); err != nil {
		raw.Close()
		return nil, fmt.Errorf("hbone handshake with %s (want %s): %w", key.proxy, key.peer, err)
	}
	verifiedAt := time.Now()
	cs := tc.ConnectionState()
	if p := cs.NegotiatedProtocol; p != http2.NextProtoTLS {
		tc.Close()
		return nil, fmt.Errorf("hbone handshake with %s: server negotiated %q, want h2", key.proxy, p)
	}
	peer := key.peer
	trust := newPeerTrust(cs, verifiedAt)
	if trust != nil {
		peer = trust.id // verified: key.peer or its form in an alias
	}
	c := newConn(tc, connConfig{
		peer:         peer,
		trust:        trust,
		gather:       gatherOf(rs),
		streamWindow: DefaultStreamWindow,
		connWindow:   DefaultConnWindow,
		// Not under e.mu: close may run while clientConn holds it.
		onClose: func(c *conn) {
			go func() {
				e.remove(c)
				d.mu.Lock()
				delete(d.live, c)
				d.mu.Unlock()
			}()
		},
	})
	if err := c.start(); err != nil {
		tc.Close()
		return nil, fmt.Errorf("hbone start http2 with %s: %w", key.proxy, err)
	}
	go c.readLoop()
	c.startKeepalive(d.opts.ReadIdleTimeout, d.opts.PingTimeout, d.opts.IdleTimeout)
	return c, nil
}

// peerIDs are the SPIFFE IDs a server may present for want: want, and its
// path in each trust domain that names the same workloads as want's.
func (d *Dialer) peerIDs(want spiffeid.ID) []spiffeid.ID {
	ids := []spiffeid.ID{want}
	if d.opts.TrustDomainAliases == nil {
		return ids
	}
	for _, td := range d.opts.TrustDomainAliases(want.TrustDomain()) {
		if id, err := spiffeid.FromPath(td, want.Path()); err == nil {
			ids = append(ids, id)
		}
	}
	return ids
}

// Reverify verifies the server of every pooled connection again, as the
// handshake did (the chain against Bundle's roots of now, and the expected
// identity or its form in an alias of now), and closes those that no longer
// pass: at once no Dial picks them, and they and their streams end without
// a grace (conn.refuseStreams says why). Each closed connection is logged
// once; Reverify returns how many it closed, when they are closed. Those
// that pass are left as they are. Call it when the trust changed
// (identity.BundleSource's Watch): it is safe beside Dials, streams,
// Shutdown and other Reverify calls, and a connection whose peer's roots
// did not change costs it no signature check.
func (d *Dialer) Reverify() int {
	d.reverifies.Add(1)
	d.mu.Lock()
	live := maps.Clone(d.live)
	d.mu.Unlock()
	return d.reverifyConns(live)
}

func (d *Dialer) reverifyConns(live map[*conn]poolKey) int {
	conns := slices.Collect(maps.Keys(live))
	closed := reverifyConns(conns, func(c *conn) error {
		return c.cfg.trust.recheck(d.opts.Bundle, tlsconfig.AuthorizeOneOf(d.peerIDs(live[c].peer)...))
	}, d.opts.Logger)
	return len(closed)
}

// drain returns every pooled connection and empties the pool.
func (d *Dialer) drain() []*conn {
	d.mu.Lock()
	d.closed = true
	entries := make([]*poolEntry, 0, len(d.pool))
	for _, e := range d.pool {
		entries = append(entries, e)
	}
	d.pool = map[poolKey]*poolEntry{}
	d.mu.Unlock()
	var out []*conn
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
	var errs []error
	for _, c := range conns {
		c.shutdown()
	}
	for _, c := range conns {
		select {
		case <-c.done:
		case <-ctx.Done():
			c.close(nil)
			errs = append(errs, ctx.Err())
		}
	}
	return errors.Join(errs...)
}

// Close refuses new Dials and closes every pooled connection at once,
// resetting open streams.
func (d *Dialer) Close() error {
	for _, c := range d.drain() {
		c.close(nil)
	}
	return nil
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
		for _, c := range e.conns {
			if c.usable() {
				n++
			}
		}
		e.mu.Unlock()
	}
	return n
}

// Conn is the client end of one HBONE stream.
type Conn struct {
	s     *stream
	local spiffeid.ID
	peer  spiffeid.ID
}

// Read reads bytes the server sent; io.EOF when it ended the stream.
func (c *Conn) Read(p []byte) (int, error) { return c.s.read(context.Background(), p) }

// WriteTo writes what the server sends to w until it ends the stream
// (io.WriterTo, which io.Copy uses): it hands w the received chunks
// themselves, and holds no buffer while it waits.
func (c *Conn) WriteTo(w io.Writer) (int64, error) { return c.s.writeTo(w) }

// Write sends bytes to the server. It returns once they are handed to the
// TLS connection, blocking while the server's flow-control window is shut.
func (c *Conn) Write(p []byte) (int, error) { return c.s.write(p) }

// CloseWrite ends the client's side of the stream (HTTP/2 END_STREAM); the
// server reads io.EOF, and reads here continue until the server ends.
func (c *Conn) CloseWrite() error { return c.s.closeWrite() }

// Close ends the stream in both directions (RST_STREAM CANCEL if not
// finished).
func (c *Conn) Close() error {
	c.s.close()
	return nil
}

// close is the client's Close: unread bytes are dropped, and a stream not
// finished both ways is reset.
func (s *stream) close() {
	c := s.c
	c.mu.Lock()
	if s.closed {
		c.mu.Unlock()
		return
	}
	s.closed = true
	s.dropBufferLocked()
	if s.resetErr == nil && !(s.sentEnd && s.recvEnd) {
		c.resetLocked(s, http2.ErrCodeCancel)
	}
	c.endStreamLocked(s)
	c.mu.Unlock()
	c.flushCtl()
}

// PeerID returns the server's verified SPIFFE ID.
func (c *Conn) PeerID() spiffeid.ID { return c.peer }

// LocalID returns the SPIFFE ID the client presented.
func (c *Conn) LocalID() spiffeid.ID { return c.local }
