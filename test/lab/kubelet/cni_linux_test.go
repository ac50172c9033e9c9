package kubelet

import (
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestCNIAddDel builds the reference plugins, writes the node conflist for a
// pod CIDR in the test range and wires a pod netns from inside a node netns
// (so the host side of the veth lands there, not in the machine's).
func TestCNIAddDel(t *testing.T) {
	testutil.RequireRoot(t)
	if _, err := exec.LookPath("go"); err != nil {
		testutil.SkipOrFail(t, "needs the go command to build the CNI plugins")
	}
	wd, _ := os.Getwd()
	mod, err := findTestModule(wd)
	if err != nil {
		t.Fatal(err)
	}
	root := t.TempDir()
	binDir, confDir := filepath.Join(root, "bin"), filepath.Join(root, "net.d")
	os.MkdirAll(binDir, 0o755)
	os.MkdirAll(confDir, 0o755)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	if err := installCNIPlugins(ctx, mod, filepath.Join(root, "cache"), binDir); err != nil {
		t.Fatal(err)
	}
	if _, err := firstConflist(confDir); err == nil || !strings.Contains(err.Error(), "no CNI config") {
		t.Errorf("firstConflist of an empty dir = %v; want a 'no CNI config' error", err)
	}
	wrote, err := writeConflist(confDir, "198.19.200.0/24", filepath.Join(root, "ipam"))
	if err != nil || !wrote {
		t.Fatalf("writeConflist = %v, %v; want written", wrote, err)
	}
	// A later file sorts after ours and is not used; ours is not overwritten.
	os.WriteFile(filepath.Join(confDir, "99-other.conflist"), []byte(`{"cniVersion":"1.0.0","name":"other","plugins":[{"type":"bogus"}]}`), 0o644)
	if wrote, _ := writeConflist(confDir, "198.19.201.0/24", ""); wrote {
		t.Error("writeConflist overwrote an existing conflist")
	}

	node := testNetns(t)
	pod := testNetns(t)
	c := newCNINet(confDir, binDir, filepath.Join(root, "cache-cni"))
	var ip string
	if err := inNetns(node, func() error {
		var err error
		ip, err = c.add(ctx, "demo", "p1", "uid-1", "mlkt-sandbox-1", pod)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	_, cidr, _ := net.ParseCIDR("198.19.200.0/24")
	if !cidr.Contains(net.ParseIP(ip)) {
		t.Fatalf("pod IP %s is not in the node's pod CIDR %s", ip, cidr)
	}
	out, err := exec.Command("nsenter", "--net="+pod, "ip", "-4", "-o", "addr").CombinedOutput()
	if err != nil || !strings.Contains(string(out), ip) || !strings.Contains(string(out), "lo ") {
		t.Errorf("pod netns addresses:\n%s\nwant %s on eth0 and lo up (%v)", out, ip, err)
	}
	// The node reaches a listener in the pod over the ptp veth.
	var l net.Listener
	if err := inNetns(pod, func() error {
		var err error
		l, err = net.Listen("tcp", net.JoinHostPort(ip, "8080"))
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	go func() {
		if c, err := l.Accept(); err == nil {
			c.Close()
		}
	}()
	conn, err := dialIn(node, net.JoinHostPort(ip, "8080"), 3*time.Second)
	if err != nil {
		t.Errorf("connect to the pod %s:8080 from the node netns: %v", ip, err)
	} else {
		conn.Close()
	}
	if err := inNetns(node, func() error { return c.del(ctx, "demo", "p1", "uid-1", "mlkt-sandbox-1", pod) }); err != nil {
		t.Fatal(err)
	}
	out, _ = exec.Command("nsenter", "--net="+pod, "ip", "-4", "-o", "addr").CombinedOutput()
	if strings.Contains(string(out), ip) {
		t.Errorf("after CNI DEL the pod still has %s:\n%s", ip, out)
	}
}
