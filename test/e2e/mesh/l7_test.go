package meshtest

import (
	"encoding/base64"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

const echoV1V2 = `apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v1}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: v1}}
  template:
    metadata: {labels: {app: echo, version: v1}}
    spec:
      containers:
      - name: echo
        image: meshlet.dev/echo:latest
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: VERSION, value: v1}
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: echo-v2}
spec:
  replicas: 1
  selector: {matchLabels: {app: echo, version: v2}}
  template:
    metadata: {labels: {app: echo, version: v2}}
    spec:
      containers:
      - name: echo
        image: meshlet.dev/echo:latest
        env:
        - {name: POD_NAME, valueFrom: {fieldRef: {fieldPath: metadata.name}}}
        - {name: VERSION, value: v2}
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: echo}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
`

// echoVersions deploys echo v1 and v2 behind the Service echo in ns and a
// client pod, and returns the client and the Service's URL.
func echoVersions(t *testing.T, lb *lab.Lab, ns string) (corev1.Pod, string) {
	t.Helper()
	lb.Apply(t, ns, echoV1V2)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return client, fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP)
}

// applyWaypoint runs `meshctl waypoint apply -n ns args...` and returns the
// waypoint's pod once it is ready; a test that fails prints its logs.
func applyWaypoint(t *testing.T, lb *lab.Lab, run func(args ...string) string, ns string, args ...string) corev1.Pod {
	t.Helper()
	t.Log(run(append([]string{"waypoint", "apply", "-n", ns}, args...)...))
	wp := lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint", 1, 3*time.Minute)[0]
	t.Cleanup(func() {
		if t.Failed() {
			logs, _ := lb.PodLogs(ns, wp.Name, wp.Spec.Containers[0].Name)
			t.Logf("waypoint logs:\n%s", logs)
		}
	})
	return wp
}

// echoSummary is what the echo client reports of its requests (-json).
type echoSummary struct {
	OK, Failed int
	ByVersion  map[string]int
	ByStatus   map[string]int
	Errors     map[string]int
	Protocols  map[string]int
	Seen       map[string]int
	Answered   map[string]int
}

// summary runs `echo client` in a pod and decodes its summary.
func summary(t *testing.T, lb *lab.Lab, ns, pod string, args ...string) (s echoSummary) {
	t.Helper()
	out, err := lb.ExecInPod(ns, pod, append([]string{lb.Layout.Bin("echo"), "client", "-json"}, args...)...)
	if err != nil {
		t.Fatalf("echo client %v: %v: %s", args, err, out)
	}
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s); err != nil {
		t.Fatalf("echo client output %q: %v", out, err)
	}
	return s
}

