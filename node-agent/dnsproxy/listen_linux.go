package dnsproxy

import (
	"context"
	"errors"
	"fmt"
	"net"
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

