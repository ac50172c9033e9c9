// Package model is meshlet's one vocabulary for the mesh: workloads, services,
// waypoints, peer authentication, authorization policies with their bindings,
// and each waypoint's L7 configuration (l7.go), which meshd builds from
// Kubernetes, Istio and Gateway API objects and node agents and waypoints
// consume.
//
// A Snapshot is immutable once built: every index (by IP, by node, by service
// hostname, by waypoint) is computed in NewSnapshot and never changed, and the
// Snapshot carries a Version so that the distribution layer can diff two
// snapshots (Diff) and push only what changed. A node agent reads its own
// node's workloads (WorkloadsOnNode), resolves any destination IP through the
// address index (Lookup) and hostnames through ServiceByHostname; a waypoint
// reads WaypointBindings and L7Config for its own name.
//
// Callers must treat every value reached through a Snapshot as read-only: the
// builder shares unchanged *Workload values between consecutive snapshots to
// keep builds cheap, which also lets Diff skip them by pointer comparison.
//
// Peer authentication is resolved here (ResolvePeerAuthentication) with
// Istio's documented precedence so that every consumer agrees on it:
// workload-selector policy > namespace policy > mesh policy (root namespace),
// a port-level setting overrides the workload's mode for that port, UNSET
// inherits from the level above, and among several policies at one level the
// oldest wins.
//
// Authorization rules are carried in pkg/policy's types, so the node agent
// and the waypoint evaluate exactly what was translated.
//
// This package must not import Kubernetes, Istio or Gateway API types, do
// I/O or keep global state: translation from those APIs lives in
// pkg/controlplane, and wire encoding in pkg/xds and pkg/api.
package model
