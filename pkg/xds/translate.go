package xds

import (
	"fmt"
	"maps"
	"net/netip"
	"slices"
	"time"

	"google.golang.org/protobuf/proto"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
)

// Apply makes the server's workloads, address index, peer authentications,
// L4 authorizations and waypoint configs those of snap, replacing the
// previous ones, and serves the bundle of snap's trust domain with snap's
// trust domain aliases (the roots are set separately: SetTrustBundle).
// Resources whose content did not change keep their version, so clients
// are sent only the difference; when nothing changed no push happens.
func (s *Server) Apply(snap *model.Snapshot) error {
	s.applyMu.Lock()
	defer s.applyMu.Unlock()
	cache := &applyCache{workloads: map[*model.Workload]cachedWorkload{}, services: map[*model.Service]cachedService{}}
	td := snap.TrustDomain()
	bound := map[model.NamespacedName][]string{}
	for _, mw := range snap.Workloads() {
		for _, n := range mw.AuthorizationPolicies {
			bound[n] = append(bound[n], mw.UID)
		}
	}
	for _, uids := range bound {
		slices.Sort(uids) // the version is a content hash: keep it stable
	}
	authz := typeSet{}
	for _, ap := range snap.AuthorizationPolicies() {
		a, err := translateAuthorization(ap, bound[ap.Key()])
		if err != nil {
			return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
		}
		if a == nil {
			continue
		}
		if err := validateAuthorization(a); err != nil {
			return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
		}
		e, err := newEntry(a)
		if err != nil {
			return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
		}
		authz[a.GetNamespace()+"/"+a.GetName()] = e
	}
	workloads, addresses, peerAuthn := typeSet{}, typeSet{}, typeSet{}
	labelKeys, dropped := workloadLabelKeys(snap)
	if len(dropped) > 0 && !slices.Equal(dropped, s.applied.droppedKeys) {
		s.log.Warn("more label keys in the waypoints' sourceLabels matches than proxies are sent: matches on these keys never match",
			"max", maxLabelKeys, "dropped", dropped)
	}
	cache.droppedKeys = dropped
	for _, mw := range snap.Workloads() {
		ga := gatewayAddress(snap, mw.Waypoint)
		// The policies bound to it that are sent (some translate to none).
		var names []string
		for _, n := range mw.AuthorizationPolicies {
			if _, ok := authz[n.String()]; ok {
				names = append(names, n.String())
			}
		}
		c, ok := s.applied.workloads[mw]
		if !ok || c.trustDomain != td || !proto.Equal(c.waypoint, ga) || !slices.Equal(c.authzNames, names) || !slices.Equal(c.labelKeys, labelKeys) {
			var err error
			if c, err = translateWorkloadEntries(snap, mw, ga, names, labelKeys); err != nil {
				return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
			}
		}
		cache.workloads[mw] = c
		workloads[mw.UID], addresses[mw.UID], peerAuthn[mw.UID] = c.workload, c.address, c.peerAuthn
	}
	for _, ms := range snap.Services() {
		if ms.Hostname() == "" {
			continue // nothing can address it by name, and its VIPs, if any, are in no workload's map
		}
		ga := gatewayAddress(snap, ms.Waypoint)
		c, ok := s.applied.services[ms]
		if !ok || !proto.Equal(c.waypoint, ga) {
			svc := translateService(snap, ms, ga)
			if err := validateService(svc); err != nil {
				return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
			}
			e, err := newEntry(&meshv1.Address{Type: &meshv1.Address_Service{Service: svc}})
			if err != nil {
				return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
			}
			c = cachedService{waypoint: ga, key: ServiceKey(svc), address: e}
		}
		cache.services[ms] = c
		addresses[c.key] = c.address
	}
	s.applied = cache
	waypoints := typeSet{}
	for _, key := range snap.L7Names() {
		c, err := waypointConfig(snap, key)
		if err != nil {
			return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
		}
		if c == nil {
			continue
		}
		e, err := newEntry(c)
		if err != nil {
			return fmt.Errorf("apply snapshot %d: %w", snap.Version(), err)
		}
		waypoints[key.String()] = e
	}
	aliases := slices.Clone(snap.TrustDomainAliases())
	if err := validateTrustDomainAliases(aliases); err != nil {
		return fmt.Errorf("apply snapshot %d: trust domain %s: %w", snap.Version(), td, err)
	}
	s.mu.Lock()
	cur, known := s.store.tdAliases[td]
	same := sameVersions(s.store.workloads, workloads) && sameVersions(s.store.addresses, addresses) &&
		sameVersions(s.store.peerAuthn, peerAuthn) && sameVersions(s.store.authz, authz) &&
		sameVersions(s.store.waypoints, waypoints) && known && slices.Equal(cur, aliases)
	s.mu.Unlock()
	if same {
		return nil
	}
	var err error
	s.change(func(st *store) {
		st.workloads, st.addresses, st.peerAuthn, st.authz, st.waypoints = workloads, addresses, peerAuthn, authz, waypoints
		st.tdAliases[td] = aliases
		err = st.putBundle(td)
	})
	if err != nil {
		return fmt.Errorf("apply snapshot %d: trust bundle %s: %w", snap.Version(), td, err)
	}
	return nil
}

