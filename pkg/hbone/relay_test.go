package hbone

import (
	"context"
	"fmt"
	"io"
	"net"
	"testing"
)

// appServer runs one real TCP server on loopback that serves each connection
// with fn, and returns its address.
func appServer(t *testing.T, fn func(*net.TCPConn)) string {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); fn(c.(*net.TCPConn)) }()
		}
	}()
	return ln.Addr().String()
}

// relayHandler dials the app and relays the stream to it, as the node agent's
// inbound path does.
func relayHandler(app string) func(context.Context, *Request) error {
	return func(ctx context.Context, r *Request) error {
		c, err := (&net.Dialer{}).DialContext(ctx, "tcp", app)
		if err != nil {
			return fmt.Errorf("dial app: %w", err)
		}
		defer c.Close()
		return Relay(r.Stream, c.(*net.TCPConn))
	}
}

func TestRelayHalfClose(t *testing.T) {
	tests := []struct {
		name   string
		app    func(*net.TCPConn)
		send   string
		close  bool // client half-closes after sending
		want   string
		wantOK bool // stream ends with a clean EOF
	}{
		{
			name: "client FIN reaches the app, app answers and closes",
			app: func(c *net.TCPConn) {
				in, _ := io.ReadAll(c)
				c.Write(append([]byte("got:"), in...))
			},
			send: "ping", close: true, want: "got:ping", wantOK: true,
		},
		{
			name: "app FIN first reaches the client while it keeps its side open",
			app: func(c *net.TCPConn) {
				c.Write([]byte("banner"))
				c.CloseWrite()
				io.Copy(io.Discard, c)
			},
			want: "banner", wantOK: true,
		},
		{
			name: "app reset is a stream error, not a clean end",
			app: func(c *net.TCPConn) {
				c.Write([]byte("part"))
				c.SetLinger(0)
			},
			send: "x", wantOK: false,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, relayHandler(appServer(t, tt.app)), nil)
			c, err := e.dialer.Dial(ctxT(t), e.target())
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			if tt.send != "" {
				c.Write([]byte(tt.send))
			}
			if tt.close {
				c.CloseWrite()
			}
			got, err := io.ReadAll(c)
			if tt.wantOK {
				if err != nil || string(got) != tt.want {
					t.Fatalf("read %q, %v; want %q then EOF", got, err, tt.want)
				}
				return
			}
			if err == nil {
				t.Fatalf("read %q then a clean EOF; want a reset", got)
			}
		})
	}
}

// TestRelayServerHalfClose checks that the app's FIN ends only the server's
// side: the client reads EOF and can still send, and the app reads it.
func TestRelayServerHalfClose(t *testing.T) {
	late := make(chan string, 1)
	app := appServer(t, func(c *net.TCPConn) {
		c.Write([]byte("banner"))
		c.CloseWrite()
		b, _ := io.ReadAll(c)
		late <- string(b)
	})
	e := newEnv(t, relayHandler(app), nil)
	c, err := e.dialer.Dial(ctxT(t), e.target())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got, err := io.ReadAll(c); err != nil || string(got) != "banner" {
		t.Fatalf("read %q, %v; want banner then EOF", got, err)
	}
	if _, err := c.Write([]byte("after EOF")); err != nil {
		t.Fatalf("write after the server's END_STREAM: %v", err)
	}
	c.CloseWrite()
	if got := <-late; got != "after EOF" {
		t.Fatalf("app read %q; want %q", got, "after EOF")
	}
}
