package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// run executes meshctl with args, stdin in and isTTY, and returns stdout, stderr and the error.
func run(t *testing.T, in string, isTTY bool, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewRootCommand(Streams{In: strings.NewReader(in), Out: &out, ErrOut: &errOut, IsTerminal: func() bool { return isTTY }})
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// noCluster points meshctl at a kubeconfig that does not exist, so that a
// test which wrongly reaches for a cluster fails with a kubeconfig error.
func noCluster(t *testing.T) []string {
	t.Helper()
	return []string{"--kubeconfig", filepath.Join(t.TempDir(), "no-such-kubeconfig")}
}

func TestInstallPlanGolden(t *testing.T) {
	for _, profile := range []string{"minimal", "default", "demo"} {
		t.Run(profile, func(t *testing.T) {
			out, _, err := run(t, "", false, append(noCluster(t), "install", "--profile", profile, "--dry-run")...)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "install/plan-"+profile+".txt", []byte(out))
		})
	}
}

func TestInstallDryRunManifestMatchesChartGolden(t *testing.T) {
	out, _, err := run(t, "", false, append(noCluster(t), "install", "--profile", "minimal", "--dry-run", "-o", "yaml")...)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/chart/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, string(want)) || !strings.Contains(out, "kind: CustomResourceDefinition") {
		t.Errorf("install --dry-run -o yaml is not the CRDs followed by the minimal chart golden file")
	}
}

func TestInstallConfirmation(t *testing.T) {
	tests := []struct {
		name    string
		stdin   string
		tty     bool
		args    []string
		wantErr string
	}{
		{"no TTY without -y refuses", "", false, nil, `refusing to change the cluster without confirmation: stdin is not a terminal; rerun as "meshctl install -y" to confirm`},
		{"TTY answered no", "n\n", true, nil, "not confirmed: nothing was changed"},
		{"TTY empty answer is no", "\n", true, nil, "not confirmed"},
		// Confirmed: install goes on to the cluster, which here is a missing kubeconfig.
		{"TTY answered yes", "y\n", true, nil, "load kubeconfig"},
		{"-y skips the question", "", false, []string{"-y"}, "load kubeconfig"},
		{"bad --set names the syntax", "", false, []string{"--set", "meshd"}, "use key.path=value"},
		{"bad output", "", false, []string{"--dry-run", "-o", "json"}, `unknown output format "json": use -o yaml`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := run(t, tc.stdin, tc.tty, append(append(noCluster(t), "install"), tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("install error = %v, want it to contain %q", err, tc.wantErr)
			}
			if tc.tty && !strings.Contains(out, "Install meshlet with this plan? [y/N]") {
				t.Errorf("no question asked on a TTY; stdout:\n%s", out)
			}
			if strings.Contains(tc.wantErr, "not confirmed") && !errors.Is(err, ErrNotConfirmed) {
				t.Errorf("error %v is not ErrNotConfirmed", err)
			}
		})
	}
}

func TestUninstallRefusesWithoutConfirmation(t *testing.T) {
	_, _, err := run(t, "", false, append(noCluster(t), "uninstall", "--purge")...)
	want := `rerun as "meshctl uninstall --purge -y"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("uninstall error = %v, want it to contain %q", err, want)
	}
}

func TestWaypointGateway(t *testing.T) {
	u, err := WaypointGateway("bookinfo", "waypoint", "all", "meshlet-waypoint")
	if err != nil {
		t.Fatal(err)
	}
	var gw gatewayv1.Gateway
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &gw, true); err != nil {
		t.Fatalf("waypoint does not decode as a Gateway API Gateway: %v", err)
	}
	if gw.Spec.GatewayClassName != "meshlet-waypoint" || len(gw.Spec.Listeners) != 1 ||
		gw.Spec.Listeners[0].Name != "mesh" || gw.Spec.Listeners[0].Port != 15008 || gw.Spec.Listeners[0].Protocol != "HBONE" ||
		gw.Labels["istio.io/waypoint-for"] != "all" || gw.Namespace != "bookinfo" {
		t.Errorf("waypoint Gateway = %+v", gw)
	}
	if _, err := WaypointGateway("ns", "w", "pods", "meshlet-waypoint"); err == nil || !strings.Contains(err.Error(), "use service, workload, all or none") {
		t.Errorf("bad --for error = %v", err)
	}
	if _, err := WaypointGateway("ns", "w", "all", "meshlet"); err == nil || !strings.Contains(err.Error(), "use meshlet-waypoint or istio-waypoint") {
		t.Errorf("ingress class for a waypoint: error = %v", err)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "", false, "version", "--client")
	if err != nil || !strings.HasPrefix(out, "client version: ") {
		t.Fatalf("version --client = %q, %v", out, err)
	}
	out, _, err = run(t, "", false, append(noCluster(t), "version")...)
	if !strings.HasPrefix(out, "client version: ") || err == nil || !strings.Contains(err.Error(), "pass --kubeconfig and --context") {
		t.Fatalf("version without a cluster = %q, %v; want the client version, then the kubeconfig fix", out, err)
	}
	tests := []struct{ image, want string }{
		{"meshlet.dev/meshd:v0.1.0", "v0.1.0"},
		{"registry:5000/meshlet/meshd", "latest"},
		{"meshlet.dev/meshd@sha256:abc", "sha256:abc"},
	}
	for _, tc := range tests {
		if got := imageTag(tc.image); got != tc.want {
			t.Errorf("imageTag(%q) = %q; want %q", tc.image, got, tc.want)
		}
	}
}

func TestKubeconfigErrorNamesTheFix(t *testing.T) {
	_, _, err := run(t, "", false, append(noCluster(t), "ambient", "enable", "default")...)
	if err == nil || !strings.Contains(err.Error(), "pass --kubeconfig and --context, or set KUBECONFIG") {
		t.Fatalf("ambient enable with no cluster: %v", err)
	}
}