// applyCache keeps the entries of the last Apply by model pointer: the
// builder shares unchanged *Workload and *Service values between snapshots
// (and they are read-only), so an unchanged one is neither translated nor
// hashed again. The waypoint's derived GatewayAddress and the trust domain
// come from elsewhere in the snapshot and are compared before reuse.
type applyCache struct {
	workloads   map[*model.Workload]cachedWorkload
	services    map[*model.Service]cachedService
	droppedKeys []string // label keys over maxLabelKeys, warned about
}

type cachedWorkload struct {
	trustDomain                  string
	waypoint                     *meshv1.GatewayAddress
	authzNames                   []string
	labelKeys                    []string
	workload, address, peerAuthn entry
}

type cachedService struct {
	waypoint *meshv1.GatewayAddress
	key      string
	address  entry
}

func translateWorkloadEntries(snap *model.Snapshot, mw *model.Workload, ga *meshv1.GatewayAddress, authzNames, labelKeys []string) (cachedWorkload, error) {
	w := translateWorkload(snap, mw, ga)
	w.AuthorizationPolicies = authzNames
	if err := validateWorkload(w); err != nil {
		return cachedWorkload{}, err
	}
	we, err := newEntry(w)
	if err != nil {
		return cachedWorkload{}, err
	}
	addr := workloadAddress(w)
	addr.GetWorkload().Labels = workloadLabels(mw, labelKeys)
	ae, err := newEntry(addr)
	if err != nil {
		return cachedWorkload{}, err
	}
	pe, err := newEntry(translatePeerAuthn(mw))
	if err != nil {
		return cachedWorkload{}, err
	}
	return cachedWorkload{trustDomain: snap.TrustDomain(), waypoint: ga, authzNames: authzNames, labelKeys: labelKeys, workload: we, address: ae, peerAuthn: pe}, nil
}

func sameVersions(a, b typeSet) bool {
	return maps.EqualFunc(a, b, func(x, y entry) bool { return x.version == y.version })
}

func ipStrings(ips []netip.Addr) []string {
	out := make([]string, len(ips))
	for i, ip := range ips {
		out[i] = ip.String()
	}
	return out
}

func portList(m map[uint32]uint32) *meshv1.PortList {
	pl := &meshv1.PortList{}
	for _, sp := range slices.Sorted(maps.Keys(m)) {
		pl.Ports = append(pl.Ports, &meshv1.Port{ServicePort: sp, TargetPort: m[sp]})
	}
	return pl
}

// gatewayAddress names a waypoint; its hostname is that of the waypoint's
// own Service (Istio names it after the Gateway) when the snapshot has it.
func gatewayAddress(snap *model.Snapshot, ref *model.WaypointRef) *meshv1.GatewayAddress {
	if ref == nil {
		return nil
	}
	ga := &meshv1.GatewayAddress{Namespace: ref.Waypoint.Namespace, Name: ref.Waypoint.Name, HbonePort: model.PortHBONE}
	if wp, ok := snap.Waypoint(ref.Waypoint); ok {
		ga.Identity, ga.WaypointFor = wp.Identity, string(wp.For)
	}
	if svc, ok := snap.Service(ref.Waypoint.Namespace + "/" + ref.Waypoint.Name); ok {
		ga.Hostname = svc.Hostname()
	}
	if len(ref.Addresses) > 0 {
		ga.Address = ref.Addresses[0].String()
	}
	return ga
}

// maxLabelKeys bounds the label keys sent with every workload: the ones
// VirtualServices' sourceLabels name come from users, and each costs every
// workload resource a field.
const maxLabelKeys = 64

// workloadLabelKeys are the label keys proxies need of a workload: app and
// version for Istio's source_app and source_version metric labels, and the
// keys the sourceLabels matches of the waypoints' routes name (sorted; at
// most maxLabelKeys, app and version always among them), and the keys past
// that bound, left out (warned about by Apply).
func workloadLabelKeys(snap *model.Snapshot) (keys, dropped []string) {
	set := map[string]bool{"app": true, "version": true}
	for _, name := range snap.L7Names() {
		cfg, _ := snap.L7Config(name)
		if cfg == nil {
			continue
		}
		for _, l := range cfg.Listeners {
			for _, vh := range l.VirtualHosts {
				for _, r := range vh.Routes {
					for _, m := range r.Matches {
						for k := range m.SourceLabels {
							set[k] = true
						}
					}
				}
				for _, r := range vh.TCPMatched {
					for _, m := range r.Matches {
						for k := range m.SourceLabels {
							set[k] = true
						}
					}
				}
			}
		}
	}
	// app and version always go (Istio's metric labels); the rest in
	// order up to the bound.
	delete(set, "app")
	delete(set, "version")
	others := slices.Sorted(maps.Keys(set))
	if n := maxLabelKeys - 2; len(others) > n {
		others, dropped = others[:n], others[n:]
	}
	return slices.Sorted(slices.Values(append(others, "app", "version"))), dropped
}

