//lint:file-ignore SA1019 x/net deprecates http2.Transport's ConnPool for net/http's ClientConn, which has neither the Transport's retry of a request a GOAWAY or refused stream left unsent nor a graceful Shutdown; retiring connections needs both.

package waypoint

import (
	"context"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"golang.org/x/net/http2"

	"github.com/meshlet/meshlet/pkg/model"
)

// h2Transport sends requests upstream over HTTP/2: gRPC, and clusters
// marked HTTP2 (h2c, or h2 inside the TLS the dial originates). It is x/net's
// http2.Transport over h2Pool, which puts on its connections the limits
// Envoy puts on HTTP/2 upstream connections: maxRequestsPerConnection and
// maxConnectionDuration retire a connection (no new stream; GOAWAY; closed
// once its streams end), and maxConnections bounds them per endpoint.
type h2Transport struct {
	t    *http2.Transport
	pool *h2Pool
}

// h2FullWait is how often a request waiting at maxConnections looks again
// for a free stream: a stream's end is not announced, unlike a
// connection's.
const h2FullWait = 10 * time.Millisecond

// h2StartWait bounds how long a retired connection waits for the streams
// it was handed out for to start before its GOAWAY: they start at once, on
// the goroutine that took them. One that has not by then is turned away,
// and the transport sends it on another connection (unless it was the
// connection's first: that one fails).
const h2StartWait = time.Second

func newH2Transport(p *model.ConnectionPool, dial dialFunc) *h2Transport {
	connectTimeout := p.ConnectTimeout
	if connectTimeout == 0 {
		connectTimeout = 10 * time.Second
	}
	idle := p.IdleTimeout
	if idle == 0 {
		idle = time.Hour
	}
	pool := &h2Pool{
		dial: func(ctx context.Context, network, addr string) (net.Conn, error) {
			ctx, cancel := context.WithTimeout(ctx, connectTimeout)
			defer cancel()
			return dial(ctx, network, addr)
		},
		maxConns:    p.MaxConnections,
		maxRequests: p.MaxRequestsPerConnection,
		maxAge:      p.MaxConnectionDuration,
		hosts:       map[string]*h2Host{},
		conns:       map[*http2.ClientConn]*h2PoolConn{},
	}
	t := &http2.Transport{
		ConnPool:           pool,
		AllowHTTP:          true, // the pool dials: plaintext, or TLS it originated itself
		DisableCompression: true,
		IdleConnTimeout:    idle,
	}
	if p.H2PingInterval > 0 {
		// Istio's http2KeepAlive: a quiet connection is pinged, and
		// closed when the answer does not come in time.
		t.ReadIdleTimeout, t.PingTimeout = p.H2PingInterval, p.H2PingTimeout
	}
	pool.t = t
	return &h2Transport{t: t, pool: pool}
}

func (t *h2Transport) RoundTrip(r *http.Request) (*http.Response, error) {
	return t.t.RoundTrip(r)
}

// CloseIdleConnections retires every connection: the idle ones close at
// once, the others when their streams end (x/net's Transport would only
// reach its default pool). It is called when a new config replaced the
// upstream, whose busy connections then take no more requests: closing them
// after their streams beats keeping them until the idle timeout.
func (t *h2Transport) CloseIdleConnections() {
	t.pool.retireAll()
}

// h2Pool is the http2.ClientConnPool of an h2Transport: connections per
// endpoint address. A request takes a stream on a connection that is not
// retired and has one free, else joins a dial in flight, else starts one;
// concurrent requests share a dial (up to maxRequests of them), so a burst
// opens one connection, not one each.
//
// maxConns bounds connections per endpoint, requests over it waiting for a
// stream, as http.Transport's MaxConnsPerHost was meant to for these
// upstreams (over h2c it did not: TestH2MaxConnections). The request
// limiter bounds requests per cluster besides; HTTP/2 needs no connection
// per request. Retired connections are not counted: they take no request,
// and a long stream on one must not hold every new request back (Envoy
// too opens a connection when all it has are draining).
type h2Pool struct {
	t           *http2.Transport
	dial        dialFunc      // with the connect timeout
	maxConns    int           // per endpoint, dials included, retired ones not; 0: unlimited
	maxRequests int           // streams per connection; 0: unlimited
	maxAge      time.Duration // a connection is retired that old; 0: never

	mu    sync.Mutex
	hosts map[string]*h2Host
	conns map[*http2.ClientConn]*h2PoolConn // for MarkDead
}

