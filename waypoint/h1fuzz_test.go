package waypoint

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/textproto"
	"net/url"
	"slices"
	"strings"
	"testing"

	"golang.org/x/net/http/httpguts"
)

// parsedRequest is what a parser made of one request of a stream: enough
// to tell where it ended and what a backend would act on.
type parsedRequest struct {
	Method, RequestURI, Host string
	Major, Minor             int
	Chunked                  bool
	ContentLength            int64 // -1 when chunked
	Body                     string
	Header                   http.Header // without the fields framing and Host take
	Close                    bool
}

func summarize(r *http.Request, body []byte) parsedRequest {
	h := r.Header.Clone()
	for _, k := range []string{"Host", "Transfer-Encoding", "Content-Length", "Expect"} {
		delete(h, k)
	}
	return parsedRequest{
		Method: r.Method, RequestURI: r.RequestURI, Host: r.Host, Major: r.ProtoMajor, Minor: r.ProtoMinor,
		Chunked: slices.Contains(r.TransferEncoding, "chunked"), ContentLength: r.ContentLength,
		Body: string(body), Header: h, Close: r.Close,
	}
}

// discardConn takes the 100 Continue the server may write.
type discardConn struct{ net.Conn }

func (discardConn) Write(p []byte) (int, error) { return len(p), nil }

// parseWaypoint reads the requests of data as the waypoint's HTTP/1.1
// server does, bodies included, until one is refused or the data ends.
func parseWaypoint(data []byte) []parsedRequest {
	c := &h1ServerConn{srv: &h1Server{maxHeaderBytes: 8 << 10}, conn: discardConn{}}
	c.br = bufio.NewReaderSize(bytes.NewReader(data), 4096)
	var out []parsedRequest
	for {
		r, err := c.readRequest()
		if err != nil {
			return out
		}
		r.Header = c.res.fields.header() // kept as a list for the proxy
		body, err := io.ReadAll(r.Body)
		if err != nil {
			return out
		}
		out = append(out, summarize(&r, body))
		if r.Close {
			return out
		}
	}
}

// parseNetHTTP reads the requests of data as net/http's server does
// (ReadRequest and the checks its connection loop adds), bodies included.
func parseNetHTTP(data []byte) []parsedRequest {
	rd := bytes.NewReader(data)
	br := bufio.NewReaderSize(rd, 4096)
	var out []parsedRequest
	for {
		// Empty lines before a request line are skipped, a few (RFC 9112
		// section 2.2), as the waypoint does; net/http's server skips them
		// after a POST only.
		for range 4 {
			if p, _ := br.Peek(2); len(p) == 2 && p[0] == '\r' && p[1] == '\n' {
				br.Discard(2)
			} else if len(p) > 0 && p[0] == '\n' {
				br.Discard(1)
			} else {
				break
			}
		}
		// ReadRequest takes Host out of the header; the server's checks
		// need the fields as sent.
		start := len(data) - rd.Len() - br.Buffered()
		r, err := http.ReadRequest(br)
		if err != nil {
			return out
		}
		tp := textproto.NewReader(bufio.NewReader(bytes.NewReader(data[start:])))
		if _, err := tp.ReadLine(); err != nil {
			return out
		}
		fields, err := tp.ReadMIMEHeader()
		if err != nil {
			return out
		}
		hosts, haveHost := fields["Host"]
		if r.ProtoAtLeast(1, 1) && (!haveHost || len(hosts) == 0) && r.Method != http.MethodConnect ||
			len(hosts) > 1 || len(hosts) == 1 && !httpguts.ValidHostHeader(hosts[0]) {
			return out
		}
		for k, vv := range r.Header {
			if !httpguts.ValidHeaderFieldName(k) {
				return out
			}
			for _, v := range vv {
				if !httpguts.ValidHeaderFieldValue(v) {
					return out
				}
			}
		}
		body, err := io.ReadAll(r.Body)
		if err != nil && !(err.Error() == "http: unexpected EOF reading trailer" && rd.Len() == 0 && br.Buffered() <= 1) {
			// (net/http peeks two bytes for the CRLF ending a trailer, so a
			// bare LF there fails at the very end of the data only; before
			// more data it is an empty line: a quirk, not a framing.)
			return out
		}
		out = append(out, summarize(r, body))
		if r.Close || err != nil {
			return out
		}
	}
}

