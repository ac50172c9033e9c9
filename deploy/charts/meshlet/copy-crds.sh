#!/bin/sh
# copy-crds.sh [DIR] copies the CRDs meshlet needs into DIR (the chart's
# crds/ by default), for the helm binary: the standard-channel Istio and
# Gateway API CRDs of deploy/crds and meshlet's own (deploy/crds/meshlet).
# `go generate ./deploy/charts/meshlet` runs it.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
dest=${1:-$here/crds}
rm -rf "$dest"
mkdir -p "$dest"
cp "$here"/../../crds/*.yaml "$here"/../../crds/meshlet/*.yaml "$dest"/
