package dnsproxy

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"io"
	"net"
	"net/netip"
	"os"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
)

// tcpResolver is a DNS-over-TCP resolver answering every query with one A
// record, after delay for names in slow; it keeps the queries it got, and
// counts its connections.
type tcpResolver struct {
	addr    netip.AddrPort
	answer  [4]byte
	delay   time.Duration
	slow    map[string]bool
	got     chan []byte
	accepts atomic.Int64
}

// serveTCPResolver serves r on ln until the test ends.
func serveTCPResolver(t *testing.T, ln net.Listener, r *tcpResolver) *tcpResolver {
	t.Helper()
	t.Cleanup(func() { ln.Close() })
	r.addr = netip.MustParseAddrPort(ln.Addr().String())
	r.got = make(chan []byte, 64)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			r.accepts.Add(1)
			go func() {
				defer c.Close()
				for {
					q, err := readMessage(c)
					if err != nil {
						return
					}
					r.got <- q
					var m dnsmessage.Message
					if m.Unpack(q) != nil || len(m.Questions) != 1 {
						return
					}
					go func() {
						if r.slow[m.Questions[0].Name.String()] {
							time.Sleep(r.delay)
						}
						m.Response = true
						m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 30},
							Body: &dnsmessage.AResource{A: r.answer}}}
						out, _ := m.Pack()
						_, _ = c.Write(frame(out))
					}()
				}
			}()
		}
	}()
	return r
}

// readMessage reads one length-prefixed DNS message.
func readMessage(c io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(c, hdr[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	_, err := io.ReadFull(c, m)
	return m, err
}

// tcpProxy serves s's ServeTCP on a listener of the test's inside the pod's
// netns (where the outbound listener would take the connection), telling
// ServeTCP the client was going to orig; it returns the listener's address.
func tcpProxy(t *testing.T, s *Server, nsPath string, orig netip.AddrPort) string {
	t.Helper()
	ln := nstest.MustListen(t)(netns.Listen(nsPath, "127.0.0.1:0", netns.ListenOptions{}))
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go s.ServeTCP(c, orig)
		}
	}()
	return ln.Addr().String()
}

// dialTCP connects from inside the netns at nsPath to addr.
func dialTCP(t *testing.T, nsPath, addr string) net.Conn {
	t.Helper()
	c, err := netns.Dial(context.Background(), nsPath, addr, netns.DialOptions{Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	_ = c.SetDeadline(time.Now().Add(5 * time.Second))
	return c
}

// withID returns q with its ID set to id.
func withID(q []byte, id uint16) []byte {
	q = bytes.Clone(q)
	binary.BigEndian.PutUint16(q, id)
	return q
}

// readAnswer reads one answer from c and parses it.
func readAnswer(t *testing.T, c net.Conn) *dnsmessage.Message {
	t.Helper()
	a, err := readMessage(c)
	if err != nil {
		t.Fatalf("read answer: %v", err)
	}
	var m dnsmessage.Message
	if err := m.Unpack(a); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return &m
}

// addrsOf returns the A records of an answer.
func addrsOf(m *dnsmessage.Message) []netip.Addr {
	var out []netip.Addr
	for _, r := range m.Answers {
		if a, ok := r.Body.(*dnsmessage.AResource); ok {
			out = append(out, netip.AddrFrom4(a.A))
		}
	}
	return out
}

// tcpSetup is a pod with a DNS proxy and a resolver on the pod's network
// (the one the pod dials over TCP, on port 53), plus a cluster DNS on the
// test's loopback.
type tcpSetup struct {
	pod      nstest.Pod
	s        *Server
	resolver *tcpResolver // in the peer netns, at orig
	upstream *tcpResolver // the cluster DNS, on the agent's loopback
	many     []netip.Addr // the addresses of many.example.com
}

func newTCPSetup(t *testing.T, name string, third byte, opts Options) *tcpSetup {
	t.Helper()
	pod, peer := nstest.Pair(t, name, netip.AddrFrom4([4]byte{198, 19, third, 2}), netip.AddrFrom4([4]byte{198, 19, third, 3}))
	ts := &tcpSetup{pod: pod}
	for i := range 300 {
		ts.many = append(ts.many, netip.AddrFrom4([4]byte{10, 1, byte(i >> 8), byte(i)}))
	}
	mesh := map[string][]netip.Addr{
		"api.partner.example": {netip.AddrFrom4([4]byte{198, 19, third, 30})},
		"many.example.com":    ts.many,
	}
	// Slow answers take longer than the idle timeout.
	delay := 300 * time.Millisecond
	if opts.IdleTimeout > 0 {
		delay = 2 * opts.IdleTimeout
	}
	ln := nstest.MustListen(t)(netns.Listen(peer.Path, netip.AddrPortFrom(peer.Addr, 53).String(), netns.ListenOptions{}))
	ts.resolver = serveTCPResolver(t, ln, &tcpResolver{answer: [4]byte{198, 19, third, 53}, delay: delay,
		slow: map[string]bool{"slow.example.org.": true}})
	upLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ts.upstream = serveTCPResolver(t, upLn, &tcpResolver{answer: [4]byte{198, 19, 44, 99}})
	opts.Netns = pod.Path
	opts.Lookup = func(name string) ([]netip.Addr, bool) { a, ok := mesh[name]; return a, ok }
	opts.Upstream = func() string { return ts.upstream.addr.String() }
	opts.Mark = testMark
	if opts.Timeout == 0 {
		opts.Timeout = 2 * time.Second
	}
	opts.Errorf = t.Logf
	if ts.s, err = Start(opts); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ts.s.Close() })
	return ts
}

