package model

import (
	"net/netip"
	"strings"
	"time"
)

// NamespacedName names a namespaced object.
type NamespacedName struct {
	Namespace string
	Name      string
}

// String returns "namespace/name".
func (n NamespacedName) String() string { return n.Namespace + "/" + n.Name }

// PortHBONE is the port of the mesh's HBONE servers: a pod's (its node
// agent's listener in the pod's netns) and a waypoint's.
const PortHBONE = 15008

// IstioSidecarContainer is the name of Istio's sidecar container (or native
// sidecar init container): a pod with one is left to its sidecar, never
// enrolled (meshd and the node agent apply the same rule).
const IstioSidecarContainer = "istio-proxy"

// Istio's ambient pod annotations meshd and the node agent read.
const (
	// AnnotationRedirection "disabled" keeps a pod out of the mesh (Istio's
	// older opt-out, still honoured beside istio.io/dataplane-mode=none).
	AnnotationRedirection         = "ambient.istio.io/redirection"
	AnnotationRedirectionDisabled = "disabled"
	// AnnotationRedirectionEnabled is what the node agent writes on a pod
	// while it is in the mesh, as Istio's CNI agent does (Kiali, istioctl
	// and scripts read it), and removes when the pod leaves.
	AnnotationRedirectionEnabled = "enabled"
	// AnnotationBypassInbound "true" leaves an enrolled pod's inbound
	// plaintext uncaptured: its outbound traffic stays the mesh's and mesh
	// clients still reach it over HBONE (Istio 1.24+).
	AnnotationBypassInbound = "ambient.istio.io/bypass-inbound-capture"
)

// RedirectionDisabled reports whether a pod's annotations opt it out of the
// mesh (AnnotationRedirection "disabled"): meshd and the node agent apply
// the same rule.
func RedirectionDisabled(annotations map[string]string) bool {
	return annotations[AnnotationRedirection] == AnnotationRedirectionDisabled
}

// WorkloadKind says where a workload came from.
type WorkloadKind string

// Workload kinds.
const (
	// KindPod is a Kubernetes pod.
	KindPod WorkloadKind = "Pod"
	// KindWorkloadEntry is an Istio WorkloadEntry (a VM or other non-pod endpoint).
	KindWorkloadEntry WorkloadKind = "WorkloadEntry"
)

// Workload is one addressable instance: a pod or a WorkloadEntry.
type Workload struct {
	// UID is the Kubernetes UID of the pod or WorkloadEntry; unique in a snapshot.
	UID string
	// Kind says whether this is a pod or a WorkloadEntry.
	Kind WorkloadKind
	// Name and Namespace of the source object.
	Name      string
	Namespace string
	// IPs are the workload's addresses (pod IPs, or the WorkloadEntry address).
	IPs []netip.Addr
	// Node is the node the pod runs on; empty for WorkloadEntries.
	Node string
	// ServiceAccount is the Kubernetes service account ("default" when unset).
	ServiceAccount string
	// Identity is the SPIFFE ID: spiffe://<trust-domain>/ns/<ns>/sa/<sa>.
	Identity string
	// Labels are the source object's labels (shared with the source; read-only).
	Labels map[string]string
	// CanonicalName and CanonicalRevision follow Istio: service.istio.io/canonical-name,
	// else app.kubernetes.io/name, else app, else the workload name;
	// service.istio.io/canonical-revision, else app.kubernetes.io/version, else version, else "latest".
	CanonicalName     string
	CanonicalRevision string
	// Partial is set by a client's view of the model (pkg/xds/modelview)
	// when part of the workload's configuration has not reached it yet: it
	// is known only from the address index, or its PeerAuthentication or an
	// authorization policy its full resource names is still to come (they
	// arrive in separate responses). meshd's own model never sets it.
	Partial bool
	// WorkloadName is the owning controller's name (the Deployment behind a
	// ReplicaSet, a StatefulSet, a Job, ...) or the object's own name: the
	// *_workload label of Istio's metrics. Empty means Name.
	WorkloadName string
	// Enrolled is true when the workload's traffic is captured by the mesh.
	Enrolled bool
	// EnrollReason says why the workload is or is not enrolled, for status and debugging.
	EnrollReason string
	// Waypoint is the waypoint that handles traffic addressed to this workload directly;
	// nil when none.
	Waypoint *WaypointRef
	// Services lists the services this workload backs, with their port mappings.
	Services []ServiceBinding
	// PeerAuthentication is the resolved mutual TLS mode for inbound traffic.
	PeerAuthentication PeerAuthResult
	// AuthorizationPolicies names the L4 authorization policies bound to this
	// workload (mesh-wide, namespace-wide and selector-matched), sorted.
	AuthorizationPolicies []NamespacedName
	// Ready is false for pods that are not ready; they stay addressable but services skip them.
	Ready bool
	// Draining is set for a pod being deleted that was ready (see
	// Endpoint.Draining). Meshd's own; never pushed.
	Draining bool `json:"-"`
	// Locality is where the workload runs, from its node's labels.
	Locality Locality `json:",omitzero"`
}

