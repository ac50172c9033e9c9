package dnsproxy

import (
	"errors"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// errNoSender: no socket in the pod has the query's source address (it was
// closed before the lookup, or the query did not come from the pod).
var errNoSender = errors.New("no socket sent this query")

// sockFinder finds the socket a query came from with sock_diag, over a
// netlink socket opened inside the pod's netns (so the kernel lists only
// that netns' sockets).
type sockFinder struct {
	h *netlink.Handle
}

func openSockFinder(nsPath string, timeout time.Duration) (*sockFinder, error) {
	var h *netlink.Handle
	err := netns.Do(nsPath, func() error {
		var err error
		h, err = netlink.NewHandle(unix.NETLINK_INET_DIAG)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("open sock_diag: %w", err)
	}
	if err := h.SetSocketTimeout(timeout); err != nil {
		h.Close()
		return nil, fmt.Errorf("open sock_diag: %w", err)
	}
	return &sockFinder{h: h}, nil
}

// cookie returns the socket cookie of the pod's UDP socket whose local
// address is from, the source of a query the proxy received. A query that
// arrives over IPv4 may come from an IPv4 socket or from a dual-stack IPv6
// one (v4-mapped); both are searched. A socket bound to from's address wins
// over one bound to the wildcard with the same port.
//
// The UDP dump walks the pod's UDP sockets (the kernel filters a dump by
// port, not by address, and vishvananda/netlink's SocketGet asks for one
// family only, so the dump is filtered here).
func (f *sockFinder) cookie(from netip.AddrPort) (uint64, error) {
	addr := from.Addr().Unmap()
	families := []uint8{unix.AF_INET6}
	if addr.Is4() {
		families = []uint8{unix.AF_INET, unix.AF_INET6}
	}
	var (
		found    bool
		wildcard uint64
	)
	for _, fam := range families {
		socks, err := f.h.SocketDiagUDP(fam)
		if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
			return 0, fmt.Errorf("list udp sockets: %w", err)
		}
		for _, s := range socks {
			if s.ID.SourcePort != from.Port() {
				continue
			}
			local, ok := netip.AddrFromSlice(s.ID.Source)
			if !ok {
				continue
			}
			switch local = local.Unmap(); {
			case local == addr:
				return uint64(s.ID.Cookie[0]) | uint64(s.ID.Cookie[1])<<32, nil
			case local.IsUnspecified() && !found:
				found, wildcard = true, uint64(s.ID.Cookie[0])|uint64(s.ID.Cookie[1])<<32
			}
		}
	}
	if !found {
		return 0, fmt.Errorf("%s: %w", from, errNoSender)
	}
	return wildcard, nil
}

func (f *sockFinder) Close() error {
	f.h.Close()
	return nil
}
