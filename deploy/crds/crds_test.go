package crds

import (
	"os"
	"slices"
	"strings"
	"testing"
)

// TestRequiredAreEmbedded: every CRD meshd watches is in the extracted files.
func TestRequiredAreEmbedded(t *testing.T) {
	docs, err := Documents()
	if err != nil {
		t.Fatal(err)
	}
	for _, name := range Required {
		if _, ok := docs[name]; !ok {
			t.Errorf("CRD %s is not in deploy/crds; run `make crds`", name)
		}
	}
}

func TestMissing(t *testing.T) {
	tests := []struct {
		name string
		have map[string]bool
		want []string
	}{
		{"all installed", func() map[string]bool {
			m := map[string]bool{}
			for _, n := range Required {
				m[n] = true
			}
			return m
		}(), nil},
		{"no gateway api", func() map[string]bool {
			m := map[string]bool{}
			for _, n := range Required[:9] {
				m[n] = true
			}
			return m
		}(), []string{"gatewayclasses.gateway.networking.k8s.io", "gateways.gateway.networking.k8s.io", "grpcroutes.gateway.networking.k8s.io", "httproutes.gateway.networking.k8s.io", "localratelimitpolicies.policy.meshlet.dev", "referencegrants.gateway.networking.k8s.io"}},
	}
	for _, tt := range tests {
		if got := Missing(tt.have); !slices.Equal(got, tt.want) {
			t.Errorf("%s: Missing() = %v; want %v", tt.name, got, tt.want)
		}
	}
}

// TestSourcesMatchGoMod: the extracted files come from the versions go.mod
// pins; after a version bump, `make crds` must be rerun.
func TestSourcesMatchGoMod(t *testing.T) {
	gomod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	sources, err := os.ReadFile("SOURCES")
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(string(sources), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || strings.HasPrefix(line, "#") {
			continue
		}
		if !strings.Contains(string(gomod), "\t"+f[0]+" "+f[1]) {
			t.Errorf("deploy/crds was extracted from %s %s, which go.mod no longer pins: run `make crds`", f[0], f[1])
		}
	}
}
