package agent

import (
	"context"
	"fmt"
	"net/netip"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
)

// Pauses of WatchHostAddrs: how long a burst of address changes (a pod's
// host-side veth coming up brings several) is let settle before the
// addresses are read once, and how long a broken subscription waits before
// it is opened again.
const (
	hostAddrSettle     = 100 * time.Millisecond
	hostAddrResubPause = 2 * time.Second
)

// WatchHostAddrs keeps the node's addresses current for kubelet probes: it
// reads them at start and again after every address change netlink reports
// in the network namespace at netnsPath ("" is the agent's own, the node's),
// gives them to the data path when they changed (its probe sources) and
// answers ProbeExempt from them instead of listing the interfaces for every
// probe connection. Without it, an address the node gains later (a new
// interface, a renumbering) would reach the data path only at the next
// enrollment of a pod with probes, and until then that pod's probes from it
// would go through the agent. It runs until ctx ends; a subscription that
// breaks (netlink's receive buffer overflowed) is opened again after a pause
// and the addresses read in full, since changes may have been missed.
func (a *Agent) WatchHostAddrs(ctx context.Context, netnsPath string) error {
	ns := netns.None()
	if netnsPath != "" {
		var err error
		if ns, err = netns.GetFromPath(netnsPath); err != nil {
			return fmt.Errorf("watch the node's addresses: open netns %s: %w", netnsPath, err)
		}
		defer ns.Close()
	}
	h, err := netlink.NewHandleAt(ns)
	if err != nil {
		return fmt.Errorf("watch the node's addresses: netlink: %w", err)
	}
	defer h.Close()
	read := func() {
		list, err := h.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			a.opts.Errorf("kubelet probes: list the node's addresses: %v", err)
			return
		}
		addrs := make([]netip.Addr, 0, len(list))
		for _, ad := range list {
			if ip, ok := netip.AddrFromSlice(ad.IP); ok {
				addrs = append(addrs, ip.Unmap())
			}
		}
		a.setHostAddrs(addrs)
	}
	for first := true; ; first = false {
		updates := make(chan netlink.AddrUpdate, 64)
		done := make(chan struct{})
		opts := netlink.AddrSubscribeOptions{ErrorCallback: func(err error) {
			if ctx.Err() == nil { // not the socket closed by a stop
				a.opts.Errorf("kubelet probes: node address updates: %v", err)
			}
		}}
		if netnsPath != "" {
			opts.Namespace = &ns
		}
		err := netlink.AddrSubscribeWithOptions(updates, done, opts)
		if err != nil && first {
			return fmt.Errorf("watch the node's addresses: subscribe: %w", err)
		}
		broken := err != nil // the next try after the pause
		if broken {
			a.opts.Errorf("kubelet probes: node address updates: subscribe again: %v", err)
		} else {
			read() // after subscribing: a change from now on is not missed
		}
		for !broken {
			select {
			case <-ctx.Done():
				close(done)
				return nil
			case _, ok := <-updates:
				if !ok {
					broken = true
					break
				}
				// Let the burst settle, then read once.
				settle := time.NewTimer(hostAddrSettle)
			drain:
				for {
					select {
					case _, ok := <-updates:
						if !ok {
							broken = true
							break drain
						}
					case <-settle.C:
						break drain
					case <-ctx.Done():
						settle.Stop()
						close(done)
						return nil
					}
				}
				settle.Stop()
				read()
			}
		}
		close(done)
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(hostAddrResubPause):
		}
	}
}