// TestWaypointRoutesAndSplits: `meshctl waypoint apply --enroll-namespace`
// makes meshd deploy a waypoint for the namespace; requests to the echo
// Service then go through it (its Istio request metrics count them, as
// reporter="waypoint"), and a VirtualService with DestinationRule subsets
// splits them 90/10 within ±3 points over 2000 requests and sends a test
// user to v2 by header.
func TestWaypointRoutesAndSplits(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	client, url := echoVersions(t, lb, ns)

	wp := applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"
	reqs := func() float64 {
		return sumMetric(t, wpMetrics, "istio_requests_total", `reporter="waypoint"`, `response_code="200"`)
	}
	lab.WaitFor(t, time.Minute, "requests through the waypoint", func() (bool, error) {
		before := reqs()
		s := summary(t, lb, ns, client.Name, "-n", "5", url)
		d := reqs() - before
		return s.OK == 5 && d == 5, fmt.Errorf("%d of 5 answered, waypoint counted %v (status %v, errors %v)", s.OK, d, s.ByStatus, s.Errors)
	})

	lb.Apply(t, ns, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{headers: {end-user: {exact: jason}}}]
    route: [{destination: {host: echo, subset: v2}}]
  - route:
    - {destination: {host: echo, subset: v1}, weight: 90}
    - {destination: {host: echo, subset: v2}, weight: 10}
`)
	lab.WaitFor(t, time.Minute, "the test user routed to v2", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "10", "-H", "end-user: jason", url)
		return s.ByVersion["v2"] == 10, fmt.Errorf("by version %v", s.ByVersion)
	})
	checkDataplaneConfig(t, lb, run, ns, client)

	// meshctl tap: the waypoint's requests, live, as a user watches them
	// while the client sends some.
	go func() {
		time.Sleep(3 * time.Second) // the tap's port-forward is up
		lb.ExecInPod(ns, client.Name, lb.Layout.Bin("echo"), "client", "-n", "20", url+"tapped?user=alice")
	}()
	tapped := run("tap", "waypoint", "-n", ns, "--max", "5", "--duration", "60s", "--path", "/tapped")
	t.Logf("meshctl tap waypoint -n %s --max 5:\n%s", ns, tapped)
	if n := strings.Count(tapped, ":path=/tapped status=200"); n != 5 || !strings.Contains(tapped, "src="+ns+"/client") ||
		!strings.Contains(tapped, "dst=echo."+ns+".svc.cluster.local") || strings.Contains(tapped, "alice") || !strings.Contains(tapped, "tap ended (max events)") {
		t.Errorf("meshctl tap printed %d requests to /tapped answered 200 (want 5, from %s/client to echo, without the query), then its end", n, ns)
	}
	// meshctl metrics edges: the client's requests to echo, secured.
	edges := run("metrics", "edges", "-n", ns)
	t.Logf("meshctl metrics edges -n %s:\n%s", ns, edges)
	if !slices.ContainsFunc(strings.Split(edges, "\n"), func(l string) bool {
		return containsAll(l, ns+"/client ", ns+"/echo", " yes ", "spiffe://cluster.local/ns/"+ns+"/sa/client")
	}) {
		t.Errorf("meshctl metrics edges -n %s: want a secured edge from %s/client to echo with its identity", ns, ns)
	}
	s := summary(t, lb, ns, client.Name, "-n", "2000", "-c", "8", url)
	if s.OK != 2000 {
		t.Fatalf("%d of 2000 answered (errors %v)", s.OK, s.Errors)
	}
	v2 := float64(s.ByVersion["v2"]) / 20 // percent
	t.Logf("90/10 split over 2000 requests: %v", s.ByVersion)
	if v2 < 7 || v2 > 13 {
		t.Errorf("v2 got %.1f%% of 2000 requests; want 10 ± 3", v2)
	}

	// Metrics overrides, as a platform team trims and extends the
	// waypoint's labels: the namespace's Telemetry drops request_protocol
	// from the request count, labels it by the end-user header and turns
	// the request sizes off, with no restart.
	lb.Apply(t, ns, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: metrics}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        end_user: {value: "request.headers['end-user']"}
    - match: {metric: REQUEST_SIZE}
      disabled: true
`)
	lab.WaitFor(t, time.Minute, "the waypoint's request count relabelled", func() (bool, error) {
		user := func() float64 {
			return sumMetric(t, wpMetrics, "istio_requests_total", `end_user="jason"`, `reporter="waypoint"`)
		}
		before := user()
		summary(t, lb, ns, client.Name, "-n", "3", "-H", "end-user: jason", url)
		counted := user() - before
		protocol := sumMetric(t, wpMetrics, "istio_requests_total", `request_protocol="`)
		sizes := sumMetric(t, wpMetrics, "istio_request_bytes_count")
		return counted == 3 && protocol == 0 && sizes == 0, fmt.Errorf("end_user=jason counted %v of 3; series with request_protocol count %v, request sizes %v (want 0 and 0)", counted, protocol, sizes)
	})

	// The client as the waypoint knows it: its workload in Istio's source_*
	// labels, and its labels for a VirtualService's sourceLabels match.
	if n := sumMetric(t, wpMetrics, "istio_requests_total", `source_workload="client"`, fmt.Sprintf(`source_workload_namespace=%q`, ns)); n == 0 {
		t.Errorf("the waypoint reported no request with source_workload=\"client\" of %s", ns)
	}
	lb.Apply(t, ns, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{sourceLabels: {role: client-client}}]
    route: [{destination: {host: echo, subset: v2}}]
  - route: [{destination: {host: echo, subset: v1}}]
