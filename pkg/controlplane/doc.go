// Package controlplane turns the cluster's objects — Kubernetes core and
// discovery objects, Istio's networking and security CRDs in every version
// users still write, and Gateway API objects — into a model.Snapshot, and
// watches them with informers (Sources).
//
// The Builder is the translation: it enrolls pods by Istio's ambient labels,
// binds workloads and services to waypoints, resolves peer authentication,
// binds L4 authorization policies, joins services to their endpoints, and
// validates every mesh CRD on the way. An invalid object becomes a Rejection
// naming its kind, namespace, name and fault, and is skipped; everything else
// is still built. Warnings (a selector that matches nothing, a waypoint that
// does not exist yet) are Rejections with Warning set and do not skip the
// object. Nothing here panics on user input; the fuzz targets guard that.
//
// Decisions where Istio leaves room:
//   - Workloads are joined to Kubernetes services by the service's selector,
//     as Istio ambient does; EndpointSlices are used only for services without
//     a selector.
//   - Waypoint binding follows Istio: for a workload, the pod's
//     istio.io/use-waypoint label, else its namespace's; for a service, the
//     service's label, else its namespace's; the value "none" at a level opts
//     out there. A binding is kept only when the waypoint's
//     istio.io/waypoint-for (default "service") accepts that traffic.
//   - Each waypoint's and each ingress gateway's L7 configuration
//     (model.L7Config) is keyed by its Gateway's namespace/name: Gateway API
//     Gateways of a waypoint class (waypointl7.go) or an ingress class
//     (ingress.go), and Istio networking Gateways (istioingress.go), whose
//     gateway Deployment is expected to ask for its Gateway's name.
//   - AuthorizationPolicies are translated into pkg/policy's types; those
//     without targetRefs are bound to workloads for node agents, those with
//     targetRefs are left to the waypoint or gateway they name.
//   - The same CRD seen through two API versions (v1 and v1beta1, say) is the
//     same object on the server; Inputs keeps one copy per namespace/name.
//
// This package must not serve or push anything (pkg/xds does), sign
// certificates (pkg/ca), or debounce changes: Sources reports each change to
// its Listener at once and the caller decides when to rebuild.
package controlplane
