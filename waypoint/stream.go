package waypoint

import (
	"context"
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"sync/atomic"
	"time"
)

// ConnListener is a net.Listener fed by Push, for transports that produce
// connections from a handler instead of listening: an HBONE server's CONNECT
// streams become connections that Serve handles like accepted sockets.
type ConnListener struct {
	addr  net.Addr
	conns chan net.Conn
	done  chan struct{}
	once  sync.Once
}

// NewConnListener returns a listener whose Addr is addr.
func NewConnListener(addr net.Addr) *ConnListener {
	return &ConnListener{addr: addr, conns: make(chan net.Conn), done: make(chan struct{})}
}

// ErrListenerClosed is returned by Push after Close.
var ErrListenerClosed = errors.New("waypoint: listener closed")

// Push hands c to Serve, waiting until it is accepted, ctx ends or the
// listener is closed.
func (l *ConnListener) Push(ctx context.Context, c net.Conn) error {
	select {
	case l.conns <- c:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	case <-l.done:
		return ErrListenerClosed
	}
}

// Accept implements net.Listener.
func (l *ConnListener) Accept() (net.Conn, error) {
	select {
	case c := <-l.conns:
		return c, nil
	case <-l.done:
		return nil, net.ErrClosed
	}
}

// Close implements net.Listener.
func (l *ConnListener) Close() error {
	l.once.Do(func() { close(l.done) })
	return nil
}

// Addr implements net.Listener.
func (l *ConnListener) Addr() net.Addr { return l.addr }

// StreamConn adapts a duplex byte stream (an HBONE CONNECT stream) to a
// net.Conn. Such streams have no deadlines of their own, so reads go
// through a pump goroutine and SetReadDeadline is honoured (net/http and the
// protocol detection rely on it); write deadlines are ignored.
type StreamConn struct {
	rw            io.ReadWriteCloser
	local, remote net.Addr
	// Meta is the transport's own data about the stream (e.g. the verified
	// peer identity), for a Peer or ConnPeer hook to read.
	Meta any
	// memo is what a hook derived from Meta, kept for the stream's next
	// requests (Memo, SetMemo).
	memo atomic.Value

	once   sync.Once
	closed chan struct{}
	data   chan []byte // chunks read by the pump; closed at the end
	pumped sync.Once

	mu       sync.Mutex
	pending  []byte
	rerr     error
	deadline time.Time
	changed  chan struct{} // closed when the read deadline changes
}

// Memo returns what SetMemo last kept, nil before.
func (c *StreamConn) Memo() any { return c.memo.Load() }

// SetMemo keeps v with the stream, for a Peer or ConnPeer hook that derives
// the same value from Meta for every request on it (HTTP/2 streams' requests
// run concurrently: v is replaced whole, never changed in place). Every v
// must be of one type.
func (c *StreamConn) SetMemo(v any) { c.memo.Store(v) }

// NewStreamConn wraps rw; local is the address the client dialled (the
// original destination) and remote the client's address.
func NewStreamConn(rw io.ReadWriteCloser, local, remote net.Addr, meta any) *StreamConn {
	return &StreamConn{rw: rw, local: local, remote: remote, Meta: meta,
		closed: make(chan struct{}), data: make(chan []byte), changed: make(chan struct{})}
}

// Done is closed when the proxy (or anyone) closes the connection; a
// transport handler waits on it before ending the stream.
func (c *StreamConn) Done() <-chan struct{} { return c.closed }

// pump reads the stream in its own goroutine so that Read can time out.
func (c *StreamConn) pump() {
	defer close(c.data)
	for {
		buf := make([]byte, 32<<10)
		n, err := c.rw.Read(buf)
		if n > 0 {
			select {
			case c.data <- buf[:n]:
			case <-c.closed:
				return
			}
		}
		if err != nil {
			c.mu.Lock()
			c.rerr = err
			c.mu.Unlock()
			return
		}
	}
}

// Read implements net.Conn, honouring the read deadline.
func (c *StreamConn) Read(b []byte) (int, error) {
	c.pumped.Do(func() { go c.pump() })
	for {
		c.mu.Lock()
		if len(c.pending) > 0 {
			n := copy(b, c.pending)
			c.pending = c.pending[n:]
			c.mu.Unlock()
			return n, nil
		}
		deadline, changed := c.deadline, c.changed
		c.mu.Unlock()
		var timeout <-chan time.Time
		var timer *time.Timer
		if !deadline.IsZero() {
			d := time.Until(deadline)
			if d <= 0 {
				return 0, os.ErrDeadlineExceeded
			}
			timer = time.NewTimer(d)
			timeout = timer.C
		}
		stop := func() {
			if timer != nil {
				timer.Stop()
			}
		}
		select {
		case chunk, ok := <-c.data:
			stop()
			if !ok {
				c.mu.Lock()
				err := c.rerr
				c.mu.Unlock()
				if err == nil {
					err = io.EOF
				}
				return 0, err
			}
			c.mu.Lock()
			c.pending = chunk
			c.mu.Unlock()
		case <-timeout:
			return 0, os.ErrDeadlineExceeded
		case <-changed:
			stop()
		case <-c.closed:
			stop()
			return 0, net.ErrClosed
		}
	}
}

// Write implements net.Conn.
func (c *StreamConn) Write(b []byte) (int, error) { return c.rw.Write(b) }

// Close closes the stream and Done.
func (c *StreamConn) Close() error {
	err := net.ErrClosed
	c.once.Do(func() {
		close(c.closed)
		err = c.rw.Close()
	})
	return err
}

// CloseWrite half-closes when the stream supports it.
func (c *StreamConn) CloseWrite() error {
	if cw, ok := c.rw.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return errors.New("stream does not support half-close")
}

// LocalAddr is the original destination.
func (c *StreamConn) LocalAddr() net.Addr { return c.local }

// RemoteAddr is the client's address.
func (c *StreamConn) RemoteAddr() net.Addr { return c.remote }

// SetDeadline sets the read deadline (write deadlines are ignored).
func (c *StreamConn) SetDeadline(t time.Time) error { return c.SetReadDeadline(t) }

// SetReadDeadline makes pending and future Reads fail with
// os.ErrDeadlineExceeded after t; zero means no deadline.
func (c *StreamConn) SetReadDeadline(t time.Time) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.deadline = t
	close(c.changed)
	c.changed = make(chan struct{})
	return nil
}

// SetWriteDeadline is ignored: writes end when the stream does.
func (c *StreamConn) SetWriteDeadline(time.Time) error { return nil }
