package model

import (
	"net/netip"
	"reflect"
	"sort"

	"github.com/meshlet/meshlet/pkg/policy"
)

// SnapshotInput is everything a Snapshot is built from. NewSnapshot takes
// ownership of the slices and of the values they point to.
type SnapshotInput struct {
	// Version identifies the build; it must grow with each build so clients can
	// order snapshots. Zero is allowed for tests.
	Version uint64
	// TrustDomain is the SPIFFE trust domain; "" means "cluster.local".
	TrustDomain string
	// TrustDomainAliases are the mesh config's trustDomainAliases that are
	// valid trust domains: peers of these pass as peers of TrustDomain
	// (Istio's trust domain migration). Nil: none.
	TrustDomainAliases []string
	// RootNamespace is the mesh root namespace for mesh-wide policies; "" means "istio-system".
	RootNamespace string
	// Workloads are all workloads, enrolled or not (the address index needs both).
	Workloads []*Workload
	// Services are all services and ServiceEntries.
	Services []*Service
	// Waypoints are all waypoint Gateways.
	Waypoints []*Waypoint
	// PeerAuthentications are the translated PeerAuthentication objects.
	PeerAuthentications []*PeerAuthentication
	// AuthorizationPolicies are the translated AuthorizationPolicy objects.
	AuthorizationPolicies []*AuthorizationPolicy
	// L7 is the L7 configuration of each waypoint, by the waypoint's name.
	L7 map[NamespacedName]*L7Config
}

// Snapshot is one immutable build of the mesh model with its indexes.
type Snapshot struct {
	version       uint64
	trustDomain   string
	tdAliases     []string
	rootNamespace string

	workloads  map[string]*Workload
	services   map[string]*Service
	waypoints  map[NamespacedName]*Waypoint
	peerAuths  []*PeerAuthentication
	authz      map[NamespacedName]*AuthorizationPolicy
	l7         map[NamespacedName]*L7Config
	byIP       map[netip.Addr]Address
	byNode     map[string][]*Workload
	byHost     map[string]*Service
	byWaypoint map[NamespacedName]WaypointBindings
}

// WaypointBindings lists what a waypoint serves.
type WaypointBindings struct {
	// Services bound to the waypoint, sorted by key.
	Services []*Service
	// Workloads bound to the waypoint, sorted by UID.
	Workloads []*Workload
}

// NewSnapshot builds the indexes. When two objects claim one IP, a service VIP
// wins over a workload and otherwise the first in input order wins; the
// builder reports such conflicts before they get here.
func NewSnapshot(in SnapshotInput) *Snapshot {
	s := &Snapshot{
		version:       in.Version,
		trustDomain:   in.TrustDomain,
		tdAliases:     in.TrustDomainAliases,
		rootNamespace: in.RootNamespace,
		workloads:     make(map[string]*Workload, len(in.Workloads)),
		services:      make(map[string]*Service, len(in.Services)),
		waypoints:     make(map[NamespacedName]*Waypoint, len(in.Waypoints)),
		peerAuths:     in.PeerAuthentications,
		l7:            in.L7,
		authz:         make(map[NamespacedName]*AuthorizationPolicy, len(in.AuthorizationPolicies)),
		byIP:          make(map[netip.Addr]Address, len(in.Workloads)+len(in.Services)),
		byNode:        make(map[string][]*Workload),
		byHost:        make(map[string]*Service, len(in.Services)),
		byWaypoint:    make(map[NamespacedName]WaypointBindings),
	}
	if s.trustDomain == "" {
		s.trustDomain = "cluster.local"
	}
	if s.rootNamespace == "" {
		s.rootNamespace = "istio-system"
	}
	for _, svc := range in.Services {
		s.services[svc.Key()] = svc
		for _, h := range svc.Hostnames {
			if _, dup := s.byHost[h]; !dup {
				s.byHost[h] = svc
			}
		}
		for _, ip := range svc.VIPs {
			if _, dup := s.byIP[ip]; !dup {
				s.byIP[ip] = Address{Kind: AddressService, Service: svc}
			}
		}
		if svc.Waypoint != nil {
			b := s.byWaypoint[svc.Waypoint.Waypoint]
			b.Services = append(b.Services, svc)
			s.byWaypoint[svc.Waypoint.Waypoint] = b
		}
	}
	for _, w := range in.Workloads {
		s.workloads[w.UID] = w
		for _, ip := range w.IPs {
			if _, dup := s.byIP[ip]; !dup {
				s.byIP[ip] = Address{Kind: AddressWorkload, Workload: w}
			}
		}
		if w.Node != "" {
			s.byNode[w.Node] = append(s.byNode[w.Node], w)
		}
		if w.Waypoint != nil {
			b := s.byWaypoint[w.Waypoint.Waypoint]
			b.Workloads = append(b.Workloads, w)
			s.byWaypoint[w.Waypoint.Waypoint] = b
		}
	}
	for _, a := range in.AuthorizationPolicies {
		s.authz[a.Key()] = a
	}
	for _, wp := range in.Waypoints {
		s.waypoints[wp.Key()] = wp
	}
	for _, ws := range s.byNode {
		sort.Slice(ws, func(i, j int) bool { return ws[i].UID < ws[j].UID })
	}
	for k, b := range s.byWaypoint {
		sort.Slice(b.Services, func(i, j int) bool { return b.Services[i].Key() < b.Services[j].Key() })
		sort.Slice(b.Workloads, func(i, j int) bool { return b.Workloads[i].UID < b.Workloads[j].UID })
		s.byWaypoint[k] = b
	}
	return s
}

