package meshtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// TestNodeAgentKilled: the node agent is killed with SIGKILL (no drain).
// The connection it was carrying ends at once for the app — an error, not
// a hang until the request's own timeout; the kubelet restarts the agent,
// which adopts the pinned eBPF maps; once it is ready, new connections of
// the pods on its node succeed and are mutual TLS again (no pod was left
// unredirected), and the pinned counters keep their names.
func TestNodeAgentKilled(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	nodes, err := lb.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		t.Fatalf("want two nodes: %v", err)
	}
	server := podOn(t, lb, ns, "server", "server", nodes.Items[1].Name)
	client := podOn(t, lb, ns, "client", "client", nodes.Items[0].Name)
	url := fmt.Sprintf("http://%s:8080/", server.Status.PodIP)
	waitAnswered(t, lb, ns, client.Name, url, true, "mesh traffic before the kill")

	agent := nodeAgentOn(t, lb, client.Spec.NodeName)
	rec, err := lb.PodRecord(agent.Namespace, agent.Name)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := rec.Containers["node-agent"]
	if !ok || c.Pid <= 0 {
		t.Fatalf("no running node-agent container in %+v", rec)
	}
	restarts := c.Restarts

	// A request the agent is carrying when it dies: the server answers
	// only after 30 s, the client would wait 60 s.
	type result struct {
		out string
		err error
		at  time.Time
	}
	held := make(chan result, 1)
	go func() {
		out, err := lb.ExecInPod(ns, client.Name, lb.Layout.Bin("echo"), "client", "-json", "-n", "1", "-timeout", "60s", url+"?delay=30s")
		held <- result{out, err, time.Now()}
	}()
	time.Sleep(2 * time.Second) // the request is in flight
	killed := time.Now()
	if err := syscall.Kill(c.Pid, syscall.SIGKILL); err != nil {
		t.Fatalf("kill the node agent (pid %d): %v", c.Pid, err)
	}
	select {
	case r := <-held:
		if took := r.at.Sub(killed); took > 10*time.Second {
			t.Errorf("the held connection ended %s after the kill; want at once", took)
		}
		if okCount(r.out) == 1 {
			t.Errorf("the held request was answered across the kill: %s", r.out)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("the held connection still hangs 20 s after the agent was killed")
	}

	lab.WaitFor(t, 2*time.Minute, "the kubelet restarted the node agent and it is ready", func() (bool, error) {
		rec, err := lb.PodRecord(agent.Namespace, agent.Name)
		if err != nil {
			return false, err
		}
		p, err := lb.Clientset().CoreV1().Pods(agent.Namespace).Get(t.Context(), agent.Name, metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		return rec.Containers["node-agent"].Restarts > restarts && podReadyNow(p.Status.Conditions), fmt.Errorf("restarts %d, ready %v", rec.Containers["node-agent"].Restarts, podReadyNow(p.Status.Conditions))
	})
	metrics := "http://" + client.Status.HostIP + ":15020/metrics"
	mtls := func() float64 {
		return sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`, fmt.Sprintf(`source_workload_namespace=%q`, ns), `connection_security_policy="mutual_tls"`)
	}
	before := mtls()
	waitAnswered(t, lb, ns, client.Name, url, true, "mesh traffic after the restart")
	const conns = 5
	for i := range conns {
		if ok, out := request(t, lb, ns, client.Name, url); !ok {
			t.Fatalf("request %d after the restart: %s", i, out)
		}
	}
	if d := mtls() - before; d < conns {
		t.Errorf("mutual-TLS connections from the client after the restart moved by %v; want at least %d (the pod is still captured)", d, conns)
	}
	if n := sumMetric(t, metrics, "meshlet_kernel_tcp_connections_total", fmt.Sprintf(`namespace=%q`, ns), `workload="client"`); n < conns {
		t.Errorf("kernel connections of the client workload after the restart = %v; want at least %d, named (not unknown)", n, conns)
	}
}

// okCount reads the OK count of an echo client -json summary (0 when the
// output holds none).
func okCount(out string) int {
	var s struct{ OK int }
	if i := strings.Index(out, "{"); i >= 0 {
		_ = json.Unmarshal([]byte(out[i:]), &s)
	}
	return s.OK
}

func podReadyNow(conds []corev1.PodCondition) bool {
	for _, c := range conds {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