// Key returns the workload's UID.
func (w *Workload) Key() string { return w.UID }

// ServiceBinding says that a workload backs a service and how ports map.
type ServiceBinding struct {
	// Service is the service's namespace and name.
	Service NamespacedName
	// Hostname is the service's primary hostname.
	Hostname string
	// Ports maps service port to the workload's target port.
	Ports map[uint32]uint32
}

// ServiceSource says where a service came from.
type ServiceSource string

// Service sources.
const (
	// SourceKubernetes is a core/v1 Service.
	SourceKubernetes ServiceSource = "Service"
	// SourceServiceEntry is an Istio ServiceEntry.
	SourceServiceEntry ServiceSource = "ServiceEntry"
)

// Service is a named destination with virtual IPs and ports.
type Service struct {
	// Name and Namespace of the Service or ServiceEntry.
	Name      string
	Namespace string
	// Source is Kubernetes or ServiceEntry.
	Source ServiceSource
	// Hostnames are the names this service answers to, the primary
	// (<name>.<ns>.svc.<domain> for Kubernetes services) first.
	Hostnames []string
	// VIPs are the cluster IPs or ServiceEntry addresses; empty for headless services.
	VIPs []netip.Addr
	// Ports are the service's ports.
	Ports []ServicePort
	// Endpoints are the workloads behind the service.
	Endpoints []Endpoint
	// Waypoint handles traffic addressed to the service; nil when none.
	Waypoint *WaypointRef
	// LoadBalancing is how a client picks an endpoint.
	LoadBalancing LoadBalancing
	// External is true for ServiceEntries with location MESH_EXTERNAL.
	External bool
	// Resolution is how clients find endpoints of a ServiceEntry: "STATIC",
	// "DNS", "DNS_ROUND_ROBIN" or "NONE"; empty for Kubernetes services.
	Resolution string
	// ExportTo is Istio's exportTo (a ServiceEntry's field, a Service's
	// networking.istio.io/exportTo annotation): the namespaces whose
	// workloads see the service, "." for its own, "*" (or none given) for
	// all, "~" for none. See VisibleTo.
	ExportTo []string
	// TrafficDistribution prefers endpoints close to the client (Kubernetes'
	// spec.trafficDistribution, or Istio's traffic-distribution
	// annotation); "" spreads over every ready endpoint.
	TrafficDistribution TrafficDistribution `json:",omitempty"`
	// NodeLocal is a Kubernetes Service's internalTrafficPolicy: Local: a
	// client's connections go only to the ready endpoints on its own node;
	// with none there, the service has no endpoint for it (kube-proxy
	// drops such traffic too). It wins over TrafficDistribution.
	NodeLocal bool `json:",omitempty"`
	// SessionAffinity is a Kubernetes Service's sessionAffinity ClientIP,
	// as its timeout: a client's connections to a service port keep going
	// to the endpoint its last one went to while that endpoint stays ready
	// and the client connected within this long (kube-proxy's rule). Zero:
	// no affinity.
	SessionAffinity time.Duration `json:",omitempty"`
}

// VisibleTo reports whether workloads in namespace ns see s: resolve its
// addresses and names through the mesh.
func (s *Service) VisibleTo(ns string) bool { return ExportedTo(s.ExportTo, s.Namespace, ns) }

// ExportedTo reports whether an object of namespace own with Istio's
// exportTo list is visible from namespace to: an empty list or "*" exports
// it everywhere, "." to its own namespace, "~" nowhere, and a name to that
// namespace.
func ExportedTo(exportTo []string, own, to string) bool {
	if len(exportTo) == 0 {
		return true
	}
	for _, e := range exportTo {
		switch e {
		case "*":
			return true
		case ".":
			if own == to {
				return true
			}
		case "~":
		default:
			if e == to {
				return true
			}
		}
	}
	return false
}

