package waypoint

import (
	"bufio"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// h1Backend answers "<method> <body bytes>" with a Content-Length, streams
// without one on /stream, answers 204 on /empty, and counts requests.
func h1Backend(t *testing.T) (*harness, *atomic.Int64) {
	t.Helper()
	var n atomic.Int64
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n.Add(1)
		b, _ := io.ReadAll(r.Body)
		switch r.URL.Path {
		case "/stream":
			for i := range 3 {
				fmt.Fprintf(w, "part%d;", i)
				w.(http.Flusher).Flush()
			}
		case "/empty":
			w.WriteHeader(http.StatusNoContent)
		case "/trailer":
			w.Header().Set("Trailer", "X-Sum")
			io.WriteString(w, "body")
			w.Header().Set("X-Sum", "42")
		default:
			fmt.Fprintf(w, "%s %d", r.Method, len(b))
		}
	}))
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	return h, &n
}

// exchange writes raw to a new connection to addr and reads one answer per
// method in methods (its request's method: HEAD answers have no body).
func exchange(t *testing.T, addr, raw string, methods ...string) []*answer {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, raw); err != nil {
		t.Fatal(err)
	}
	br := bufio.NewReader(c)
	var out []*answer
	for _, m := range methods {
		resp, err := http.ReadResponse(br, &http.Request{Method: m})
		if err != nil {
			t.Fatalf("read answer %d to %q: %v", len(out)+1, raw, err)
		}
		b, err := io.ReadAll(resp.Body)
		resp.Body.Close()
		if err != nil {
			t.Fatalf("read answer %d body: %v", len(out)+1, err)
		}
		out = append(out, &answer{resp: resp, body: string(b)})
	}
	// What follows the answers: nothing on a connection the server closed.
	c.SetReadDeadline(time.Now().Add(100 * time.Millisecond))
	_, err = br.ReadByte()
	if len(out) > 0 {
		out[len(out)-1].closed = err == io.EOF
	}
	return out
}

type answer struct {
	resp   *http.Response
	body   string
	closed bool // the server closed the connection after it
}

func TestH1RefusesMalformedRequests(t *testing.T) {
	h, seen := h1Backend(t)
	const host = "Host: app\r\n"
	tests := []struct {
		name, raw string
		want      int
	}{
		{"both Content-Length and Transfer-Encoding", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"Transfer-Encoding not chunked", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501},
		{"Transfer-Encoding twice", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 501},
		{"Transfer-Encoding on HTTP/1.0", "POST / HTTP/1.0\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n", 400},
		{"negative Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: -1\r\n\r\n", 400},
		{"signed Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: +3\r\n\r\nabc", 400},
		{"Content-Length list", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3, 3\r\n\r\nabc", 400},
		{"conflicting Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: 3\r\nContent-Length: 4\r\n\r\nabcd", 400},
		{"empty Content-Length", "POST / HTTP/1.1\r\n" + host + "Content-Length: \r\n\r\n", 400},
		{"obs-fold", "GET / HTTP/1.1\r\n" + host + "X-A: b\r\n c\r\n\r\n", 400},
		{"space before colon", "GET / HTTP/1.1\r\n" + host + "X-A : b\r\n\r\n", 400},
		{"no colon", "GET / HTTP/1.1\r\n" + host + "X-A b\r\n\r\n", 400},
		{"control character in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\x01b\r\n\r\n", 400},
		{"bare CR in value", "GET / HTTP/1.1\r\n" + host + "X-A: a\rb\r\n\r\n", 400},
		{"no Host", "GET / HTTP/1.1\r\n\r\n", 400},
		{"two Hosts", "GET / HTTP/1.1\r\n" + host + host + "\r\n", 400},
		{"malformed Host", "GET / HTTP/1.1\r\nHost: a/b\r\n\r\n", 400},
		{"malformed request line", "GET /\r\n" + host + "\r\n", 400},
		{"space in target", "GET /a b HTTP/1.1\r\n" + host + "\r\n", 400},
		{"malformed escape in target", "GET /%zz HTTP/1.1\r\n" + host + "\r\n", 400},
		{"HTTP/2.0 as text", "GET / HTTP/2.0\r\n" + host + "\r\n", 505},
		{"unknown Expect", "GET / HTTP/1.1\r\n" + host + "Expect: 200-ok\r\n\r\n", 417},
		{"oversized head", "GET / HTTP/1.1\r\n" + host + "X-Big: " + strings.Repeat("a", 70<<10) + "\r\n\r\n", 431},
		{"oversized request line", "GET /" + strings.Repeat("a", 70<<10) + " HTTP/1.1\r\n" + host + "\r\n", 431},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := seen.Load()
			a := exchange(t, h.addr, tt.raw, "GET")[0]
			if a.resp.StatusCode != tt.want || !a.closed {
				t.Errorf("%q = %d (closed %v); want %d and the connection closed", tt.raw, a.resp.StatusCode, a.closed, tt.want)
			}
			if seen.Load() != before {
				t.Errorf("%q reached the backend", tt.raw)
			}
		})
	}
}

