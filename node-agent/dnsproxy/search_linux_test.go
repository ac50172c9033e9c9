package dnsproxy

import (
	"bytes"
	"fmt"
	"net"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/mesh"
	"github.com/meshlet/meshlet/pkg/model"
)

// TestSearchDomainExpansion: a pod of namespace shop whose resolver tries
// its search domains first (ndots:5) gets a mesh name with any of them
// appended answered at once, with a CNAME to the mesh name and its records
// of the type asked, from the agent's real model (exportTo applied). Names
// that are no such expansion — unknown names, another namespace's search
// domain, a service not exported to shop — reach the upstream unchanged and
// its answer comes back.
func TestSearchDomainExpansion(t *testing.T) {
	pod := nstest.Loopback(t, "mlna-dnss")
	up, got := nxdomainUpstream(t)
	var many4, many6 []netip.Addr
	for i := range 300 {
		many4 = append(many4, netip.AddrFrom4([4]byte{10, 0, byte(i >> 8), byte(i)}))
		many6 = append(many6, netip.AddrFrom16([16]byte{0x20, 0x01, 0x0d, 0xb8, 14: byte(i >> 8), 15: byte(i)}))
	}
	snap := model.NewSnapshot(model.SnapshotInput{Services: []*model.Service{
		{Name: "api", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"api.example.com"},
			VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.10")}},
		{Name: "reviews", Namespace: "bookinfo", Hostnames: []string{"reviews.bookinfo.svc.cluster.local"},
			VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.20"), netip.MustParseAddr("2001:db8::20")}},
		{Name: "private", Namespace: "billing", Source: model.SourceServiceEntry, Hostnames: []string{"private.example.com"},
			VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.30")}, ExportTo: []string{"."}},
		// Contrived, to tell which search domain is tried first: "legacy"
		// with shop.svc.cluster.local and "legacy.shop" with
		// svc.cluster.local make the same name.
		{Name: "legacy", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"legacy"},
			VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.40")}},
		{Name: "legacy-shop", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"legacy.shop"},
			VIPs: []netip.Addr{netip.MustParseAddr("192.0.2.41")}},
		{Name: "many", Namespace: "shop", Source: model.SourceServiceEntry, Hostnames: []string{"many.example.com"},
			VIPs: append(append([]netip.Addr{}, many4...), many6...)},
	}})
	m := mesh.New(mesh.Options{Snapshot: func() *model.Snapshot { return snap }})
	s, err := Start(Options{
		Netns:         pod.Path,
		Lookup:        func(name string) ([]netip.Addr, bool) { return m.LookupHost("shop", name) },
		Upstream:      func() string { return up },
		SearchDomains: KubeSearchDomains("shop", "cluster.local"),
		TTL:           30 * time.Second,
		Timeout:       time.Second,
		Errorf:        t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	tests := []struct {
		name      string
		qname     string
		qtype     dnsmessage.Type
		want      []string // the answer section as dig shows it
		forwarded bool     // else answered by the proxy, NOERROR
	}{
		{name: "namespace search domain", qname: "api.example.com.shop.svc.cluster.local.", qtype: dnsmessage.TypeA, want: []string{
			"api.example.com.shop.svc.cluster.local. 30 IN CNAME api.example.com.",
			"api.example.com. 30 IN A 192.0.2.10",
		}},
		{name: "svc search domain", qname: "api.example.com.svc.cluster.local.", qtype: dnsmessage.TypeA, want: []string{
			"api.example.com.svc.cluster.local. 30 IN CNAME api.example.com.",
			"api.example.com. 30 IN A 192.0.2.10",
		}},
		{name: "cluster search domain", qname: "api.example.com.cluster.local.", qtype: dnsmessage.TypeA, want: []string{
			"api.example.com.cluster.local. 30 IN CNAME api.example.com.",
			"api.example.com. 30 IN A 192.0.2.10",
		}},
		{name: "any case", qname: "API.Example.com.Shop.SVC.cluster.local.", qtype: dnsmessage.TypeA, want: []string{
			"API.Example.com.Shop.SVC.cluster.local. 30 IN CNAME api.example.com.",
			"api.example.com. 30 IN A 192.0.2.10",
		}},
		{name: "service name expanded again", qname: "reviews.bookinfo.svc.cluster.local.shop.svc.cluster.local.", qtype: dnsmessage.TypeA, want: []string{
			"reviews.bookinfo.svc.cluster.local.shop.svc.cluster.local. 30 IN CNAME reviews.bookinfo.svc.cluster.local.",
			"reviews.bookinfo.svc.cluster.local. 30 IN A 192.0.2.20",
		}},
		{name: "AAAA", qname: "reviews.bookinfo.svc.cluster.local.svc.cluster.local.", qtype: dnsmessage.TypeAAAA, want: []string{
			"reviews.bookinfo.svc.cluster.local.svc.cluster.local. 30 IN CNAME reviews.bookinfo.svc.cluster.local.",
			"reviews.bookinfo.svc.cluster.local. 30 IN AAAA 2001:db8::20",
		}},
		{name: "AAAA of a v4-only host", qname: "api.example.com.shop.svc.cluster.local.", qtype: dnsmessage.TypeAAAA, want: []string{
			"api.example.com.shop.svc.cluster.local. 30 IN CNAME api.example.com.",
		}},
		{name: "longest search domain first", qname: "legacy.shop.svc.cluster.local.", qtype: dnsmessage.TypeA, want: []string{
			"legacy.shop.svc.cluster.local. 30 IN CNAME legacy.",
			"legacy. 30 IN A 192.0.2.40",
		}},
		{name: "exact name: no CNAME", qname: "api.example.com.", qtype: dnsmessage.TypeA, want: []string{
			"api.example.com. 30 IN A 192.0.2.10",
		}},
		{name: "unknown name", qname: "nothing.example.com.shop.svc.cluster.local.", qtype: dnsmessage.TypeA, forwarded: true},
		{name: "another namespace's search domain", qname: "api.example.com.billing.svc.cluster.local.", qtype: dnsmessage.TypeA, forwarded: true},
		{name: "not exported to the namespace", qname: "private.example.com.shop.svc.cluster.local.", qtype: dnsmessage.TypeA, forwarded: true},
		{name: "not a search domain", qname: "api.example.com.svc.", qtype: dnsmessage.TypeA, forwarded: true},
		{name: "suffix within a label", qname: "api.example.comshop.svc.cluster.local.", qtype: dnsmessage.TypeAAAA, forwarded: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			q := newQuery(t, tt.qname, tt.qtype)
			m := exchange(t, pod.Path, "127.0.0.1:15053", q)
			if m == nil {
				t.Fatalf("%s %s: no answer", tt.qname, tt.qtype)
			}
			wantQ := []dnsmessage.Question{{Name: dnsmessage.MustNewName(tt.qname), Type: tt.qtype, Class: dnsmessage.ClassINET}}
			if m.ID != 0x4d4c || !m.Response || cmp.Diff(wantQ, m.Questions) != "" {
				t.Errorf("%s %s: ID %#x, questions %v; want the query's (%#x, %v)", tt.qname, tt.qtype, m.ID, m.Questions, 0x4d4c, wantQ)
			}
			upstreamGot := received(got)
			if tt.forwarded {
				if len(upstreamGot) != 1 || !bytes.Equal(upstreamGot[0], q) {
					t.Fatalf("%s %s: upstream got %q; want the query unchanged (%q)", tt.qname, tt.qtype, upstreamGot, q)
				}
				if m.RCode != dnsmessage.RCodeNameError || len(m.Answers) != 0 {
					t.Errorf("%s %s: %v %v; want the upstream's NXDOMAIN relayed", tt.qname, tt.qtype, m.RCode, dig(m))
				}
				return
			}
			if len(upstreamGot) != 0 {
				t.Errorf("%s %s: reached the upstream; want it answered by the proxy", tt.qname, tt.qtype)
			}
			if m.RCode != dnsmessage.RCodeSuccess || !m.Authoritative {
				t.Errorf("%s %s: rcode %v, authoritative %v; want NOERROR from the mesh", tt.qname, tt.qtype, m.RCode, m.Authoritative)
			}
			if d := cmp.Diff(tt.want, dig(m)); d != "" {
				t.Errorf("%s %s: answer section (-want +got):\n%s", tt.qname, tt.qtype, d)
			}
		})
	}

	// 300 addresses do not fit maxMessage, the most a client's OPT record
	// gets: the answer keeps the CNAME and as many as fit (exchange reads
	// at most maxMessage bytes, so a longer answer would not parse).
	// TestLocalAnswerSize has the bounds for other clients.
	for _, typ := range []dnsmessage.Type{dnsmessage.TypeA, dnsmessage.TypeAAAA} {
		qname := "many.example.com.shop.svc.cluster.local."
		m := exchange(t, pod.Path, "127.0.0.1:15053", ednsQuery(t, qname, typ, opt(t, maxMessage, 0)))
		if m == nil || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) < 2 {
			t.Fatalf("%s %s: %+v; want a CNAME and addresses", qname, typ, m)
		}
		lines := dig(m)
		if want := qname + " 30 IN CNAME many.example.com."; lines[0] != want {
			t.Errorf("%s %s: first record %q; want %q", qname, typ, lines[0], want)
		}
		prefix := "many.example.com. 30 IN " + strings.TrimPrefix(typ.String(), "Type") + " "
		for _, l := range lines[1:] {
			if !strings.HasPrefix(l, prefix) {
				t.Errorf("%s %s: record %q; want %s...", qname, typ, l, prefix)
			}
		}
		if n := len(lines) - 1; n >= 300 || n < 100 {
			t.Errorf("%s %s: %d addresses in the answer; want as many of the 300 as fit in %d bytes", qname, typ, n, maxMessage)
		}
	}
	if n := len(received(got)); n != 0 {
		t.Errorf("the upstream got %d queries for a mesh name; want none", n)
	}
}

// nxdomainUpstream is a resolver on the test's loopback that answers every
// query NXDOMAIN, as the cluster DNS does a search-domain expansion of a
// name it does not know, and sends each datagram it got to the channel
// before answering.
func nxdomainUpstream(t *testing.T) (string, chan []byte) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { pc.Close() })
	got := make(chan []byte, 16)
	go func() {
		buf := make([]byte, 4096)
		for {
			n, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			got <- append([]byte(nil), buf[:n]...)
			var m dnsmessage.Message
			if m.Unpack(buf[:n]) != nil {
				continue
			}
			m.Response, m.RCode, m.Answers = true, dnsmessage.RCodeNameError, nil
			out, _ := m.Pack()
			_, _ = pc.WriteTo(out, from)
		}
	}()
	return pc.LocalAddr().String(), got
}

// received drains the datagrams an nxdomainUpstream got so far.
func received(got chan []byte) [][]byte {
	var out [][]byte
	for {
		select {
		case q := <-got:
			out = append(out, q)
		default:
			return out
		}
	}
}

// dig renders an answer section as dig prints it: name, TTL, class, type
// and data, one record a line.
func dig(m *dnsmessage.Message) []string {
	var lines []string
	for _, r := range m.Answers {
		var data string
		switch b := r.Body.(type) {
		case *dnsmessage.AResource:
			data = netip.AddrFrom4(b.A).String()
		case *dnsmessage.AAAAResource:
			data = netip.AddrFrom16(b.AAAA).String()
		case *dnsmessage.CNAMEResource:
			data = b.CNAME.String()
		default:
			data = fmt.Sprint(b)
		}
		class := "IN"
		if r.Header.Class != dnsmessage.ClassINET {
			class = r.Header.Class.String()
		}
		lines = append(lines, fmt.Sprintf("%s %d %s %s %s", r.Header.Name, r.Header.TTL, class, strings.TrimPrefix(r.Header.Type.String(), "Type"), data))
	}
	return lines
}
