package controlplane

import (
	"hash/fnv"
	"io"
	"net/netip"
	"sort"
	"strings"
	"time"

	"istio.io/api/annotation"
	"istio.io/api/label"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// BuilderOptions configures a Builder.
type BuilderOptions struct {
	// TrustDomain is the SPIFFE trust domain of workload identities; "" means "cluster.local".
	TrustDomain string
	// RootNamespace holds mesh-wide policies; "" means "istio-system", as Istio.
	RootNamespace string
	// ClusterDomain is the DNS suffix of Kubernetes service hostnames; "" means "cluster.local".
	ClusterDomain string
	// WaypointClasses are the GatewayClass names whose Gateways are waypoints;
	// nil means Istio's "istio-waypoint" and meshlet's "meshlet-waypoint".
	WaypointClasses []string
	// IngressClasses are the GatewayClass names whose Gateways are ingress
	// gateways served by meshlet; nil means Istio's "istio" and meshlet's "meshlet".
	IngressClasses []string
}

// Builder turns Inputs into model snapshots. It keeps the previous build so
// that workloads whose inputs did not change are reused, not rebuilt; that
// also makes model.Snapshot.Diff cheap. A Builder is not safe for concurrent use.
type Builder struct {
	opts    BuilderOptions
	version uint64
	cache   map[string]cachedWorkload
	status  []ObjectStatus // of the last build (Status)
	// seStatus is the last build's ServiceEntry addresses (ServiceEntryStatus).
	seStatus []ServiceEntryAddresses
}

type cachedWorkload struct {
	fingerprint string
	workload    *model.Workload
	rejections  []Rejection // reported while building it, repeated on reuse
}

// NewBuilder returns a Builder with defaults filled in.
func NewBuilder(opts BuilderOptions) *Builder {
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.RootNamespace == "" {
		opts.RootNamespace = "istio-system"
	}
	if opts.ClusterDomain == "" {
		opts.ClusterDomain = "cluster.local"
	}
	if opts.WaypointClasses == nil {
		opts.WaypointClasses = []string{"istio-waypoint", "meshlet-waypoint"} // as pkg/deployer.ClassKind
	}
	if opts.IngressClasses == nil {
		opts.IngressClasses = []string{"istio", "meshlet"} // as pkg/deployer.ClassKind
	}
	return &Builder{opts: opts}
}

// build holds the state of one Build call.
type build struct {
	*Builder
	in   *Inputs
	rej  []Rejection
	next map[string]cachedWorkload

	peerAuths []*model.PeerAuthentication
	authz     []*model.AuthorizationPolicy
	waypoints map[model.NamespacedName]*model.Waypoint
	// rejectedRA are RequestAuthentications already reported.
	rejectedRA map[string]bool
	// sessionNames are the route rules that gave each sessionName, the
	// first one seen (sessions.go).
	sessionNames map[string]string
	// frontend caches frontendValidation by Gateway key and port: the
	// config and the status of a listener read it, each parsing its CAs.
	frontend map[string]*frontendTLS
	// podsByProxy indexes workloads by the proxy their gateway-name label
	// names (proxyPods), once the workloads are built.
	podsByProxy map[model.NamespacedName][]*model.Workload
	waypointGW  map[model.NamespacedName]*gatewayv1.Gateway // for allowedRoutes
	services    []*model.Service
	svcByKey    map[string]*model.Service
	kubeSvcs    map[string]*corev1.Service // key -> object, only valid services
	// svcSessions are the session persistence of services that ask for it
	// by label (labelSession), by service key.
	svcSessions map[string]*model.SessionPersistence
	svcsByNS    map[string]*selectorIndex
	seSelect    []seSelector
	workloads   []*model.Workload
	hostOwners  map[string]string
	// mesh is Istio's mesh config, parsed once (meshConfig); meshRead
	// says it was looked for.
	mesh     *meshconfig.MeshConfig
	meshRead bool
	// tds is the mesh's trust domain and its aliases (trustDomains).
	tds []string
	// logFormats are the access log formats by provider name, built once
	// (accessLogFormats).
	logFormats map[string]*model.AccessLogFormat
	// zoned: 0 not looked yet, 1 some node has a region or zone label, 2
	// nodes are known and none has (see trafficDistribution).
	zoned int8

	validVS      []config[networkingapi.VirtualService] // oldest first
	validRoutes  []*gatewayv1.HTTPRoute
	validGRPC    []*gatewayv1.GRPCRoute
	drFor        map[string]config[networkingapi.DestinationRule] // service key -> chosen rule
	btlsFor      map[string]*backendTLSTargets                    // service key -> BackendTLSPolicies in force
	btlsPolicies []*backendTLS                                    // every BackendTLSPolicy, oldest first (for status)
	// trafficFor is the XBackendTrafficPolicy in force for each Service
	// (by key), trafficPolicies every one, oldest first (for status).
	trafficFor      map[string]*backendTraffic
	trafficPolicies []*backendTraffic
	wlByUID         map[string]*model.Workload
	ingress         []*gatewayv1.Gateway
	// gwListeners are the ingress Gateways' merged listener lists and
	// setStates the ListenerSets whose parent is a meshlet Gateway, by
	// key, decided once (attachListenerSets).
	gwListeners map[*gatewayv1.Gateway][]ingressListener
	setStates   map[string]*setState
	// unserved caches unservedListener per Gateway; sortedHTTP,
	// sortedGRPC and sortedL4 the routes oldest first (oldestRoutes,
	// oldestL4Routes).
	unserved      map[*gatewayv1.Gateway][]unserved
	sortedHTTP    []*gatewayv1.HTTPRoute
	sortedGRPC    []*gatewayv1.GRPCRoute
	sortedL4      *l4Sorted
	defaults      []*gatewayv1.Gateway // defaultGateways, once found (non-nil)
	validIstioGws []config[networkingapi.Gateway]
	credentials   map[string]*credentialCheck      // credentialName Secrets parsed in this build (upstreamTLS)
	autoAllocated map[string]*model.Service        // ServiceEntry key -> its service, when it got an automatic address
	tagValues     map[string]error                 // tagOverrides value expressions compiled in this build (checkTagOverride)
	tcpBySvc      map[string][]*gatewayv1.TCPRoute // tcpRoutesByService, once per build
}

// Build translates in into a new snapshot and reports every rejected or
// suspicious object. It never fails: invalid objects are skipped.
func (b *Builder) Build(in *Inputs) (*model.Snapshot, []Rejection) {
	if in == nil {
		in = &Inputs{}
	}
	b.version++
	bd := &build{
		Builder:     b,
		in:          in,
		next:        make(map[string]cachedWorkload, len(in.pods)),
		waypoints:   make(map[model.NamespacedName]*model.Waypoint),
		waypointGW:  make(map[model.NamespacedName]*gatewayv1.Gateway),
		svcByKey:    make(map[string]*model.Service),
		kubeSvcs:    make(map[string]*corev1.Service),
		svcSessions: map[string]*model.SessionPersistence{},
		svcsByNS:    make(map[string]*selectorIndex),
		hostOwners:  make(map[string]string),
		drFor:       make(map[string]config[networkingapi.DestinationRule]),
		btlsFor:     make(map[string]*backendTLSTargets),
	}
	bd.translatePeerAuthentications()
	bd.translateAuthorizationPolicies()
	bd.translateKubeServices()
	bd.translateWaypoints()
	bd.translateServiceEntries()
	bd.translateDestinationRules()
	bd.translateBackendTLSPolicies()
	bd.translateBackendTrafficPolicies()
	bd.validateVirtualServices()
	bd.validateIstioGateways()
	bd.validateRequestAuthentications()
	bd.validateRoutes()
	bd.buildPodWorkloads()
	bd.buildWorkloadEntries()
	bd.joinEndpoints()
	bd.bindServiceWaypoints()
	l7 := bd.buildL7()
	bd.buildIngressL7(l7)
	bd.buildIstioIngressL7(l7)
	bd.applyTelemetry(l7)
	bd.applyTracers(l7)
	bd.selectGatewayPolicies(l7)
	bd.applyExtAuthz(l7)
	bd.applyProxyLocalities(l7)
	bd.applyRateLimits(l7)
	bd.warnUnmatchedSelectors()
	bd.warnDanglingReferences()
	bd.warnPeerAuthenticationConflicts()
	bd.warnIstioGatewaysWithoutPods()
	b.cache = bd.next
	b.status = bd.gatewayStatus()

	var wps []*model.Waypoint
	for _, k := range sortedWaypointKeys(bd.waypoints) {
		wps = append(wps, bd.waypoints[k])
	}
	snap := model.NewSnapshot(model.SnapshotInput{
		Version:               b.version,
		TrustDomain:           b.opts.TrustDomain,
		TrustDomainAliases:    bd.trustDomainAliases(),
		RootNamespace:         b.opts.RootNamespace,
		Workloads:             bd.workloads,
		Services:              bd.services,
		Waypoints:             wps,
		PeerAuthentications:   bd.peerAuths,
		AuthorizationPolicies: bd.authz,
		L7:                    l7,
	})
	b.seStatus = bd.serviceEntryStatus()
	return snap, uniqueRejections(bd.rej)
}

// uniqueRejections drops repeats, keeping the first of each: an object
// translated once per proxy or port it applies to may report the same
// fault each time.
func uniqueRejections(rej []Rejection) []Rejection {
	seen := make(map[Rejection]bool, len(rej))
	out := rej[:0]
	for _, r := range rej {
		if !seen[r] {
			seen[r] = true
			out = append(out, r)
		}
	}
	return out
}

func sortedWaypointKeys(m map[model.NamespacedName]*model.Waypoint) []model.NamespacedName {
	out := make([]model.NamespacedName, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].String() < out[j].String() })
	return out
}

