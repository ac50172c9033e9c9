package meshtest

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/test/lab"
)

// helmVersion is the helm the lab tests drive; test/scripts/deps.sh builds it
// from its module into $MESHLET_CACHE/helm-<version>/helm.
const helmVersion = "v3.22.0"

// fortioVersion is the fortio test/scripts/deps.sh builds (pinned there too).
const fortioVersion = "v1.66.5"

// TestHelmInstallUpgrade is the chart as a helm user runs it, as its README
// says: the CRDs copied in, `helm install --create-namespace` with a
// profile, then `helm upgrade` while an enrolled pod keeps opening new
// connections (node agents hand their listeners over; none may be refused), then
// `helm uninstall`, after which the app still answers. meshctl's install is
// put back for the other tests.
func TestHelmInstallUpgrade(t *testing.T) {
	lb := meshLab(t)
	helmBin := cachedTool(t, "helm", helmVersion)
	run := meshctl(t, lb)
	helm := func(args ...string) string {
		t.Helper()
		cmd := exec.Command(helmBin, append(args, "--kubeconfig", lb.Layout.Kubeconfig())...)
		cmd.Env = append(os.Environ(), "HELM_CACHE_HOME="+t.TempDir(), "HELM_CONFIG_HOME="+t.TempDir(), "HELM_DATA_HOME="+t.TempDir())
		out, err := cmd.CombinedOutput()
		if err != nil {
			diagnose(t, lb)
			t.Fatalf("helm %s: %v\n%s", strings.Join(args, " "), err, out)
		}
		return string(out)
	}
	// The chart as a user has it after `go generate ./deploy/charts/meshlet`.
	chart := filepath.Join(t.TempDir(), "meshlet")
	cp := exec.Command("cp", "-r", filepath.Join(lb.Layout.Repo(), "deploy", "charts", "meshlet"), chart)
	if out, err := cp.CombinedOutput(); err != nil {
		t.Fatalf("copy the chart: %v: %s", err, out)
	}
	if out, err := exec.Command("sh", filepath.Join(lb.Layout.Repo(), "deploy", "charts", "meshlet", "copy-crds.sh"), filepath.Join(chart, "crds")).CombinedOutput(); err != nil {
		t.Fatalf("copy the CRDs into the chart: %v: %s", err, out)
	}
	profile := filepath.Join(chart, "profiles", "default.yaml")

	ns, pods, url := ambientEcho(t, lb)

	run("uninstall", "-y")
	// Cleanups run last first: on failure the logs, then helm's release
	// removed (a no-op when the test got to its uninstall), then meshctl's
	// install put back for the other tests.
	t.Cleanup(func() { run("install", "--profile", "default", "-y", "--timeout", "3m") })
	t.Cleanup(func() {
		helm("uninstall", "meshlet", "-n", "meshlet-system", "--ignore-not-found", "--wait", "--timeout", "3m")
	})
	t.Cleanup(func() {
		if t.Failed() {
			dumpMesh(t, lb)
		}
	})
	// A release a failed earlier run left behind (its objects are gone
	// with meshctl's uninstall).
	helm("uninstall", "meshlet", "-n", "meshlet-system", "--ignore-not-found", "--wait", "--timeout", "3m")
	out := helm("install", "meshlet", chart, "-n", "meshlet-system", "--create-namespace", "-f", profile, "--wait", "--timeout", "5m")
	if !strings.Contains(out, "STATUS: deployed") {
		t.Fatalf("helm install:\n%s\nwant STATUS: deployed", out)
	}
	agents := func() string {
		ds, err := lb.Clientset().AppsV1().DaemonSets("meshlet-system").Get(t.Context(), "meshlet-node-agent", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf("%v, %d of %d updated and ready", ds.Spec.Template.Spec.Containers[0].Args, ds.Status.UpdatedNumberScheduled, ds.Status.NumberReady)
	}
	t.Logf("installed by helm: node agents %s", agents())

	load := startConnectionLoad(t, lb, ns, pods[0].Name, url)
	start := time.Now()
	helm("upgrade", "meshlet", chart, "-n", "meshlet-system", "-f", profile, "--set", "nodeAgent.drainTimeout=20s", "--wait", "--timeout", "5m")
	took := time.Since(start)
	ok, failed, failures := load.finish()
	t.Logf("during helm upgrade (%s): %d new connections answered, %d failed; node agents %s", took.Round(time.Second), ok, failed, agents())
	checkRollRefusals(t, lb, "helm upgrade", ok, failed, failures)
	if a := agents(); !strings.Contains(a, "20s") {
		t.Errorf("node agents after helm upgrade: %s; want the new drain timeout rolled out", a)
	}

	// The agents annotate the pods they enroll; helm uninstall's
	// post-delete hook takes the annotation away once they are gone.
	annotated := func() []string {
		t.Helper()
		list, err := lb.Clientset().CoreV1().Pods(ns).List(t.Context(), metav1.ListOptions{})
		if err != nil {
			t.Fatal(err)
		}
		var names []string
		for _, p := range list.Items {
			if p.Annotations[model.AnnotationRedirection] == model.AnnotationRedirectionEnabled {
				names = append(names, p.Name)
			}
		}
		return names
	}
	if got := annotated(); len(got) < len(pods) {
		t.Errorf("under helm's install, pods %v carry %s=%s; want the %d enrolled echo pods", got, model.AnnotationRedirection, model.AnnotationRedirectionEnabled, len(pods))
	}
	helm("uninstall", "meshlet", "-n", "meshlet-system", "--wait", "--timeout", "3m")
	if got := annotated(); len(got) > 0 {
		t.Errorf("after helm uninstall, pods %v still carry %s=%s; want it removed (the chart's post-delete hook)", got, model.AnnotationRedirection, model.AnnotationRedirectionEnabled)
	}
	for _, ns := range []string{"meshlet-system", "istio-system"} {
		if _, err := lb.Clientset().CoreV1().Namespaces().Get(t.Context(), ns, metav1.GetOptions{}); err != nil {
			t.Errorf("namespace %s after helm uninstall: %v; want it kept", ns, err)
		}
	}
	l := startConnectionLoad(t, lb, ns, pods[0].Name, url)
	if ok, failed, failures := l.finish(); failed > 0 {
		t.Errorf("after helm uninstall: %d of %d requests failed; want the app reachable without the mesh; first: %v", failed, ok+failed, failures)
	}
}

// cachedTool is the path of a tool test/scripts/deps.sh builds once into
// $MESHLET_CACHE/<name>-<version>/<name> (default ~/.cache/meshlet); without
// it the test skips, or fails under CI.
func cachedTool(t *testing.T, name, version string) string {
	t.Helper()
	cache := os.Getenv("MESHLET_CACHE")
	if cache == "" {
		home, _ := os.UserHomeDir()
		cache = filepath.Join(home, ".cache", "meshlet")
	}
	bin := filepath.Join(cache, name+"-"+version, name)
	if _, err := os.Stat(bin); err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("%s %s not built at %s: test/scripts/deps.sh builds it", name, version, bin)
		}
		t.Skipf("%s %s not built at %s: run test/scripts/deps.sh", name, version, bin)
	}
	return bin
}

