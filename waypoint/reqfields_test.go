package waypoint

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// TestReqFieldsActAsHeader: a request's fields kept as a list read and
// edit as the header map they stand for, through every operation the
// proxy applies, and the map built from them at the end is the one the
// same operations leave on an http.Header.
func TestReqFieldsActAsHeader(t *testing.T) {
	fields := []field{
		{"Accept", "*/*"}, {"Connection", "keep-alive, X-Hop"}, {"X-Hop", "1"}, {"Keep-Alive", "5"},
		{"Cookie", "a=1"}, {"Cookie", "b=2"}, {"X-Forwarded-Client-Cert", "forged"}, {"Upgrade", "h2c"},
		{"Te", "trailers"}, {"User-Agent", "curl"},
	}
	ops := []struct {
		name string
		list func(f *reqFields)
		hdr  func(h http.Header)
	}{
		{"set an existing field", func(f *reqFields) { f.Set("cookie", "c=3") }, func(h http.Header) { h.Set("cookie", "c=3") }},
		{"set a new field", func(f *reqFields) { f.Set("x-new", "v") }, func(h http.Header) { h.Set("x-new", "v") }},
		{"add to a field", func(f *reqFields) { f.Add("accept", "text/html") }, func(h http.Header) { h.Add("accept", "text/html") }},
		{"delete a field", func(f *reqFields) { f.Del("USER-AGENT") }, func(h http.Header) { h.Del("USER-AGENT") }},
		{"delete internal fields", func(f *reqFields) { f.deleteIf(isInternalHeader) }, func(h http.Header) { deleteHeaders(h, isInternalHeader) }},
		{"remove hop-by-hop fields", func(f *reqFields) { f.removeHop(false) }, func(h http.Header) { removeHopHeaders(h, false) }},
		{"header operations", func(f *reqFields) {
			applyHeaderOps(f, model.HeaderOps{Set: map[string]string{"x-a": "1"}, Add: map[string]string{"accept": "x"}, Remove: []string{"x-new"}})
		}, func(h http.Header) {
			applyHeaderOps(h, model.HeaderOps{Set: map[string]string{"x-a": "1"}, Add: map[string]string{"accept": "x"}, Remove: []string{"x-new"}})
		}},
	}
	f := &reqFields{list: append([]field(nil), fields...)}
	h := (&reqFields{list: append([]field(nil), fields...)}).header()
	for _, o := range ops {
		o.list(f)
		o.hdr(h)
		for _, k := range []string{"Accept", "Cookie", "X-New", "User-Agent", "X-Hop", "Upgrade", "X-A", "Missing"} {
			if got, want := f.Values(k), h.Values(k); !reflect.DeepEqual(got, want) {
				t.Errorf("after %s: Values(%q) = %q; want %q", o.name, k, got, want)
			}
			if got, want := f.Get(k), h.Get(k); got != want {
				t.Errorf("after %s: Get(%q) = %q; want %q", o.name, k, got, want)
			}
		}
	}
	r := &http.Request{}
	f.bind(r)
	if got := f.header(); !reflect.DeepEqual(got, h) || !reflect.DeepEqual(r.Header, h) {
		t.Errorf("the map built from the list = %v (request's %v); want %v", got, r.Header, h)
	}
	// From here on the fields are the map: edits show in the request's.
	f.Set("X-After", "1")
	if r.Header.Get("X-After") != "1" {
		t.Errorf("an edit after the map was built is not in the request's Header: %v", r.Header)
	}
}

// TestUpstreamRequestFields: an HTTP/1.1 request reaches the upstream with
// the client's fields in the client's order, the hop-by-hop ones and those
// its Connection field names dropped, a client's forged internal field
// removed, and the proxy's own fields added, once each.
func TestUpstreamRequestFields(t *testing.T) {
	heads := make(chan string, 1)
	app := tcpBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		var head strings.Builder
		for {
			line, err := br.ReadString('\n')
			if err != nil {
				return
			}
			if line == "\r\n" {
				break
			}
			head.WriteString(line)
		}
		heads <- head.String()
		io.WriteString(c, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	})
	rt := model.L7Route{Name: "all", Destinations: to("app"), RequestHeaders: model.HeaderOps{Set: map[string]string{"x-route": "r1"}}}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, rt), nil)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "GET /x?q=1 HTTP/1.1\r\nZ-First: 1\r\nHost: reviews\r\nConnection: keep-alive, X-Private\r\n"+
		"X-Private: secret\r\nx-forwarded-client-cert: forged\r\nA-Second: 2\r\nA-Second: 3\r\nKeep-Alive: 5\r\n"+
		"X-Request-Id: id-1\r\nX-Forwarded-For: 198.18.9.9\r\n\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	head := <-heads
	lines := strings.Split(strings.TrimSuffix(head, "\r\n"), "\r\n")
	want := []string{"GET /x?q=1 HTTP/1.1", "Host: reviews", "Z-First: 1", "A-Second: 2", "A-Second: 3", "X-Request-Id: id-1",
		"X-Forwarded-For: 198.18.9.9, 127.0.0.1", "X-Forwarded-Proto: http", "X-Route: r1"}
	var got []string
	for _, l := range lines {
		if !strings.HasPrefix(l, "Traceparent: ") { // random
			got = append(got, l)
		}
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("upstream head:\n%s\nwant (traceparent aside):\n%s", strings.Join(got, "\n"), strings.Join(want, "\n"))
	}
}
