package waypoint

import (
	"errors"
	"io"
	"net"
	"os"
	"sync"
	"syscall"
	"unsafe"
)

// rawIOConn is a TCP connection whose reads and writes are made with
// syscall.RawSyscall on its non-blocking socket, inside the poller's
// RawConn.Read and Write (so deadlines, closing and the wait for readiness
// are net's, as for TCPConn.Read and Write).
//
// Why: Go's own reads and writes enter the scheduler's syscall state, and on
// a waypoint running on one P that costs more than the system calls
// themselves. The first system call after the process was idle wakes the
// runtime's monitor thread (sysmon), which then polls every 20µs; and a
// write that wakes its peer on loopback is often descheduled in the
// kernel long enough for sysmon to take the P from it and start another
// thread for it. With GOMAXPROCS=1 that is context switches and thread
// hand-offs on every few requests, about a third of the waypoint's CPU in
// make bench-waypoint (perf). A non-blocking socket's read or write never
// blocks, so the scheduler loses nothing by not being told: the P runs on
// when the call returns.
type rawIOConn struct {
	*net.TCPConn
	rc syscall.RawConn

	rmu    sync.Mutex // one read at a time uses rbuf, rn, rerr
	rbuf   []byte
	rn     int
	rerr   error
	readFn func(uintptr) bool // c.read, bound once

	wmu     sync.Mutex
	wbuf    []byte
	wn      int
	werr    error
	writeFn func(uintptr) bool
}

// withRawIO returns c as a rawIOConn when it is a TCP connection, and c
// itself otherwise.
func withRawIO(c net.Conn) net.Conn {
	tc, ok := c.(*net.TCPConn)
	if !ok {
		return c
	}
	rc, err := tc.SyscallConn()
	if err != nil {
		return c
	}
	r := &rawIOConn{TCPConn: tc, rc: rc}
	r.readFn, r.writeFn = r.read, r.write
	return r
}

func (c *rawIOConn) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.rmu.Lock()
	c.rbuf, c.rn, c.rerr = p, 0, nil
	err := c.rc.Read(c.readFn)
	n, rerr := c.rn, c.rerr
	c.rbuf, c.rerr = nil, nil
	c.rmu.Unlock()
	if err != nil {
		return 0, c.opError("read", err)
	}
	if rerr != nil && rerr != io.EOF {
		rerr = c.opError("read", rerr)
	}
	return n, rerr
}

// read is one read(2) for Read; it reports false to wait for readability.
func (c *rawIOConn) read(fd uintptr) bool {
	for {
		n, _, e := syscall.RawSyscall(syscall.SYS_READ, fd, uintptr(unsafe.Pointer(&c.rbuf[0])), uintptr(len(c.rbuf)))
		switch e {
		case 0:
			c.rn = int(n)
			if n == 0 {
				c.rerr = io.EOF
			}
			return true
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.rerr = os.NewSyscallError("read", e)
		return true
	}
}

func (c *rawIOConn) Write(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	c.wmu.Lock()
	c.wbuf, c.wn, c.werr = p, 0, nil
	err := c.rc.Write(c.writeFn)
	n, werr := c.wn, c.werr
	c.wbuf, c.werr = nil, nil
	c.wmu.Unlock()
	if err == nil {
		err = werr
	}
	if err != nil {
		return n, c.opError("write", err)
	}
	return n, nil
}

// write writes what is left of wbuf; it reports false to wait for
// writability.
func (c *rawIOConn) write(fd uintptr) bool {
	for c.wn < len(c.wbuf) {
		b := c.wbuf[c.wn:]
		n, _, e := syscall.RawSyscall(syscall.SYS_WRITE, fd, uintptr(unsafe.Pointer(&b[0])), uintptr(len(b)))
		switch e {
		case 0:
			c.wn += int(n)
			continue
		case syscall.EINTR:
			continue
		case syscall.EAGAIN:
			return false
		}
		c.werr = os.NewSyscallError("write", e)
		return true
	}
	return true
}

// opError shapes err as TCPConn's Read and Write do.
func (c *rawIOConn) opError(op string, err error) error {
	var oe *net.OpError
	if errors.As(err, &oe) {
		e := *oe
		e.Op = op
		return &e
	}
	return &net.OpError{Op: op, Net: "tcp", Source: c.LocalAddr(), Addr: c.RemoteAddr(), Err: err}
}