// dumpMesh logs the mesh's pods, node agent and meshd logs.
func dumpMesh(t *testing.T, lb *lab.Lab) {
	t.Helper()
	for _, args := range [][]string{
		{"-n", "meshlet-system", "get", "pods,cm,secrets", "-o", "wide"},
		{"-n", "meshlet-system", "logs", "-l", "app.kubernetes.io/name=meshlet-node-agent", "--tail=80"},
		{"-n", "meshlet-system", "logs", "-l", "app.kubernetes.io/name=meshd", "--tail=40"},
	} {
		out, _ := lb.Kubectl(args...)
		t.Logf("kubectl %s:\n%s", strings.Join(args, " "), out)
	}
	// The agents a roll replaced are gone from the API; their logs stay in
	// the lab nodes' log directories: how each handoff went.
	logs, _ := filepath.Glob(filepath.Join(lb.Layout.Path("nodes"), "*", "var", "log", "pods", "meshlet-system_meshlet-node-agent-*", "node-agent.log"))
	for _, f := range logs {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		var keep []string
		for _, l := range strings.Split(string(b), "\n") {
			if strings.Contains(l, "draining") || strings.Contains(l, "drained") || strings.Contains(l, "synced") || strings.Contains(l, "handoff") || strings.Contains(l, "outbound") || strings.Contains(l, "inbound") {
				keep = append(keep, l)
			}
		}
		if len(keep) > 40 {
			keep = keep[len(keep)-40:]
		}
		t.Logf("%s:\n%s", strings.TrimPrefix(f, lb.Layout.Path("nodes")), strings.Join(keep, "\n"))
	}
}
