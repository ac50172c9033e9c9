package meshtest

import (
	"encoding/json"
	"errors"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

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
// `meshctl status` exit 1 naming it and what to look at.
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
	lab.WaitFor(t, time.Minute, "every proxy synced, with certificates on the echo pods' nodes", func() (bool, error) {
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
			if r.Status != "SYNCED" || r.Meshd == "" || r.Acked == "" {
				return false, fmt.Errorf("%s %s/%s: %s (meshd %q, acked %q)", r.Kind, r.Namespace, r.Pod, r.Status, r.Meshd, r.Acked)
			}
			switch {
			case r.Kind == "node-agent":
				agents++
				if echoNodes[r.Node] && (r.Certs == 0 || time.Until(r.CertExpiry) <= 0) {
					return false, fmt.Errorf("agent on %s runs echo pods but shows %d certificates expiring %v", r.Node, r.Certs, r.CertExpiry)
				}
			case r.Kind == "gateway" && strings.HasPrefix(r.Pod, "istio-ingressgateway-"):
				gateways++
			}
		}
		return agents == 2 && gateways == 1, fmt.Errorf("%d node agents, %d ingress gateways synced; want 2 and 1", agents, gateways)
	})
	out, code := run("status")
	if code != 0 || !strings.Contains(out, "node-agents  2/2 connected and synced") || !strings.Contains(out, "✔ the mesh is healthy") {
		t.Fatalf("meshctl status = exit %d:\n%s\nwant exit 0, 2/2 node agents synced and a healthy verdict", code, out)
	}
	table, code := run("proxy-status")
	if code != 0 || !strings.Contains(table, "NAMESPACE") || strings.Count(table, "SYNCED") != len(rows) {
		t.Errorf("meshctl proxy-status table (exit %d):\n%s\nwant a header and %d SYNCED rows", code, table, len(rows))
	}

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