// h2Host is the pool of one endpoint address.
type h2Host struct {
	conns []*h2PoolConn
	dials []*h2Dial
	// changed is closed (and dropped) when a connection of the host is
	// retired or gone or a dial ends: requests waiting at maxConns count
	// again.
	changed chan struct{}
}

// h2PoolConn is one upstream connection.
type h2PoolConn struct {
	pool     *h2Pool
	cc       *http2.ClientConn
	addr     string
	requests int         // streams handed out
	claims   int         // the requests its dial was for that have not taken it yet
	retired  bool        // takes no new stream
	dead     bool        // out of the pool
	age      *time.Timer // retires it at maxAge
}

// h2Dial is a connection being dialled for claims requests.
type h2Dial struct {
	claims int
	done   chan struct{}
	conn   *h2PoolConn // nil on failure (err), or when no request is left for it
	err    error
}

// GetClientConn reserves a stream for req on a connection to addr.
func (p *h2Pool) GetClientConn(req *http.Request, addr string) (*http2.ClientConn, error) {
	ctx := req.Context()
	for {
		p.mu.Lock()
		h := p.hosts[addr]
		if h == nil {
			h = &h2Host{}
			p.hosts[addr] = h
		}
		if c := p.takeLocked(h); c != nil {
			p.mu.Unlock()
			return c.cc, nil
		}
		d, changed := p.joinDialLocked(h, req, addr)
		p.mu.Unlock()

		var err error
		if d != nil {
			var c *h2PoolConn
			if c, err = p.await(ctx, d); c != nil {
				return c.cc, nil
			}
		} else {
			tm := time.NewTimer(h2FullWait)
			select {
			case <-changed:
			case <-tm.C:
			case <-ctx.Done():
				err = ctx.Err()
			}
			tm.Stop()
		}
		if err != nil {
			// The transport closes the body only once it has a
			// connection; a RoundTripper always does.
			if req.Body != nil {
				req.Body.Close()
			}
			return nil, err
		}
	}
}

// takeLocked reserves a stream on a connection of h that takes one,
// leaving to the requests of its dial the streams they were promised.
func (p *h2Pool) takeLocked(h *h2Host) *h2PoolConn {
	for _, c := range h.conns {
		if c.retired || (p.maxRequests > 0 && c.requests+c.claims >= p.maxRequests) {
			continue
		}
		if c.cc.ReserveNewRequest() {
			p.handOutLocked(c)
			return c
		}
	}
	return nil
}

// handOutLocked counts a stream reserved on c, retiring c with its last.
func (p *h2Pool) handOutLocked(c *h2PoolConn) {
	c.requests++
	if p.maxRequests > 0 && c.requests >= p.maxRequests {
		p.retireLocked(c)
	}
}

// joinDialLocked finds req a connection to come: a dial in flight with a
// stream to spare, else a new one. At maxConns it returns instead what to
// wait on before looking again.
func (p *h2Pool) joinDialLocked(h *h2Host, req *http.Request, addr string) (*h2Dial, <-chan struct{}) {
	for _, d := range h.dials {
		if p.maxRequests <= 0 || d.claims < p.maxRequests {
			d.claims++
			return d, nil
		}
	}
	if p.maxConns > 0 {
		n := len(h.dials)
		for _, c := range h.conns {
			if !c.retired {
				n++
			}
		}
		if n >= p.maxConns {
			if h.changed == nil {
				h.changed = make(chan struct{})
			}
			return nil, h.changed
		}
	}
	d := &h2Dial{claims: 1, done: make(chan struct{})}
	h.dials = append(h.dials, d)
	// The request's values go with the dial (a PROXY header names its
	// client), not its cancellation: other requests may be waiting for it.
	go p.dialConn(context.WithoutCancel(req.Context()), h, addr, d)
	return d, nil
}

