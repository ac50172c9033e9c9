package lab

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// UpOptions configures Up.
type UpOptions struct {
	Layout  Layout        // the lab's .lab directory
	Nodes   int           // number of nodes, 1..MaxNodes; 2 when 0
	Self    string        // absolute path of the lab binary (runs `supervise` and `kubelet`)
	Out     io.Writer     // progress output
	Timeout time.Duration // how long to wait for nodes and DNS to be ready; 5m when 0
	// Owner, when set, is the pid of the process the lab is started for:
	// the lab goes down when it ends (SuperviseOptions.Owner).
	Owner int
}

// ErrAnotherLab is returned by Up when a lab from another directory runs.
var ErrAnotherLab = errors.New("another lab is running")

// Up starts the lab, or reports the one already running from this directory,
// and waits until every node is Ready and CoreDNS is available.
func Up(ctx context.Context, opt UpOptions) error {
	if opt.Nodes == 0 {
		opt.Nodes = 2
	}
	if opt.Timeout == 0 {
		opt.Timeout = 5 * time.Minute
	}
	if opt.Nodes < 1 || opt.Nodes > MaxNodes {
		return fmt.Errorf("--nodes %d: want 1 to %d nodes", opt.Nodes, MaxNodes)
	}
	l, out := opt.Layout, opt.Out
	start := time.Now()
	step := func(format string, args ...any) {
		fmt.Fprintf(out, "[%5.1fs] %s\n", time.Since(start).Seconds(), fmt.Sprintf(format, args...))
	}
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	if pid := supervisorPid(l); pid > 0 {
		step("lab already running (supervisor pid %d); checking it is ready", pid)
		return waitReady(ctx, l, opt, step)
	}
	if err := checkHost(); err != nil {
		return err
	}
	if linkExists(BridgeName) {
		if owner, pid := otherLab(l); pid > 0 {
			return fmt.Errorf("%w: bridge %s belongs to the lab running from %q (supervisor pid %d); run `lab down` there first", ErrAnotherLab, BridgeName, owner, pid)
		}
		step("cleaning up a lab that stopped without `lab down`")
		if err := Down(DownOptions{Layout: l, Out: out}); err != nil {
			return err
		}
	}
	if err := checkRange(); err != nil {
		return err
	}
	if err := checkPortFree("127.0.0.1:32379", "embedded etcd"); err != nil {
		return err
	}
	for _, d := range []string{"logs", "bin", "nodes"} {
		if err := os.MkdirAll(l.Path(d), 0o755); err != nil {
			return fmt.Errorf("create %s: %w", l.Path(d), err)
		}
	}
	step("certificates in %s", l.Path("pki"))
	if err := ensurePKI(l, opt.Nodes); err != nil {
		return err
	}
	if err := writeKubeconfig(l, l.Kubeconfig(), "admin", "lab-admin"); err != nil {
		return err
	}
	step("upstream binaries (cached)")
	tools, err := ensureTools(l.Repo(), out)
	if err != nil {
		return err
	}
	step("building product binaries and test apps into %s", l.Path("bin"))
	if _, err := buildLocal(l, tools, out); err != nil {
		return err
	}
	step("starting the supervisor (log %s)", l.Logs("supervisor.log"))
	if err := startSupervisor(opt, tools); err != nil {
		return err
	}
	step("waiting for kube-apiserver")
	if err := waitAPIServerOrSupervisor(ctx, l, 3*time.Minute); err != nil {
		return err
	}
	step("kube-apiserver ready at https://%s:%d", BridgeIP, APIPort)
	return waitReady(ctx, l, opt, step)
}