// TestH1MalformedChunkedBody: a chunked body the proxy cannot frame (a
// chunk size that is no number; a trailer section ending with a bare LF
// instead of CRLF) is answered 400 and the connection closed, so what
// follows is never read as a request, and the upstream connection that got
// the request's head is cut before the request could end. The bare LF
// matters because parsers disagree on it (net/http takes it as the body's
// end only when a CRLF CRLF follows somewhere in its buffer), and a request
// boundary two parsers see apart is how a request is smuggled past a
// proxy's policy. Before, the proxy waited on the upstream for an answer
// to a request it had never finished, with no end.
func TestH1MalformedChunkedBody(t *testing.T) {
	for _, tt := range []struct{ name, body string }{
		{"chunk size no number", "zz\r\n"},
		{"trailer ends with a bare LF", "0\r\n\n"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			h, seen := h1Backend(t)
			raw := "POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\n\r\n" + tt.body + "GET /smuggled HTTP/1.1\r\nHost: app\r\n\r\n"
			a := exchange(t, h.addr, raw, "POST")[0]
			if a.resp.StatusCode != http.StatusBadRequest || !a.closed {
				t.Errorf("%q = %d %q (closed %v); want 400 and the connection closed", raw, a.resp.StatusCode, a.body, a.closed)
			}
			if n := seen.Load(); n != 0 {
				t.Errorf("the backend served %d requests; want none (the POST never ended, nothing follows it)", n)
			}
		})
	}
}

