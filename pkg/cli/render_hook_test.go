package cli

import (
	"slices"
	"strings"
	"testing"

	batchv1 "k8s.io/api/batch/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/yaml"

	"helm.sh/helm/v3/pkg/chartutil"
	"helm.sh/helm/v3/pkg/engine"

	chartfiles "github.com/meshlet/meshlet/deploy/charts/meshlet"
)

// renderAsHelm renders the chart as the helm binary does (Release.Service
// "Helm"), values.yaml with set over it, and returns templates/name.
func renderAsHelm(t *testing.T, name string, set map[string]any) string {
	t.Helper()
	ch, err := loadChart(chartfiles.FS())
	if err != nil {
		t.Fatal(err)
	}
	vals, err := chartutil.ToRenderValues(ch, set, chartutil.ReleaseOptions{Name: "meshlet", Namespace: "meshlet-system", IsInstall: true, Revision: 1}, chartutil.DefaultCapabilities.Copy())
	if err != nil {
		t.Fatal(err)
	}
	out, err := engine.Render(ch, vals)
	if err != nil {
		t.Fatal(err)
	}
	return out["meshlet/templates/"+name]
}

// TestRenderUninstallHook: helm renders the post-delete hook Job that
// removes the agents' redirection annotation (with its own ServiceAccount
// and rights, created before it, all deleted once it succeeded); meshctl,
// which removes the annotation itself, never renders it; and
// nodeAgent.uninstallHook=false leaves it out.
func TestRenderUninstallHook(t *testing.T) {
	out := renderAsHelm(t, "uninstall-hook.yaml", nil)
	var kinds []string
	var job batchv1.Job
	d := yaml.NewYAMLOrJSONDecoder(strings.NewReader(out), 4096)
	for {
		var obj map[string]any
		if err := d.Decode(&obj); err != nil {
			break
		}
		if obj == nil {
			continue
		}
		kind, _ := obj["kind"].(string)
		kinds = append(kinds, kind)
		meta, _ := obj["metadata"].(map[string]any)
		ann, _ := meta["annotations"].(map[string]any)
		if ann["helm.sh/hook"] != "post-delete" || !strings.Contains(ann["helm.sh/hook-delete-policy"].(string), "hook-succeeded") {
			t.Errorf("%s: annotations %v; want a post-delete hook deleted once it succeeded", kind, ann)
		}
		if kind == "Job" {
			if ann["helm.sh/hook-weight"] != "0" {
				t.Errorf("Job hook weight %v; want 0, after its ServiceAccount and rights (-1)", ann["helm.sh/hook-weight"])
			}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(obj, &job, true); err != nil {
				t.Fatalf("Job: %v", err)
			}
		}
	}
	if want := []string{"ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Job"}; !slices.Equal(kinds, want) {
		t.Fatalf("helm renders %v; want %v", kinds, want)
	}
	c := job.Spec.Template.Spec.Containers[0]
	if !slices.Contains(c.Args, "--remove-redirection-annotations") || !slices.Contains(c.Args, "--daemonset-name=meshlet-node-agent") ||
		!strings.Contains(c.Image, "node-agent") || job.Spec.Template.Spec.ServiceAccountName != "meshlet-uninstall" {
		t.Errorf("Job runs %s %v as %s; want the node agent's image removing the annotations as meshlet-uninstall", c.Image, c.Args, job.Spec.Template.Spec.ServiceAccountName)
	}

	if out := renderAsHelm(t, "uninstall-hook.yaml", map[string]any{"nodeAgent": map[string]any{"uninstallHook": false}}); strings.TrimSpace(out) != "" {
		t.Errorf("with nodeAgent.uninstallHook=false helm renders:\n%s\nwant nothing", out)
	}
	r, err := Render(RenderOptions{Profile: "default", SkipCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range r.Objects {
		if o.GetName() == "meshlet-uninstall" {
			t.Errorf("meshctl renders %s %s; want no helm hook", o.GetKind(), o.GetName())
		}
	}
}
