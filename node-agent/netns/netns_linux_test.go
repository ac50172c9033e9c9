package netns

import (
	"context"
	"io"
	"net"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
)

const (
	testMark   = 0x539
	returnBit  = 0x1000
	testTable  = 1539
	appPort    = "8080"
	tunnelPort = "15008"
)

// TestTransparentToApp is the inbound path in miniature: a client in netns A
// connects to the agent's listener inside pod netns B; the agent dials the
// app in B from B, bound to the client's address; the app must see the
// client's address, and bytes must flow both ways.
func TestTransparentToApp(t *testing.T) {
	client, pod := nstest.Pair(t, "mlna-tr", netip.MustParseAddr("198.19.3.1"), netip.MustParseAddr("198.19.3.2"))
	if err := PrepareReturnPath(pod.Path, ReturnPath{Mark: returnBit, Table: testTable}); err != nil {
		t.Fatal(err)
	}
	if err := PrepareReturnPath(pod.Path, ReturnPath{Mark: returnBit, Table: testTable}); err != nil {
		t.Fatalf("second PrepareReturnPath (must be idempotent): %v", err)
	}

	// The app, an ordinary process socket in the pod netns.
	app := nstest.MustListen(t)(Listen(pod.Path, pod.Addr.String()+":"+appPort, ListenOptions{}))
	seen := make(chan string, 1)
	go func() {
		c, err := app.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		seen <- c.RemoteAddr().(*net.TCPAddr).AddrPort().Addr().String()
		io.Copy(c, c) // echo
	}()

	// The agent's listener in the pod netns, marked.
	agent := nstest.MustListen(t)(Listen(pod.Path, pod.Addr.String()+":"+tunnelPort, ListenOptions{Mark: testMark, ReusePort: true}))
	if m := sockMark(t, agent); m != testMark {
		t.Errorf("agent listener SO_MARK = %#x; want %#x", m, testMark)
	}
	go func() {
		down, err := agent.Accept()
		if err != nil {
			return
		}
		defer down.Close()
		src := down.RemoteAddr().(*net.TCPAddr).AddrPort()
		up, err := Dial(context.Background(), pod.Path, pod.Addr.String()+":"+appPort, DialOptions{
			Mark: testMark | returnBit, Source: netip.AddrPortFrom(src.Addr(), 0), Transparent: true, Timeout: 5 * time.Second,
		})
		if err != nil {
			t.Errorf("agent dial to app: %v", err)
			return
		}
		defer up.Close()
		go io.Copy(up, down)
		io.Copy(down, up)
	}()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := Dial(ctx, client.Path, pod.Addr.String()+":"+tunnelPort, DialOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	msg := []byte("hello through the agent")
	if _, err := c.Write(msg); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(c, got); err != nil {
		t.Fatalf("read echo: %v", err)
	}
	if string(got) != string(msg) {
		t.Errorf("echo = %q; want %q", got, msg)
	}
	select {
	case ip := <-seen:
		if ip != client.Addr.String() {
			t.Errorf("app saw client address %s; want %s (the original client)", ip, client.Addr)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("app never accepted")
	}
}

// TestListenerStaysInPod checks the listener lives in the pod netns only: the
// same port in the host netns is free.
func TestListenerStaysInPod(t *testing.T) {
	_, pod := nstest.Pair(t, "mlna-ls", netip.MustParseAddr("198.19.3.5"), netip.MustParseAddr("198.19.3.6"))
	ln := nstest.MustListen(t)(Listen(pod.Path, "127.0.0.1:0", ListenOptions{Mark: testMark}))
	port := ln.Addr().(*net.TCPAddr).Port
	host, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", itoa(port)))
	if err != nil {
		t.Fatalf("port %d taken in the host netns too: the listener leaked out of the pod: %v", port, err)
	}
	host.Close()
	if _, err := Listen("/var/run/netns/mlna-none", "127.0.0.1:0", ListenOptions{}); err == nil {
		t.Error("Listen in a missing netns succeeded; want an error")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }

func sockMark(t *testing.T, ln net.Listener) int {
	t.Helper()
	rc, err := ln.(*net.TCPListener).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var mark int
	var gerr error
	rc.Control(func(fd uintptr) { mark, gerr = unix.GetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK) })
	if gerr != nil {
		t.Fatal(gerr)
	}
	return mark
}
