package rawsock

import (
	"bytes"
	"crypto/rand"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"runtime/debug"
	"sync"
	"syscall"
	"testing"
	"time"
)

// pair returns a wrapped client and the plain server end of a loopback TCP
// connection.
func pair(t *testing.T) (*Conn, *net.TCPConn) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			close(accepted)
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	s, ok := <-accepted
	if !ok {
		t.Fatal("accept failed")
	}
	t.Cleanup(func() { c.Close(); s.Close() })
	w, ok := Wrap(c).(*Conn)
	if !ok {
		t.Fatalf("Wrap(%T) did not wrap", c)
	}
	return w, s.(*net.TCPConn)
}

// Many megabytes each way, through full send buffers (the poller waits)
// and partial reads: what arrives is what was sent, in order.
func TestBulkBothWays(t *testing.T) {
	c, s := pair(t)
	data := make([]byte, 8<<20)
	rand.Read(data)

	errc := make(chan error, 2)
	go func() { _, err := c.Write(data); c.CloseWrite(); errc <- err }()
	go func() { _, err := io.Copy(s, s); s.CloseWrite(); errc <- err }() // the server echoes
	var got bytes.Buffer
	buf := make([]byte, 7001) // odd size: reads end mid-write
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("Read after %d bytes: %v", got.Len(), err)
		}
	}
	for range 2 {
		if err := <-errc; err != nil {
			t.Fatal(err)
		}
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatalf("echoed %d bytes differ from the %d sent", got.Len(), len(data))
	}
}

func TestReadDeadlineAndClose(t *testing.T) {
	c, _ := pair(t)
	c.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	_, err := c.Read(make([]byte, 10))
	var ne net.Error
	if !errors.As(err, &ne) || !ne.Timeout() || !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v; want a net.Error timeout wrapping os.ErrDeadlineExceeded", err)
	}
	c.SetReadDeadline(time.Time{})

	done := make(chan error, 1)
	go func() { _, err := c.Read(make([]byte, 10)); done <- err }()
	time.Sleep(20 * time.Millisecond)
	c.Close()
	select {
	case err := <-done:
		if !errors.Is(err, net.ErrClosed) {
			t.Fatalf("Read on a closed conn = %v; want net.ErrClosed", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Close did not unblock a waiting Read")
	}
}

func TestWriteToResetPeer(t *testing.T) {
	c, s := pair(t)
	s.SetLinger(0)
	s.Close() // RST
	time.Sleep(20 * time.Millisecond)
	var err error
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c.Write(make([]byte, 64<<10))
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("writing to a reset peer: %v; want a write *net.OpError", err)
	}
}

// io.Copy into and out of a Conn goes through its own Read and Write
// (ReadFrom/WriteTo), and the data is intact.
func TestCopyThrough(t *testing.T) {
	c, s := pair(t)
	data := make([]byte, 1<<20)
	rand.Read(data)
	go func() { c.ReadFrom(bytes.NewReader(data)); c.CloseWrite() }()
	var got bytes.Buffer
	if _, err := io.Copy(&got, s); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("ReadFrom delivered different bytes")
	}
	go func() { s.Write(data); s.CloseWrite() }()
	got.Reset()
	if _, err := c.WriteTo(&got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got.Bytes(), data) {
		t.Fatal("WriteTo delivered different bytes")
	}
}

func TestWrapLeavesOtherConnsAlone(t *testing.T) {
	a, b := net.Pipe()
	defer a.Close()
	defer b.Close()
	if Wrap(a) != a {
		t.Fatal("Wrap changed a non-TCP conn")
	}
	c, _ := pair(t)
	if Wrap(c) != net.Conn(c) {
		t.Fatal("Wrap wrapped a *Conn twice")
	}
}

