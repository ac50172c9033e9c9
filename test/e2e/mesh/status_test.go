package meshtest

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/test/lab"
)

// meshctlExit is meshctl for commands whose exit code is the answer: it
// returns the combined output and the exit code.
func meshctlExit(t *testing.T, lb *lab.Lab) func(args ...string) (string, int) {
	t.Helper()
	bin := filepath.Join(t.TempDir(), "meshctl")
	build := exec.Command("go", "build", "-o", bin, "./cmd/meshctl")
	build.Dir = lb.Layout.Repo()
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build meshctl: %v\n%s", err, out)
	}
	return func(args ...string) (string, int) {
		t.Helper()
		out, err := exec.Command(bin, append(args, "--kubeconfig", lb.Layout.Kubeconfig())...).CombinedOutput()
		var ee *exec.ExitError
		switch {
		case err == nil:
			return string(out), 0
		case errors.As(err, &ee):
			return string(out), ee.ExitCode()
		}
		t.Fatalf("meshctl %s: %v", strings.Join(args, " "), err)
		return "", -1
	}
}

// checkBugReport: `meshctl bug-report` writes one archive with the mesh's
// status, every node agent's config dump (each holding the echo pods, with
// certificates on their nodes), the ingress gateway's, meshd's xDS clients
// and logs, and the mesh's objects; no Secret, no private key, no literal
// env value.
func checkBugReport(t *testing.T, run func(args ...string) (string, int), ns string, echoes []corev1.Pod) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "report.tar.gz")
	out, code := run("bug-report", "-o", path, "--tail", "200")
	if code != 0 || !strings.Contains(out, "wrote "+path) {
		t.Fatalf("meshctl bug-report = exit %d:\n%s", code, out)
	}
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	zr, err := gzip.NewReader(f)
	if err != nil {
		t.Fatal(err)
	}
	files := map[string][]byte{}
	tr := tar.NewReader(zr)
	for {
		h, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("read the archive: %v", err)
		}
		b, _ := io.ReadAll(tr)
		files[h.Name[strings.Index(h.Name, "/")+1:]] = b
	}
	names := slices.Sorted(maps.Keys(files))
	t.Logf("bug report: %d files; summary:\n%s", len(files), files["summary.txt"])
	if !strings.Contains(string(files["status.txt"]), "the mesh is healthy") {
		t.Errorf("status.txt = %q; want meshctl status's healthy verdict", files["status.txt"])
	}
	dumps, gateway, meshdLogs, xds := 0, false, false, false
	for _, n := range names {
		b := files[n]
		switch {
		case strings.HasPrefix(n, "node-agents/") && strings.HasSuffix(n, "/config_dump.json"):
			dumps++
			var d configdump.Agent
			if err := json.Unmarshal(b, &d); err != nil {
				t.Errorf("%s: %v", n, err)
				continue
			}
			for _, e := range echoes {
				if !slices.ContainsFunc(d.Workloads, func(w *model.Workload) bool { return w.Name == e.Name && w.Namespace == ns }) {
					t.Errorf("%s (node %s) lacks echo pod %s", n, d.Node, e.Name)
				}
				if e.Spec.NodeName == d.Node && len(d.Certificates) == 0 {
					t.Errorf("%s: node %s runs %s but holds no certificate", n, d.Node, e.Name)
				}
			}
		case strings.HasPrefix(n, "gateways/") && strings.Contains(n, "/istio-ingressgateway-") && strings.HasSuffix(n, "/config_dump.json"):
			var d configdump.Waypoint
			gateway = json.Unmarshal(b, &d) == nil && len(d.Certificates) == 1
		case strings.HasPrefix(n, "meshd/") && strings.HasSuffix(n, ".log") && len(b) > 0:
			meshdLogs = true
		case strings.HasPrefix(n, "meshd/") && strings.HasSuffix(n, "/debug_xds.json"):
			xds = json.Valid(b)
		}
		if strings.Contains(n, "secrets") || bytes.Contains(b, []byte("PRIVATE KEY")) {
			t.Errorf("%s holds a Secret or a private key", n)
		}
	}
	if dumps != 2 || !gateway || !meshdLogs || !xds || files["objects/core/pods.json"] == nil || files["objects/networking.istio.io/gateways.json"] == nil {
		t.Errorf("bug report files %v: want 2 node agent config dumps (got %d), the ingress gateway's (%v), meshd logs (%v) and xDS clients (%v), pods and Istio Gateways", names, dumps, gateway, meshdLogs, xds)
	}
}

// proxyStatusRow is a row of `meshctl proxy-status -o json`, as a script
// would read it.
type proxyStatusRow struct {
	Namespace, Pod, Kind, Node, Status, Meshd, NACK string
	Acked                                           string    `json:"ackedVersion"`
	CertExpiry                                      time.Time `json:"certExpiry"`
	Certs                                           int       `json:"certificates"`
}

