// Package modelview rebuilds a pkg/model Snapshot from the resources an xDS
// client (pkg/xds/client) holds, so that node agents and waypoints answer
// their questions (where does this IP go, which mTLS mode, which L4 policies)
// with the same model meshd built, through the same code.
//
// The view is partial by design: full workloads (service account, revision)
// only for what the client was sent in full, the rest from the address
// index; peer authentication and authorizations bind to both. Authorization policies come back as their L4
// form (meshd already dropped or trimmed rules that need L7 attributes).
//
// This package must not do I/O or keep state: Build is a pure function of
// the client's store.
package modelview

import (
	"net/netip"
	"slices"
	"sort"
	"strconv"
	"time"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/xds/client"
)

// Lister is the part of *client.Client that Build reads.
type Lister interface {
	List(typeURL string) map[string]client.Resource
}

// Build makes a snapshot of what l holds, with the given version, in the
// trust domain of the trust bundle l holds (the first by name if several).
func Build(l Lister, version uint64) *model.Snapshot {
	var td string
	for name := range l.List(meshv1.TrustBundleType) {
		if td == "" || name < td {
			td = name
		}
	}
	return BuildIn(td, l, version)
}

// BuildIn is Build for a client that knows its own trust domain (a node
// agent's --trust-domain). The snapshot's trust domain aliases are those
// its trust bundle carries.
func BuildIn(trustDomain string, l Lister, version uint64) *model.Snapshot {
	b := &builder{waypoints: map[model.NamespacedName]*model.Waypoint{}}
	full := l.List(meshv1.WorkloadType)
	peerAuthn := l.List(meshv1.PeerAuthenticationType)
	authz := l.List(meshv1.AuthorizationType)

	in := model.SnapshotInput{Version: version, TrustDomain: trustDomain}
	if tb, ok := l.List(meshv1.TrustBundleType)[trustDomain].Message.(*meshv1.TrustBundle); ok {
		in.TrustDomainAliases = slices.Clone(tb.GetAliases())
	}
	var policies []*meshv1.Authorization
	for _, r := range authz {
		a, ok := r.Message.(*meshv1.Authorization)
		if !ok {
			continue
		}
		policies = append(policies, a)
		in.AuthorizationPolicies = append(in.AuthorizationPolicies, fromAuthorization(a))
	}
	sort.Slice(in.AuthorizationPolicies, func(i, j int) bool {
		return in.AuthorizationPolicies[i].Key().String() < in.AuthorizationPolicies[j].Key().String()
	})

	services := map[string]*model.Service{} // address-index key → service
	var workloads []*model.Workload
	for name, r := range l.List(meshv1.AddressType) {
		addr, ok := r.Message.(*meshv1.Address)
		if !ok {
			continue
		}
		switch a := addr.GetType().(type) {
		case *meshv1.Address_Service:
			services[name] = b.service(a.Service)
		case *meshv1.Address_Workload:
			if _, ok := full[name]; ok {
				continue
			}
			workloads = append(workloads, b.workloadAddress(a.Workload))
		}
	}
	named := map[*model.Workload][]string{} // full workloads: the policies meshd says are bound
	for _, r := range full {
		if mw, ok := r.Message.(*meshv1.Workload); ok {
			w := b.workload(mw)
			named[w] = mw.GetAuthorizationPolicies()
			workloads = append(workloads, w)
		}
	}
	// Policies bind to every workload, the address index's too: a local pod
	// whose full resource trails its address (types arrive in separate
	// responses) is not left without its namespace's and the mesh's
	// policies meanwhile.
	for _, w := range workloads {
		pa, hasPA := peerAuthn[w.UID].Message.(*meshv1.PeerAuthentication)
		if hasPA {
			w.PeerAuthentication = fromPeerAuthn(pa)
		}
		w.AuthorizationPolicies = bound(policies, w)
		names, isFull := named[w]
		w.Partial = !isFull || !hasPA || !allBound(names, w.AuthorizationPolicies)
	}
	sort.Slice(workloads, func(i, j int) bool { return workloads[i].UID < workloads[j].UID })

	// Endpoints: every workload that names a service in its services map.
	for _, w := range workloads {
		for i, sb := range w.Services {
			svc, ok := services[b.bindingKeys[w][i]]
			if !ok {
				continue
			}
			w.Services[i].Service = model.NamespacedName{Namespace: svc.Namespace, Name: svc.Name}
			svc.Endpoints = append(svc.Endpoints, model.Endpoint{WorkloadUID: w.UID, Addresses: w.IPs, Ports: sb.Ports, Ready: w.Ready})
		}
	}
	keys := make([]string, 0, len(services))
	for k := range services {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		in.Services = append(in.Services, services[k])
	}
	in.Workloads = workloads
	for _, wp := range b.waypoints {
		in.Waypoints = append(in.Waypoints, wp)
	}
	sort.Slice(in.Waypoints, func(i, j int) bool { return in.Waypoints[i].Key().String() < in.Waypoints[j].Key().String() })
	return model.NewSnapshot(in)
}