// ReadPooled reads what was sent into a pooled buffer, and gives the
// buffer back while it waits: over many reads that each wait first, the
// pool makes one buffer (it would make one per wait if a waiting read kept
// its buffer). The end and a deadline come back as Read's do.
func TestReadEachPooledBuffer(t *testing.T) {
	if raceEnabled {
		t.Skip("pool counts mean nothing under the race detector (it drops pooled items at random)")
	}
	defer runtime.GOMAXPROCS(runtime.GOMAXPROCS(1))  // one P: one pool cache
	defer debug.SetGCPercent(debug.SetGCPercent(-1)) // no GC emptying the pool
	c, s := pair(t)
	made, held := 0, 0
	pool := &sync.Pool{New: func() any { made++; b := make([]byte, 64); return &b }}
	got := make(chan []byte)
	done := make(chan error, 1)
	go func() {
		done <- c.ReadEach(pool, func(b []byte) error { got <- append([]byte(nil), b...); return nil })
	}()
	for i := range 50 {
		time.Sleep(time.Millisecond) // the read waits on the poller...
		pool.Put(pool.Get())         // ...without the buffer: this takes it
		msg := []byte{byte(i), 'x'}
		if _, err := s.Write(msg); err != nil {
			t.Fatal(err)
		}
		if b := <-got; !bytes.Equal(b, msg) {
			t.Fatalf("read %d: %q; want %q", i, b, msg)
		}
	}
	s.CloseWrite()
	if err := <-done; err != nil {
		t.Errorf("at the peer's end: %v; want nil", err)
	}
	if made != 1 {
		t.Errorf("the pool made %d buffers for 50 reads that waited, taken in turn by the test; want 1 (a waiting read gives its buffer back)", made)
	}
	// Stopped by a deadline, it gives its buffer back too.
	c2, _ := pair(t)
	c2.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
	before := made
	if err := c2.ReadEach(pool, func([]byte) error { held++; return nil }); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Errorf("past the deadline: %v; want a deadline error", err)
	}
	if made != before || held != 0 {
		t.Errorf("past the deadline: %d buffers made, fn called %d times; want none", made-before, held)
	}
}

// Between Hold and Release, writes gather: the peer sees none of them until
// Release, then all of them in order, as one read when they fit in one.
// Past maxHeld they go out without waiting for Release.
func TestHoldGathersWrites(t *testing.T) {
	c, s := pair(t)
	c.Hold()
	for _, p := range []string{"one ", "two ", "three"} {
		if n, err := c.Write([]byte(p)); n != len(p) || err != nil {
			t.Fatalf("held Write(%q) = %d, %v", p, n, err)
		}
	}
	s.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	buf := make([]byte, 64)
	if n, err := s.Read(buf); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("the peer read %q (%v) before Release", buf[:n], err)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	s.SetReadDeadline(time.Now().Add(5 * time.Second))
	n, err := s.Read(buf)
	if err != nil || string(buf[:n]) != "one two three" {
		t.Fatalf("after Release the peer read %q, %v; want %q in one read", buf[:n], err, "one two three")
	}

	// Released: writes go straight out again.
	if _, err := c.Write([]byte("now")); err != nil {
		t.Fatal(err)
	}
	if n, err := s.Read(buf); err != nil || string(buf[:n]) != "now" {
		t.Fatalf("unheld write: the peer read %q, %v", buf[:n], err)
	}

	// More than maxHeld while held: the first part goes out before Release.
	big := make([]byte, maxHeld-10)
	rand.Read(big)
	c.Hold()
	if _, err := c.Write(big); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Write([]byte("0123456789 tail")); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(big))
	if _, err := io.ReadFull(s, got); err != nil || !bytes.Equal(got, big) {
		t.Fatalf("held past maxHeld: the first %d bytes did not arrive before Release (%v)", len(big), err)
	}
	if err := c.Release(); err != nil {
		t.Fatal(err)
	}
	tail := make([]byte, 15)
	if _, err := io.ReadFull(s, tail); err != nil || string(tail) != "0123456789 tail" {
		t.Fatalf("tail = %q, %v", tail, err)
	}
}

