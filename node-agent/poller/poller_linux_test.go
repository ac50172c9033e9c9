package poller

import (
	"errors"
	"io"
	"net"
	"net/netip"
	"runtime"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func newPoller(t *testing.T) *Poller {
	t.Helper()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

// acceptOn listens on loopback and has p accept there; the listener is
// closed at the end of the test.
func acceptOn(t *testing.T, p *Poller, serve func(net.Conn)) *Listener {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.Accept(ln, serve)
	if err != nil {
		ln.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	return l
}

// goEcho serves c on a goroutine of its own, as an accepted function must.
func goEcho(c net.Conn) { go echo(c) }

func echo(c net.Conn) {
	defer c.Close()
	io.Copy(c, c)
}

func roundTrip(t *testing.T, addr string, msg string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := c.Write([]byte(msg)); err != nil {
		t.Fatalf("write to %s: %v", addr, err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read from %s: %v", addr, err)
	}
	if string(got) != msg {
		t.Fatalf("%s echoed %q; want %q", addr, got, msg)
	}
}

// The point of the package: many listeners, no goroutine waiting on each.
func TestAcceptManyListenersOneGoroutine(t *testing.T) {
	p := newPoller(t)
	const n = 50
	before := runtime.NumGoroutine()
	var lns []*Listener
	for range n {
		lns = append(lns, acceptOn(t, p, goEcho))
	}
	if grew := runtime.NumGoroutine() - before; grew > 0 {
		t.Errorf("watching %d listeners started %d goroutines; want none", n, grew)
	}
	for i, l := range lns {
		roundTrip(t, l.Addr().String(), "hello "+string(rune('a'+i%26)))
	}
}

func TestAcceptedConnectionsOptions(t *testing.T) {
	p := newPoller(t)
	got := make(chan [2]int, 1)
	l := acceptOn(t, p, func(c net.Conn) {
		defer c.Close()
		rc, _ := c.(*net.TCPConn).SyscallConn()
		rc.Control(func(fd uintptr) {
			ka, _ := unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_KEEPALIVE)
			nd, _ := unix.GetsockoptInt(int(fd), unix.IPPROTO_TCP, unix.TCP_NODELAY)
			got <- [2]int{ka, nd}
		})
	})
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	select {
	case v := <-got:
		if v[0] != 1 {
			t.Errorf("SO_KEEPALIVE on an accepted connection = %d; want 1, as net.Listen's", v[0])
		}
		if v[1] != 1 {
			t.Errorf("TCP_NODELAY on an accepted connection = %d; want 1 (Nagle would hold back small writes)", v[1])
		}
	case <-time.After(5 * time.Second):
		t.Fatal("connection not served")
	}
}

// A burst larger than one wake-up's batch is served in full.
func TestAcceptBurst(t *testing.T) {
	p := newPoller(t)
	l := acceptOn(t, p, goEcho)
	const n = 3 * acceptBatch
	var wg sync.WaitGroup
	var failed atomic.Int32
	for range n {
		wg.Go(func() {
			c, err := net.DialTimeout("tcp", l.Addr().String(), 5*time.Second)
			if err != nil {
				failed.Add(1)
				return
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(10 * time.Second))
			b := []byte{1}
			if _, err := c.Write(b); err != nil {
				failed.Add(1)
				return
			}
			if _, err := io.ReadFull(c, b); err != nil {
				failed.Add(1)
			}
		})
	}
	wg.Wait()
	if f := failed.Load(); f > 0 {
		t.Errorf("%d of %d concurrent connections not served", f, n)
	}
}

func TestListenerCloseStopsServing(t *testing.T) {
	p := newPoller(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	var served atomic.Int32
	l, err := p.Accept(ln, func(c net.Conn) { served.Add(1); c.Close() })
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	if err := l.Close(); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("dial after Close succeeded; want refused")
	}
	time.Sleep(50 * time.Millisecond)
	if n := served.Load(); n != 0 {
		t.Errorf("serve called %d times after Close; want 0", n)
	}
	// The poller goes on serving other listeners.
	l2 := acceptOn(t, p, goEcho)
	roundTrip(t, l2.Addr().String(), "still here")
}

// A listener closed under the watch (not through Listener.Close) stops
// being reported: the poller neither spins nor stops serving the others.
func TestListenerClosedUnderneath(t *testing.T) {
	p := newPoller(t)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	l, err := p.Accept(ln, goEcho)
	if err != nil {
		t.Fatal(err)
	}
	ln.Close()
	defer l.Close()
	l2 := acceptOn(t, p, goEcho)
	roundTrip(t, l2.Addr().String(), "other listener")
}

func TestWatchDatagrams(t *testing.T) {
	p := newPoller(t)
	type datagram struct {
		sock int
		msg  string
	}
	got := make(chan datagram, 16)
	var socks []*net.UDPConn
	for i := range 3 {
		pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { pc.Close() })
		socks = append(socks, pc)
		buf := make([]byte, 512)
		w, err := p.Watch(pc, func(w *Watch) bool {
			for {
				var n int
				var rerr error
				if err := w.Read(func(fd uintptr) bool {
					n, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
					return true
				}); err != nil {
					return false
				}
				if rerr != nil {
					return true // EAGAIN: drained
				}
				got <- datagram{i, string(buf[:n])}
			}
		})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(w.Stop)
	}
	for i, pc := range socks {
		ap := pc.LocalAddr().(*net.UDPAddr).AddrPort()
		c, err := net.DialUDP("udp", nil, net.UDPAddrFromAddrPort(netip.AddrPortFrom(ap.Addr(), ap.Port())))
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		for _, m := range []string{"one", "two"} {
			if _, err := c.Write([]byte(m)); err != nil {
				t.Fatal(err)
			}
		}
		for _, want := range []string{"one", "two"} {
			select {
			case d := <-got:
				if d.sock != i || d.msg != want {
					t.Errorf("socket %d got %q on socket %d; want %q", i, d.msg, d.sock, want)
				}
			case <-time.After(5 * time.Second):
				t.Fatalf("socket %d: datagram %q not read", i, want)
			}
		}
	}
}

func TestStopWaitsForReady(t *testing.T) {
	p := newPoller(t)
	pc, err := net.ListenUDP("udp", &net.UDPAddr{IP: net.IPv4(127, 0, 0, 1)})
	if err != nil {
		t.Fatal(err)
	}
	defer pc.Close()
	entered, release := make(chan struct{}, 1), make(chan struct{})
	var first sync.Once
	var after atomic.Bool
	var stopped atomic.Bool
	w, err := p.Watch(pc, func(w *Watch) bool {
		if stopped.Load() {
			after.Store(true)
		}
		// The first call holds on until the test has called Stop.
		first.Do(func() {
			entered <- struct{}{}
			<-release
		})
		buf := make([]byte, 64)
		for {
			var rerr error
			w.Read(func(fd uintptr) bool { _, _, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT); return true })
			if rerr != nil {
				return true
			}
		}
	})
	if err != nil {
		t.Fatal(err)
	}
	c, err := net.DialUDP("udp", nil, pc.LocalAddr().(*net.UDPAddr))
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.Write([]byte("x"))
	<-entered
	done := make(chan struct{})
	go func() { w.Stop(); stopped.Store(true); close(done) }()
	select {
	case <-done:
		t.Fatal("Stop returned while ready was running")
	case <-time.After(50 * time.Millisecond):
	}
	close(release)
	<-done
	c.Write([]byte("y"))
	time.Sleep(50 * time.Millisecond)
	if after.Load() {
		t.Error("ready called after Stop returned")
	}
}

func TestCloseStopsPoller(t *testing.T) {
	before := runtime.NumGoroutine()
	p, err := New()
	if err != nil {
		t.Fatal(err)
	}
	if err := p.Close(); err != nil && !errors.Is(err, net.ErrClosed) {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for runtime.NumGoroutine() > before && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if n := runtime.NumGoroutine(); n > before {
		t.Errorf("%d goroutines after Close; %d before New", n, before)
	}
}
