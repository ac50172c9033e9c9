package meshtest

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// TestUpgradeUnderLoad: `meshctl upgrade` keeps the installed profile and
// rolls meshd and every node agent while an enrolled pod keeps opening new
// connections to a Service across the mesh; no new connection is refused,
// and the counts are reported.
func TestUpgradeUnderLoad(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := lb.NewNamespace(t)
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	lb.Apply(t, ns, echoDeployment)
	pods := lb.WaitPodsReady(t, ns, "app=echo", 3, 3*time.Minute)
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	from := pods[0]
	url := fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP)

	// The load: one fresh client process (so one new connection) at a time,
	// for as long as the upgrade runs, bounded to 10 minutes.
	ctx, stop := context.WithTimeout(t.Context(), 10*time.Minute)
	defer stop()
	var mu sync.Mutex
	var ok, failed int
	var failures []string
	done := make(chan struct{})
	go func() {
		defer close(done)
		for ctx.Err() == nil {
			out, err := lb.ExecInPod(ns, from.Name, lb.Layout.Bin("echo"), "client", "-json", "-n", "1", "-timeout", "5s", url)
			var s struct{ OK int }
			if err == nil {
				_ = json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s)
			}
			mu.Lock()
			if s.OK == 1 {
				ok++
			} else if ctx.Err() == nil {
				failed++
				if len(failures) < 5 {
					failures = append(failures, fmt.Sprintf("%v: %s", err, out))
				}
			}
			mu.Unlock()
			time.Sleep(50 * time.Millisecond)
		}
	}()
	lab.WaitFor(t, 30*time.Second, "load running", func() (bool, error) {
		mu.Lock()
		defer mu.Unlock()
		return ok > 3, fmt.Errorf("%d answered, %d failed", ok, failed)
	})

	start := time.Now()
	out := run("upgrade", "-y", "--timeout", "5m", "--set", "logging.level=debug", "--set", "nodeAgent.drainTimeout=20s")
	took := time.Since(start)
	t.Cleanup(func() { run("upgrade", "-y", "--timeout", "5m") })
	if !strings.Contains(out, "profile default") {
		t.Errorf("upgrade did not keep the installed profile (default, as the lab tests install it):\n%s", out)
	}
	// Let connections opened during the last rollout step finish.
	time.Sleep(2 * time.Second)
	stop()
	<-done
	t.Logf("during the upgrade (%s): %d new connections answered, %d failed", took.Round(time.Second), ok, failed)
	// Zero: the new agent's listeners join the old one's SO_REUSEPORT groups
	// and the old agent serves every connection it accepted while closing
	// (node-agent/agent TestHandoff is the same on one kernel).
	if failed > 0 {
		t.Errorf("%d of %d new connections failed during the upgrade; want none; first: %v", failed, ok+failed, failures)
	}
	d, err := lb.Clientset().AppsV1().Deployments("meshlet-system").Get(t.Context(), "meshd", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if got := d.Labels["meshlet.dev/profile"]; got != "default" {
		t.Errorf("meshd profile label after upgrade = %q; want default", got)
	}
	ds, err := lb.Clientset().AppsV1().DaemonSets("meshlet-system").Get(t.Context(), "meshlet-node-agent", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(strings.Join(ds.Spec.Template.Spec.Containers[0].Args, " "), "20s") || ds.Status.UpdatedNumberScheduled != ds.Status.DesiredNumberScheduled {
		t.Errorf("node agents not rolled to the new template: args %v, updated %d of %d", ds.Spec.Template.Spec.Containers[0].Args, ds.Status.UpdatedNumberScheduled, ds.Status.DesiredNumberScheduled)
	}
}
