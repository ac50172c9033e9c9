package meshtest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// TestTrafficDistributionPreferClose: with the lab's two nodes in two zones
// of one region, a Service with spec.trafficDistribution PreferClose sends
// every request of a client to the echo pod in the client's zone, and to
// the other zone's once its own has none; the same pods behind a Service
// without it answer from both zones; Istio's annotation
// networking.istio.io/traffic-distribution PreferSameNode does the same by
// node; internalTrafficPolicy Local keeps to the client's node and fails
// when that has no endpoint left; sessionAffinity ClientIP keeps every
// connection of the client on one pod, and moves it when that pod goes.
func TestTrafficDistributionPreferClose(t *testing.T) {
	lb := meshLab(t)
	near, far := zonedNodes(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, echoOn("echo-near", near)+"---\n"+echoOn("echo-far", far)+`---
apiVersion: v1
kind: Service
metadata: {name: close}
spec:
  selector: {app: echo}
  ports: [{port: 8080}]
  trafficDistribution: PreferClose
---
apiVersion: v1
kind: Service
metadata: {name: spread}
spec:
  selector: {app: echo}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: samenode, annotations: {networking.istio.io/traffic-distribution: PreferSameNode}}
spec:
  selector: {app: echo}
  ports: [{port: 8080}]
---
apiVersion: v1
kind: Service
metadata: {name: nodelocal}
spec:
  selector: {app: echo}
  ports: [{port: 8080}]
  internalTrafficPolicy: Local
---
apiVersion: v1
kind: Service
metadata: {name: sticky}
spec:
  selector: {app: echo}
  ports: [{port: 8080}]
  sessionAffinity: ClientIP
  sessionAffinityConfig: {clientIP: {timeoutSeconds: 600}}
`)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	// Near is the client's node, wherever the scheduler put it.
	nearPod, farPod := "echo-near", "echo-far"
	if client.Spec.NodeName != near {
		nearPod, farPod = farPod, nearPod
	}
	url := func(svc string) string { return fmt.Sprintf("http://%s.%s.svc.cluster.local:8080/", svc, ns) }
	for _, svc := range []string{"close", "samenode", "nodelocal"} {
		lab.WaitFor(t, time.Minute, svc+": every request to the client's zone", func() (bool, error) {
			// Four connections at a time (a client keeps each alive).
			s := summary(t, lb, ns, client.Name, "-n", "20", "-c", "4", url(svc))
			return s.OK == 20 && s.ByVersion[nearPod] == 20, fmt.Errorf("answered by %v (errors %v); want all 20 by %s on %s", s.ByVersion, s.Errors, nearPod, client.Spec.NodeName)
		})
	}
	s := summary(t, lb, ns, client.Name, "-n", "20", "-c", "4", url("spread"))
	if s.OK != 20 || s.ByVersion[nearPod] == 0 || s.ByVersion[farPod] == 0 {
		t.Errorf("Service without a traffic distribution: answered by %v (errors %v); want both pods", s.ByVersion, s.Errors)
	}

	// Session affinity: the client's four connections, and the next ones,
	// all to one pod (the same pods behind "spread" answer from both).
	s = summary(t, lb, ns, client.Name, "-n", "20", "-c", "4", url("sticky"))
	if s.OK != 20 || len(s.ByVersion) != 1 {
		t.Errorf("Service with sessionAffinity ClientIP: answered by %v (errors %v); want all 20 by one pod", s.ByVersion, s.Errors)
	}
	var stuck string
	for v := range s.ByVersion {
		stuck = v
	}
	if s := summary(t, lb, ns, client.Name, "-n", "8", "-c", "4", url("sticky")); s.OK != 8 || s.ByVersion[stuck] != 8 {
		t.Errorf("Service with sessionAffinity ClientIP, later connections: answered by %v (errors %v); want all 8 by %s", s.ByVersion, s.Errors, stuck)
	}
	if out := meshctl(t, lb)("describe", "service", "sticky", "-n", ns); !strings.Contains(out, "Affinity:   ClientIP") {
		t.Errorf("meshctl describe service sticky:\n%s\nwant its session affinity", out)
	}

	// meshctl describe says so, with each endpoint's zone.
	out := meshctl(t, lb)("describe", "service", "close", "-n", ns)
	if !strings.Contains(out, "Traffic:    PreferClose") || !strings.Contains(out, "zone: lab-a") || !strings.Contains(out, "zone: lab-b") {
		t.Errorf("meshctl describe service close:\n%s\nwant its traffic distribution and the endpoints' zones lab-a and lab-b", out)
	}

	// The near pod goes: the far zone takes over.
	if out, err := lb.Kubectl("-n", ns, "delete", "pod", nearPod, "--wait=true"); err != nil {
		t.Fatalf("delete %s: %v: %s", nearPod, err, out)
	}
	lab.WaitFor(t, time.Minute, "requests fail over to the other zone", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "10", "-c", "4", url("close"))
		return s.OK == 10 && s.ByVersion[farPod] == 10, fmt.Errorf("answered by %v (errors %v); want all 10 by %s", s.ByVersion, s.Errors, farPod)
	})
	// The affine pod gone (when it was the near one), the client moves.
	if s := summary(t, lb, ns, client.Name, "-n", "8", "-c", "4", url("sticky")); s.OK != 8 || s.ByVersion[farPod] != 8 {
		t.Errorf("Service with sessionAffinity ClientIP after %s went: answered by %v (errors %v); want all 8 by %s", nearPod, s.ByVersion, s.Errors, farPod)
	}
	// internalTrafficPolicy Local has no fallback: with no endpoint on the
	// client's node, the far pod is never reached (kube-proxy drops it too).
	s = summary(t, lb, ns, client.Name, "-n", "4", "-c", "4", "-timeout", "2s", url("nodelocal"))
	if s.OK != 0 || s.Failed != 4 {
		t.Errorf("Service with internalTrafficPolicy Local and no endpoint on the client's node: answered by %v (errors %v); want every request to fail", s.ByVersion, s.Errors)
	}
}

