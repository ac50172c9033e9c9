package ebpf

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/node-agent/netns"
)

const (
	ingressPinPrefix = "ingress_"
	// clsactPrio and clsactHandle identify meshlet's filter when TCX is missing.
	clsactPrio   = 1
	clsactHandle = 0x6d6c // "ml"
)

// IngressOptions configure AttachPodIngress.
type IngressOptions struct {
	// ForceClsact attaches with a clsact qdisc filter even when the kernel
	// has TCX (for testing the fallback). A clsact filter cannot be pinned;
	// re-attaching replaces it in place.
	ForceClsact bool
}

// AttachPodIngress attaches the inbound steering program at ingress of
// interface ifname inside the netns at nsPath (TCX when the kernel has it,
// else a clsact filter). A SYN for a pod address then goes to the listener on
// Options.InboundPort in that netns, if there is one. A TCX link is pinned
// under PinDir; attaching again (a restarted agent) updates it in place.
func (d *Datapath) AttachPodIngress(nsPath, ifname string, opts IngressOptions) error {
	pin, err := d.ingressPin(nsPath, ifname)
	if err != nil {
		return err
	}
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		defer l.Close()
		if info, err := l.Info(); err == nil && info.TCX() != nil && info.TCX().Ifindex == 0 {
			// Its interface is gone: a netns inode reused by a new pod.
			if err := l.Unpin(); err != nil {
				return fmt.Errorf("unpin defunct ingress link %s: %w", pin, err)
			}
		} else {
			if err := l.Update(d.tc); err != nil {
				return fmt.Errorf("update pinned ingress link %s: %w", pin, err)
			}
			return nil
		}
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load pinned ingress link %s: %w", pin, err)
	}
	return netns.Do(nsPath, func() error {
		iface, err := interfaceByName(ifname)
		if err != nil {
			return fmt.Errorf("attach pod ingress in %s: %w", nsPath, err)
		}
		if !opts.ForceClsact {
			l, err := link.AttachTCX(link.TCXOptions{Interface: iface.Attrs().Index, Program: d.tc, Attach: ebpf.AttachTCXIngress})
			if err == nil {
				defer l.Close()
				if err := l.Pin(pin); err != nil {
					return fmt.Errorf("pin ingress link %s: %w", pin, err)
				}
				return nil
			}
			if !errors.Is(err, link.ErrNotSupported) {
				return fmt.Errorf("attach tcx ingress to %s in %s: %w", ifname, nsPath, err)
			}
		}
		return attachClsact(iface, d.tc)
	})
}

func interfaceByName(name string) (netlink.Link, error) {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil, fmt.Errorf("find interface %s: %w", name, err)
	}
	return l, nil
}

func attachClsact(iface netlink.Link, prog *ebpf.Program) error {
	q := &netlink.GenericQdisc{
		QdiscAttrs: netlink.QdiscAttrs{LinkIndex: iface.Attrs().Index, Handle: netlink.MakeHandle(0xffff, 0), Parent: netlink.HANDLE_CLSACT},
		QdiscType:  "clsact",
	}
	if err := netlink.QdiscReplace(q); err != nil {
		return fmt.Errorf("add clsact qdisc to %s: %w", iface.Attrs().Name, err)
	}
	f := &netlink.BpfFilter{
		FilterAttrs: netlink.FilterAttrs{
			LinkIndex: iface.Attrs().Index,
			Parent:    netlink.HANDLE_MIN_INGRESS,
			Handle:    clsactHandle,
			Priority:  clsactPrio,
			Protocol:  unix.ETH_P_ALL,
		},
		Fd:           prog.FD(),
		Name:         "meshlet_ingress",
		DirectAction: true,
	}
	if err := netlink.FilterReplace(f); err != nil {
		return fmt.Errorf("add clsact ingress filter to %s: %w", iface.Attrs().Name, err)
	}
	return nil
}

// DetachPodIngress removes the inbound steering program from ifname in the
// netns at nsPath. Not attached is not an error, nor is a netns that is gone
// (its interface went with it; Reconcile drops the pin).
func (d *Datapath) DetachPodIngress(nsPath, ifname string) error {
	if _, err := os.Stat(nsPath); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	pin, err := d.ingressPin(nsPath, ifname)
	if err != nil {
		return err
	}
	if l, err := link.LoadPinnedLink(pin, nil); err == nil {
		uerr := l.Unpin()
		return errors.Join(uerr, l.Close())
	} else if !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("load pinned ingress link %s: %w", pin, err)
	}
	return netns.Do(nsPath, func() error {
		iface, err := interfaceByName(ifname)
		if err != nil {
			return err
		}
		f := &netlink.BpfFilter{FilterAttrs: netlink.FilterAttrs{
			LinkIndex: iface.Attrs().Index, Parent: netlink.HANDLE_MIN_INGRESS,
			Handle: clsactHandle, Priority: clsactPrio, Protocol: unix.ETH_P_ALL,
		}}
		if err := netlink.FilterDel(f); err != nil && !errors.Is(err, unix.ENOENT) {
			return fmt.Errorf("delete clsact ingress filter on %s: %w", ifname, err)
		}
		return nil
	})
}

// ingressPin names a pod interface's link pin by its netns inode and ifname.
func (d *Datapath) ingressPin(nsPath, ifname string) (string, error) {
	if ifname == "" || filepath.Base(ifname) != ifname {
		return "", fmt.Errorf("pod ingress: bad interface name %q", ifname)
	}
	var st unix.Stat_t
	if err := unix.Stat(nsPath, &st); err != nil {
		return "", fmt.Errorf("pod ingress: stat netns %s: %w", nsPath, err)
	}
	return filepath.Join(d.opts.PinDir, fmt.Sprintf("%s%d_%s", ingressPinPrefix, st.Ino, ifname)), nil
}

// NetnsCookie returns the cookie of the network namespace at nsPath, the key
// Enroll takes.
func NetnsCookie(nsPath string) (uint64, error) {
	var cookie uint64
	err := netns.Do(nsPath, func() error {
		fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
		if err != nil {
			return fmt.Errorf("open socket: %w", err)
		}
		defer unix.Close(fd)
		cookie, err = unix.GetsockoptUint64(fd, unix.SOL_SOCKET, soNetnsCookie)
		if err != nil {
			return fmt.Errorf("read SO_NETNS_COOKIE: %w", err)
		}
		return nil
	})
	if err != nil {
		return 0, fmt.Errorf("netns cookie of %s: %w", nsPath, err)
	}
	return cookie, nil
}