// FuzzH1RequestFraming: the waypoint's own HTTP/1.1 request parser is never
// more lenient than net/http's server, and where both accept a stream they
// see the same requests: same method, target, Host, headers and body, each
// ending at the same byte. A request that one end of a proxy frames
// differently from the other is how requests are smuggled past policy; the
// waypoint may refuse more than net/http does (it does: obs-fold, both
// Transfer-Encoding and Content-Length, ...), never less.
func FuzzH1RequestFraming(f *testing.F) {
	for _, s := range []string{
		"GET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET /a HTTP/1.1\r\nHost: a\r\n\r\nGET /b HTTP/1.1\r\nHost: b\r\nConnection: close\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 5\r\n\r\nhelloGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\nGET /n HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5;ext=1\r\nhello\r\n0\r\nX-T: 1\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\nGET /admin HTTP/1.1\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\nabcd",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\nabcd",
		"POST /p HTTP/1.1\r\nHost: a\r\nContent-Length: +4\r\n\r\nabcd",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: xchunked\r\n\r\n0\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked, identity\r\n\r\n0\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding : chunked\r\n\r\n0\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nX: y\r\n Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"POST /p HTTP/1.1\nHost: a\nContent-Length: 2\n\nhiGET / HTTP/1.1\nHost: a\n\n",
		"POST /p HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
		"GET http://b/x HTTP/1.1\r\nHost: a\r\n\r\n",
		"CONNECT a:443 HTTP/1.1\r\nHost: a:443\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nExpect: 100-continue\r\nContent-Length: 1\r\n\r\nx",
		"\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/1.1\r\nHost: a\r\nX: a\x00b\r\n\r\n",
		"GET /a b HTTP/1.1\r\nHost: a\r\n\r\n",
		"GET / HTTP/2.0\r\nHost: a\r\n\r\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\n5\nhello\n0\n\n",
		"POST /p HTTP/1.1\r\nHost: a\r\nTransfer-Encoding: chunked\r\n\r\nffffffffffffffffff\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		ours, theirs := parseWaypoint(data), parseNetHTTP(data)
		for i, o := range ours {
			if i >= len(theirs) {
				t.Fatalf("the waypoint accepted request %d, which net/http refuses: %+v\nstream: %q", i, o, data)
			}
			if d := diffRequests(o, theirs[i]); d != "" {
				t.Fatalf("request %d: the waypoint and net/http disagree: %s\nstream: %q", i, d, data)
			}
		}
	})
}

func diffRequests(a, b parsedRequest) string {
	var diffs []string
	if a.Method != b.Method || a.RequestURI != b.RequestURI || a.Host != b.Host || a.Major != b.Major || a.Minor != b.Minor {
		diffs = append(diffs, fmt.Sprintf("request line/host %q %q %q %d.%d vs %q %q %q %d.%d",
			a.Method, a.RequestURI, a.Host, a.Major, a.Minor, b.Method, b.RequestURI, b.Host, b.Major, b.Minor))
	}
	if a.Chunked != b.Chunked || a.ContentLength != b.ContentLength || a.Body != b.Body {
		diffs = append(diffs, fmt.Sprintf("body chunked=%v length=%d %q vs chunked=%v length=%d %q",
			a.Chunked, a.ContentLength, a.Body, b.Chunked, b.ContentLength, b.Body))
	}
	if !maps.EqualFunc(a.Header, b.Header, slices.Equal) {
		diffs = append(diffs, fmt.Sprintf("header %v vs %v", a.Header, b.Header))
	}
	if a.Close != b.Close {
		diffs = append(diffs, fmt.Sprintf("close %v vs %v", a.Close, b.Close))
	}
	return strings.Join(diffs, "; ")
}

// parsedResponse is what a parser made of one answer of a stream.
type parsedResponse struct {
	Code, Major, Minor int
	Chunked            bool
	ContentLength      int64
	Body               string
	Header             http.Header // without the framing fields
	Close              bool
}

func summarizeResponse(r *http.Response, body []byte) parsedResponse {
	h := r.Header.Clone()
	for _, k := range []string{"Transfer-Encoding", "Content-Length", "Trailer", "Connection"} { // net/http drops "Connection: close"; the proxy drops hop-by-hop fields anyway
		delete(h, k)
	}
	return parsedResponse{Code: r.StatusCode, Major: r.ProtoMajor, Minor: r.ProtoMinor,
		Chunked: slices.Contains(r.TransferEncoding, "chunked"), ContentLength: r.ContentLength,
		Body: string(body), Header: h, Close: r.Close}
}

// parseResponses reads the answers of data to requests of method with
// read (the waypoint's or net/http's), bodies included, until one fails.
func parseResponses(data []byte, method string, read func(*bufio.Reader, *http.Request) (*http.Response, error)) []parsedResponse {
	br := bufio.NewReaderSize(bytes.NewReader(data), 4096)
	req := &http.Request{Method: method}
	var out []parsedResponse
	for {
		resp, err := read(br, req)
		if err != nil {
			return out
		}
		body, err := io.ReadAll(resp.Body)
		if err != nil {
			return out
		}
		out = append(out, summarizeResponse(resp, body))
		if resp.Close {
			return out
		}
	}
}