func TestH1Framing(t *testing.T) {
	h, _ := h1Backend(t)
	const host = "Host: app\r\n"
	type want struct {
		code    int
		body    string
		cl      int64 // response ContentLength; -2: don't check
		chunked bool
	}
	tests := []struct {
		name    string
		raw     string
		methods []string
		want    []want
		closed  bool
	}{
		{"keep-alive GET", "GET / HTTP/1.1\r\n" + host + "\r\n", []string{"GET"}, []want{{200, "GET 0", 5, false}}, false},
		{"bare LF", "GET / HTTP/1.1\n" + host[:len(host)-2] + "\n\n", []string{"GET"}, []want{{200, "GET 0", 5, false}}, false},
		{"empty line after a body", "POST / HTTP/1.1\r\n" + host + "Content-Length: 1\r\n\r\nx\r\nGET / HTTP/1.1\r\n" + host + "\r\n",
			[]string{"POST", "GET"}, []want{{200, "POST 1", 6, false}, {200, "GET 0", 5, false}}, false},
		{"Content-Length body", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\n\r\nhello", []string{"POST"}, []want{{200, "POST 5", 6, false}}, false},
		{"same Content-Length twice", "POST / HTTP/1.1\r\n" + host + "Content-Length: 5\r\nContent-Length: 5\r\n\r\nhello", []string{"POST"}, []want{{200, "POST 5", 6, false}}, false},
		{"chunked body with trailer", "POST / HTTP/1.1\r\n" + host + "Transfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\nX-T: 1\r\n\r\n", []string{"POST"}, []want{{200, "POST 5", 6, false}}, false},
		{"pipelined", "GET / HTTP/1.1\r\n" + host + "\r\nPOST / HTTP/1.1\r\n" + host + "Content-Length: 2\r\n\r\nhiHEAD / HTTP/1.1\r\n" + host + "\r\n",
			[]string{"GET", "POST", "HEAD"}, []want{{200, "GET 0", 5, false}, {200, "POST 2", 6, false}, {200, "", 6, false}}, false},
		{"Connection: close", "GET / HTTP/1.1\r\n" + host + "Connection: close\r\n\r\n", []string{"GET"}, []want{{200, "GET 0", 5, false}}, true},
		{"HTTP/1.0", "GET / HTTP/1.0\r\n" + host + "\r\n", []string{"GET"}, []want{{200, "GET 0", 5, false}}, true},
		{"HTTP/1.0 keep-alive", "GET / HTTP/1.0\r\n" + host + "Connection: keep-alive\r\n\r\n", []string{"GET"}, []want{{200, "GET 0", 5, false}}, false},
		{"streamed answer is chunked", "GET /stream HTTP/1.1\r\n" + host + "\r\n", []string{"GET"}, []want{{200, "part0;part1;part2;", -1, true}}, false},
		{"trailers", "GET /trailer HTTP/1.1\r\n" + host + "\r\n", []string{"GET"}, []want{{200, "body", -1, true}}, false},
		{"204 has no body", "GET /empty HTTP/1.1\r\n" + host + "\r\nGET / HTTP/1.1\r\n" + host + "\r\n", []string{"GET", "GET"}, []want{{204, "", -2, false}, {200, "GET 0", 5, false}}, false},
		{"OPTIONS *", "OPTIONS * HTTP/1.1\r\n" + host + "\r\n", []string{"OPTIONS"}, []want{{400, "invalid path", 12, false}}, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := exchange(t, h.addr, tt.raw, tt.methods...)
			for i, a := range got {
				w := tt.want[i]
				if a.resp.StatusCode != w.code || a.body != w.body {
					t.Errorf("answer %d = %d %q; want %d %q", i, a.resp.StatusCode, a.body, w.code, w.body)
				}
				if w.cl != -2 && a.resp.ContentLength != w.cl {
					t.Errorf("answer %d Content-Length = %d; want %d", i, a.resp.ContentLength, w.cl)
				}
				if chunked := len(a.resp.TransferEncoding) > 0; chunked != w.chunked {
					t.Errorf("answer %d chunked = %v; want %v", i, chunked, w.chunked)
				}
				if a.resp.Header.Get("Date") == "" {
					t.Errorf("answer %d has no Date", i)
				}
			}
			if last := got[len(got)-1]; last.closed != tt.closed {
				t.Errorf("connection closed after the last answer = %v; want %v", last.closed, tt.closed)
			}
		})
	}
}

// TestH1ExpectContinue: the 100 Continue goes out when the proxy starts
// reading the body, and the client's body follows it.
func TestH1ExpectContinue(t *testing.T) {
	h, _ := h1Backend(t)
	c, err := net.DialTimeout("tcp", h.addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\nExpect: 100-continue\r\n\r\n")
	br := bufio.NewReader(c)
	line, err := br.ReadString('\n')
	if err != nil || line != "HTTP/1.1 100 Continue\r\n" {
		t.Fatalf("first line = %q, %v; want 100 Continue", line, err)
	}
	if blank, _ := br.ReadString('\n'); blank != "\r\n" {
		t.Fatalf("100 Continue followed by %q", blank)
	}
	io.WriteString(c, "hello")
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != 200 || string(b) != "POST 5" {
		t.Errorf("answer = %d %q; want 200 \"POST 5\"", resp.StatusCode, b)
	}
}

// TestH1UnreadBodyKeepsConnection: a body the proxy answers without reading
// (a local 404 here) is drained, and the connection serves the next
// request.
func TestH1UnreadBodyKeepsConnection(t *testing.T) {
	app := &named{name: "app"}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))},
		model.L7Route{Name: "r", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/app"}}}, Destinations: to("app")}), nil)
	body := strings.Repeat("b", 10000)
	raw := "POST /nowhere HTTP/1.1\r\nHost: app\r\nContent-Length: 10000\r\n\r\n" + body + "GET /app HTTP/1.1\r\nHost: app\r\n\r\n"
	got := exchange(t, h.addr, raw, "POST", "GET")
	if got[0].resp.StatusCode != 404 || got[1].resp.StatusCode != 200 || got[1].body != "app" || got[1].closed {
		t.Errorf("answers = %d, %d %q (closed %v); want 404, then 200 \"app\" on the same connection",
			got[0].resp.StatusCode, got[1].resp.StatusCode, got[1].body, got[1].closed)
	}
}