func (bd *build) rejecter(kind, ns, name string) *rejections {
	return &rejections{kind: kind, namespace: ns, name: name, out: &bd.rej}
}

// trafficDistribution is a service's preference for close endpoints: Istio's
// networking.istio.io/traffic-distribution annotation on the service, else
// its spec.trafficDistribution (Kubernetes Services), else the annotation
// on its namespace. An unknown value is warned about and ignored (every
// ready endpoint takes traffic, as without one).
func (bd *build) trafficDistribution(r *rejections, ns string, ann map[string]string, spec *string) model.TrafficDistribution {
	key := annotation.NetworkingTrafficDistribution.Name
	v, from := ann[key], "annotation "+key
	if v == "" && spec != nil {
		v, from = *spec, "spec.trafficDistribution"
	}
	if v == "" {
		if n := bd.in.namespaces[ns]; n != nil {
			v, from = n.Annotations[key], "namespace "+ns+" annotation "+key
		}
	}
	switch d := model.TrafficDistribution(v); d {
	case model.TrafficPreferClose, model.TrafficPreferSameZone:
		if bd.unzoned() {
			r.warn("%s %s: no node has a %s or %s label, so every ready endpoint is as close as any other; label the nodes",
				from, v, model.LabelRegion, model.LabelZone)
		}
		return d
	case "", model.TrafficPreferSameNode:
		return d
	}
	r.warn("%s %q: want %s, %s or %s; ignored (traffic spreads over every ready endpoint)", from, v,
		model.TrafficPreferClose, model.TrafficPreferSameZone, model.TrafficPreferSameNode)
	return ""
}

