package labtest

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/testutil"
	"github.com/meshlet/meshlet/test/lab"
)

// labCmd runs the lab binary with its .lab dir set to dir.
func labCmd(t *testing.T, lb *lab.Lab, dir string, args ...string) (string, error) {
	t.Helper()
	cmd := exec.Command(lb.Layout.Bin("lab"), args...)
	cmd.Env = append(os.Environ(), "MESHLET_LAB_DIR="+dir)
	out, err := cmd.CombinedOutput()
	return string(out), err
}

func TestSecondLabRefused(t *testing.T) {
	lb := lab.Shared(t)
	if _, err := lab.BuildLabBinary(lb.Layout); err != nil {
		t.Fatal(err)
	}
	other := filepath.Join(t.TempDir(), ".lab")
	out, err := labCmd(t, lb, other, "up", "--nodes", "1")
	if err == nil || !strings.Contains(out, "another lab is running") || !strings.Contains(out, lb.Layout.Dir) {
		t.Fatalf("second lab up: err=%v output:\n%s\nwant a failure naming the running lab's directory", err, out)
	}
	out, err = labCmd(t, lb, other, "down")
	if err != nil || !strings.Contains(out, "left alone") {
		t.Fatalf("down of a lab that is not up: err=%v output:\n%s", err, out)
	}
	nodes, err := lb.Kubectl("get", "nodes", "-o", "name")
	if err != nil || strings.Count(nodes, "node/") != 2 {
		t.Fatalf("running lab harmed by the other directory's up/down: %q %v", nodes, err)
	}
}

// TestDownLeavesNothingThenWarmUp runs last (file order): lab down must
// remove every process, netns, link, cgroup and mount; a second down says
// nothing is running; a warm up brings it back without rebuilding.
func TestDownLeavesNothingThenWarmUp(t *testing.T) {
	lb := lab.Shared(t)
	bin, err := lab.BuildLabBinary(lb.Layout)
	if err != nil {
		t.Fatal(err)
	}
	cg, err := testutil.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	state, _ := os.ReadFile(lb.Layout.StateFile())
	out, err := labCmd(t, lb, lb.Layout.Dir, "down")
	if err != nil {
		t.Fatalf("lab down: %v\n%s", err, out)
	}
	assertNothingLeft(t, lb, cg, string(state))
	out, err = labCmd(t, lb, lb.Layout.Dir, "down")
	if err != nil || !strings.Contains(out, "no lab is running") {
		t.Errorf("second down: err=%v output %q, want success saying no lab is running", err, out)
	}

	start := time.Now()
	cmd := exec.Command(bin, "up", "--nodes", "2")
	cmd.Env = append(os.Environ(), "MESHLET_LAB_DIR="+lb.Layout.Dir)
	upOut, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("warm lab up: %v\n%s", err, upOut)
	}
	warm := time.Since(start)
	t.Logf("warm lab up took %s", warm.Round(time.Millisecond))
	if strings.Contains(string(upOut), "cold build") {
		t.Errorf("warm up rebuilt upstream binaries:\n%s", upOut)
	}
	if !strings.Contains(string(upOut), "kubeconfig: "+lb.Layout.Kubeconfig()) {
		t.Errorf("up output does not end with the kubeconfig path:\n%s", upOut)
	}
	again, err := exec.Command(bin, "up").CombinedOutput()
	if err != nil || !strings.Contains(string(again), "already running") {
		t.Errorf("second up: %v\n%s; want success saying the lab is already running", err, again)
	}
}

// processesUnder lists pids whose executable lives under dir or the lab's build cache.
func processesUnder(dir string) []string {
	cache, _ := lab.CacheDir()
	entries, _ := os.ReadDir("/proc")
	var out []string
	for _, e := range entries {
		exe, err := os.Readlink(filepath.Join("/proc", e.Name(), "exe"))
		if err == nil && (strings.HasPrefix(exe, dir+"/") || strings.HasPrefix(exe, cache+"/")) {
			out = append(out, e.Name()+":"+exe)
		}
	}
	return out
}

// assertNothingLeft checks no link, netns, cgroup, mount or process of the
// lab remains.
func assertNothingLeft(t *testing.T, lb *lab.Lab, cg, state string) {
	t.Helper()
	if links, _ := exec.Command("ip", "-o", "link", "show").Output(); strings.Contains(string(links), " mlab") {
		t.Errorf("links left after down:\n%s", links)
	}
	if ns, _ := exec.Command("ip", "netns", "list").Output(); strings.Contains(string(ns), lab.NetnsPrefix) {
		t.Errorf("netns left after down:\n%s", ns)
	}
	if _, err := os.Stat(filepath.Join(cg, lab.CgroupSlice)); err == nil {
		t.Errorf("cgroup %s left after down", filepath.Join(cg, lab.CgroupSlice))
	}
	mounts, _ := os.ReadFile("/proc/self/mountinfo")
	if strings.Contains(string(mounts), lb.Layout.Dir+"/") {
		t.Errorf("mounts under %s left after down", lb.Layout.Dir)
	}
	if left := processesUnder(lb.Layout.Dir); len(left) > 0 {
		t.Errorf("processes still running lab binaries after down: %v (state was %s)", left, state)
	}
}

// TestDownAfterCrash kills the supervisor and every lab process with SIGKILL
// (no cleanup ran, as when a CI job is killed at its time limit), then checks
// lab down run from another checkout's directory removes everything the dead
// lab left (a live one it leaves alone: TestSecondLabRefused), and brings the
// lab back.
func TestDownAfterCrash(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: orphan
  labels: {app: orphan}
spec:
  containers:
  - name: echo
    image: meshlet.dev/echo
`)
	lb.WaitPodsReady(t, ns, "app=orphan", 1, 2*time.Minute)
	cg, err := testutil.Cgroup2Root()
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(lb.Layout.StateFile())
	if err != nil {
		t.Fatal(err)
	}
	var st struct {
		Supervisor int                 `json:"supervisor"`
		Processes  map[string]lab.Proc `json:"processes"`
	}
	if err := json.Unmarshal(b, &st); err != nil {
		t.Fatal(err)
	}
	_ = syscall.Kill(st.Supervisor, syscall.SIGKILL)
	for _, p := range st.Processes {
		_ = syscall.Kill(p.Pid, syscall.SIGKILL)
	}
	time.Sleep(time.Second)
	out, err := labCmd(t, lb, filepath.Join(t.TempDir(), ".lab"), "down")
	if err != nil || !strings.Contains(out, "stopped without `lab down`") || !strings.Contains(out, lb.Layout.Dir) {
		t.Fatalf("lab down from another directory after a crash: err=%v output:\n%s\nwant it to clean up the dead lab of %s", err, out, lb.Layout.Dir)
	}
	assertNothingLeft(t, lb, cg, string(b))
	out, err = labCmd(t, lb, lb.Layout.Dir, "up", "--nodes", "2")
	if err != nil {
		t.Fatalf("lab up after a crash and down: %v\n%s", err, out)
	}
}
