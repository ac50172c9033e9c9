package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/poller"
)

func listenUDP(nsPath, addr string, mark uint32) (net.PacketConn, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			if serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_REUSEPORT, 1); serr != nil {
				return
			}
			if mark != 0 {
				serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_MARK, int(mark))
			}
		})
		return errors.Join(err, serr)
	}}
	var pc net.PacketConn
	err := netns.Do(nsPath, func() error {
		var err error
		pc, err = lc.ListenPacket(context.Background(), "udp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on udp %s: %w", addr, err)
	}
	return pc, nil
}

// dialUDP opens a UDP socket connected to addr inside the netns at nsPath,
// carrying mark so that the data path does not capture it.
func dialUDP(nsPath string, addr netip.AddrPort, mark uint32) (net.Conn, error) {
	d := net.Dialer{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) {
			serr = syscall.SetsockoptInt(int(fd), syscall.SOL_SOCKET, unix.SO_MARK, int(mark))
		})
		return errors.Join(err, serr)
	}}
	var c net.Conn
	err := netns.Do(nsPath, func() error {
		var err error
		c, err = d.Dial("udp", addr.String())
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial udp %s in %s: %w", addr, nsPath, err)
	}
	return c, nil
}

// errDrained: no datagram is waiting.
var errDrained = errors.New("no datagram waiting")

// recvFrom reads one datagram waiting on w's socket without blocking:
// errDrained when there is none, net.ErrClosed once the socket is closed.
func recvFrom(w *poller.Watch, buf []byte) (int, netip.AddrPort, error) {
	var (
		n    int
		from unix.Sockaddr
		rerr error
	)
	for {
		if err := w.Read(func(fd uintptr) bool {
			n, from, rerr = unix.Recvfrom(int(fd), buf, unix.MSG_DONTWAIT)
			return true
		}); err != nil {
			return 0, netip.AddrPort{}, net.ErrClosed
		}
		if rerr != unix.EINTR {
			break
		}
	}
	switch {
	case rerr == unix.EAGAIN:
		return 0, netip.AddrPort{}, errDrained
	case rerr != nil:
		return 0, netip.AddrPort{}, os.NewSyscallError("recvfrom", rerr)
	}
	switch sa := from.(type) {
	case *unix.SockaddrInet4:
		return n, netip.AddrPortFrom(netip.AddrFrom4(sa.Addr), uint16(sa.Port)), nil
	case *unix.SockaddrInet6:
		return n, netip.AddrPortFrom(netip.AddrFrom16(sa.Addr), uint16(sa.Port)), nil
	}
	return 0, netip.AddrPort{}, fmt.Errorf("recvfrom: unexpected source %T", from)
}
