// Package rawsock reads and writes TCP sockets with raw system calls, so a
// proxy's many short socket calls do not each go through the Go
// scheduler's system-call bookkeeping.
//
// Why: the runtime's system monitor takes the processor away from a thread
// that has been in a system call for more than ~20µs and hands it to
// another thread (a futex wake-up, a spinning thread, and a second
// hand-back when the call returns). A write to a TCP socket runs the
// kernel's whole transmit path, often past 20µs on a loaded or virtualised
// node, so a proxy paid that hand-off on most writes: in the lab at 1000
// requests/s the system monitor alone was ~19% of the node agent's CPU.
// Go's sockets are non-blocking (the runtime's poller waits for them), so
// read and write never sleep in the kernel and need none of it: this
// package makes them with syscall.RawSyscall inside syscall.RawConn's
// Read and Write, which still wait on the poller when the socket is not
// ready and still honour deadlines and Close.
package rawsock

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// Conn is a *net.TCPConn whose Read and Write make raw system calls.
// Everything else (deadlines, CloseWrite, SetLinger, addresses) is the
// TCPConn's own.
type Conn struct {
	*net.TCPConn
	rc syscall.RawConn

	// The callbacks handed to rc and their arguments and results live in
	// the Conn, bound once in Wrap: a closure per call would allocate.
	// rmu and wmu keep concurrent Reads (Writes) off each other's fields.
	rmu, wmu         sync.Mutex
	readFn, writevFn func(fd uintptr) bool
	iov              []syscall.Iovec // what Write and Writev send, reused
	noWait           bool            // TryWrite: writev takes no wait
	rbuf             []byte
	rn, wn           int
	rerrno, werrno   syscall.Errno

	// ReadPooled's pool and the buffer taken from it.
	rpool *sync.Pool
	rbp   *[]byte

	// Between Hold and Release, Writes gather in held (from heldPool).
	holding bool
	held    *[]byte
}

// maxHeld bounds the bytes Hold gathers before they go out anyway.
const maxHeld = 256 << 10

var heldPool = sync.Pool{New: func() any { b := make([]byte, 0, 64<<10); return &b }}

// Wrap returns c as a *Conn when it is a *net.TCPConn, else c unchanged.
func Wrap(c net.Conn) net.Conn {
	if rc, ok := c.(*Conn); ok {
		return rc
	}
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	w := &Conn{TCPConn: tc, rc: rc}
	w.readFn, w.writevFn = w.read, w.writev
	return w
}

// Read reads from the socket, waiting on the runtime's poller while it has
// nothing to read. It returns io.EOF when the peer has closed its side.
func (c *Conn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rbuf = p
	n, err := c.readLocked()
	c.rbuf = nil
	return n, err
}

// ReadPooled is Read into a buffer taken from pool (a *[]byte of non-zero
// length) only once the socket is readable, so that a connection waiting
// for data holds no buffer: a proxy's idle keep-alive connections then cost
// no copy buffer each. It returns the buffer, for the caller to put back in
// pool when done with its first n bytes; on an error or io.EOF it returns
// none (the buffer is back in pool).
func (c *Conn) ReadPooled(pool *sync.Pool) (*[]byte, int, error) {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.rpool = pool
	n, err := c.readLocked()
	bp := c.rbp
	c.rpool, c.rbp, c.rbuf = nil, nil, nil
	if err != nil {
		if bp != nil {
			pool.Put(bp)
		}
		return nil, 0, err
	}
	return bp, n, nil
}

// readLocked reads into c.rbuf, or into a buffer from c.rpool (c.rbp),
// through the poller. c.rmu held.
func (c *Conn) readLocked() (int, error) {
	c.rn, c.rerrno = 0, 0
	err := c.rc.Read(c.readFn)
	n, errno := c.rn, c.rerrno
	if err == nil && errno != 0 {
		err = os.NewSyscallError("read", errno)
	}
	if err != nil {
		return 0, c.opError("read", err)
	}
	if n == 0 {
		return 0, io.EOF
	}
	return n, nil
}

