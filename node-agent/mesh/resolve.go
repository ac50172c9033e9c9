package mesh

import (
	"context"
	"encoding/binary"
	"errors"
	"net"
	"net/netip"
	"sync"
	"time"

	"golang.org/x/net/dns/dnsmessage"
)

// Cached answers for ServiceEntry endpoints known by hostname (resolution
// DNS or DNS_ROUND_ROBIN), kept for their DNS TTL as ztunnel and Envoy
// (respect_dns_ttl, which Istio sets) keep them: an answer past its TTL is
// still used while a lookup in the background refreshes it (a connection
// never waits on a refresh), and a failed lookup is remembered for failedTTL
// so a dead name does not cost every connection a lookup. The TTL is the
// smallest of the answers' address and alias records, as DNSLookup saw
// them, bounded to [minResolvedTTL, maxResolvedTTL]: at least that long so a
// TTL of 0 or 1 does not turn every connection into a lookup, at most that
// long so a day-long TTL does not keep a moved endpoint for a day. An answer
// whose TTL was not seen (an /etc/hosts entry, a LookupHost of another
// kind) is kept for resolvedTTL.
const (
	resolvedTTL    = 30 * time.Second
	minResolvedTTL = 5 * time.Second
	maxResolvedTTL = 5 * time.Minute
	failedTTL      = 5 * time.Second
	resolveTimeout = 5 * time.Second
	// maxResolvedHosts bounds the cache (the names come from ServiceEntries,
	// i.e. from users); past it, expired answers are dropped first, and a
	// name that still does not fit is looked up uncached.
	maxResolvedHosts = 4096
	// maxResolvedAddrs bounds the addresses kept per name.
	maxResolvedAddrs = 32
)

// DNSLookup returns a lookup for Options.LookupHost: Go's resolver as it is
// (resolv.conf's servers, search list and ndots, /etc/hosts, TCP when an
// answer is truncated), whose connections to the name servers are watched
// for the answers' TTLs, which hostResolver then keeps the addresses for. Go's
// resolver returns no TTL itself. dial, when set, replaces the dial to the
// name servers (tests).
func DNSLookup(dial func(ctx context.Context, network, address string) (net.Conn, error)) func(ctx context.Context, host string) ([]netip.Addr, error) {
	if dial == nil {
		var d net.Dialer
		dial = d.DialContext
	}
	r := &net.Resolver{PreferGo: true, Dial: func(ctx context.Context, network, address string) (net.Conn, error) {
		c, err := dial(ctx, network, address)
		if err != nil {
			return nil, err
		}
		o, _ := ctx.Value(ttlKey{}).(*ttlObserver)
		if o == nil {
			return c, nil
		}
		tc := &ttlConn{Conn: c, o: o}
		if pc, ok := c.(net.PacketConn); ok {
			// Go's resolver reads datagrams from a PacketConn, a stream
			// otherwise: keep the kind.
			return &ttlPacketConn{ttlConn: tc, pc: pc}, nil
		}
		tc.stream = true
		return tc, nil
	}}
	return func(ctx context.Context, host string) ([]netip.Addr, error) {
		return r.LookupNetIP(ctx, "ip", host)
	}
}

// ttlKey is the context key of the lookup's ttlObserver.
type ttlKey struct{}

// ttlObserver keeps the smallest TTL of the address and alias records in
// the answers a lookup's connections read.
type ttlObserver struct {
	mu   sync.Mutex
	ttl  uint32
	seen bool
}

// observe reads one DNS message; an unparsable one, or one that is not a
// successful answer, is ignored.
func (o *ttlObserver) observe(msg []byte) {
	var p dnsmessage.Parser
	h, err := p.Start(msg)
	if err != nil || !h.Response || h.RCode != dnsmessage.RCodeSuccess || p.SkipAllQuestions() != nil {
		return
	}
	for {
		rh, err := p.AnswerHeader()
		if err != nil {
			return // dnsmessage.ErrSectionDone, or a malformed record
		}
		if rh.Class == dnsmessage.ClassINET && (rh.Type == dnsmessage.TypeA || rh.Type == dnsmessage.TypeAAAA || rh.Type == dnsmessage.TypeCNAME) {
			o.mu.Lock()
			if !o.seen || rh.TTL < o.ttl {
				o.ttl, o.seen = rh.TTL, true
			}
			o.mu.Unlock()
		}
		if p.SkipAnswer() != nil {
			return
		}
	}
}

// result is the TTL seen, bounded, or resolvedTTL when none was.
func (o *ttlObserver) result() time.Duration {
	o.mu.Lock()
	defer o.mu.Unlock()
	if !o.seen {
		return resolvedTTL
	}
	return min(max(time.Duration(o.ttl)*time.Second, minResolvedTTL), maxResolvedTTL)
}

// ttlConn passes a connection to a name server through, showing what it
// reads to its observer: each read is a message on a datagram connection;
// on a stream, messages carry a two-byte length and are put together first.
type ttlConn struct {
	net.Conn
	o      *ttlObserver
	stream bool
	buf    []byte // a stream's partial message
}

