package waypoint

import (
	"bufio"
	"bytes"
	"io"
	"net/http"
	"net/url"
	"reflect"
	"strings"
	"testing"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name, raw, method string
		code              int
		body              string
		cl                int64
		close             bool
		trailer           http.Header
		wantErr           bool
	}{
		{name: "Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT", code: 200, body: "hello", cl: 5},
		{name: "bare LF", raw: "HTTP/1.1 200 OK\nContent-Length: 2\n\nhi", code: 200, body: "hi", cl: 2},
		{name: "chunked with trailer", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: Grpc-Status\r\n\r\n3\r\nabc\r\n0\r\nGrpc-Status: 0\r\n\r\n",
			code: 200, body: "abc", cl: -1, trailer: http.Header{"Grpc-Status": {"0"}}},
		{name: "chunked wins over Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 9\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nok\r\n0\r\n\r\n", code: 200, body: "ok", cl: -1},
		{name: "up to the end", raw: "HTTP/1.1 200 OK\r\n\r\nall of it", code: 200, body: "all of it", cl: -1, close: true},
		{name: "HTTP/1.0", raw: "HTTP/1.0 200 OK\r\nContent-Length: 1\r\n\r\nx", code: 200, body: "x", cl: 1, close: true},
		{name: "Connection: close", raw: "HTTP/1.1 200 OK\r\nConnection: close\r\nContent-Length: 1\r\n\r\nx", code: 200, body: "x", cl: 1, close: true},
		{name: "HEAD keeps Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n", method: "HEAD", code: 200, cl: 100},
		{name: "204", raw: "HTTP/1.1 204 No Content\r\n\r\n", code: 204, cl: 0},
		{name: "304 with Content-Length", raw: "HTTP/1.1 304 Not Modified\r\nContent-Length: 10\r\n\r\n", code: 304, cl: 0},
		{name: "101", raw: "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\r\n", code: 101, cl: 0},
		{name: "conflicting Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\nxx", wantErr: true},
		{name: "invalid Content-Length", raw: "HTTP/1.1 200 OK\r\nContent-Length: 0x1\r\n\r\nx", wantErr: true},
		{name: "unknown transfer encoding", raw: "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n", wantErr: true},
		{name: "obs-fold", raw: "HTTP/1.1 200 OK\r\nX-A: a\r\n b\r\nContent-Length: 0\r\n\r\n", wantErr: true},
		{name: "bad status code", raw: "HTTP/1.1 20 OK\r\n\r\n", wantErr: true},
		{name: "bad version", raw: "HTTP/2 200 OK\r\n\r\n", wantErr: true},
		{name: "short body", raw: "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhi", code: 200, body: "hi", cl: 5, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := &headReader{br: bufio.NewReader(strings.NewReader(tt.raw))}
			req := &http.Request{Method: cmpOr(tt.method, "GET")}
			resp, err := readAnswer(h, req)
			if err != nil {
				if !tt.wantErr {
					t.Fatalf("readResponse(%q) = %v", tt.raw, err)
				}
				return
			}
			body, err := io.ReadAll(resp.Body)
			if (err != nil) != tt.wantErr {
				t.Fatalf("reading the body of %q: %v; want error %v", tt.raw, err, tt.wantErr)
			}
			if resp.StatusCode != tt.code || string(body) != tt.body || resp.ContentLength != tt.cl || resp.Close != tt.close {
				t.Errorf("readResponse(%q) = %d %q cl %d close %v; want %d %q cl %d close %v",
					tt.raw, resp.StatusCode, body, resp.ContentLength, resp.Close, tt.code, tt.body, tt.cl, tt.close)
			}
			if tt.trailer != nil {
				if !reflect.DeepEqual(resp.Trailer, tt.trailer) {
					t.Errorf("trailer = %v; want %v", resp.Trailer, tt.trailer)
				}
			}
		})
	}
}

