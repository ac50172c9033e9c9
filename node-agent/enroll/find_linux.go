package enroll

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"

	"github.com/vishvananda/netlink"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// FindNetns returns the path of the network namespace holding one of ips:
// first among the runtime's netns bind mounts, then among /proc/<pid>/ns/net
// of processes whose cgroup names the pod UID.
func FindNetns(opts FindOptions, uid string, ips []netip.Addr) (string, error) {
	if len(ips) == 0 {
		return "", errors.New("find pod netns: the pod has no IP yet")
	}
	if opts.NetnsDir == "" {
		opts.NetnsDir = "/var/run/netns"
	}
	if opts.ProcDir == "" {
		opts.ProcDir = "/proc"
	}
	seen := map[uint64]bool{}
	if des, err := os.ReadDir(opts.NetnsDir); err == nil {
		for _, de := range des {
			p := filepath.Join(opts.NetnsDir, de.Name())
			if holds(p, ips, seen) {
				return p, nil
			}
		}
	}
	if uid != "" {
		des, err := os.ReadDir(opts.ProcDir)
		if err != nil {
			return "", fmt.Errorf("find pod netns: read %s: %w", opts.ProcDir, err)
		}
		alt := strings.ReplaceAll(uid, "-", "_") // systemd cgroup driver
		for _, de := range des {
			if _, err := strconv.Atoi(de.Name()); err != nil {
				continue
			}
			cg, err := os.ReadFile(filepath.Join(opts.ProcDir, de.Name(), "cgroup"))
			if err != nil || !(strings.Contains(string(cg), uid) || strings.Contains(string(cg), alt)) {
				continue
			}
			p := filepath.Join(opts.ProcDir, de.Name(), "ns", "net")
			if holds(p, ips, seen) {
				return p, nil
			}
		}
	}
	return "", fmt.Errorf("%w: no netns in %s or %s holds %v", ErrNetnsNotFound, opts.NetnsDir, opts.ProcDir, ips)
}

// holds reports whether the netns at path has an interface address among
// ips; each netns (by inode) is looked at once.
func holds(path string, ips []netip.Addr, seen map[uint64]bool) bool {
	var st syscall.Stat_t
	if err := syscall.Stat(path, &st); err != nil || seen[st.Ino] {
		return false
	}
	seen[st.Ino] = true
	found := false
	_ = netns.Do(path, func() error {
		addrs, err := netlink.AddrList(nil, netlink.FAMILY_ALL)
		if err != nil {
			return err
		}
		for _, a := range addrs {
			if ip, ok := netip.AddrFromSlice(a.IP); ok {
				for _, want := range ips {
					if ip.Unmap() == want {
						found = true
					}
				}
			}
		}
		return nil
	})
	return found
}
