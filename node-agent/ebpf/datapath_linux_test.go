package ebpf

import (
	"context"
	"io"
	"net"
	"net/netip"
	"syscall"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/google/go-cmp/cmp"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
)

const (
	podIP      = "198.19.1.10"
	remoteIP   = "198.19.1.5"
	resolverIP = "198.19.1.53"
	workload   = 7
)

// accepted starts accepting on ln and delivers each connection on the channel.
func accepted(t *testing.T, ln net.Listener) <-chan net.Conn {
	t.Helper()
	ch := make(chan net.Conn, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			t.Cleanup(func() { c.Close() })
			ch <- c
		}
	}()
	return ch
}

func listen(t *testing.T, ns, addr string, mark uint32) net.Listener {
	t.Helper()
	ln, err := netns.Listen(ns, addr, netns.ListenOptions{Mark: mark})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	return ln
}

func wait(t *testing.T, ch <-chan net.Conn, what string) net.Conn {
	t.Helper()
	select {
	case c := <-ch:
		return c
	case <-time.After(5 * time.Second):
		t.Fatalf("no connection on %s", what)
		return nil
	}
}

func peerName(t *testing.T, c net.Conn) string {
	t.Helper()
	raw, err := c.(*net.TCPConn).SyscallConn()
	if err != nil {
		t.Fatal(err)
	}
	var sa unix.Sockaddr
	var serr error
	if err := raw.Control(func(fd uintptr) { sa, serr = unix.Getpeername(int(fd)) }); err != nil || serr != nil {
		t.Fatalf("getpeername: %v %v", err, serr)
	}
	in4, ok := sa.(*unix.SockaddrInet4)
	if !ok {
		t.Fatalf("getpeername = %T; want IPv4", sa)
	}
	return netip.AddrPortFrom(netip.AddrFrom4(in4.Addr), uint16(in4.Port)).String()
}

