package waypoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"runtime"
	"sync"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/rawsock"
)

// h1Client sends requests upstream over HTTP/1.1: keep-alive connections
// pooled per endpoint address, and a RoundTrip that writes the request and
// reads the response on the caller's goroutine. It stands in for
// http.Transport on HTTP/1.1 upstreams because the transport's two
// goroutines per connection, and the channel hand-offs between them and the
// caller on every request, cost more CPU than the rest of the proxy put
// together (make bench-waypoint; BENCH_PROFILE shows it). HTTP/2 upstreams
// go through h2Transport (h2pool.go).
//
// It keeps what the waypoint used of http.Transport: at most maxConns
// connections per endpoint (requests wait for one), idle connections closed
// after idleTimeout, no keep-alive when maxRequestsPerConnection is 1 and
// "Connection: close" on a connection's last request otherwise (the last
// by count, or the first once it is maxConnectionDuration old), 1xx
// answers skipped, a 101's body being the connection (io.ReadWriteCloser),
// a request body written while the answer is read (for streams and early
// answers), a retry on another connection when a reused one turns out
// closed by the server before it answered, and cancellation by the
// request's context. Requests are written and answers parsed by
// writeRequest and headReader.readResponse (h1wire.go), which do what
// net/http's Request.Write and ReadResponse do here at a fraction of the
// allocations.
type h1Client struct {
	dial           func(ctx context.Context, network, addr string) (net.Conn, error)
	connectTimeout time.Duration
	idleTimeout    time.Duration
	maxConns       int           // per endpoint; 0: unlimited
	maxRequests    int           // per connection; 0: unlimited; 1: no keep-alive
	maxAge         time.Duration // a connection takes no request after it; 0: none

	mu     sync.Mutex
	hosts  map[string]*h1Host
	closed bool // closeIdle was called: returned connections are closed
}

// h1Host is the pool of one endpoint address.
type h1Host struct {
	idle    []*h1Conn // most recently used last
	open    int
	waiters []chan *h1Conn // a nil *h1Conn means: a connection slot was freed
}

// h1Conn is one upstream connection.
type h1Conn struct {
	net.Conn
	headReader // br, and the answer's head being read
	addr       string
	bw         *bufio.Writer
	requests   int
	born       time.Time // set when the client has a maxAge
	idleAt     time.Time
	reused     bool
}

func newH1Client(p *model.ConnectionPool, dial dialFunc) *h1Client {
	c := &h1Client{
		dial:           dial,
		connectTimeout: p.ConnectTimeout,
		idleTimeout:    p.IdleTimeout,
		maxConns:       p.MaxConnections,
		maxRequests:    p.MaxRequestsPerConnection,
		maxAge:         p.MaxConnectionDuration,
		hosts:          map[string]*h1Host{},
	}
	if c.dial == nil {
		c.dial = (&net.Dialer{}).DialContext
	}
	if c.connectTimeout == 0 {
		c.connectTimeout = 10 * time.Second
	}
	if c.idleTimeout == 0 {
		c.idleTimeout = time.Hour
	}
	return c
}

// errClosedBeforeAnswer is a reused connection that ended before any byte
// of an answer: the server had closed it while it was idle.
var errClosedBeforeAnswer = errors.New("upstream closed a reused connection before answering")

// RoundTrip sends req to req.URL.Host. The answer's body must be read to
// its end or closed; only then is the connection reused. The answer's
// header may be left as read, resp.Header nil: answerHeader builds it.
func (c *h1Client) RoundTrip(req *http.Request) (*http.Response, error) {
	return c.roundTrip(req, nil)
}

// roundTrip is RoundTrip for a request whose header fields are fields,
// when set (a reqFields list; req.Header is then nil), else req.Header.
func (c *h1Client) roundTrip(req *http.Request, fields []field) (*http.Response, error) {
	ctx := req.Context()
	addr := req.URL.Host
	for {
		pc, err := c.getConn(ctx, addr)
		if err != nil {
			return nil, err
		}
		resp, err := c.send(pc, req, fields)
		if err == nil {
			return resp, nil
		}
		if !pc.reused || !errors.Is(err, errClosedBeforeAnswer) || ctx.Err() != nil {
			return nil, err
		}
		// As http.Transport does, the request goes again on another
		// connection when the server could not have acted on it: nothing
		// came back and it is idempotent, and its body can be sent again.
		if !replayable(req, fields) {
			return nil, err
		}
		if req.GetBody != nil {
			b, gerr := req.GetBody()
			if gerr != nil {
				return nil, err
			}
			r2 := req.WithContext(ctx)
			r2.Body = b
			req = r2
		}
	}
}