// Key returns "namespace/name" qualified by source, unique in a snapshot.
func (s *Service) Key() string {
	if s.Source == SourceServiceEntry {
		return "se/" + s.Namespace + "/" + s.Name
	}
	return s.Namespace + "/" + s.Name
}

// Hostname returns the primary hostname, or "" when there is none.
func (s *Service) Hostname() string {
	if len(s.Hostnames) == 0 {
		return ""
	}
	return s.Hostnames[0]
}

// Port returns the service's port number n.
func (s *Service) Port(n uint32) (ServicePort, bool) {
	for _, p := range s.Ports {
		if p.Port == n {
			return p, true
		}
	}
	return ServicePort{}, false
}

// ServicePort is one port of a service.
type ServicePort struct {
	// Name is the port name ("" allowed when the service has one port).
	Name string
	// Port is the service port.
	Port uint32
	// Protocol is the L4 protocol: "TCP", "UDP" or "SCTP".
	Protocol string
	// AppProtocol is the application protocol from appProtocol, or Istio's
	// name-prefix convention (http-, grpc-, ...), normalised to Istio's names
	// ("HTTP", "HTTP2", "GRPC", "TCP", "TLS", ...); empty when unknown.
	AppProtocol string
	// TargetPort is the numeric target port; 0 when TargetPortName is set.
	TargetPort uint32
	// TargetPortName is a named target port, resolved per workload.
	TargetPortName string
}

// Endpoint is one workload behind a service, or one static address of a ServiceEntry.
type Endpoint struct {
	// WorkloadUID names the workload; empty for addresses without a workload.
	WorkloadUID string
	// Addresses are the endpoint's IPs.
	Addresses []netip.Addr
	// Hostname is set for DNS-resolved ServiceEntry endpoints instead of Addresses.
	Hostname string
	// Ports maps service port to target port on this endpoint.
	Ports map[uint32]uint32
	// Ready is false for endpoints that should not receive new connections.
	Ready bool
	// Draining marks an endpoint that is not Ready only because its pod is
	// terminating while it still serves: the sessions a waypoint pinned to
	// it (session persistence) may still reach it. Meshd's own; never pushed
	// to node agents.
	Draining bool `json:"-"`
}

// Locality is a node's place in the cluster's topology.
type Locality struct {
	// Region and Zone are the node's topology.kubernetes.io/region and
	// topology.kubernetes.io/zone labels.
	Region, Zone string
	// Subzone is Istio's topology.istio.io/subzone label.
	Subzone string
}

// Node labels a Locality is read from.
const (
	LabelRegion  = "topology.kubernetes.io/region"
	LabelZone    = "topology.kubernetes.io/zone"
	LabelSubzone = "topology.istio.io/subzone"
)

// TrafficDistribution is how a service spreads connections over its
// endpoints by closeness to the client.
type TrafficDistribution string

// Traffic distributions: Kubernetes' spec.trafficDistribution values, as
// Istio ambient reads them.
const (
	// TrafficPreferClose prefers endpoints in the client's zone (and
	// subzone), then its region, then any (Istio's failover order).
	TrafficPreferClose TrafficDistribution = "PreferClose"
	// TrafficPreferSameZone is PreferClose's newer name (Kubernetes 1.34).
	TrafficPreferSameZone TrafficDistribution = "PreferSameZone"
	// TrafficPreferSameNode prefers endpoints on the client's node, then any.
	TrafficPreferSameNode TrafficDistribution = "PreferSameNode"
)

// Closeness ranks how close an endpoint (on node at loc) is to a client (on
// fromNode at from) under d: a higher rank is preferred; endpoints of the
// best rank with any ready endpoint take all the traffic. Every endpoint
// ranks 0 when d is "" (or unknown), or when the client's place is unknown.
func (d TrafficDistribution) Closeness(fromNode string, from Locality, node string, loc Locality) int {
	switch d {
	case TrafficPreferSameNode:
		if fromNode != "" && node == fromNode {
			return 1
		}
	case TrafficPreferClose, TrafficPreferSameZone:
		if from == (Locality{}) {
			return 0
		}
		rank := 0
		for _, same := range []bool{from.Region == loc.Region, from.Zone == loc.Zone, from.Subzone == loc.Subzone} {
			if !same {
				break
			}
			rank++
		}
		return rank
	}
	return 0
}

// LoadBalancing is the endpoint-selection algorithm, from a DestinationRule.
type LoadBalancing string

