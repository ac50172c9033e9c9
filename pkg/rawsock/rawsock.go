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

	// ReadEach's pool and the buffer taken from it.
	rpool *sync.Pool
	rbp   *[]byte

	// ReadEach's callback and state; the recvmsg header, iovec and control
	// buffer it reads with.
	eachReadFn func(fd uintptr) bool
	eachFn     func([]byte) error
	eachErr    error
	inq        bool // TCP_INQ is on
	emptyReads int  // reads that found nothing (EAGAIN), for tests
	rmsg       syscall.Msghdr
	riov       syscall.Iovec
	rctl       [(syscall.SizeofCmsghdr + 8) / 8]uint64 // aligned for a Cmsghdr

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
	w.readFn, w.writevFn, w.eachReadFn = w.read, w.writev, w.eachRead
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

// readLocked reads into c.rbuf through the poller. c.rmu held.
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
// wait.
func (c *Conn) read(fd uintptr) bool {
	p := c.rbuf
	for {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		switch e {
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rn, c.rerrno = int(r), e
		return true
	}
}

// ReadEach reads the socket until its end, handing fn each chunk read, in
// a buffer from pool (a *[]byte of non-zero length) that the next read
// reuses: fn must not keep it, nor read from c. It returns nil at the
// peer's end of its side, fn's error when fn fails, or the read's. A
// connection waiting for data holds no buffer (it goes back to pool before
// each wait and is taken once the socket is readable), so a proxy's idle
// keep-alive connections cost no copy buffer each.
//
// Why: a loop of Reads asks the socket once more after each chunk and
// mostly finds it empty, one failing system call per chunk (per request,
// on a keep-alive connection) and the poller's wait after it. ReadEach
// asks the kernel with each read how much is left (TCP_INQ) and, when
// nothing is, waits for the poller's next readiness without that call.
// The wait spans one RawConn.Read, so a readiness that came in meanwhile
// is never lost (each RawConn.Read starts by forgetting it); and the kernel
// reports a received FIN as one byte left, so an end that came with the
// last data is read, not waited for. Where TCP_INQ cannot be set, every
// chunk is followed by a read, as Read does.
func (c *Conn) ReadEach(pool *sync.Pool, fn func([]byte) error) error {
	c.rmu.Lock()
	defer c.rmu.Unlock()
	c.inq = false
	if err := c.rc.Control(func(fd uintptr) {
		c.inq = useINQ && syscall.SetsockoptInt(int(fd), syscall.SOL_TCP, tcpINQ, 1) == nil
	}); err != nil {
		return c.opError("read", err)
	}
	c.rpool, c.eachFn, c.eachErr, c.rerrno = pool, fn, nil, 0
	err := c.rc.Read(c.eachReadFn)
	fnErr, errno := c.eachErr, c.rerrno
	if c.rbp != nil {
		pool.Put(c.rbp)
	}
	c.rpool, c.rbp, c.eachFn, c.eachErr = nil, nil, nil, nil
	switch {
	case fnErr != nil:
		return fnErr
	case err == nil && errno != 0:
		err = os.NewSyscallError("read", errno)
	}
	if err != nil {
		return c.opError("read", err)
	}
	return nil
}

// useINQ: ReadEach asks for TCP_INQ (tests turn it off to compare).
var useINQ = true

// tcpINQ is Linux's TCP_INQ socket option and the type of its control
// message (TCP_CM_INQ): the bytes left to read after a recvmsg.
const tcpINQ = 36

// eachRead is the RawConn callback of ReadEach: it reads until the socket
// is drained (false: the poller waits), ends, fails, or fn fails (true).
func (c *Conn) eachRead(fd uintptr) bool {
	for {
		if c.rbp == nil {
			c.rbp = c.rpool.Get().(*[]byte)
		}
		p := *c.rbp
		n, left, e := c.recvInq(fd, p)
		switch e {
		case 0:
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			c.emptyReads++
			c.rpool.Put(c.rbp)
			c.rbp = nil
			return false
		default:
			c.rerrno = e
			return true
		}
		if n == 0 {
			return true // the peer's FIN
		}
		if err := c.eachFn(p[:n]); err != nil {
			c.eachErr = err
			return true
		}
		if left == 0 {
			c.rpool.Put(c.rbp)
			c.rbp = nil
			return false
		}
	}
}

// recvInq reads into p and says how many bytes the socket has left: -1
// when unknown (no TCP_INQ), 1 or more after the peer's FIN.
func (c *Conn) recvInq(fd uintptr, p []byte) (n, left int, errno syscall.Errno) {
	if !c.inq {
		r, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
		return int(r), -1, e
	}
	c.riov = iovec(p)
	c.rmsg = syscall.Msghdr{Iov: &c.riov, Iovlen: 1, Control: (*byte)(unsafe.Pointer(&c.rctl[0]))}
	c.rmsg.SetControllen(int(unsafe.Sizeof(c.rctl)))
	r, _, e := syscall.RawSyscall(syscall.SYS_RECVMSG, fd, uintptr(unsafe.Pointer(&c.rmsg)), 0)
	if e != 0 {
		return 0, 0, e
	}
	left = -1
	if c.rmsg.Controllen >= syscall.SizeofCmsghdr+4 {
		h := (*syscall.Cmsghdr)(unsafe.Pointer(&c.rctl[0]))
		if h.Level == syscall.SOL_TCP && h.Type == tcpINQ {
			left = int(*(*int32)(unsafe.Add(unsafe.Pointer(&c.rctl[0]), syscall.SizeofCmsghdr)))
		}
	}
	return int(r), left, 0
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