// read is the RawConn callback of readLocked: false asks the poller to
// wait. Reading for ReadPooled, it takes the buffer from the pool here and
// gives it back before a wait.
func (c *Conn) read(fd uintptr) bool {
	if c.rbuf == nil {
		c.rbp = c.rpool.Get().(*[]byte)
		c.rbuf = *c.rbp
	}
	p := c.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			if c.rpool != nil {
				c.rpool.Put(c.rbp)
				c.rbp, c.rbuf = nil, nil
			}
			return false
		}
		c.rn, c.rerrno = int(r), e
		return true
	}
}

// Hold makes the Writes that follow gather into one buffer, sent by
// Release with one system call (or earlier, when maxHeld is reached).
//
// Why: a TLS connection writes each record (at most 16 KiB) with its own
// Write, and every write to a TCP socket runs the transmit path and wakes
// the reader on the other end; a proxy that frames 64 KiB at a time pays
// that four times over. Writes while held report success: an error comes
// from Release (or from a Write that had to send early).
func (c *Conn) Hold() {
	c.wmu.Lock()
	c.holding = true
	c.wmu.Unlock()
}

// Release ends Hold and sends what it gathered.
func (c *Conn) Release() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.holding = false
	return c.flushHeldLocked()
}

// flushHeldLocked sends the gathered bytes. c.wmu held.
func (c *Conn) flushHeldLocked() error {
	bp := c.held
	if bp == nil {
		return nil
	}
	c.held = nil
	_, err := c.writeLocked(*bp)
	*bp = (*bp)[:0]
	heldPool.Put(bp)
	return err
}

// Write writes all of p, waiting on the runtime's poller while the
// socket's send buffer is full; between Hold and Release it gathers p.
func (c *Conn) Write(p []byte) (int, error) {
	return c.write(p, true)
}

// write is Write, and TryWrite when wait is false: a full send buffer ends
// it with what went out and no error.
func (c *Conn) write(p []byte, wait bool) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if c.holding {
		return c.writeHeldLocked(p)
	}
	c.noWait = !wait
	n, err := c.writeLocked(p)
	c.noWait = false
	if !wait && errors.Is(err, io.ErrShortWrite) {
		err = nil
	}
	return n, err
}

// writeHeldLocked gathers p, sending what was gathered first when p would
// take it past maxHeld. c.wmu held.
func (c *Conn) writeHeldLocked(p []byte) (int, error) {
	if c.held != nil && len(*c.held)+len(p) > maxHeld {
		if err := c.flushHeldLocked(); err != nil {
			return 0, err
		}
	}
	if len(p) >= maxHeld {
		return c.writeLocked(p)
	}
	if c.held == nil {
		c.held = heldPool.Get().(*[]byte)
	}
	*c.held = append(*c.held, p...)
	return len(p), nil
}

// writeLocked writes all of p. c.wmu held.
func (c *Conn) writeLocked(p []byte) (int, error) {
	c.iov = append(c.iov[:0], iovec(p))
	return c.sendIovLocked(len(p))
}

// TryWrite writes what of p the socket's send buffer takes now and returns
// at once: n < len(p) with a nil error says the buffer is full, and the
// rest is the caller's to write later (with Write, which waits). Between
// Hold and Release it gathers p, as Write does.
//
// Why: a proxy whose reader goroutine has bytes for a connection nobody is
// writing to can write them itself instead of waking a copier goroutine
// for them (hbone's stream WriteTo), as long as it never waits on a slow
// receiver while other streams wait behind it.
func (c *Conn) TryWrite(p []byte) (int, error) { return c.write(p, false) }

func iovec(b []byte) syscall.Iovec {
	v := syscall.Iovec{Base: &b[0]}
	v.SetLen(len(b))
	return v
}

