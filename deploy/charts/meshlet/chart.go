// Package meshlet embeds the meshlet Helm chart (Chart.yaml, values.yaml,
// profiles/ and templates/) so that meshctl renders it without a helm binary
// or a checkout. The CRDs are not part of these files: the renderer adds them
// from package deploy/crds, the single copy taken from the pinned modules.
//
// For the helm binary (helm install ./deploy/charts/meshlet), `go generate
// ./deploy/charts/meshlet` (copy-crds.sh) copies those CRDs, meshlet's own
// included, into the chart's crds/ directory, which git ignores:
// deploy/crds stays the only copy under version control.
//
// This package holds files only; it must not render, validate or talk to a
// cluster (pkg/cli does that).
package meshlet

//go:generate sh copy-crds.sh

import (
	"embed"
	"io/fs"
)

//go:embed Chart.yaml values.yaml .helmignore profiles/*.yaml templates/*.yaml templates/_helpers.tpl
var files embed.FS

// FS holds the chart's files, with paths relative to the chart root.
func FS() fs.FS { return files }

// Profiles lists the profiles, each a file profiles/<name>.yaml.
var Profiles = []string{"minimal", "default", "demo"}
