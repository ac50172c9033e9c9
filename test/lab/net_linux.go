package lab

import (
	"bytes"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// ip runs the iproute2 ip command.
func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), bytes.TrimSpace(out), err)
	}
	return nil
}

// ipOut runs ip and returns its output.
func ipOut(args ...string) (string, error) {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return "", fmt.Errorf("ip %s: %s: %w", strings.Join(args, " "), bytes.TrimSpace(out), err)
	}
	return string(out), nil
}

// linkExists reports whether a root-netns link exists.
func linkExists(name string) bool {
	return exec.Command("ip", "link", "show", "dev", name).Run() == nil
}

// bridgeOwner is the .lab dir recorded as the bridge's alias, "" if none.
func bridgeOwner() string {
	out, err := ipOut("-o", "link", "show", "dev", BridgeName)
	if err != nil {
		return ""
	}
	// "... \    alias /path/.lab" is printed as part of the one-line output.
	if i := strings.Index(out, "alias "); i >= 0 {
		return strings.TrimSpace(out[i+len("alias "):])
	}
	return ""
}

// setupBridge creates mlab0 with 198.18.0.1/24, owned (alias) by the lab dir.
func setupBridge(l Layout, st *State) error {
	if !linkExists(BridgeName) {
		if err := st.update(func(s *State) { s.Links = addUnique(s.Links, BridgeName) }); err != nil {
			return err
		}
		if err := ip("link", "add", BridgeName, "type", "bridge"); err != nil {
			return fmt.Errorf("create the lab bridge: %w", err)
		}
	}
	if err := ip("link", "set", "dev", BridgeName, "alias", l.Dir); err != nil {
		return err
	}
	if err := ip("addr", "replace", BridgeCIDR, "dev", BridgeName); err != nil {
		return err
	}
	return ip("link", "set", "dev", BridgeName, "up")
}

// setupNodeNet creates node i's netns with a veth on the bridge, its address,
// a default route via the bridge and forwarding on inside it only.
func setupNodeNet(st *State, i int) error {
	node := NodeName(i)
	ns := NodeNetns(node)
	veth := fmt.Sprintf("%s%d", VethPrefix, i)
	if err := st.update(func(s *State) {
		s.Netns = addUnique(s.Netns, ns)
		s.Links = addUnique(s.Links, veth)
	}); err != nil {
		return err
	}
	if exec.Command("ip", "netns", "exec", ns, "true").Run() != nil {
		if err := ip("netns", "add", ns); err != nil {
			return fmt.Errorf("create netns of %s: %w", node, err)
		}
	}
	if !linkExists(veth) {
		if err := ip("link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns", ns); err != nil {
			return fmt.Errorf("create veth of %s: %w", node, err)
		}
	}
	steps := [][]string{
		{"link", "set", "dev", veth, "master", BridgeName},
		{"link", "set", "dev", veth, "up"},
		{"-n", ns, "link", "set", "dev", "lo", "up"},
		{"-n", ns, "addr", "replace", NodeIP(i) + "/24", "dev", "eth0"},
		{"-n", ns, "link", "set", "dev", "eth0", "up"},
		{"-n", ns, "route", "replace", "default", "via", BridgeIP, "dev", "eth0"},
	}
	for _, s := range steps {
		if err := ip(s...); err != nil {
			return fmt.Errorf("set up network of %s: %w", node, err)
		}
	}
	sysctls := "echo 1 > /proc/sys/net/ipv4/ip_forward; echo 1 > /proc/sys/net/ipv4/conf/all/route_localnet"
	if out, err := exec.Command("ip", "netns", "exec", ns, "sh", "-c", sysctls).CombinedOutput(); err != nil {
		return fmt.Errorf("enable forwarding in %s: %s: %w", ns, bytes.TrimSpace(out), err)
	}
	return nil
}

// routePodCIDR makes cidr (node's pod range) reachable via nodeIP from the
// root netns (over mlab0 only) and from every other node.
func routePodCIDR(nodes int, owner int, cidr string) error {
	if _, err := netip.ParsePrefix(cidr); err != nil {
		return fmt.Errorf("pod CIDR %q of %s: %w", cidr, NodeName(owner), err)
	}
	via := NodeIP(owner)
	if err := ip("route", "replace", cidr, "via", via, "dev", BridgeName); err != nil {
		return err
	}
	for i := 1; i <= nodes; i++ {
		if i == owner {
			continue
		}
		if err := ip("-n", NodeNetns(NodeName(i)), "route", "replace", cidr, "via", via, "dev", "eth0"); err != nil {
			return err
		}
	}
	return nil
}

// checkRange fails when some link other than the lab's holds an address or a
// specific route inside 198.18.0.0/15.
func checkRange() error {
	lab := netip.MustParsePrefix("198.18.0.0/15")
	addrs, err := ipOut("-o", "-4", "addr", "show")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(addrs, "\n") {
		f := strings.Fields(line)
		if len(f) < 4 || strings.HasPrefix(f[1], "mlab") {
			continue
		}
		if p, err := netip.ParsePrefix(f[3]); err == nil && p.Overlaps(lab) {
			return fmt.Errorf("address range 198.18.0.0/15 is already in use: %s holds %s; the lab needs that range to itself (remove the address or run the lab on another machine)", strings.TrimSuffix(f[1], ":"), f[3])
		}
	}
	routes, err := ipOut("-4", "route", "show")
	if err != nil {
		return err
	}
	for _, line := range strings.Split(routes, "\n") {
		f := strings.Fields(line)
		if len(f) == 0 || f[0] == "default" || strings.Contains(line, "dev mlab") {
			continue
		}
		dst := f[0]
		if !strings.Contains(dst, "/") {
			dst += "/32"
		}
		if p, err := netip.ParsePrefix(dst); err == nil && p.Overlaps(lab) {
			return fmt.Errorf("address range 198.18.0.0/15 is already routed: %q; the lab needs that range to itself (delete the route first)", strings.TrimSpace(line))
		}
	}
	return nil
}
