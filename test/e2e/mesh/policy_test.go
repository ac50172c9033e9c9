package meshtest

import (
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshlet/meshlet/test/lab"
)

// ambientNamespace makes a namespace enrolled in the mesh.
func ambientNamespace(t *testing.T, lb *lab.Lab) string {
	t.Helper()
	ns := lb.NewNamespace(t)
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	return ns
}

// clientPod runs an idle echo pod as service account sa (created here) to
// make requests from with ExecInPod.
func clientPod(t *testing.T, lb *lab.Lab, ns, name, sa string) corev1.Pod {
	t.Helper()
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s}
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {role: client-%[1]s}}
spec:
  serviceAccountName: %[2]s
  containers:
  - name: main
    image: meshlet.dev/echo:latest
    command: [/bin/sh, -c, "exec sleep 3600"]
`, name, sa))
	return lb.WaitPodsReady(t, ns, "role=client-"+name, 1, 2*time.Minute)[0]
}

// request makes one request (a fresh connection) from a pod and reports
// whether it was answered, with the client's summary.
func request(t *testing.T, lb *lab.Lab, ns, pod, url string) (bool, string) {
	t.Helper()
	out, err := lb.ExecInPod(ns, pod, lb.Layout.Bin("echo"), "client", "-json", "-n", "1", "-timeout", "3s", url)
	if err != nil {
		return false, fmt.Sprintf("%v: %s", err, out)
	}
	var s struct{ OK int }
	if i := strings.Index(out, "{"); i >= 0 {
		_ = json.Unmarshal([]byte(out[i:]), &s)
	}
	return s.OK == 1, out
}

// waitAnswered polls until requests from pod are answered (want) or refused.
func waitAnswered(t *testing.T, lb *lab.Lab, ns, pod, url string, want bool, what string) {
	t.Helper()
	lab.WaitFor(t, 45*time.Second, what, func() (bool, error) {
		ok, out := request(t, lb, ns, pod, url)
		return ok == want, fmt.Errorf("answered=%v: %s", ok, strings.Join(strings.Fields(out), " "))
	})
}

// echoServer deploys one echo pod behind Service echo in ns and returns the
// pod and the Service's URL.
func echoServer(t *testing.T, lb *lab.Lab, ns string) (corev1.Pod, string) {
	t.Helper()
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1))
	pod := lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)[0]
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return pod, fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP)
}

func refusedMetric(t *testing.T, hostIP, ns, reason string) float64 {
	t.Helper()
	return sumMetric(t, "http://"+hostIP+":15020/metrics", "meshlet_tcp_connections_refused_total",
		`reporter="destination"`, fmt.Sprintf(`destination_workload_namespace=%q`, ns), fmt.Sprintf(`reason=%q`, reason))
}

// TestPeerAuthenticationStrictAndPermissive: with the mesh's default
// (PERMISSIVE) a client outside the mesh is served in plaintext; a
// namespace PeerAuthentication STRICT refuses it (reset, counted) while mesh
// clients and the kubelet's probes keep working; back to PERMISSIVE, it is
// served again.
func TestPeerAuthenticationStrictAndPermissive(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	server, url := echoServer(t, lb, ns)
	insider := clientPod(t, lb, ns, "insider", "insider")
	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")

	waitAnswered(t, lb, plain, outsider.Name, url, true, "PERMISSIVE by default: the outsider is served")
	waitAnswered(t, lb, ns, insider.Name, url, true, "the mesh client is served")

	refused0 := refusedMetric(t, server.Status.HostIP, ns, "strict_mtls_plaintext")
	lb.Apply(t, ns, `apiVersion: security.istio.io/v1beta1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: STRICT}
