package waypoint

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// readProxyHeader reads a PROXY header (v1 or v2) from br and describes
// it as "v1 TCP4 src dst sport dport" or "v2 src:port dst:port".
func readProxyHeader(br *bufio.Reader) (string, error) {
	first, err := br.Peek(1)
	if err != nil {
		return "", err
	}
	if first[0] == 'P' {
		line, err := br.ReadString('\n')
		return "v1 " + strings.TrimSuffix(strings.TrimPrefix(line, "PROXY "), "\r\n"), err
	}
	head := make([]byte, 16)
	if _, err := io.ReadFull(br, head); err != nil {
		return "", err
	}
	if !bytes.Equal(head[:12], []byte("\r\n\r\n\x00\r\nQUIT\n")) || head[12] != 0x21 || head[13] != 0x11 {
		return "", fmt.Errorf("not a v2 TCP4 PROXY header: % x", head)
	}
	body := make([]byte, binary.BigEndian.Uint16(head[14:]))
	if _, err := io.ReadFull(br, body); err != nil || len(body) < 12 {
		return "", fmt.Errorf("v2 addresses: %v", err)
	}
	src := netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[0:4])), binary.BigEndian.Uint16(body[8:]))
	dst := netip.AddrPortFrom(netip.AddrFrom4([4]byte(body[4:8])), binary.BigEndian.Uint16(body[10:]))
	return fmt.Sprintf("v2 %s %s", src, dst), nil
}

// TestProxyProtocol: a cluster with proxyProtocol sends each connection's
// PROXY header first (v1 or v2) with the client's address and the one it
// dialled: one connection per HTTP request, and relayed connections too.
func TestProxyProtocol(t *testing.T) {
	var conns atomic.Int64
	// The backend answers each request with the PROXY header its
	// connection started with.
	httpBackend := tcpBackend(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		hdr, err := readProxyHeader(br)
		if err != nil {
			hdr = "error: " + err.Error()
		}
		for {
			req, err := http.ReadRequest(br)
			if err != nil {
				return
			}
			io.Copy(io.Discard, req.Body)
			fmt.Fprintf(c, "HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", len(hdr), hdr)
		}
	})
	for _, version := range []int{1, 2} {
		cl := clusterOf("b", httpBackend)
		cl.Traffic.ProxyProtocol = version
		h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("b")}), nil)
		before := conns.Load()
		client := newClient(t) // one client connection, kept alive
		_, proxyPort, _ := net.SplitHostPort(h.addr)
		for range 2 {
			code, body := h.get(t, client, "/", nil)
			want := fmt.Sprintf("v%d ", version)
			if version == 1 {
				want += "TCP4 127.0.0.1 127.0.0.1 "
			} else {
				want += "127.0.0.1:"
			}
			if code != 200 || !strings.HasPrefix(body, want) || !strings.HasSuffix(body, proxyPort) {
				t.Errorf("v%d: %d, the backend saw %q; want %q... ending in the proxy's port %s", version, code, body, want, proxyPort)
			}
		}
		if n := conns.Load() - before; n != 2 {
			t.Errorf("v%d: 2 requests on one client connection took %d upstream connections; want 2 (one each)", version, n)
		}
	}

	// A relayed connection's header names its client.
	echoHeader := tcpBackend(t, func(c net.Conn) {
		hdr, err := readProxyHeader(bufio.NewReader(c))
		if err != nil {
			hdr = "error: " + err.Error()
		}
		io.WriteString(c, hdr+"\n")
	})
	relay := clusterOf("echo", echoHeader)
	relay.Traffic.ProxyProtocol = 1
	c := dialServeTCP(t, &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "tcp", Port: 9000, TCP: &model.TCPRoute{Name: "echo", Destinations: to("echo")}}},
		Clusters:  []model.L7Cluster{relay},
	}}, nil)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, _ := bufio.NewReader(c).ReadString('\n')
	_, cport, _ := net.SplitHostPort(c.LocalAddr().String())
	_, dport, _ := net.SplitHostPort(c.RemoteAddr().String())
	if want := fmt.Sprintf("v1 TCP4 127.0.0.1 127.0.0.1 %s %s\n", cport, dport); line != want {
		t.Errorf("a relayed connection's header %q; want %q", line, want)
	}
}

// TestProxyHeader: unknown or mixed addresses give v1's UNKNOWN and v2's
// LOCAL; IPv6 ones TCP6 and the v2 IPv6 family.
func TestProxyHeader(t *testing.T) {
	v4 := netip.MustParseAddrPort("198.18.0.1:4000")
	v6 := netip.MustParseAddrPort("[2001:db8::1]:443")
	for _, tt := range []struct {
		version int
		a       proxyAddrs
		want    string
	}{
		{1, proxyAddrs{}, "PROXY UNKNOWN\r\n"},
		{1, proxyAddrs{src: v4, dst: v6}, "PROXY UNKNOWN\r\n"},
		{1, proxyAddrs{src: v6, dst: v6}, "PROXY TCP6 2001:db8::1 2001:db8::1 443 443\r\n"},
		{2, proxyAddrs{}, "\r\n\r\n\x00\r\nQUIT\n\x20\x00\x00\x00"},
	} {
		if got := string(proxyHeader(tt.version, tt.a)); got != tt.want {
			t.Errorf("v%d %+v: %q; want %q", tt.version, tt.a, got, tt.want)
		}
	}
	if b := proxyHeader(2, proxyAddrs{src: v6, dst: v6}); len(b) != 16+36 || b[13] != 0x21 {
		t.Errorf("v2 IPv6 header: % x", b)
	}
}
