package controlplane

import (
	"cmp"
	"fmt"
	"hash/fnv"
	"net/netip"
	"regexp"
	"slices"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"
	"k8s.io/apimachinery/pkg/util/validation"

	"github.com/meshlet/meshlet/pkg/model"
)

// seSelector is a ServiceEntry whose endpoints are chosen by workload labels.
type seSelector struct {
	svc      *model.Service
	selector map[string]string
}

// ports maps the service's ports for a selected workload: the target port, or the port.
func (se seSelector) ports() map[uint32]uint32 {
	out := make(map[uint32]uint32, len(se.svc.Ports))
	for _, sp := range se.svc.Ports {
		tp := sp.TargetPort
		if tp == 0 {
			tp = sp.Port
		}
		out[sp.Port] = tp
	}
	return out
}

var resolutionNames = map[networkingapi.ServiceEntry_Resolution]string{
	networkingapi.ServiceEntry_NONE:            "NONE",
	networkingapi.ServiceEntry_STATIC:          "STATIC",
	networkingapi.ServiceEntry_DNS:             "DNS",
	networkingapi.ServiceEntry_DNS_ROUND_ROBIN: "DNS_ROUND_ROBIN",
	networkingapi.ServiceEntry_DYNAMIC_DNS:     "DYNAMIC_DNS",
}

// translateServiceEntries turns ServiceEntries into services. Istio merges
// ServiceEntries that share a host; meshlet keeps one owner per hostname so
// every client resolves a name the same way: a Kubernetes service owns its
// own hostname, and among ServiceEntries the oldest wins (Istio's general
// conflict rule). The loser is rejected, naming the owner.
func (bd *build) translateServiceEntries() {
	keys := sortedKeys(bd.in.serviceEnts)
	// Oldest first, so "oldest wins" for duplicate hosts.
	sortByAge(keys, func(k string) model.ObjectMeta {
		c := bd.in.serviceEnts[k]
		return model.ObjectMeta{Namespace: c.meta.Namespace, Name: c.meta.Name, Created: c.meta.CreationTimestamp.Time}
	})
	for _, k := range keys {
		c := bd.in.serviceEnts[k]
		r := bd.rejecter(KindServiceEntry, c.meta.Namespace, c.meta.Name)
		ms, sel := translateServiceEntry(c, r)
		if ms == nil {
			continue
		}
		ms.TrafficDistribution = bd.trafficDistribution(r, c.meta.Namespace, c.meta.Annotations, nil)
		dup := ""
		for _, h := range ms.Hostnames {
			if owner, taken := bd.hostOwners[h]; taken {
				dup = h + " is already served by " + owner
				break
			}
		}
		if dup != "" {
			r.reject("duplicate host: %s (oldest wins)", dup)
			continue
		}
		for _, h := range ms.Hostnames {
			bd.hostOwners[h] = ms.Key()
		}
		bd.addService(ms)
		if sel != nil {
			bd.seSelect = append(bd.seSelect, seSelector{svc: ms, selector: sel})
		}
	}
	bd.allocateServiceEntryVIPs(keys)
}

// autoVIPs is where ServiceEntry addresses are allocated, Istio's range for
// its automatic allocation (240.240.0.0/16, reserved class E space that no
// network routes; pods resolve to it only through the mesh's DNS proxy and
// their connections to it are captured by the node agent).
var autoVIPs = netip.MustParsePrefix("240.240.0.0/16")