`)
	waitAnswered(t, lb, plain, outsider.Name, url, false, "STRICT: the outsider is refused")
	if ok, out := request(t, lb, ns, insider.Name, url); !ok {
		t.Errorf("STRICT: the mesh client was refused: %s", out)
	}
	if d := refusedMetric(t, server.Status.HostIP, ns, "strict_mtls_plaintext") - refused0; d < 1 {
		t.Errorf("refused connections (strict_mtls_plaintext) moved by %v; want at least 1", d)
	}
	// The kubelet's readiness probe (plaintext, from the node) still passes,
	// straight to the app: tc ingress lets the node's SYNs to the pod's
	// probe ports through (the agent would exempt them too, a hop later).
	probes := func() float64 {
		return sumMetric(t, "http://"+server.Status.HostIP+":15020/metrics", "meshlet_kernel_inbound_decisions_total", `decision="passed_probe"`)
	}
	probes0 := probes()
	time.Sleep(3 * time.Second)
	if d := probes() - probes0; d < 1 {
		t.Errorf("probes passed by tc ingress on %s moved by %v in 3s; want the readiness probe's", server.Status.HostIP, d)
	}
	p, err := lb.Clientset().CoreV1().Pods(ns).Get(t.Context(), server.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if !podReady(p) {
		t.Errorf("echo pod not Ready under STRICT: the kubelet's probes must keep working")
	}

	// Istio's bypass-inbound-capture on the server, live: the outsider's
	// plaintext reaches the app uncaptured (the user's explicit choice,
	// STRICT no longer applies to it) while the mesh client still comes in
	// over HBONE; without the annotation, refused again.
	annotate := func(value string) {
		t.Helper()
		patch := `{"metadata":{"annotations":{"ambient.istio.io/bypass-inbound-capture":` + value + `}}}`
		if _, err := lb.Clientset().CoreV1().Pods(ns).Patch(t.Context(), server.Name, types.MergePatchType, []byte(patch), metav1.PatchOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	annotate(`"true"`)
	waitAnswered(t, lb, plain, outsider.Name, url, true, "bypass-inbound-capture: the outsider reaches the app")
	if ok, out := request(t, lb, ns, insider.Name, url); !ok {
		t.Errorf("bypass-inbound-capture: the mesh client was refused: %s", out)
	}
	annotate(`null`)
	waitAnswered(t, lb, plain, outsider.Name, url, false, "the annotation removed: STRICT refuses the outsider again")

	lb.Apply(t, ns, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec:
  mtls: {mode: PERMISSIVE}
`)
	waitAnswered(t, lb, plain, outsider.Name, url, true, "PERMISSIVE again: the outsider is served")
}

// TestL4AuthorizationPolicy: an ALLOW for one service account lets it in and
// keeps another out (reset, counted as policy_denied); a DENY for the
// allowed one wins over the ALLOW. Carol (sa b) and dave (sa a) run on the
// server's node, where the agent carries their connections without the
// tunnel: the same policy holds for them.
func TestL4AuthorizationPolicy(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	server, url := echoServer(t, lb, ns)
	alice := clientPod(t, lb, ns, "alice", "a")
	bob := clientPod(t, lb, ns, "bob", "b")
	carol := podOn(t, lb, ns, "carol", "b", server.Spec.NodeName)
	dave := podOn(t, lb, ns, "dave", "a", server.Spec.NodeName)
	waitAnswered(t, lb, ns, bob.Name, url, true, "no policy: bob is served")
	waitAnswered(t, lb, ns, carol.Name, url, true, "no policy: carol (same node) is served")

	denied0 := refusedMetric(t, server.Status.HostIP, ns, "policy_denied")
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-a}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/%s/sa/a"]}}]
`, ns))
	waitAnswered(t, lb, ns, bob.Name, url, false, "ALLOW a: bob (sa b) is refused")
	waitAnswered(t, lb, ns, carol.Name, url, false, "ALLOW a: carol (sa b, same node) is refused")
	if ok, out := request(t, lb, ns, alice.Name, url); !ok {
		t.Errorf("ALLOW a: alice (sa a) was refused: %s", out)
	}
	if ok, out := request(t, lb, ns, dave.Name, url); !ok {
		t.Errorf("ALLOW a: dave (sa a, same node) was refused: %s", out)
	}
	if d := refusedMetric(t, server.Status.HostIP, ns, "policy_denied") - denied0; d < 1 {
		t.Errorf("refused connections (policy_denied) moved by %v; want at least 1", d)
	}

	// meshctl tap pod/<server>: the server's node agent shows, live, bob
	// refused by the policy and alice's connections let in by it over
	// mutual TLS.
	run := meshctl(t, lb)
	tapped := tapWhile(t, func() {
		request(t, lb, ns, bob.Name, url)
		request(t, lb, ns, alice.Name, url)
	}, run, "tap", "pod/"+server.Name, "-n", ns, "--max", "20", "--duration", "60s")
	t.Logf("meshctl tap pod/%s -n %s --max 20:\n%s", server.Name, ns, tapped)
	lines := strings.Split(tapped, "\n")
	if !slices.ContainsFunc(lines, func(l string) bool {
		return containsAll(l, " refused ", "reporter=destination", "identity=spiffe://cluster.local/ns/"+ns+"/sa/b", "dst="+ns+"/echo",
			"reason=policy_denied", "none matched")
	}) {
		t.Errorf("meshctl tap pod/%s: want a refused event for bob (sa b), reason policy_denied, no ALLOW matched", server.Name)
	}
	if !slices.ContainsFunc(lines, func(l string) bool {
		return containsAll(l, " opened ", "reporter=destination", "identity=spiffe://cluster.local/ns/"+ns+"/sa/a", "dst="+ns+"/echo",
			"security=mutual_tls", "policy="+ns+"/only-a")
	}) || !strings.Contains(tapped, "tap ended (max events): 20 events shown") {
		t.Errorf("meshctl tap pod/%s: want an opened event for alice (sa a) over mutual_tls, let in by %s/only-a, then the end", server.Name, ns)
	}

	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: not-a}
spec:
  selector: {matchLabels: {app: echo}}
  action: DENY
  rules:
  - from: [{source: {principals: ["cluster.local/ns/%s/sa/a"]}}]
`, ns))
	waitAnswered(t, lb, ns, alice.Name, url, false, "DENY a wins over ALLOW a: alice is refused")
	waitAnswered(t, lb, ns, dave.Name, url, false, "DENY a wins over ALLOW a: dave (same node) is refused")

	// meshctl tap deploy/echo --refused (the agents of the nodes running
	// the Deployment's pods) names the DENY policy that refused alice.
	tapped = tapWhile(t, func() { request(t, lb, ns, alice.Name, url) },
		run, "tap", "deploy/echo", "-n", ns, "--refused", "--max", "1", "--duration", "60s")
	t.Logf("meshctl tap deploy/echo -n %s --refused --max 1:\n%s", ns, tapped)
	if !slices.ContainsFunc(strings.Split(tapped, "\n"), func(l string) bool {
		return containsAll(l, " refused ", "identity=spiffe://cluster.local/ns/"+ns+"/sa/a", "reason=policy_denied", "policy="+ns+"/not-a")
	}) {
		t.Errorf("meshctl tap deploy/echo --refused: want alice refused by policy %s/not-a", ns)
	}
}

