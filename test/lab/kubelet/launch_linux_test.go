package kubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshlet/meshlet/pkg/testutil"
)

func randName(prefix string) string {
	b := make([]byte, 4)
	rand.Read(b)
	return prefix + hex.EncodeToString(b)
}

// testNetns makes a pinned netns named mlkt-* with lo up.
func testNetns(t *testing.T) string {
	t.Helper()
	path := filepath.Join(t.TempDir(), randName("mlkt-"))
	if err := newNetns(path); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeNetns(path); err != nil {
			t.Error(err)
		}
	})
	if out, err := exec.Command("nsenter", "--net="+path, "ip", "link", "set", "lo", "up").CombinedOutput(); err != nil {
		t.Fatalf("lo up: %v: %s", err, out)
	}
	return path
}

// testCgroup makes a cgroup v2 directory named mlkt-*.
func testCgroup(t *testing.T) string {
	t.Helper()
	root, err := testutil.Cgroup2Root()
	if err != nil {
		testutil.SkipOrFail(t, err.Error())
	}
	dir := filepath.Join(root, randName("mlkt-"))
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := removeCgroup(dir); err != nil {
			t.Error(err)
		}
	})
	return dir
}

func inode(t *testing.T, path string) uint64 {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Sys().(*syscall.Stat_t).Ino
}

func TestLaunchInNamespacesAndCgroup(t *testing.T) {
	testutil.RequireRoot(t)
	netns := testNetns(t)
	cg := testCgroup(t)
	dir := t.TempDir()
	// The container runs as uid 1234: let it through the test's directories.
	os.Chmod(dir, 0o755)
	os.Chmod(filepath.Dir(dir), 0o755)
	vol := filepath.Join(dir, "vol")
	os.MkdirAll(vol, 0o755)
	os.WriteFile(filepath.Join(vol, "hello"), []byte("from-volume"), 0o644)
	resolv := filepath.Join(dir, "resolv.conf")
	os.WriteFile(resolv, []byte(resolvConf("demo", "198.18.128.10", "cluster.local")), 0o644)
	hostResolv, _ := os.ReadFile("/etc/resolv.conf")
	target := filepath.Join(dir, "not-yet", "mnt")
	logf, err := os.Create(filepath.Join(dir, "log"))
	if err != nil {
		t.Fatal(err)
	}
	defer logf.Close()
	uid, gid := int64(1234), int64(2345)
	script := strings.Join([]string{
		"cat " + target + "/hello; echo",
		"grep nameserver /etc/resolv.conf",
		"grep search /etc/resolv.conf",
		"cat /proc/self/cgroup",
		"stat -L -c ino=%i /proc/self/ns/net",
		"echo uid=$(id -u) gid=$(id -g)",
		"grep CapEff /proc/self/status",
		"echo $GREETING",
		"touch " + target + "/w 2>/dev/null && echo writable || echo readonly",
	}, "; ")
	cmd, err := launch(launchOptions{
		Spec: initSpec{
			NetNS: netns,
			Mounts: []mountSpec{
				{Source: vol, Target: target, ReadOnly: true},
				{Source: resolv, Target: "/etc/resolv.conf", ReadOnly: true},
			},
			Path: "/bin/sh", Args: []string{"sh", "-c", script},
			Env: []string{"GREETING=hi-env", "PATH=/usr/bin:/bin"},
			UID: &uid, GID: &gid,
			Caps: []string{"NET_BIND_SERVICE"},
		},
		Cgroup: cg,
		Log:    logf,
	})
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err != nil {
		out, _ := os.ReadFile(logf.Name())
		t.Fatalf("container: %v\n%s", err, out)
	}
	b, _ := os.ReadFile(logf.Name())
	out := string(b)
	// CAP_NET_BIND_SERVICE is bit 10 = 0x400.
	for _, want := range []string{
		"from-volume", "nameserver 198.18.128.10", "search demo.svc.cluster.local svc.cluster.local cluster.local",
		"0::/" + filepath.Base(cg), "uid=1234 gid=2345", "CapEff:\t0000000000000400", "hi-env", "readonly",
		"ino=" + itoa(inode(t, netns)),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("container output lacks %q:\n%s", want, out)
		}
	}
	if after, _ := os.ReadFile("/etc/resolv.conf"); string(after) != string(hostResolv) {
		t.Errorf("the host's /etc/resolv.conf changed: the bind mount leaked out of the container's mount namespace")
	}
	if _, err := os.Stat(filepath.Join(target, "hello")); err == nil {
		t.Errorf("the volume is visible at %s outside the container", target)
	}
}

