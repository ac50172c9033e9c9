package ebpf

import (
	"errors"
	"net"
	"net/netip"
	"syscall"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// TestSockOriginalDst: the resolver a pod's captured UDP/53 socket sent to
// is found by that socket's cookie, connected or not, and nothing is found
// for a socket capture left alone or one that is gone.
func TestSockOriginalDst(t *testing.T) {
	s := newSetup(t, Options{})
	pod := newNetns(t, "sdst")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: workload, IPv4: netip.MustParseAddr(podIP)}); err != nil {
		t.Fatal(err)
	}
	resolver := netip.MustParseAddrPort(resolverIP + ":53")

	tests := []struct {
		name    string
		network string
		to      netip.AddrPort
		connect bool
		want    netip.AddrPort // zero: ErrNoOriginalDst
	}{
		{"unconnected", "udp4", resolver, false, resolver},
		{"connected", "udp4", resolver, true, resolver},
		{"dual-stack to IPv4", "udp", resolver, false, resolver},
		{"loopback resolver, not captured", "udp4", netip.MustParseAddrPort("127.0.0.1:53"), false, netip.AddrPort{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				c      net.Conn
				sockID uint64
			)
			err := netns.Do(pod, func() error {
				var err error
				if tt.connect {
					c, err = net.Dial(tt.network, tt.to.String())
				} else {
					var pc net.PacketConn
					if pc, err = net.ListenPacket(tt.network, ":0"); err == nil {
						c = pc.(*net.UDPConn)
						_, err = pc.WriteTo([]byte("q"), net.UDPAddrFromAddrPort(tt.to))
					}
				}
				if err != nil {
					return err
				}
				if tt.connect {
					_, err = c.Write([]byte("q"))
				}
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			raw, err := c.(syscall.Conn).SyscallConn()
			if err != nil {
				t.Fatal(err)
			}
			var serr error
			if err := raw.Control(func(fd uintptr) { sockID, serr = unix.GetsockoptUint64(int(fd), unix.SOL_SOCKET, unix.SO_COOKIE) }); err != nil || serr != nil {
				t.Fatalf("read SO_COOKIE: %v %v", err, serr)
			}

			got, err := s.dp.SockOriginalDst(sockID)
			if !tt.want.IsValid() {
				if !errors.Is(err, ErrNoOriginalDst) {
					t.Errorf("SockOriginalDst(%d) = %v, %v; want ErrNoOriginalDst", sockID, got, err)
				}
			} else if err != nil || got != tt.want {
				t.Errorf("SockOriginalDst(%d) = %v, %v; want %v", sockID, got, err, tt.want)
			}

			c.Close()
			eventually(t, "the closed socket's record to go", func() bool {
				_, err := s.dp.SockOriginalDst(sockID)
				return errors.Is(err, ErrNoOriginalDst)
			})
		})
	}
}