`)
	lab.WaitFor(t, time.Minute, "the client routed to v2 by its labels", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "10", url)
		return s.ByVersion["v2"] == 10, fmt.Errorf("by version %v", s.ByVersion)
	})

	// Session persistence by Istio's Service label: over a 50/50 split, a
	// client without a session is balanced and given one in the header;
	// sending it back, it stays on the pod that first answered.
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Labels == nil {
		svc.Labels = map[string]string{}
	}
	svc.Labels["istio.io/persistent-session-header"] = "x-echo-session"
	if _, err := lb.Clientset().CoreV1().Services(ns).Update(t.Context(), svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	lb.Apply(t, ns, `apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - route:
    - {destination: {host: echo, subset: v1}, weight: 50}
    - {destination: {host: echo, subset: v2}, weight: 50}
`)
	wantSessionPins(t, lb, ns, client.Name, url, "x-echo-session", time.Minute)
}

// wantSessionPins waits until 40 requests from pod to url without a session
// are answered by both echo versions, each pod giving its own token in the
// header; then 40 requests with each token must all be answered by one
// version, and get no new token.
func wantSessionPins(t *testing.T, lb *lab.Lab, ns, pod, url, header string, within time.Duration) {
	t.Helper()
	var fresh echoSummary
	lab.WaitFor(t, within, "a session token per pod in "+header, func() (bool, error) {
		fresh = summary(t, lb, ns, pod, "-n", "40", "-answer-header", header, url)
		_, tokenless := fresh.Answered[""]
		return fresh.OK == 40 && len(fresh.Answered) == 2 && !tokenless && fresh.ByVersion["v1"] > 0 && fresh.ByVersion["v2"] > 0,
			fmt.Errorf("%d of 40 answered, by version %v, tokens %v", fresh.OK, fresh.ByVersion, fresh.Answered)
	})
	for tok, n := range fresh.Answered {
		s := summary(t, lb, ns, pod, "-n", "40", "-c", "4", "-answer-header", header, "-H", header+": "+tok, url)
		if s.OK != 40 || len(s.ByVersion) != 1 || s.Answered[""] != 40 {
			t.Errorf("40 requests with the session token given %d times: %d answered, by version %v, new tokens %v; want one version and no new token", n, s.OK, s.ByVersion, s.Answered)
		}
	}
}

// checkDataplaneConfig: what the node agents and the waypoint hold, as a
// user debugging the routing above reads it, through port-forwards to their
// loopback admin ports: `meshctl proxy-config routes` shows the
// VirtualService's two routes in match order (the header match to v2, then
// the 90/10 split); `meshctl agent-config workloads` shows every echo pod
// with its address, identity and HBONE; `agent-config certificates` on the
// client's node shows the client's valid SVID.
func checkDataplaneConfig(t *testing.T, lb *lab.Lab, run func(args ...string) string, ns string, client corev1.Pod) {
	t.Helper()
	routes := run("proxy-config", "routes", "waypoint", "-n", ns)
	t.Logf("meshctl proxy-config routes waypoint -n %s:\n%s", ns, routes)
	header, split := -1, -1
	for i, line := range strings.Split(routes, "\n") {
		switch {
		case strings.Contains(line, "header:end-user") && strings.Contains(line, "|v2") && !strings.Contains(line, "|v1"):
			header = i
		case strings.Contains(line, "|v1 90%") && strings.Contains(line, "|v2 10%"):
			split = i
		}
	}
	if header < 0 || split < 0 || header > split {
		t.Errorf("meshctl proxy-config routes waypoint -n %s:\n%s\nwant the end-user header route to v2, then the 90/10 split", ns, routes)
	}

	pods, err := lb.Clientset().CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{LabelSelector: "app=echo"})
	if err != nil {
		t.Fatal(err)
	}
	workloads := run("agent-config", "workloads", "-n", ns)
	t.Logf("meshctl agent-config workloads -n %s:\n%s", ns, workloads)
	for _, p := range pods.Items {
		want := []string{p.Name, p.Status.PodIP, p.Spec.NodeName, fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/default", ns), "HBONE"}
		found := false
		for _, line := range strings.Split(workloads, "\n") {
			if strings.Contains(line, ns+"  ") && containsAll(line, want...) {
				found = true
			}
		}
		if !found {
			t.Errorf("meshctl agent-config workloads -n %s:\n%s\nwant a row with %q", ns, workloads, want)
		}
	}

	certs := run("agent-config", "certificates", "--node", client.Spec.NodeName)
	t.Logf("meshctl agent-config certificates --node %s:\n%s", client.Spec.NodeName, certs)
	id := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/client", ns)
	if !strings.Contains(certs, "on "+client.Spec.NodeName) || !slices.ContainsFunc(strings.Split(certs, "\n"), func(l string) bool { return containsAll(l, id, "valid") }) {
		t.Errorf("meshctl agent-config certificates --node %s:\n%s\nwant the client's SVID %s, valid", client.Spec.NodeName, certs, id)
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestWaypointResilience: through a waypoint, retries hide a backend that
// fails half its requests, a delay beyond the route timeout gives 504, an
// injected abort comes at its rate, and a connection pool of one with one
// pending request turns a concurrent burst's overflow into immediate 503s.
func TestWaypointResilience(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, echoV1V2)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://%s:8080", svc.Spec.ClusterIP)
	run("waypoint", "apply", "-n", ns, "--enroll-namespace")
	lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint", 1, 3*time.Minute)
	lb.Apply(t, ns, `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: echo}