func (c *ttlConn) Read(p []byte) (int, error) {
	n, err := c.Conn.Read(p)
	if n > 0 {
		if !c.stream {
			c.o.observe(p[:n])
		} else {
			c.buf = append(c.buf, p[:n]...)
			for len(c.buf) >= 2 {
				l := int(binary.BigEndian.Uint16(c.buf))
				if len(c.buf) < 2+l {
					break
				}
				c.o.observe(c.buf[2 : 2+l])
				c.buf = c.buf[2+l:]
			}
		}
	}
	return n, err
}

// ttlPacketConn is a ttlConn over a datagram connection: still a
// net.PacketConn, as Go's resolver checks.
type ttlPacketConn struct {
	*ttlConn
	pc net.PacketConn
}

func (c *ttlPacketConn) ReadFrom(p []byte) (int, net.Addr, error) {
	n, from, err := c.pc.ReadFrom(p)
	if n > 0 {
		c.o.observe(p[:n])
	}
	return n, from, err
}

func (c *ttlPacketConn) WriteTo(p []byte, addr net.Addr) (int, error) { return c.pc.WriteTo(p, addr) }

type hostResolver struct {
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	now    func() time.Time
	errorf func(format string, args ...any)

	mu      sync.Mutex
	entries map[string]*resolved
}

type resolved struct {
	done       chan struct{} // closed when the first lookup has ended
	addrs      []netip.Addr  // usable addresses (see usableResolved)
	err        error
	expires    time.Time
	refreshing bool
}

// addrs returns the usable addresses of host, looking it up when nothing is
// cached (waiting at most resolveTimeout), serving a stale answer while it is
// refreshed in the background.
func (r *hostResolver) addrs(host string) ([]netip.Addr, error) {
	r.mu.Lock()
	if r.entries == nil {
		r.entries = map[string]*resolved{}
	}
	e, ok := r.entries[host]
	if ok {
		select {
		case <-e.done:
		default:
			// Another connection's lookup is under way: wait for it.
			r.mu.Unlock()
			<-e.done
			r.mu.Lock()
			defer r.mu.Unlock()
			return e.addrs, e.err
		}
		if r.now().After(e.expires) && !e.refreshing {
			if e.err != nil {
				// A failure is not served stale: look it up again now.
				delete(r.entries, host)
				ok = false
			} else {
				e.refreshing = true
				go r.refresh(host)
			}
		}
		if ok {
			addrs, err := e.addrs, e.err
			r.mu.Unlock()
			return addrs, err
		}
	}
	if !r.makeRoom() {
		r.mu.Unlock()
		addrs, _, err := r.resolve(host)
		return addrs, err
	}
	e = &resolved{done: make(chan struct{})}
	r.entries[host] = e
	r.mu.Unlock()
	addrs, ttl, err := r.resolve(host)
	r.mu.Lock()
	e.addrs, e.err, e.expires = addrs, err, r.expiry(ttl, err)
	r.mu.Unlock()
	close(e.done)
	return addrs, err
}

// refresh looks host up again and replaces its answer; a failed refresh
// keeps the old answer until the next try.
func (r *hostResolver) refresh(host string) {
	addrs, ttl, err := r.resolve(host)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[host]
	if !ok {
		return
	}
	e.refreshing = false
	if err != nil {
		e.expires = r.now().Add(failedTTL)
		return
	}
	e.addrs, e.expires = addrs, r.expiry(ttl, nil)
}

func (r *hostResolver) expiry(ttl time.Duration, err error) time.Time {
	if err != nil {
		return r.now().Add(failedTTL)
	}
	return r.now().Add(ttl)
}

// makeRoom reports whether one more name fits, dropping expired answers
// when the cache is full. r.mu is held.
func (r *hostResolver) makeRoom() bool {
	if len(r.entries) < maxResolvedHosts {
		return true
	}
	now := r.now()
	for h, e := range r.entries {
		select {
		case <-e.done:
			if now.After(e.expires) && !e.refreshing {
				delete(r.entries, h)
			}
		default:
		}
	}
	return len(r.entries) < maxResolvedHosts
}

// resolve looks host up, with how long to keep the answer: its TTL when
// the lookup showed one (DNSLookup), else resolvedTTL.
func (r *hostResolver) resolve(host string) ([]netip.Addr, time.Duration, error) {
	o := &ttlObserver{}
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), ttlKey{}, o), resolveTimeout)
	defer cancel()
	addrs, err := r.lookup(ctx, host)
	if err == nil {
		if addrs = usableResolved(addrs); len(addrs) == 0 {
			err = errors.New("no usable address (loopback, unspecified and multicast ones are not dialled)")
		}
	}
	if err != nil {
		// Failures are cached for failedTTL: at most one report per name
		// that often.
		r.errorf("ServiceEntry endpoint %q: resolving it: %v; its connections pass through to the address dialled", host, err)
		return nil, 0, err
	}
	return addrs, o.result(), nil
}

// usableResolved keeps the addresses a pod's connection may be sent to:
// not loopback, unspecified or multicast (a name resolving there would have
// the agent dial, with its mark, inside the pod's own netns or nowhere),
// unmapped, at most maxResolvedAddrs.
func usableResolved(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, min(len(addrs), maxResolvedAddrs))
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() {
			continue
		}
		out = append(out, a)
		if len(out) == maxResolvedAddrs {
			break
		}
	}
	return out
}