func cmpOr(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func TestWriteRequest(t *testing.T) {
	u := &url.URL{Path: "/a b", RawPath: "/a%20b", RawQuery: "q=1"}
	tests := []struct {
		name string
		req  *http.Request
		want string
	}{
		{"GET", &http.Request{Method: "GET", URL: u, Host: "app", Header: http.Header{"X-A": {"1"}}, Body: http.NoBody},
			"GET /a%20b?q=1 HTTP/1.1\r\nHost: app\r\nX-A: 1\r\n\r\n"},
		{"empty POST", &http.Request{Method: "POST", URL: &url.URL{Path: "/"}, Host: "app", Header: http.Header{}},
			"POST / HTTP/1.1\r\nHost: app\r\nContent-Length: 0\r\n\r\n"},
		{"Content-Length body", &http.Request{Method: "PUT", URL: &url.URL{Path: "/"}, Host: "app", Header: http.Header{}, Body: io.NopCloser(strings.NewReader("hello")), ContentLength: 5},
			"PUT / HTTP/1.1\r\nHost: app\r\nContent-Length: 5\r\n\r\nhello"},
		{"chunked with trailer", &http.Request{Method: "POST", URL: &url.URL{Path: "/"}, Host: "app", Header: http.Header{}, Body: io.NopCloser(strings.NewReader("abc")), ContentLength: -1,
			Trailer: http.Header{"X-T": {"1"}}},
			"POST / HTTP/1.1\r\nHost: app\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n3\r\nabc\r\n0\r\nX-T: 1\r\n\r\n"},
		{"close, hop fields of the header ignored", &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "app", Close: true,
			Header: http.Header{"Content-Length": {"9"}, "Transfer-Encoding": {"chunked"}, "Host": {"evil"}}},
			"GET / HTTP/1.1\r\nHost: app\r\nConnection: close\r\n\r\n"},
		{"CR LF in a value", &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "app", Header: http.Header{"X-A": {"a\r\nX-Injected: 1"}}},
			"GET / HTTP/1.1\r\nHost: app\r\nX-A: a X-Injected: 1\r\n\r\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var b bytes.Buffer
			bw := bufio.NewWriter(&b)
			if err := writeRequest(bw, tt.req, nil); err != nil {
				t.Fatalf("writeRequest(, nil) = %v", err)
			}
			bw.Flush()
			if got := b.String(); got != tt.want {
				t.Errorf("writeRequest(, nil) wrote %q; want %q", got, tt.want)
			}
			// net/http reads it back as the same request.
			got, err := http.ReadRequest(bufio.NewReader(&b))
			if err != nil {
				t.Fatalf("http.ReadRequest of what writeRequest wrote: %v", err)
			}
			io.ReadAll(got.Body)
		})
	}
	for _, tt := range []struct {
		name string
		req  *http.Request
	}{
		{"short body", &http.Request{Method: "PUT", URL: &url.URL{Path: "/"}, Host: "app", Body: io.NopCloser(strings.NewReader("hi")), ContentLength: 5}},
		{"invalid Host", &http.Request{Method: "GET", URL: &url.URL{Path: "/"}, Host: "a\r\nb"}},
	} {
		if err := writeRequest(bufio.NewWriter(io.Discard), tt.req, nil); err == nil {
			t.Errorf("writeRequest(%s) = nil; want an error", tt.name)
		}
	}
}

// TestWireAllocs guards the allocations of the HTTP/1.1 hot path: a request
// head parsed by h1Server, the request written upstream, the answer parsed.
func TestWireAllocs(t *testing.T) {
	const reqHead = "GET /api/v1/reviews?x=1 HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: fortio.org/fortio-1.66.5\r\nAccept: */*\r\nX-Request-Id: abc\r\nTraceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n\r\n"
	const answer = "HTTP/1.1 200 OK\r\nServer: nginx\r\nDate: Wed, 02 Dec 2026 15:00:00 GMT\r\nContent-Type: text/plain\r\nContent-Length: 2\r\nConnection: keep-alive\r\nAccept-Ranges: bytes\r\n\r\nok"
	c := &h1ServerConn{srv: &h1Server{maxHeaderBytes: 64 << 10}}
	rr := strings.NewReader(reqHead)
	c.br = bufio.NewReader(rr)
	ar := strings.NewReader(answer)
	h := &headReader{br: bufio.NewReader(ar)}
	out := &http.Request{Method: "GET", URL: &url.URL{Path: "/api/v1/reviews", RawQuery: "x=1"}, Host: "reviews:9080",
		Header: http.Header{"Accept": {"*/*"}, "X-Request-Id": {"abc"}, "X-Forwarded-For": {"10.0.0.1"}, "X-Forwarded-Proto": {"http"}}, Body: http.NoBody}
	fields := []field{{"Accept", "*/*"}, {"X-Request-Id", "abc"}, {"X-Forwarded-For", "10.0.0.1"}, {"X-Forwarded-Proto", "http"}}
	bw := bufio.NewWriter(io.Discard)
	tests := []struct {
		name string
		max  float64
		fn   func()
	}{
		// The head's string, the field list, the URL.
		{"readRequest", 3, func() {
			rr.Reset(reqHead)
			c.br.Reset(rr)
			if _, err := c.readRequest(); err != nil {
				t.Fatal(err)
			}
		}},
		{"writeRequest", 0, func() {
			if err := writeRequest(bw, out, nil); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
		}},
		{"writeRequest from a field list", 0, func() {
			if err := writeRequest(bw, &http.Request{Method: "GET", URL: out.URL, Host: out.Host, Body: http.NoBody}, fields); err != nil {
				t.Fatal(err)
			}
			bw.Flush()
		}},
		{"writeStatusLine", 0, func() { writeStatusLine(bw, 200); bw.Flush() }},
		// The head's string and the answer's store (Response, body reader,
		// field spans): no header map (the proxy writes the fields as read).
		{"readResponse", 2, func() {
			ar.Reset(answer)
			h.br.Reset(ar)
			if _, raw, err := h.readResponse(out, new(answerStore)); err != nil || raw.head == "" {
				t.Fatalf("readResponse = %q, %v; want the fields left raw", raw.head, err)
			}
		}},
	}
	for _, tt := range tests {
		if got := testing.AllocsPerRun(100, tt.fn); got > tt.max {
			t.Errorf("%s allocates %v times per call; want at most %v", tt.name, got, tt.max)
		}
	}
}

// readAnswer is headReader.readResponse with the header map built, as
// answerHeader builds it when the proxy needs one.
func readAnswer(h *headReader, req *http.Request) (*http.Response, error) {
	resp, raw, err := h.readResponse(req, new(answerStore))
	if err == nil && raw.head != "" {
		resp.Header = raw.header()
	}
	return resp, err
}