// TestMeshctlStatus: `meshctl status` says the mesh is healthy and exits 0
// when it is; `meshctl proxy-status` lists every node agent and the ingress
// gateway as connected to a meshd replica and synced, with the expiry of
// the certificates meshd signed for the agents of nodes running enrolled
// pods; a gateway pod that cannot reach meshd shows NOT CONNECTED and makes
// `meshctl status` exit 1 naming it and what to look at. `meshctl precheck`
// on the installed mesh reports meshlet already installed and the nodes'
// kernels fine, and exits 0.
func TestMeshctlStatus(t *testing.T) {
	lb := meshLab(t)
	run := meshctlExit(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, echoDeployment)
	echoes := lb.WaitPodsReady(t, ns, "app=echo", 3, 2*time.Minute)
	echoNodes := map[string]bool{}
	for _, p := range echoes {
		echoNodes[p.Spec.NodeName] = true
	}

	var rows []proxyStatusRow
	// synced: every proxy synced (to a meshd other than notFrom), the node
	// agents on the echo pods' nodes and the ingress gateway with valid
	// certificates.
	synced := func(notFrom string) (bool, error) {
		out, code := run("proxy-status", "-o", "json")
		if code != 0 {
			return false, fmt.Errorf("exit %d: %s", code, out)
		}
		rows = nil
		if err := json.Unmarshal([]byte(out), &rows); err != nil {
			return false, fmt.Errorf("decode %q: %v", out, err)
		}
		agents, gateways := 0, 0
		for _, r := range rows {
			if r.Status != "SYNCED" || r.Meshd == "" || r.Meshd == notFrom || r.Acked == "" {
				return false, fmt.Errorf("%s %s/%s: %s (meshd %q, acked %q)", r.Kind, r.Namespace, r.Pod, r.Status, r.Meshd, r.Acked)
			}
			switch {
			case r.Kind == "node-agent":
				agents++
				if echoNodes[r.Node] && (r.Certs == 0 || time.Until(r.CertExpiry) <= 0) {
					return false, fmt.Errorf("agent on %s runs echo pods but shows %d certificates expiring %v", r.Node, r.Certs, r.CertExpiry)
				}
			case r.Kind == "gateway" && strings.HasPrefix(r.Pod, "istio-ingressgateway-"):
				if r.Certs == 0 || time.Until(r.CertExpiry) <= 0 {
					return false, fmt.Errorf("ingress gateway %s shows %d certificates expiring %v", r.Pod, r.Certs, r.CertExpiry)
				}
				gateways++
			}
		}
		return agents == 2 && gateways == 1, fmt.Errorf("%d node agents, %d ingress gateways synced; want 2 and 1", agents, gateways)
	}
	lab.WaitFor(t, time.Minute, "every proxy synced, with certificates", func() (bool, error) { return synced("") })
	out, code := run("status")
	if code != 0 || !strings.Contains(out, "node-agents  2/2 connected and synced") || !strings.Contains(out, "✔ the mesh is healthy") {
		t.Fatalf("meshctl status = exit %d:\n%s\nwant exit 0, 2/2 node agents synced and a healthy verdict", code, out)
	}
	if !strings.Contains(out, ", leader meshd-") {
		t.Errorf("meshctl status:\n%s\nwant the meshd replica holding the leader Lease named", out)
	}
	table, code := run("proxy-status")
	if code != 0 || !strings.Contains(table, "NAMESPACE") || strings.Count(table, "SYNCED") != len(rows) {
		t.Errorf("meshctl proxy-status table (exit %d):\n%s\nwant a header and %d SYNCED rows", code, table, len(rows))
	}
	// meshctl precheck on the installed mesh: read-only, it finds meshlet
	// already installed (upgrade, not install) and every lab node's kernel
	// (the host's) above the floor, with nothing in the way: exit 0.
	pre, code := run("precheck")
	if code != 0 || !strings.Contains(pre, "is already installed in namespace meshlet-system") ||
		!strings.Contains(pre, "✔ the node agent will run on") || strings.Contains(pre, "✘") {
		t.Errorf("meshctl precheck on the lab = exit %d:\n%s\nwant exit 0, meshlet already installed, the nodes' kernels fine and no error", code, pre)
	}
	checkBugReport(t, run, ns, echoes)

	// meshd restarts: the new replica signed none of the certificates in
	// use, and still shows their expiry (the proxies report them).
	before := rows[0].Meshd
	if out, err := lb.Kubectl("-n", "meshlet-system", "rollout", "restart", "deployment/meshd"); err != nil {
		t.Fatalf("restart meshd: %v: %s", err, out)
	}
	if out, err := lb.Kubectl("-n", "meshlet-system", "rollout", "status", "deployment/meshd", "--timeout=3m"); err != nil {
		t.Fatalf("meshd rollout: %v: %s", err, out)
	}
	lab.WaitFor(t, 2*time.Minute, "every proxy synced to the new meshd, certificates still shown", func() (bool, error) { return synced(before) })

	// A gateway pod that never connects to meshd.
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: lost-gateway
  labels: {gateway.networking.k8s.io/gateway-name: lost, istio.io/dataplane-mode: none}
spec:
  containers:
  - name: echo
    image: meshlet.dev/echo
`)
	lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=lost", 1, time.Minute)
	out, code = run("status")
	want := fmt.Sprintf("gateway %s/lost-gateway is not connected to meshd: see kubectl -n %s logs lost-gateway", ns, ns)
	if code != 1 || !strings.Contains(out, want) {
		t.Errorf("meshctl status with a disconnected gateway = exit %d:\n%s\nwant exit 1 and %q", code, out, want)
	}
	if table, _ := run("proxy-status"); !strings.Contains(table, "lost-gateway") || !strings.Contains(table, "NOT CONNECTED") {
		t.Errorf("meshctl proxy-status:\n%s\nwant lost-gateway NOT CONNECTED", table)
	}
}

// TestMeshctlDescribe: `meshctl describe pod` tells a user what the mesh
// does with a pod — its identity, that it is enrolled and why, the
// PeerAuthentication in force, the L4 policy that selects it, and the
// connections its node agent refused (after one was refused) — and, for a
// pod outside the mesh, why not and the command that fixes it;
// `meshctl describe service` lists the service's enrolled endpoints and the
// VirtualService that routes it.
func TestMeshctlDescribe(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	server, url := echoServer(t, lb, ns)
	intruder := clientPod(t, lb, ns, "intruder", "intruder")
	lb.Apply(t, ns, `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: strict}