spec:
  host: echo
  trafficPolicy:
    connectionPool:
      tcp: {maxConnections: 1}
      http: {http1MaxPendingRequests: 1}
  subsets:
  - {name: v1, labels: {version: v1}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo}
spec:
  hosts: [echo]
  http:
  - match: [{uri: {prefix: /flaky}}]
    route: [{destination: {host: echo, subset: v1}}]
    retries: {attempts: 20, retryOn: 5xx}
  - match: [{uri: {prefix: /slow}}]
    route: [{destination: {host: echo, subset: v1}}]
    timeout: 500ms
  - match: [{uri: {prefix: /abort}}]
    fault: {abort: {httpStatus: 418, percentage: {value: 50}}}
    route: [{destination: {host: echo, subset: v1}}]
  - route: [{destination: {host: echo, subset: v1}}]
`)
	lab.WaitFor(t, time.Minute, "the VirtualService applied (a slow request times out)", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "1", base+"/slow?delay=2s")
		return s.ByStatus["504"] == 1, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})
	// Each try fails at random with p = 0.5: with 10 retries one of 100
	// requests failed all 11 tries in ~5% of runs (100 x 0.5^11); with 20,
	// 100 x 0.5^21 ~ 5e-5. Without retries about 50 would fail.
	s := summary(t, lb, ns, client.Name, "-n", "100", base+"/flaky?fail=50")
	if s.ByStatus["200"] != 100 {
		t.Errorf("retries over a backend failing 50%%: %v; want 100 answered 200", s.ByStatus)
	}
	s = summary(t, lb, ns, client.Name, "-n", "200", base+"/abort")
	if n := s.ByStatus["418"]; n < 70 || n > 130 || n+s.ByStatus["200"] != 200 {
		t.Errorf("abort 418 at 50%% over 200 requests: %v; want 70-130 aborted, the rest 200", s.ByStatus)
	}
	s = summary(t, lb, ns, client.Name, "-n", "30", "-c", "10", base+"/?delay=300ms")
	t.Logf("burst of 30 (10 at a time) against a pool of 1 + 1 pending: %v", s.ByStatus)
	if s.ByStatus["503"] == 0 || s.ByStatus["200"] == 0 {
		t.Errorf("circuit breaking: %v; want both served (200) and overflowing (503) requests", s.ByStatus)
	}
}

// TestWaypointGRPC: gRPC calls to a Service behind a waypoint go through it
// (counted with request_protocol="grpc" and grpc_response_status="0") and
// are answered by the backend.
func TestWaypointGRPC(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1)+`---
apiVersion: v1
kind: Service
metadata: {name: echo-grpc}
spec:
  selector: {app: echo}
  ports: [{name: grpc, port: 9090, appProtocol: grpc}]