// replayable mirrors http.Request's rule for resending a request after a
// reused connection failed: an idempotent method (or an idempotency key)
// and a body that is absent or can be produced again.
func replayable(r *http.Request, fields []field) bool {
	if r.Body != nil && r.Body != http.NoBody && r.GetBody == nil {
		return false
	}
	switch r.Method {
	case "", http.MethodGet, http.MethodHead, http.MethodOptions, http.MethodTrace:
		return true
	}
	for _, f := range fields {
		if f.k == "Idempotency-Key" || f.k == "X-Idempotency-Key" {
			return true
		}
	}
	_, key := r.Header["Idempotency-Key"]
	_, xkey := r.Header["X-Idempotency-Key"]
	return key || xkey
}

// send writes req on pc and reads the answer's head. On error pc is
// closed.
func (c *h1Client) send(pc *h1Conn, req *http.Request, fields []field) (*http.Response, error) {
	pc.requests++
	if c.maxRequests == 1 || (c.maxRequests > 1 && pc.requests >= c.maxRequests) || (c.maxAge > 0 && time.Since(pc.born) >= c.maxAge) {
		if !req.Close {
			// The connection's last request says so, and the server
			// closes it after answering.
			req = req.WithContext(req.Context())
			req.Close = true
		}
	}
	ctx := req.Context()
	// Cut the connection when the context ends (see h1Conn.cut).
	watch := watchCtx(ctx, pc)
	fail := func(err error) (*http.Response, error) {
		watch.end()
		c.discard(pc)
		if ctx.Err() != nil {
			return nil, fmt.Errorf("%w (%w)", ctx.Err(), err)
		}
		return nil, err
	}
	var written chan error
	if req.Body == nil || req.Body == http.NoBody {
		if err := writeRequest(pc.bw, req, fields); err != nil {
			return fail(err)
		}
		if err := pc.bw.Flush(); err != nil {
			if pc.reused {
				err = fmt.Errorf("%w: %w", errClosedBeforeAnswer, err)
			}
			return fail(err)
		}
	} else {
		// The body goes while the answer is read: a server may answer
		// before reading all of it, or stream back as it reads.
		written = make(chan error, 1)
		go pc.sendRequest(req, fields, written)
	}
	// Let other goroutines run before reading the answer: under load the
	// answer is then usually there, and the read does not fail with
	// EAGAIN and park this goroutine in the poller first (two system calls
	// and a wake-up saved); unloaded, there is nothing else to run and this
	// returns at once.
	runtime.Gosched()
	b := &h1Body{}
	resp, raw, err := pc.readResponse(req, &b.store)
	if err != nil {
		if written != nil {
			pc.Close() // ends a write still blocked
			if werr := <-written; werr != nil && !errors.Is(err, errClosedBeforeAnswer) {
				err = werr
			}
		}
		return fail(err)
	}
	if resp.StatusCode == http.StatusSwitchingProtocols {
		// The connection now belongs to the caller.
		watch.end()
		resp.Body = &h1Upgraded{Conn: pc.Conn, br: pc.br}
		c.forget(pc)
		return resp, nil
	}
	b.c, b.pc, b.body, b.raw, b.watch, b.written, b.keep = c, pc, resp.Body, raw, watch, written, !resp.Close && !req.Close
	if resp.Body == http.NoBody {
		b.finish(true)
		return resp, nil
	}
	resp.Body = b
	return resp, nil
}

// cut ends the connection when a request's context ends: a deadline for a
// plain TCP connection, and a close for those without deadlines (HBONE
// streams ignore them), which would otherwise wait out the upstream.
func (pc *h1Conn) cut() {
	pc.SetDeadline(aLongTimeAgo)
	pc.Conn.Close()
}