// Version returns the build's version.
func (s *Snapshot) Version() uint64 { return s.version }

// TrustDomain returns the SPIFFE trust domain.
func (s *Snapshot) TrustDomain() string { return s.trustDomain }

// TrustDomainAliases returns the trust domain's aliases, nil for none.
func (s *Snapshot) TrustDomainAliases() []string { return s.tdAliases }

// RootNamespace returns the mesh root namespace.
func (s *Snapshot) RootNamespace() string { return s.rootNamespace }

// Workload returns the workload with the given UID.
func (s *Snapshot) Workload(uid string) (*Workload, bool) {
	w, ok := s.workloads[uid]
	return w, ok
}

// Service returns the service with the given key (see Service.Key).
func (s *Snapshot) Service(key string) (*Service, bool) {
	svc, ok := s.services[key]
	return svc, ok
}

// Waypoint returns the waypoint with the given namespace/name.
func (s *Snapshot) Waypoint(name NamespacedName) (*Waypoint, bool) {
	w, ok := s.waypoints[name]
	return w, ok
}

// Lookup resolves an IP to the workload or service that owns it.
func (s *Snapshot) Lookup(ip netip.Addr) (Address, bool) {
	a, ok := s.byIP[ip.Unmap()]
	return a, ok
}

// ServiceByHostname returns the service answering to a hostname.
func (s *Snapshot) ServiceByHostname(host string) (*Service, bool) {
	svc, ok := s.byHost[host]
	return svc, ok
}

// WorkloadsOnNode returns the workloads scheduled on a node, sorted by UID.
// The slice is shared: do not modify it.
func (s *Snapshot) WorkloadsOnNode(node string) []*Workload { return s.byNode[node] }

// WaypointBindings returns what a waypoint serves.
func (s *Snapshot) WaypointBindings(name NamespacedName) WaypointBindings { return s.byWaypoint[name] }

// PeerAuthentications returns the translated PeerAuthentication objects.
func (s *Snapshot) PeerAuthentications() []*PeerAuthentication { return s.peerAuths }

// AuthorizationPolicy returns the policy with the given namespace/name.
func (s *Snapshot) AuthorizationPolicy(name NamespacedName) (*AuthorizationPolicy, bool) {
	a, ok := s.authz[name]
	return a, ok
}

// AuthorizationPolicies returns every policy, sorted by namespace/name.
func (s *Snapshot) AuthorizationPolicies() []*AuthorizationPolicy {
	out := make([]*AuthorizationPolicy, 0, len(s.authz))
	for _, a := range s.authz {
		out = append(out, a)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key().String() < out[j].Key().String() })
	return out
}

// PoliciesFor returns the L4 policies bound to a workload, in the order of
// Workload.AuthorizationPolicies, ready for policy.EvaluateL4.
func (s *Snapshot) PoliciesFor(w *Workload) []*policy.Policy {
	out := make([]*policy.Policy, 0, len(w.AuthorizationPolicies))
	for _, n := range w.AuthorizationPolicies {
		if a, ok := s.authz[n]; ok {
			out = append(out, a.Policy)
		}
	}
	return out
}

// L7Config returns the L7 configuration of a waypoint.
func (s *Snapshot) L7Config(waypoint NamespacedName) (*L7Config, bool) {
	c, ok := s.l7[waypoint]
	return c, ok
}

