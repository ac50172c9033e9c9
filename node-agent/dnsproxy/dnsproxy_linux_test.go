package dnsproxy

import (
	"net"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
)

// query sends one A or AAAA query from inside the netns to the proxy and
// returns the answer (nil on timeout).
func query(t *testing.T, nsPath, server, name string, typ dnsmessage.Type) *dnsmessage.Message {
	t.Helper()
	return exchange(t, nsPath, server, newQuery(t, name, typ))
}

// newQuery builds a standard query with ID 0x4d4c for name and typ.
func newQuery(t *testing.T, name string, typ dnsmessage.Type) []byte {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4d4c, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: typ, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	return q
}

func exchange(t *testing.T, nsPath, server string, q []byte) *dnsmessage.Message {
	t.Helper()
	var resp []byte
	err := netns.Do(nsPath, func() error {
		c, err := net.Dial("udp", server)
		if err != nil {
			return err
		}
		defer c.Close()
		_ = c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := c.Write(q); err != nil {
			return err
		}
		buf := make([]byte, 4096)
		n, err := c.Read(buf)
		if err != nil {
			return nil // no answer
		}
		resp = buf[:n]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp == nil {
		return nil
	}
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return &m
}

// upstream is a resolver on the test's loopback answering every A query
// with 198.19.44.99, standing for the cluster DNS.
func upstream(t *testing.T) (string, *atomic.Int64) {
	t.Helper()
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	return serveDNS(t, pc, [4]byte{198, 19, 44, 99})
}

// serveDNS answers every A query on pc with answer, counting datagrams.
func serveDNS(t *testing.T, pc net.PacketConn, answer [4]byte) (string, *atomic.Int64) {
	t.Helper()
	t.Cleanup(func() { pc.Close() })
	var n atomic.Int64
	go func() {
		buf := make([]byte, 4096)
		for {
			k, from, err := pc.ReadFrom(buf)
			if err != nil {
				return
			}
			n.Add(1) // every datagram, parseable or not
			var m dnsmessage.Message
			if m.Unpack(buf[:k]) != nil || len(m.Questions) != 1 {
				continue
			}
			m.Header.Response = true
			m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 30},
				Body: &dnsmessage.AResource{A: answer}}}
			out, _ := m.Pack()
			_, _ = pc.WriteTo(out, from)
		}
	}()
	return pc.LocalAddr().String(), &n
}

// TestDNSProxy: inside a pod's netns, the proxy answers a mesh name from
// the model (A and AAAA, NOERROR with no record for a family it lacks),
// forwards every other name to the upstream and relays its answer, refuses
// with SERVFAIL when no upstream is known, and ignores garbage.
func TestDNSProxy(t *testing.T) {
	pod, _ := nstest.Pair(t, "mlna-dns", netip.MustParseAddr("198.19.44.2"), netip.MustParseAddr("198.19.44.3"))
	up, forwarded := upstream(t)
	var upAddr atomic.Value
	upAddr.Store(up)
	mesh := map[string][]netip.Addr{
		"reviews.bookinfo.svc.cluster.local": {netip.MustParseAddr("198.19.44.20"), netip.MustParseAddr("fd00::20")},
		"api.partner.example":                {netip.MustParseAddr("198.19.44.30")},
	}
	s, err := Start(Options{
		Netns:    pod.Path,
		Lookup:   func(name string) ([]netip.Addr, bool) { a, ok := mesh[name]; return a, ok },
		Upstream: func() string { return upAddr.Load().(string) },
		Timeout:  time.Second,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	server := "127.0.0.1:15053"

	m := query(t, pod.Path, server, "API.Partner.example.", dnsmessage.TypeA)
	if m == nil || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{198, 19, 44, 30} || m.ID != 0x4d4c {
		t.Fatalf("ServiceEntry host: %+v; want one A 198.19.44.30 from the mesh", m)
	}
	m = query(t, pod.Path, server, "reviews.bookinfo.svc.cluster.local.", dnsmessage.TypeAAAA)
	if m == nil || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AAAAResource).AAAA != netip.MustParseAddr("fd00::20").As16() {
		t.Errorf("AAAA of a mesh service: %+v; want fd00::20", m)
	}
	m = query(t, pod.Path, server, "api.partner.example.", dnsmessage.TypeAAAA)
	if m == nil || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 0 {
		t.Errorf("AAAA of a v4-only mesh name: %+v; want NOERROR with no record", m)
	}
	if forwarded.Load() != 0 {
		t.Errorf("%d mesh names went to the upstream; want none", forwarded.Load())
	}

	m = query(t, pod.Path, server, "kubernetes.default.svc.cluster.local.", dnsmessage.TypeA)
	if m == nil || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{198, 19, 44, 99} || forwarded.Load() != 1 {
		t.Errorf("other name: %+v (upstream saw %d); want the upstream's answer relayed", m, forwarded.Load())
	}
	// Without Options.SearchDomains only exact mesh names are answered.
	m = query(t, pod.Path, server, "api.partner.example.svc.cluster.local.", dnsmessage.TypeA)
	if m == nil || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{198, 19, 44, 99} || forwarded.Load() != 2 {
		t.Errorf("search-domain expansion without SearchDomains: %+v (upstream saw %d); want the upstream's answer relayed", m, forwarded.Load())
	}

	if m := exchange(t, pod.Path, server, []byte("not a dns message")); m != nil || forwarded.Load() != 2 {
		t.Errorf("garbage got an answer (%+v) or reached the upstream (%d queries); want neither", m, forwarded.Load())
	}

	upAddr.Store("")
	m = query(t, pod.Path, server, "elsewhere.example.", dnsmessage.TypeA)
	if m == nil || m.RCode != dnsmessage.RCodeServerFailure {
		t.Errorf("no upstream: %+v; want SERVFAIL", m)
	}
}
