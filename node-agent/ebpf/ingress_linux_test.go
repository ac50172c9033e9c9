package ebpf

import (
	"context"
	"encoding/binary"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/node-agent/netns"
)

const tcNext = 0xffffffff // TC_ACT_UNSPEC (TCX_NEXT): let the stack have it

// packet builds an Ethernet frame from 198.19.2.1 (or fd00:198:19:2::1): IPv4
// or IPv6 by dst, TCP or UDP.
func packet(dst string, proto uint8, dport uint16, syn, ack bool) []byte {
	return packetFrom("", dst, proto, dport, syn, ack)
}

func packetFrom(src, dst string, proto uint8, dport uint16, syn, ack bool) []byte {
	d := netip.MustParseAddr(dst)
	if src == "" {
		src = "198.19.2.1"
		if d.Is6() {
			src = "fd00:198:19:2::1"
		}
	}
	eth := make([]byte, 14)
	var ip []byte
	if d.Is4() {
		binary.BigEndian.PutUint16(eth[12:], 0x0800)
		ip = make([]byte, 20)
		ip[0] = 0x45
		ip[8] = 64
		ip[9] = proto
		copy(ip[12:16], netip.MustParseAddr(src).AsSlice())
		copy(ip[16:20], d.AsSlice())
	} else {
		binary.BigEndian.PutUint16(eth[12:], 0x86dd)
		ip = make([]byte, 40)
		ip[0] = 0x60
		ip[6] = proto
		ip[7] = 64
		copy(ip[8:24], netip.MustParseAddr(src).AsSlice())
		copy(ip[24:40], d.AsSlice())
	}
	l4 := make([]byte, 20)
	binary.BigEndian.PutUint16(l4[0:], 40000)
	binary.BigEndian.PutUint16(l4[2:], dport)
	l4[12] = 5 << 4
	if syn {
		l4[13] |= 0x02
	}
	if ack {
		l4[13] |= 0x10
	}
	if d.Is4() {
		binary.BigEndian.PutUint16(ip[2:], uint16(len(ip)+len(l4)))
	} else {
		binary.BigEndian.PutUint16(ip[4:], uint16(len(l4)))
	}
	out := append(eth, ip...)
	return append(out, l4...)
}

// TestIngressProgram runs the tc program on crafted packets
// (BPF_PROG_TEST_RUN) in a fresh netns with no listener: every packet must
// pass, counted by the reason.
func TestIngressProgram(t *testing.T) {
	s := newSetup(t, Options{ExcludeInboundPorts: []uint16{9999}, IngressSkipMark: 0x100,
		IngressSkipSources: []netip.Addr{netip.MustParseAddr("198.19.2.9"), netip.MustParseAddr("fd00:198:19:2::9")}})
	ns := newNetns(t, "tcrun")
	const tcp, udp = 6, 17
	arp := packet("198.19.2.2", tcp, 8080, true, false)
	binary.BigEndian.PutUint16(arp[12:], 0x0806)

	tests := []struct {
		name string
		pkt  []byte
		mark uint32
		want func(*IngressStats)
	}{
		{"arp", arp, 0, func(*IngressStats) {}},
		{"udp", packet("198.19.2.2", udp, 8080, false, false), 0, func(*IngressStats) {}},
		{"tcp ack", packet("198.19.2.2", tcp, 8080, false, true), 0, func(*IngressStats) {}},
		{"syn-ack", packet("198.19.2.2", tcp, 8080, true, true), 0, func(*IngressStats) {}},
		{"syn to hbone", packet("198.19.2.2", tcp, 15008, true, false), 0, func(s *IngressStats) { s.PassedExcludedPort++ }},
		{"syn to 15006", packet("198.19.2.2", tcp, 15006, true, false), 0, func(s *IngressStats) { s.PassedExcludedPort++ }},
		{"syn to excluded port", packet("198.19.2.2", tcp, 9999, true, false), 0, func(s *IngressStats) { s.PassedExcludedPort++ }},
		{"syn with skip mark", packet("198.19.2.2", tcp, 8080, true, false), 0x100, func(s *IngressStats) { s.PassedMark++ }},
		{"syn from a skipped source", packetFrom("198.19.2.9", "198.19.2.2", tcp, 8080, true, false), 0, func(s *IngressStats) { s.PassedSource++ }},
		{"syn v6 from a skipped source", packetFrom("fd00:198:19:2::9", "fd00:198:19:2::2", tcp, 8080, true, false), 0, func(s *IngressStats) { s.PassedSource++ }},
		{"syn, no listener", packet("198.19.2.2", tcp, 8080, true, false), 0, func(s *IngressStats) { s.PassedNoListener++ }},
		{"syn v6, no listener", packet("fd00:198:19:2::2", tcp, 8080, true, false), 0, func(s *IngressStats) { s.PassedNoListener++ }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var want IngressStats
			tt.want(&want)
			if diff := cmp.Diff(want, runTC(t, s, ns, tt.pkt, tt.mark)); diff != "" {
				t.Errorf("counters moved by (-want +got):\n%s", diff)
			}
		})
	}
}

