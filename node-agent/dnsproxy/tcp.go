package dnsproxy

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"os"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// Why ServeTCP closes a connection.
var (
	errBadLength = errors.New("message length 0 or over the bound")
	errMalformed = errors.New("malformed query")
)

// ServeTCP serves one DNS-over-TCP connection the pod opened to the
// resolver orig, as RFC 7766 asks: messages framed with a two-byte length
// (RFC 1035 §4.2.2), any number of queries, pipelined ones answered as each
// completes (maybe out of order; each answer carries its query's ID). Names
// the mesh knows are answered as over UDP but with every address; the rest
// are forwarded over TCP to orig from the pod's netns with Options.Mark
// (one upstream connection, opened at the first such query) and the answer
// to the query's ID comes back unchanged. When orig may not be forwarded to
// (see forwardable) or the server has no Mark, they go to Options.Upstream
// from the agent's netns instead.
//
// The connection is closed after IdleTimeout without a query (none in
// flight), at a message length of 0 or over 4096 (a query is no longer), at
// a malformed query, when a query or an answer takes longer than Timeout
// to pass, and by Close. At most MaxPipelined forwarded queries are in
// flight; beyond them the connection is not read. ServeTCP owns c and
// returns once it is closed.
func (s *Server) ServeTCP(c net.Conn, orig netip.AddrPort) {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		c.Close()
		return
	}
	s.tcp[c] = struct{}{}
	s.wg.Add(1)
	s.mu.Unlock()
	defer func() {
		s.mu.Lock()
		delete(s.tcp, c)
		s.mu.Unlock()
		s.wg.Done()
	}()
	t := &tcpSession{
		s:     s,
		c:     c,
		up:    &tcpUpstream{s: s, orig: orig, pending: map[uint16]chan []byte{}},
		slots: make(chan struct{}, s.opts.MaxPipelined),
	}
	// A client that breaks the protocol is not reported: the UDP path
	// drops garbage silently too, and a pod must not fill the agent's log.
	if err := t.readQueries(); errors.Is(err, io.EOF) {
		// The client has sent all it will: answer what it asked first.
		t.wg.Wait()
	}
	c.Close()
	t.up.close() // what still waits on the upstream fails now
	t.wg.Wait()
}

// tcpSession is one client connection that ServeTCP serves.
type tcpSession struct {
	s        *Server
	c        net.Conn
	up       *tcpUpstream
	slots    chan struct{}  // one per forwarded query in flight
	inflight atomic.Int32   // forwarded queries not yet answered
	wg       sync.WaitGroup // the goroutines of forwarded queries
	wmu      sync.Mutex     // one answer written at a time
}

// readQueries reads queries until the connection ends (io.EOF when the
// client closed it between two messages) or is to be closed, answering
// those the mesh knows at once and forwarding the others on goroutines of
// their own.
func (t *tcpSession) readQueries() error {
	s := t.s
	var hdr [2]byte
	for {
		_ = t.c.SetReadDeadline(time.Now().Add(s.opts.IdleTimeout))
		n, err := io.ReadFull(t.c, hdr[:])
		if n == 0 && errors.Is(err, os.ErrDeadlineExceeded) && t.inflight.Load() > 0 {
			continue // not idle: waiting for answers
		}
		if err != nil {
			return err
		}
		size := int(binary.BigEndian.Uint16(hdr[:]))
		if size == 0 || size > maxMessage {
			return fmt.Errorf("%w: %d", errBadLength, size)
		}
		q := make([]byte, size)
		_ = t.c.SetReadDeadline(time.Now().Add(s.opts.Timeout))
		if _, err := io.ReadFull(t.c, q); err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF // within a message
			}
			return err
		}
		if !wellFormed(q) {
			return errMalformed // never passed on, never answered
		}
		if a, ok := s.local(q, overTCP); ok {
			if err := t.write(a); err != nil {
				return err
			}
			continue
		}
		t.slots <- struct{}{} // waits while MaxPipelined are in flight
		select {
		case s.sem <- struct{}{}:
		default:
			<-t.slots
			if a, ok := servfail(q); ok {
				if err := t.write(a); err != nil {
					return err
				}
			}
			continue
		}
		t.inflight.Add(1)
		t.wg.Add(1)
		go t.forward(q)
	}
}

// forward answers q with the upstream's answer, or SERVFAIL when there is
// none.
func (t *tcpSession) forward(q []byte) {
	defer t.wg.Done()
	defer t.inflight.Add(-1)
	defer func() { <-t.slots; <-t.s.sem }()
	a, err := t.up.exchange(q)
	if err != nil {
		t.s.opts.Errorf("dns proxy: forward over tcp: %v", err)
		var ok bool
		if a, ok = servfail(q); !ok {
			return
		}
	}
	_ = t.write(a)
}