// zonedNodes labels the lab's two nodes as zones lab-a and lab-b of region
// lab (until the test ends) and returns their names in that order.
func zonedNodes(t *testing.T, lb *lab.Lab) (string, string) {
	t.Helper()
	nodes, err := lb.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		t.Fatalf("want two nodes: %v", err)
	}
	a, b := nodes.Items[0].Name, nodes.Items[1].Name
	for i, n := range []string{a, b} {
		if out, err := lb.Kubectl("label", "node", n, "--overwrite", "topology.kubernetes.io/region=lab", fmt.Sprintf("topology.kubernetes.io/zone=lab-%c", 'a'+i)); err != nil {
			t.Fatalf("label node %s: %v: %s", n, err, out)
		}
		t.Cleanup(func() {
			_, _ = lb.Kubectl("label", "node", n, "topology.kubernetes.io/region-", "topology.kubernetes.io/zone-")
		})
	}
	return a, b
}

// echoOn is an echo pod (app=echo) on node, answering with its name as
// its version.
func echoOn(name, node string) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {app: echo}}
spec:
  nodeName: %[2]s
  containers:
  - name: echo
    image: meshlet.dev/echo:latest
    env: [{name: VERSION, value: %[1]s}]
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
`, name, node)
}

// TestWaypointLocality: a waypoint balances by locality from the node its
// pod runs on: with a DestinationRule's outlierDetection (Istio's default
// locality failover) and with a Service's PreferClose, every request it
// forwards goes to the echo pod in its own zone, and to the other zone's
// once its own has none; `meshctl proxy-config endpoints` shows each
// endpoint's locality and failover level. A Service with neither spreads.
func TestWaypointLocality(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	a, b := zonedNodes(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, echoOn("echo-a", a)+"---\n"+echoOn("echo-b", b)+`---
apiVersion: v1
kind: Service
metadata: {name: failover}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: failover}
spec:
  host: failover
  trafficPolicy:
    outlierDetection: {consecutive5xxErrors: 5, interval: 1s, baseEjectionTime: 30s}