// TestServeTCP: a pod asking over TCP, on one connection, gets mesh names
// answered by the proxy (a large answer whole, not cut to what UDP takes)
// and other names answered by the resolver it dialled, which gets the
// query unchanged over TCP from the pod's network; when the resolver it
// dialled may not be forwarded to, the cluster DNS answers.
func TestServeTCP(t *testing.T) {
	ts := newTCPSetup(t, "mlna-dnst", 48, Options{})
	tests := []struct {
		name         string
		orig         netip.AddrPort // where the pod dialled
		qname        string
		want         []netip.Addr
		toResolver   bool // forwarded to orig
		toUpstream   bool // forwarded to the cluster DNS
		minAnswerLen int
	}{
		{name: "mesh name", orig: ts.resolver.addr, qname: "api.partner.example.", want: []netip.Addr{netip.MustParseAddr("198.19.48.30")}},
		// 300 A records (over 4800 bytes) do not fit UDP's 512 bytes
		// nor EDNS0's 4096: over TCP they are all there.
		{name: "large answer", orig: ts.resolver.addr, qname: "many.example.com.", want: ts.many, minAnswerLen: maxMessage},
		{name: "other name", orig: ts.resolver.addr, qname: "example.org.", want: []netip.Addr{netip.MustParseAddr("198.19.48.53")}, toResolver: true},
		{name: "resolver on loopback", orig: netip.MustParseAddrPort("127.0.0.1:53"), qname: "example.org.", want: []netip.Addr{netip.MustParseAddr("198.19.44.99")}, toUpstream: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialTCP(t, ts.pod.Path, tcpProxy(t, ts.s, ts.pod.Path, tt.orig))
			// Two queries one after the other on the connection.
			for _, id := range []uint16{0x0101, 0x0202} {
				q := withID(newQuery(t, tt.qname, dnsmessage.TypeA), id)
				if _, err := c.Write(frame(q)); err != nil {
					t.Fatal(err)
				}
				a, err := readMessage(c)
				if err != nil {
					t.Fatalf("query %#04x for %s: read answer: %v", id, tt.qname, err)
				}
				if len(a) < tt.minAnswerLen {
					t.Errorf("answer of %d bytes; want over %d", len(a), tt.minAnswerLen)
				}
				var m dnsmessage.Message
				if err := m.Unpack(a); err != nil {
					t.Fatalf("answer does not parse: %v", err)
				}
				if m.ID != id || !m.Response || m.RCode != dnsmessage.RCodeSuccess || m.Truncated {
					t.Errorf("query %#04x: answer ID %#04x, response %v, rcode %v, TC %v; want the query's ID, NOERROR, not truncated", id, m.ID, m.Response, m.RCode, m.Truncated)
				}
				if d := cmp.Diff(tt.want, addrsOf(&m), cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
					t.Errorf("query %#04x for %s: addresses (-want +got):\n%s", id, tt.qname, d)
				}
				for _, r := range []struct {
					name string
					r    *tcpResolver
					want bool
				}{{"the resolver dialled", ts.resolver, tt.toResolver}, {"the cluster DNS", ts.upstream, tt.toUpstream}} {
					select {
					case got := <-r.r.got:
						if !r.want {
							t.Errorf("%s got the query; want it answered elsewhere", r.name)
						} else if !bytes.Equal(got, q) {
							t.Errorf("%s got %q; want the query unchanged (%q)", r.name, got, q)
						}
					default:
						if r.want {
							t.Errorf("%s did not get the query", r.name)
						}
					}
				}
			}
		})
	}
	if n := ts.resolver.accepts.Load(); n != 1 {
		t.Errorf("the resolver dialled got %d connections; want 1 (both queries of a client connection on one)", n)
	}
}