// unzoned reports whether nodes are known and none of them carries a region
// or zone label (a file analysis knows no nodes: nothing to say).
func (bd *build) unzoned() bool {
	if bd.zoned == 0 {
		bd.zoned = 2
		if len(bd.in.nodes) == 0 {
			bd.zoned = 1
		}
		for _, n := range bd.in.nodes {
			if n.Labels[model.LabelRegion] != "" || n.Labels[model.LabelZone] != "" {
				bd.zoned = 1
				break
			}
		}
	}
	return bd.zoned == 2
}

// locality is the place of the node name in the cluster's topology, from
// its labels; zero when the node is unknown or unlabelled.
func (bd *build) locality(node string) model.Locality {
	n := bd.in.nodes[node]
	if n == nil {
		return model.Locality{}
	}
	return model.Locality{Region: n.Labels[model.LabelRegion], Zone: n.Labels[model.LabelZone], Subzone: n.Labels[model.LabelSubzone]}
}

// identity returns the SPIFFE ID of a service account.
func (bd *build) identity(ns, sa string) string {
	return "spiffe://" + bd.opts.TrustDomain + "/ns/" + ns + "/sa/" + sa
}

// translateKubeServices turns core/v1 Services into model services (endpoints later).
func (bd *build) translateKubeServices() {
	for _, k := range sortedKeys(bd.in.services) {
		svc := bd.in.services[k]
		r := bd.rejecter(KindService, svc.Namespace, svc.Name)
		ms := &model.Service{
			Name:      svc.Name,
			Namespace: svc.Namespace,
			Source:    model.SourceKubernetes,
			Hostnames: []string{svc.Name + "." + svc.Namespace + ".svc." + bd.opts.ClusterDomain},
		}
		ips := svc.Spec.ClusterIPs
		if len(ips) == 0 && svc.Spec.ClusterIP != "" {
			ips = []string{svc.Spec.ClusterIP}
		}
		for _, s := range ips {
			if s == "" || s == corev1.ClusterIPNone {
				continue
			}
			ip, err := netip.ParseAddr(s)
			if err != nil {
				r.warn("cluster IP %q is not an IP address; ignored", s)
				continue
			}
			ms.VIPs = append(ms.VIPs, ip.Unmap())
		}
		for _, p := range svc.Spec.Ports {
			if p.Port <= 0 || p.Port > 65535 {
				r.warn("port %d out of range; ignored", p.Port)
				continue
			}
			sp := model.ServicePort{
				Name:        p.Name,
				Port:        uint32(p.Port),
				Protocol:    string(p.Protocol),
				AppProtocol: appProtocol(p.AppProtocol, p.Name),
			}
			if sp.Protocol == "" {
				sp.Protocol = "TCP"
			}
			switch {
			case p.TargetPort.StrVal != "":
				sp.TargetPortName = p.TargetPort.StrVal
			case p.TargetPort.IntVal > 0 && p.TargetPort.IntVal <= 65535:
				sp.TargetPort = uint32(p.TargetPort.IntVal)
			default:
				sp.TargetPort = sp.Port
			}
			ms.Ports = append(ms.Ports, sp)
		}
		if v, ok := svc.Annotations[annotation.NetworkingExportTo.Name]; ok {
			list := strings.Split(strings.ReplaceAll(v, " ", ""), ",")
			if msg := checkExportTo(list); msg != "" {
				// The Service keeps working, seen as before the annotation.
				r.warn("annotation %s: %s; ignored (exported to all namespaces)", annotation.NetworkingExportTo.Name, msg)
			} else {
				ms.ExportTo = list
			}
		}
		ms.TrafficDistribution = bd.trafficDistribution(r, svc.Namespace, svc.Annotations, svc.Spec.TrafficDistribution)
		ms.NodeLocal = svc.Spec.InternalTrafficPolicy != nil && *svc.Spec.InternalTrafficPolicy == corev1.ServiceInternalTrafficPolicyLocal
		ms.SessionAffinity = sessionAffinity(&svc.Spec)
		if s := labelSession(r, svc.Labels); s != nil {
			bd.svcSessions[ms.Key()] = s
		}
		bd.hostOwners[ms.Hostname()] = ms.Key()
		bd.addService(ms)
		bd.kubeSvcs[k] = svc
		idx := bd.svcsByNS[svc.Namespace]
		if idx == nil {
			idx = &selectorIndex{byPair: map[string][]*corev1.Service{}}
			bd.svcsByNS[svc.Namespace] = idx
		}
		idx.add(svc)
	}
}

