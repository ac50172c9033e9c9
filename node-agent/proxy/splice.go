package proxy

import (
	"io"
	"net"
	"sync"

	"github.com/meshlet/meshlet/pkg/hbone"
	"github.com/meshlet/meshlet/pkg/rawsock"
)

// splice copies both ways between the downstream (client side) and upstream
// connections until both directions end, counting bytes as they pass, then
// closes both and returns the bytes each way (zero when c is nil). A
// direction that ends half-closes the other side's write.
func splice(down, up io.ReadWriteCloser, c *connCounters) byteCounts {
	var recv, sent counter
	var recvN, sentN *int64
	if c != nil {
		recv, sent = c.received, c.sent
		recvN, sentN = &c.bytes.received, &c.bytes.sent
	}
	// Socket reads and writes without the scheduler's system-call
	// hand-off (see package rawsock); other streams are left as they are.
	down, up = rawIO(down), rawIO(up)
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		copyCounted(up, down, recv, recvN)
		closeWrite(up)
	}()
	copyCounted(down, up, sent, sentN)
	closeWrite(down)
	wg.Wait()
	down.Close()
	up.Close()
	if c == nil {
		return byteCounts{}
	}
	c.closed.Add(1)
	return c.bytes
}

var bufPool = sync.Pool{New: func() any { b := make([]byte, 32<<10); return &b }}

// copyCounted is io.Copy that adds each chunk to ctr as it is written, so
// long connections show their bytes before they end. A connection waiting
// for data holds no copy buffer when src is a socket (the buffer is taken
// once it is readable) or an HBONE stream (it writes its received chunks
// itself): idle keep-alive connections, most of a node's, cost none.
func copyCounted(dst io.Writer, src io.Reader, ctr counter, total *int64) {
	cw := countingWriter{dst, ctr, total}
	switch s := src.(type) {
	case *rawsock.Conn: // before io.WriterTo, which it also is
		// Without a read that finds the socket empty after each chunk
		// (see ReadEach): on a keep-alive connection, one system call per
		// request less.
		_ = s.ReadEach(&bufPool, func(b []byte) error {
			_, err := cw.Write(b)
			return err
		})
	case io.WriterTo:
		if _, ok := dst.(hbone.TryWriter); ok {
			// An HBONE stream's reader then writes to dst itself.
			_, _ = s.WriteTo(countingTryWriter{cw})
			return
		}
		_, _ = s.WriteTo(cw)
	default:
		bp := bufPool.Get().(*[]byte)
		defer bufPool.Put(bp)
		_, _ = io.CopyBuffer(cw, src, *bp)
	}
}

// countingWriter adds what it writes to ctr and total (when set; total
// lives in the connection's connCounters, so counting allocates nothing).
type countingWriter struct {
	w     io.Writer
	ctr   counter
	total *int64
}

func (c countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.count(n)
	return n, err
}

func (c countingWriter) count(n int) {
	if c.ctr != nil && n > 0 {
		c.ctr.Add(float64(n))
		*c.total += int64(n)
	}
}

// Writev hands bufs to w in one writev when w can (rawsock.Conn), counting
// what it wrote.
func (c countingWriter) Writev(bufs [][]byte) (int, error) {
	vw, ok := c.w.(hbone.VectorWriter)
	if !ok {
		total := 0
		for _, b := range bufs {
			n, err := c.Write(b)
			total += n
			if err != nil {
				return total, err
			}
		}
		return total, nil
	}
	n, err := vw.Writev(bufs)
	c.count(n)
	return n, err
}

// countingTryWriter is a countingWriter whose writer has TryWrite.
type countingTryWriter struct{ countingWriter }

func (c countingTryWriter) TryWrite(p []byte) (int, error) {
	n, err := c.w.(hbone.TryWriter).TryWrite(p)
	c.count(n)
	return n, err
}

// countedConn is a connection whose reads count as received and writes as
// sent, for a connection the proxy hands to someone else (Options.DNS).
type countedConn struct {
	net.Conn
	cc *connCounters
}

// countConn counts c's bytes in cc; c itself when cc is nil.
func countConn(c net.Conn, cc *connCounters) net.Conn {
	if cc == nil {
		return c
	}
	return &countedConn{Conn: c, cc: cc}
}

func (c *countedConn) Read(b []byte) (int, error) {
	n, err := c.Conn.Read(b)
	if n > 0 {
		c.cc.received.Add(float64(n))
		c.cc.bytes.received += int64(n)
	}
	return n, err
}

func (c *countedConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	if n > 0 {
		c.cc.sent.Add(float64(n))
		c.cc.bytes.sent += int64(n)
	}
	return n, err
}

func rawIO(c io.ReadWriteCloser) io.ReadWriteCloser {
	if nc, ok := c.(net.Conn); ok {
		return rawsock.Wrap(nc)
	}
	return c
}

func closeWrite(c io.ReadWriteCloser) {
	if cw, ok := c.(interface{ CloseWrite() error }); ok {
		_ = cw.CloseWrite()
	}
}

// reset closes c with an RST instead of a FIN where c is TCP, so a refused
// client sees a reset, never a served or half-served connection.
func reset(c io.Closer) {
	if t, ok := c.(*net.TCPConn); ok {
		_ = t.SetLinger(0)
	}
	c.Close()
}