func itoa(n uint64) string { return strconv.FormatUint(n, 10) }

func TestLaunchStartErrors(t *testing.T) {
	testutil.RequireRoot(t)
	cg := testCgroup(t)
	logf, _ := os.Create(filepath.Join(t.TempDir(), "log"))
	defer logf.Close()
	cmd, err := launch(launchOptions{Spec: initSpec{Path: "/nonexistent/prog", Args: []string{"prog"}}, Cgroup: cg, Log: logf})
	if err != nil {
		t.Fatal(err)
	}
	err = cmd.Wait()
	out, _ := os.ReadFile(logf.Name())
	if err == nil || !strings.Contains(string(out), "exec /nonexistent/prog") {
		t.Errorf("exec of a missing program: err %v, log %q; want exit 127 and a log line naming it", err, out)
	}
	if _, err := launch(launchOptions{Spec: initSpec{Path: "/bin/true"}, Cgroup: "/nonexistent-cgroup"}); err == nil || !strings.Contains(err.Error(), "nonexistent-cgroup") {
		t.Errorf("launch into a missing cgroup: %v; want an error naming it", err)
	}
}

func TestProbesInNetns(t *testing.T) {
	testutil.RequireRoot(t)
	netns := testNetns(t)
	var l net.Listener
	if err := inNetns(netns, func() error {
		var err error
		l, err = net.Listen("tcp", "127.0.0.1:0")
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	port := l.Addr().(*net.TCPAddr).Port
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/bad" {
			w.WriteHeader(503)
		}
	})}
	go srv.Serve(l)
	defer srv.Close()

	cg := testCgroup(t)
	sleeper, err := launch(launchOptions{Spec: initSpec{NetNS: netns, Path: "/bin/sleep", Args: []string{"sleep", "30"}}, Cgroup: cg})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { sleeper.Process.Kill(); sleeper.Wait() })

	target := probeTarget{netns: netns, podIP: "127.0.0.1", pid: sleeper.Process.Pid, cgroup: cg,
		ports: []corev1.ContainerPort{{Name: "http", ContainerPort: int32(port)}}}
	httpProbe := func(path string, p intstr.IntOrString) *corev1.Probe {
		return &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: path, Port: p}}}
	}
	tests := []struct {
		name   string
		probe  *corev1.Probe
		wantOK bool
	}{
		{"http ok", httpProbe("/", intstr.FromInt32(int32(port))), true},
		{"http named port", httpProbe("/", intstr.FromString("http")), true},
		{"http 503", httpProbe("/bad", intstr.FromInt32(int32(port))), false},
		{"tcp ok", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(int32(port))}}}, true},
		{"tcp closed port", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(1)}}}, false},
		{"exec ok", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}}, true},
		{"exec fails", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"false"}}}}, false},
		// The listener exists only in the pod's netns: a probe from the
		// host's namespace would fail, so this one must run inside it.
		{"exec sees the pod netns", &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"sh", "-c", "stat -L -c %i /proc/self/ns/net; readlink /proc/self/ns/net; test $(stat -L -c %i /proc/self/ns/net) = " + itoa(inode(t, netns))}}}}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			err := runProbe(ctx, tt.probe, target)
			if (err == nil) != tt.wantOK {
				t.Errorf("runProbe = %v; want ok=%v", err, tt.wantOK)
			}
		})
	}
	// From the host namespace the same port is closed.
	if c, err := net.DialTimeout("tcp", l.Addr().String(), time.Second); err == nil {
		c.Close()
		t.Errorf("listener in the test netns reachable from the host: the probe test proves nothing")
	}
}