// waitReady applies CoreDNS and waits for the nodes and DNS, then prints how
// to reach the lab.
func waitReady(ctx context.Context, l Layout, opt UpOptions, step func(string, ...any)) error {
	if err := applyCoreDNS(l); err != nil {
		return err
	}
	cs, err := clientsetFor(l.Kubeconfig())
	if err != nil {
		return err
	}
	step("waiting for %d nodes to be Ready", opt.Nodes)
	deadline := time.Now().Add(opt.Timeout)
	for {
		ready, err := readyNodes(ctx, cs)
		if err == nil && ready >= opt.Nodes {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("nodes not Ready after %s (%d of %d ready); see %s and %s", opt.Timeout, ready, opt.Nodes, l.Logs("kubelet-"+NodeName(1)+".log"), l.Logs("supervisor.log"))
		}
		if supervisorPid(l) == 0 {
			return fmt.Errorf("the lab supervisor exited; see %s", l.Logs("supervisor.log"))
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	step("nodes Ready; waiting for CoreDNS")
	for {
		d, err := cs.AppsV1().Deployments("kube-system").Get(ctx, "coredns", metav1.GetOptions{})
		if err == nil && d.Status.AvailableReplicas >= 1 {
			break
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("CoreDNS not available after %s; see `lab kubectl -n kube-system describe pods -l k8s-app=kube-dns`", opt.Timeout)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	step("lab ready")
	fmt.Fprintf(opt.Out, "\nkubeconfig: %s\n  KUBECONFIG=%s %s get nodes\n", l.Kubeconfig(), l.Kubeconfig(), l.Bin("kubectl"))
	return nil
}

func readyNodes(ctx context.Context, cs kubernetes.Interface) (int, error) {
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil {
		return 0, err
	}
	n := 0
	for _, node := range nodes.Items {
		for _, c := range node.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				n++
			}
		}
	}
	return n, nil
}

// applyCoreDNS applies the cluster DNS manifest with the lab's kubectl.
func applyCoreDNS(l Layout) error {
	cmd := exec.Command(l.Bin("kubectl"), "--kubeconfig", l.Kubeconfig(), "apply", "-f", "-")
	cmd.Stdin = strings.NewReader(coreDNSManifest)
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("apply CoreDNS: %s: %w", bytes.TrimSpace(out), err)
	}
	return nil
}

// startSupervisor runs `lab supervise` detached (own session), logging to
// .lab/logs/supervisor.log, and records its pid.
func startSupervisor(opt UpOptions, tools string) error {
	l := opt.Layout
	logf, err := os.OpenFile(l.Logs("supervisor.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open supervisor log: %w", err)
	}
	defer logf.Close()
	cmd := exec.Command(opt.Self, "supervise", "--nodes", strconv.Itoa(opt.Nodes), "--tools", tools, "--owner-pid", strconv.Itoa(opt.Owner))
	cmd.Env = append(os.Environ(), "MESHLET_LAB_DIR="+l.Dir)
	cmd.Dir = l.Repo()
	cmd.Stdout, cmd.Stderr = logf, logf
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start the lab supervisor: %w", err)
	}
	if err := os.WriteFile(l.PidFile(), []byte(strconv.Itoa(cmd.Process.Pid)+"\n"), 0o644); err != nil {
		return fmt.Errorf("write %s: %w", l.PidFile(), err)
	}
	go func() { _ = cmd.Wait() }() // reap it if it exits while Up still runs
	return nil
}

func waitAPIServerOrSupervisor(ctx context.Context, l Layout, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	errc := make(chan error, 1)
	go func() { errc <- waitAPIServer(ctx, l, timeout) }()
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case err := <-errc:
			return err
		case <-t.C:
			if supervisorPid(l) == 0 {
				return fmt.Errorf("the lab supervisor exited while starting:\n%s", tail(l.Logs("supervisor.log"), 15))
			}
		}
	}
}

// otherLab reports the lab of another directory that owns the bridge:
// its directory ("" when the bridge is absent, unowned or l's) and its
// supervisor's pid (0 when that lab's supervisor is gone).
func otherLab(l Layout) (owner string, pid int) {
	if !linkExists(BridgeName) {
		return "", 0
	}
	if owner = bridgeOwner(); owner == "" || owner == l.Dir {
		return "", 0
	}
	return owner, supervisorPid(Layout{Dir: owner})
}

// supervisorPid is the pid of this lab's running supervisor, 0 if none.
func supervisorPid(l Layout) int {
	b, err := os.ReadFile(l.PidFile())
	if err != nil {
		return 0
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || pid <= 0 {
		return 0
	}
	cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
	if err != nil {
		return 0
	}
	args := strings.Split(string(cmdline), "\x00")
	if len(args) < 2 || args[1] != "supervise" {
		return 0
	}
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err == nil && strings.Contains(string(stat), ") Z ") {
		return 0 // exited, not yet reaped
	}
	return pid
}

// checkHost checks the machine has what the lab needs, in words.
func checkHost() error {
	for _, bin := range []string{"ip", "iptables", "nsenter", "go"} {
		if _, err := exec.LookPath(bin); err != nil {
			return fmt.Errorf("the lab needs %q on PATH (apt-get install iproute2 iptables util-linux; Go from go.dev): %w", bin, err)
		}
	}
	if _, err := os.Stat("/proc/self/ns/net"); err != nil {
		return fmt.Errorf("kernel has no network namespaces (CONFIG_NET_NS): %w", err)
	}
	fs, err := os.ReadFile("/proc/filesystems")
	if err != nil {
		return fmt.Errorf("read /proc/filesystems: %w", err)
	}
	if !strings.Contains(string(fs), "\tbpf\n") {
		return errors.New("kernel has no bpf filesystem (CONFIG_BPF_SYSCALL); the lab mounts one per node")
	}
	if _, err := testutil.Cgroup2Root(); err != nil {
		return fmt.Errorf("the lab needs a cgroup v2 mount (mount -t cgroup2 none /sys/fs/cgroup/unified): %w", err)
	}
	return nil
}

func checkPortFree(addr, what string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("port %s for %s is in use by another program: %w", addr, what, err)
	}
	return ln.Close()
}