// sessionAffinity is a Service's ClientIP affinity timeout, zero without
// one. The API server keeps timeoutSeconds within (0, 86400]; a value
// outside (an object written around validation) is taken as Kubernetes'
// default, 3 hours, as kube-proxy would not take it either.
// maxAffinitySeconds is the API server's bound on timeoutSeconds (a day).
const maxAffinitySeconds = 86400

func sessionAffinity(spec *corev1.ServiceSpec) time.Duration {
	if spec.SessionAffinity != corev1.ServiceAffinityClientIP {
		return 0
	}
	secs := int32(corev1.DefaultClientIPServiceAffinitySeconds)
	if c := spec.SessionAffinityConfig; c != nil && c.ClientIP != nil && c.ClientIP.TimeoutSeconds != nil {
		if t := *c.ClientIP.TimeoutSeconds; t > 0 && t <= maxAffinitySeconds {
			secs = t
		}
	}
	return time.Duration(secs) * time.Second
}

func (bd *build) addService(ms *model.Service) {
	bd.services = append(bd.services, ms)
	bd.svcByKey[ms.Key()] = ms
}

// appProtocol normalises a port's application protocol the way Istio's
// protocol selection does: appProtocol first, else the port name's prefix
// before "-" (http-web → HTTP).
func appProtocol(explicit *string, portName string) string {
	p := ""
	if explicit != nil {
		p = *explicit
	} else {
		p, _, _ = strings.Cut(portName, "-")
	}
	switch strings.ToLower(p) {
	case "http":
		return "HTTP"
	case "http2", "kubernetes.io/h2c":
		return "HTTP2"
	case "grpc", "grpc-web":
		return "GRPC"
	case "https":
		return "HTTPS"
	case "tls":
		return "TLS"
	case "tcp":
		return "TCP"
	case "udp":
		return "UDP"
	case "mongo", "redis", "mysql":
		return strings.ToUpper(p)
	case "kubernetes.io/ws", "kubernetes.io/wss":
		return "HTTP"
	default:
		return ""
	}
}

