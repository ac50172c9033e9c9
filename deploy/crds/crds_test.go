package crds

import (
	"bytes"
	"maps"
	"os"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/util/yaml"
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

// TestDocumentsForChannels: each channel's set has every Required CRD, its
// Gateway API CRDs all of that channel (the experimental set replaces the
// standard one whole), Istio's and meshlet's CRDs in both; the experimental
// set adds the gateway.networking.x-k8s.io CRDs.
func TestDocumentsForChannels(t *testing.T) {
	std, err := DocumentsFor(Standard)
	if err != nil {
		t.Fatal(err)
	}
	exp, err := DocumentsFor(Experimental)
	if err != nil {
		t.Fatal(err)
	}
	plain, err := Documents()
	if err != nil {
		t.Fatal(err)
	}
	if !maps.EqualFunc(plain, std, bytes.Equal) {
		t.Errorf("Documents() is not DocumentsFor(Standard)")
	}
	for ch, docs := range map[Channel]map[string][]byte{Standard: std, Experimental: exp} {
		for _, name := range Required {
			if _, ok := docs[name]; !ok {
				t.Errorf("%s: CRD %s missing", ch, name)
			}
		}
		gatewayAPI := 0
		for name, doc := range docs {
			var crd struct {
				Metadata struct {
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
				Spec struct {
					Group string `json:"group"`
				} `json:"spec"`
			}
			if err := yaml.Unmarshal(doc, &crd); err != nil {
				t.Fatalf("%s: %s: %v", ch, name, err)
			}
			got, ok := crd.Metadata.Annotations[ChannelAnnotation]
			if isGatewayAPI := strings.HasPrefix(crd.Spec.Group, "gateway.networking."); isGatewayAPI != ok {
				t.Errorf("%s: %s (group %s): channel annotation present %v", ch, name, crd.Spec.Group, ok)
			}
			if !ok {
				continue
			}
			gatewayAPI++
			if got != string(ch) {
				t.Errorf("%s: %s has %s: %q", ch, name, ChannelAnnotation, got)
			}
		}
		if gatewayAPI == 0 {
			t.Errorf("%s: no Gateway API CRD", ch)
		}
	}
	if got := annotation(t, exp["httproutes.gateway.networking.k8s.io"], ChannelAnnotation); got != "experimental" {
		t.Errorf("experimental HTTPRoute CRD channel = %q", got)
	}
	if got := annotation(t, std["httproutes.gateway.networking.k8s.io"], ChannelAnnotation); got != "standard" {
		t.Errorf("standard HTTPRoute CRD channel = %q", got)
	}
	for _, name := range []string{"xbackendtrafficpolicies.gateway.networking.x-k8s.io", "xmeshes.gateway.networking.x-k8s.io"} {
		if _, ok := exp[name]; !ok {
			t.Errorf("experimental set lacks %s", name)
		}
		if _, ok := std[name]; ok {
			t.Errorf("standard set has %s", name)
		}
	}
	// Every standard CRD is in the experimental set, which is a superset.
	for name := range std {
		if _, ok := exp[name]; !ok {
			t.Errorf("%s is in the standard set but not the experimental one", name)
		}
	}
	// The experimental HTTPRoute has the fields meshlet reads from it.
	for _, field := range []string{"sessionPersistence:", "retry:", "externalAuth:"} {
		if !bytes.Contains(exp["httproutes.gateway.networking.k8s.io"], []byte(field)) {
			t.Errorf("experimental HTTPRoute CRD has no %s", field)
		}
	}
	if _, err := DocumentsFor("beta"); err == nil || !strings.Contains(err.Error(), `unknown Gateway API channel "beta": use standard or experimental`) {
		t.Errorf("DocumentsFor(beta) error = %v", err)
	}
}

func annotation(t *testing.T, doc []byte, key string) string {
	t.Helper()
	var m struct {
		Metadata struct {
			Annotations map[string]string `json:"annotations"`
		} `json:"metadata"`
	}
	if err := yaml.Unmarshal(doc, &m); err != nil {
		t.Fatal(err)
	}
	return m.Metadata.Annotations[key]
}

func TestParseChannel(t *testing.T) {
	for in, want := range map[string]Channel{"": Standard, "standard": Standard, "experimental": Experimental} {
		if got, err := ParseChannel(in); err != nil || got != want {
			t.Errorf("ParseChannel(%q) = %q, %v; want %q", in, got, err, want)
		}
	}
	if _, err := ParseChannel("Experimental"); err == nil || !strings.Contains(err.Error(), "use standard or experimental") {
		t.Errorf("ParseChannel(Experimental) error = %v", err)
	}
}

// TestSourceVersion: the versions SOURCES records are those go.mod pins.
func TestSourceVersion(t *testing.T) {
	mod, err := os.ReadFile("../../go.mod")
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range []string{"istio.io/api", "sigs.k8s.io/gateway-api"} {
		v := SourceVersion(m)
		if v == "" || !strings.Contains(string(mod), "\t"+m+" "+v+"\n") {
			t.Errorf("SourceVersion(%q) = %q; want the version go.mod requires", m, v)
		}
	}
	if v := SourceVersion("example.com/none"); v != "" {
		t.Errorf("SourceVersion of a module without CRDs = %q; want \"\"", v)
	}
}
