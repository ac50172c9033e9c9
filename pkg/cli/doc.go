// Package cli implements meshctl's commands (cobra): install and uninstall of
// the Helm chart in deploy/charts/meshlet (rendered in process with the Helm
// Go library, applied with server-side apply), the read-only precheck before
// an install, ambient enrollment, waypoints, analyze and version.
//
// Commands write to the streams they are given, never to os.Stdout directly,
// and every error names the fix. Offline commands (analyze -f, install
// --dry-run) must not contact a cluster.
package cli