// TestPodIngress sends SYNs from a client netns to a pod netns whose
// interface carries the program: a plaintext connection to the app's port
// must land on the 15006 listener with the app's address as its local
// address, one to 15008 on the 15008 listener.
func TestPodIngress(t *testing.T) {
	s := newSetup(t, Options{})
	tests := []struct {
		name string
		opts IngressOptions
	}{
		{"tcx", IngressOptions{}},
		{"clsact", IngressOptions{ForceClsact: true}},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			name := "ing" + string(rune('0'+i))
			client, pod := vethPair(t, name, "198.19.2.1/24", "198.19.2.2/24")
			ifname := "mlbpf-" + name + "b"
			inbound := accepted(t, listen(t, pod, "0.0.0.0:15006", agentMark))
			hbone := accepted(t, listen(t, pod, "0.0.0.0:15008", agentMark))
			if err := s.dp.AttachPodIngress(pod, ifname, tt.opts); err != nil {
				t.Fatal(err)
			}
			if err := s.dp.AttachPodIngress(pod, ifname, tt.opts); err != nil {
				t.Fatalf("second AttachPodIngress (a restarted agent): %v", err)
			}
			before, err := s.dp.IngressStats()
			if err != nil {
				t.Fatal(err)
			}
			dial := func(addr string) (net.Conn, error) {
				return netns.Dial(context.Background(), client, addr, netns.DialOptions{Timeout: 3 * time.Second})
			}
			c, err := dial("198.19.2.2:8080")
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			srv := wait(t, inbound, "15006")
			if got := srv.LocalAddr().String(); got != "198.19.2.2:8080" {
				t.Errorf("accepted socket's local address = %s; want 198.19.2.2:8080", got)
			}
			if got, want := srv.RemoteAddr().String(), c.LocalAddr().String(); got != want {
				t.Errorf("accepted socket's remote address = %s; want the client's %s", got, want)
			}
			c2, err := dial("198.19.2.2:15008")
			if err != nil {
				t.Fatal(err)
			}
			defer c2.Close()
			if got := wait(t, hbone, "15008").LocalAddr().String(); got != "198.19.2.2:15008" {
				t.Errorf("15008 connection's local address = %s", got)
			}
			after, err := s.dp.IngressStats()
			if err != nil {
				t.Fatal(err)
			}
			want := before
			want.Steered++
			want.PassedExcludedPort++
			if diff := cmp.Diff(want, after); diff != "" {
				t.Errorf("counters (-want +got):\n%s", diff)
			}

			if err := s.dp.DetachPodIngress(pod, ifname); err != nil {
				t.Fatal(err)
			}
			if c, err := dial("198.19.2.2:8080"); err == nil {
				c.Close()
				t.Errorf("after DetachPodIngress a connection to the app's port (no app listening) succeeded")
			}
		})
	}
	if err := s.dp.DetachPodIngress("/var/run/netns/mlbpf-gone", "eth0"); err != nil {
		t.Errorf("DetachPodIngress of a gone netns = %v; want nil", err)
	}
	if err := s.dp.AttachPodIngress("/var/run/netns/mlbpf-gone", "eth0", IngressOptions{}); err == nil {
		t.Errorf("AttachPodIngress of a missing netns succeeded")
	}
}

// runTC runs the tc program on pkt (with skb->mark) inside ns, checks that
// it passes the packet on, and returns what its counters moved by.
func runTC(t *testing.T, s *setup, ns string, pkt []byte, mark uint32) IngressStats {
	t.Helper()
	before, err := s.dp.IngressStats()
	if err != nil {
		t.Fatal(err)
	}
	ctx := make([]byte, 12) // struct __sk_buff up to mark
	binary.LittleEndian.PutUint32(ctx[8:], mark)
	var ret uint32
	if err := netns.Do(ns, func() (err error) {
		ret, err = s.dp.tc.Run(&ebpf.RunOptions{Data: pkt, Context: ctx})
		return err
	}); err != nil {
		t.Fatalf("run: %v", err)
	}
	if ret != tcNext {
		t.Errorf("verdict = %#x; want %#x (pass)", ret, uint32(tcNext))
	}
	after, err := s.dp.IngressStats()
	if err != nil {
		t.Fatal(err)
	}
	return IngressStats{
		Steered: after.Steered - before.Steered, PassedExcludedPort: after.PassedExcludedPort - before.PassedExcludedPort,
		PassedMark: after.PassedMark - before.PassedMark, PassedSource: after.PassedSource - before.PassedSource,
		PassedNoListener: after.PassedNoListener - before.PassedNoListener, AssignFailed: after.AssignFailed - before.AssignFailed,
		PassedProbe: after.PassedProbe - before.PassedProbe,
	}
}

