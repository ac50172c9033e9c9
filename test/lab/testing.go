package lab

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// Lab is a handle on a running lab for tests.
type Lab struct {
	Layout  Layout        // the lab's .lab directory
	Started bool          // this process started the lab (Main takes it down at the end)
	UpTime  time.Duration // how long lab up took in this process
	cs      *kubernetes.Clientset
}

var shared struct {
	once sync.Once
	lab  *Lab
	err  error
}

// Shared returns the lab for this test process: it joins the lab running
// from this checkout or starts one (2 nodes) the first time it is called.
// Use Main in TestMain so a lab this process started is taken down at exit
// and a lab that was already running is left running.
func Shared(t testing.TB) *Lab {
	t.Helper()
	testutil.RequireRoot(t)
	shared.once.Do(func() { shared.lab, shared.err = startShared() })
	if shared.err != nil {
		t.Fatalf("lab: %v", shared.err)
	}
	return shared.lab
}

// Main runs the tests and takes down the lab if Shared started it.
func Main(m *testing.M) int {
	code := m.Run()
	if shared.lab != nil && shared.lab.Started {
		if err := Down(DownOptions{Layout: shared.lab.Layout, Out: os.Stdout}); err != nil {
			fmt.Fprintf(os.Stderr, "lab down: %v\n", err)
			if code == 0 {
				code = 1
			}
		}
	}
	return code
}

func startShared() (*Lab, error) {
	l, err := FindLayout()
	if err != nil {
		return nil, err
	}
	lb := &Lab{Layout: l}
	if supervisorPid(l) == 0 {
		bin, err := BuildLabBinary(l)
		if err != nil {
			return nil, err
		}
		start := time.Now()
		// The lab goes down with this process even when a test panics or
		// the run times out, before Main could take it down.
		out, err := exec.Command(bin, "up", "--nodes", "2", "--owner-pid", strconv.Itoa(os.Getpid())).CombinedOutput()
		if err != nil {
			return nil, fmt.Errorf("lab up: %w\n%s", err, out)
		}
		lb.Started, lb.UpTime = true, time.Since(start)
		fmt.Fprintf(os.Stderr, "lab up took %s\n%s", lb.UpTime.Round(time.Millisecond), out)
	}
	cs, err := clientsetFor(l.Kubeconfig())
	if err != nil {
		return nil, err
	}
	lb.cs = cs
	return lb, nil
}

// BuildLabBinary builds the lab command into .lab/bin/lab and returns its path.
func BuildLabBinary(l Layout) (string, error) {
	bin := l.Bin("lab")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return "", fmt.Errorf("create %s: %w", filepath.Dir(bin), err)
	}
	if err := goBuild(filepath.Join(l.Repo(), "test"), bin, os.Stderr, "./lab/cmd/lab"); err != nil {
		return "", err
	}
	return bin, nil
}

// Clientset is an admin client of the lab's API server.
func (lb *Lab) Clientset() kubernetes.Interface { return lb.cs }

var nsUnsafe = regexp.MustCompile(`[^a-z0-9-]+`)

// NewNamespace creates a namespace unique to the test and deletes it (and
// waits until it is gone) in the test's cleanup.
func (lb *Lab) NewNamespace(t testing.TB) string {
	t.Helper()
	base := nsUnsafe.ReplaceAllString(strings.ToLower(t.Name()), "-")
	if len(base) > 40 {
		base = base[:40]
	}
	b := make([]byte, 3)
	_, _ = rand.Read(b)
	name := strings.Trim(base, "-") + "-" + hex.EncodeToString(b)
	ctx := context.Background()
	_, err := lb.cs.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("create namespace %s: %v", name, err)
	}
	t.Cleanup(func() {
		start := time.Now()
		if err := lb.cs.CoreV1().Namespaces().Delete(ctx, name, metav1.DeleteOptions{}); err != nil && !apierrors.IsNotFound(err) {
			t.Errorf("delete namespace %s: %v", name, err)
			return
		}
		// The namespace controller takes a namespace up 5 s after its
		// deletion, deletes its pods, and while any is left looks again
		// after half of their terminationGracePeriodSeconds (30 s unless
		// set), or at its next update: ~11 s a namespace. Pods deleted here
		// with a 1 s grace (the terminating namespace takes no new ones)
		// are gone before its first look, which then finishes: ~6 s.
		one := int64(1)
		if err := lb.cs.CoreV1().Pods(name).DeleteCollection(ctx, metav1.DeleteOptions{GracePeriodSeconds: &one}, metav1.ListOptions{}); err != nil {
			t.Logf("delete the pods of namespace %s: %v", name, err)
		}
		deadline := time.Now().Add(2 * time.Minute)
		for time.Now().Before(deadline) {
			if _, err := lb.cs.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}); apierrors.IsNotFound(err) {
				t.Logf("namespace %s deleted in %v", name, time.Since(start).Round(100*time.Millisecond))
				return
			}
			time.Sleep(500 * time.Millisecond)
		}
		t.Errorf("namespace %s still there 2m after delete", name)
	})
	return name
}

// Kubectl runs the lab's kubectl with the admin kubeconfig and returns its
// combined output.
func (lb *Lab) Kubectl(args ...string) (string, error) {
	return lb.kubectl(nil, args...)
}

// KubectlStdin runs the lab's kubectl with stdin as its input (e.g. apply -f -).
func (lb *Lab) KubectlStdin(stdin string, args ...string) (string, error) {
	return lb.kubectl([]byte(stdin), args...)
}