// workloadLabels are mw's labels of the given keys; nil for none.
func workloadLabels(mw *model.Workload, keys []string) map[string]string {
	var out map[string]string
	for _, k := range keys {
		if v, ok := mw.Labels[k]; ok {
			if out == nil {
				out = map[string]string{}
			}
			out[k] = v
		}
	}
	return out
}

func translateWorkload(snap *model.Snapshot, mw *model.Workload, ga *meshv1.GatewayAddress) *meshv1.Workload {
	w := &meshv1.Workload{
		Uid:               mw.UID,
		Name:              mw.Name,
		Namespace:         mw.Namespace,
		Addresses:         ipStrings(mw.IPs),
		Node:              mw.Node,
		ServiceAccount:    mw.ServiceAccount,
		Identity:          mw.Identity,
		TrustDomain:       snap.TrustDomain(),
		Waypoint:          ga,
		Enrolled:          mw.Enrolled,
		CanonicalName:     mw.CanonicalName,
		WorkloadName:      mw.WorkloadName,
		CanonicalRevision: mw.CanonicalRevision,
		Locality:          translateLocality(mw.Locality),
	}
	if !mw.Ready {
		w.Status = meshv1.WorkloadStatus_UNHEALTHY
	}
	if len(mw.Services) > 0 {
		w.Services = make(map[string]*meshv1.PortList, len(mw.Services))
		for _, b := range mw.Services {
			w.Services[b.Service.Namespace+"/"+b.Hostname] = portList(b.Ports)
		}
	}
	return w
}

var modes = map[model.MTLSMode]meshv1.PeerAuthentication_Mode{
	model.MTLSPermissive: meshv1.PeerAuthentication_PERMISSIVE,
	model.MTLSStrict:     meshv1.PeerAuthentication_STRICT,
	model.MTLSDisable:    meshv1.PeerAuthentication_DISABLE,
}

func translatePeerAuthn(mw *model.Workload) *meshv1.PeerAuthentication {
	r := mw.PeerAuthentication
	pa := &meshv1.PeerAuthentication{WorkloadUid: mw.UID, Mode: modes[r.ModeFor(0)]}
	if pa.Mode == meshv1.PeerAuthentication_UNSET {
		pa.Mode = meshv1.PeerAuthentication_PERMISSIVE
	}
	if len(r.PortModes) > 0 {
		pa.PortModes = make(map[uint32]meshv1.PeerAuthentication_Mode, len(r.PortModes))
		for p, m := range r.PortModes {
			pa.PortModes[p] = modes[m]
		}
	}
	return pa
}

var algorithms = map[model.LoadBalancing]meshv1.LoadBalancing_Algorithm{
	model.LBRoundRobin:   meshv1.LoadBalancing_ROUND_ROBIN,
	model.LBLeastRequest: meshv1.LoadBalancing_LEAST_REQUEST,
	model.LBRandom:       meshv1.LoadBalancing_RANDOM,
	model.LBPassthrough:  meshv1.LoadBalancing_PASSTHROUGH,
}

func translateLocality(l model.Locality) *meshv1.Locality {
	if l == (model.Locality{}) {
		return nil
	}
	return &meshv1.Locality{Region: l.Region, Zone: l.Zone, Subzone: l.Subzone}
}

func translateService(snap *model.Snapshot, ms *model.Service, ga *meshv1.GatewayAddress) *meshv1.Service {
	svc := &meshv1.Service{
		Name:       ms.Name,
		Namespace:  ms.Namespace,
		Hostname:   ms.Hostname(),
		Vips:       ipStrings(ms.VIPs),
		Waypoint:   ga,
		External:   ms.External,
		Resolution: ms.Resolution,
		ExportTo:   slices.Clone(ms.ExportTo),

		TrafficDistribution: string(ms.TrafficDistribution),
		NodeLocal:           ms.NodeLocal,

		SessionAffinitySeconds: uint32(ms.SessionAffinity / time.Second),
	}
	if len(ms.Hostnames) > 1 {
		svc.AdditionalHostnames = slices.Clone(ms.Hostnames[1:])
	}
	if a := algorithms[ms.LoadBalancing]; a != meshv1.LoadBalancing_DEFAULT {
		svc.LoadBalancing = &meshv1.LoadBalancing{Algorithm: a}
	}
	for _, p := range ms.Ports {
		svc.Ports = append(svc.Ports, &meshv1.ServicePort{Name: p.Name, Port: p.Port, TargetPort: p.TargetPort, AppProtocol: p.AppProtocol})
	}
	for _, ep := range ms.Endpoints {
		if ep.WorkloadUID != "" {
			continue
		}
		svc.StaticEndpoints = append(svc.StaticEndpoints, &meshv1.StaticEndpoint{
			Addresses: ipStrings(ep.Addresses),
			Hostname:  ep.Hostname,
			Ports:     portList(ep.Ports).GetPorts(),
		})
	}
	return svc
}