`)
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo-grpc", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	wp := applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"
	calls := func() float64 {
		return sumMetric(t, wpMetrics, "istio_requests_total", `reporter="waypoint"`, `request_protocol="grpc"`, `grpc_response_status="0"`)
	}
	lab.WaitFor(t, time.Minute, "gRPC calls through the waypoint", func() (bool, error) {
		before := calls()
		s := summary(t, lb, ns, client.Name, "-n", "10", "-grpc", svc.Spec.ClusterIP+":9090")
		d := calls() - before
		return s.OK == 10 && d == 10, fmt.Errorf("%d of 10 answered (%v %v), waypoint counted %v", s.OK, s.ByStatus, s.Errors, d)
	})
}

// waitOriginatedTLS waits until three requests from pod to url are all
// answered by an echo server that saw them over TLS with sni.
func waitOriginatedTLS(t *testing.T, lb *lab.Lab, ns, pod, url, sni, what string) {
	t.Helper()
	wantProto := "HTTP/1.1 over TLS to " + sni
	lab.WaitFor(t, time.Minute, what, func() (bool, error) {
		s := summary(t, lb, ns, pod, "-n", "3", url)
		return s.OK == 3 && s.Protocols[wantProto] == 3, fmt.Errorf("%d of 3 answered, protocols %v, status %v, errors %v", s.OK, s.Protocols, s.ByStatus, s.Errors)
	})
}

// httpsEchoPod is an echo pod named and labelled app=name that also
// serves HTTPS on 8443 with the certificate and key given, and answers
// with its name as its version.
func httpsEchoPod(name string, certPEM, keyPEM []byte) string {
	return fmt.Sprintf(`apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {app: %[1]s}}
spec:
  containers:
  - name: echo
    image: meshlet.dev/echo:latest
    env:
    - {name: POD_NAME, value: %[1]s}
    - {name: VERSION, value: %[1]s}
    - {name: HTTPS_PORT, value: "8443"}
    - {name: TLS_CERT, value: %[2]q}
    - {name: TLS_KEY, value: %[3]q}
    readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 1}
`, name, certPEM, keyPEM)
}

// TestWaypointEgressTLSOrigination: Istio's egress through a waypoint with
// TLS origination, written as Istio's ambient egress guide writes it. A
// ServiceEntry with resolution DNS and no addresses (meshd allocates one)
// declares a partner API outside the mesh: an echo server of a namespace
// outside it serving only HTTPS on 8443, known by a DNS name. It is bound
// to the namespace's waypoint with istio.io/use-waypoint, and a
// DestinationRule originates TLS to it, verifying the server against the CA
// in a credentialName Secret. A mesh client's plain HTTP request to the
// entry's host is answered, and the partner saw TLS with the entry's host as
// SNI; with a CA that did not sign the partner's certificate the waypoint
// sends nothing (503), never plaintext.
func TestWaypointEgressTLSOrigination(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	partnerNS := lb.NewNamespace(t)
	host := "api." + ns + ".partner.example"
	certPEM, keyPEM, caPEM := servingCertCA(t, host)
	_, _, otherCA := servingCertCA(t, host)
	b64 := base64.StdEncoding.EncodeToString
	lb.Apply(t, partnerNS, httpsEchoPod("partner", certPEM, keyPEM))
	lb.Apply(t, partnerNS, `apiVersion: v1
kind: Service
metadata: {name: partner}
spec:
  selector: {app: partner}
  ports: [{name: https, port: 8443}]
`)
	lb.WaitPodsReady(t, partnerNS, "app=partner", 1, 2*time.Minute)

	wp := applyWaypoint(t, lb, run, ns)
	secret := func(ca []byte) string {
		return fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: partner-ca}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s, ca.crt: %s}
`, b64(certPEM), b64(keyPEM), b64(ca))
	}
	lb.Apply(t, ns, secret(caPEM)+fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [%[1]s]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 8443}]
  location: MESH_EXTERNAL
  resolution: DNS
  endpoints: [{address: partner.%[2]s.svc.cluster.local}]
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: partner}
spec:
  host: %[1]s
  trafficPolicy:
    tls: {mode: SIMPLE, credentialName: partner-ca}
