package meshtest

import (
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// inventoryDeployment is the booking app's inventory role as one version;
// failPercent makes it answer 503 that share of requests.
func inventoryDeployment(version string, failPercent int) string {
	return fmt.Sprintf(`apiVersion: apps/v1
kind: Deployment
metadata: {name: inventory-%[1]s}
spec:
  replicas: 1
  selector: {matchLabels: {app: inventory, version: %[1]s}}
  template:
    metadata: {labels: {app: inventory, version: %[1]s}}
    spec:
      containers:
      - name: inventory
        image: meshlet.dev/booking
        args: ["-role", "inventory"]
        env:
        - {name: VERSION, value: %[1]s}
        - {name: FAIL_PERCENT, value: "%[2]d"}
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        readinessProbe:
          httpGet: {path: /healthz, port: 8080}
          periodSeconds: 1
`, version, failPercent)
}

// TestWaypointMirrorOutlierWebSocket, through a namespace waypoint: a
// WebSocket to the echo service is upgraded and echoes (the waypoint counts
// its 101s); a VirtualService sending everything to v1 and mirroring it to v2 — the
// client sees only v1 while v2 logs every mirrored request; then a
// DestinationRule with outlier detection — an endpoint that fails every
// request is ejected after its consecutive 5xx (the ejection counted in
// the waypoint's metrics) and the client is served by the healthy one;
// baseEjectionTime later it is let back (and, still failing, ejected again).
func TestWaypointMirrorOutlierWebSocket(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	run("waypoint", "apply", "-n", ns, "--enroll-namespace")
	wp := lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint", 1, 3*time.Minute)[0]
	lb.Apply(t, ns, inventoryDeployment("v1", 0)+"---\n"+inventoryDeployment("v2", 0)+`---
apiVersion: v1
kind: Service
metadata: {name: inventory}
spec:
  selector: {app: inventory}
  ports: [{name: http, port: 8080}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: inventory}
spec:
  hosts: [inventory]
  http:
  - route: [{destination: {host: inventory, subset: v1}}]
    mirror: {host: inventory, subset: v2}
    mirrorPercentage: {value: 100}
`)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1))
	v2 := lb.WaitPodsReady(t, ns, "app=inventory,version=v2", 1, 2*time.Minute)[0]
	lb.WaitPodsReady(t, ns, "app=inventory,version=v1", 1, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"

	upgrades := func() float64 {
		return sumMetric(t, wpMetrics, "istio_requests_total", `response_code="101"`, fmt.Sprintf(`destination_service_namespace=%q`, ns))
	}
	lab.WaitFor(t, time.Minute, "WebSockets to the echo service through the waypoint", func() (bool, error) {
		before := upgrades()
		s := summary(t, lb, ns, client.Name, "-ws", "-n", "5", "http://echo:8080/ws")
		d := upgrades() - before
		return s.OK == 5 && s.Protocols["websocket"] == 5 && d >= 5, fmt.Errorf("ok %d, errors %v, waypoint 101s +%v", s.OK, s.Errors, d)
	})
	url := "http://inventory:8080/api/v1/inventory/mirrored"
	lab.WaitFor(t, time.Minute, "the route to v1 in place", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "5", url)
		return s.ByVersion["v1"] == 5, fmt.Errorf("by version %v, status %v", s.ByVersion, s.ByStatus)
	})
	mirrored := func() int {
		logs, err := lb.PodLogs(ns, v2.Name, "inventory")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(logs, `"/api/v1/inventory/mirrored"`)
	}
	before := mirrored()
	const n = 20
	if s := summary(t, lb, ns, client.Name, "-n", fmt.Sprint(n), url); s.ByVersion["v1"] != n {
		t.Errorf("with mirroring, the client saw %v; want all %d from v1", s.ByVersion, n)
	}
	lab.WaitFor(t, 15*time.Second, "v2 logging the mirrored requests", func() (bool, error) {
		d := mirrored() - before
		return d >= n, fmt.Errorf("v2 logged %d of %d mirrored requests", d, n)
	})

	// Outlier detection: v2 is replaced by a version failing every request.
	if out, err := lb.Kubectl("-n", ns, "delete", "virtualservice/inventory", "deployment/inventory-v2"); err != nil {
		t.Fatalf("delete the mirror: %v: %s", err, out)
	}
	lb.Apply(t, ns, inventoryDeployment("bad", 100)+`---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: inventory}
spec:
  host: inventory
  trafficPolicy:
    loadBalancer: {simple: ROUND_ROBIN}
    outlierDetection:
      consecutive5xxErrors: 2
      interval: 1s
      baseEjectionTime: 15s
      maxEjectionPercent: 100
`)
	bad := lb.WaitPodsReady(t, ns, "app=inventory,version=bad", 1, 2*time.Minute)[0]
	ejections := func() float64 { return sumMetric(t, wpMetrics, "meshlet_waypoint_outlier_ejections_total") }
	badRequests := func() int {
		logs, err := lb.PodLogs(ns, bad.Name, "inventory")
		if err != nil {
			t.Fatal(err)
		}
		return strings.Count(logs, "request GET")
	}
	ejected0 := ejections()
	url = "http://inventory:8080/api/v1/inventory/x"
	lab.WaitFor(t, time.Minute, "the failing endpoint ejected", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "10", url)
		return ejections() > ejected0, fmt.Errorf("no ejection yet; clients saw %v", s.ByStatus)
	})
	ejected1 := ejections()
	ejectedAt := time.Now()
	// meshctl proxy-config endpoints shows which endpoint is out, and for
	// how long (read well within the 15 s).
	eps := run("proxy-config", "endpoints", "waypoint", "-n", ns)
	if !slices.ContainsFunc(strings.Split(eps, "\n"), func(l string) bool { return containsAll(l, bad.Status.PodIP+":", "EJECTED for") }) {
		t.Errorf("meshctl proxy-config endpoints waypoint -n %s:\n%s\nwant %s (the failing pod) EJECTED", ns, eps, bad.Status.PodIP)
	}
	// While ejected it gets nothing: every request is served by v1.
	served := badRequests()
	if s := summary(t, lb, ns, client.Name, "-n", "20", url); s.ByStatus["200"] != 20 || s.ByVersion["v1"] != 20 {
		t.Errorf("with the failing endpoint ejected, clients saw status %v, versions %v; want 20 from v1", s.ByStatus, s.ByVersion)
	}
	if n := badRequests() - served; n != 0 && time.Since(ejectedAt) < 14*time.Second {
		t.Errorf("the ejected endpoint received %d requests", n)
	}
	// Back after baseEjectionTime (15 s): it gets requests again, fails
	// them (the client still sees 200s: the waypoint retries a 503 on the
	// healthy endpoint, as Istio's default retry policy does) and is
	// ejected a second time.
	lab.WaitFor(t, 90*time.Second, "the failing endpoint let back after baseEjectionTime and ejected again", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "10", url)
		if s.ByStatus["200"] != 10 {
			return false, fmt.Errorf("clients saw %v; want every request served", s.ByStatus)
		}
		return ejections() > ejected1, fmt.Errorf("no second ejection yet (%s after the first)", time.Since(ejectedAt).Round(time.Second))
	})
	if took := time.Since(ejectedAt); took < 14*time.Second {
		t.Errorf("the endpoint was back %s after its ejection; want baseEjectionTime (15s) first", took)
	}
}