// write sends one message with its length; a failure closes the
// connection, which ends readQueries.
func (t *tcpSession) write(m []byte) error {
	t.wmu.Lock()
	defer t.wmu.Unlock()
	_ = t.c.SetWriteDeadline(time.Now().Add(t.s.opts.Timeout))
	if _, err := t.c.Write(frame(m)); err != nil {
		t.c.Close()
		return err
	}
	return nil
}

// frame returns m with its two-byte length in front (m is at most
// maxTCPMessage bytes).
func frame(m []byte) []byte {
	out := make([]byte, 2+len(m))
	binary.BigEndian.PutUint16(out, uint16(len(m)))
	copy(out[2:], m)
	return out
}

// tcpUpstream is the TCP connection to the resolver that one client
// connection's forwarded queries share, pipelined: each answer goes to the
// query with its ID. It is dialled at the first query and again after the
// resolver closed it.
type tcpUpstream struct {
	s    *Server
	orig netip.AddrPort // the resolver the pod dialled

	mu      sync.Mutex
	c       net.Conn               // nil until dialled, or after it ended
	pending map[uint16]chan []byte // by query ID; closed when c ends
	closed  bool                   // the client connection is done
	readers sync.WaitGroup         // readAnswers of each c
}

// exchange sends q to the resolver and returns its answer, within Timeout.
func (u *tcpUpstream) exchange(q []byte) ([]byte, error) {
	deadline := time.Now().Add(u.s.opts.Timeout)
	id := binary.BigEndian.Uint16(q)
	ch := make(chan []byte, 1)
	u.mu.Lock()
	if u.closed {
		u.mu.Unlock()
		return nil, net.ErrClosed
	}
	if _, dup := u.pending[id]; dup {
		u.mu.Unlock()
		return nil, fmt.Errorf("query ID %#04x already in flight on this connection", id)
	}
	if u.c == nil {
		// Dialled holding mu: the connection's other queries wait for
		// this dial rather than open connections of their own.
		c, err := u.dial(deadline)
		if err != nil {
			u.mu.Unlock()
			return nil, err
		}
		u.c = c
		u.readers.Add(1)
		go u.readAnswers(c)
	}
	u.pending[id] = ch
	c := u.c
	_ = c.SetWriteDeadline(deadline)
	_, err := c.Write(frame(q))
	u.mu.Unlock()
	if err != nil {
		c.Close() // readAnswers fails what waits on it
		return nil, fmt.Errorf("send to %s: %w", c.RemoteAddr(), err)
	}
	timer := time.NewTimer(time.Until(deadline))
	defer timer.Stop()
	select {
	case a, ok := <-ch:
		if !ok {
			return nil, fmt.Errorf("%s closed the connection before answering", c.RemoteAddr())
		}
		return a, nil
	case <-timer.C:
		u.mu.Lock()
		if u.pending[id] == ch {
			delete(u.pending, id)
		}
		u.mu.Unlock()
		return nil, fmt.Errorf("no answer from %s in %v", c.RemoteAddr(), u.s.opts.Timeout)
	}
}

// dial connects to the resolver the pod dialled, from the pod's netns with
// the agent's mark so that the data path does not capture it again; to the
// upstream from the agent's netns when orig may not be forwarded to, or
// without a mark (the connection would come back to this proxy).
func (u *tcpUpstream) dial(deadline time.Time) (net.Conn, error) {
	ctx, cancel := context.WithDeadline(context.Background(), deadline)
	defer cancel()
	if forwardable(u.orig) && u.s.opts.Mark != 0 {
		return netns.Dial(ctx, u.s.opts.Netns, u.orig.String(), netns.DialOptions{Mark: u.s.opts.Mark})
	}
	up := u.s.opts.Upstream()
	if up == "" {
		return nil, errors.New("no upstream resolver known")
	}
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", up)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", up, err)
	}
	return c, nil
}

// readAnswers hands each answer read from c to the query with its ID (an
// answer to no query in flight is dropped) until c ends, then fails the
// queries still waiting: the next query dials again.
func (u *tcpUpstream) readAnswers(c net.Conn) {
	defer u.readers.Done()
	var hdr [2]byte
	for {
		if _, err := io.ReadFull(c, hdr[:]); err != nil {
			break
		}
		size := int(binary.BigEndian.Uint16(hdr[:]))
		if size < 2 {
			break // no ID: not an answer
		}
		a := make([]byte, size)
		if _, err := io.ReadFull(c, a); err != nil {
			break
		}
		u.mu.Lock()
		id := binary.BigEndian.Uint16(a)
		if ch, ok := u.pending[id]; ok {
			delete(u.pending, id)
			ch <- a
		}
		u.mu.Unlock()
	}
	c.Close()
	u.mu.Lock()
	if u.c == c {
		u.c = nil
		for id, ch := range u.pending {
			close(ch)
			delete(u.pending, id)
		}
	}
	u.mu.Unlock()
}

// close closes the upstream connection and waits for its reader.
func (u *tcpUpstream) close() {
	u.mu.Lock()
	u.closed = true
	c := u.c
	u.mu.Unlock()
	if c != nil {
		c.Close()
	}
	u.readers.Wait()
}