func (lb *Lab) kubectl(stdin []byte, args ...string) (string, error) {
	cmd := exec.Command(lb.Layout.Bin("kubectl"), append([]string{"--kubeconfig", lb.Layout.Kubeconfig()}, args...)...)
	if stdin != nil {
		cmd.Stdin = bytes.NewReader(stdin)
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("kubectl %s: %s: %w", strings.Join(args, " "), bytes.TrimSpace(out), err)
	}
	return string(out), nil
}

// Apply applies YAML in namespace ns (kubectl apply -n ns -f -).
func (lb *Lab) Apply(t testing.TB, ns, yaml string) {
	t.Helper()
	if _, err := lb.kubectl([]byte(yaml), "apply", "-n", ns, "-f", "-"); err != nil {
		t.Fatalf("apply: %v", err)
	}
}

// WaitFor polls cond every 250ms until it returns true, failing the test
// with what after timeout (and the last error cond returned).
func WaitFor(t testing.TB, timeout time.Duration, what string, cond func() (bool, error)) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	var last error
	for {
		ok, err := cond()
		if ok {
			return
		}
		last = err
		if time.Now().After(deadline) {
			t.Fatalf("timed out after %s waiting for %s (last error: %v)", timeout, what, last)
		}
		time.Sleep(250 * time.Millisecond)
	}
}

// WaitPodsReady waits until n pods matching selector in ns are Ready and
// returns them.
func (lb *Lab) WaitPodsReady(t testing.TB, ns, selector string, n int, timeout time.Duration) []corev1.Pod {
	t.Helper()
	var ready []corev1.Pod
	WaitFor(t, timeout, fmt.Sprintf("%d ready pods %q in %s", n, selector, ns), func() (bool, error) {
		pods, err := lb.cs.CoreV1().Pods(ns).List(context.Background(), metav1.ListOptions{LabelSelector: selector})
		if err != nil {
			return false, err
		}
		ready = ready[:0]
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && PodReady(&p) {
				ready = append(ready, p)
			}
		}
		return len(ready) >= n, fmt.Errorf("%d of %d ready", len(ready), n)
	})
	return ready
}

// PodReady reports whether a pod's Ready condition is true.
func PodReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// PodRecord is the kubelet's per-pod record in .lab/nodes/<node>/pods/.
type PodRecord struct {
	Namespace  string                     `json:"namespace"`  // pod namespace
	Name       string                     `json:"name"`       // pod name
	UID        string                     `json:"uid"`        // pod UID
	Node       string                     `json:"node"`       // node running it
	Netns      string                     `json:"netns"`      // path of the pod's netns
	Cgroup     string                     `json:"cgroup"`     // pod cgroup dir
	IP         string                     `json:"ip"`         // pod IP
	Containers map[string]ContainerRecord `json:"containers"` // by container name
}

// ContainerRecord is one container in a PodRecord.
type ContainerRecord struct {
	Pid      int    `json:"pid"`      // current process id
	Log      string `json:"log"`      // stdout/stderr file
	Restarts int    `json:"restarts"` // restart count
}

// PodRecord reads the kubelet's record of a pod, on any node.
func (lb *Lab) PodRecord(ns, pod string) (*PodRecord, error) {
	matches, _ := filepath.Glob(lb.Layout.Path("nodes", "*", "pods", ns+"_"+pod+"_*.json"))
	if len(matches) == 0 {
		return nil, fmt.Errorf("no kubelet record of pod %s/%s under %s", ns, pod, lb.Layout.Path("nodes"))
	}
	b, err := os.ReadFile(matches[0])
	if err != nil {
		return nil, fmt.Errorf("read pod record: %w", err)
	}
	var r PodRecord
	if err := json.Unmarshal(b, &r); err != nil {
		return nil, fmt.Errorf("parse pod record %s: %w", matches[0], err)
	}
	return &r, nil
}

// ExecInPod runs argv inside the pod's network namespace and, as kubectl exec
// would, in the mount namespace and cgroup of its first running container (so
// it sees the pod's resolv.conf and volumes, and the mesh, which captures by
// cgroup, treats it as the pod), and returns the combined output.
func (lb *Lab) ExecInPod(ns, pod string, argv ...string) (string, error) {
	r, err := lb.PodRecord(ns, pod)
	if err != nil {
		return "", err
	}
	args := []string{"--net=" + r.Netns}
	cgroup := ""
	for name, c := range r.Containers {
		if c.Pid > 0 && exists(fmt.Sprintf("/proc/%d/ns/mnt", c.Pid)) {
			args = []string{"--target", fmt.Sprint(c.Pid), "--mount", "--net=" + r.Netns}
			if r.Cgroup != "" && exists(filepath.Join(r.Cgroup, name)) {
				cgroup = filepath.Join(r.Cgroup, name)
			}
			break
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "nsenter", append(append(args, "--"), argv...)...)
	if cgroup != "" {
		release, err := inCgroup(cmd, cgroup)
		if err != nil {
			return "", err
		}
		defer release()
	}
	out, err := cmd.CombinedOutput()
	if err != nil {
		return string(out), fmt.Errorf("exec %s in pod %s/%s: %s: %w", strings.Join(argv, " "), ns, pod, bytes.TrimSpace(out), err)
	}
	return string(out), nil
}

// PodLogs returns the stdout/stderr a container of the pod wrote.
func (lb *Lab) PodLogs(ns, pod, container string) (string, error) {
	r, err := lb.PodRecord(ns, pod)
	if err != nil {
		return "", err
	}
	c, ok := r.Containers[container]
	if !ok {
		return "", fmt.Errorf("pod %s/%s has no container %q", ns, pod, container)
	}
	b, err := os.ReadFile(c.Log)
	if err != nil {
		return "", fmt.Errorf("read log of %s/%s/%s: %w", ns, pod, container, err)
	}
	return string(b), nil
}
