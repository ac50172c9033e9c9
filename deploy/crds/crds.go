// Package crds embeds the CustomResourceDefinitions meshlet needs, as `make
// crds` copies them from the modules go.mod pins (Istio's from istio.io/api,
// the Gateway API's standard channel from sigs.k8s.io/gateway-api), so that
// meshctl can install them and meshd can name what is missing.
//
// The YAML files at the top are generated: never edit them, rerun `make
// crds`. meshlet's own CRDs (policy.meshlet.dev) are in meshlet/ and are
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

	"k8s.io/apimachinery/pkg/util/yaml"
)

//go:embed *.yaml meshlet/*.yaml
var files embed.FS

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
// the 256 KiB last-applied annotation a client-side apply writes.
const InstallHint = "kubectl apply --server-side -R -f deploy/crds/"

// Documents returns every embedded CRD document by metadata.name, as YAML.
func Documents() (map[string][]byte, error) {
	out := map[string][]byte{}
	err := fs.WalkDir(files, ".", func(path string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
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
					Name string `json:"name"`
				} `json:"metadata"`
			}
			if err := yaml.Unmarshal(doc, &meta); err != nil {
				return fmt.Errorf("parse a document of %s: %w", path, err)
			}
			if meta.Kind != "CustomResourceDefinition" {
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