`, host, partnerNS))
	client := clientPod(t, lb, ns, "client", "client")
	url := "http://" + host + "/"
	waitOriginatedTLS(t, lb, ns, client.Name, url, host, "the partner API answered over TLS originated by the waypoint")
	// meshctl analyze reads the credentialName Secret: nothing to report.
	if out := run("analyze", "-n", ns); strings.Contains(out, "credentialName") {
		t.Errorf("meshctl analyze -n %s reports the DestinationRule's Secret, which exists:\n%s", ns, out)
	}
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"
	if n := sumMetric(t, wpMetrics, "istio_requests_total", `reporter="waypoint"`, fmt.Sprintf(`destination_service=%q`, host), `response_code="200"`); n < 3 {
		t.Errorf("waypoint counted %v answered requests to %s; want at least 3", n, host)
	}

	lb.Apply(t, ns, secret(otherCA))
	lab.WaitFor(t, time.Minute, "a partner the CA did not sign gets no request", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "3", url)
		return s.ByStatus["503"] == 3, fmt.Errorf("status %v, protocols %v, errors %v", s.ByStatus, s.Protocols, s.Errors)
	})
}

// TestWaypointBackendTLSPolicy: a Gateway API BackendTLSPolicy on a mesh
// Service makes the Service's waypoint speak TLS to its pods (inside HBONE),
// with the policy's hostname as SNI and verified against the CA in the
// policy's ConfigMap; a pod whose certificate that CA did not sign gets no
// request.
func TestWaypointBackendTLSPolicy(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	host := "secure.backend.example"
	certPEM, keyPEM, caPEM := servingCertCA(t, host)
	_, _, otherCA := servingCertCA(t, host)
	lb.Apply(t, ns, httpsEchoPod("secure", certPEM, keyPEM)+`---
apiVersion: v1
kind: Service
metadata: {name: secure, labels: {istio.io/use-waypoint: waypoint}}
spec:
  selector: {app: secure}
  ports: [{name: http, port: 80, targetPort: 8443}]
`)
	lb.WaitPodsReady(t, ns, "app=secure", 1, 2*time.Minute)
	applyWaypoint(t, lb, run, ns)
	caConfigMap := func(ca []byte) string {
		return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: secure-ca}
data: {ca.crt: %q}
`, ca)
	}
	lb.Apply(t, ns, caConfigMap(caPEM)+fmt.Sprintf(`---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: secure}
spec:
  targetRefs: [{group: "", kind: Service, name: secure}]
  validation:
    hostname: %s
    caCertificateRefs: [{group: "", kind: ConfigMap, name: secure-ca}]
`, host))
	client := clientPod(t, lb, ns, "client", "client")
	url := "http://secure." + ns + ".svc.cluster.local/"
	waitOriginatedTLS(t, lb, ns, client.Name, url, host, "the waypoint originated TLS to the Service's pod")

	policyStatus := func(want map[string]string) func() (bool, error) {
		return func() (bool, error) {
			gen, conds, err := meshletStatus(t, lb, "backendtlspolicy", ns, "secure")
			if err == nil {
				err = wantConditions(gen, conds, want)
			}
			return err == nil, err
		}
	}
	lab.WaitFor(t, time.Minute, "the policy's status: accepted, its CA reference resolved", policyStatus(map[string]string{
		"secure/Accepted": "True Accepted", "secure/ResolvedRefs": "True ResolvedRefs"}))
	// meshctl analyze reads the policy and the ConfigMap it names.
	if out := run("analyze", "-n", ns); strings.Contains(out, "BackendTLSPolicy") {
		t.Errorf("meshctl analyze -n %s reports the valid policy:\n%s", ns, out)
	}

	lb.Apply(t, ns, caConfigMap(otherCA))
	lab.WaitFor(t, time.Minute, "a pod the policy's CA did not sign gets no request", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "3", url)
		return s.ByStatus["503"] == 3, fmt.Errorf("status %v, protocols %v, errors %v", s.ByStatus, s.Protocols, s.Errors)
	})

	// A CA reference to a ConfigMap that does not exist: no request goes
	// out in the clear, and the policy's status says why.
	if out, err := lb.Kubectl("-n", ns, "delete", "configmap", "secure-ca"); err != nil {
		t.Fatalf("delete the CA ConfigMap: %v: %s", err, out)
	}
	lab.WaitFor(t, time.Minute, "the unresolved CA reference reported on the policy", policyStatus(map[string]string{
		"secure/Accepted": "False NoValidCACertificate", "secure/ResolvedRefs": "False InvalidCACertificateRef"}))
	if s := summary(t, lb, ns, client.Name, "-n", "3", url); s.ByStatus["503"] != 3 {
		t.Errorf("with the CA ConfigMap gone: status %v, protocols %v; want 503s (fail closed)", s.ByStatus, s.Protocols)
	}
	if out, want := run("analyze", "-n", ns), "no ConfigMap "+ns+"/secure-ca"; !strings.Contains(out, want) {
		t.Errorf("meshctl analyze -n %s does not say %q:\n%s", ns, want, out)
	}
}