type builder struct {
	waypoints map[model.NamespacedName]*model.Waypoint
	// bindingKeys keeps, per workload, the address-index key of each of its
	// service bindings (the model names services by namespace/name, the
	// wire by namespace/hostname).
	bindingKeys map[*model.Workload][]string
}

// addrs parses IPs, skipping malformed ones (meshd validates what it
// sends); IPv4-mapped IPv6 comes back as IPv4, as the data path sees it.
func addrs(in []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range in {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

func (b *builder) waypointRef(ga *meshv1.GatewayAddress) *model.WaypointRef {
	if ga == nil {
		return nil
	}
	key := model.NamespacedName{Namespace: ga.GetNamespace(), Name: ga.GetName()}
	ref := &model.WaypointRef{Waypoint: key, Addresses: addrs([]string{ga.GetAddress()})}
	if _, ok := b.waypoints[key]; !ok {
		b.waypoints[key] = &model.Waypoint{
			Name: key.Name, Namespace: key.Namespace, For: model.WaypointFor(ga.GetWaypointFor()),
			Addresses: ref.Addresses, Identity: ga.GetIdentity(),
		}
	}
	return ref
}

func (b *builder) bindings(w *model.Workload, m map[string]*meshv1.PortList) {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		ports := map[uint32]uint32{}
		for _, p := range m[k].GetPorts() {
			ports[p.GetServicePort()] = p.GetTargetPort()
		}
		ns, host := splitKey(k)
		w.Services = append(w.Services, model.ServiceBinding{Service: model.NamespacedName{Namespace: ns}, Hostname: host, Ports: ports})
	}
	if b.bindingKeys == nil {
		b.bindingKeys = map[*model.Workload][]string{}
	}
	b.bindingKeys[w] = keys
}

func splitKey(k string) (ns, host string) {
	for i := 0; i < len(k); i++ {
		if k[i] == '/' {
			return k[:i], k[i+1:]
		}
	}
	return "", k
}

func (b *builder) workload(mw *meshv1.Workload) *model.Workload {
	w := &model.Workload{
		UID: mw.GetUid(), Kind: model.KindPod, Name: mw.GetName(), Namespace: mw.GetNamespace(),
		IPs: addrs(mw.GetAddresses()), Node: mw.GetNode(), ServiceAccount: mw.GetServiceAccount(),
		Identity: mw.GetIdentity(), CanonicalName: mw.GetCanonicalName(), CanonicalRevision: mw.GetCanonicalRevision(), WorkloadName: mw.GetWorkloadName(),
		Enrolled: mw.GetEnrolled(), Waypoint: b.waypointRef(mw.GetWaypoint()),
		Ready: mw.GetStatus() == meshv1.WorkloadStatus_HEALTHY, Locality: locality(mw.GetLocality()),
	}
	b.bindings(w, mw.GetServices())
	return w
}

func locality(l *meshv1.Locality) model.Locality {
	return model.Locality{Region: l.GetRegion(), Zone: l.GetZone(), Subzone: l.GetSubzone()}
}

func (b *builder) workloadAddress(mw *meshv1.WorkloadAddress) *model.Workload {
	w := &model.Workload{
		UID: mw.GetUid(), Kind: model.KindPod, Name: mw.GetName(), Namespace: mw.GetNamespace(),
		IPs: addrs(mw.GetAddresses()), Node: mw.GetNode(), Identity: mw.GetIdentity(),
		CanonicalName: mw.GetCanonicalName(), WorkloadName: mw.GetWorkloadName(), Enrolled: mw.GetEnrolled(), Waypoint: b.waypointRef(mw.GetWaypoint()),
		Ready: mw.GetStatus() == meshv1.WorkloadStatus_HEALTHY, Locality: locality(mw.GetLocality()),
	}
	b.bindings(w, mw.GetServices())
	return w
}

var algorithms = map[meshv1.LoadBalancing_Algorithm]model.LoadBalancing{
	meshv1.LoadBalancing_ROUND_ROBIN:   model.LBRoundRobin,
	meshv1.LoadBalancing_LEAST_REQUEST: model.LBLeastRequest,
	meshv1.LoadBalancing_RANDOM:        model.LBRandom,
	meshv1.LoadBalancing_PASSTHROUGH:   model.LBPassthrough,
}

func (b *builder) service(ms *meshv1.Service) *model.Service {
	s := &model.Service{
		Name: ms.GetName(), Namespace: ms.GetNamespace(), Source: model.SourceKubernetes,
		Hostnames: append([]string{ms.GetHostname()}, ms.GetAdditionalHostnames()...),
		VIPs:      addrs(ms.GetVips()), Waypoint: b.waypointRef(ms.GetWaypoint()),
		LoadBalancing: algorithms[ms.GetLoadBalancing().GetAlgorithm()],
		External:      ms.GetExternal(), Resolution: ms.GetResolution(),
		ExportTo: ms.GetExportTo(),

		TrafficDistribution: model.TrafficDistribution(ms.GetTrafficDistribution()),
		NodeLocal:           ms.GetNodeLocal(),

		SessionAffinity: time.Duration(ms.GetSessionAffinitySeconds()) * time.Second,
	}
	if s.Resolution != "" {
		s.Source = model.SourceServiceEntry
	}
	for _, p := range ms.GetPorts() {
		s.Ports = append(s.Ports, model.ServicePort{Name: p.GetName(), Port: p.GetPort(), Protocol: "TCP", AppProtocol: p.GetAppProtocol(), TargetPort: p.GetTargetPort()})
	}
	for _, ep := range ms.GetStaticEndpoints() {
		ports := map[uint32]uint32{}
		for _, p := range ep.GetPorts() {
			ports[p.GetServicePort()] = p.GetTargetPort()
		}
		s.Endpoints = append(s.Endpoints, model.Endpoint{Addresses: addrs(ep.GetAddresses()), Hostname: ep.GetHostname(), Ports: ports, Ready: true})
	}
	return s
}

var modes = map[meshv1.PeerAuthentication_Mode]model.MTLSMode{
	meshv1.PeerAuthentication_UNSET:      model.MTLSUnset,
	meshv1.PeerAuthentication_PERMISSIVE: model.MTLSPermissive,
	meshv1.PeerAuthentication_STRICT:     model.MTLSStrict,
	meshv1.PeerAuthentication_DISABLE:    model.MTLSDisable,
}

func fromPeerAuthn(pa *meshv1.PeerAuthentication) model.PeerAuthResult {
	r := model.PeerAuthResult{Mode: modes[pa.GetMode()]}
	if r.Mode == model.MTLSUnset {
		r.Mode = model.MTLSPermissive
	}
	if len(pa.GetPortModes()) > 0 {
		r.PortModes = map[uint32]model.MTLSMode{}
		for p, m := range pa.GetPortModes() {
			if m != meshv1.PeerAuthentication_UNSET {
				r.PortModes[p] = modes[m]
			}
		}
	}
	return r
}

var actions = map[meshv1.Authorization_Action]policy.Action{
	meshv1.Authorization_ALLOW: policy.Allow,
	meshv1.Authorization_DENY:  policy.Deny,
	meshv1.Authorization_AUDIT: policy.Audit,
}

func fromAuthorization(a *meshv1.Authorization) *model.AuthorizationPolicy {
	p := &policy.Policy{Name: a.GetName(), Namespace: a.GetNamespace(), Action: actions[a.GetAction()], DryRun: a.GetDryRun()}
	for _, r := range a.GetRules() {
		var pr policy.Rule
		for _, s := range r.GetFrom() {
			pr.From = append(pr.From, policy.Source{
				Principals: s.GetPrincipals(), NotPrincipals: s.GetNotPrincipals(),
				Namespaces: s.GetNamespaces(), NotNamespaces: s.GetNotNamespaces(),
				IPBlocks: s.GetIpBlocks(), NotIPBlocks: s.GetNotIpBlocks(),
			})
		}
		for _, d := range r.GetTo() {
			pr.To = append(pr.To, policy.Operation{Ports: portStrings(d.GetPorts()), NotPorts: portStrings(d.GetNotPorts())})
			// pkg/policy has no destination IP blocks in an operation; a
			// destination.ip condition says the same for a rule with one
			// "to" (with several, it narrows the whole rule).
			if len(d.GetIpBlocks()) > 0 || len(d.GetNotIpBlocks()) > 0 {
				pr.When = append(pr.When, policy.Condition{Key: "destination.ip", Values: d.GetIpBlocks(), NotValues: d.GetNotIpBlocks()})
			}
		}
		for _, c := range r.GetWhen() {
			pr.When = append(pr.When, policy.Condition{Key: c.GetKey(), Values: c.GetValues(), NotValues: c.GetNotValues()})
		}
		p.Rules = append(p.Rules, pr)
	}
	ap := &model.AuthorizationPolicy{Policy: p, Mesh: a.GetScope() == meshv1.Authorization_MESH}
	if a.GetScope() == meshv1.Authorization_WORKLOAD {
		ap.Selector = map[string]string{} // resolved: see bound
	}
	return ap
}

func portStrings(ps []uint32) []string {
	var out []string
	for _, p := range ps {
		out = append(out, strconv.FormatUint(uint64(p), 10))
	}
	return out
}

// allBound reports whether every "namespace/name" in names is among bound.
func allBound(names []string, bound []model.NamespacedName) bool {
	for _, n := range names {
		ns, name := splitKey(n)
		if !slices.Contains(bound, model.NamespacedName{Namespace: ns, Name: name}) {
			return false
		}
	}
	return true
}

// bound lists the policies that apply to w, sorted, as the model's
// Workload.AuthorizationPolicies.
func bound(policies []*meshv1.Authorization, w *model.Workload) []model.NamespacedName {
	var out []model.NamespacedName
	for _, a := range policies {
		ok := false
		switch a.GetScope() {
		case meshv1.Authorization_MESH:
			ok = true
		case meshv1.Authorization_NAMESPACE:
			ok = a.GetNamespace() == w.Namespace
		case meshv1.Authorization_WORKLOAD:
			for _, uid := range a.GetWorkloadUids() {
				if uid == w.UID {
					ok = true
					break
				}
			}
		}
		if ok {
			out = append(out, model.NamespacedName{Namespace: a.GetNamespace(), Name: a.GetName()})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}
