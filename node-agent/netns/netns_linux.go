package netns

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"runtime"
	"syscall"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Do runs f with the calling thread in the network namespace at nsPath
// (a bind mount such as /var/run/netns/x, or /proc/<pid>/ns/net) and returns
// f's error. f must not start goroutines that expect to be in the netns.
func Do(nsPath string, f func() error) error {
	target, err := os.Open(nsPath)
	if err != nil {
		return fmt.Errorf("open netns %s: %w", nsPath, err)
	}
	defer target.Close()
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		host, err := os.Open(fmt.Sprintf("/proc/self/task/%d/ns/net", unix.Gettid()))
		if err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("open current netns: %w", err)
			return
		}
		defer host.Close()
		if err := unix.Setns(int(target.Fd()), unix.CLONE_NEWNET); err != nil {
			runtime.UnlockOSThread()
			errc <- fmt.Errorf("enter netns %s: %w", nsPath, err)
			return
		}
		ferr := f()
		if err := unix.Setns(int(host.Fd()), unix.CLONE_NEWNET); err != nil {
			// Stay locked: the runtime ends this thread with the goroutine.
			errc <- errors.Join(ferr, fmt.Errorf("return to host netns: %w", err))
			return
		}
		runtime.UnlockOSThread()
		errc <- ferr
	}()
	return <-errc
}

// Listen opens a TCP listener on addr inside the netns at nsPath.
func Listen(nsPath, addr string, opts ListenOptions) (net.Listener, error) {
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		return setSockopts(c, opts.Mark, opts.Transparent, opts.ReusePort)
	}}
	var ln net.Listener
	err := Do(nsPath, func() error {
		var err error
		ln, err = lc.Listen(context.Background(), "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("listen on %s in %s: %w", addr, nsPath, err)
	}
	return ln, nil
}

// Dial connects to addr (host:port) over TCP from inside the netns at nsPath.
func Dial(ctx context.Context, nsPath, addr string, opts DialOptions) (net.Conn, error) {
	d := net.Dialer{Timeout: opts.Timeout, Control: func(_, _ string, c syscall.RawConn) error {
		return setSockopts(c, opts.Mark, opts.Transparent, false)
	}}
	if opts.Source.IsValid() {
		d.LocalAddr = net.TCPAddrFromAddrPort(opts.Source)
	}
	var conn net.Conn
	err := Do(nsPath, func() error {
		var err error
		conn, err = d.DialContext(ctx, "tcp", addr)
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("dial %s from %s: %w", addr, nsPath, err)
	}
	return conn, nil
}

func setSockopts(c syscall.RawConn, mark uint32, transparent, reusePort bool) error {
	var serr error
	err := c.Control(func(fd uintptr) {
		s := int(fd)
		if mark != 0 {
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_MARK, int(mark)); err != nil {
				serr = fmt.Errorf("set SO_MARK: %w", err)
				return
			}
		}
		if reusePort {
			if err := unix.SetsockoptInt(s, unix.SOL_SOCKET, unix.SO_REUSEPORT, 1); err != nil {
				serr = fmt.Errorf("set SO_REUSEPORT: %w", err)
				return
			}
		}
		if transparent {
			// The socket's family is not known here; an AF_INET6 socket
			// accepts both options, an AF_INET one only the IPv4 ones.
			domain, err := unix.GetsockoptInt(s, unix.SOL_SOCKET, unix.SO_DOMAIN)
			if err != nil {
				serr = fmt.Errorf("get SO_DOMAIN: %w", err)
				return
			}
			if domain == unix.AF_INET6 {
				if err := unix.SetsockoptInt(s, unix.SOL_IPV6, unix.IPV6_TRANSPARENT, 1); err != nil {
					serr = fmt.Errorf("set IPV6_TRANSPARENT: %w", err)
					return
				}
				_ = unix.SetsockoptInt(s, unix.SOL_IPV6, unix.IPV6_FREEBIND, 1)
			}
			if err := unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_TRANSPARENT, 1); err != nil && domain == unix.AF_INET {
				serr = fmt.Errorf("set IP_TRANSPARENT: %w", err)
				return
			}
			_ = unix.SetsockoptInt(s, unix.SOL_IP, unix.IP_FREEBIND, 1)
		}
	})
	return errors.Join(err, serr)
}