// sendRequest writes a request with a body, concurrently with the answer
// being read; it reports the write's end on done.
func (pc *h1Conn) sendRequest(req *http.Request, fields []field, done chan<- error) {
	body := &bodyReadError{ReadCloser: req.Body}
	out := *req
	out.Body = body
	err := writeRequest(pc.bw, &out, fields)
	if err == nil {
		err = pc.bw.Flush()
	}
	if body.err != nil {
		// The client's body failed (malformed chunks, cut short): the
		// upstream must neither see the request end nor get another on
		// this connection, and no answer will come to wait for. Cutting
		// the connection does all three.
		pc.Close()
	}
	done <- err
}

// bodyReadError is a request body that remembers its first read error
// other than io.EOF.
type bodyReadError struct {
	io.ReadCloser
	err error
}

func (b *bodyReadError) Read(p []byte) (int, error) {
	n, err := b.ReadCloser.Read(p)
	if err != nil && err != io.EOF && b.err == nil {
		b.err = err
	}
	return n, err
}

// readResponse reads the answer's head, skipping 1xx interim answers other
// than 101.
func (pc *h1Conn) readResponse(req *http.Request, st *answerStore) (*http.Response, rawHeader, error) {
	for skipped := 0; ; skipped++ {
		if _, err := pc.br.Peek(1); err != nil {
			if pc.reused && skipped == 0 {
				return nil, rawHeader{}, fmt.Errorf("%w: %w", errClosedBeforeAnswer, err)
			}
			return nil, rawHeader{}, fmt.Errorf("read upstream answer: %w", err)
		}
		resp, raw, err := pc.headReader.readResponse(req, st)
		if err != nil {
			return nil, rawHeader{}, fmt.Errorf("read upstream answer: %w", err)
		}
		if resp.StatusCode >= 200 || resp.StatusCode == http.StatusSwitchingProtocols {
			return resp, raw, nil
		}
		if skipped == 5 {
			return nil, rawHeader{}, errors.New("read upstream answer: too many 1xx answers")
		}
	}
}

// h1Body is an answer's body; reading it to its end gives the connection
// back to the pool.
type h1Body struct {
	c       *h1Client
	pc      *h1Conn
	body    io.ReadCloser
	raw     rawHeader // the answer's fields while resp.Header is nil (see answerHeader)
	watch   ctxWatch
	written chan error // nil: the request was written before the answer was read
	keep    bool       // neither side asked to close the connection
	done    bool
	store   answerStore // the answer's Response, body reader and spans
}

func (b *h1Body) Read(p []byte) (int, error) {
	if b.done {
		return 0, io.EOF
	}
	n, err := b.body.Read(p)
	if err == io.EOF {
		b.finish(true)
	} else if err != nil {
		b.finish(false)
	}
	return n, err
}

func (b *h1Body) Close() error {
	if !b.done {
		b.finish(false)
	}
	return nil
}

// writeStopGrace is how long finish waits for a request body's write to end
// once the answer is complete before it closes the connection.
const writeStopGrace = 100 * time.Millisecond

// finish ends the exchange: the connection is reused when the answer was
// read to its end, the request fully written, the context did not cut the
// connection and neither side asked to close it; otherwise it is closed.
func (b *h1Body) finish(complete bool) {
	b.done = true
	stopped := b.watch.end() // false: the context ended and cut the connection
	reuse := complete && b.keep && stopped
	if b.written != nil {
		select {
		case err := <-b.written:
			reuse = reuse && err == nil
		default:
			// Still writing, or just done but not yet reported: a
			// deadline in the past ends a write the server no longer
			// reads, and one that did finish leaves the connection
			// reusable. Connections without deadlines (HBONE streams)
			// ignore it: a write still blocked a moment later is ended
			// by closing the connection.
			b.pc.SetWriteDeadline(aLongTimeAgo)
			t := time.NewTimer(writeStopGrace)
			select {
			case err := <-b.written:
				reuse = reuse && err == nil && b.pc.SetWriteDeadline(time.Time{}) == nil
			case <-t.C:
				b.pc.Close()
				<-b.written
				reuse = false
			}
			t.Stop()
		}
	}
	if reuse {
		b.c.put(b.pc)
	} else {
		b.c.discard(b.pc)
	}
}

// h1Upgraded is the connection after a 101, with the bytes already read
// from it.
type h1Upgraded struct {
	net.Conn
	br *bufio.Reader
}

func (u *h1Upgraded) Read(p []byte) (int, error) { return u.br.Read(p) }

