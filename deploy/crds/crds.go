// Package crds embeds the CustomResourceDefinitions meshlet needs, as `make
// crds` copies them from the modules go.mod pins (Istio's from istio.io/api,
// the Gateway API's standard channel from sigs.k8s.io/gateway-api, and its
// experimental channel into experimental/), so that meshctl can install them
// and meshd can name what is missing.
//
// The YAML files at the top and in experimental/ are generated: never edit
// them, rerun `make crds`. meshlet's own CRDs (policy.meshlet.dev) are in meshlet/ and are
// written by hand with their Go types in pkg/api/policy. This package must
// not talk to a cluster.
package crds

import (
	"bufio"
	"bytes"
	"embed"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"sort"
	"strings"

	"k8s.io/apimachinery/pkg/util/yaml"
)

//go:embed *.yaml meshlet/*.yaml experimental/*.yaml
var files embed.FS

// sources is SOURCES: the module and version each generated file comes from.
//
//go:embed SOURCES
var sources string

// SourceVersion is the version of module (istio.io/api,
// sigs.k8s.io/gateway-api) whose CRDs are embedded, as `make crds` recorded
// it in SOURCES; "" when none of them comes from module.
func SourceVersion(module string) string {
	for _, line := range strings.Split(sources, "\n") {
		f := strings.Fields(line)
		if len(f) >= 2 && f[0] == module {
			return f[1]
		}
	}
	return ""
}

// experimentalDir holds the Gateway API's experimental channel.
const experimentalDir = "experimental"

// Channel is a release channel of the Gateway API CRDs.
type Channel string

const (
	// Standard is the Gateway API's standard channel: its stable resources
	// and fields. meshd's hints and a plain install use it.
	Standard Channel = "standard"
	// Experimental is the experimental channel: the standard CRDs with
	// experimental fields added (HTTPRoute and GRPCRoute sessionPersistence,
	// HTTPRoute retry, the ExternalAuth filter, …) and the
	// gateway.networking.x-k8s.io CRDs (XBackendTrafficPolicy, …).
	Experimental Channel = "experimental"
)

// ChannelAnnotation is the annotation every Gateway API CRD carries with
// the channel it comes from.
const ChannelAnnotation = "gateway.networking.k8s.io/channel"

// ParseChannel reads a channel's name; "" is Standard.
func ParseChannel(s string) (Channel, error) {
	switch Channel(s) {
	case "", Standard:
		return Standard, nil
	case Experimental:
		return Experimental, nil
	}
	return "", fmt.Errorf("unknown Gateway API channel %q: use %s or %s", s, Standard, Experimental)
}

// FS holds the CRD files.
func FS() fs.FS { return files }

// Required lists the CRDs meshd watches, by metadata.name.
var Required = []string{
	"virtualservices.networking.istio.io",
	"destinationrules.networking.istio.io",
	"gateways.networking.istio.io",
	"serviceentries.networking.istio.io",
	"workloadentries.networking.istio.io",
	"peerauthentications.security.istio.io",
	"authorizationpolicies.security.istio.io",
	"requestauthentications.security.istio.io",
	"telemetries.telemetry.istio.io",
	"gatewayclasses.gateway.networking.k8s.io",
	"gateways.gateway.networking.k8s.io",
	"httproutes.gateway.networking.k8s.io",
	"grpcroutes.gateway.networking.k8s.io",
	"referencegrants.gateway.networking.k8s.io",
	"localratelimitpolicies.policy.meshlet.dev",
}

// InstallHint is the command that installs the CRDs, for error messages.
//
// --server-side is needed: several CRDs (HTTPRoute, Istio's) are larger than
// the 256 KiB last-applied annotation a client-side apply writes. It names
// the directories of the standard set, not -R: a recursive apply would take
// experimental/ too.
const InstallHint = "kubectl apply --server-side -f deploy/crds/ -f deploy/crds/meshlet/"

// Documents returns the CRD documents of the standard set by metadata.name,
// as YAML: DocumentsFor(Standard).
func Documents() (map[string][]byte, error) { return DocumentsFor(Standard) }

// DocumentsFor returns Istio's and meshlet's CRD documents and the Gateway
// API's of channel ch, by metadata.name, as YAML. The experimental channel
// replaces the standard one whole: it has the same CRDs, with more fields,
// and more CRDs.
func DocumentsFor(ch Channel) (map[string][]byte, error) {
	if _, err := ParseChannel(string(ch)); err != nil {
		return nil, err
	}
	out := map[string][]byte{}
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if d.IsDir() {
			if path == experimentalDir && ch != Experimental {
				return fs.SkipDir
			}
			return nil
		}
		inExperimental := strings.HasPrefix(path, experimentalDir+"/")
		data, err := files.ReadFile(path)
		if err != nil {
			return fmt.Errorf("read %s: %w", path, err)
		}
		r := yaml.NewYAMLReader(bufio.NewReader(bytes.NewReader(data)))
		for {
			doc, err := r.Read()
			if errors.Is(err, io.EOF) {
				return nil
			}
			if err != nil {
				return fmt.Errorf("split %s: %w", path, err)
			}
			var meta struct {
				Kind     string `json:"kind"`
				Metadata struct {
					Name        string            `json:"name"`
					Annotations map[string]string `json:"annotations"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				return fmt.Errorf("parse a document of %s: %w", path, err)
			}
			if meta.Kind != "CustomResourceDefinition" {
				continue
			}
			// The Gateway API's CRDs say their channel: outside
			// experimental/ they are the standard ones, which the
			// experimental channel replaces.
			if _, gatewayAPI := meta.Metadata.Annotations[ChannelAnnotation]; gatewayAPI && ch == Experimental && !inExperimental {
				continue
			}
			out[meta.Metadata.Name] = doc
		}
	})
	if err != nil {
		return nil, fmt.Errorf("read embedded crds: %w", err)
	}
	return out, nil
}

// Missing returns the Required CRDs not in have (names of the installed
// CRDs), sorted.
func Missing(have map[string]bool) []string {
	var out []string
	for _, n := range Required {
		if !have[n] {
			out = append(out, n)
		}
	}
	sort.Strings(out)
	return out
}
