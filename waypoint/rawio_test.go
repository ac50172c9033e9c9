package waypoint

import (
	"bytes"
	"errors"
	"io"
	"net"
	"os"
	"runtime"
	"testing"
	"time"
)

// rawPair returns the two ends of a loopback TCP connection, the first
// through withRawIO.
func rawPair(t *testing.T) (net.Conn, net.Conn) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	accepted := make(chan net.Conn, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			accepted <- nil
			return
		}
		accepted <- c
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	peer := <-accepted
	if peer == nil {
		t.Fatal("accept failed")
	}
	rc := withRawIO(c)
	if _, ok := rc.(*rawIOConn); !ok && runtime.GOOS == "linux" {
		t.Fatalf("withRawIO(%T) = %T; want *rawIOConn", c, rc)
	}
	t.Cleanup(func() { rc.Close(); peer.Close() })
	return rc, peer
}

// TestRawIO checks that a connection read and written with raw system calls
// behaves as net.TCPConn does: data both ways (a write larger than the
// socket buffers waits for the peer), io.EOF at the peer's close, deadlines,
// and Close ending a blocked read.
func TestRawIO(t *testing.T) {
	t.Run("round trip", func(t *testing.T) {
		c, peer := rawPair(t)
		big := bytes.Repeat([]byte("0123456789abcdef"), 1<<18) // 4 MiB
		go func() {
			c.Write(big)
			c.(interface{ CloseWrite() error }).CloseWrite()
		}()
		got, err := io.ReadAll(peer)
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("peer read %d bytes, %v; want %d bytes", len(got), err, len(big))
		}
		go func() { peer.Write(big); peer.Close() }()
		got, err = io.ReadAll(c)
		if err != nil || !bytes.Equal(got, big) {
			t.Fatalf("read %d bytes, %v; want %d bytes", len(got), err, len(big))
		}
		if n, err := c.Read(make([]byte, 8)); n != 0 || err != io.EOF {
			t.Errorf("Read after the end = %d, %v; want 0, io.EOF", n, err)
		}
	})
	t.Run("read deadline", func(t *testing.T) {
		c, _ := rawPair(t)
		c.SetReadDeadline(time.Now().Add(20 * time.Millisecond))
		_, err := c.Read(make([]byte, 8))
		var ne net.Error
		if !errors.Is(err, os.ErrDeadlineExceeded) || !errors.As(err, &ne) || !ne.Timeout() {
			t.Fatalf("Read past the deadline = %v; want a timeout", err)
		}
		var oe *net.OpError
		if !errors.As(err, &oe) || oe.Op != "read" {
			t.Errorf("Read past the deadline = %#v; want a *net.OpError for read", err)
		}
	})
	t.Run("write deadline", func(t *testing.T) {
		c, _ := rawPair(t)
		c.SetWriteDeadline(time.Now().Add(50 * time.Millisecond))
		// The peer reads nothing: the buffers fill and the write waits.
		_, err := c.Write(make([]byte, 64<<20))
		if !errors.Is(err, os.ErrDeadlineExceeded) {
			t.Fatalf("Write past the deadline = %v; want a timeout", err)
		}
	})
	t.Run("close ends a read", func(t *testing.T) {
		c, _ := rawPair(t)
		done := make(chan error, 1)
		go func() {
			_, err := c.Read(make([]byte, 8))
			done <- err
		}()
		time.Sleep(20 * time.Millisecond)
		c.Close()
		select {
		case err := <-done:
			if !errors.Is(err, net.ErrClosed) {
				t.Fatalf("Read on a closed conn = %v; want net.ErrClosed", err)
			}
		case <-time.After(5 * time.Second):
			t.Fatal("Read still blocked after Close")
		}
	})
	t.Run("reset", func(t *testing.T) {
		c, peer := rawPair(t)
		peer.(*net.TCPConn).SetLinger(0)
		peer.Close()
		time.Sleep(20 * time.Millisecond)
		_, err := c.Read(make([]byte, 8))
		var se *os.SyscallError
		if !errors.As(err, &se) {
			t.Fatalf("Read after a reset = %v; want a system call error", err)
		}
	})
}