// maxIovecs bounds the buffers one writev takes (the kernel's UIO_MAXIOV
// is 1024).
const maxIovecs = 64

// Writev writes all of bufs with as few system calls as the socket's send
// buffer allows (writev), in order: a proxy that holds received data in
// chunks hands them over together instead of one write, and one wake-up of
// the reader, each. Between Hold and Release the bytes are gathered as
// Write's are.
func (c *Conn) Writev(bufs [][]byte) (int, error) {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	total := 0
	if c.holding {
		for _, b := range bufs {
			n, err := c.writeHeldLocked(b)
			total += n
			if err != nil {
				return total, err
			}
		}
		return total, nil
	}
	for len(bufs) > 0 {
		batch := bufs[:min(len(bufs), maxIovecs)]
		bufs = bufs[len(batch):]
		c.iov = c.iov[:0]
		want := 0
		for _, b := range batch {
			if len(b) > 0 {
				c.iov = append(c.iov, iovec(b))
				want += len(b)
			}
		}
		if want == 0 {
			continue
		}
		done, err := c.sendIovLocked(want)
		total += done
		if err != nil {
			return total, err
		}
	}
	return total, nil
}

// sendIovLocked writes c.iov (want bytes in all), waiting on the poller
// while the send buffer is full. c.wmu held.
func (c *Conn) sendIovLocked(want int) (int, error) {
	all := c.iov // writev drops from the front of c.iov as it goes
	c.wn, c.werrno = 0, 0
	err := c.rc.Write(c.writevFn)
	done, errno := c.wn, c.werrno
	clear(all) // hold no caller's buffer
	c.iov = all[:0]
	switch {
	case err != nil:
	case errno != 0:
		err = os.NewSyscallError("write", errno)
	case done < want:
		err = io.ErrShortWrite
	}
	if err != nil {
		return done, c.opError("write", err)
	}
	return done, nil
}

// writev is the RawConn callback of Write and Writev: it writes c.iov, dropping what
// went out from its front after a partial write; false asks the poller to
// wait for room in the send buffer (never for TryWrite).
func (c *Conn) writev(fd uintptr) bool {
	for len(c.iov) > 0 {
		r, _, e := syscall.RawSyscall(syscall.SYS_WRITEV, fd, uintptr(unsafe.Pointer(&c.iov[0])), uintptr(len(c.iov)))
		switch e {
		case 0:
			if r == 0 { // not seen on a socket; never spin on it
				return true
			}
			c.wn += int(r)
			c.advanceIov(int(r))
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return c.noWait
		}
		c.werrno = e
		return true
	}
	return true
}

// advanceIov drops n written bytes from the front of c.iov.
func (c *Conn) advanceIov(n int) {
	for n > 0 && len(c.iov) > 0 {
		l := int(c.iov[0].Len)
		if n < l {
			c.iov[0].Base = (*byte)(unsafe.Add(unsafe.Pointer(c.iov[0].Base), n))
			c.iov[0].SetLen(l - n)
			return
		}
		n -= l
		c.iov = c.iov[1:]
	}
}

// ReadFrom and WriteTo copy through Read and Write: without them, io.Copy
// would find the embedded TCPConn's and bypass this Conn.
func (c *Conn) ReadFrom(r io.Reader) (int64, error) { return io.Copy(writerOnly{c}, r) }

// WriteTo: see ReadFrom.
func (c *Conn) WriteTo(w io.Writer) (int64, error) { return io.Copy(w, readerOnly{c}) }

type writerOnly struct{ io.Writer }
type readerOnly struct{ io.Reader }

// opError wraps err as package net does, so callers' checks (net.Error's
// Timeout, errors.Is(err, net.ErrClosed), os.ErrDeadlineExceeded) hold.
func (c *Conn) opError(op string, err error) error {
	if errors.Is(err, io.EOF) {
		return err
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