// tapWhile runs meshctl args (a tap) while traffic runs over and over,
// starting once the tap's port-forward is up, and returns what it printed.
func tapWhile(t *testing.T, traffic func(), run func(args ...string) string, args ...string) string {
	t.Helper()
	done := make(chan struct{})
	stopped := make(chan struct{})
	go func() {
		defer close(stopped)
		select {
		case <-time.After(3 * time.Second): // the tap's port-forward is up
		case <-done:
			return
		}
		for {
			select {
			case <-done:
				return
			default:
			}
			traffic()
		}
	}()
	defer func() { close(done); <-stopped }()
	return run(args...)
}

// TestTrafficFlowsWithMeshdStopped: with every meshd replica gone, enrolled
// pods keep opening mutual-TLS connections to each other across nodes on
// the last config and certificates the node agents hold.
func TestTrafficFlowsWithMeshdStopped(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	nodes, err := lb.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		t.Fatalf("want two nodes: %v", err)
	}
	server := podOn(t, lb, ns, "server", "server", nodes.Items[1].Name)
	client := podOn(t, lb, ns, "client", "client", nodes.Items[0].Name)
	url := fmt.Sprintf("http://%s:8080/", server.Status.PodIP)
	waitAnswered(t, lb, ns, client.Name, url, true, "mesh traffic before meshd stops")

	metrics := "http://" + client.Status.HostIP + ":15020/metrics"
	mtls := func() float64 {
		return sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`, fmt.Sprintf(`source_workload_namespace=%q`, ns), `connection_security_policy="mutual_tls"`)
	}
	scale := func(n int) {
		t.Helper()
		if out, err := lb.Kubectl("-n", "meshlet-system", "scale", "deployment/meshd", fmt.Sprintf("--replicas=%d", n)); err != nil {
			t.Fatalf("scale meshd to %d: %v: %s", n, err, out)
		}
	}
	t.Cleanup(func() {
		scale(2)
		if out, err := lb.Kubectl("-n", "meshlet-system", "rollout", "status", "deployment/meshd", "--timeout", "3m"); err != nil {
			t.Errorf("meshd did not come back: %v: %s", err, out)
			return
		}
		// The node agents reconnect a moment later (kube-proxy learns the
		// new endpoints, then their backoff runs out); until then no new
		// identity gets a certificate. The next test finds the mesh as a
		// user would want it: meshctl status healthy.
		lab.WaitFor(t, 2*time.Minute, "meshctl status: every node agent connected and synced again", func() (bool, error) {
			out, err := runMeshctl(lb, "status")
			return err == nil && strings.Contains(out, "2/2 connected and synced"), fmt.Errorf("%v: %s", err, out)
		})
	})
	scale(0)
	lab.WaitFor(t, 2*time.Minute, "every meshd pod gone", func() (bool, error) {
		pods, err := lb.Clientset().CoreV1().Pods("meshlet-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=meshd"})
		if err != nil {
			return false, err
		}
		return len(pods.Items) == 0, fmt.Errorf("%d meshd pods left", len(pods.Items))
	})
	before := mtls()
	const conns = 5
	for i := range conns {
		if ok, out := request(t, lb, ns, client.Name, url); !ok {
			t.Fatalf("request %d with meshd stopped: %s", i, out)
		}
	}
	lab.WaitFor(t, 10*time.Second, "the connections counted as mutual TLS", func() (bool, error) {
		d := mtls() - before
		return d == conns, fmt.Errorf("+%v mutual-TLS connections; want +%d", d, conns)
	})
}

// TestLiveEnrollment: labelling a namespace whose pods already run puts
// them in the mesh with no restart (their traffic becomes mutual TLS), and
// unlabelling takes them out again; a client that retries once never sees a
// failed request throughout.
func TestLiveEnrollment(t *testing.T) {
	lb := meshLab(t)
	ns := lb.NewNamespace(t)
	nodes, err := lb.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		t.Fatalf("want two nodes: %v", err)
	}
	server := podOn(t, lb, ns, "server", "server", nodes.Items[1].Name)
	client := podOn(t, lb, ns, "client", "client", nodes.Items[0].Name)
	url := fmt.Sprintf("http://%s:8080/", server.Status.PodIP)
	metrics := "http://" + client.Status.HostIP + ":15020/metrics"
	mtls := func() float64 {
		return sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`, fmt.Sprintf(`source_workload_namespace=%q`, ns), `connection_security_policy="mutual_tls"`)
	}
	var failures []string
	phase := "before enrollment"
	try := func() {
		t.Helper()
		var outs []string
		for attempt := 0; attempt < 2; attempt++ {
			ok, out := request(t, lb, ns, client.Name, url)
			if ok {
				return
			}
			outs = append(outs, time.Now().Format("15:04:05.000")+": "+strings.Join(strings.Fields(out), " "))
		}
		failures = append(failures, phase+": "+strings.Join(outs, "; then "))
	}
	restarts := func() int32 {
		var n int32
		for _, name := range []string{server.Name, client.Name} {
			p, err := lb.Clientset().CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			for _, c := range p.Status.ContainerStatuses {
				n += c.RestartCount
			}
		}
		return n
	}
	try()
	if d := mtls(); d != 0 {
		t.Fatalf("before enrollment %v mutual-TLS connections from %s; want none", d, ns)
	}
	r0 := restarts()

	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label: %v: %s", err, out)
	}
	phase = "enrolling (labelled " + time.Now().Format("15:04:05.000") + ")"
	lab.WaitFor(t, time.Minute, "running pods enrolled live (traffic is mutual TLS)", func() (bool, error) {
		before := mtls()
		try()
		return mtls() > before, fmt.Errorf("no mutual-TLS connection yet (%v so far)", before)
	})
	for range 5 {
		try()
	}
	// Istio's status annotation on the enrolled pods (Kiali and istioctl
	// read it), written by the node agents through pods/status: a right
	// that cannot change a pod's spec.
	redirection := func(want string) {
		t.Helper()
		lab.WaitFor(t, 30*time.Second, "pods annotated ambient.istio.io/redirection "+want, func() (bool, error) {
			for _, name := range []string{server.Name, client.Name} {
				p, err := lb.Clientset().CoreV1().Pods(ns).Get(t.Context(), name, metav1.GetOptions{})
				if err != nil {
					return false, err
				}
				if got, ok := p.Annotations["ambient.istio.io/redirection"]; got != want || (want == "" && ok) {
					return false, fmt.Errorf("pod %s: %q", name, got)
				}
			}
			return true, nil
		})
	}
	redirection("enabled")
	for sub, want := range map[string]string{"status": "yes", "": "no"} {
		out, _ := lb.Kubectl("auth", "can-i", "patch", "pods", "--subresource="+sub, "-n", ns, "--as=system:serviceaccount:meshlet-system:meshlet-node-agent")
		if strings.TrimSpace(out) != want {
			t.Errorf("can the node agent patch pods (subresource %q)? %q; want %s", sub, strings.TrimSpace(out), want)
		}
	}

	phase = "enrolled"
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode-"); err != nil {
		t.Fatalf("unlabel: %v: %s", err, out)
	}
	phase = "unenrolling (unlabelled " + time.Now().Format("15:04:05.000") + ")"
	lab.WaitFor(t, time.Minute, "pods out of the mesh again (traffic not captured)", func() (bool, error) {
		before := mtls()
		try()
		return mtls() == before, fmt.Errorf("still mutual TLS")
	})
	for range 5 {
		try()
	}
	redirection("")
	if len(failures) != 0 {
		t.Errorf("%d requests failed twice in a row while the namespace moved in and out of the mesh:\n%s", len(failures), strings.Join(failures, "\n"))
		out, err := lb.Kubectl("-n", "meshlet-system", "logs", "-l", "app.kubernetes.io/name=meshlet-node-agent", "--prefix", "--tail", "60")
		t.Logf("node agent logs (%v):\n%s", err, out)
	}
	if r := restarts(); r != r0 {
		t.Errorf("containers restarted %d times; enrollment must not restart pods", r-r0)
	}
}