// getConn takes an idle connection to addr, dials one if fewer than
// maxConns are open, or else waits for one to be given back or closed.
func (c *h1Client) getConn(ctx context.Context, addr string) (*h1Conn, error) {
	for {
		c.mu.Lock()
		h := c.hosts[addr]
		if h == nil {
			h = &h1Host{}
			c.hosts[addr] = h
		}
		for n := len(h.idle); n > 0; n = len(h.idle) {
			pc := h.idle[n-1]
			h.idle[n-1] = nil
			h.idle = h.idle[:n-1]
			if time.Since(pc.idleAt) > c.idleTimeout || (c.maxAge > 0 && time.Since(pc.born) >= c.maxAge) {
				h.open--
				pc.Close()
				continue
			}
			c.mu.Unlock()
			pc.reused = true
			return pc, nil
		}
		if c.maxConns <= 0 || h.open < c.maxConns {
			h.open++
			c.mu.Unlock()
			return c.dialConn(ctx, addr)
		}
		wait := make(chan *h1Conn, 1)
		h.waiters = append(h.waiters, wait)
		c.mu.Unlock()
		select {
		case pc := <-wait:
			if pc != nil {
				pc.reused = true
				return pc, nil
			}
			// A slot was freed: go round again.
		case <-ctx.Done():
			c.mu.Lock()
			for i, w := range h.waiters {
				if w == wait {
					h.waiters = append(h.waiters[:i], h.waiters[i+1:]...)
					break
				}
			}
			c.mu.Unlock()
			select {
			case pc := <-wait: // handed over as the wait ended
				if pc != nil {
					c.put(pc)
				} else {
					c.wakeOne(addr)
				}
			default:
			}
			return nil, ctx.Err()
		}
	}
}

func (c *h1Client) dialConn(ctx context.Context, addr string) (*h1Conn, error) {
	dctx, cancel := context.WithTimeout(ctx, c.connectTimeout)
	defer cancel()
	conn, err := c.dial(dctx, "tcp", addr)
	if err != nil {
		c.released(addr)
		return nil, err
	}
	conn = rawsock.Wrap(conn) // a plain TCP upstream: see package rawsock
	pc := &h1Conn{Conn: conn, addr: addr, headReader: headReader{br: bufio.NewReader(conn)}, bw: bufio.NewWriter(conn)}
	if c.maxAge > 0 {
		pc.born = time.Now()
	}
	return pc, nil
}

// put gives a connection back: to a waiting request, or to the idle pool.
func (c *h1Client) put(pc *h1Conn) {
	pc.idleAt = time.Now()
	c.mu.Lock()
	h := c.hosts[pc.addr]
	if len(h.waiters) > 0 {
		w := h.waiters[0]
		h.waiters = h.waiters[1:]
		c.mu.Unlock()
		w <- pc
		return
	}
	if c.closed {
		c.mu.Unlock()
		c.discard(pc)
		return
	}
	h.idle = append(h.idle, pc)
	c.mu.Unlock()
}

// discard closes a connection and frees its slot.
func (c *h1Client) discard(pc *h1Conn) {
	pc.Close()
	c.released(pc.addr)
}

// forget frees the slot of a connection handed over after a 101.
func (c *h1Client) forget(pc *h1Conn) { c.released(pc.addr) }

func (c *h1Client) released(addr string) {
	c.mu.Lock()
	c.hosts[addr].open--
	c.mu.Unlock()
	c.wakeOne(addr)
}

// wakeOne tells the first waiting request that it may dial.
func (c *h1Client) wakeOne(addr string) {
	c.mu.Lock()
	h := c.hosts[addr]
	if len(h.waiters) == 0 {
		c.mu.Unlock()
		return
	}
	w := h.waiters[0]
	h.waiters = h.waiters[1:]
	c.mu.Unlock()
	w <- nil
}

// closeIdle closes the idle connections; connections given back later are
// closed too (the upstream was replaced or the proxy closed).
func (c *h1Client) closeIdle() {
	c.mu.Lock()
	c.closed = true
	var idle []*h1Conn
	for _, h := range c.hosts {
		idle = append(idle, h.idle...)
		h.open -= len(h.idle)
		h.idle = nil
	}
	c.mu.Unlock()
	for _, pc := range idle {
		pc.Close()
	}
}

// aLongTimeAgo is a deadline in the past: it ends blocked reads and writes
// at once.
var aLongTimeAgo = time.Unix(1, 0)
