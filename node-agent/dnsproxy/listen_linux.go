package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"syscall"

	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
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