// L7Names returns the names of every waypoint and ingress gateway that has
// an L7 configuration, sorted; ingress gateways are not in Waypoints.
func (s *Snapshot) L7Names() []NamespacedName {
	out := make([]NamespacedName, 0, len(s.l7))
	for k := range s.l7 {
		out = append(out, k)
	}
	sortNames(out)
	return out
}

// Workloads returns every workload, sorted by UID.
func (s *Snapshot) Workloads() []*Workload {
	out := make([]*Workload, 0, len(s.workloads))
	for _, w := range s.workloads {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].UID < out[j].UID })
	return out
}

// Services returns every service, sorted by key.
func (s *Snapshot) Services() []*Service {
	out := make([]*Service, 0, len(s.services))
	for _, svc := range s.services {
		out = append(out, svc)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key() < out[j].Key() })
	return out
}

// Waypoints returns every waypoint, sorted by namespace/name.
func (s *Snapshot) Waypoints() []*Waypoint {
	out := make([]*Waypoint, 0, len(s.waypoints))
	for _, w := range s.waypoints {
		out = append(out, w)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key().String() < out[j].Key().String() })
	return out
}

// Delta is what changed between two snapshots, by key; each list is sorted.
type Delta struct {
	// WorkloadsChanged are UIDs of workloads added or modified.
	WorkloadsChanged []string
	// WorkloadsRemoved are UIDs of workloads gone.
	WorkloadsRemoved []string
	// ServicesChanged are keys of services added or modified.
	ServicesChanged []string
	// ServicesRemoved are keys of services gone.
	ServicesRemoved []string
	// WaypointsChanged are waypoints added or modified.
	WaypointsChanged []NamespacedName
	// WaypointsRemoved are waypoints gone.
	WaypointsRemoved []NamespacedName
	// PoliciesChanged are authorization policies added or modified.
	PoliciesChanged []NamespacedName
	// PoliciesRemoved are authorization policies gone.
	PoliciesRemoved []NamespacedName
	// L7Changed are waypoints whose L7 configuration was added or modified.
	L7Changed []NamespacedName
	// L7Removed are waypoints whose L7 configuration is gone.
	L7Removed []NamespacedName
}

// Empty reports whether nothing changed.
func (d Delta) Empty() bool {
	return len(d.WorkloadsChanged)+len(d.WorkloadsRemoved)+len(d.ServicesChanged)+
		len(d.ServicesRemoved)+len(d.WaypointsChanged)+len(d.WaypointsRemoved)+
		len(d.PoliciesChanged)+len(d.PoliciesRemoved)+len(d.L7Changed)+len(d.L7Removed) == 0
}

// Diff returns what changed from old to s. old may be nil (everything is new).
// Values shared by pointer are unchanged by construction; others are compared
// deeply.
func (s *Snapshot) Diff(old *Snapshot) Delta {
	if old == nil {
		old = &Snapshot{}
	}
	var d Delta
	d.WorkloadsChanged, d.WorkloadsRemoved = diffMaps(old.workloads, s.workloads)
	d.ServicesChanged, d.ServicesRemoved = diffMaps(old.services, s.services)
	d.WaypointsChanged, d.WaypointsRemoved = diffMaps(old.waypoints, s.waypoints)
	d.PoliciesChanged, d.PoliciesRemoved = diffMaps(old.authz, s.authz)
	d.L7Changed, d.L7Removed = diffMaps(old.l7, s.l7)
	sort.Strings(d.WorkloadsChanged)
	sort.Strings(d.WorkloadsRemoved)
	sort.Strings(d.ServicesChanged)
	sort.Strings(d.ServicesRemoved)
	sortNames(d.WaypointsChanged)
	sortNames(d.WaypointsRemoved)
	sortNames(d.PoliciesChanged)
	sortNames(d.PoliciesRemoved)
	sortNames(d.L7Changed)
	sortNames(d.L7Removed)
	return d
}

func diffMaps[K comparable, V any](old, cur map[K]*V) (changed, removed []K) {
	for k, v := range cur {
		o, ok := old[k]
		if !ok || (o != v && !reflect.DeepEqual(o, v)) {
			changed = append(changed, k)
		}
	}
	for k := range old {
		if _, ok := cur[k]; !ok {
			removed = append(removed, k)
		}
	}
	return changed, removed
}
