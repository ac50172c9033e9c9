//go:build linux

package poller

import (
	"errors"
	"fmt"
	"net"
	"os"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Poller runs one goroutine that waits for every watched socket.
type Poller struct {
	ep *os.File // the epoll instance, in the runtime's netpoller
	rc syscall.RawConn

	mu      sync.Mutex
	watches map[int32]*Watch
	next    int32
	done    chan struct{}
}

// New starts a Poller. Close stops it.
func New() (*Poller, error) {
	fd, err := unix.EpollCreate1(unix.EPOLL_CLOEXEC)
	if err != nil {
		return nil, fmt.Errorf("poller: epoll_create1: %w", err)
	}
	// Non-blocking, so that os.NewFile registers it with the runtime's
	// netpoller: an epoll instance is readable while it has events.
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, fmt.Errorf("poller: set epoll fd non-blocking: %w", err)
	}
	ep := os.NewFile(uintptr(fd), "meshlet-poller")
	rc, err := ep.SyscallConn()
	if err != nil {
		ep.Close()
		return nil, fmt.Errorf("poller: %w", err)
	}
	p := &Poller{ep: ep, rc: rc, watches: map[int32]*Watch{}, done: make(chan struct{})}
	go p.run()
	return p, nil
}

var (
	sharedOnce sync.Once
	shared     *Poller
	sharedErr  error
)

// Shared returns the process's Poller, started at the first call and never
// stopped: the node agent needs one for all its pods, as the runtime has one
// netpoller for all its sockets.
func Shared() (*Poller, error) {
	sharedOnce.Do(func() { shared, sharedErr = New() })
	return shared, sharedErr
}

// Close stops the Poller: ready functions are not called any more. The
// watched sockets are not closed.
func (p *Poller) Close() error {
	err := p.ep.Close()
	<-p.done
	return err
}

func (p *Poller) run() {
	defer close(p.done)
	events := make([]unix.EpollEvent, 64)
	for {
		var n int
		var werr error
		err := p.rc.Read(func(fd uintptr) bool {
			n, werr = unix.EpollWait(int(fd), events, 0)
			if werr == unix.EINTR {
				n, werr = 0, nil
			}
			// Nothing ready: park until the runtime sees the epoll
			// instance readable. It is level-triggered inside, so a
			// socket not drained is reported again here, not lost.
			return n > 0 || werr != nil
		})
		if err != nil {
			return // closed
		}
		if werr != nil {
			// Only EBADF or EINVAL, neither possible on our own
			// instance while it is open; do not spin on it.
			time.Sleep(10 * time.Millisecond)
			continue
		}
		for _, ev := range events[:n] {
			p.mu.Lock()
			w := p.watches[ev.Fd]
			p.mu.Unlock()
			if w != nil {
				w.fire()
			}
		}
	}
}

// Watch is one socket the Poller waits for.
type Watch struct {
	p  *Poller
	id int32
	rc syscall.RawConn

	mu      sync.Mutex // held while ready runs: Stop waits for it
	stopped bool
	paused  bool
	ready   func(w *Watch) bool
}

// Watch calls ready on the Poller's goroutine whenever c is readable, until
// Stop. ready must not block: it reads through w.Read with a function that
// returns true (a non-blocking try), and it should read until EAGAIN (what
// it leaves is reported again at once). It returns false to stop watching,
// for instance when w.Read reports the socket closed.
func (p *Poller) Watch(c syscall.Conn, ready func(w *Watch) bool) (*Watch, error) {
	rc, err := c.SyscallConn()
	if err != nil {
		return nil, fmt.Errorf("poller: %w", err)
	}
	p.mu.Lock()
	p.next++
	w := &Watch{p: p, id: p.next, rc: rc, ready: ready}
	p.watches[w.id] = w
	p.mu.Unlock()
	if err := w.ctl(unix.EPOLL_CTL_ADD, unix.EPOLLIN); err != nil {
		p.forget(w.id)
		return nil, fmt.Errorf("poller: watch socket: %w", err)
	}
	return w, nil
}

// ctl changes the watch's registration in the epoll instance. The event's
// data is the watch's id, never the fd number: a closed socket's number may
// be reused by another before Stop forgets it.
func (w *Watch) ctl(op int, events uint32) error {
	var cerr error
	err := w.rc.Control(func(fd uintptr) {
		var pfd int
		perr := w.p.rc.Control(func(e uintptr) { pfd = int(e) })
		if perr != nil {
			cerr = perr
			return
		}
		cerr = unix.EpollCtl(pfd, op, int(fd), &unix.EpollEvent{Events: events, Fd: w.id})
	})
	return errors.Join(err, cerr)
}

