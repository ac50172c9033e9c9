package nstest

import (
	"net"
	"net/netip"
	"os/exec"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// Pair creates two netns named <name>-a and <name>-b (name must start with
// "mlna-" and be at most 10 bytes), joined by a veth pair, with addresses a
// and b in one /24. Both are up with lo up. Cleanup deletes them.
func Pair(t *testing.T, name string, a, b netip.Addr) (Pod, Pod) {
	t.Helper()
	testutil.RequireRoot(t)
	if !strings.HasPrefix(name, "mlna-") || len(name) > 10 {
		t.Fatalf("nstest.Pair(%q): names start with mlna- and have at most 10 bytes", name)
	}
	pa := Pod{Name: name + "-a", Path: "/var/run/netns/" + name + "-a", Addr: a}
	pb := Pod{Name: name + "-b", Path: "/var/run/netns/" + name + "-b", Addr: b}
	for _, p := range []Pod{pa, pb} {
		run(t, "ip", "netns", "del", p.Name) // a leftover from a killed run
	}
	for _, p := range []Pod{pa, pb} {
		run(t, "ip", "netns", "add", p.Name)
		t.Cleanup(func() { run(t, "ip", "netns", "del", p.Name) })
	}
	mustRun(t, "ip", "link", "add", name+"a", "netns", pa.Name, "type", "veth", "peer", "name", name+"b", "netns", pb.Name)
	for _, x := range []struct {
		p    Pod
		link string
	}{{pa, name + "a"}, {pb, name + "b"}} {
		mustRun(t, "ip", "-n", x.p.Name, "addr", "add", x.p.Addr.String()+"/24", "dev", x.link)
		mustRun(t, "ip", "-n", x.p.Name, "link", "set", x.link, "up")
		mustRun(t, "ip", "-n", x.p.Name, "link", "set", "lo", "up")
	}
	return pa, pb
}

// Loopback creates a netns named name (starting with "mlna-", at most 10
// bytes) with only its loopback, up: for code that talks to itself inside
// a pod, like the DNS proxy and its client. Cleanup deletes it.
func Loopback(t *testing.T, name string) Pod {
	t.Helper()
	testutil.RequireRoot(t)
	if !strings.HasPrefix(name, "mlna-") || len(name) > 10 {
		t.Fatalf("nstest.Loopback(%q): names start with mlna- and have at most 10 bytes", name)
	}
	p := Pod{Name: name, Path: "/var/run/netns/" + name}
	run(t, "ip", "netns", "del", p.Name) // a leftover from a killed run
	mustRun(t, "ip", "netns", "add", p.Name)
	t.Cleanup(func() { run(t, "ip", "netns", "del", p.Name) })
	mustRun(t, "ip", "-n", p.Name, "link", "set", "lo", "up")
	return p
}

// MustListen returns a function that takes a listen call's results, fails
// the test on error and closes the listener at cleanup:
// nstest.MustListen(t)(netns.Listen(...)).
func MustListen(t *testing.T) func(net.Listener, error) net.Listener {
	return func(ln net.Listener, err error) net.Listener {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { ln.Close() })
		return ln
	}
}

func run(t *testing.T, args ...string) {
	t.Helper()
	_ = exec.Command(args[0], args[1:]...).Run()
}

func mustRun(t *testing.T, args ...string) {
	t.Helper()
	if out, err := exec.Command(args[0], args[1:]...).CombinedOutput(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out)
	}
}
