package ebpf

import (
	"bytes"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/testutil"
)

const agentMark = 0x539

// setup is one test's kernel state: a bpffs, a cgroup the test process runs
// in, and a loaded data path attached to it.
type setup struct {
	pinDir string
	cgroup string
	dp     *Datapath
}

// newSetup mounts a bpffs, creates a cgroup v2 child, moves this process into
// it and loads the data path there with opts (PinDir and CgroupPath filled in).
// Cleanup uninstalls, moves the process back and removes everything.
func newSetup(t testing.TB, opts Options) *setup {
	t.Helper()
	testutil.RequireRoot(t)
	if err := CheckKernel(); err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	s := &setup{pinDir: filepath.Join(testutil.MountBPFFS(t), "meshlet"), cgroup: testutil.EnterCgroup(t, "mlbpf")}
	opts.PinDir, opts.CgroupPath = s.pinDir, s.cgroup
	if opts.AgentMark == 0 {
		opts.AgentMark = agentMark
	}
	dp, err := Load(opts)
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	s.dp = dp
	t.Cleanup(func() {
		if s.dp != nil {
			if err := s.dp.Uninstall(); err != nil {
				t.Errorf("Uninstall: %v", err)
			}
		}
	})
	return s
}

// newNetns creates netns mlbpf-<name> with lo up and the given addresses on
// lo, removed at cleanup. It returns its path.
func newNetns(t *testing.T, name string, loAddrs ...string) string {
	t.Helper()
	ns := "mlbpf-" + name
	_ = exec.Command("ip", "netns", "del", ns).Run() // leftover of a killed run
	mustRun(t, "ip", "netns", "add", ns)
	t.Cleanup(func() { _ = exec.Command("ip", "netns", "del", ns).Run() })
	mustRun(t, "ip", "-n", ns, "link", "set", "lo", "up")
	for _, a := range loAddrs {
		mustRun(t, "ip", "-n", ns, "addr", "add", a, "dev", "lo")
	}
	return "/var/run/netns/" + ns
}

// vethPair joins two fresh netns with a veth pair (ends <name>a and
// <name>b) addressed a and b (CIDR).
func vethPair(t *testing.T, name, a, b string) (nsA, nsB string) {
	t.Helper()
	nsA, nsB = newNetns(t, name+"a"), newNetns(t, name+"b")
	mustRun(t, "ip", "link", "add", "mlbpf-"+name+"a", "netns", "mlbpf-"+name+"a", "type", "veth",
		"peer", "name", "mlbpf-"+name+"b", "netns", "mlbpf-"+name+"b")
	for _, x := range [][2]string{{name + "a", a}, {name + "b", b}} {
		mustRun(t, "ip", "-n", "mlbpf-"+x[0], "addr", "add", x[1], "dev", "mlbpf-"+x[0])
		mustRun(t, "ip", "-n", "mlbpf-"+x[0], "link", "set", "mlbpf-"+x[0], "up")
	}
	return nsA, nsB
}

func mustRun(t *testing.T, args ...string) {
	t.Helper()
	var out bytes.Buffer
	cmd := exec.Command(args[0], args[1:]...)
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("%s: %v\n%s", strings.Join(args, " "), err, out.String())
	}
}

// eventually polls cond every 10ms for up to 5s.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for i := 0; i < 500; i++ {
		if cond() {
			return
		}
		time.Sleep(10 * time.Millisecond)
	}
	t.Fatalf("timed out waiting for %s", what)
}