spec: {mtls: {mode: STRICT}}
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: only-friends}
spec:
  selector: {matchLabels: {app: echo}}
  action: ALLOW
  rules:
  - from: [{source: {principals: ["cluster.local/ns/`+ns+`/sa/friend"]}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-timeout}
spec:
  hosts: [echo]
  http:
  - timeout: 2s
    route: [{destination: {host: echo}}]
`)
	waitAnswered(t, lb, ns, intruder.Name, url, false, "the intruder refused by the policy")

	out := run("describe", "pod", server.Name, "-n", ns)
	for _, want := range []string{
		fmt.Sprintf("Identity:   spiffe://cluster.local/ns/%s/sa/default", ns),
		fmt.Sprintf("Enrolled:   yes (namespace %s has istio.io/dataplane-mode=ambient)", ns),
		"ready: yes",
		fmt.Sprintf("echo.%s.svc.cluster.local", ns),
		fmt.Sprintf("PeerAuthentication: STRICT (%s/strict)", ns),
		fmt.Sprintf("%s/only-friends ALLOW, enforced by the node agent (L4)", ns),
		fmt.Sprintf("VirtualService %s/echo-timeout", ns),
		"Refused connections (to this workload, since the node agent started): policy_denied",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("meshctl describe pod %s:\n%s\nwant a line with %q", server.Name, out, want)
		}
	}

	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")
	out = run("describe", "pod", outsider.Name, "-n", plain)
	if want := fmt.Sprintf("Enrolled:   no (namespace %s has no istio.io/dataplane-mode=ambient label: run meshctl ambient enable %s)", plain, plain); !strings.Contains(out, want) {
		t.Errorf("meshctl describe pod outside the mesh:\n%s\nwant %q", out, want)
	}

	out = run("describe", "service", "echo", "-n", ns)
	for _, want := range []string{
		fmt.Sprintf("%s/%s %s ready: yes, enrolled: yes", ns, server.Name, server.Status.PodIP),
		fmt.Sprintf("VirtualService %s/echo-timeout (hosts echo)", ns),
	} {
		if !strings.Contains(out, want) {
			t.Errorf("meshctl describe service echo:\n%s\nwant a line with %q", out, want)
		}
	}
}

// TestMeshctlMetricsTop: while a client makes fresh connections to the echo
// service, `meshctl metrics top` shows the echo workload with a connection
// rate above zero, read live from the node agents.
func TestMeshctlMetricsTop(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	_, url := echoServer(t, lb, ns)
	client := clientPod(t, lb, ns, "client", "client")
	waitAnswered(t, lb, ns, client.Name, url, true, "the echo service")
	done := make(chan struct{})
	go func() {
		defer close(done)
		// Fresh connections (one client process each) for about 8 s, at
		// most 200 of them.
		end := time.Now().Add(8 * time.Second)
		for i := 0; i < 200 && time.Now().Before(end); i++ {
			_, _ = lb.ExecInPod(ns, client.Name, lb.Layout.Bin("echo"), "client", "-n", "1", url)
		}
	}()
	t.Cleanup(func() { <-done })
	time.Sleep(time.Second) // let the load start before the first sample
	out := run("metrics", "top", "--count", "1", "--interval", "3s", "-n", ns)
	var row []string
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 9 && f[0] == ns && f[1] == "echo" {
			row = f
		}
	}
	if row == nil {
		t.Fatalf("meshctl metrics top:\n%s\nwant a row for %s echo", out, ns)
	}
	if rate, err := strconv.ParseFloat(row[2], 64); err != nil || rate <= 0 {
		t.Errorf("echo's CONN/s = %q; want above 0 while the client connects:\n%s", row[2], out)
	}
}