// Load balancing algorithms (Istio's simple LB names).
const (
	// LBDefault lets the client pick (meshlet clients use least-request).
	LBDefault LoadBalancing = ""
	// LBRoundRobin cycles through endpoints.
	LBRoundRobin LoadBalancing = "ROUND_ROBIN"
	// LBLeastRequest picks the endpoint with fewest outstanding requests.
	LBLeastRequest LoadBalancing = "LEAST_REQUEST"
	// LBRandom picks at random.
	LBRandom LoadBalancing = "RANDOM"
	// LBPassthrough sends to the original destination address.
	LBPassthrough LoadBalancing = "PASSTHROUGH"
)

// WaypointFor is what traffic a waypoint accepts (istio.io/waypoint-for).
type WaypointFor string

// Waypoint traffic types, as Istio's istio.io/waypoint-for label values.
const (
	// WaypointForService handles traffic addressed to services (Istio's default).
	WaypointForService WaypointFor = "service"
	// WaypointForWorkload handles traffic addressed to workloads directly.
	WaypointForWorkload WaypointFor = "workload"
	// WaypointForAll handles both.
	WaypointForAll WaypointFor = "all"
	// WaypointForNone handles neither.
	WaypointForNone WaypointFor = "none"
)

// AcceptsServices reports whether a waypoint for f takes service-addressed traffic.
func (f WaypointFor) AcceptsServices() bool { return f == WaypointForService || f == WaypointForAll }

// AcceptsWorkloads reports whether a waypoint for f takes workload-addressed traffic.
func (f WaypointFor) AcceptsWorkloads() bool { return f == WaypointForWorkload || f == WaypointForAll }

// Waypoint is an L7 proxy deployment (a Gateway API Gateway of a waypoint class).
type Waypoint struct {
	// Name and Namespace of the Gateway.
	Name      string
	Namespace string
	// For is the traffic the waypoint accepts.
	For WaypointFor
	// Addresses are the waypoint's service addresses; traffic is tunnelled there.
	Addresses []netip.Addr
	// Identity is the waypoint's SPIFFE ID.
	Identity string
}

// Key returns the waypoint's namespace/name.
func (w *Waypoint) Key() NamespacedName { return NamespacedName{w.Namespace, w.Name} }

// WaypointRef binds a workload or service to a waypoint.
type WaypointRef struct {
	// Waypoint is the Gateway's namespace and name.
	Waypoint NamespacedName
	// Addresses is a copy of the waypoint's addresses, so a consumer needs no second lookup.
	Addresses []netip.Addr
	// Source says which label bound it: "pod", "service" or "namespace".
	Source string
}

// AddressKind says what an IP in the address index refers to.
type AddressKind int

// Address kinds.
const (
	// AddressWorkload is a workload IP.
	AddressWorkload AddressKind = iota + 1
	// AddressService is a service VIP.
	AddressService
)

// Address is one entry of the address index: an IP and what it names.
type Address struct {
	// Kind says which of Workload and Service is set.
	Kind AddressKind
	// Workload is set for AddressWorkload.
	Workload *Workload
	// Service is set for AddressService.
	Service *Service
}

// ObjectMeta is the part of an object's metadata the model needs for conflict rules.
type ObjectMeta struct {
	// Name and Namespace of the object.
	Name      string
	Namespace string
	// Created is the creation timestamp, used by "oldest wins" rules.
	Created time.Time
}

// Key returns the object's namespace/name.
func (m ObjectMeta) Key() NamespacedName { return NamespacedName{m.Namespace, m.Name} }

// Older reports whether m sorts before o under Istio's conflict rule:
// the older creation time wins, ties broken by namespace then name.
func (m ObjectMeta) Older(o ObjectMeta) bool {
	if !m.Created.Equal(o.Created) {
		return m.Created.Before(o.Created)
	}
	if m.Namespace != o.Namespace {
		return m.Namespace < o.Namespace
	}
	return m.Name < o.Name
}

// WorkloadName is the workload name Istio's telemetry gives a pod: its
// controller's name — a ReplicaSet's without the pod-template-hash suffix,
// that is its Deployment's — else the pod's own name. controllerKind and
// controllerName describe the pod's controlling owner ("" when none).
func WorkloadName(podName, controllerKind, controllerName, templateHash string) string {
	if controllerName == "" {
		return podName
	}
	if controllerKind == "ReplicaSet" && templateHash != "" && strings.HasSuffix(controllerName, "-"+templateHash) {
		return strings.TrimSuffix(controllerName, "-"+templateHash)
	}
	return controllerName
}
