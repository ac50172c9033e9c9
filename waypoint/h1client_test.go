package waypoint

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// countingListener counts the connections a backend accepts.
type countingListener struct {
	net.Listener
	n atomic.Int64
}

func (l *countingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.n.Add(1)
	}
	return c, err
}

// countedBackend is backend with a count of accepted connections.
func countedBackend(t *testing.T, h http.Handler) (string, *countingListener) {
	t.Helper()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	cl := &countingListener{Listener: ln}
	srv := &http.Server{Handler: h}
	go srv.Serve(cl)
	t.Cleanup(func() { srv.Close() })
	return ln.Addr().String(), cl
}

func TestUpstreamKeepAlive(t *testing.T) {
	tests := []struct {
		name        string
		method      string
		body        string
		maxRequests int
		wantConns   int64
	}{
		{"GET reuses one connection", http.MethodGet, "", 0, 1},
		{"POST with a body reuses one connection", http.MethodPost, "hello", 0, 1},
		{"maxRequestsPerConnection 1 closes each", http.MethodGet, "", 1, 10},
		{"maxRequestsPerConnection 5", http.MethodGet, "", 5, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, ln := countedBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				io.WriteString(w, r.Method+" "+string(b))
			}))
			cl := clusterOf("app", addr)
			cl.Traffic.Pool.MaxRequestsPerConnection = tt.maxRequests
			h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
			client := newClient(t)
			for i := 0; i < 10; i++ {
				req, _ := http.NewRequest(tt.method, h.url+"/", strings.NewReader(tt.body))
				resp, err := client.Do(req)
				if err != nil {
					t.Fatal(err)
				}
				b, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				if want := tt.method + " " + tt.body; resp.StatusCode != 200 || string(b) != want {
					t.Fatalf("%s = %d %q; want 200 %q", tt.method, resp.StatusCode, b, want)
				}
			}
			if got := ln.n.Load(); got != tt.wantConns {
				t.Errorf("10 sequential requests opened %d upstream connections; want %d", got, tt.wantConns)
			}
		})
	}
}

// TestUpstreamIdleClosedByServer: a pooled connection that the server closed
// while it was idle is not an error for the next request, which goes on a
// new connection (as with http.Transport).
func TestUpstreamIdleClosedByServer(t *testing.T) {
	// A server that answers one request per connection without saying
	// "Connection: close", then closes it.
	app := tcpBackend(t, func(c net.Conn) {
		req, err := http.ReadRequest(bufio.NewReader(c))
		if err != nil {
			return
		}
		io.Copy(io.Discard, req.Body)
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	client := newClient(t)
	for i := 0; i < 5; i++ {
		if code, body := h.get(t, client, "/", nil); code != 200 || body != "ok" {
			t.Fatalf("GET %d = %d %q; want 200 ok", i, code, body)
		}
		time.Sleep(10 * time.Millisecond) // let the close reach the proxy's side
	}
}

// TestUpstreamMaxConnectionsWaits: with maxConnections 1 and no pending
// limit, concurrent requests wait for the one connection, which all of them
// share.
func TestUpstreamMaxConnectionsWaits(t *testing.T) {
	addr, ln := countedBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		time.Sleep(5 * time.Millisecond)
		io.WriteString(w, "ok")
	}))
	cl := clusterOf("app", addr)
	cl.Traffic.Pool.MaxConnections = 1
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	client := newClient(t)
	var wg sync.WaitGroup
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if code, _ := h.get(t, client, "/", nil); code != 200 {
				t.Errorf("GET = %d; want 200", code)
			}
		}()
	}
	wg.Wait()
	if got := ln.n.Load(); got != 1 {
		t.Errorf("8 concurrent requests with maxConnections 1 opened %d upstream connections; want 1", got)
	}
}

// TestH1ClientCancel: a request whose context ends while waiting for the
// answer returns at once with the context's error, and the connection is
// not reused.
func TestH1ClientCancel(t *testing.T) {
	release := make(chan struct{})
	addr, ln := countedBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			<-release
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(func() { close(release) })
	c := newH1Client(&model.ConnectionPool{}, nil)
	t.Cleanup(c.closeIdle)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/slow", nil)
	if _, err := c.RoundTrip(req); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("RoundTrip(/slow) = %v; want DeadlineExceeded", err)
	}
	req, _ = http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
	resp, err := c.RoundTrip(req)
	if err != nil {
		t.Fatalf("RoundTrip(/) = %v", err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if string(b) != "ok" {
		t.Errorf("RoundTrip(/) body = %q; want ok", b)
	}
	if got := ln.n.Load(); got != 2 {
		t.Errorf("opened %d connections; want 2 (the cut one is not reused)", got)
	}
}