// translateWaypoints finds Gateway API Gateways of a waypoint class.
func (bd *build) translateWaypoints() {
	classes := make(map[string]bool, len(bd.opts.WaypointClasses))
	for _, c := range bd.opts.WaypointClasses {
		classes[c] = true
	}
	for _, k := range sortedKeys(bd.in.gateways) {
		gw := bd.in.gateways[k]
		if !classes[string(gw.Spec.GatewayClassName)] {
			if bd.validateGateway(gw) && contains(bd.opts.IngressClasses, string(gw.Spec.GatewayClassName)) {
				bd.ingress = append(bd.ingress, gw)
			}
			continue
		}
		r := bd.rejecter(KindGateway, gw.Namespace, gw.Name)
		wp := &model.Waypoint{
			Name:      gw.Name,
			Namespace: gw.Namespace,
			For:       model.WaypointForService,
			Identity:  bd.identity(gw.Namespace, gw.Name),
		}
		if v, ok := gw.Labels[label.IoIstioWaypointFor.Name]; ok {
			switch f := model.WaypointFor(v); f {
			case model.WaypointForService, model.WaypointForWorkload, model.WaypointForAll, model.WaypointForNone:
				wp.For = f
			default:
				r.reject("label %s=%q: want service, workload, all or none", label.IoIstioWaypointFor.Name, v)
				continue
			}
		}
		for _, a := range gw.Status.Addresses {
			if a.Type != nil && *a.Type != gatewayv1.IPAddressType {
				continue
			}
			if ip, err := netip.ParseAddr(a.Value); err == nil {
				wp.Addresses = append(wp.Addresses, ip.Unmap())
			}
		}
		if len(wp.Addresses) == 0 {
			// The waypoint's deployment controller names its Service after the Gateway.
			if svc, ok := bd.svcByKey[gw.Namespace+"/"+gw.Name]; ok {
				wp.Addresses = append(wp.Addresses, svc.VIPs...)
			}
		}
		if len(wp.Addresses) == 0 {
			r.warn("waypoint has no address yet (no status address and no Service %s/%s)", gw.Namespace, gw.Name)
		}
		bd.waypoints[wp.Key()] = wp
		bd.waypointGW[wp.Key()] = gw
	}
}

// waypointAccepts says whether objects of namespace ns may use waypoint
// key: its own namespace always; another only when the waypoint Gateway's
// HBONE listener allows routes from it (allowedRoutes.namespaces: from All,
// or a Selector matching ns), as Istio requires for cross-namespace use.
func (bd *build) waypointAccepts(key model.NamespacedName, ns string) bool {
	gw, ok := bd.waypointGW[key]
	if !ok || ns == key.Namespace {
		return ns == key.Namespace
	}
	for _, l := range gw.Spec.Listeners {
		if l.Protocol == "HBONE" || l.Port == 15008 {
			return bd.allowedRoute(ns, gw.Namespace, l)
		}
	}
	return false
}

// resolveWaypoint follows a use-waypoint label on an object of kind kind.
// forWorkload says whether the binding is for workload- or service-addressed traffic.
// scopeNS is the namespace a label without istio.io/use-waypoint-namespace refers to.
func (bd *build) resolveWaypoint(kind, objNS, objName, scopeNS string, labels map[string]string, source string, forWorkload bool) (*model.WaypointRef, bool) {
	name, ns, ok := waypointLabel(labels, scopeNS)
	if !ok {
		return nil, false
	}
	if name == useWaypointNone {
		return nil, true
	}
	wp, found := bd.waypoints[model.NamespacedName{Namespace: ns, Name: name}]
	if !found {
		bd.rejecter(kind, objNS, objName).warn("%s label %s=%s: no waypoint Gateway %s/%s", source, label.IoIstioUseWaypoint.Name, name, ns, name)
		return nil, true
	}
	if !bd.waypointAccepts(wp.Key(), scopeNS) {
		bd.rejecter(kind, objNS, objName).warn("%s label %s=%s: waypoint %s/%s does not accept namespace %s: its HBONE listener's allowedRoutes.namespaces must say from: All, or a selector matching it",
			source, label.IoIstioUseWaypoint.Name, name, ns, name, scopeNS)
		return nil, true
	}
	if forWorkload && !wp.For.AcceptsWorkloads() || !forWorkload && !wp.For.AcceptsServices() {
		if source != "namespace" {
			// Istio ignores such a binding; say why, once per labelled object.
			bd.rejecter(kind, objNS, objName).warn("%s label %s=%s: waypoint %s/%s has %s=%s, so it does not take this traffic",
				source, label.IoIstioUseWaypoint.Name, name, ns, name, label.IoIstioWaypointFor.Name, wp.For)
		}
		return nil, true
	}
	return &model.WaypointRef{Waypoint: wp.Key(), Addresses: wp.Addresses, Source: source}, true
}

