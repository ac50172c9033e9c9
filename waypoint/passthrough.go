package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"math/rand/v2"
	"net"
	"sync"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// Whole connections at an ingress gateway. TLS passthrough
// (model.PassthroughRoute): the
// gateway reads a connection's ClientHello for its server name, and a
// route naming it gets the whole connection, the ClientHello replayed
// first, untouched; the backend terminates TLS. TCP (model.TCPRoute): every
// connection of the port goes to the route's destinations.

// maxClientHello bounds what is read of a connection before its server
// name is known (a ClientHello fits in one 16 KiB record, or a few).
const maxClientHello = 64 << 10

// errPeeked stops the handshake once the ClientHello is read.
var errPeeked = errors.New("client hello read")

// PeekServerName reads c's TLS ClientHello, within timeout, and returns its
// server name ("" when it names none) and c as whoever serves the
// connection next must read it: the bytes read so far first. Anything but a
// TLS handshake is an error.
func PeekServerName(c net.Conn, timeout time.Duration) (string, net.Conn, error) {
	rec := &recordingConn{Conn: c}
	_ = c.SetReadDeadline(time.Now().Add(timeout))
	defer c.SetReadDeadline(time.Time{})
	name, seen := "", false
	err := tls.Server(rec, &tls.Config{GetConfigForClient: func(h *tls.ClientHelloInfo) (*tls.Config, error) {
		name, seen = h.ServerName, true
		return nil, errPeeked
	}}).Handshake()
	if !seen {
		return "", nil, fmt.Errorf("no TLS ClientHello: %w", err)
	}
	// The bytes read are replayed by the conn type the protocol sniffing
	// already uses: a bufio.Reader holding them, then the conn itself.
	r := bufio.NewReaderSize(bytes.NewReader(rec.buf), len(rec.buf))
	_, _ = r.Peek(len(rec.buf))
	return name, &peekedConn{Conn: c, r: r}, nil
}

// recordingConn keeps what is read, bounded, and drops what the TLS
// server would write (its alert after the peek).
type recordingConn struct {
	net.Conn
	buf []byte
}

func (r *recordingConn) Read(b []byte) (int, error) {
	room := maxClientHello - len(r.buf)
	if room <= 0 {
		return 0, errors.New("client hello too large")
	}
	n, err := r.Conn.Read(b[:min(len(b), room)])
	r.buf = append(r.buf, b[:n]...)
	return n, err
}

func (r *recordingConn) Write(b []byte) (int, error) { return len(b), nil }

// PassthroughMatch is how well the best passthrough route of the
// listener on port matches server name sni (model.PassthroughRoute's
// MatchSNI): 0 when none does.
func (p *Proxy) PassthroughMatch(port uint32, sni string) int {
	_, score := p.cfg.Load().passthroughRoute(port, sni)
	return score
}

func (c *compiled) passthroughRoute(port uint32, sni string) (*model.PassthroughRoute, int) {
	return bestPassthrough(c.passthrough[port], sni)
}

// bestPassthrough is the route of routes that claims server name sni most
// specifically, with its score (model.PassthroughRoute.MatchSNI); nil, 0
// for none.
func bestPassthrough(routes []model.PassthroughRoute, sni string) (*model.PassthroughRoute, int) {
	var best *model.PassthroughRoute
	score := 0
	for i := range routes {
		if s := routes[i].MatchSNI(sni); s > score {
			best, score = &routes[i], s
		}
	}
	return best, score
}

// ForwardPassthrough relays c (as PeekServerName returned it, server name
// sni) to a destination of the best passthrough route of the listener on
// port, by weight; with none, or when the policies deny it (allowL4), c is
// closed.
func (p *Proxy) ForwardPassthrough(ctx context.Context, c net.Conn, port uint32, sni string) {
	defer c.Close()
	cfg := p.cfg.Load()
	r, _ := cfg.passthroughRoute(port, sni)
	if r == nil {
		p.logf("waypoint: tls passthrough on port %d: no route for server name %q", port, sni)
		return
	}
	p.forwardRoute(ctx, c, cfg, p.connPeer(c), r.Name, r.Destinations)
}

// forwardRoute relays c to one of a whole-connection route's destinations,
// by weight, once the policies allow it (allowL4).
func (p *Proxy) forwardRoute(ctx context.Context, c net.Conn, cfg *compiled, peer Peer, route string, ds []model.WeightedDestination) {
	if !p.allowL4(ctx, cfg, peer) {
		return
	}
	if up := p.routeUpstream(cfg, route, ds); up != nil {
		p.relay(ctx, c, up, peer, route)
	}
}

// ServeTCP forwards every connection of l, the listener on port, to the
// destinations of that listener's tcp route, by weight, until ctx ends or
// l is closed; a connection while the config has no such route, or one
// the policies deny (allowL4), is closed. When ctx ends, l is closed and
// the connections being relayed get drain to finish, as a rolling update
// drains a gateway, before they are cut; ServeTCP returns once they are
// all done.
func (p *Proxy) ServeTCP(ctx context.Context, l net.Listener, port uint32, drain time.Duration) error {
	stop := context.AfterFunc(ctx, func() { l.Close() })
	defer stop()
	relays, cut := context.WithCancel(context.WithoutCancel(ctx))
	defer cut()
	var wg sync.WaitGroup
	defer func() {
		done := make(chan struct{})
		go func() { wg.Wait(); close(done) }()
		t := time.NewTimer(drain)
		defer t.Stop()
		select {
		case <-done:
		case <-t.C:
			cut()
			<-done
		}
	}()
	for {
		c, err := l.Accept()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			return err
		}
		wg.Go(func() {
			defer c.Close()
			cfg := p.cfg.Load()
			peer := p.connPeer(c)
			var r *model.TCPRoute
			if l := cfg.tcpRoutes[port]; l != nil {
				r = pickTCP(l.TCPMatched, l.TCP, &peer)
			}
			if r == nil {
				p.logf("waypoint: tcp on port %d: no tcp route", port)
				return
			}
			p.forwardRoute(relays, c, cfg, peer, r.Name, r.Destinations)
		})
	}
}

// routeUpstream picks one of a whole-connection route's destinations by
// weight: its cluster's (or subset's) upstream; nil, reported, when that is
// not defined.
func (p *Proxy) routeUpstream(cfg *compiled, route string, ds []model.WeightedDestination) *upstream {
	var total uint64
	for _, d := range ds {
		total += uint64(d.Weight)
	}
	d := ds[len(ds)-1]
	if total > 0 {
		n := rand.Uint64N(total)
		for _, x := range ds {
			if n < uint64(x.Weight) {
				d = x
				break
			}
			n -= uint64(x.Weight)
		}
	}
	cl := cfg.clusters[d.Cluster]
	if cl == nil {
		return nil // validated: not reached
	}
	if d.Subset == "" {
		return cl.all
	}
	up := cl.subsets[d.Subset]
	if up == nil {
		p.logf("waypoint: route %s: subset %q of %s is not defined", route, d.Subset, d.Cluster)
	}
	return up
}