// TestWaypointTCP follows Istio's TCP traffic shifting task in ambient
// mode: a namespace's waypoint carries its services' connections that are
// not HTTP as well. A client's own TLS to a Service's port (an echo server's
// HTTPS) is relayed whole through the waypoint (its Istio TCP metrics count
// the connections) to the Service's pod; a TCPRoute bound to the Service
// then sends new connections to another Service's pod, and its status says
// it is accepted; a TLSRoute bound to the Service takes the connections for
// the server name it names back to the first pod, before the TCPRoute.
func TestWaypointTCP(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	certPEM, keyPEM, _ := servingCert(t, "tcp-echo")
	lb.Apply(t, ns, httpsEchoPod("tcp-echo-v1", certPEM, keyPEM)+"---\n"+httpsEchoPod("tcp-echo-v2", certPEM, keyPEM)+`---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo}
spec:
  selector: {app: tcp-echo-v1}
  ports: [{name: tcp, port: 9000, targetPort: 8443}]
---
apiVersion: v1
kind: Service
metadata: {name: tcp-echo-v2}
spec:
  selector: {app: tcp-echo-v2}
  ports: [{name: tcp, port: 9000, targetPort: 8443}]
`)
	lb.WaitPodsReady(t, ns, "app in (tcp-echo-v1,tcp-echo-v2)", 2, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	wp := applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"
	url := fmt.Sprintf("https://tcp-echo.%s.svc.cluster.local:9000/", ns)
	// relayedTo waits until 3 requests over TLS to tcp-echo are answered by
	// pod, the waypoint counting the connections to svc.
	relayedTo := func(what, svc, pod string) {
		t.Helper()
		relayed := func() float64 {
			return sumMetric(t, wpMetrics, "istio_tcp_connections_opened_total", `reporter="waypoint"`, fmt.Sprintf(`destination_service="%s.%s.svc.cluster.local"`, svc, ns))
		}
		lab.WaitFor(t, time.Minute, what, func() (bool, error) {
			before := relayed()
			s := summary(t, lb, ns, client.Name, "-k", "-n", "3", url)
			d := relayed() - before
			return s.ByVersion[pod] == 3 && d >= 1, fmt.Errorf("answered by %v (errors %v); the waypoint relayed %v connections to %s", s.ByVersion, s.Errors, d, svc)
		})
	}
	relayedTo("TLS to tcp-echo relayed whole by the waypoint", "tcp-echo", "tcp-echo-v1")
	// The waypoint's access log has a line for each relayed connection.
	lab.WaitFor(t, 30*time.Second, "a TCP line in the waypoint's access log", func() (bool, error) {
		logs, err := lb.PodLogs(ns, wp.Name, wp.Spec.Containers[0].Name)
		want := fmt.Sprintf(`"upstream_cluster":"outbound|9000||tcp-echo.%s.svc.cluster.local"`, ns)
		for _, line := range strings.Split(logs, "\n") {
			if strings.Contains(line, want) && strings.Contains(line, `"method":"-"`) && !strings.Contains(line, `"bytes_sent":0,`) {
				return true, nil
			}
		}
		return false, fmt.Errorf("no line with %s, method - and bytes sent (err %v)", want, err)
	})

	lb.Apply(t, ns, `apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: tcp-echo}
spec:
  parentRefs: [{group: "", kind: Service, name: tcp-echo, port: 9000}]
  rules: [{backendRefs: [{name: tcp-echo-v2, port: 9000}]}]
`)
	relayedTo("the TCPRoute shifting tcp-echo's connections to v2", "tcp-echo-v2", "tcp-echo-v2")
	lab.WaitFor(t, 30*time.Second, "the TCPRoute Accepted", func() (bool, error) {
		out, err := lb.Kubectl("-n", ns, "get", "tcproute", "tcp-echo", "-o", `jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		return err == nil && out == "True", fmt.Errorf("%q (%v)", out, err)
	})

	// A TLSRoute bound to the Service takes its TLS connections by server
	// name before the TCPRoute: the client's SNI, tcp-echo's name, back to v1.
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: tcp-echo-by-name}
spec:
  parentRefs: [{group: "", kind: Service, name: tcp-echo, port: 9000}]
  hostnames: [tcp-echo.%s.svc.cluster.local]
  rules: [{backendRefs: [{name: tcp-echo, port: 9000}]}]
`, ns))
	relayedTo("the TLSRoute taking tcp-echo's TLS by server name to v1", "tcp-echo", "tcp-echo-v1")
	lab.WaitFor(t, 30*time.Second, "the TLSRoute Accepted", func() (bool, error) {
		out, err := lb.Kubectl("-n", ns, "get", "tlsroute", "tcp-echo-by-name", "-o", `jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		return err == nil && out == "True", fmt.Errorf("%q (%v)", out, err)
	})
}

// TestWaypointForWorkload: a waypoint for workloads (`meshctl waypoint apply
// --for workload`, Istio's istio.io/waypoint-for: workload) takes what is
// addressed to a pod's own IP. A request to the pod's address goes through
// it to that pod (the waypoint counts it, with the pod's Deployment as
// destination_workload), and an AuthorizationPolicy attached to the
// waypoint applies at L7 (a DENY on a path).
func TestWaypointForWorkload(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, echoV1V2)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	target := lb.WaitPodsReady(t, ns, "app=echo,version=v2", 1, 2*time.Minute)[0]
	client := clientPod(t, lb, ns, "client", "client")
	wp := applyWaypoint(t, lb, run, ns, "--enroll-namespace", "--for", "workload")
	wpMetrics := "http://" + wp.Status.PodIP + ":15020/metrics"
	counted := func() float64 {
		return sumMetric(t, wpMetrics, "istio_requests_total", `reporter="waypoint"`, `destination_workload="echo-v2"`,
			fmt.Sprintf(`destination_workload_namespace=%q`, ns), `response_code="200"`)
	}
	url := fmt.Sprintf("http://%s:8080/", target.Status.PodIP)
	lab.WaitFor(t, time.Minute, "requests to the pod's own address through the waypoint", func() (bool, error) {
		before := counted()
		s := summary(t, lb, ns, client.Name, "-n", "3", url)
		d := counted() - before
		return s.ByVersion["v2"] == 3 && d == 3, fmt.Errorf("answered by %v (status %v, errors %v); the waypoint counted %v", s.ByVersion, s.ByStatus, s.Errors, d)
	})

	lb.Apply(t, ns, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`)
	lab.WaitFor(t, time.Minute, "the waypoint's DENY on the pod's address", func() (bool, error) {
		denied := summary(t, lb, ns, client.Name, "-n", "2", url+"admin")
		allowed := summary(t, lb, ns, client.Name, "-n", "2", url)
		return denied.ByStatus["403"] == 2 && allowed.ByVersion["v2"] == 2, fmt.Errorf("/admin: %v; /: %v", denied.ByStatus, allowed.ByStatus)
	})
}
