package testutil

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"

	"golang.org/x/sys/unix"
)

var cgroupSeq atomic.Int64

// EnterCgroup creates a new cgroup v2 child <prefix>-<pid>-<n> and moves
// this test process into it (cgroup v2 moves whole processes), so that the
// sockets the test opens are subject to the programs attached there; at
// cleanup the process returns to its cgroup and the child is removed. It
// skips (fails under CI) without cgroup v2.
func EnterCgroup(t testing.TB, prefix string) string {
	t.Helper()
	root, err := Cgroup2Root()
	if err != nil {
		SkipOrFail(t, "no cgroup v2: "+err.Error())
	}
	self, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		t.Fatal(err)
	}
	var orig string
	for _, line := range strings.Split(string(self), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			orig = filepath.Join(root, rest)
		}
	}
	if orig == "" {
		t.Fatalf("no cgroup v2 line in /proc/self/cgroup:\n%s", self)
	}
	cg := filepath.Join(root, fmt.Sprintf("%s-%d-%d", prefix, os.Getpid(), cgroupSeq.Add(1)))
	if err := os.Mkdir(cg, 0o755); err != nil {
		t.Fatalf("create cgroup: %v", err)
	}
	pid := []byte(fmt.Sprint(os.Getpid()))
	if err := os.WriteFile(filepath.Join(cg, "cgroup.procs"), pid, 0); err != nil {
		_ = os.Remove(cg)
		t.Fatalf("enter cgroup %s: %v", cg, err)
	}
	t.Cleanup(func() {
		if err := os.WriteFile(filepath.Join(orig, "cgroup.procs"), pid, 0); err != nil {
			t.Errorf("return to cgroup %s: %v", orig, err)
		}
		if err := os.Remove(cg); err != nil {
			t.Errorf("remove cgroup %s: %v", cg, err)
		}
	})
	return cg
}

// MountBPFFS mounts a private bpffs on a temporary directory, unmounted at
// cleanup, and returns the directory.
func MountBPFFS(t testing.TB) string {
	t.Helper()
	dir := t.TempDir()
	if err := unix.Mount("bpf", dir, "bpf", 0, ""); err != nil {
		t.Fatalf("mount bpffs on %s: %v", dir, err)
	}
	t.Cleanup(func() { _ = unix.Unmount(dir, unix.MNT_DETACH) })
	return dir
}