// allocateServiceEntryVIPs gives a ServiceEntry with resolution DNS or
// DNS_ROUND_ROBIN and no addresses a virtual IP, as Istio's automatic
// allocation does in ambient mode: the mesh's DNS proxy answers its host
// with it, so a pod's connection to the host is the mesh's to steer (to the
// entry's waypoint, for egress, or to the addresses its endpoints resolve
// to) instead of leaving for whatever the name resolves to. The address is
// a hash of namespace/name/host in autoVIPs, probing on past an address
// taken, entries in age order (keys): an entry keeps its address while
// older ones do not change. An entry with several hosts and no endpoints is
// not given one: each host is resolved on its own there, and one address
// cannot say which (give it addresses, or one host per entry). Each
// allocation is recorded for the entry's status.addresses
// (ServiceEntryStatus); no IPv6 address is allocated (serviceentrystatus.go
// says why).
func (bd *build) allocateServiceEntryVIPs(keys []string) {
	taken := map[netip.Addr]bool{}
	for _, ms := range bd.services {
		for _, v := range ms.VIPs {
			taken[v] = true
		}
	}
	size := uint32(1) << (32 - autoVIPs.Bits())
	base := autoVIPs.Addr().As4()
	first := uint32(base[0])<<24 | uint32(base[1])<<16 | uint32(base[2])<<8 | uint32(base[3])
	for _, k := range keys {
		c := bd.in.serviceEnts[k]
		ms := bd.svcByKey[(&model.Service{Namespace: c.meta.Namespace, Name: c.meta.Name, Source: model.SourceServiceEntry}).Key()]
		if ms == nil || len(ms.VIPs) > 0 || (ms.Resolution != "DNS" && ms.Resolution != "DNS_ROUND_ROBIN") {
			continue
		}
		if len(ms.Hostnames) > 1 && len(c.spec.GetEndpoints()) == 0 {
			bd.rejecter(KindServiceEntry, c.meta.Namespace, c.meta.Name).warn("no address is allocated to an entry with several hosts and no endpoints (each host resolves on its own): set addresses, or one host per ServiceEntry, for the mesh to steer its traffic")
			continue
		}
		h := fnv.New32a()
		h.Write([]byte(c.meta.Namespace + "/" + c.meta.Name + "/" + ms.Hostname()))
		// Offsets 1 .. size-2: neither the network nor the broadcast address.
		off := h.Sum32()%(size-2) + 1
		for range size {
			n := first + off
			vip := netip.AddrFrom4([4]byte{byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
			if !taken[vip] {
				taken[vip] = true
				ms.VIPs = []netip.Addr{vip}
				if bd.autoAllocated == nil {
					bd.autoAllocated = map[string]*model.Service{}
				}
				bd.autoAllocated[k] = ms // for status.addresses
				break
			}
			off = off%(size-2) + 1
		}
	}
}

func translateServiceEntry(c config[networkingapi.ServiceEntry], r *rejections) (*model.Service, map[string]string) {
	spec := c.spec
	ms := &model.Service{Name: c.meta.Name, Namespace: c.meta.Namespace, Source: model.SourceServiceEntry}
	if len(spec.GetHosts()) == 0 {
		r.reject("hosts is empty")
		return nil, nil
	}
	seen := map[string]bool{}
	for _, h := range spec.GetHosts() {
		if msg := checkHost(h); msg != "" {
			r.reject("host %q: %s", h, msg)
			return nil, nil
		}
		if seen[h] {
			r.reject("host %q listed twice", h)
			return nil, nil
		}
		seen[h] = true
		ms.Hostnames = append(ms.Hostnames, h)
	}
	res, ok := resolutionNames[spec.GetResolution()]
	if !ok {
		r.reject("resolution %d is not NONE, STATIC, DNS, DNS_ROUND_ROBIN or DYNAMIC_DNS", spec.GetResolution())
		return nil, nil
	}
	ms.Resolution = res
	switch spec.GetLocation() {
	case networkingapi.ServiceEntry_MESH_EXTERNAL:
		ms.External = true
	case networkingapi.ServiceEntry_MESH_INTERNAL:
	default:
		r.reject("location %d is not MESH_EXTERNAL or MESH_INTERNAL", spec.GetLocation())
		return nil, nil
	}
	for _, a := range spec.GetAddresses() {
		if p, err := netip.ParsePrefix(a); err == nil {
			if p.IsSingleIP() {
				ms.VIPs = append(ms.VIPs, p.Addr().Unmap())
			} else {
				r.warn("address %q is a range; ranges are not captured by address and are ignored", a)
			}
			continue
		}
		ip, err := netip.ParseAddr(a)
		if err != nil {
			r.reject("address %q is not an IP address or CIDR", a)
			return nil, nil
		}
		ms.VIPs = append(ms.VIPs, ip.Unmap())
	}
	if len(spec.GetPorts()) == 0 {
		r.reject("ports is empty")
		return nil, nil
	}
	ports := map[uint32]bool{}
	names := map[string]bool{}
	for _, p := range spec.GetPorts() {
		if p == nil || p.GetNumber() == 0 || p.GetNumber() > 65535 {
			r.reject("port number %d out of range 1-65535", p.GetNumber())
			return nil, nil
		}
		if ports[p.GetNumber()] {
			r.reject("port %d listed twice", p.GetNumber())
			return nil, nil
		}
		ports[p.GetNumber()] = true
		if p.GetName() != "" && names[p.GetName()] {
			r.reject("port name %q listed twice", p.GetName())
			return nil, nil
		}
		names[p.GetName()] = true
		if p.GetTargetPort() > 65535 {
			r.reject("port %d targetPort %d out of range", p.GetNumber(), p.GetTargetPort())
			return nil, nil
		}
		proto := p.GetProtocol()
		app := appProtocol(&proto, "")
		if proto != "" && app == "" {
			r.reject("port %d protocol %q is not a protocol Istio knows", p.GetNumber(), proto)
			return nil, nil
		}
		l4 := "TCP"
		if app == "UDP" {
			l4 = "UDP"
		}
		ms.Ports = append(ms.Ports, model.ServicePort{Name: p.GetName(), Port: p.GetNumber(), Protocol: l4, AppProtocol: app, TargetPort: p.GetTargetPort()})
	}
	var sel map[string]string
	if ws := spec.GetWorkloadSelector(); ws != nil {
		if len(spec.GetEndpoints()) > 0 {
			r.reject("only one of workloadSelector and endpoints may be set")
			return nil, nil
		}
		sel = ws.GetLabels()
		if sel == nil {
			sel = map[string]string{}
		}
	}
	for i, ep := range spec.GetEndpoints() {
		if ep == nil {
			continue
		}
		e := model.Endpoint{Ready: true, Ports: map[uint32]uint32{}}
		addr := ep.GetAddress()
		switch {
		case addr == "":
			r.reject("endpoints[%d] has no address", i)
			return nil, nil
		case strings.HasPrefix(addr, "unix://"):
			r.reject("endpoints[%d] address %q: unix sockets are not supported", i, addr)
			return nil, nil
		}
		if ip, err := netip.ParseAddr(addr); err == nil {
			e.Addresses = []netip.Addr{ip.Unmap()}
		} else if res == "STATIC" {
			r.reject("endpoints[%d] address %q must be an IP with resolution STATIC", i, addr)
			return nil, nil
		} else {
			e.Hostname = addr
		}
		for _, sp := range ms.Ports {
			tp := sp.TargetPort
			if tp == 0 {
				tp = sp.Port
			}
			if n, ok := ep.GetPorts()[sp.Name]; ok && n > 0 && n <= 65535 {
				tp = n
			}
			e.Ports[sp.Port] = tp
		}
		ms.Endpoints = append(ms.Endpoints, e)
	}
	if (res == "DNS" || res == "DNS_ROUND_ROBIN") && sel == nil && len(ms.Endpoints) == 0 {
		// Istio: DNS resolution without endpoints resolves the hosts
		// themselves, each an endpoint on the entry's ports.
		for _, h := range ms.Hostnames {
			if strings.HasPrefix(h, "*") {
				r.reject("host %q: a wildcard host cannot be resolved; resolution %s without endpoints needs hosts that are names (or set endpoints, or resolution NONE)", h, res)
				return nil, nil
			}
			e := model.Endpoint{Hostname: h, Ready: true, Ports: map[uint32]uint32{}}
			for _, sp := range ms.Ports {
				e.Ports[sp.Port] = cmp.Or(sp.TargetPort, sp.Port)
			}
			ms.Endpoints = append(ms.Endpoints, e)
		}
	}
	if res == "STATIC" && sel == nil && len(ms.Endpoints) == 0 {
		r.warn("resolution STATIC without endpoints or workloadSelector has no endpoints")
	}
	if msg := checkExportTo(spec.GetExportTo()); msg != "" {
		r.reject("exportTo: %s", msg)
		return nil, nil
	}
	ms.ExportTo = slices.Clone(spec.GetExportTo())
	return ms, sel
}

// checkExportTo validates an exportTo list as Istio does: namespace names,
// "." (own namespace), "*" (all) or "~" (none), no value twice, and "*" or
// "~" alone.
func checkExportTo(list []string) string {
	seen := map[string]bool{}
	for _, e := range list {
		switch {
		case seen[e]:
			return fmt.Sprintf("%q listed twice", e)
		case e == "." || e == "*" || e == "~":
		case len(validation.IsDNS1123Label(e)) > 0:
			return fmt.Sprintf("%q is not a namespace name, \".\", \"*\" or \"~\"", e)
		}
		seen[e] = true
	}
	if len(list) > 1 && (seen["*"] || seen["~"]) {
		return fmt.Sprintf("%q: \"*\" and \"~\" may not be combined with other values", strings.Join(list, ","))
	}
	return ""
}

// checkHost validates a ServiceEntry or VirtualService host: a DNS name with
// an optional leading "*." wildcard, or "*".
func checkHost(h string) string {
	if h == "*" {
		return ""
	}
	name := strings.TrimPrefix(h, "*.")
	if name == "" || len(name) > 253 {
		return "not a DNS name"
	}
	if strings.Contains(name, "*") {
		return "a wildcard may only be a leading \"*.\""
	}
	for _, l := range strings.Split(name, ".") {
		if l == "" || len(l) > 63 {
			return "not a DNS name"
		}
		for _, ch := range l {
			if !(ch >= 'a' && ch <= 'z' || ch >= 'A' && ch <= 'Z' || ch >= '0' && ch <= '9' || ch == '-' || ch == '_') {
				return "not a DNS name"
			}
		}
	}
	return ""
}

// buildWorkloadEntries turns WorkloadEntries into workloads. They are never
// node-local: node agents reach them through the address index.
func (bd *build) buildWorkloadEntries() {
	for _, k := range sortedKeys(bd.in.workloadEnts) {
		c := bd.in.workloadEnts[k]
		r := bd.rejecter(KindWorkloadEntry, c.meta.Namespace, c.meta.Name)
		w := bd.translateWorkloadEntry(c, r)
		if w != nil {
			bd.workloads = append(bd.workloads, w)
		}
	}
}

func (bd *build) translateWorkloadEntry(c config[networkingapi.WorkloadEntry], r *rejections) *model.Workload {
	spec := c.spec
	ip, err := netip.ParseAddr(spec.GetAddress())
	if err != nil {
		r.reject("address %q: meshlet needs an IP address for a WorkloadEntry", spec.GetAddress())
		return nil
	}
	for name, p := range spec.GetPorts() {
		if p == 0 || p > 65535 {
			r.reject("port %q = %d out of range 1-65535", name, p)
			return nil
		}
	}
	w := &model.Workload{
		UID:            string(c.meta.UID),
		Kind:           model.KindWorkloadEntry,
		Name:           c.meta.Name,
		Namespace:      c.meta.Namespace,
		IPs:            []netip.Addr{ip.Unmap()},
		ServiceAccount: spec.GetServiceAccount(),
		Labels:         spec.GetLabels(),
		Ready:          true,
		Enrolled:       true,
		EnrollReason:   "WorkloadEntry",
	}
	if w.UID == "" {
		w.UID = "workloadentry/" + c.meta.Namespace + "/" + c.meta.Name
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	w.Identity = bd.identity(w.Namespace, w.ServiceAccount)
	w.WorkloadName = w.Name
	// Istio's locality: "region/zone/subzone", any of them empty.
	if loc := spec.GetLocality(); loc != "" {
		w.Locality = model.ParseLocality(loc)
	}
	w.CanonicalName, w.CanonicalRevision = canonical(w.Labels, w.Name)
	w.Waypoint = bd.workloadWaypoint(KindWorkloadEntry, w.Namespace, w.Name, c.meta.Labels)
	w.PeerAuthentication = model.ResolvePeerAuthentication(bd.peerAuths, bd.opts.RootNamespace, w.Namespace, w.Labels)
	w.AuthorizationPolicies = bd.authzFor(w.Namespace, w.Labels)
	return w
}

// resolveHost expands a short host the way Istio does for rules: "reviews"
// in namespace ns means reviews.ns.svc.<domain>.
func (bd *build) resolveHost(h, ns string) string {
	if strings.Contains(h, ".") || h == "*" {
		return h
	}
	return h + "." + ns + ".svc." + bd.opts.ClusterDomain
}

// translateDestinationRules validates DestinationRules and applies their
// simple load-balancer setting to the service they name. Istio: a rule in the
// service's own namespace wins over one in the root namespace; among rules at
// the same level for one host, the oldest wins.
func (bd *build) translateDestinationRules() {
	keys := sortedKeys(bd.in.destRules)
	sortByAge(keys, func(k string) model.ObjectMeta {
		c := bd.in.destRules[k]
		return model.ObjectMeta{Namespace: c.meta.Namespace, Name: c.meta.Name, Created: c.meta.CreationTimestamp.Time}
	})
	type choice struct {
		lb    model.LoadBalancing
		local bool
	}
	chosen := map[string]choice{}
	for _, k := range keys {
		c := bd.in.destRules[k]
		r := bd.rejecter(KindDestinationRule, c.meta.Namespace, c.meta.Name)
		lb, ok := validateDestinationRule(c, r)
		if !ok || c.spec.GetHost() == "" {
			continue
		}
		host := bd.resolveHost(c.spec.GetHost(), c.meta.Namespace)
		owner, exists := bd.hostOwners[host]
		if !exists {
			if !strings.Contains(host, "*") {
				r.warn("host %q matches no service or ServiceEntry", host)
			}
			continue
		}
		ms := bd.svcByKey[owner]
		local := ms.Namespace == c.meta.Namespace
		prev, had := chosen[owner]
		if had && (prev.local || !local) {
			continue // an older rule at the same or a more specific level already decided
		}
		chosen[owner] = choice{lb: lb, local: local}
		ms.LoadBalancing = lb
		bd.drFor[owner] = c
	}
}

func validateDestinationRule(c config[networkingapi.DestinationRule], r *rejections) (model.LoadBalancing, bool) {
	spec := c.spec
	if spec.GetHost() == "" {
		r.reject("host is empty")
		return "", false
	}
	if msg := checkHost(spec.GetHost()); msg != "" {
		r.reject("host %q: %s", spec.GetHost(), msg)
		return "", false
	}
	lb, ok := simpleLB(spec.GetTrafficPolicy().GetLoadBalancer().GetSimple())
	if !ok {
		r.reject("trafficPolicy.loadBalancer.simple %d is not a known algorithm", spec.GetTrafficPolicy().GetLoadBalancer().GetSimple())
		return "", false
	}
	if !checkLocalityLB(r, "trafficPolicy", spec.GetTrafficPolicy()) {
		return "", false
	}
	warnIgnoredTrafficPolicy(r, "trafficPolicy", spec.GetTrafficPolicy())
	for _, pl := range spec.GetTrafficPolicy().GetPortLevelSettings() {
		where := fmt.Sprintf("trafficPolicy.portLevelSettings[port %d]", pl.GetPort().GetNumber())
		tp := forPort(spec.GetTrafficPolicy(), pl.GetPort().GetNumber())
		if !checkLocalityLB(r, where, tp) {
			return "", false
		}
		warnIgnoredTrafficPolicy(r, where, tp)
	}
	names := map[string]bool{}
	for i, ss := range spec.GetSubsets() {
		if ss.GetName() == "" {
			r.reject("subsets[%d] has no name", i)
			return "", false
		}
		if names[ss.GetName()] {
			r.reject("subset %q defined twice", ss.GetName())
			return "", false
		}
		names[ss.GetName()] = true
		if _, ok := simpleLB(ss.GetTrafficPolicy().GetLoadBalancer().GetSimple()); !ok {
			r.reject("subset %q loadBalancer.simple %d is not a known algorithm", ss.GetName(), ss.GetTrafficPolicy().GetLoadBalancer().GetSimple())
			return "", false
		}
		if ss.GetTrafficPolicy() != nil && !checkLocalityLB(r, fmt.Sprintf("subsets[%s].trafficPolicy", ss.GetName()), ss.GetTrafficPolicy()) {
			return "", false
		}
		warnIgnoredTrafficPolicy(r, fmt.Sprintf("subsets[%s].trafficPolicy", ss.GetName()), ss.GetTrafficPolicy())
	}
	return lb, true
}

func simpleLB(v networkingapi.LoadBalancerSettings_SimpleLB) (model.LoadBalancing, bool) {
	switch v {
	case networkingapi.LoadBalancerSettings_UNSPECIFIED:
		return model.LBDefault, true
	//lint:ignore SA1019 users still write LEAST_CONN; Istio treats it as LEAST_REQUEST.
	case networkingapi.LoadBalancerSettings_LEAST_CONN, networkingapi.LoadBalancerSettings_LEAST_REQUEST:
		return model.LBLeastRequest, true // Istio: LEAST_CONN is a deprecated alias
	case networkingapi.LoadBalancerSettings_RANDOM:
		return model.LBRandom, true
	case networkingapi.LoadBalancerSettings_PASSTHROUGH:
		return model.LBPassthrough, true
	case networkingapi.LoadBalancerSettings_ROUND_ROBIN:
		return model.LBRoundRobin, true
	}
	return "", false
}

// validateVirtualServices checks hosts, regexes (RE2, as Istio) and destinations.
func (bd *build) validateVirtualServices() {
	keys := sortedKeys(bd.in.virtualSvcs)
	sortByAge(keys, func(k string) model.ObjectMeta {
		c := bd.in.virtualSvcs[k]
		return model.ObjectMeta{Namespace: c.meta.Namespace, Name: c.meta.Name, Created: c.meta.CreationTimestamp.Time}
	})
	for _, k := range keys {
		c := bd.in.virtualSvcs[k]
		if validateVirtualService(c, bd.rejecter(KindVirtualService, c.meta.Namespace, c.meta.Name)) {
			bd.validVS = append(bd.validVS, c)
		}
	}
}

func validateVirtualService(c config[networkingapi.VirtualService], r *rejections) bool {
	spec := c.spec
	if len(spec.GetHosts()) == 0 {
		r.reject("hosts is empty")
		return false
	}
	seen := map[string]bool{}
	for _, h := range spec.GetHosts() {
		if seen[h] {
			r.reject("duplicate host %q", h)
			return false
		}
		seen[h] = true
		if msg := checkHost(h); msg != "" {
			r.reject("host %q: %s", h, msg)
			return false
		}
	}
	for i, hr := range spec.GetHttp() {
		for j, m := range hr.GetMatch() {
			checks := map[string]*networkingapi.StringMatch{"uri": m.GetUri(), "scheme": m.GetScheme(), "method": m.GetMethod(), "authority": m.GetAuthority()}
			for hname, sm := range m.GetHeaders() {
				checks["headers."+hname] = sm
			}
			for qname, sm := range m.GetQueryParams() {
				checks["queryParams."+qname] = sm
			}
			for hname, sm := range m.GetWithoutHeaders() {
				checks["withoutHeaders."+hname] = sm
			}
			for field, sm := range checks {
				if re := sm.GetRegex(); re != "" {
					if _, err := regexp.Compile(re); err != nil {
						r.reject("http[%d].match[%d].%s regex %q: %v", i, j, field, re, err)
						return false
					}
				}
			}
		}
		if hr.GetDelegate() != nil {
			r.reject("http[%d].delegate: VirtualService delegation is not supported by meshlet; put the delegate's routes in this VirtualService", i)
			return false
		}
		if hr.GetRedirect() == nil && hr.GetDirectResponse() == nil && len(hr.GetRoute()) == 0 {
			r.reject("http[%d] has no route, redirect or directResponse", i)
			return false
		}
		var total int64
		for j, d := range hr.GetRoute() {
			if d.GetDestination().GetHost() == "" {
				r.reject("http[%d].route[%d] has no destination host", i, j)
				return false
			}
			if d.GetWeight() < 0 {
				r.reject("http[%d].route[%d] weight %d is negative", i, j, d.GetWeight())
				return false
			}
			total += int64(d.GetWeight())
		}
		if len(hr.GetRoute()) > 1 && total == 0 {
			r.reject("http[%d] splits traffic over %d destinations with no weights", i, len(hr.GetRoute()))
			return false
		}
		if rw := hr.GetRewrite().GetUriRegexRewrite(); rw != nil {
			if _, err := regexp.Compile(rw.GetMatch()); err != nil {
				r.reject("http[%d].rewrite.uriRegexRewrite.match %q: %v", i, rw.GetMatch(), err)
				return false
			}
		}
	}
	for i, tr := range spec.GetTcp() {
		for j, d := range tr.GetRoute() {
			if d.GetDestination().GetHost() == "" {
				r.reject("tcp[%d].route[%d] has no destination host", i, j)
				return false
			}
		}
	}
	return true
}

// validateIstioGateways checks Istio (networking.istio.io) Gateways.
func (bd *build) validateIstioGateways() {
	for _, k := range sortedKeys(bd.in.istioGws) {
		c := bd.in.istioGws[k]
		r := bd.rejecter(KindIstioGateway, c.meta.Namespace, c.meta.Name)
		if len(c.spec.GetServers()) == 0 {
			r.reject("servers is empty")
			continue
		}
		ok := true
		for i, s := range c.spec.GetServers() {
			if s.GetPort().GetNumber() == 0 || s.GetPort().GetNumber() > 65535 {
				r.reject("servers[%d].port.number %d out of range 1-65535", i, s.GetPort().GetNumber())
				ok = false
				break
			}
			if len(s.GetHosts()) == 0 {
				r.reject("servers[%d].hosts is empty", i)
				ok = false
				break
			}
		}
		if ok {
			bd.validIstioGws = append(bd.validIstioGws, c)
		}
	}
}

// sortByAge orders keys oldest first, ties by namespace/name (stable input order).
func sortByAge(keys []string, meta func(string) model.ObjectMeta) {
	metas := make(map[string]model.ObjectMeta, len(keys))
	for _, k := range keys {
		metas[k] = meta(k)
	}
	sortStable(keys, func(a, b string) bool { return metas[a].Older(metas[b]) })
}
