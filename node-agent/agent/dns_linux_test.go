package agent

import (
	"context"
	"encoding/binary"
	"io"
	"net/netip"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"golang.org/x/net/dns/dnsmessage"

	"github.com/meshlet/meshlet/node-agent/dnsproxy"
	"github.com/meshlet/meshlet/node-agent/enroll"
	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/proxy"
)

// TestEnrollDNSOverTCP runs the real data path with the agent's
// enrollment and DNS proxy: an enrolled pod asking a resolver over TCP
// (dig +tcp) has its connection captured on 15001 and served by its DNS
// proxy: a ServiceEntry host the resolver does not know is answered with
// the mesh's address, another name is forwarded to that resolver (from the
// pod, not captured again) and its answer comes back, on one connection.
func TestEnrollDNSOverTCP(t *testing.T) {
	dp := loadDatapath(t)
	na, nb := nstest.Pair(t, "mlna-adns", netip.MustParseAddr("198.19.52.2"), netip.MustParseAddr("198.19.52.3"))

	// The resolver the pod asks, outside the mesh on B: it knows no mesh
	// name and answers every query with 198.19.52.53.
	resolver := nstest.MustListen(t)(netns.Listen(nb.Path, "198.19.52.3:53", netns.ListenOptions{}))
	var asked atomic.Int64
	go func() {
		for {
			c, err := resolver.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				for {
					q, err := readDNS(c)
					if err != nil {
						return
					}
					asked.Add(1)
					var m dnsmessage.Message
					if m.Unpack(q) != nil || len(m.Questions) != 1 {
						return
					}
					m.Response = true
					m.Answers = []dnsmessage.Resource{{Header: dnsmessage.ResourceHeader{Name: m.Questions[0].Name, Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET, TTL: 30},
						Body: &dnsmessage.AResource{A: [4]byte{198, 19, 52, 53}}}}
					out, _ := m.Pack()
					if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(out))), out...)); err != nil {
						return
					}
				}
			}()
		}
	}()

	reg := prometheus.NewRegistry()
	ag, err := New(Options{NodeName: "node-1", Datapath: dp, Metrics: proxy.NewMetrics(reg), DrainTimeout: time.Second, Errorf: t.Logf,
		DNS: func(nsPath, namespace string) (DNSServer, error) {
			s, err := dnsproxy.Start(dnsproxy.Options{
				Netns: nsPath,
				Lookup: func(name string) ([]netip.Addr, bool) {
					return []netip.Addr{netip.MustParseAddr("198.19.52.30")}, name == "api.partner.example"
				},
				Upstream:    func() string { return "" },
				OriginalDst: dp.SockOriginalDst,
				Mark:        DefaultAgentMark,
				Timeout:     2 * time.Second,
				Errorf:      t.Logf,
			})
			if err != nil {
				return nil, err
			}
			return s, nil
		}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		ag.Drain(ctx)
	})
	pod := enroll.Pod{UID: "uid-a", Namespace: "shop", Name: "cart-0", Workload: "cart", ServiceAccount: "cart",
		IPs: []netip.Addr{na.Addr}, Netns: na.Path, IfName: "mlna-adnsa"}
	if err := ag.Enroll(context.Background(), pod); err != nil {
		t.Fatal(err)
	}

	c, err := netns.Dial(context.Background(), na.Path, "198.19.52.3:53", netns.DialOptions{Timeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, tt := range []struct {
		name  string
		want  netip.Addr
		asked int64 // queries the resolver has got after this one
	}{
		{"api.partner.example.", netip.MustParseAddr("198.19.52.30"), 0},
		{"example.org.", netip.MustParseAddr("198.19.52.53"), 1},
	} {
		b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4d4c, RecursionDesired: true})
		_ = b.StartQuestions()
		_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(tt.name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
		q, _ := b.Finish()
		if _, err := c.Write(append(binary.BigEndian.AppendUint16(nil, uint16(len(q))), q...)); err != nil {
			t.Fatal(err)
		}
		a, err := readDNS(c)
		if err != nil {
			t.Fatalf("%s over TCP: %v; want an answer", tt.name, err)
		}
		var m dnsmessage.Message
		if err := m.Unpack(a); err != nil {
			t.Fatal(err)
		}
		if len(m.Answers) != 1 || netip.AddrFrom4(m.Answers[0].Body.(*dnsmessage.AResource).A) != tt.want {
			t.Errorf("%s over TCP: %v; want one A %s", tt.name, m.Answers, tt.want)
		}
		if n := asked.Load(); n != tt.asked {
			t.Errorf("after %s the resolver got %d queries; want %d", tt.name, n, tt.asked)
		}
	}
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "source"); got != 1 {
		t.Errorf("connections opened (reporter=source) = %v; want 1 (the captured DNS connection)", got)
	}
}

// readDNS reads one length-prefixed DNS message.
func readDNS(r io.Reader) ([]byte, error) {
	var hdr [2]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, err
	}
	m := make([]byte, binary.BigEndian.Uint16(hdr[:]))
	_, err := io.ReadFull(r, m)
	return m, err
}

var _ DNSServer = (*dnsproxy.Server)(nil)