// isWaypointItself reports whether labels belong to the waypoint's own pods or service.
func (bd *build) isWaypointItself(ns string, labels map[string]string) bool {
	name, ok := labels[gatewayNameLabel]
	if !ok {
		return false
	}
	_, isWP := bd.waypoints[model.NamespacedName{Namespace: ns, Name: name}]
	return isWP
}

func (bd *build) workloadWaypoint(kind, ns, name string, labels map[string]string) *model.WaypointRef {
	if bd.isWaypointItself(ns, labels) {
		return nil
	}
	if ref, decided := bd.resolveWaypoint(kind, ns, name, ns, labels, "pod", true); decided {
		return ref
	}
	if nsObj := bd.in.namespaces[ns]; nsObj != nil {
		ref, _ := bd.resolveWaypoint(KindNamespace, "", ns, ns, nsObj.Labels, "namespace", true)
		return ref
	}
	return nil
}

// bindServiceWaypoints binds each service by its own label, else its namespace's.
func (bd *build) bindServiceWaypoints() {
	for _, ms := range bd.services {
		var labels map[string]string
		kind := KindService
		if ms.Source == model.SourceKubernetes {
			labels = bd.kubeSvcs[ms.Namespace+"/"+ms.Name].Labels
		} else {
			kind = KindServiceEntry
			labels = bd.in.serviceEnts[ms.Namespace+"/"+ms.Name].meta.Labels
		}
		if bd.isWaypointItself(ms.Namespace, labels) {
			continue
		}
		if ref, decided := bd.resolveWaypoint(kind, ms.Namespace, ms.Name, ms.Namespace, labels, "service", false); decided {
			ms.Waypoint = ref
			continue
		}
		if nsObj := bd.in.namespaces[ms.Namespace]; nsObj != nil {
			ms.Waypoint, _ = bd.resolveWaypoint(KindNamespace, "", ms.Namespace, ms.Namespace, nsObj.Labels, "namespace", false)
		}
	}
}

// epoch fingerprints every input a pod's workload depends on besides the pod
// and its namespace. It returns "" when some object has no resourceVersion,
// which disables reuse.
func (bd *build) epoch() string {
	h := fnv.New64a()
	ok := true
	write := func(kind, k, rv string) {
		if rv == "" {
			ok = false
		}
		_, _ = io.WriteString(h, kind+"|"+k+"|"+rv+"\n")
	}
	for _, k := range sortedKeys(bd.in.services) {
		write("svc", k, bd.in.services[k].ResourceVersion)
	}
	for _, k := range sortedKeys(bd.in.peerAuths) {
		write("pa", k, bd.in.peerAuths[k].meta.ResourceVersion)
	}
	for _, k := range sortedKeys(bd.in.authzs) {
		write("ap", k, bd.in.authzs[k].meta.ResourceVersion)
	}
	for _, k := range sortedKeys(bd.in.gateways) {
		write("gw", k, bd.in.gateways[k].ResourceVersion)
	}
	if !ok {
		return ""
	}
	return string(h.Sum(nil))
}

// buildPodWorkloads turns pods with an IP into workloads.
func (bd *build) buildPodWorkloads() {
	epoch := bd.epoch()
	for _, k := range sortedKeys(bd.in.pods) {
		pod := bd.in.pods[k]
		if len(pod.Status.PodIPs) == 0 && pod.Status.PodIP == "" {
			continue // not addressable yet
		}
		ns := bd.in.namespaces[pod.Namespace]
		fp := ""
		if epoch != "" && pod.ResourceVersion != "" && pod.UID != "" {
			fp = epoch + "|" + pod.ResourceVersion
			if ns != nil {
				fp += "|" + ns.ResourceVersion
			}
			// The node's locality, not its resourceVersion: node status
			// updates would otherwise rebuild every workload on it.
			loc := bd.locality(pod.Spec.NodeName)
			fp += "|" + loc.Region + "|" + loc.Zone + "|" + loc.Subzone
			if c, ok := bd.cache[string(pod.UID)]; ok && c.fingerprint == fp {
				bd.next[string(pod.UID)] = c
				bd.workloads = append(bd.workloads, c.workload)
				bd.rej = append(bd.rej, c.rejections...)
				continue
			}
		}
		before := len(bd.rej)
		w := bd.podWorkload(pod, ns)
		if w == nil {
			continue
		}
		if fp != "" {
			bd.next[w.UID] = cachedWorkload{fingerprint: fp, workload: w, rejections: append([]Rejection(nil), bd.rej[before:]...)}
		}
		bd.workloads = append(bd.workloads, w)
	}
}