// PrepareReturnPath sets up, idempotently, what a transparent connection to
// the app needs in the netns at nsPath; see the package doc.
func PrepareReturnPath(nsPath string, rp ReturnPath) error {
	if rp.Mark == 0 || rp.Table == 0 {
		return errors.New("prepare return path: ReturnPath.Mark and .Table must be non-zero")
	}
	if rp.Mask == 0 {
		rp.Mask = rp.Mark
	}
	if rp.Priority == 0 {
		rp.Priority = 100
	}
	err := Do(nsPath, func() error {
		if err := os.WriteFile("/proc/sys/net/ipv4/tcp_fwmark_accept", []byte("1"), 0); err != nil {
			return fmt.Errorf("set tcp_fwmark_accept: %w", err)
		}
		h, err := netlink.NewHandle()
		if err != nil {
			return fmt.Errorf("open netlink: %w", err)
		}
		defer h.Close()
		lo, err := h.LinkByName("lo")
		if err != nil {
			return fmt.Errorf("find lo: %w", err)
		}
		if err := h.LinkSetUp(lo); err != nil {
			return fmt.Errorf("set lo up: %w", err)
		}
		for _, fam := range []int{netlink.FAMILY_V4, netlink.FAMILY_V6} {
			if fam == netlink.FAMILY_V6 {
				if _, err := os.Stat("/proc/sys/net/ipv6"); err != nil {
					continue // IPv6 disabled in this netns
				}
			}
			rule := netlink.NewRule()
			rule.Family = fam
			rule.Mark = rp.Mark
			mask := rp.Mask
			rule.Mask = &mask
			rule.Table = rp.Table
			rule.Priority = rp.Priority
			if err := h.RuleAdd(rule); err != nil && !errors.Is(err, unix.EEXIST) {
				return fmt.Errorf("add fwmark rule (family %d): %w", fam, err)
			}
			dst := &net.IPNet{IP: net.IPv4zero, Mask: net.CIDRMask(0, 32)}
			if fam == netlink.FAMILY_V6 {
				dst = &net.IPNet{IP: net.IPv6zero, Mask: net.CIDRMask(0, 128)}
			}
			route := &netlink.Route{
				LinkIndex: lo.Attrs().Index, Dst: dst, Table: rp.Table,
				Type: unix.RTN_LOCAL, Scope: netlink.SCOPE_HOST,
			}
			if err := h.RouteReplace(route); err != nil {
				return fmt.Errorf("add local default route (family %d): %w", fam, err)
			}
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("prepare return path in %s: %w", nsPath, err)
	}
	return nil
}

// Listeners counts the TCP sockets listening on each of ports (any address,
// IPv4 or IPv6) inside the netns at nsPath, whichever process holds them, in
// one sock_diag dump per family: during a handoff, the draining agent waits
// for its successor's listeners with it.
func Listeners(nsPath string, ports ...uint16) (map[uint16]int, error) {
	counts := make(map[uint16]int, len(ports))
	for _, p := range ports {
		counts[p] = 0
	}
	err := Do(nsPath, func() error {
		h, err := netlink.NewHandle(unix.NETLINK_INET_DIAG)
		if err != nil {
			return fmt.Errorf("open sock_diag: %w", err)
		}
		defer h.Close()
		for _, family := range []uint8{unix.AF_INET, unix.AF_INET6} {
			socks, err := h.SocketDiagTCP(family)
			if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
				return fmt.Errorf("list TCP sockets: %w", err)
			}
			for _, s := range socks {
				if _, ok := counts[s.ID.SourcePort]; ok && s.State == unix.BPF_TCP_LISTEN {
					counts[s.ID.SourcePort]++
				}
			}
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("count listeners on %v in %s: %w", ports, nsPath, err)
	}
	return counts, nil
}
