package meshtest

import (
	"bytes"
	"crypto/sha256"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/meshlet/meshlet/test/lab"
)

// meshBinaries are the mesh's own images; a change to one restarts the
// workloads that run it so every test runs the tree as it is.
var meshBinaries = map[string][]string{
	"meshd":       {"deployment/meshd"},
	"node-agent":  {"daemonset/meshlet-node-agent"},
	"meshlet-cni": {"daemonset/meshlet-node-agent"},
	"waypoint":    {"deployment/istio-ingressgateway"},
}

var installed struct {
	once sync.Once
	log  string
	err  error
}

// meshLab returns the shared lab with meshlet installed from this checkout
// (`meshctl install -y`: the default profile, with the ingress gateway), once per test process. When the
// lab already ran an older build of the mesh, the binaries are rebuilt and
// its pods restarted, so tests never run against stale code.
func meshLab(t *testing.T) *lab.Lab {
	t.Helper()
	lb := lab.Shared(t)
	installed.once.Do(func() { installed.log, installed.err = installMesh(lb) })
	if installed.err != nil {
		diagnose(t, lb)
		t.Fatalf("install the mesh: %v\n%s", installed.err, installed.log)
	}
	return lb
}

func installMesh(lb *lab.Lab) (string, error) {
	var log bytes.Buffer
	before := binaryDigests(lb)
	if err := lab.Build(lb.Layout, &log); err != nil {
		return log.String(), err
	}
	after := binaryDigests(lb)
	bin := filepath.Join(lb.Layout.Path("tmp"), "meshctl")
	if err := os.MkdirAll(filepath.Dir(bin), 0o755); err != nil {
		return log.String(), err
	}
	build := exec.Command("go", "build", "-o", bin, "./cmd/meshctl")
	build.Dir = lb.Layout.Repo()
	if out, err := build.CombinedOutput(); err != nil {
		return log.String() + string(out), fmt.Errorf("build meshctl: %w", err)
	}
	// Workloads whose binary changed are restarted before the install waits
	// for its rollouts: a pod still running the old binary may never get
	// ready (the install would time out on a bug already fixed).
	restart := map[string]bool{}
	for name, workloads := range meshBinaries {
		if before[name] != "" && before[name] != after[name] {
			for _, w := range workloads {
				restart[w] = true
			}
		}
	}
	for w := range restart {
		fmt.Fprintf(&log, "restarting %s: its binary changed\n", w)
		out, err := lb.Kubectl("-n", "meshlet-system", "rollout", "restart", w)
		log.WriteString(out)
		if err != nil && !strings.Contains(out, "NotFound") && !strings.Contains(out, "not found") {
			return log.String(), fmt.Errorf("kubectl rollout restart %s: %w", w, err)
		}
	}
	out, err := exec.Command(bin, "install", "--profile", "default", "-y", "--timeout", "3m", "--kubeconfig", lb.Layout.Kubeconfig()).CombinedOutput()
	log.Write(out)
	if err != nil {
		return log.String(), fmt.Errorf("meshctl install: %w", err)
	}
	if !strings.Contains(string(out), "meshlet is installed") {
		return log.String(), fmt.Errorf("meshctl install did not end with its verdict")
	}
	for w := range restart {
		out, err := lb.Kubectl("-n", "meshlet-system", "rollout", "status", w, "--timeout", "3m")
		log.WriteString(out)
		if err != nil {
			return log.String(), fmt.Errorf("kubectl rollout status %s: %w", w, err)
		}
	}
	return log.String(), nil
}

// binaryDigests hashes the mesh's binaries in .lab/bin ("" for a missing one).
func binaryDigests(lb *lab.Lab) map[string]string {
	d := map[string]string{}
	for name := range meshBinaries {
		f, err := os.Open(lb.Layout.Bin(name))
		if err != nil {
			d[name] = ""
			continue
		}
		h := sha256.New()
		_, _ = io.Copy(h, f)
		f.Close()
		d[name] = fmt.Sprintf("%x", h.Sum(nil))
	}
	return d
}