func (bd *build) podWorkload(pod *corev1.Pod, ns *corev1.Namespace) *model.Workload {
	r := bd.rejecter(KindPod, pod.Namespace, pod.Name)
	w := &model.Workload{
		UID:            string(pod.UID),
		Kind:           model.KindPod,
		Name:           pod.Name,
		Namespace:      pod.Namespace,
		Node:           pod.Spec.NodeName,
		ServiceAccount: pod.Spec.ServiceAccountName,
		Labels:         pod.Labels,
		Ready:          podReady(pod),
		Draining:       pod.DeletionTimestamp != nil && readyCondition(pod),
		Locality:       bd.locality(pod.Spec.NodeName),
	}
	if w.UID == "" {
		w.UID = "pod/" + pod.Namespace + "/" + pod.Name
	}
	if w.ServiceAccount == "" {
		w.ServiceAccount = "default"
	}
	w.Identity = bd.identity(pod.Namespace, w.ServiceAccount)
	ips := pod.Status.PodIPs
	if len(ips) == 0 {
		ips = []corev1.PodIP{{IP: pod.Status.PodIP}}
	}
	for _, s := range ips {
		ip, err := netip.ParseAddr(s.IP)
		if err != nil {
			r.warn("pod IP %q is not an IP address; ignored", s.IP)
			continue
		}
		w.IPs = append(w.IPs, ip.Unmap())
	}
	if len(w.IPs) == 0 {
		return nil
	}
	w.WorkloadName = pod.Name
	if o := metav1.GetControllerOf(pod); o != nil {
		w.WorkloadName = model.WorkloadName(pod.Name, o.Kind, o.Name, pod.Labels["pod-template-hash"])
	}
	// Istio's canonical name falls back to the workload's name.
	w.CanonicalName, w.CanonicalRevision = canonical(pod.Labels, w.WorkloadName)
	w.Enrolled, w.EnrollReason = enrollment(pod, ns)
	w.Waypoint = bd.workloadWaypoint(KindPod, pod.Namespace, pod.Name, pod.Labels)
	w.PeerAuthentication = model.ResolvePeerAuthentication(bd.peerAuths, bd.opts.RootNamespace, pod.Namespace, pod.Labels)
	w.AuthorizationPolicies = bd.authzFor(pod.Namespace, pod.Labels)
	if w.Enrolled && pod.Annotations[model.AnnotationBypassInbound] == "true" {
		// The user's choice, but one that turns off what a STRICT policy
		// or an L4 AuthorizationPolicy would enforce on it: say so.
		pa := w.PeerAuthentication
		strict := pa.Mode == model.MTLSStrict
		for _, m := range pa.PortModes {
			strict = strict || m == model.MTLSStrict
		}
		if strict || len(w.AuthorizationPolicies) > 0 {
			r.warn("annotation %s=true: its inbound plaintext reaches the app uncaptured, so neither STRICT mutual TLS nor L4 AuthorizationPolicies apply to it (mesh clients still come over mutual TLS and are checked); remove the annotation to enforce them",
				model.AnnotationBypassInbound)
		}
	}
	for _, svc := range bd.svcsByNS[pod.Namespace].matching(pod.Labels) {
		ms := bd.svcByKey[svc.Namespace+"/"+svc.Name]
		binding := model.ServiceBinding{
			Service:  model.NamespacedName{Namespace: svc.Namespace, Name: svc.Name},
			Hostname: ms.Hostname(),
			Ports:    make(map[uint32]uint32, len(ms.Ports)),
		}
		for _, sp := range ms.Ports {
			if tp := resolveTargetPort(sp, pod); tp != 0 {
				binding.Ports[sp.Port] = tp
			}
		}
		w.Services = append(w.Services, binding)
	}
	return w
}

// canonical returns Istio's canonical service name and revision for labels.
func canonical(labels map[string]string, fallback string) (string, string) {
	first := func(def string, keys ...string) string {
		for _, k := range keys {
			if v := labels[k]; v != "" {
				return v
			}
		}
		return def
	}
	name := first(fallback, label.ServiceCanonicalName.Name, "app.kubernetes.io/name", "app")
	rev := first("latest", label.ServiceCanonicalRevision.Name, "app.kubernetes.io/version", "version")
	return name, rev
}

func podReady(pod *corev1.Pod) bool {
	return pod.DeletionTimestamp == nil && readyCondition(pod)
}

