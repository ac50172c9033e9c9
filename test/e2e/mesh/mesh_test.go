// Package meshtest runs meshlet in the lab end to end, as a user would:
// meshctl installs the mesh, a namespace labelled ambient has its pods
// enrolled through the CNI chain at start, and their traffic to a Service is
// captured by the node agent's eBPF and carried across nodes over mutual TLS.
package meshtest

import (
	"bufio"
	"context"
	"encoding/json"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

func TestMain(m *testing.M) { os.Exit(lab.Main(m)) }

const echoDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 3
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo, version: v1}
    spec:
      containers:
      - name: echo
        image: meshlet.dev/echo:latest
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: VERSION
          value: v1
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports:
  - name: http
    port: 8080
`

// meshctl builds the CLI from this checkout, as a user would install it.
func meshctl(t *testing.T, lb *lab.Lab) func(args ...string) string {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meshctl")
	build := exec.Command("go", "build", "-o", bin, "./cmd/meshctl")
	build.Dir = lb.Layout.Repo()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build meshctl: %v\n%s", err, out)
	}
	return func(args ...string) string {
		t.Helper()
		cmd := exec.Command(bin, append(args, "--kubeconfig", lb.Layout.Kubeconfig())...)
		out, err := cmd.CombinedOutput()
		if err != nil {
			diagnose(t, lb)
			t.Fatalf("meshctl %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
}

// diagnose logs what a user would look at when the mesh does not come up:
// every pod with its status and events, and the mesh's own container logs.
func diagnose(t *testing.T, lb *lab.Lab) {
	t.Helper()
	for _, args := range [][]string{{"get", "pods", "-A", "-o", "wide"}, {"-n", "meshlet-system", "describe", "pods"}, {"get", "events", "-A"}} {
		out, err := lb.Kubectl(args...)
		t.Logf("kubectl %s (err %v):\n%s", strings.Join(args, " "), err, out)
	}
	pods, err := lb.Clientset().CoreV1().Pods("meshlet-system").List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Logf("list meshlet-system pods: %v", err)
		return
	}
	for _, p := range pods.Items {
		for _, c := range p.Spec.Containers {
			logs, err := lb.PodLogs(p.Namespace, p.Name, c.Name)
			t.Logf("logs of %s/%s %s (err %v):\n%s", p.Namespace, p.Name, c.Name, err, logs)
		}
	}
}

// sumMetric adds the values of the series of name whose labels include all
// of want, scraped from a node agent's Prometheus endpoint.
func sumMetric(t *testing.T, url, name string, want ...string) float64 {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("scrape %s: %v", url, err)
	}
	defer resp.Body.Close()
	var sum float64
	s := bufio.NewScanner(resp.Body)
	s.Buffer(make([]byte, 1<<20), 1<<20)
lines:
	for s.Scan() {
		line := s.Text()
		if !strings.HasPrefix(line, name+"{") && !strings.HasPrefix(line, name+" ") {
			continue // another metric, or a comment
		}
		for _, w := range want {
			if !strings.Contains(line, w) {
				continue lines
			}
		}
		v, err := strconv.ParseFloat(line[strings.LastIndex(line, " ")+1:], 64)
		if err != nil {
			t.Fatalf("metric line %q: %v", line, err)
		}
		sum += v
	}
	return sum
}

// waitTunnelled makes requests from pod from to url until one is counted by
// the source node agent as mutual TLS to a workload of dstNS. Pods created
// right after their namespace was labelled may start before the node agent
// has seen the label (they are enrolled live a moment later), and a pod or
// endpoint that has just become Ready reaches the other nodes' agents a
// moment after the API server has it, as it reaches kube-proxy: a first
// request can still go out in plaintext or find no endpoint.
func waitTunnelled(t *testing.T, lb *lab.Lab, ns string, from corev1.Pod, url, dstNS string) {
	t.Helper()
	metrics := "http://" + from.Status.HostIP + ":15020/metrics"
	tunnelled := func() float64 {
		return sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`,
			fmt.Sprintf(`source_workload_namespace=%q`, ns), fmt.Sprintf(`destination_workload_namespace=%q`, dstNS),
			`connection_security_policy="mutual_tls"`)
	}
	lab.WaitFor(t, time.Minute, "a request from "+from.Name+" to "+url+" tunnelled with mutual TLS", func() (bool, error) {
		before := tunnelled()
		ok, out := request(t, lb, ns, from.Name, url)
		if tunnelled() > before && ok {
			return true, nil
		}
		return false, fmt.Errorf("answered=%v, not counted as mutual TLS yet: %s", ok, strings.Join(strings.Fields(out), " "))
	})
}

func TestMeshCarriesServiceTrafficOverMutualTLS(t *testing.T) {
	lb := meshLab(t)

	ns := lb.NewNamespace(t)
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	lb.Apply(t, ns, echoDeployment)
	// Enrolled pods start only if the node agent enrolled them (the CNI
	// plugin fails closed), so Ready already says the chain works.
	pods := lb.WaitPodsReady(t, ns, "app=echo", 3, 3*time.Minute)

	var from corev1.Pod
	remote := map[string]bool{}
	for _, p := range pods {
		if from.Name == "" {
			from = p
		}
	}
	for _, p := range pods {
		if p.Spec.NodeName != from.Spec.NodeName {
			remote[p.Name] = true
		}
	}
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	waitTunnelled(t, lb, ns, from, fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP), ns)
	metrics := fmt.Sprintf("http://%s:15020/metrics", from.Status.HostIP)
	src := fmt.Sprintf(`source_workload_namespace=%q`, ns)
	mtls := `connection_security_policy="mutual_tls"`
	principal := fmt.Sprintf(`source_principal="spiffe://cluster.local/ns/%s/sa/default"`, ns)
	opened0 := sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`, src, mtls, principal)
	captured0 := sumMetric(t, metrics, "meshlet_kernel_redirect_decisions_total", `decision="captured_tcp"`, fmt.Sprintf(`namespace=%q`, ns))

	// Fresh connections, one request each, until one lands on another node.
	const conns = 6
	byPod := map[string]int{}
	for range conns {
		out, err := lb.ExecInPod(ns, from.Name, lb.Layout.Bin("echo"), "client", "-json", "-n", "1", "-timeout", "5s",
			fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP))
		if err != nil {
			t.Fatalf("request from %s to the echo Service: %v", from.Name, err)
		}
		var s struct {
			OK    int            `json:"ok"`
			ByPod map[string]int `json:"byPod"`
		}
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s); err != nil || s.OK != 1 {
			t.Fatalf("echo client output %q (%v): want one answered request", out, err)
		}
		for p, n := range s.ByPod {
			byPod[p] += n
		}
	}
	t.Logf("answers by pod: %v (pods on other nodes: %v)", byPod, remote)

	// The source node agent saw every connection, tunnelled with mutual TLS
	// under the client's SPIFFE identity, and its eBPF captured each one.
	lab.WaitFor(t, 10*time.Second, "node agent metrics count every connection", func() (bool, error) {
		opened := sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`, src, mtls, principal) - opened0
		captured := sumMetric(t, metrics, "meshlet_kernel_redirect_decisions_total", `decision="captured_tcp"`, fmt.Sprintf(`namespace=%q`, ns)) - captured0
		return opened == conns && captured == conns, fmt.Errorf("mutual-TLS connections opened +%v, eBPF captured +%v; want +%d each", opened, captured, conns)
	})
}
