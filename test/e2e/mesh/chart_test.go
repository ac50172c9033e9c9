package meshtest

import (
	"strings"
	"testing"
)

// TestChartProfilesServerDryRun: every profile's manifests, as `meshctl
// install --dry-run -o yaml` renders them, pass the API server's own
// validation (schemas, the installed CRDs, RBAC rules) with a server-side
// dry run, taking over the installed objects' fields as meshctl does.
func TestChartProfilesServerDryRun(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	for _, profile := range []string{"minimal", "default", "demo"} {
		manifests := run("install", "--profile", profile, "--dry-run", "-o", "yaml")
		if !strings.Contains(manifests, "kind: DaemonSet") {
			t.Fatalf("profile %s rendered no DaemonSet:\n%.500s", profile, manifests)
		}
		out, err := lb.KubectlStdin(manifests, "apply", "--dry-run=server", "--server-side", "--field-manager=meshctl", "--force-conflicts", "-f", "-")
		if err != nil {
			t.Errorf("profile %s: the API server refuses the chart: %v\n%s", profile, err, out)
		}
	}
}