// A held write to a connection the peer reset fails at Release, and a
// Release with nothing held is a no-op.
func TestReleaseReportsWriteError(t *testing.T) {
	c, s := pair(t)
	if err := c.Release(); err != nil {
		t.Fatalf("Release with nothing held: %v", err)
	}
	s.SetLinger(0)
	s.Close()
	time.Sleep(50 * time.Millisecond) // the RST arrives
	var err error
	for i := 0; i < 3 && err == nil; i++ { // the first write may still pass
		c.Hold()
		c.Write([]byte("lost"))
		err = c.Release()
	}
	if err == nil {
		t.Fatal("Release to a reset connection reported no error")
	}
}

// Writev sends many buffers, more than one writev takes and more than the
// send buffer holds (partial writes, poller waits), and the peer gets them
// whole and in order; empty buffers are skipped.
func TestWritevInOrder(t *testing.T) {
	c, s := pair(t)
	data := make([]byte, 6<<20)
	rand.Read(data)
	var bufs [][]byte
	for off, i := 0, 0; off < len(data); i++ {
		n := min(1+(i*7919)%40000, len(data)-off) // uneven sizes
		bufs = append(bufs, data[off:off+n], nil)
		off += n
	}
	if len(bufs) <= 2*maxIovecs {
		t.Fatalf("only %d buffers: the test must pass maxIovecs", len(bufs))
	}
	errc := make(chan error, 1)
	go func() {
		n, err := c.Writev(bufs)
		if err == nil && n != len(data) {
			err = io.ErrShortWrite
		}
		c.CloseWrite()
		errc <- err
	}()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if err := <-errc; err != nil {
		t.Fatalf("Writev: %v", err)
	}
	if !bytes.Equal(got, data) {
		t.Fatalf("the peer got %d bytes that differ from the %d written", len(got), len(data))
	}
}

// TryWrite never waits: against a peer that reads nothing it fills the send
// buffers and then reports a short write with no error, returns at once
// while they stay full, and what it took arrives whole and in order once
// the peer reads; against a reset peer it fails.
func TestTryWrite(t *testing.T) {
	c, s := pair(t)
	c.SetWriteBuffer(64 << 10)
	s.SetReadBuffer(64 << 10)
	chunk := make([]byte, 32<<10)
	var sent bytes.Buffer
	short := false
	for i := 0; i < 4096 && !short; i++ {
		rand.Read(chunk)
		start := time.Now()
		n, err := c.TryWrite(chunk)
		if err != nil {
			t.Fatalf("TryWrite #%d: %v", i, err)
		}
		if d := time.Since(start); d > time.Second {
			t.Fatalf("TryWrite #%d took %v; it must not wait", i, d)
		}
		sent.Write(chunk[:n])
		short = n < len(chunk)
	}
	if !short {
		t.Fatal("TryWrite took 128 MiB a peer never read; want a short write once the buffers are full")
	}
	if n, err := c.TryWrite(chunk); err != nil || n != 0 {
		t.Fatalf("TryWrite on full buffers = %d, %v; want 0, nil", n, err)
	}
	c.CloseWrite()
	got, err := io.ReadAll(s)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, sent.Bytes()) {
		t.Fatalf("peer read %d bytes, not the %d TryWrite reported taken, in order", len(got), sent.Len())
	}

	c2, s2 := pair(t)
	s2.SetLinger(0)
	s2.Close() // RST
	time.Sleep(20 * time.Millisecond)
	for i := 0; i < 100 && err == nil; i++ {
		_, err = c2.TryWrite(chunk)
	}
	var oe *net.OpError
	if !errors.As(err, &oe) || oe.Op != "write" {
		t.Fatalf("TryWrite to a reset peer: %v; want a write *net.OpError", err)
	}
}

// ReadEach hands over every chunk in order and returns nil at the peer's
// end, including an end that arrives together with the last data (the
// case a drained-socket shortcut would wait on forever): many short
// connections, each written and closed at once.
func TestReadEachEndWithLastData(t *testing.T) {
	pool := &sync.Pool{New: func() any { b := make([]byte, 16); return &b }}
	for i := range 100 {
		c, s := pair(t)
		msg := bytes.Repeat([]byte{byte('a' + i%26)}, 1+i%40) // some longer than a buffer
		if _, err := s.Write(msg); err != nil {
			t.Fatal(err)
		}
		s.Close()
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		var got []byte
		err := c.ReadEach(pool, func(b []byte) error { got = append(got, b...); return nil })
		if err != nil || !bytes.Equal(got, msg) {
			t.Fatalf("connection %d: read %q, %v; want %q and nil at the end", i, got, err, msg)
		}
	}
}