// TestIngressProbeBypass: a SYN from the node's address to a port kubelet
// probes on an enrolled pod passes tc ingress untouched (the probe goes to
// the app, not through the agent); the same SYN to another port or another
// pod, or from another source, is not a probe; the entries go with the pod
// (Unenroll, Reconcile).
func TestIngressProbeBypass(t *testing.T) {
	s := newSetup(t, Options{})
	ns := newNetns(t, "tcprobe")
	cookie, err := NetnsCookie(ns)
	if err != nil {
		t.Fatal(err)
	}
	const tcp = 6
	node4, node6 := "198.19.2.50", "fd00:198:19:2::50"
	if err := s.dp.SetProbeSources([]netip.Addr{netip.MustParseAddr(node4), netip.MustParseAddr(node6)}); err != nil {
		t.Fatal(err)
	}
	pod := Pod{WorkloadID: 7, IPv4: netip.MustParseAddr("198.19.2.2"), IPv6: netip.MustParseAddr("fd00:198:19:2::2"), ProbePorts: []uint16{8081, 9090}}
	if err := s.dp.Enroll(cookie, pod); err != nil {
		t.Fatal(err)
	}
	probe := IngressStats{PassedProbe: 1}
	steerable := IngressStats{PassedNoListener: 1} // no 15006 listener here: would have been steered
	for _, tt := range []struct {
		name string
		pkt  []byte
		want IngressStats
	}{
		{"probe", packetFrom(node4, "198.19.2.2", tcp, 8081, true, false), probe},
		{"probe on the other port", packetFrom(node4, "198.19.2.2", tcp, 9090, true, false), probe},
		{"probe v6", packetFrom(node6, "fd00:198:19:2::2", tcp, 8081, true, false), probe},
		{"node to a port not probed", packetFrom(node4, "198.19.2.2", tcp, 8080, true, false), steerable},
		{"another source to the probe port", packetFrom("198.19.2.9", "198.19.2.2", tcp, 8081, true, false), steerable},
		{"node to another pod's address", packetFrom(node4, "198.19.2.3", tcp, 8081, true, false), steerable},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if got := runTC(t, s, ns, tt.pkt, 0); got != tt.want {
				t.Errorf("counters moved by %+v; want %+v", got, tt.want)
			}
		})
	}

	probeSYN := packetFrom(node4, "198.19.2.2", tcp, 8081, true, false)
	if err := s.dp.Unenroll(cookie); err != nil {
		t.Fatal(err)
	}
	if got := runTC(t, s, ns, probeSYN, 0); got != steerable {
		t.Errorf("after Unenroll: counters moved by %+v; want %+v (the pod's probe ports gone with it)", got, steerable)
	}
	if err := s.dp.Enroll(cookie, pod); err != nil {
		t.Fatal(err)
	}
	if _, err := s.dp.Reconcile(map[uint64]Pod{}); err != nil {
		t.Fatal(err)
	}
	if got := runTC(t, s, ns, probeSYN, 0); got != steerable {
		t.Errorf("after a Reconcile without the pod: counters moved by %+v; want %+v", got, steerable)
	}
	pod.ProbePorts = []uint16{9090}
	if _, err := s.dp.Reconcile(map[uint64]Pod{cookie: pod}); err != nil {
		t.Fatal(err)
	}
	if got := runTC(t, s, ns, probeSYN, 0); got != steerable {
		t.Errorf("8081 after a Reconcile that probes 9090 only: counters moved by %+v; want %+v", got, steerable)
	}
	if got := runTC(t, s, ns, packetFrom(node4, "198.19.2.2", tcp, 9090, true, false), 0); got != probe {
		t.Errorf("9090 after a Reconcile that probes it: counters moved by %+v; want %+v", got, probe)
	}
	if err := s.dp.SetProbeSources(nil); err != nil {
		t.Fatal(err)
	}
	if got := runTC(t, s, ns, packetFrom(node4, "198.19.2.2", tcp, 9090, true, false), 0); got != steerable {
		t.Errorf("with no probe sources: counters moved by %+v; want %+v", got, steerable)
	}
}