// TestH1ClientGoneCancelsRequest: a client that goes away while the
// upstream has not answered ends the upstream request (DC).
func TestH1ClientGoneCancelsRequest(t *testing.T) {
	gone := make(chan struct{})
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
			close(gone)
		case <-time.After(5 * time.Second):
		}
	}))
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	time.Sleep(100 * time.Millisecond)
	c.Close()
	select {
	case <-gone:
	case <-time.After(3 * time.Second):
		t.Fatal("the upstream request outlived its client")
	}
}

// TestH1Trailers: an upstream's trailers reach the client after the
// chunked body.
func TestH1Trailers(t *testing.T) {
	h, _ := h1Backend(t)
	a := exchange(t, h.addr, "GET /trailer HTTP/1.1\r\nHost: app\r\n\r\n", "GET")[0]
	if got := a.resp.Trailer.Get("X-Sum"); got != "42" || a.body != "body" {
		t.Errorf("answer %q with trailer X-Sum %q; want \"body\" and 42", a.body, got)
	}
}

// TestH1Timeouts: a client that sends half a head is cut off after
// ReadHeaderTimeout, an idle keep-alive connection after IdleTimeout.
func TestH1Timeouts(t *testing.T) {
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	addr, _ := startWith(t, cfg, ServerOptions{ReadHeaderTimeout: 200 * time.Millisecond, IdleTimeout: 300 * time.Millisecond})
	tests := []struct {
		name, raw string
		answers   int
	}{
		{"half a head", "GET / HTTP/1.1\r\nHost: app\r\n", 0},
		{"idle after an answer", "GET / HTTP/1.1\r\nHost: app\r\n\r\n", 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			began := time.Now()
			io.WriteString(c, tt.raw)
			c.SetReadDeadline(time.Now().Add(5 * time.Second))
			br := bufio.NewReader(c)
			for range tt.answers {
				resp, err := http.ReadResponse(br, nil)
				if err != nil {
					t.Fatal(err)
				}
				io.Copy(io.Discard, resp.Body)
			}
			if _, err := br.ReadByte(); err != io.EOF {
				t.Errorf("read after %v = %v; want EOF (closed by the server)", time.Since(began), err)
			}
			if took := time.Since(began); took > 3*time.Second {
				t.Errorf("connection closed after %v; want about the timeout", took)
			}
		})
	}
}

// TestH1IdleTimeoutKeepsBusyConnections: a connection whose requests come
// closer together than IdleTimeout stays open for longer than IdleTimeout
// in all, and is closed once it idles, never before IdleTimeout after its
// last answer.
func TestH1IdleTimeoutKeepsBusyConnections(t *testing.T) {
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	const idle = 400 * time.Millisecond
	addr, _ := startWith(t, cfg, ServerOptions{IdleTimeout: idle})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	br := bufio.NewReader(c)
	began := time.Now()
	var last time.Time
	for i := range 12 { // 12 x 100 ms: three times the idle timeout
		if i > 0 {
			time.Sleep(idle / 4)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		if _, err := io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n"); err != nil {
			t.Fatalf("request %d, %v after the first: %v", i+1, time.Since(began), err)
		}
		resp, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatalf("request %d, %v after the first: %v (the connection should stay open while busy)", i+1, time.Since(began), err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		last = time.Now()
	}
	if _, err := br.ReadByte(); err != io.EOF {
		t.Fatalf("read after idling = %v; want EOF (closed by the server)", err)
	}
	if idled := time.Since(last); idled < idle || idled > 3*time.Second {
		t.Errorf("closed %v after the last answer; want between IdleTimeout (%v) and a little more", idled, idle)
	}
}

// TestH1ShutdownClosesIdleConnections: when Serve's context ends, an idle
// keep-alive connection is closed at once and Serve returns.
func TestH1ShutdownClosesIdleConnections(t *testing.T) {
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	addr, stop := startWith(t, cfg, ServerOptions{})
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: app\r\n\r\n")
	br := bufio.NewReader(c)
	resp, err := http.ReadResponse(br, nil)
	if err != nil {
		t.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	began := time.Now()
	stop()
	if took := time.Since(began); took > 2*time.Second {
		t.Errorf("Serve returned %v after its context ended; want at once with only idle connections", took)
	}
	c.SetReadDeadline(time.Now().Add(2 * time.Second))
	if _, err := br.ReadByte(); err != io.EOF {
		t.Errorf("idle connection after shutdown: read = %v; want EOF", err)
	}
}
