package waypoint

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// opaqueStream hides that the pipe end is a net.Conn, as an HBONE stream is not one.
type opaqueStream struct{ io.ReadWriteCloser }

func TestStreamsThroughConnListener(t *testing.T) {
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "only-frontend", Rules: []policy.Rule{{
		From: []policy.Source{{Principals: []string{"cluster.local/ns/web/sa/frontend"}}},
	}}}}
	p, err := New(Options{Config: cfg, Peer: func(r *http.Request) Peer {
		c, _ := ConnFromContext(r.Context())
		if sc, ok := c.(*StreamConn); ok {
			if id, ok := sc.Meta.(string); ok {
				return Peer{Principal: id}
			}
		}
		return Peer{}
	}})
	if err != nil {
		t.Fatal(err)
	}
	dst := &net.TCPAddr{IP: net.ParseIP("198.18.0.20"), Port: 9080}
	ln := NewConnListener(dst)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ctx, ln, ServerOptions{}) }()
	t.Cleanup(func() { cancel(); <-done })

	tests := []struct {
		id       string
		wantCode int
	}{
		{"cluster.local/ns/web/sa/frontend", 200},
		{"cluster.local/ns/web/sa/other", 403},
	}
	for _, tt := range tests {
		client, server := net.Pipe()
		sc := NewStreamConn(opaqueStream{server}, dst, &net.TCPAddr{IP: net.ParseIP("198.18.0.10"), Port: 40000}, tt.id)
		// What an HBONE handler does: push the stream, wait until it ends.
		handlerDone := make(chan error, 1)
		go func() {
			if err := ln.Push(ctx, sc); err != nil {
				handlerDone <- err
				return
			}
			<-sc.Done()
			handlerDone <- nil
		}()
		client.SetDeadline(time.Now().Add(5 * time.Second))
		fmt.Fprint(client, "GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(client), nil)
		if err != nil {
			t.Fatalf("read response as %s: %v", tt.id, err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.wantCode {
			t.Errorf("GET as %s over a stream = %d; want %d", tt.id, resp.StatusCode, tt.wantCode)
		}
		select {
		case err := <-handlerDone:
			if err != nil {
				t.Errorf("handler: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("stream not closed after Connection: close")
		}
		client.Close()
	}
}

func TestStreamConnReadDeadline(t *testing.T) {
	client, server := net.Pipe()
	defer client.Close()
	sc := NewStreamConn(opaqueStream{server}, nil, nil, nil)
	defer sc.Close()
	sc.SetReadDeadline(time.Now().Add(50 * time.Millisecond))
	if _, err := sc.Read(make([]byte, 4)); !errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("Read past the deadline = %v; want os.ErrDeadlineExceeded", err)
	}
	go client.Write([]byte("late"))
	sc.SetReadDeadline(time.Time{})
	buf := make([]byte, 4)
	if _, err := io.ReadFull(sc, buf); err != nil || string(buf) != "late" {
		t.Fatalf("Read after clearing the deadline = %q, %v; want late (no data lost)", buf, err)
	}
	client.Close()
	if _, err := sc.Read(buf); err != io.EOF {
		t.Errorf("Read after the peer closed = %v; want EOF", err)
	}
	select {
	case <-sc.Done():
		t.Error("Done closed before Close")
	default:
	}
	sc.Close()
	<-sc.Done()
}
