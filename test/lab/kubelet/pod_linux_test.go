package kubelet

import (
	"context"
	"log"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"

	"github.com/meshlet/meshlet/pkg/testutil"
)

type testWriter struct{ t *testing.T }

func (w testWriter) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimSpace(string(p)))
	return len(p), nil
}

// TestPodWorkerHostNetwork runs a hostNetwork pod through a worker without
// an API server (status writes fail and are only logged): a crashing
// container goes into CrashLoopBackOff, a healthy one turns ready through an
// exec probe with its env, hostPath and resolv.conf in place, an unknown
// image waits in ErrImagePull, and stopping removes processes, cgroups and
// the record.
func TestPodWorkerHostNetwork(t *testing.T) {
	testutil.RequireRoot(t)
	root := t.TempDir()
	cg := testCgroup(t)
	client, err := kubernetes.NewForConfig(&rest.Config{Host: "http://127.0.0.1:1", Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	k := &kubelet{
		cfg: Config{NodeName: "mlkt-node", NodeIP: "127.0.0.1", NodeRoot: root, CgroupRoot: cg,
			LogDir: filepath.Join(root, "logs"), ClusterDNS: "198.19.200.10", ClusterDomain: "cluster.local",
			Images: map[string]string{"meshlet.dev/sh:v1": "/bin/sh"}},
		client: client,
		log:    log.New(testWriter{t}, "", 0),
	}
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "p1", Namespace: "demo", UID: "mlkt-uid-1", Labels: map[string]string{"version": "v7"}},
		Spec: corev1.PodSpec{
			NodeName: "mlkt-node", HostNetwork: true, DNSPolicy: corev1.DNSClusterFirstWithHostNet,
			Volumes: []corev1.Volume{{Name: "run", VolumeSource: corev1.VolumeSource{HostPath: &corev1.HostPathVolumeSource{Path: "/var/run/meshlet"}}}},
			Containers: []corev1.Container{
				{Name: "crash", Image: "meshlet.dev/sh", Args: []string{"-c", "echo started; exit 3"}},
				{Name: "ok", Image: "meshlet.dev/sh:v2",
					Args:           []string{"-c", "echo version=$VERSION; grep nameserver /etc/resolv.conf; touch /var/run/meshlet/sock; exec sleep 60"},
					Env:            []corev1.EnvVar{{Name: "VERSION", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['version']"}}}},
					VolumeMounts:   []corev1.VolumeMount{{Name: "run", MountPath: "/var/run/meshlet"}},
					ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"test", "-e", "/var/run/meshlet/sock"}}}, PeriodSeconds: 1},
				},
				{Name: "missing", Image: "nginx:1.27"},
			},
		},
	}
	w := newPodWorker(k, pod)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go w.run(ctx)
	t.Cleanup(func() {
		w.stop(0, true)
		<-w.done
	})

	status := func() corev1.PodStatus {
		w.mu.Lock()
		defer w.mu.Unlock()
		return w.buildStatus()
	}
	byName := func(st corev1.PodStatus) map[string]corev1.ContainerStatus {
		m := map[string]corev1.ContainerStatus{}
		for _, c := range st.ContainerStatuses {
			m[c.Name] = c
		}
		return m
	}
	logOf := func(name string) string {
		b, _ := os.ReadFile(filepath.Join(k.cfg.LogDir, "demo_p1_mlkt-uid-1", name+".log"))
		return string(b)
	}
	deadline := time.Now().Add(20 * time.Second)
	var st corev1.PodStatus
	for {
		st = status()
		cs := byName(st)
		crash, ok, missing := cs["crash"], cs["ok"], cs["missing"]
		if crash.RestartCount >= 1 && crash.State.Waiting != nil && crash.State.Waiting.Reason == "CrashLoopBackOff" &&
			crash.LastTerminationState.Terminated != nil && ok.Ready && missing.State.Waiting != nil &&
			strings.Count(logOf("crash"), "started") >= 2 {
			if crash.LastTerminationState.Terminated.ExitCode != 3 {
				t.Errorf("crash lastState exit code = %d; want 3", crash.LastTerminationState.Terminated.ExitCode)
			}
			if missing.State.Waiting.Reason != "ErrImagePull" || !strings.Contains(missing.State.Waiting.Message, "nginx:1.27") ||
				!strings.Contains(missing.State.Waiting.Message, ".lab/images.json") {
				t.Errorf("missing image state = %+v; want ErrImagePull naming the image and .lab/images.json", missing.State.Waiting)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("pod status after 20s: %+v", st)
		}
		time.Sleep(200 * time.Millisecond)
	}
	if st.Phase != corev1.PodRunning || st.PodIP != "127.0.0.1" || st.HostIP != "127.0.0.1" {
		t.Errorf("phase %s podIP %s hostIP %s; want Running on the node's IP", st.Phase, st.PodIP, st.HostIP)
	}
	for _, c := range st.Conditions {
		if c.Type == corev1.PodReady && c.Status != corev1.ConditionFalse {
			t.Errorf("pod Ready = %s with a crashing container; want False", c.Status)
		}
	}
	if l := logOf("ok"); !strings.Contains(l, "version=v7") || !strings.Contains(l, "nameserver 198.19.200.10") {
		t.Errorf("ok container log = %q; want its version env and the cluster DNS resolv.conf", l)
	}
	if _, err := os.Stat(filepath.Join(root, "var/run/meshlet/sock")); err != nil {
		t.Errorf("hostPath /var/run/meshlet did not resolve under NodeRoot: %v", err)
	}
	recs := readRecords(root)
	if len(recs) != 1 {
		t.Fatalf("pod records = %v; want one", recs)
	}
	var pid int
	for _, r := range recs {
		pid = r.Containers["ok"].PID
		if r.Namespace != "demo" || r.Name != "p1" || r.Cgroup != w.cgroup || pid == 0 {
			t.Errorf("record = %+v; want demo/p1 with its cgroup and the ok container's pid", r)
		}
	}

	w.stop(2*time.Second, true)
	select {
	case <-w.done:
	case <-time.After(20 * time.Second):
		t.Fatal("pod did not stop within 20s")
	}
	if err := syscall.Kill(pid, 0); err == nil {
		t.Errorf("container pid %d still alive after stop", pid)
	}
	if _, err := os.Stat(w.cgroup); !os.IsNotExist(err) {
		t.Errorf("pod cgroup %s still there after stop (%v)", w.cgroup, err)
	}
	if recs := readRecords(root); len(recs) != 0 {
		t.Errorf("pod records after stop = %v; want none", recs)
	}
}