// TestOutboundCapture dials from a pod netns and checks where each
// connection lands, what the agent and the app see, and the counters.
func TestOutboundCapture(t *testing.T) {
	const excludedIP = "198.19.1.6"
	s := newSetup(t, Options{ExcludeOutbound: []Exclusion{{Port: 9090}, {Addr: netip.MustParseAddr(excludedIP)}}})
	pod := newNetns(t, "out", remoteIP+"/32", excludedIP+"/32", podIP+"/32")
	other := newNetns(t, "out2", remoteIP+"/32")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: workload, IPv4: netip.MustParseAddr(podIP)}); err != nil {
		t.Fatal(err)
	}

	outbound := accepted(t, listen(t, pod, "127.0.0.1:15001", agentMark))
	direct := map[string]<-chan net.Conn{}
	for _, port := range []string{"8080", "9090", "15008"} {
		direct[port] = accepted(t, listen(t, pod, remoteIP+":"+port, 0))
	}
	otherApp := accepted(t, listen(t, other, remoteIP+":8080", 0))
	excludedApp := accepted(t, listen(t, pod, excludedIP+":8080", 0))
	// A pod of the same workload enrolled with TCP capture off.
	noTCP := newNetns(t, "outf", remoteIP+"/32")
	noTCPCookie, err := NetnsCookie(noTCP)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(noTCPCookie, Pod{WorkloadID: workload, Flags: NoCaptureTCP}); err != nil {
		t.Fatal(err)
	}
	noTCPApp := accepted(t, listen(t, noTCP, remoteIP+":8080", 0))

	tests := []struct {
		name      string
		ns        string
		ip        string // remoteIP when empty
		port      string
		source    string // the client binds to this address when set
		mark      uint32
		captured  bool
		lands     <-chan net.Conn
		wantStats func(before, after Stats) bool
	}{
		{"captured", pod, "", "8080", "", 0, true, outbound,
			func(b, a Stats) bool { return a.CapturedTCP == b.CapturedTCP+1 }},
		{"captured, bound to the pod IP", pod, "", "8080", podIP, 0, true, outbound,
			func(b, a Stats) bool { return a.CapturedTCP == b.CapturedTCP+1 }},
		{"agent mark", pod, "", "8080", "", agentMark, false, direct["8080"],
			func(b, a Stats) bool { return a.BypassedMark == b.BypassedMark+1 && a.CapturedTCP == b.CapturedTCP }},
		{"mesh port", pod, "", "15008", "", 0, false, direct["15008"],
			func(b, a Stats) bool { return a.BypassedMeshPort == b.BypassedMeshPort+1 }},
		{"excluded port", pod, "", "9090", "", 0, false, direct["9090"],
			func(b, a Stats) bool { return a.BypassedExcluded == b.BypassedExcluded+1 }},
		{"excluded address", pod, excludedIP, "8080", "", 0, false, excludedApp,
			func(b, a Stats) bool { return a.BypassedExcluded == b.BypassedExcluded+1 }},
		{"pod flags", noTCP, "", "8080", "", 0, false, noTCPApp,
			func(b, a Stats) bool { return a.BypassedFlags == b.BypassedFlags+1 }},
		{"not enrolled", other, "", "8080", "", 0, false, otherApp,
			func(b, a Stats) bool { return decisions(a) == decisions(b) }},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.stats(t)
			ip := tt.ip
			if ip == "" {
				ip = remoteIP
			}
			dst := ip + ":" + tt.port
			var src netip.AddrPort
			if tt.source != "" {
				src = netip.AddrPortFrom(netip.MustParseAddr(tt.source), 0)
			}
			c, err := netns.Dial(context.Background(), tt.ns, dst, netns.DialOptions{Mark: tt.mark, Source: src, Timeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			srv := wait(t, tt.lands, tt.name)
			defer srv.Close()
			if tt.source != "" {
				if got := srv.RemoteAddr().(*net.TCPAddr).IP.String(); got != tt.source {
					t.Errorf("the agent sees the client at %s; want %s", got, tt.source)
				}
			}
			if got := peerName(t, c); got != dst {
				t.Errorf("client getpeername = %s; want %s", got, dst)
			}
			if tt.captured {
				got, err := s.dp.OriginalDst(srv)
				if err != nil {
					t.Fatalf("OriginalDst: %v", err)
				}
				if got.String() != dst {
					t.Errorf("OriginalDst = %s; want %s", got, dst)
				}
			} else if _, err := s.dp.OriginalDst(srv); err == nil {
				t.Errorf("OriginalDst of an uncaptured connection succeeded")
			}
			if after := s.stats(t); !tt.wantStats(before, after) {
				t.Errorf("stats moved wrongly:\n%s", cmp.Diff(before, after))
			}
		})
	}

	// A client that sends and closes before the agent gets to it: the
	// agent must still find where it was going.
	t.Run("client gone before lookup", func(t *testing.T) {
		c, err := netns.Dial(context.Background(), pod, remoteIP+":8080", netns.DialOptions{Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := c.Write([]byte("hello")); err != nil {
			t.Fatal(err)
		}
		c.Close()
		srv := wait(t, outbound, "15001")
		time.Sleep(100 * time.Millisecond)
		if got, err := s.dp.OriginalDst(srv); err != nil || got.String() != remoteIP+":8080" {
			t.Errorf("OriginalDst after the client closed = %v, %v; want %s:8080", got, err, remoteIP)
		}
		srv.Close()
		eventually(t, "its ml_origdst entry to go once the agent closed", func() bool {
			return s.count(t, s.dp.maps.MlOrigdst) == 0
		})
	})

	// An MPTCP socket must not slip past capture.
	t.Run("mptcp", func(t *testing.T) {
		d := net.Dialer{Timeout: 3 * time.Second}
		d.SetMultipathTCP(true)
		var c net.Conn
		if err := netns.Do(pod, func() (err error) {
			c, err = d.Dial("tcp", remoteIP+":8080")
			return err
		}); err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		if mp, err := c.(*net.TCPConn).MultipathTCP(); err != nil || !mp {
			t.Skipf("no MPTCP socket here (%v): nothing to check", err)
		}
		srv := wait(t, outbound, "15001 (mptcp)")
		if got, err := s.dp.OriginalDst(srv); err != nil || got.String() != remoteIP+":8080" {
			t.Errorf("OriginalDst = %v, %v; want %s:8080", got, err, remoteIP)
		}
		c.Close()
		srv.Close()
		eventually(t, "the MPTCP connection's ml_origdst entry to go", func() bool {
			return s.count(t, s.dp.maps.MlOrigdst) == 0
		})
	})

	// Bytes each way, counted once the connection closes; and no map entry
	// outlives its socket.
	// A netns of its own, so that no other connection closing moves them.
	t.Run("bytes and cleanup", func(t *testing.T) {
		const wl = workload + 1
		pod := newNetns(t, "outb")
		cookie, err := NetnsCookie(pod)
		if err != nil {
			t.Fatal(err)
		}
		if err := s.dp.Enroll(cookie, Pod{WorkloadID: wl}); err != nil {
			t.Fatal(err)
		}
		outbound := accepted(t, listen(t, pod, "127.0.0.1:15001", agentMark))
		before := s.statsOf(t, wl)
		c, err := netns.Dial(context.Background(), pod, remoteIP+":8080", netns.DialOptions{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		srv := wait(t, outbound, "15001")
		const sent, received = 1000, 300
		if _, err := c.Write(make([]byte, sent)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(srv, make([]byte, sent)); err != nil {
			t.Fatal(err)
		}
		if _, err := srv.Write(make([]byte, received)); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, make([]byte, received)); err != nil {
			t.Fatal(err)
		}
		if n := s.count(t, s.dp.maps.MlOrigdst); n != 1 {
			t.Errorf("ml_origdst has %d entries with one open captured connection; want 1", n)
		}
		c.Close()
		srv.Close()
		var after Stats
		eventually(t, "the connection to be counted closed", func() bool {
			after = s.statsOf(t, wl)
			return after.ConnsClosed == before.ConnsClosed+1
		})
		want := before
		want.ConnsOpened++
		want.ConnsClosed++
		want.CapturedTCP++
		want.BytesSent += sent
		want.BytesReceived += received
		want.PacketsSent, want.PacketsReceived, want.RTT = after.PacketsSent, after.PacketsReceived, after.RTT
		if diff := cmp.Diff(want, after); diff != "" {
			t.Errorf("stats (-want +got):\n%s", diff)
		}
		if after.PacketsSent <= before.PacketsSent || after.PacketsReceived <= before.PacketsReceived {
			t.Errorf("packets did not move: before %+v after %+v", before, after)
		}
		var rtt uint64
		for i := range after.RTT {
			rtt += after.RTT[i] - before.RTT[i]
		}
		if rtt != 1 {
			t.Errorf("RTT histogram gained %d samples; want 1", rtt)
		}
		eventually(t, "ml_origdst and ml_sock_dst to empty", func() bool {
			return s.count(t, s.dp.maps.MlOrigdst) == 0 && s.count(t, s.dp.maps.MlSockDst) == 0
		})
	})
}

// TestDNSCapture sends UDP/53 from a pod, connected and not, and checks that
// the DNS proxy on 15053 gets it and the answer appears to come from the
// resolver the app asked.
func TestDNSCapture(t *testing.T) {
	s := newSetup(t, Options{})
	pod := newNetns(t, "dns")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: workload, IPv4: netip.MustParseAddr(podIP)}); err != nil {
		t.Fatal(err)
	}
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error { return setMark(c, agentMark) }}
	for _, addr := range []string{"127.0.0.1:15053", "[::1]:15053"} {
		var proxy net.PacketConn
		if err := netns.Do(pod, func() (err error) {
			proxy, err = lc.ListenPacket(context.Background(), "udp", addr)
			return err
		}); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { proxy.Close() })
		go func() { // answer every query with "answer:" + query
			buf := make([]byte, 512)
			for {
				n, from, err := proxy.ReadFrom(buf)
				if err != nil {
					return
				}
				_, _ = proxy.WriteTo(append([]byte("answer:"), buf[:n]...), from)
			}
		}()
	}

	// The IPv6 resolver is never reached: capture rewrites it to [::1]:15053.
	// "udp" sockets are dual-stack AF_INET6: an IPv4 resolver is v4-mapped.
	tests := []struct {
		name      string
		network   string
		resolver  string
		connected bool
	}{
		{"unconnected", "udp4", resolverIP + ":53", false},
		{"connected", "udp4", resolverIP + ":53", true},
		{"unconnected dual-stack", "udp", resolverIP + ":53", false},
		{"connected dual-stack", "udp", resolverIP + ":53", true},
		{"unconnected v6", "udp6", "[fd00:198:19:1::53]:53", false},
		{"connected v6", "udp6", "[fd00:198:19:1::53]:53", true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := s.stats(t)
			var (
				reply string
				from  string
			)
			err := netns.Do(pod, func() error {
				var conn net.PacketConn
				var c net.Conn
				var err error
				if tt.connected {
					c, err = net.Dial(tt.network, tt.resolver)
				} else {
					conn, err = net.ListenPacket(tt.network, ":0")
				}
				if err != nil {
					return err
				}
				buf := make([]byte, 512)
				if tt.connected {
					defer c.Close()
					_ = c.SetDeadline(time.Now().Add(5 * time.Second))
					if _, err := c.Write([]byte("q1")); err != nil {
						return err
					}
					n, err := c.Read(buf)
					if err != nil {
						return err
					}
					reply, from = string(buf[:n]), c.RemoteAddr().String()
					return nil
				}
				defer conn.Close()
				_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
				if _, err := conn.WriteTo([]byte("q1"), net.UDPAddrFromAddrPort(netip.MustParseAddrPort(tt.resolver))); err != nil {
					return err
				}
				n, addr, err := conn.ReadFrom(buf)
				if err != nil {
					return err
				}
				reply, from = string(buf[:n]), addr.String()
				return nil
			})
			if err != nil {
				t.Fatal(err)
			}
			if reply != "answer:q1" || from != tt.resolver {
				t.Errorf("reply %q from %s; want %q from %s", reply, from, "answer:q1", tt.resolver)
			}
			if after := s.stats(t); after.CapturedDNS != before.CapturedDNS+1 {
				t.Errorf("CapturedDNS %d -> %d; want +1", before.CapturedDNS, after.CapturedDNS)
			}
		})
	}
	eventually(t, "ml_sock_dst to empty after the sockets closed", func() bool {
		return s.count(t, s.dp.maps.MlSockDst) == 0
	})
}

// decisions are the redirect-decision counters, which move synchronously
// with connect (the connection counters of earlier connections may still be
// catching up).
func decisions(s Stats) [6]uint64 {
	return [6]uint64{s.CapturedTCP, s.CapturedDNS, s.BypassedMark, s.BypassedMeshPort, s.BypassedExcluded, s.BypassedFlags}
}

func (s *setup) stats(t *testing.T) Stats {
	t.Helper()
	return s.statsOf(t, workload)
}

func (s *setup) statsOf(t *testing.T, wl uint32) Stats {
	t.Helper()
	all, err := s.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	return all[wl]
}

// count returns the number of entries in a (non per-CPU) map.
func (s *setup) count(t *testing.T, m *ebpf.Map) int {
	t.Helper()
	var (
		k, v []byte
		n    int
	)
	it := m.Iterate()
	for it.Next(&k, &v) {
		n++
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func setMark(c syscall.RawConn, mark uint32) error {
	var serr error
	if err := c.Control(func(fd uintptr) {
		serr = unix.SetsockoptInt(int(fd), unix.SOL_SOCKET, unix.SO_MARK, int(mark))
	}); err != nil {
		return err
	}
	return serr
}