// readyCondition reports the pod's Ready condition, deleted or not.
func readyCondition(pod *corev1.Pod) bool {
	for _, c := range pod.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// resolveTargetPort maps a service port to a container port of pod; 0 when a
// named target port is not declared by the pod.
func resolveTargetPort(sp model.ServicePort, pod *corev1.Pod) uint32 {
	if sp.TargetPortName == "" {
		return sp.TargetPort
	}
	for _, c := range pod.Spec.Containers {
		for _, p := range c.Ports {
			if p.Name == sp.TargetPortName && p.ContainerPort > 0 && p.ContainerPort <= 65535 {
				return uint32(p.ContainerPort)
			}
		}
	}
	return 0
}

// joinEndpoints fills each service's endpoints: from workload bindings for
// selector services, from ServiceEntry selectors and inline endpoints, and
// from EndpointSlices for Kubernetes services without a selector.
func (bd *build) joinEndpoints() {
	for _, w := range bd.workloads {
		for _, sb := range w.Services {
			ms := bd.svcByKey[sb.Service.Namespace+"/"+sb.Service.Name]
			if ms == nil {
				continue
			}
			ms.Endpoints = append(ms.Endpoints, model.Endpoint{WorkloadUID: w.UID, Addresses: w.IPs, Ports: sb.Ports, Ready: w.Ready, Draining: w.Draining})
		}
		for _, se := range bd.seSelect {
			if w.Namespace != se.svc.Namespace || !model.SelectorMatches(se.selector, w.Labels) {
				continue
			}
			se.svc.Endpoints = append(se.svc.Endpoints, model.Endpoint{WorkloadUID: w.UID, Addresses: w.IPs, Ports: se.ports(), Ready: w.Ready, Draining: w.Draining})
		}
	}
	bd.endpointSliceEndpoints()
}

// endpointSliceEndpoints reads EndpointSlices of selector-less services.
func (bd *build) endpointSliceEndpoints() {
	for _, k := range sortedKeys(bd.in.endpointSlices) {
		es := bd.in.endpointSlices[k]
		svcName := es.Labels[discoveryv1.LabelServiceName]
		svc, ok := bd.kubeSvcs[es.Namespace+"/"+svcName]
		if !ok || len(svc.Spec.Selector) > 0 {
			continue
		}
		ms := bd.svcByKey[svc.Namespace+"/"+svc.Name]
		for _, ep := range es.Endpoints {
			e := model.Endpoint{Ready: ep.Conditions.Ready == nil || *ep.Conditions.Ready, Ports: map[uint32]uint32{}}
			e.Draining = !e.Ready && ep.Conditions.Serving != nil && *ep.Conditions.Serving && ep.Conditions.Terminating != nil && *ep.Conditions.Terminating
			for _, a := range ep.Addresses {
				if ip, err := netip.ParseAddr(a); err == nil {
					e.Addresses = append(e.Addresses, ip.Unmap())
				}
			}
			if len(e.Addresses) == 0 {
				continue
			}
			if ep.TargetRef != nil && ep.TargetRef.Kind == "Pod" && ep.TargetRef.UID != "" {
				e.WorkloadUID = string(ep.TargetRef.UID)
			}
			for _, sp := range ms.Ports {
				for _, p := range es.Ports {
					if p.Port == nil || *p.Port <= 0 || *p.Port > 65535 {
						continue
					}
					if (p.Name != nil && *p.Name == sp.Name) || (p.Name == nil && sp.Name == "") {
						e.Ports[sp.Port] = uint32(*p.Port)
					}
				}
			}
			ms.Endpoints = append(ms.Endpoints, e)
		}
	}
}

// selectorIndex finds the services of one namespace whose selector matches a
// set of labels without testing every service: each service is filed under
// the smallest key=value pair of its selector, so only services filed under
// one of the pod's own pairs can match.
type selectorIndex struct {
	byPair map[string][]*corev1.Service
}

func (x *selectorIndex) add(svc *corev1.Service) {
	if len(svc.Spec.Selector) == 0 {
		return // selector-less services take endpoints from EndpointSlices
	}
	first := ""
	for k, v := range svc.Spec.Selector {
		if p := k + "=" + v; first == "" || p < first {
			first = p
		}
	}
	x.byPair[first] = append(x.byPair[first], svc)
}

// matching returns the services whose selector matches labels, in the order
// they were added (sorted by key).
func (x *selectorIndex) matching(labels map[string]string) []*corev1.Service {
	if x == nil {
		return nil
	}
	var out []*corev1.Service
	for k, v := range labels {
		for _, svc := range x.byPair[k+"="+v] {
			if model.SelectorMatches(svc.Spec.Selector, labels) {
				out = append(out, svc)
			}
		}
	}
	sort.Slice(out, func(i, j int) bool {
		if out[i].Namespace != out[j].Namespace {
			return out[i].Namespace < out[j].Namespace
		}
		return out[i].Name < out[j].Name
	})
	return out
}
