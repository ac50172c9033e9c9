package mesh

import (
	"net/netip"
	"sort"
	"strconv"
	"strings"

	"google.golang.org/protobuf/proto"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// SnapshotFromResources builds the node agent's model from the resources
// meshd pushed (pkg/xds/client's store): list returns every resource of a
// type URL. The address index gives every destination; the full Workload
// resources (this node's pods) add service accounts, waypoints and health;
// PeerAuthentication and Authorization resources are bound to the workloads
// they name. Malformed addresses are skipped.
func SnapshotFromResources(trustDomain string, list func(typeURL string) []proto.Message) *model.Snapshot {
	workloads := map[string]*model.Workload{}
	services := map[string]*model.Service{} // by "<namespace>/<hostname>"
	waypoints := map[model.NamespacedName]*model.Waypoint{}

	waypointRef := func(g *meshv1.GatewayAddress) *model.WaypointRef {
		if g == nil || g.GetName() == "" {
			return nil
		}
		key := model.NamespacedName{Namespace: g.GetNamespace(), Name: g.GetName()}
		addrs := parseAddrs([]string{g.GetAddress()})
		if _, ok := waypoints[key]; !ok {
			waypoints[key] = &model.Waypoint{Name: key.Name, Namespace: key.Namespace,
				For: model.WaypointFor(g.GetWaypointFor()), Addresses: addrs, Identity: g.GetIdentity()}
		}
		return &model.WaypointRef{Waypoint: key, Addresses: addrs}
	}
	bindings := func(m map[string]*meshv1.PortList) []model.ServiceBinding {
		var out []model.ServiceBinding
		for key, pl := range m {
			b := model.ServiceBinding{Hostname: hostOf(key), Service: model.NamespacedName{Namespace: nsOf(key)}, Ports: map[uint32]uint32{}}
			for _, p := range pl.GetPorts() {
				b.Ports[p.GetServicePort()] = p.GetTargetPort()
			}
			out = append(out, b)
		}
		sort.Slice(out, func(i, j int) bool { return out[i].Hostname < out[j].Hostname })
		return out
	}

	for _, m := range list(meshv1.AddressType) {
		a, ok := m.(*meshv1.Address)
		if !ok {
			continue
		}
		if w := a.GetWorkload(); w != nil {
			workloads[w.GetUid()] = &model.Workload{
				UID: w.GetUid(), Kind: model.KindPod, Name: w.GetName(), Namespace: w.GetNamespace(),
				IPs: parseAddrs(w.GetAddresses()), Node: w.GetNode(), Identity: w.GetIdentity(),
				Enrolled: w.GetEnrolled(), CanonicalName: w.GetCanonicalName(), Services: bindings(w.GetServices()),
				Ready: true,
			}
		}
		if s := a.GetService(); s != nil {
			svc := &model.Service{
				Name: s.GetName(), Namespace: s.GetNamespace(),
				Hostnames: append([]string{s.GetHostname()}, s.GetAdditionalHostnames()...),
				VIPs:      parseAddrs(s.GetVips()), Waypoint: waypointRef(s.GetWaypoint()),
				External: s.GetExternal(), Resolution: s.GetResolution(),
				ExportTo: s.GetExportTo(),
			}
			for _, p := range s.GetPorts() {
				svc.Ports = append(svc.Ports, model.ServicePort{Name: p.GetName(), Port: p.GetPort(), TargetPort: p.GetTargetPort(), AppProtocol: p.GetAppProtocol(), Protocol: "TCP"})
			}
			for _, se := range s.GetStaticEndpoints() {
				ep := model.Endpoint{Addresses: parseAddrs(se.GetAddresses()), Hostname: se.GetHostname(), Ports: map[uint32]uint32{}, Ready: true}
				for _, p := range se.GetPorts() {
					ep.Ports[p.GetServicePort()] = p.GetTargetPort()
				}
				svc.Endpoints = append(svc.Endpoints, ep)
			}
			services[s.GetNamespace()+"/"+s.GetHostname()] = svc
		}
	}
	for _, m := range list(meshv1.WorkloadType) {
		w, ok := m.(*meshv1.Workload)
		if !ok {
			continue
		}
		mw, ok := workloads[w.GetUid()]
		if !ok {
			mw = &model.Workload{UID: w.GetUid(), Kind: model.KindPod, Name: w.GetName(), Namespace: w.GetNamespace(),
				IPs: parseAddrs(w.GetAddresses()), Node: w.GetNode(), Identity: w.GetIdentity(), Enrolled: w.GetEnrolled(),
				CanonicalName: w.GetCanonicalName(), Services: bindings(w.GetServices())}
			workloads[w.GetUid()] = mw
		}
		mw.ServiceAccount = w.GetServiceAccount()
		mw.CanonicalRevision = w.GetCanonicalRevision()
		mw.Waypoint = waypointRef(w.GetWaypoint())
		mw.Ready = w.GetStatus() == meshv1.WorkloadStatus_HEALTHY
	}
	// Workload endpoints of services come from the workloads' bindings.
	uids := make([]string, 0, len(workloads))
	for uid := range workloads {
		uids = append(uids, uid)
	}
	sort.Strings(uids)
	for _, uid := range uids {
		w := workloads[uid]
		for _, b := range w.Services {
			svc, ok := services[b.Service.Namespace+"/"+b.Hostname]
			if !ok {
				continue
			}
			svc.Endpoints = append(svc.Endpoints, model.Endpoint{WorkloadUID: uid, Addresses: w.IPs, Ports: b.Ports, Ready: w.Ready})
		}
	}
	for _, m := range list(meshv1.PeerAuthenticationType) {
		p, ok := m.(*meshv1.PeerAuthentication)
		if !ok {
			continue
		}
		if w, ok := workloads[p.GetWorkloadUid()]; ok {
			res := model.PeerAuthResult{Mode: mtlsMode(p.GetMode())}
			if len(p.GetPortModes()) > 0 {
				res.PortModes = map[uint32]model.MTLSMode{}
				for port, mode := range p.GetPortModes() {
					res.PortModes[port] = mtlsMode(mode)
				}
			}
			w.PeerAuthentication = res
		}
	}
	var authz []*model.AuthorizationPolicy
	for _, m := range list(meshv1.AuthorizationType) {
		a, ok := m.(*meshv1.Authorization)
		if !ok {
			continue
		}
		ap := &model.AuthorizationPolicy{Policy: policyOf(a), Mesh: a.GetScope() == meshv1.Authorization_MESH}
		authz = append(authz, ap)
		key := ap.Key()
		bind := func(w *model.Workload) { w.AuthorizationPolicies = append(w.AuthorizationPolicies, key) }
		switch a.GetScope() {
		case meshv1.Authorization_MESH:
			for _, uid := range uids {
				bind(workloads[uid])
			}
		case meshv1.Authorization_NAMESPACE:
			for _, uid := range uids {
				if workloads[uid].Namespace == a.GetNamespace() {
					bind(workloads[uid])
				}
			}
		case meshv1.Authorization_WORKLOAD:
			for _, uid := range a.GetWorkloadUids() {
				if w, ok := workloads[uid]; ok {
					bind(w)
				}
			}
		}
	}
	in := model.SnapshotInput{TrustDomain: trustDomain, AuthorizationPolicies: authz}
	for _, uid := range uids {
		w := workloads[uid]
		sort.Slice(w.AuthorizationPolicies, func(i, j int) bool {
			return w.AuthorizationPolicies[i].String() < w.AuthorizationPolicies[j].String()
		})
		in.Workloads = append(in.Workloads, w)
	}
	skeys := make([]string, 0, len(services))
	for k := range services {
		skeys = append(skeys, k)
	}
	sort.Strings(skeys)
	for _, k := range skeys {
		in.Services = append(in.Services, services[k])
	}
	for _, wp := range waypoints {
		in.Waypoints = append(in.Waypoints, wp)
	}
	sort.Slice(in.Waypoints, func(i, j int) bool { return in.Waypoints[i].Key().String() < in.Waypoints[j].Key().String() })
	return model.NewSnapshot(in)
}

func policyOf(a *meshv1.Authorization) *policy.Policy {
	p := &policy.Policy{Name: a.GetName(), Namespace: a.GetNamespace(), DryRun: a.GetDryRun()}
	switch a.GetAction() {
	case meshv1.Authorization_ALLOW:
		p.Action = policy.Allow
	case meshv1.Authorization_DENY:
		p.Action = policy.Deny
	case meshv1.Authorization_AUDIT:
		p.Action = policy.Audit
	}
	for _, r := range a.GetRules() {
		var pr policy.Rule
		for _, f := range r.GetFrom() {
			pr.From = append(pr.From, policy.Source{
				Principals: f.GetPrincipals(), NotPrincipals: f.GetNotPrincipals(),
				Namespaces: f.GetNamespaces(), NotNamespaces: f.GetNotNamespaces(),
				IPBlocks: f.GetIpBlocks(), NotIPBlocks: f.GetNotIpBlocks(),
			})
		}
		for _, t := range r.GetTo() {
			pr.To = append(pr.To, policy.Operation{Ports: portStrings(t.GetPorts()), NotPorts: portStrings(t.GetNotPorts())})
			// pkg/policy has no destination IP blocks in an operation; a
			// destination.ip condition says the same for a rule with one
			// "to" (with several, it narrows the whole rule).
			if len(t.GetIpBlocks()) > 0 || len(t.GetNotIpBlocks()) > 0 {
				pr.When = append(pr.When, policy.Condition{Key: "destination.ip", Values: t.GetIpBlocks(), NotValues: t.GetNotIpBlocks()})
			}
		}
		for _, c := range r.GetWhen() {
			pr.When = append(pr.When, policy.Condition{Key: c.GetKey(), Values: c.GetValues(), NotValues: c.GetNotValues()})
		}
		p.Rules = append(p.Rules, pr)
	}
	return p
}

func portStrings(ports []uint32) []string {
	var out []string
	for _, p := range ports {
		out = append(out, strconv.FormatUint(uint64(p), 10))
	}
	return out
}

func mtlsMode(m meshv1.PeerAuthentication_Mode) model.MTLSMode {
	switch m {
	case meshv1.PeerAuthentication_STRICT:
		return model.MTLSStrict
	case meshv1.PeerAuthentication_DISABLE:
		return model.MTLSDisable
	}
	return model.MTLSPermissive
}

func parseAddrs(ss []string) []netip.Addr {
	var out []netip.Addr
	for _, s := range ss {
		if a, err := netip.ParseAddr(s); err == nil {
			out = append(out, a.Unmap())
		}
	}
	return out
}

// nsOf and hostOf split a service key "<namespace>/<hostname>".
func nsOf(key string) string {
	ns, _, _ := strings.Cut(key, "/")
	return ns
}

func hostOf(key string) string {
	_, host, ok := strings.Cut(key, "/")
	if !ok {
		return key
	}
	return host
}