---
apiVersion: v1
kind: Service
metadata: {name: close}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
  trafficDistribution: PreferClose
---
apiVersion: v1
kind: Service
metadata: {name: spread}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
`)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	wp := applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	// The waypoint's zone decides, wherever the client runs.
	nearPod, farPod := "echo-a", "echo-b"
	if wp.Spec.NodeName != a {
		nearPod, farPod = farPod, nearPod
	}
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"
	viaWaypoint := func() float64 {
		return sumMetric(t, wpMetrics, "istio_requests_total", `reporter="waypoint"`, `response_code="200"`)
	}
	url := func(svc string) string { return fmt.Sprintf("http://%s.%s.svc.cluster.local:8080/", svc, ns) }
	for _, svc := range []string{"failover", "close"} {
		lab.WaitFor(t, time.Minute, svc+": every request to the waypoint's zone", func() (bool, error) {
			before := viaWaypoint()
			s := summary(t, lb, ns, client.Name, "-n", "20", "-c", "4", url(svc))
			through := viaWaypoint() - before
			return s.OK == 20 && s.ByVersion[nearPod] == 20 && through == 20,
				fmt.Errorf("answered by %v (errors %v), %v through the waypoint; want all 20 by %s, on the waypoint's node %s", s.ByVersion, s.Errors, through, nearPod, wp.Spec.NodeName)
		})
	}
	s := summary(t, lb, ns, client.Name, "-n", "20", "-c", "4", url("spread"))
	if s.OK != 20 || s.ByVersion[nearPod] == 0 || s.ByVersion[farPod] == 0 {
		t.Errorf("Service without locality rules: answered by %v (errors %v); want both pods", s.ByVersion, s.Errors)
	}

	// proxy-config shows the rule and each endpoint's place in it.
	pods := map[string]string{}
	for _, name := range []string{nearPod, farPod} {
		p, err := lb.Clientset().CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		pods[name] = p.Status.PodIP
	}
	eps := run("proxy-config", "endpoints", "waypoint", "-n", ns)
	t.Logf("meshctl proxy-config endpoints waypoint:\n%s", eps)
	lines := strings.Split(eps, "\n")
	for pod, level := range map[string]string{nearPod: "0", farPod: "1"} {
		zone := map[string]string{"echo-a": "lab/lab-a/", "echo-b": "lab/lab-b/"}[pod]
		if !slices.ContainsFunc(lines, func(l string) bool {
			f := strings.Fields(l)
			return strings.HasPrefix(l, "outbound|8080||failover.") && len(f) >= 8 && strings.HasPrefix(f[2], pods[pod]+":") && f[6] == zone && f[7] == level
		}) {
			t.Errorf("proxy-config endpoints: want %s (%s) of failover in %s at level %s", pod, pods[pod], zone, level)
		}
	}

	// The near pod goes: the far zone takes over.
	if out, err := lb.Kubectl("-n", ns, "delete", "pod", nearPod, "--wait=true"); err != nil {
		t.Fatalf("delete %s: %v: %s", nearPod, err, out)
	}
	for _, svc := range []string{"failover", "close"} {
		lab.WaitFor(t, time.Minute, svc+": requests fail over to the other zone", func() (bool, error) {
			s := summary(t, lb, ns, client.Name, "-n", "10", "-c", "4", url(svc))
			return s.OK == 10 && s.ByVersion[farPod] == 10, fmt.Errorf("answered by %v (errors %v); want all 10 by %s", s.ByVersion, s.Errors, farPod)
		})
	}
}
