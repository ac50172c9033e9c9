package dnsproxy

import (
	"net"
	"net/netip"

	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/dns/dnsmessage"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// testMark is the agent mark of the data path these tests load.
const testMark = 0x539

// TestForwardToPodResolver: with the real data path capturing an enrolled
// pod's DNS, a name the mesh does not know goes to the resolver the pod
// sent it to (resolver A, on the pod's network) and not to the configured
// upstream (B), from connected and unconnected, IPv4 and dual-stack
// sockets, and the answer appears to come from A. Mesh names are still
// answered by the proxy; a query whose original resolver is unknown (sent
// straight to the proxy, so never captured) goes to B.
func TestForwardToPodResolver(t *testing.T) {
	dp := loadDatapath(t)
	pod, peer := nstest.Pair(t, "mlna-dnso", netip.MustParseAddr("198.19.46.2"), netip.MustParseAddr("198.19.46.3"))
	cookie, err := ebpf.NetnsCookie(pod.Path)
	if err != nil {
		t.Fatal(err)
	}
	if err := dp.Enroll(cookie, ebpf.Pod{WorkloadID: 1, IPv4: pod.Addr}); err != nil {
		t.Fatal(err)
	}
	var pcA net.PacketConn
	if err := netns.Do(peer.Path, func() (err error) {
		pcA, err = net.ListenPacket("udp", "198.19.46.3:53")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	resolverA, atA := serveDNS(t, pcA, [4]byte{198, 19, 46, 53})
	resolverB, atB := upstream(t)

	s, err := Start(Options{
		Netns: pod.Path,
		Lookup: func(name string) ([]netip.Addr, bool) {
			return []netip.Addr{netip.MustParseAddr("198.19.46.20")}, name == "reviews.bookinfo.svc.cluster.local"
		},
		Upstream:    func() string { return resolverB },
		OriginalDst: dp.SockOriginalDst,
		Mark:        testMark,
		Timeout:     time.Second,
		Errorf:      t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })

	tests := []struct {
		name      string
		network   string
		server    string
		connected bool
		qname     string
		want      [4]byte
		wantA     int64 // queries A gets
		wantB     int64 // queries B gets
	}{
		{"unconnected", "udp4", resolverA, false, "example.org.", [4]byte{198, 19, 46, 53}, 1, 0},
		{"connected", "udp4", resolverA, true, "example.org.", [4]byte{198, 19, 46, 53}, 1, 0},
		{"unconnected dual-stack", "udp", resolverA, false, "example.org.", [4]byte{198, 19, 46, 53}, 1, 0},
		{"connected dual-stack", "udp", resolverA, true, "example.org.", [4]byte{198, 19, 46, 53}, 1, 0},
		{"mesh name", "udp4", resolverA, false, "reviews.bookinfo.svc.cluster.local.", [4]byte{198, 19, 46, 20}, 0, 0},
		{"not captured: upstream", "udp4", "127.0.0.1:15053", true, "example.org.", [4]byte{198, 19, 44, 99}, 0, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			a0, b0 := atA.Load(), atB.Load()
			m, from := ask(t, pod.Path, tt.network, tt.server, tt.connected, tt.qname)
			if m == nil || m.RCode != dnsmessage.RCodeSuccess || len(m.Answers) != 1 {
				t.Fatalf("answer %+v; want one A record", m)
			}
			if got := m.Answers[0].Body.(*dnsmessage.AResource).A; got != tt.want {
				t.Errorf("answer %v; want %v", netip.AddrFrom4(got), netip.AddrFrom4(tt.want))
			}
			if from != tt.server {
				t.Errorf("answer from %s; want from %s, where the query was sent", from, tt.server)
			}
			if a, b := atA.Load()-a0, atB.Load()-b0; a != tt.wantA || b != tt.wantB {
				t.Errorf("resolver A got %d queries, B %d; want %d and %d", a, b, tt.wantA, tt.wantB)
			}
		})
	}
}

// ask sends an A query for name from a new socket inside the netns at
// nsPath to server, connected or not, and returns the answer (nil on
// timeout) and where it came from as the app sees it.
func ask(t *testing.T, nsPath, network, server string, connected bool, name string) (*dnsmessage.Message, string) {
	t.Helper()
	b := dnsmessage.NewBuilder(nil, dnsmessage.Header{ID: 0x4d4d, RecursionDesired: true})
	_ = b.StartQuestions()
	_ = b.Question(dnsmessage.Question{Name: dnsmessage.MustNewName(name), Type: dnsmessage.TypeA, Class: dnsmessage.ClassINET})
	q, err := b.Finish()
	if err != nil {
		t.Fatal(err)
	}
	var (
		resp []byte
		from string
	)
	err = netns.Do(nsPath, func() error {
		buf := make([]byte, 4096)
		deadline := time.Now().Add(3 * time.Second)
		if connected {
			c, err := net.Dial(network, server)
			if err != nil {
				return err
			}
			defer c.Close()
			_ = c.SetDeadline(deadline)
			if _, err := c.Write(q); err != nil {
				return err
			}
			n, err := c.Read(buf)
			if err != nil {
				return nil // no answer
			}
			resp, from = buf[:n], c.RemoteAddr().String()
			return nil
		}
		pc, err := net.ListenPacket(network, ":0")
		if err != nil {
			return err
		}
		defer pc.Close()
		_ = pc.SetDeadline(deadline)
		if _, err := pc.WriteTo(q, net.UDPAddrFromAddrPort(netip.MustParseAddrPort(server))); err != nil {
			return err
		}
		n, addr, err := pc.ReadFrom(buf)
		if err != nil {
			return nil
		}
		ap := addr.(*net.UDPAddr).AddrPort()
		resp, from = buf[:n], netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()).String()
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if resp == nil {
		return nil, ""
	}
	var m dnsmessage.Message
	if err := m.Unpack(resp); err != nil {
		t.Fatalf("answer does not parse: %v", err)
	}
	return &m, from
}

// loadDatapath loads the real eBPF data path (agent mark testMark) into a
// fresh cgroup this test process moves into and a fresh bpffs, all removed
// when the test ends. Root and a capable kernel required.
func loadDatapath(t *testing.T) *ebpf.Datapath {
	t.Helper()
	testutil.RequireRoot(t)
	if err := ebpf.CheckKernel(); err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	cg := testutil.EnterCgroup(t, "mlna-dns")
	bpffs := t.TempDir()
	if err := unix.Mount("bpf", bpffs, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs on %s: %v", bpffs, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(bpffs, unix.MNT_DETACH) })
	dp, err := ebpf.Load(ebpf.Options{PinDir: filepath.Join(bpffs, "meshlet"), CgroupPath: cg, AgentMark: testMark})
	if err != nil {
		t.Fatalf("load data path: %v", err)
	}
	t.Cleanup(func() {
		if err := dp.Uninstall(); err != nil {
			t.Errorf("uninstall data path: %v", err)
		}
	})
	return dp
}

// TestForwardNeverToItself: when the recorded original destination of a
// query's socket is the proxy's own address (or any loopback), the query
// goes to the upstream instead of looping back into the proxy.
func TestForwardNeverToItself(t *testing.T) {
	pod, _ := nstest.Pair(t, "mlna-dnsl", netip.MustParseAddr("198.19.47.2"), netip.MustParseAddr("198.19.47.3"))
	up, atUp := upstream(t)
	var orig atomic.Value
	var asked atomic.Int64
	s, err := Start(Options{
		Netns:    pod.Path,
		Lookup:   func(string) ([]netip.Addr, bool) { return nil, false },
		Upstream: func() string { return up },
		OriginalDst: func(uint64) (netip.AddrPort, error) {
			asked.Add(1)
			return orig.Load().(netip.AddrPort), nil
		},
		Mark:    testMark,
		Timeout: time.Second,
		Errorf:  t.Logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	for _, o := range []string{"127.0.0.1:15053", "[::1]:15053", "198.19.47.2:15053"} {
		orig.Store(netip.MustParseAddrPort(o))
		n0, a0 := atUp.Load(), asked.Load()
		m, _ := ask(t, pod.Path, "udp4", "127.0.0.1:15053", true, "example.org.")
		if m == nil || len(m.Answers) != 1 || m.Answers[0].Body.(*dnsmessage.AResource).A != [4]byte{198, 19, 44, 99} {
			t.Errorf("original destination %s: answer %+v; want the upstream's", o, m)
		}
		if n, a := atUp.Load()-n0, asked.Load()-a0; n != 1 || a != 1 {
			t.Errorf("original destination %s: %d lookups of the sender, %d queries upstream; want 1 and 1", o, a, n)
		}
	}
}
