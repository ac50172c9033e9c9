package waypoint

import (
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// h2cServer is a loopback HTTP/2 (prior knowledge) backend that counts the
// connections it accepted and closed.
type h2cServer struct {
	addr           string
	opened, closed atomic.Int64
}

func h2cBackend(t *testing.T, h http.Handler, mutate func(s *http.Server)) *h2cServer {
	t.Helper()
	b := &h2cServer{}
	var protos http.Protocols
	protos.SetUnencryptedHTTP2(true)
	srv := httptest.NewUnstartedServer(h)
	srv.Config.Protocols = &protos
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		switch s {
		case http.StateNew:
			b.opened.Add(1)
		case http.StateClosed, http.StateHijacked:
			b.closed.Add(1)
		}
	}
	if mutate != nil {
		mutate(srv.Config)
	}
	srv.Start()
	t.Cleanup(srv.Close)
	b.addr = srv.Listener.Addr().String()
	return b
}

// waitClosed waits for the backend to have seen n connections closed.
func (b *h2cServer) waitClosed(t *testing.T, n int64) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for b.closed.Load() < n && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	if got := b.closed.Load(); got != n {
		t.Errorf("backend saw %d connections closed; want %d", got, n)
	}
}

func h2Cluster(addr string, pool model.ConnectionPool) model.L7Cluster {
	c := clusterOf("h2", addr)
	c.Protocol, c.Traffic.Pool = model.UpstreamHTTP2, pool
	return c
}

// TestH2MaxRequestsPerConnection: an upstream HTTP/2 connection carries at
// most maxRequestsPerConnection requests, and is closed after its last.
func TestH2MaxRequestsPerConnection(t *testing.T) {
	var mu sync.Mutex
	perConn := map[string]int{}
	b := h2cBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		perConn[r.RemoteAddr]++
		mu.Unlock()
		io.WriteString(w, r.Proto)
	}), nil)
	h := start(t, oneRoute([]model.L7Cluster{h2Cluster(b.addr, model.ConnectionPool{MaxRequestsPerConnection: 3})},
		model.L7Route{Name: "r", Destinations: to("h2")}), nil)
	client := newClient(t)
	for i := range 7 {
		if code, body := h.get(t, client, "/", nil); code != 200 || body != "HTTP/2.0" {
			t.Fatalf("request %d: %d, upstream saw %q; want 200 over HTTP/2.0", i, code, body)
		}
	}
	if got := b.opened.Load(); got != 3 {
		t.Errorf("7 sequential requests used %d upstream connections; want 3 with maxRequestsPerConnection 3", got)
	}
	mu.Lock()
	for addr, n := range perConn {
		if n > 3 {
			t.Errorf("connection %s carried %d requests; want at most 3", addr, n)
		}
	}
	mu.Unlock()
	b.waitClosed(t, 2) // the third has taken one request of its three
}

// TestH2MaxConnectionDuration: an upstream HTTP/2 connection takes no new
// request once maxConnectionDuration old, and is drained: a stream begun
// before then ends as it would have, and the connection closes after it.
func TestH2MaxConnectionDuration(t *testing.T) {
	const maxAge = 400 * time.Millisecond
	began, release := make(chan struct{}), make(chan struct{})
	b := h2cBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/stream" {
			io.WriteString(w, "ok")
			return
		}
		io.WriteString(w, "first,")
		w.(http.Flusher).Flush()
		close(began)
		<-release
		io.WriteString(w, "last")
	}), nil)
	h := start(t, oneRoute([]model.L7Cluster{h2Cluster(b.addr, model.ConnectionPool{MaxConnectionDuration: maxAge})},
		model.L7Route{Name: "r", Destinations: to("h2")}), nil)
	client := newClient(t)
	var born time.Time // no earlier than the connection's dial
	for i := range 3 {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("request: %d", code)
		}
		if i == 0 {
			born = time.Now()
		}
	}
	type answer struct {
		code int
		body string
	}
	streamed := make(chan answer, 1)
	go func() {
		code, body := h.get(t, client, "/stream", nil)
		streamed <- answer{code, body}
	}()
	<-began
	if got := b.opened.Load(); got != 1 {
		t.Errorf("requests within maxConnectionDuration used %d upstream connections; want 1", got)
	}
	time.Sleep(maxAge + 100*time.Millisecond - time.Since(born))
	if code, _ := h.get(t, client, "/", nil); code != 200 {
		t.Fatalf("request after maxConnectionDuration: %d", code)
	}
	if got := b.opened.Load(); got != 2 {
		t.Errorf("a request after maxConnectionDuration: %d upstream connections in all; want 2 (one new)", got)
	}
	if got := b.closed.Load(); got != 0 {
		t.Errorf("%d upstream connections closed while a stream was in flight; want 0 (drained, not cut)", got)
	}
	close(release)
	if a := <-streamed; a.code != 200 || a.body != "first,last" {
		t.Errorf("stream begun before maxConnectionDuration: %d %q; want 200 \"first,last\"", a.code, a.body)
	}
	b.waitClosed(t, 1)
}

// TestH2MaxConnections: with maxConnections 1, requests beyond the
// backend's concurrent streams wait for one on the connection rather than
// open another.
func TestH2MaxConnections(t *testing.T) {
	var active, peak atomic.Int64
	b := h2cBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := active.Add(1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		time.Sleep(100 * time.Millisecond)
		active.Add(-1)
		io.WriteString(w, "ok")
	}), func(s *http.Server) { s.HTTP2 = &http.HTTP2Config{MaxConcurrentStreams: 2} })
	h := start(t, oneRoute([]model.L7Cluster{h2Cluster(b.addr, model.ConnectionPool{MaxConnections: 1})},
		model.L7Route{Name: "r", Destinations: to("h2")}), nil)
	// One request first: the connection then knows the backend's limit.
	client := newClient(t)
	if code, _ := h.get(t, client, "/", nil); code != 200 {
		t.Fatalf("request: %d", code)
	}
	var wg sync.WaitGroup
	var ok atomic.Int64
	for range 6 {
		wg.Go(func() {
			if code, _ := h.get(t, client, "/", nil); code == 200 {
				ok.Add(1)
			}
		})
	}
	wg.Wait()
	if ok.Load() != 6 || b.opened.Load() != 1 || peak.Load() > 2 {
		t.Errorf("6 concurrent requests: %d ok over %d connections, at most %d at once; want 6 over 1, at most 2",
			ok.Load(), b.opened.Load(), peak.Load())
	}
}
