package meshlet_test

import (
	"bufio"
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"k8s.io/apimachinery/pkg/util/yaml"

	"github.com/meshlet/meshlet/deploy/crds"
)

// TestCopyCRDs: the chart's crds/ as `go generate` fills it for helm users
// holds every CRD meshctl installs on the standard channel, meshlet's own
// (LocalRateLimitPolicy, which meshd needs to start) included: it was
// left out.
func TestCopyCRDs(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "crds")
	if out, err := exec.Command("sh", "copy-crds.sh", dir).CombinedOutput(); err != nil {
		t.Fatalf("copy-crds.sh: %v: %s", err, out)
	}
	want, err := crds.Documents()
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]bool{}
	files, err := filepath.Glob(filepath.Join(dir, "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range files {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if err != nil {
				break
			}
			var meta struct {
				Metadata struct{ Name string } `json:"metadata"`
			}
			if yaml.Unmarshal(doc, &meta) == nil && meta.Metadata.Name != "" {
				got[meta.Metadata.Name] = true
			}
		}
	}
	for name := range want {
		if !got[name] {
			t.Errorf("CRD %s is not in the chart's crds/", name)
		}
	}
	if !got["localratelimitpolicies.policy.meshlet.dev"] {
		t.Error("meshlet's LocalRateLimitPolicy CRD is not in the chart's crds/")
	}
}