// On a keep-alive exchange (a message, its answer, the next message)
// ReadEach does not ask the drained socket once more after each message:
// with TCP_INQ nearly no read finds it empty; without, every message costs
// one such read.
func TestReadEachSkipsEmptyReads(t *testing.T) {
	const rounds = 200
	exchange := func(t *testing.T) int {
		c, s := pair(t)
		pool := &sync.Pool{New: func() any { b := make([]byte, 4<<10); return &b }}
		done := make(chan error, 1)
		go func() {
			done <- c.ReadEach(pool, func(b []byte) error { _, err := c.Write(b); return err })
		}()
		msg, answer := []byte("GET / HTTP/1.1\r\n\r\n"), make([]byte, 18)
		for i := range rounds {
			// A pause before each message, as between a client's
			// requests: ReadEach has then finished with the last one
			// (on a busy machine it may not have yet, and then finds
			// the next one there, with or without TCP_INQ).
			time.Sleep(time.Millisecond)
			if _, err := s.Write(msg); err != nil {
				t.Fatal(err)
			}
			if _, err := io.ReadFull(s, answer); err != nil || !bytes.Equal(answer, msg) {
				t.Fatalf("exchange %d: %q, %v", i, answer, err)
			}
		}
		s.CloseWrite()
		if err := <-done; err != nil {
			t.Fatalf("ReadEach at the peer's end: %v", err)
		}
		return c.emptyReads
	}
	withINQ := exchange(t)
	useINQ = false
	defer func() { useINQ = true }()
	without := exchange(t)
	t.Logf("reads that found the socket empty in %d exchanges: %d with TCP_INQ, %d without", rounds, withINQ, without)
	if withINQ > rounds/10 {
		t.Errorf("%d of %d exchanges read an empty socket with TCP_INQ; want nearly none", withINQ, rounds)
	}
	if without < rounds/2 {
		t.Errorf("without TCP_INQ only %d of %d exchanges read an empty socket: the comparison measures nothing", without, rounds)
	}
}

// ReadEach stops with fn's error, a reset, a deadline or a Close, and
// gives its buffer back whenever it waits or stops.
func TestReadEachStops(t *testing.T) {
	pool := &sync.Pool{New: func() any { b := make([]byte, 64); return &b }}
	boom := errors.New("boom")
	t.Run("fn fails", func(t *testing.T) {
		c, s := pair(t)
		s.Write([]byte("x"))
		if err := c.ReadEach(pool, func([]byte) error { return boom }); err != boom {
			t.Errorf("ReadEach = %v, want fn's error", err)
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, s := pair(t)
		s.SetLinger(0)
		s.Close()
		if err := c.ReadEach(pool, func([]byte) error { return nil }); !errors.Is(err, syscall.ECONNRESET) {
			t.Errorf("ReadEach after a reset = %v, want ECONNRESET", err)
		}
	})
	t.Run("deadline", func(t *testing.T) {
		c, _ := pair(t)
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		if err := c.ReadEach(pool, func([]byte) error { return nil }); !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Errorf("ReadEach past its deadline = %v", err)
		}
	})
	t.Run("close", func(t *testing.T) {
		c, s := pair(t)
		got := make(chan error, 1)
		go func() { got <- c.ReadEach(pool, func([]byte) error { return nil }) }()
		s.Write([]byte("x"))
		time.Sleep(20 * time.Millisecond) // read, then waiting
		c.Close()
		select {
		case err := <-got:
			if !errors.Is(err, net.ErrClosed) {
				t.Errorf("ReadEach on a closed conn = %v, want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("ReadEach did not return after Close")
		}
	})
}