// FuzzH1ResponseFraming: the waypoint's reading of an upstream's answers
// agrees with net/http's client where both accept them (same status,
// fields, body and bounds) and is never more lenient: an answer an upstream
// frames one way and the proxy another would desynchronise the answers of
// a reused connection.
func FuzzH1ResponseFraming(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nhiHTTP/1.1 204 No Content\r\n\r\nHTTP/1.1 200 OK\r\nConnection: close\r\n\r\nrest",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n2\r\nhi\r\n0\r\nX-T: 1\r\n\r\nHTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\nabc",
		"HTTP/1.0 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
		"HTTP/1.1 200 OK\nContent-Length: 1\n\nx",
		"HTTP/1.1 2000 OK\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, data []byte, head bool) {
		method := http.MethodGet
		if head {
			method = http.MethodHead
		}
		ours := parseResponses(data, method, func(br *bufio.Reader, req *http.Request) (*http.Response, error) {
			return readAnswer(&headReader{br: br}, req)
		})
		theirs := parseResponses(data, method, http.ReadResponse)
		for i := range min(len(ours), len(theirs)) {
			if c := ours[i].Code; c == theirs[i].Code && (c < 200 || c == 204 || c == 304 || head) {
				// An answer without a body has none either way, whatever
				// its fields say (net/http reports an interim answer's
				// Transfer-Encoding and a length of -1, the waypoint 0).
				for _, r := range []*parsedResponse{&ours[i], &theirs[i]} {
					r.ContentLength, r.Chunked = 0, false
				}
			}
		}
		for i, o := range ours {
			if i >= len(theirs) {
				t.Fatalf("the waypoint accepted answer %d, which net/http refuses: %+v\nstream: %q", i, o, data)
			}
			if th := theirs[i]; o.Code != th.Code || o.Major != th.Major || o.Minor != th.Minor || o.Chunked != th.Chunked ||
				o.ContentLength != th.ContentLength || o.Body != th.Body || o.Close != th.Close || !maps.EqualFunc(o.Header, th.Header, slices.Equal) {
				t.Fatalf("answer %d: the waypoint read %+v, net/http %+v\nstream: %q", i, o, th, data)
			}
		}
	})
}

// FuzzNormalizePath: the one view of a path that routing, policy and the
// upstream share is stable and leaves nothing a backend could read another
// way: normalizing it again changes nothing; it starts with "/" and holds
// no backslash, no empty, "." or ".." segment, and no escape of a slash, a
// backslash or an unreserved character. A backend that decodes the
// remaining escapes once sees the same segments, none of them a dot
// segment: a DENY on a prefix of the normalized path holds for it.
func FuzzNormalizePath(f *testing.F) {
	for _, s := range []string{
		"/", "/admin", "//admin", "/a/../admin", "/admin%2F", "/%2e%2e/admin", "/a/%2E%2E%2fadmin", "/a\\..\\admin",
		"/a/./b/../../admin/", "/%61dmin", "/%zz", "/a%00", "/a#b", "/%252e%252e/admin", "/..;/admin", "/a/.%2e/admin",
	} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		out, err := normalizePath(raw)
		if err != nil {
			return
		}
		again, err := normalizePath(out)
		if err != nil || again != out {
			t.Fatalf("normalizePath(%q) = %q, and again %q, %v; want the same", raw, out, again, err)
		}
		if !strings.HasPrefix(out, "/") || strings.Contains(out, "\\") {
			t.Fatalf("normalizePath(%q) = %q: not rooted, or a backslash", raw, out)
		}
		for i := 0; i+2 < len(out); i++ {
			if out[i] != '%' {
				continue
			}
			d := unhex(out[i+1])<<4 | unhex(out[i+2])
			if d == '/' || d == '\\' || isUnreserved(d) || !isUpperHexDigit(out[i+1]) || !isUpperHexDigit(out[i+2]) {
				t.Fatalf("normalizePath(%q) = %q keeps the escape %s", raw, out, out[i:i+3])
			}
		}
		decoded, err := url.PathUnescape(out)
		if err != nil {
			t.Fatalf("normalizePath(%q) = %q, which a backend cannot decode: %v", raw, out, err)
		}
		segs := strings.Split(decoded, "/")[1:]
		for i, s := range segs {
			if s == "." || s == ".." || s == "" && i < len(segs)-1 {
				t.Fatalf("normalizePath(%q) = %q, which a backend decodes to %q: segment %d is %q", raw, out, decoded, i, s)
			}
		}
	})
}

func isUpperHexDigit(c byte) bool { return '0' <= c && c <= '9' || 'A' <= c && c <= 'F' }