// tail returns the last n lines of a file.
func tail(path string, n int) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	lines := strings.Split(strings.TrimRight(string(b), "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// DownOptions configures Down.
type DownOptions struct {
	Layout Layout    // the lab's .lab directory
	Out    io.Writer // progress output
}

// Down stops the lab and removes everything it made: processes (recorded
// pids, then whatever still runs in the lab's cgroups), mounts under .lab,
// node netns, links, cgroups, and the cluster's data (etcd, node dirs).
// Credentials, binaries and logs stay. With nothing up it says so.
func Down(opt DownOptions) error {
	l, out := opt.Layout, opt.Out
	if os.Geteuid() != 0 {
		return errNotRoot
	}
	st, err := loadState(l)
	if err != nil {
		return err
	}
	did := false
	if pid := supervisorPid(l); pid > 0 {
		did = true
		fmt.Fprintf(out, "stopping the supervisor (pid %d) and its processes\n", pid)
		_ = syscall.Kill(pid, syscall.SIGTERM)
		if !waitGone(pid, 120*time.Second) {
			fmt.Fprintf(out, "supervisor did not stop in 120s; killing it\n")
			_ = syscall.Kill(pid, syscall.SIGKILL)
			waitGone(pid, 10*time.Second)
		}
	}
	for name, p := range st.Processes {
		if procRuns(p) {
			did = true
			fmt.Fprintf(out, "killing leftover %s (pid %d)\n", name, p.Pid)
			_ = syscall.Kill(p.Pid, syscall.SIGKILL)
			waitGone(p.Pid, 10*time.Second)
		}
	}
	// The prefix sweep below covers names every lab uses; it runs only when
	// the bridge is absent, this lab's, or left by a lab whose supervisor is
	// gone (a run killed before its `lab down`, e.g. a CI job at its time
	// limit), so a running lab of another checkout is never hit.
	if owner, pid := otherLab(l); owner != "" {
		if pid > 0 {
			if did {
				fmt.Fprintln(out, "stopped this directory's lab processes")
			}
			fmt.Fprintf(out, "no lab is running from %s; the lab running from %s (supervisor pid %d) is left alone\n", l.Dir, owner, pid)
			_ = os.Remove(l.PidFile())
			_ = os.Remove(l.StateFile())
			return nil
		}
		// The dead lab's own down: its recorded processes, its mounts and
		// its node directories, then the sweep; this directory's state after.
		fmt.Fprintf(out, "the lab from %s stopped without `lab down` (its supervisor is gone); cleaning up what it left\n", owner)
		if err := Down(DownOptions{Layout: Layout{Dir: owner}, Out: out}); err != nil {
			return err
		}
		did = true
	}
	var errs []error
	cgRoot, cgErr := testutil.Cgroup2Root()
	slice := ""
	if cgErr == nil {
		slice = filepath.Join(cgRoot, CgroupSlice)
		if exists(slice) {
			did = true
			if n := killCgroupTree(slice); n > 0 {
				fmt.Fprintf(out, "killed %d leftover pod processes\n", n)
			}
		}
	}
	for _, m := range mountsUnder(l.Dir) {
		did = true
		if err := syscall.Unmount(m, syscall.MNT_DETACH); err != nil {
			errs = append(errs, fmt.Errorf("unmount %s: %w", m, err))
		}
	}
	nsList := append([]string(nil), st.Netns...)
	if names, err := ipOut("netns", "list"); err == nil {
		for _, line := range strings.Split(names, "\n") {
			if f := strings.Fields(line); len(f) > 0 && strings.HasPrefix(f[0], NetnsPrefix) {
				nsList = addUnique(nsList, f[0])
			}
		}
	}
	for _, ns := range nsList {
		if exists(filepath.Join("/var/run/netns", ns)) {
			did = true
			if err := ip("netns", "del", ns); err != nil && exists(filepath.Join("/var/run/netns", ns)) {
				errs = append(errs, err)
			}
		}
	}
	links := append([]string(nil), st.Links...)
	links = addUnique(links, BridgeName)
	for i := 1; i <= MaxNodes; i++ {
		links = addUnique(links, fmt.Sprintf("%s%d", VethPrefix, i))
	}
	for _, link := range links {
		if linkExists(link) {
			did = true
			if err := ip("link", "del", link); err != nil && linkExists(link) {
				errs = append(errs, err)
			}
		}
	}
	if slice != "" && exists(slice) {
		if err := removeCgroupTree(slice); err != nil {
			errs = append(errs, err)
		}
	}
	for _, p := range []string{l.StateFile(), l.PidFile()} {
		if exists(p) {
			did = true
		}
		_ = os.Remove(p)
	}
	for _, d := range []string{l.Path("etcd"), l.Path("nodes")} {
		if err := os.RemoveAll(d); err != nil {
			errs = append(errs, fmt.Errorf("remove %s: %w", d, err))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("lab down left things behind: %w", err)
	}
	if did {
		fmt.Fprintln(out, "lab is down")
	} else {
		fmt.Fprintln(out, "no lab is running; nothing to clean up")
	}
	return nil
}

// procRuns reports whether p still runs the program recorded for it.
func procRuns(p Proc) bool {
	if p.Pid <= 0 {
		return false
	}
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", p.Pid))
	if err != nil {
		return false
	}
	return filepath.Base(strings.TrimSuffix(exe, " (deleted)")) == filepath.Base(p.Exe)
}

func waitGone(pid int, d time.Duration) bool {
	deadline := time.Now().Add(d)
	for time.Now().Before(deadline) {
		if syscall.Kill(pid, 0) != nil {
			return true
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil || strings.Contains(string(stat), ") Z ") {
			return true
		}
		time.Sleep(100 * time.Millisecond)
	}
	return false
}

// killCgroupTree SIGKILLs every process in dir and its descendants and
// returns how many it signalled.
func killCgroupTree(dir string) int {
	n := 0
	_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, err := os.ReadFile(filepath.Join(path, "cgroup.procs"))
		if err != nil {
			return nil
		}
		for _, f := range strings.Fields(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil && pid > 0 {
				if syscall.Kill(pid, syscall.SIGKILL) == nil {
					n++
				}
			}
		}
		return nil
	})
	return n
}

// removeCgroupTree removes dir and its descendant cgroups, deepest first,
// retrying while killed processes exit.
func removeCgroupTree(dir string) error {
	var last error
	for try := 0; try < 50; try++ {
		var dirs []string
		_ = filepath.WalkDir(dir, func(path string, d os.DirEntry, err error) error {
			if err == nil && d.IsDir() {
				dirs = append(dirs, path)
			}
			return nil
		})
		last = nil
		for i := len(dirs) - 1; i >= 0; i-- {
			if err := os.Remove(dirs[i]); err != nil && !errors.Is(err, os.ErrNotExist) {
				last = err
			}
		}
		if last == nil {
			return nil
		}
		killCgroupTree(dir)
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("remove cgroup %s: %w", dir, last)
}

// Status prints whether the lab runs, its processes and its nodes.
func Status(ctx context.Context, l Layout, out io.Writer) error {
	pid := supervisorPid(l)
	if pid == 0 {
		fmt.Fprintln(out, "lab: not running")
		if linkExists(BridgeName) {
			fmt.Fprintf(out, "bridge %s exists (owner %q): run `lab down` to clean up\n", BridgeName, bridgeOwner())
		}
		return nil
	}
	fmt.Fprintf(out, "lab: running (supervisor pid %d, dir %s)\n", pid, l.Dir)
	st, err := loadState(l)
	if err != nil {
		return err
	}
	for name, p := range st.Processes {
		state := "running"
		if !procRuns(p) {
			state = "NOT RUNNING"
		}
		fmt.Fprintf(out, "  %-32s pid %-7d %s\n", name, p.Pid, state)
	}
	cmd := exec.CommandContext(ctx, l.Bin("kubectl"), "--kubeconfig", l.Kubeconfig(), "get", "nodes", "-o", "wide")
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Run(); err != nil {
		return fmt.Errorf("kubectl get nodes: %w", err)
	}
	return nil
}