// TestServeTCPPipelined: queries sent back to back on one connection are
// answered as each completes: a mesh name's answer overtakes a slow
// forwarded one, and two forwarded ones share one upstream connection.
func TestServeTCPPipelined(t *testing.T) {
	ts := newTCPSetup(t, "mlna-dnsp", 49, Options{})
	c := dialTCP(t, ts.pod.Path, tcpProxy(t, ts.s, ts.pod.Path, ts.resolver.addr))
	queries := map[uint16]string{1: "slow.example.org.", 2: "example.org.", 3: "api.partner.example."}
	var all []byte
	for _, id := range []uint16{1, 2, 3} {
		all = append(all, frame(withID(newQuery(t, queries[id], dnsmessage.TypeA), id))...)
	}
	if _, err := c.Write(all); err != nil { // in one segment
		t.Fatal(err)
	}
	want := map[uint16]netip.Addr{1: netip.MustParseAddr("198.19.49.53"), 2: netip.MustParseAddr("198.19.49.53"), 3: netip.MustParseAddr("198.19.49.30")}
	var order []uint16
	for range 3 {
		m := readAnswer(t, c)
		order = append(order, m.ID)
		name, ok := queries[m.ID]
		if !ok || len(m.Questions) != 1 || m.Questions[0].Name.String() != name {
			t.Fatalf("answer ID %#04x, questions %v; want the ID and question of a query", m.ID, m.Questions)
		}
		if got := addrsOf(m); len(got) != 1 || got[0] != want[m.ID] {
			t.Errorf("%s: %v; want %v", name, got, want[m.ID])
		}
	}
	if order[2] != 1 {
		t.Errorf("answers in order %v; want the slow query's (1) last", order)
	}
	if n := ts.resolver.accepts.Load(); n != 1 {
		t.Errorf("the resolver got %d connections; want 1", n)
	}
}

// TestServeTCPCloses: a connection is closed at a message length of 0, at
// a query that does not parse (neither reaches the resolver), and once
// idle for IdleTimeout.
func TestServeTCPCloses(t *testing.T) {
	const idle = 300 * time.Millisecond
	ts := newTCPSetup(t, "mlna-dnsc", 50, Options{IdleTimeout: idle})
	addr := tcpProxy(t, ts.s, ts.pod.Path, ts.resolver.addr)
	tests := []struct {
		name string
		send []byte
	}{
		{name: "length 0", send: []byte{0, 0}},
		{name: "too long for a query", send: []byte{0xff, 0xff}},
		{name: "malformed query", send: frame([]byte("not a dns message"))},
		{name: "a response", send: frame(func() []byte {
			q := newQuery(t, "example.org.", dnsmessage.TypeA)
			q[2] |= 0x80 // QR
			return q
		}())},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := dialTCP(t, ts.pod.Path, addr)
			// A good query first: the connection works until the bad one.
			if _, err := c.Write(frame(newQuery(t, "api.partner.example.", dnsmessage.TypeA))); err != nil {
				t.Fatal(err)
			}
			readAnswer(t, c)
			start := time.Now()
			if _, err := c.Write(tt.send); err != nil {
				t.Fatal(err)
			}
			n, err := c.Read(make([]byte, 512))
			if n != 0 || err == nil {
				t.Fatalf("read %d bytes, %v; want the connection closed", n, err)
			}
			if time.Since(start) >= idle {
				t.Errorf("closed after %v; want at once, not at the idle timeout", time.Since(start))
			}
		})
	}
	select {
	case q := <-ts.resolver.got:
		t.Errorf("the resolver got %q; want nothing", q)
	default:
	}

	t.Run("idle", func(t *testing.T) {
		c := dialTCP(t, ts.pod.Path, addr)
		if _, err := c.Write(frame(newQuery(t, "api.partner.example.", dnsmessage.TypeA))); err != nil {
			t.Fatal(err)
		}
		readAnswer(t, c)
		start := time.Now()
		n, err := c.Read(make([]byte, 512))
		if n != 0 || !errors.Is(err, io.EOF) {
			t.Fatalf("read %d bytes, %v; want the connection closed (EOF)", n, err)
		}
		if took := time.Since(start); took < idle-50*time.Millisecond || took > idle+2*time.Second {
			t.Errorf("closed after %v idle; want about %v", took, idle)
		}
	})

	// Waiting for an answer is not idle: a query slower than IdleTimeout
	// is answered.
	t.Run("slow answer", func(t *testing.T) {
		c := dialTCP(t, ts.pod.Path, addr)
		if _, err := c.Write(frame(newQuery(t, "slow.example.org.", dnsmessage.TypeA))); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		m := readAnswer(t, c)
		if got := addrsOf(m); len(got) != 1 || got[0] != netip.MustParseAddr("198.19.50.53") {
			t.Errorf("slow.example.org.: %v; want the resolver's 198.19.50.53", got)
		}
		if took := time.Since(start); took < idle {
			t.Errorf("answered after %v; the test wants an answer slower than the idle timeout (%v)", took, idle)
		}
	})
}

// TestServeTCPClose: Close ends the connections ServeTCP serves.
func TestServeTCPClose(t *testing.T) {
	ts := newTCPSetup(t, "mlna-dnsx", 51, Options{})
	c := dialTCP(t, ts.pod.Path, tcpProxy(t, ts.s, ts.pod.Path, ts.resolver.addr))
	if _, err := c.Write(frame(newQuery(t, "api.partner.example.", dnsmessage.TypeA))); err != nil {
		t.Fatal(err)
	}
	readAnswer(t, c)
	if err := ts.s.Close(); err != nil {
		t.Fatal(err)
	}
	if n, err := c.Read(make([]byte, 512)); n != 0 || err == nil || errors.Is(err, os.ErrDeadlineExceeded) {
		t.Fatalf("read %d bytes, %v after Close; want the connection closed", n, err)
	}
}