// dialConn dials d's connection and adds it to h.
func (p *h2Pool) dialConn(ctx context.Context, h *h2Host, addr string, d *h2Dial) {
	var cc *http2.ClientConn
	nc, err := p.dial(ctx, "tcp", addr)
	if err == nil {
		cc, err = p.t.NewClientConn(nc)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	h.dials = slices.DeleteFunc(h.dials, func(x *h2Dial) bool { return x == d })
	d.err = err
	if err == nil {
		c := &h2PoolConn{pool: p, cc: cc, addr: addr, claims: d.claims}
		if p.maxRequests == 1 && c.claims == 0 {
			// Its request is gone, and with one request per connection a
			// connection is its request's alone: its dial may have named
			// the request's client.
			go cc.Close()
		} else {
			h.conns = append(h.conns, c)
			p.conns[cc] = c
			if p.maxAge > 0 {
				c.age = time.AfterFunc(p.maxAge, c.expire)
			}
			d.conn = c
		}
	}
	p.changedLocked(h)
	if len(h.conns) == 0 && len(h.dials) == 0 {
		delete(p.hosts, addr)
	}
	close(d.done)
}

// await waits for d and takes a stream on its connection; nil without an
// error when there was none to take (another look is needed).
func (p *h2Pool) await(ctx context.Context, d *h2Dial) (*h2PoolConn, error) {
	select {
	case <-d.done:
	case <-ctx.Done():
		p.mu.Lock()
		defer p.mu.Unlock()
		select {
		case <-d.done:
			if c := d.conn; c != nil {
				c.claims--
				if p.maxRequests == 1 && c.claims == 0 && c.requests == 0 {
					p.removeLocked(c)
					go c.cc.Close() // as in dialConn
				}
			}
		default:
			d.claims--
		}
		return nil, ctx.Err()
	}
	if d.err != nil {
		return nil, d.err
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	c := d.conn
	if c == nil {
		return nil, nil
	}
	c.claims--
	if c.dead || c.retired || !c.cc.ReserveNewRequest() {
		return nil, nil
	}
	p.handOutLocked(c)
	return c, nil
}

// MarkDead drops a connection that closed or was told to go away.
func (p *h2Pool) MarkDead(cc *http2.ClientConn) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if c := p.conns[cc]; c != nil {
		p.removeLocked(c)
	}
}

func (p *h2Pool) removeLocked(c *h2PoolConn) {
	if c.dead {
		return
	}
	c.dead = true
	if c.age != nil {
		c.age.Stop()
	}
	delete(p.conns, c.cc)
	h := p.hosts[c.addr]
	h.conns = slices.DeleteFunc(h.conns, func(x *h2PoolConn) bool { return x == c })
	p.changedLocked(h)
	if len(h.conns) == 0 && len(h.dials) == 0 {
		delete(p.hosts, c.addr)
	}
}

func (p *h2Pool) changedLocked(h *h2Host) {
	if h.changed != nil {
		close(h.changed)
		h.changed = nil
	}
}

// retireLocked takes c out of use and drains it.
func (p *h2Pool) retireLocked(c *h2PoolConn) {
	if c.retired || c.dead {
		return
	}
	c.retired = true
	if c.age != nil {
		c.age.Stop()
	}
	p.changedLocked(p.hosts[c.addr])
	go c.drain()
}

func (p *h2Pool) retireAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, h := range p.hosts {
		for _, c := range h.conns {
			p.retireLocked(c)
		}
	}
}

// expire retires c at maxConnectionDuration.
func (c *h2PoolConn) expire() {
	c.pool.mu.Lock()
	defer c.pool.mu.Unlock()
	c.pool.retireLocked(c)
}

// drain shuts a retired connection down the way Envoy drains one: the
// streams it was handed out for start, then a GOAWAY, and the connection
// closes once its last stream ends. A shutdown before they started would
// turn them away (the first on a new connection fails outright).
func (c *h2PoolConn) drain() {
	for deadline := time.Now().Add(h2StartWait); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
		st := c.cc.State()
		if st.Closed || st.StreamsReserved+st.StreamsPending == 0 {
			break
		}
	}
	if err := c.cc.Shutdown(context.Background()); err != nil {
		// The GOAWAY could not be written: the connection is broken.
		c.cc.Close()
	}
}