func (p *Poller) forget(id int32) {
	p.mu.Lock()
	delete(p.watches, id)
	p.mu.Unlock()
}

func (w *Watch) fire() {
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.stopped || w.paused {
		return
	}
	if !w.ready(w) {
		w.stopLocked()
	}
}

// Read runs f on the socket's descriptor, as syscall.RawConn's Read: f
// returning true is a non-blocking try. Its error is the socket's being
// closed.
func (w *Watch) Read(f func(fd uintptr) bool) error { return w.rc.Read(f) }

// pause stops reporting the socket for d (a listener out of file
// descriptors would otherwise be reported ready again at once, and spin).
// Called from ready, on the Poller's goroutine.
func (w *Watch) pause(d time.Duration) {
	w.paused = true
	_ = w.ctl(unix.EPOLL_CTL_MOD, 0)
	time.AfterFunc(d, func() {
		w.mu.Lock()
		defer w.mu.Unlock()
		if w.stopped {
			return
		}
		w.paused = false
		_ = w.ctl(unix.EPOLL_CTL_MOD, unix.EPOLLIN)
	})
}

// Stop ends the watch. When it returns, ready is not running and will not be
// called again. The socket is not closed. Stop must not be called from
// ready (return false instead).
func (w *Watch) Stop() {
	w.mu.Lock()
	defer w.mu.Unlock()
	w.stopLocked()
}

func (w *Watch) stopLocked() {
	if w.stopped {
		return
	}
	w.stopped = true
	// Fails harmlessly when the socket is closed already: closing its only
	// descriptor took it out of the epoll instance.
	_ = w.ctl(unix.EPOLL_CTL_DEL, 0)
	w.p.forget(w.id)
}

// acceptBatch bounds the connections taken from one listener per wake-up,
// so that one busy pod does not hold up the others.
const acceptBatch = 64

// Listener is a TCP listener whose connections the Poller accepts.
type Listener struct {
	net.Listener
	w *Watch
}

// Accept starts accepting on ln, a TCP listener: accepted is called for
// every connection, on the Poller's goroutine, so it must not block: it
// takes the connection in (a server tracks it there) and starts a goroutine
// to serve it. Close the returned Listener (not ln) to stop: once its Close
// returns, every connection accepted on ln has been given to accepted and
// none will be again. Accepted connections get TCP_NODELAY and keep-alive
// as net.Listen's do.
func (p *Poller) Accept(ln net.Listener, accepted func(net.Conn)) (*Listener, error) {
	sc, ok := ln.(syscall.Conn)
	if !ok {
		return nil, fmt.Errorf("poller: listener %s (%T) has no socket", ln.Addr(), ln)
	}
	ready := func(w *Watch) bool {
		for range acceptBatch {
			var nfd int
			var aerr error
			// Control, not Read (a listener's RawConn refuses Read): the
			// socket is non-blocking, so this is a try.
			if err := w.rc.Control(func(fd uintptr) {
				nfd, _, aerr = unix.Accept4(int(fd), unix.SOCK_NONBLOCK|unix.SOCK_CLOEXEC)
			}); err != nil {
				return false // ln closed
			}
			switch {
			case aerr == nil:
			case errors.Is(aerr, unix.EAGAIN):
				return true
			case errors.Is(aerr, unix.EINTR), errors.Is(aerr, unix.ECONNABORTED):
				continue
			default:
				// Out of descriptors or memory: try again shortly, as
				// net/http's accept loop does, rather than spin.
				w.pause(50 * time.Millisecond)
				return true
			}
			c, err := fileConn(nfd)
			if err != nil {
				continue // a connection reset before we got to it
			}
			accepted(c)
		}
		return true
	}
	w, err := p.Watch(sc, ready)
	if err != nil {
		return nil, err
	}
	return &Listener{Listener: ln, w: w}, nil
}

// Close stops accepting and closes the listener.
func (l *Listener) Close() error {
	l.w.Stop()
	return l.Listener.Close()
}

// fileConn makes a net.Conn of an accepted socket. net.FileConn takes a
// duplicate and registers it with the runtime (with TCP_NODELAY and
// keep-alive after 15 s idle, as net.Listen's accepted connections get); the
// original is closed.
func fileConn(fd int) (net.Conn, error) {
	f := os.NewFile(uintptr(fd), "")
	c, err := net.FileConn(f)
	f.Close()
	return c, err
}
