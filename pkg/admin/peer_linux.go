package admin

import (
	"errors"
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// peerUID returns the owner (uid) of the socket at c's other end, a TCP
// connection on this host: sock_diag asked for the socket whose local
// address is c's remote one. A netlink socket is opened per call, in the
// calling thread's network namespace, the admin listener's: the node agent
// moves only threads it locks into pod namespaces, and gives them back.
func peerUID(c net.Conn) (uint32, error) {
	local, ok1 := c.LocalAddr().(*net.TCPAddr)
	remote, ok2 := c.RemoteAddr().(*net.TCPAddr)
	if !ok1 || !ok2 {
		return 0, errors.New("not a TCP connection")
	}
	h, err := netlink.NewHandle(unix.NETLINK_INET_DIAG)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: %w", err)
	}
	defer h.Close()
	s, err := h.SocketGet(remote, local)
	if err != nil {
		return 0, fmt.Errorf("sock_diag: find the socket of %s: %w", remote, err)
	}
	return s.UID, nil
}
