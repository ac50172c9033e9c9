package ebpf

import (
	"net/netip"
	"testing"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// TestOutboundCaptureIPv6 connects AF_INET6 sockets from an enrolled pod: to
// an IPv6 address (captured to [::1]:15001) and to a v4-mapped address from
// a dual-stack socket (captured to 127.0.0.1:15001). Either way the agent
// finds the original destination and getpeername shows it. The IPv6
// destination is never reached: capture rewrites it to loopback.
func TestOutboundCaptureIPv6(t *testing.T) {
	s := newSetup(t, Options{})
	pod := newNetns(t, "out6")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: workload}); err != nil {
		t.Fatal(err)
	}
	out4 := accepted(t, listen(t, pod, "127.0.0.1:15001", agentMark))
	out6 := accepted(t, listen(t, pod, "[::1]:15001", agentMark))

	tests := []struct {
		name  string
		dst   netip.AddrPort
		want  string // OriginalDst as the agent reports it
		lands string
	}{
		{"ipv6", netip.MustParseAddrPort("[fd00:198:19:1::5]:8080"), "[fd00:198:19:1::5]:8080", "6"},
		{"v4-mapped", netip.MustParseAddrPort("[::ffff:" + remoteIP + "]:8080"), remoteIP + ":8080", "4"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var (
				fd   int
				peer unix.Sockaddr
			)
			err := netns.Do(pod, func() error {
				var err error
				fd, err = unix.Socket(unix.AF_INET6, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
				if err != nil {
					return err
				}
				if err := unix.SetsockoptTimeval(fd, unix.SOL_SOCKET, unix.SO_SNDTIMEO, &unix.Timeval{Sec: 3}); err != nil {
					return err
				}
				if err := unix.Connect(fd, &unix.SockaddrInet6{Addr: tt.dst.Addr().As16(), Port: int(tt.dst.Port())}); err != nil {
					return err
				}
				peer, err = unix.Getpeername(fd)
				return err
			})
			if fd > 0 {
				defer unix.Close(fd)
			}
			if err != nil {
				t.Fatalf("connect to %s: %v", tt.dst, err)
			}
			in6, ok := peer.(*unix.SockaddrInet6)
			if !ok || netip.AddrPortFrom(netip.AddrFrom16(in6.Addr), uint16(in6.Port)) != tt.dst {
				t.Errorf("getpeername = %+v; want %s", peer, tt.dst)
			}
			ch := out6
			if tt.lands == "4" {
				ch = out4
			}
			srv := wait(t, ch, "15001 ("+tt.lands+")")
			got, err := s.dp.OriginalDst(srv)
			if err != nil {
				t.Fatalf("OriginalDst: %v", err)
			}
			if got.String() != tt.want {
				t.Errorf("OriginalDst = %s; want %s", got, tt.want)
			}
			srv.Close()
			eventually(t, "the ml_origdst entry to go with the agent's socket", func() bool {
				return s.count(t, s.dp.maps.MlOrigdst) == 0
			})
		})
	}
}
