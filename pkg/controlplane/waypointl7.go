package controlplane

import (
	"cmp"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"math"
	"net"
	"net/netip"
	"regexp"
	"slices"
	"sort"
	"strconv"
	"strings"
	"time"

	"istio.io/api/label"
	meshconfig "istio.io/api/mesh/v1alpha1"
	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/meshlet/meshlet/pkg/model"
)

// This file builds each waypoint's L7 configuration (model.L7Config) from the
// services bound to it, their VirtualServices or HTTPRoutes (GAMMA: parentRef
// to the Service), their DestinationRules and the RequestAuthentications
// that target the waypoint or its services.
//
// Decisions:
//   - One listener per service port; the route table of a port is the
//     service's HTTPRoutes if any (Gateway API wins, as Istio ambient
//     prefers it), else the oldest VirtualService for the host that applies
//     to the mesh (no gateways, or "mesh" among them), else one default route
//     to the service itself. Istio uses one VirtualService per host outside
//     gateways; a newer one for the same host gets a warning.
//   - HTTPRoute and GRPCRoute rules are split into one route per match and
//     put in Gateway API's precedence (sortGatewayRoutes): each kind by its
//     own criteria, HTTPRoute's before GRPCRoute's, since the spec ranks
//     the two apart and the waypoint has always tried HTTPRoute's first.
//   - A destination without a port uses the listener's port.
//   - JWT providers are per waypoint: every RequestAuthentication that
//     targets the waypoint Gateway or one of its services contributes.
//   - A VirtualService or HTTPRoute whose translation fails L7Config
//     validation is rejected and its hosts fall back to the default route.

// clusterName is Istio's outbound cluster name for a host and port.
func clusterName(host string, port uint32) string {
	return "outbound|" + strconv.FormatUint(uint64(port), 10) + "||" + host
}

// l7Builder accumulates one waypoint's configuration.
type l7Builder struct {
	bd *build
	// ns is the proxy's namespace: a service or ServiceEntry not exported
	// to it (exportTo) gives its clusters no endpoints, as Istio gives the
	// proxy no cluster for it.
	ns       string
	clusters map[string]*model.L7Cluster
	// ingress is set for an ingress gateway: a service whose waypoint takes
	// ingress traffic (istio.io/ingress-use-waypoint) is reached through
	// its VIP, which the gateway's HBONE dial sends to that waypoint.
	ingress bool
	// backendTLS are the clusters whose TLS origination a BackendTLSPolicy
	// set (a Gateway's spec.tls.backend client certificate goes on them).
	backendTLS map[string]bool
}

// buildL7 returns the L7 configuration of every waypoint with services bound.
func (bd *build) buildL7() map[model.NamespacedName]*model.L7Config {
	vsByHost := bd.meshVirtualServices()
	routesBySvc := bd.httpRoutesByService()
	grpcBySvc := map[string][]*gatewayv1.GRPCRoute{}
	for _, rt := range bd.validGRPC {
		for _, k := range serviceParents(rt.Spec.ParentRefs, rt.Namespace) {
			grpcBySvc[k] = append(grpcBySvc[k], rt)
		}
	}
	tcpBySvc, tlsBySvc := bd.tcpRoutesByService(), bd.tlsRoutesByService()
	servedBy := bd.servedWorkloads()
	out := map[model.NamespacedName]*model.L7Config{}
	for _, key := range sortedWaypointKeys(bd.waypoints) {
		lb := &l7Builder{bd: bd, ns: key.Namespace, clusters: map[string]*model.L7Cluster{}}
		listeners := map[uint32]*model.L7Listener{}
		for _, ms := range bd.services {
			if ms.Waypoint == nil || ms.Waypoint.Waypoint != key {
				continue
			}
			for _, sp := range ms.Ports {
				l := listeners[sp.Port]
				if l == nil {
					l = &model.L7Listener{Name: "port-" + strconv.FormatUint(uint64(sp.Port), 10), Port: sp.Port}
					listeners[sp.Port] = l
				}
				vh := model.VirtualHost{Name: ms.Hostname(), Domains: domains(ms), Opaque: opaqueProtocol(sp.AppProtocol)}
				vh.Routes = lb.gatewayRoutes(routesBySvc[ms.Key()], grpcBySvc[ms.Key()], ms, sp.Port)
				vs, hasVS := vsByHost[ms.Hostname()]
				hasVS = hasVS && model.ExportedTo(vs.spec.GetExportTo(), vs.meta.Namespace, key.Namespace)
				if hasVS && len(vh.Routes) == 0 {
					vh.Routes = lb.virtualServiceRoutes(vs, sp.Port)
				}
				if len(vh.Routes) == 0 {
					vh.Routes = []model.L7Route{{Name: "default", Destinations: []model.WeightedDestination{{Cluster: lb.cluster(ms.Hostname(), sp.Port), Weight: 1}}}}
				}
				rt := meshTCPRouteOn(tcpBySvc[ms.Key()], ms.Name, sp.Port)
				if rt != nil {
					// Its backends that do not resolve are left out; with
					// none, the service's TCP connections are refused.
					if ds := lb.l4Backends(KindTCPRoute, rt.Namespace, rt.Name, tcpRouteBackends(rt), sp.Port); len(ds) > 0 {
						vh.TCP = &model.TCPRoute{Name: rt.Namespace + "/" + rt.Name, Destinations: ds}
					}
				} else if hasVS {
					vh.TCPMatched, vh.TCP = lb.tcpRoute(vs, sp.Port)
				}
				// TLSRoutes bound to the Service: by the ClientHello's
				// server name, before the tcp routes (Istio's waypoint
				// TLSRoute); their hostnames, or any name.
				for _, tr := range oldestFirst(tlsBySvc[ms.Key()]) {
					if !parentPort(tr.Spec.ParentRefs, ms.Name, sp.Port) {
						continue
					}
					snis := []string{"*"}
					if len(tr.Spec.Hostnames) > 0 {
						snis = snis[:0]
						for _, h := range tr.Spec.Hostnames {
							snis = append(snis, string(h))
						}
					}
					if ds := lb.l4Backends(KindTLSRoute, tr.Namespace, tr.Name, tlsRouteBackends(tr), sp.Port); len(ds) > 0 {
						vh.Passthrough = append(vh.Passthrough, model.PassthroughRoute{Name: tr.Namespace + "/" + tr.Name, SNIHosts: snis, Destinations: ds})
					}
				}
				if len(vh.Passthrough) == 0 && hasVS {
					// Without TLSRoutes (which win, as a TCPRoute wins over
					// tcp routes), the VirtualService's tls routes for the
					// port, by their sniHosts.
					vh.Passthrough = lb.passthroughRoutes(vs, ingressServer{port: sp.Port, hosts: []string{"*"}})
				}
				if vh.TCP == nil && rt == nil {
					vh.TCP = &model.TCPRoute{Name: "default", Destinations: []model.WeightedDestination{{Cluster: lb.cluster(ms.Hostname(), sp.Port), Weight: 1}}}
				}
				l.VirtualHosts = append(l.VirtualHosts, vh)
			}
		}
		served := servedBy[key]
		if len(listeners) == 0 && len(served) == 0 {
			continue
		}
		cfg := &model.L7Config{JWTProviders: bd.jwtProviders(key), Workloads: served}
		ports := make([]uint32, 0, len(listeners))
		for p := range listeners {
			ports = append(ports, p)
		}
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		for _, p := range ports {
			cfg.Listeners = append(cfg.Listeners, *listeners[p])
		}
		for _, name := range sortedKeys(lb.clusters) {
			cfg.Clusters = append(cfg.Clusters, *lb.clusters[name])
		}
		bd.finishSessions(cfg)
		if err := cfg.Validate(); err != nil {
			bd.rejecter(KindGateway, key.Namespace, key.Name).reject("waypoint L7 configuration is invalid, not pushed: %v", err)
			continue
		}
		out[key] = cfg
	}
	return out
}

// servedWorkloads are, by waypoint, the enrolled workloads whose own
// traffic it takes: those bound to a waypoint for workloads or for all
// (the node agents send a workload's traffic to its waypoint only then),
// sorted by namespace and name; one pass over the workloads for every
// waypoint.
func (bd *build) servedWorkloads() map[model.NamespacedName][]model.L7Workload {
	out := map[model.NamespacedName][]model.L7Workload{}
	for _, w := range bd.workloads {
		if !w.Enrolled || w.Waypoint == nil || len(w.IPs) == 0 {
			continue
		}
		key := w.Waypoint.Waypoint
		if wp := bd.waypoints[key]; wp == nil || (wp.For != model.WaypointForWorkload && wp.For != model.WaypointForAll) {
			continue
		}
		lw := model.L7Workload{Name: cmp.Or(w.WorkloadName, w.Name), Namespace: w.Namespace, Identity: w.Identity}
		for _, ip := range w.IPs {
			lw.Addresses = append(lw.Addresses, ip.String())
		}
		for _, k := range []string{"app", "version"} {
			if v, ok := w.Labels[k]; ok {
				if lw.Labels == nil {
					lw.Labels = map[string]string{}
				}
				lw.Labels[k] = v
			}
		}
		out[key] = append(out[key], lw)
	}
	for _, ws := range out {
		sort.Slice(ws, func(i, j int) bool {
			return ws[i].Namespace+"/"+ws[i].Name+"/"+ws[i].Addresses[0] < ws[j].Namespace+"/"+ws[j].Name+"/"+ws[j].Addresses[0]
		})
	}
	return out
}

// opaqueProtocol reports whether a port's declared application protocol
// (model.ServicePort.AppProtocol) is one a waypoint forwards as TCP without
// reading it, as Istio does for these protocols.
func opaqueProtocol(p string) bool {
	switch p {
	case "TCP", "TLS", "HTTPS", "MONGO", "MYSQL", "REDIS":
		return true
	}
	return false
}

// domains are the Host values a service answers to inside the cluster.
func domains(ms *model.Service) []string {
	out := append([]string(nil), ms.Hostnames...)
	if ms.Source == model.SourceKubernetes {
		out = append(out, ms.Name, ms.Name+"."+ms.Namespace, ms.Name+"."+ms.Namespace+".svc")
	}
	for _, ip := range ms.VIPs {
		out = append(out, ip.String())
	}
	return out
}

// cluster returns the name of the cluster for host:port, creating it from
// the service that owns host and its DestinationRule.
func (lb *l7Builder) cluster(host string, port uint32) string {
	name := clusterName(host, port)
	if _, ok := lb.clusters[name]; ok {
		return name
	}
	c := &model.L7Cluster{Name: name}
	if owner, ok := lb.bd.hostOwners[host]; ok && lb.bd.svcByKey[owner].VisibleTo(lb.ns) {
		ms := lb.bd.svcByKey[owner]
		if lb.ingress && lb.bd.ingressUsesWaypoint(ms) {
			// The service's waypoint applies its routes and policies to
			// ingress requests too (Istio's istio.io/ingress-use-waypoint):
			// the gateway sends them to the service's VIP, as a mesh client
			// would, and its HBONE dial goes to the waypoint, which the
			// config names itself (the service's own resource may reach the
			// gateway later: the VIP must never be dialled directly).
			// A waypoint with no address or identity yet leaves the cluster
			// without endpoints: 503 until it has them, never a bypass.
			if via := lb.bd.viaWaypoint(ms.Waypoint); via != nil {
				for _, vip := range ms.VIPs {
					c.Endpoints = append(c.Endpoints, model.L7Endpoint{Address: netip.AddrPortFrom(vip, uint16(port)).String(), Via: via})
				}
			}
			lb.clusters[name] = c
			return name
		}
		for _, ep := range ms.Endpoints {
			if !ep.Ready && !ep.Draining {
				continue
			}
			tp, ok := ep.Ports[port]
			if !ok {
				continue
			}
			var labels map[string]string
			workload, id := "", ""
			w, _ := lb.bd.workloadByUID(ep.WorkloadUID)
			if w != nil {
				labels = w.Labels
				workload = w.WorkloadName
				if workload == "" {
					workload = w.Name
				}
				if w.Enrolled {
					id = w.Identity
				}
			}
			hostPart := ep.Hostname
			if len(ep.Addresses) > 0 {
				hostPart = ep.Addresses[0].String()
			}
			e := model.L7Endpoint{Address: net.JoinHostPort(hostPart, strconv.FormatUint(uint64(tp), 10)), Labels: labels, Workload: workload, Identity: id, Draining: !ep.Ready}
			if w != nil {
				e.Node, e.Locality = w.Node, w.Locality.String()
			}
			c.Endpoints = append(c.Endpoints, e)
		}
		// A DestinationRule's tls for the port takes precedence over a
		// BackendTLSPolicy's (see backendtls.go).
		drTLS := false
		var subsetTLS []bool
		sp, known := ms.Port(port)
		appProto := sp.AppProtocol
		if known {
			c.Protocol = upstreamProtocol(appProto)
		}
		// The mesh config's h2UpgradePolicy upgrades declared HTTP ports
		// unless a DestinationRule says otherwise (Istio's shouldH2Upgrade).
		meshUpgrade := appProto == "HTTP" && lb.bd.meshConfig().GetH2UpgradePolicy() == meshconfig.MeshConfig_UPGRADE
		c.Traffic.Pool.H2Upgrade = meshUpgrade
		c.Traffic.LB.Locality = localityLB(ms, nil)
		if dr, ok := lb.bd.drFor[owner]; ok {
			tp := forPort(dr.spec.GetTrafficPolicy(), port)
			drTLS = tp.GetTls() != nil
			c.Traffic = trafficPolicy(tp, meshUpgrade)
			c.Traffic.LB.Locality = localityLB(ms, tp)
			var ok bool
			c.Traffic.TLS, ok = lb.upstreamTLS(dr, tp.GetTls(), host, "trafficPolicy")
			for _, ss := range dr.spec.GetSubsets() {
				sub := model.Subset{Name: ss.GetName(), Labels: ss.GetLabels()}
				setsTLS := false
				if ss.GetTrafficPolicy() != nil {
					stp := forPort(ss.GetTrafficPolicy(), port)
					setsTLS = stp.GetTls() != nil
					t := trafficPolicy(stp, meshUpgrade)
					t.LB.Locality = localityLB(ms, stp)
					var subOK bool
					t.TLS, subOK = lb.upstreamTLS(dr, stp.GetTls(), host, "subsets["+ss.GetName()+"].trafficPolicy")
					ok = ok && subOK
					sub.Traffic = &t
				}
				c.Subsets = append(c.Subsets, sub)
				subsetTLS = append(subsetTLS, setsTLS)
			}
			if !ok {
				// TLS origination asked for and not possible: no endpoint
				// rather than requests in the clear (503, as Envoy's cluster
				// waiting for its secret answers).
				c.Endpoints = nil
			}
		}
		if ms.SessionAffinity > 0 && c.Traffic.LB.Simple == model.LBDefault && c.Traffic.LB.ConsistentHash == nil {
			// The Service's sessionAffinity ClientIP, which the node
			// agent honours without a waypoint: here a hash of the
			// client's address keeps it on one endpoint while the
			// endpoints stay the same (Envoy has no timed affinity). A
			// DestinationRule's load balancer wins, as it does in Istio.
			c.Traffic.LB.ConsistentHash = &model.ConsistentHash{SourceIP: true}
		}
		lb.bd.applyTrafficBudget(c, owner)
		if bt := lb.bd.backendTLSFor(ms, port); bt != nil && !drTLS {
			applyBackendTLS(c, bt, subsetTLS)
			if lb.backendTLS == nil {
				lb.backendTLS = map[string]bool{}
			}
			lb.backendTLS[name] = true
		}
		unplaceEndpoints(c)
	}
	lb.clusters[name] = c
	return name
}

func (bd *build) workloadByUID(uid string) (*model.Workload, bool) {
	if uid == "" {
		return nil, false
	}
	if bd.wlByUID == nil {
		bd.wlByUID = make(map[string]*model.Workload, len(bd.workloads))
		for _, w := range bd.workloads {
			bd.wlByUID[w.UID] = w
		}
	}
	w, ok := bd.wlByUID[uid]
	return w, ok
}

// forPort applies a DestinationRule's portLevelSettings: the policy for
// port replaces the destination-level one whole (Istio: fields left out at
// port level take their defaults, not the destination-level values).
func forPort(tp *networkingapi.TrafficPolicy, port uint32) *networkingapi.TrafficPolicy {
	for _, pl := range tp.GetPortLevelSettings() {
		if pl.GetPort().GetNumber() == port {
			return &networkingapi.TrafficPolicy{
				LoadBalancer:     pl.GetLoadBalancer(),
				ConnectionPool:   pl.GetConnectionPool(),
				OutlierDetection: pl.GetOutlierDetection(),
				Tls:              pl.GetTls(),
				RetryBudget:      tp.GetRetryBudget(), // not per port
				Tunnel:           tp.GetTunnel(),
				ProxyProtocol:    tp.GetProxyProtocol(),
			}
		}
	}
	return tp
}

// upstreamProtocol is how a waypoint speaks to a port's endpoints, from the
// port's declared protocol (appProtocol): HTTP/2 for HTTP2 and gRPC ports,
// else HTTP/1.1 (and HTTP/2 for gRPC requests). A port that declares no
// protocol gets HTTP/1.1 too, where Istio's sidecars would use the
// client's version (use_downstream_protocol): a browser speaking HTTP/2 to
// an ingress gateway would otherwise reach an HTTP/1.1-only app in h2c,
// which it refuses. useClientProtocol in a DestinationRule asks for that.
func upstreamProtocol(appProtocol string) model.UpstreamProtocol {
	switch appProtocol {
	case "HTTP2", "GRPC":
		return model.UpstreamHTTP2
	}
	return model.UpstreamAuto
}

// warmup is the slow start of lbs (warmup, or the older
// warmupDurationSecs), with Istio's defaults: minimum 10%, aggression 1.
// Envoy's slow start applies to ROUND_ROBIN and LEAST_REQUEST only.
func warmup(lbs *networkingapi.LoadBalancerSettings) *model.Warmup {
	switch simple, _ := simpleLB(lbs.GetSimple()); simple {
	case model.LBDefault, model.LBRoundRobin, model.LBLeastRequest:
	default:
		return nil
	}
	if lbs.GetConsistentHash() != nil {
		return nil
	}
	w := &model.Warmup{MinPercent: 10, Aggression: 1}
	switch {
	case lbs.GetWarmup() != nil:
		w.Duration = lbs.GetWarmup().GetDuration().AsDuration()
		if v := lbs.GetWarmup().GetMinimumPercent(); v != nil {
			w.MinPercent = v.GetValue()
		}
		if v := lbs.GetWarmup().GetAggression(); v != nil {
			w.Aggression = v.GetValue()
		}
	case lbs.GetWarmupDurationSecs() != nil: // the older field, still read by Istio
		w.Duration = lbs.GetWarmupDurationSecs().AsDuration()
	}
	if w.Duration <= 0 || w.Aggression <= 0 || w.MinPercent < 0 || w.MinPercent > 100 {
		return nil
	}
	return w
}

// trafficPolicy is tp in the model. meshUpgrade is the mesh config's
// h2UpgradePolicy for the port, which tp's own policy overrides.
func trafficPolicy(tp *networkingapi.TrafficPolicy, meshUpgrade bool) model.TrafficPolicy {
	var out model.TrafficPolicy
	lbs := tp.GetLoadBalancer()
	out.LB.Simple, _ = simpleLB(lbs.GetSimple())
	out.LB.Warmup = warmup(lbs)
	if ch := lbs.GetConsistentHash(); ch != nil {
		switch {
		case ch.GetHttpHeaderName() != "":
			out.LB.ConsistentHash = &model.ConsistentHash{Header: ch.GetHttpHeaderName()}
		case ch.GetHttpCookie() != nil:
			c := ch.GetHttpCookie()
			out.LB.ConsistentHash = &model.ConsistentHash{Cookie: c.GetName(), CookieTTL: c.GetTtl().AsDuration(), CookiePath: c.GetPath()}
		case ch.GetHttpQueryParameterName() != "":
			out.LB.ConsistentHash = &model.ConsistentHash{QueryParam: ch.GetHttpQueryParameterName()}
		case ch.GetUseSourceIp():
			out.LB.ConsistentHash = &model.ConsistentHash{SourceIP: true}
		}
	}
	if tn := tp.GetTunnel(); tn != nil && (tn.GetProtocol() == "" || strings.EqualFold(tn.GetProtocol(), "CONNECT")) {
		if t := (&model.Tunnel{TargetHost: tn.GetTargetHost(), TargetPort: tn.GetTargetPort()}); t.Validate() == nil {
			out.Tunnel = t
		}
	}
	if pp := tp.GetProxyProtocol(); pp != nil {
		out.ProxyProtocol = 1
		if pp.GetVersion() == networkingapi.TrafficPolicy_ProxyProtocol_V2 {
			out.ProxyProtocol = 2
		}
	}
	if rb := tp.GetRetryBudget(); rb != nil {
		// Istio's defaults: 20%, at least 3.
		out.RetryBudget = &model.RetryBudget{Percent: 20, MinConcurrency: 3}
		if p := rb.GetPercent(); p != nil {
			out.RetryBudget.Percent = min(max(p.GetValue(), 0), 100)
		}
		if m := rb.GetMinRetryConcurrency(); m > 0 {
			out.RetryBudget.MinConcurrency = int(min(m, math.MaxInt32))
		}
	}
	tcp, http := tp.GetConnectionPool().GetTcp(), tp.GetConnectionPool().GetHttp()
	out.Pool = model.ConnectionPool{
		MaxConnections:           int(tcp.GetMaxConnections()),
		HTTP1MaxPendingRequests:  int(http.GetHttp1MaxPendingRequests()),
		HTTP2MaxRequests:         int(http.GetHttp2MaxRequests()),
		MaxRequestsPerConnection: int(http.GetMaxRequestsPerConnection()),
		IdleTimeout:              http.GetIdleTimeout().AsDuration(),
		ConnectTimeout:           tcp.GetConnectTimeout().AsDuration(),
		MaxRetries:               int(min(http.GetMaxRetries(), math.MaxInt32)),
		MaxConnectionDuration:    tcp.GetMaxConnectionDuration().AsDuration(),
		UseClientProtocol:        http.GetUseClientProtocol(),
	}
	if d := tcp.GetIdleTimeout(); d != nil {
		// Istio: "If set to 0s, the timeout will be disabled."
		out.Pool.TCPIdleTimeout = d.AsDuration()
		if out.Pool.TCPIdleTimeout == 0 {
			out.Pool.TCPIdleTimeout = model.NoTimeout
		}
	}
	if k := tcp.GetTcpKeepalive(); k != nil {
		out.Pool.TCPKeepalive = &model.TCPKeepalive{Time: k.GetTime().AsDuration(), Interval: k.GetInterval().AsDuration(), Probes: int(k.GetProbes())}
	}
	if ka := http.GetHttp2KeepAlive(); ka != nil {
		out.Pool.H2PingInterval, out.Pool.H2PingTimeout = ka.GetInterval().AsDuration(), ka.GetTimeout().AsDuration()
	}
	switch http.GetH2UpgradePolicy() {
	case networkingapi.ConnectionPoolSettings_HTTPSettings_UPGRADE:
		out.Pool.H2Upgrade = true
	case networkingapi.ConnectionPoolSettings_HTTPSettings_DEFAULT:
		out.Pool.H2Upgrade = meshUpgrade
	}
	if od := tp.GetOutlierDetection(); od != nil {
		o := &model.OutlierDetection{
			Interval:           od.GetInterval().AsDuration(),
			BaseEjectionTime:   od.GetBaseEjectionTime().AsDuration(),
			MaxEjectionPercent: int(od.GetMaxEjectionPercent()),
			MinHealthPercent:   int(od.GetMinHealthPercent()),
			// Istio: consecutive5xxErrors "defaults to 5, but can be
			// disabled by setting the value to 0".
			Consecutive5xxErrors: 5,
		}
		if v := od.GetConsecutive_5XxErrors(); v != nil {
			o.Consecutive5xxErrors = int(v.GetValue())
		}
		if v := od.GetConsecutiveGatewayErrors(); v != nil {
			o.ConsecutiveGatewayErrors = int(v.GetValue())
		}
		for _, c := range od.GetOutlierDetectionHttpErrorCodes() {
			o.ErrorCodes = append(o.ErrorCodes, int(c))
		}
		if od.GetSplitExternalLocalOriginErrors() {
			// Envoy's consecutive_local_origin_failure defaults to 5.
			o.SplitLocalOrigin, o.ConsecutiveLocalOriginFailures = true, 5
			if v := od.GetConsecutiveLocalOriginFailures(); v != nil {
				o.ConsecutiveLocalOriginFailures = int(min(v.GetValue(), math.MaxInt32))
			}
		}
		out.Outlier = o
	}
	return out
}

// meshVirtualServices returns, per host, the oldest valid VirtualService
// that applies to mesh traffic.
func (bd *build) meshVirtualServices() map[string]config[networkingapi.VirtualService] {
	out := map[string]config[networkingapi.VirtualService]{}
	for _, c := range bd.validVS {
		gws := c.spec.GetGateways()
		mesh := len(gws) == 0
		for _, g := range gws {
			mesh = mesh || g == "mesh"
		}
		if !mesh {
			continue
		}
		for _, h := range c.spec.GetHosts() {
			host := bd.resolveHost(h, c.meta.Namespace)
			if prev, taken := out[host]; taken {
				bd.rejecter(KindVirtualService, c.meta.Namespace, c.meta.Name).warn("host %s is already routed by the older VirtualService %s/%s; ignored for it", host, prev.meta.Namespace, prev.meta.Name)
				continue
			}
			out[host] = c
		}
	}
	return out
}

// httpRoutesByService returns the HTTPRoutes whose parentRefs name a Service (GAMMA).
func (bd *build) httpRoutesByService() map[string][]*gatewayv1.HTTPRoute {
	out := map[string][]*gatewayv1.HTTPRoute{}
	for _, rt := range bd.validRoutes {
		for _, k := range serviceParents(rt.Spec.ParentRefs, rt.Namespace) {
			out[k] = append(out[k], rt)
		}
	}
	return out
}

// tcpRoutesByService returns the TCPRoutes whose parentRefs name a Service
// (GAMMA), by Service key: a waypoint forwards the service's TCP
// connections by them. Made once per build (the builder and the routes'
// status both ask).
func (bd *build) tcpRoutesByService() map[string][]*gatewayv1.TCPRoute {
	if bd.tcpBySvc == nil {
		bd.tcpBySvc = routesByService(bd.in.tcpRoutes, func(rt *gatewayv1.TCPRoute) []string {
			return serviceParents(rt.Spec.ParentRefs, rt.Namespace)
		})
	}
	return bd.tcpBySvc
}

// tlsRoutesByService returns the TLSRoutes whose parentRefs name a Service
// (GAMMA), by Service key: a waypoint forwards the service's TLS
// connections by their server names.
func (bd *build) tlsRoutesByService() map[string][]*gatewayv1.TLSRoute {
	return routesByService(bd.in.tlsRoutes, func(rt *gatewayv1.TLSRoute) []string {
		return serviceParents(rt.Spec.ParentRefs, rt.Namespace)
	})
}

// routesByService groups routes by the keys of the Services among their
// parents (services).
func routesByService[R any](routes map[string]R, services func(R) []string) map[string][]R {
	out := map[string][]R{}
	for _, rt := range routes {
		for _, k := range services(rt) {
			out[k] = append(out[k], rt)
		}
	}
	return out
}

// meshTCPRouteOn is the TCPRoute a waypoint forwards Service svc's port by:
// the oldest of rts (bound to the Service) that covers the port; nil for
// none. As on a Gateway's TCP listener, one route takes a port; the others
// are not accepted for it (parentAccepts).
func meshTCPRouteOn(rts []*gatewayv1.TCPRoute, svc string, port uint32) *gatewayv1.TCPRoute {
	for _, rt := range oldestFirst(rts) {
		if parentPort(rt.Spec.ParentRefs, svc, port) {
			return rt
		}
	}
	return nil
}

// serviceParents returns the "namespace/name" keys of the Services among parentRefs.
func serviceParents(refs []gatewayv1.ParentReference, routeNS string) []string {
	var out []string
	for _, pr := range refs {
		if pr.Kind == nil || *pr.Kind != "Service" {
			continue
		}
		ns := routeNS
		if pr.Namespace != nil && *pr.Namespace != "" {
			ns = string(*pr.Namespace)
		}
		out = append(out, ns+"/"+string(pr.Name))
	}
	return out
}

// parentPort reports whether a Service parentRef to svc covers port.
func parentPort(refs []gatewayv1.ParentReference, svc string, port uint32) bool {
	for _, pr := range refs {
		if pr.Kind != nil && *pr.Kind == "Service" && string(pr.Name) == svc && (pr.Port == nil || uint32(*pr.Port) == port) {
			return true
		}
	}
	return false
}

// virtualServiceRoutes translates the http routes of vs that apply to port.
func (lb *l7Builder) virtualServiceRoutes(c config[networkingapi.VirtualService], port uint32) []model.L7Route {
	var routes []model.L7Route
	for i, hr := range c.spec.GetHttp() {
		r := model.L7Route{Name: hr.GetName(), Origin: "VirtualService/" + c.meta.Namespace + "/" + c.meta.Name}
		if r.Name == "" {
			r.Name = fmt.Sprintf("%s.%s.%d", c.meta.Name, c.meta.Namespace, i)
		}
		portMatch := len(hr.GetMatch()) == 0
		for _, m := range hr.GetMatch() {
			if m.GetPort() != 0 && m.GetPort() != port {
				continue
			}
			portMatch = true
			r.Matches = append(r.Matches, routeMatch(m))
		}
		if !portMatch {
			continue
		}
		for _, d := range hr.GetRoute() {
			r.Destinations = append(r.Destinations, model.WeightedDestination{
				Cluster:         lb.cluster(lb.bd.resolveHost(d.GetDestination().GetHost(), c.meta.Namespace), destPort(d.GetDestination(), port)),
				Subset:          d.GetDestination().GetSubset(),
				Weight:          weight(d.GetWeight(), len(hr.GetRoute())),
				RequestHeaders:  headerOps(d.GetHeaders().GetRequest()),
				ResponseHeaders: headerOps(d.GetHeaders().GetResponse()),
			})
		}
		if rd := hr.GetRedirect(); rd != nil {
			r.Redirect = &model.Redirect{Scheme: rd.GetScheme(), Authority: rd.GetAuthority(), Port: rd.GetPort(), URI: rd.GetUri(), Code: int(rd.GetRedirectCode())}
			if dp, ok := rd.GetRedirectPort().(*networkingapi.HTTPRedirect_DerivePort); ok {
				r.Redirect.DerivePort = dp.DerivePort.String()
			}
		}
		if dr := hr.GetDirectResponse(); dr != nil {
			body := dr.GetBody().GetString_()
			if b := dr.GetBody().GetBytes(); len(b) > 0 {
				body = string(b)
			}
			r.DirectResponse = &model.DirectResponse{Status: int(dr.GetStatus()), Body: body}
		}
		if rw := hr.GetRewrite(); rw != nil {
			r.Rewrite = &model.Rewrite{URIPrefix: rw.GetUri(), Authority: rw.GetAuthority()}
			if rr := rw.GetUriRegexRewrite(); rr != nil {
				r.Rewrite.URIRegex = &model.RegexRewrite{Pattern: rr.GetMatch(), Substitution: envoySubstitution(rr.GetRewrite())}
			}
		}
		r.Timeout = hr.GetTimeout().AsDuration()
		if rt := hr.GetRetries(); rt != nil {
			p := &model.RetryPolicy{Attempts: int(rt.GetAttempts()), PerTryTimeout: rt.GetPerTryTimeout().AsDuration(),
				SameHosts:        rt.GetRetryIgnorePreviousHosts() != nil && !rt.GetRetryIgnorePreviousHosts().GetValue(),
				RemoteLocalities: rt.GetRetryRemoteLocalities().GetValue()}
			if b := rt.GetBackoff(); b != nil {
				if d := b.AsDuration(); d > 0 {
					p.Backoff = d
				} else {
					lb.bd.rejecter(KindVirtualService, c.meta.Namespace, c.meta.Name).warn("http[%d].retries.backoff %v is not positive; ignored (the default backoff applies)", i, d)
				}
			}
			for _, on := range strings.Split(rt.GetRetryOn(), ",") {
				on = strings.TrimSpace(on)
				if code, err := strconv.Atoi(on); err == nil {
					p.RetriableStatusCodes = append(p.RetriableStatusCodes, code)
					on = "retriable-status-codes"
				}
				if on != "" && !contains(p.RetryOn, on) {
					p.RetryOn = append(p.RetryOn, on)
				}
			}
			r.Retries = p
		}
		if f := hr.GetFault(); f != nil {
			fi := &model.FaultInjection{}
			if d := f.GetDelay(); d != nil {
				//lint:ignore SA1019 users still write the integer percent field.
				fi.Delay = &model.FaultDelay{Duration: d.GetFixedDelay().AsDuration(), Percent: percent(d.GetPercentage(), float64(d.GetPercent()))}
			}
			if a := f.GetAbort(); a != nil {
				fi.Abort = &model.FaultAbort{HTTPStatus: int(a.GetHttpStatus()), GRPCStatus: a.GetGrpcStatus(), Percent: percent(a.GetPercentage(), 100)}
			}
			r.Fault = fi
		}
		if m := hr.GetMirror(); m != nil {
			r.Mirrors = append(r.Mirrors, model.Mirror{
				Cluster: lb.cluster(lb.bd.resolveHost(m.GetHost(), c.meta.Namespace), destPort(m, port)),
				Subset:  m.GetSubset(), Percent: percent(hr.GetMirrorPercentage(), 100),
			})
		}
		for _, m := range hr.GetMirrors() {
			d := m.GetDestination()
			r.Mirrors = append(r.Mirrors, model.Mirror{
				Cluster: lb.cluster(lb.bd.resolveHost(d.GetHost(), c.meta.Namespace), destPort(d, port)),
				Subset:  d.GetSubset(), Percent: percent(m.GetPercentage(), 100),
			})
		}
		if cp := hr.GetCorsPolicy(); cp != nil {
			r.CORS = corsPolicy(cp)
		}
		r.RequestHeaders = headerOps(hr.GetHeaders().GetRequest())
		r.ResponseHeaders = headerOps(hr.GetHeaders().GetResponse())
		routes = append(routes, r)
	}
	if err := lb.check(routes); err != nil {
		lb.bd.rejecter(KindVirtualService, c.meta.Namespace, c.meta.Name).reject("%v", err)
		return nil
	}
	return routes
}

// check validates routes against the clusters built so far.
func (lb *l7Builder) check(routes []model.L7Route) error {
	if len(routes) == 0 {
		return nil
	}
	cfg := model.L7Config{Listeners: []model.L7Listener{{Name: "check", VirtualHosts: []model.VirtualHost{{Name: "check", Domains: []string{"*"}, Routes: routes}}}}}
	for _, name := range sortedKeys(lb.clusters) {
		cfg.Clusters = append(cfg.Clusters, *lb.clusters[name])
	}
	return cfg.Validate()
}

func contains(list []string, s string) bool {
	for _, v := range list {
		if v == s {
			return true
		}
	}
	return false
}

func destPort(d *networkingapi.Destination, listener uint32) uint32 {
	if p := d.GetPort().GetNumber(); p != 0 {
		return p
	}
	return listener
}

// weight applies Istio's rule: a single destination gets all traffic.
func weight(w int32, n int) uint32 {
	if n == 1 && w == 0 {
		return 100
	}
	if w < 0 {
		return 0
	}
	return uint32(w)
}

func percent(p *networkingapi.Percent, def float64) float64 {
	if p != nil {
		return p.GetValue()
	}
	return def
}

// corsPolicy translates a VirtualService route's corsPolicy. The
// deprecated allowOrigin list (exact origins, "*" for any) still counts.
func corsPolicy(cp *networkingapi.CorsPolicy) *model.CORSPolicy {
	p := &model.CORSPolicy{
		AllowMethods:     cp.GetAllowMethods(),
		AllowHeaders:     cp.GetAllowHeaders(),
		ExposeHeaders:    cp.GetExposeHeaders(),
		MaxAge:           cp.GetMaxAge().AsDuration(),
		AllowCredentials: cp.GetAllowCredentials().GetValue(),
	}
	for _, o := range cp.GetAllowOrigins() {
		if m := stringMatch(o, false); m != nil {
			p.AllowOrigins = append(p.AllowOrigins, *m)
		}
	}
	//lint:ignore SA1019 users still write the deprecated allowOrigin list.
	for _, o := range cp.GetAllowOrigin() {
		if o == "*" {
			p.AllowOrigins = append(p.AllowOrigins, model.StringMatch{Regex: ".*"})
		} else {
			p.AllowOrigins = append(p.AllowOrigins, model.StringMatch{Exact: o})
		}
	}
	return p
}

func headerOps(h *networkingapi.Headers_HeaderOperations) model.HeaderOps {
	if h == nil {
		return model.HeaderOps{}
	}
	return model.HeaderOps{Set: h.GetSet(), Add: h.GetAdd(), Remove: h.GetRemove()}
}

func stringMatch(sm *networkingapi.StringMatch, ignoreCase bool) *model.StringMatch {
	if sm == nil {
		return nil
	}
	return &model.StringMatch{Exact: sm.GetExact(), Prefix: sm.GetPrefix(), Regex: sm.GetRegex(), IgnoreCase: ignoreCase}
}

func routeMatch(m *networkingapi.HTTPMatchRequest) model.RouteMatch {
	rm := model.RouteMatch{
		URI:             stringMatch(m.GetUri(), m.GetIgnoreUriCase()),
		Method:          stringMatch(m.GetMethod(), false),
		Authority:       stringMatch(m.GetAuthority(), false),
		Port:            m.GetPort(),
		SourceLabels:    m.GetSourceLabels(),
		SourceNamespace: m.GetSourceNamespace(),
	}
	for _, name := range sortedKeys(m.GetHeaders()) {
		rm.Headers = append(rm.Headers, headerMatch(name, m.GetHeaders()[name], false))
	}
	for _, name := range sortedKeys(m.GetWithoutHeaders()) {
		rm.Headers = append(rm.Headers, headerMatch(name, m.GetWithoutHeaders()[name], true))
	}
	for _, name := range sortedKeys(m.GetQueryParams()) {
		rm.QueryParams = append(rm.QueryParams, headerMatch(name, m.GetQueryParams()[name], false))
	}
	return rm
}

func headerMatch(name string, sm *networkingapi.StringMatch, invert bool) model.HeaderMatch {
	hm := model.HeaderMatch{Name: name, Invert: invert}
	if v := stringMatch(sm, false); v != nil {
		hm.Value = *v
	}
	return hm
}

// gatewayRoutes translates the HTTPRoute and GRPCRoute rules (GAMMA) of one
// service port, in Gateway API's precedence (sortGatewayRoutes).
func (lb *l7Builder) gatewayRoutes(rts []*gatewayv1.HTTPRoute, grpcs []*gatewayv1.GRPCRoute, ms *model.Service, port uint32) []model.L7Route {
	var all []rankedRoute
	for _, rt := range oldestFirst(rts) {
		if !parentPort(rt.Spec.ParentRefs, ms.Name, port) {
			continue
		}
		routes := lb.httpRouteRules(rt, port)
		if err := lb.check(plainRoutes(routes)); err != nil {
			lb.bd.rejecter(KindHTTPRoute, rt.Namespace, rt.Name).reject("%v", err)
			continue
		}
		all = append(all, routes...)
	}
	for _, rt := range oldestFirst(grpcs) {
		if !parentPort(rt.Spec.ParentRefs, ms.Name, port) {
			continue
		}
		routes := lb.grpcRouteRules(rt, port)
		if err := lb.check(plainRoutes(routes)); err != nil {
			lb.bd.rejecter(KindGRPCRoute, rt.Namespace, rt.Name).reject("%v", err)
			continue
		}
		all = append(all, routes...)
	}
	sortGatewayRoutes(all)
	return plainRoutes(all)
}

// oldestFirst orders routes as Gateway API breaks precedence ties: the
// oldest first, then by namespace/name.
func oldestFirst[R interface {
	*gatewayv1.HTTPRoute | *gatewayv1.GRPCRoute | *gatewayv1.TLSRoute | *gatewayv1.TCPRoute | *gatewayv1.BackendTLSPolicy | *gatewayxv1alpha1.XBackendTrafficPolicy
	GetCreationTimestamp() metav1.Time
	GetNamespace() string
	GetName() string
}](rts []R) []R {
	out := slices.Clone(rts)
	slices.SortStableFunc(out, func(a, b R) int {
		if c := a.GetCreationTimestamp().Time.Compare(b.GetCreationTimestamp().Time); c != 0 {
			return c
		}
		return strings.Compare(a.GetNamespace()+"/"+a.GetName(), b.GetNamespace()+"/"+b.GetName())
	})
	return out
}

// rankedRoute is a route made from one match of a Gateway API rule (see
// splitMatches) with its place in Gateway API's precedence, which the
// route alone cannot say for a GRPCRoute.
type rankedRoute struct {
	model.L7Route
	// grpc marks a GRPCRoute rule's: they go after HTTPRoute's, as Gateway
	// API ranks the two kinds apart ("merging MUST not be done").
	grpc bool
	// rank is compared field by field, the larger first.
	rank [6]int
}

// plainRoutes drops the ranks.
func plainRoutes(rs []rankedRoute) []model.L7Route {
	out := make([]model.L7Route, 0, len(rs))
	for _, r := range rs {
		out = append(out, r.L7Route)
	}
	return out
}

// httpRank is the precedence of a route made from one HTTPRoute match: an
// Exact path, then a PathPrefix (the longest first), then a
// RegularExpression path, then no path; then a method match; then more
// header matches; then more query parameter matches. A route without
// matches goes last.
func httpRank(r *model.L7Route) [6]int {
	if len(r.Matches) == 0 {
		return [6]int{}
	}
	m := r.Matches[0]
	k := [6]int{0: 1}
	if u := m.URI; u != nil {
		switch {
		case u.Exact != "":
			k[1], k[2] = 3, len(u.Exact)
		case u.PathPrefix != "":
			// A trailing slash does not count: "/api/" and "/api" match
			// the same paths.
			k[1], k[2] = 2, len(strings.TrimSuffix(u.PathPrefix, "/"))
		case u.Prefix != "":
			k[1], k[2] = 2, len(u.Prefix)
		case u.Regex != "":
			k[1], k[2] = 1, len(u.Regex)
		}
	}
	if m.Method != nil {
		k[3] = 1
	}
	k[4], k[5] = len(m.Headers), len(m.QueryParams)
	return k
}

// grpcRank is the precedence of one GRPCRoute match, as GRPCRouteRule's
// matches documents it: more characters in the service, then in the
// method, then more header matches (the hostname criteria before them are
// a tie inside one virtual host). A RegularExpression counts the
// characters written; no match at all ranks as an empty one.
func grpcRank(m *gatewayv1.GRPCRouteMatch) [6]int {
	var k [6]int
	if m == nil {
		return k
	}
	if mm := m.Method; mm != nil {
		if mm.Service != nil {
			k[0] = len(*mm.Service)
		}
		if mm.Method != nil {
			k[1] = len(*mm.Method)
		}
	}
	k[2] = len(m.Headers)
	return k
}

// sortGatewayRoutes puts routes made from Gateway API rules in Gateway
// API's precedence: HTTPRoute's by httpRank, then GRPCRoute's by grpcRank.
// The sort is stable, so given routes oldest first (oldestFirst) in rule
// and match order, ties go to the oldest route, then namespace/name, then
// the first rule and match.
func sortGatewayRoutes(routes []rankedRoute) {
	slices.SortStableFunc(routes, func(a, b rankedRoute) int {
		if a.grpc != b.grpc {
			if b.grpc {
				return -1
			}
			return 1
		}
		for i := range a.rank {
			if a.rank[i] != b.rank[i] {
				return b.rank[i] - a.rank[i]
			}
		}
		return 0
	})
}

// splitMatches makes one route per match of r (Gateway API ranks each match
// on its own). A route without matches stays one route.
func splitMatches(r model.L7Route) []model.L7Route {
	if len(r.Matches) <= 1 {
		return []model.L7Route{r}
	}
	out := make([]model.L7Route, 0, len(r.Matches))
	for _, m := range r.Matches {
		one := r
		one.Matches = []model.RouteMatch{m}
		out = append(out, one)
	}
	return out
}

// jwtProviders collects the JWT rules of RequestAuthentications that target
// the waypoint Gateway or a Service bound to it.
func (bd *build) jwtProviders(wp model.NamespacedName) []model.JWTProvider {
	var out []model.JWTProvider
	for _, k := range sortedKeys(bd.in.requestAuths) {
		c := bd.in.requestAuths[k]
		whole, services := bd.waypointTargets(c, wp)
		if !whole && len(services) == 0 {
			continue
		}
		if whole {
			services = nil // the Gateway itself: every request
		}
		out = append(out, bd.jwtRules(k, services)...)
	}
	return out
}

// jwtRules are the providers of RequestAuthentication k's jwtRules, limited
// to requests for services when that is set (a policy targeting Services);
// none when a rule is invalid, which is reported once however many proxies
// the policy applies to.
func (bd *build) jwtRules(k string, services []string) []model.JWTProvider {
	c := bd.in.requestAuths[k]
	var provs []model.JWTProvider
	for i, r := range c.spec.GetJwtRules() {
		p := jwtProvider(fmt.Sprintf("%s/%s[%d]", c.meta.Namespace, c.meta.Name, i), r)
		p.Services = services
		if err := p.Validate(); err != nil {
			if !bd.rejectedRA[k] {
				bd.rejecter(KindRequestAuthentication, c.meta.Namespace, c.meta.Name).reject("jwtRules[%d]: %v", i, err)
			}
			if bd.rejectedRA == nil {
				bd.rejectedRA = map[string]bool{}
			}
			bd.rejectedRA[k] = true
			return nil
		}
		provs = append(provs, p)
	}
	return provs
}

// waypointTargets says whether a RequestAuthentication targets the waypoint
// Gateway itself (whole) and which hostnames of Services bound to it it
// targets.
func (bd *build) waypointTargets(c config[securityapi.RequestAuthentication], wp model.NamespacedName) (whole bool, services []string) {
	refs := append([]*typeapi.PolicyTargetReference{c.spec.GetTargetRef()}, c.spec.GetTargetRefs()...)
	for _, tr := range refs {
		if tr == nil {
			continue
		}
		switch tr.GetKind() {
		case "Gateway":
			if c.meta.Namespace == wp.Namespace && tr.GetName() == wp.Name {
				whole = true
			}
		case "Service":
			if ms, ok := bd.svcByKey[c.meta.Namespace+"/"+tr.GetName()]; ok && ms.Waypoint != nil && ms.Waypoint.Waypoint == wp {
				services = append(services, ms.Hostnames...)
			}
		}
	}
	return whole, services
}

func jwtProvider(name string, r *securityapi.JWTRule) model.JWTProvider {
	p := model.JWTProvider{
		Name: name, Issuer: r.GetIssuer(), Audiences: r.GetAudiences(), JWKS: r.GetJwks(), JWKSURI: r.GetJwksUri(),
		FromParams: r.GetFromParams(), FromCookies: r.GetFromCookies(), ForwardOriginalToken: r.GetForwardOriginalToken(), OutputPayloadToHeader: r.GetOutputPayloadToHeader(),
	}
	for _, h := range r.GetFromHeaders() {
		p.FromHeaders = append(p.FromHeaders, model.JWTHeader{Name: h.GetName(), Prefix: h.GetPrefix()})
	}
	for _, ch := range r.GetOutputClaimToHeaders() {
		p.OutputClaimToHeaders = append(p.OutputClaimToHeaders, model.ClaimToHeader{Header: ch.GetHeader(), Claim: ch.GetClaim()})
	}
	return p
}

// httpRouteRules translates an HTTPRoute's rules; a backendRef without a
// port uses defaultPort. A backend in another namespace needs a
// ReferenceGrant there (Gateway API); without one it is dropped with a
// warning, and a rule left without backends answers 500.
func (lb *l7Builder) httpRouteRules(rt *gatewayv1.HTTPRoute, defaultPort uint32) []rankedRoute {
	var routes []rankedRoute
	for i, rule := range rt.Spec.Rules {
		r := model.L7Route{Name: fmt.Sprintf("%s.%s.%d", rt.Name, rt.Namespace, i), Origin: "HTTPRoute/" + rt.Namespace + "/" + rt.Name}
		if rule.Name != nil {
			r.Name = string(*rule.Name)
		}
		for _, m := range rule.Matches {
			rm := model.RouteMatch{}
			if m.Path != nil && m.Path.Value != nil {
				t := gatewayv1.PathMatchPathPrefix
				if m.Path.Type != nil {
					t = *m.Path.Type
				}
				switch t {
				case gatewayv1.PathMatchExact:
					rm.URI = &model.StringMatch{Exact: *m.Path.Value}
				case gatewayv1.PathMatchRegularExpression:
					rm.URI = &model.StringMatch{Regex: *m.Path.Value}
				default:
					rm.URI = &model.StringMatch{PathPrefix: *m.Path.Value}
				}
			}
			if m.Method != nil {
				rm.Method = &model.StringMatch{Exact: string(*m.Method)}
			}
			for _, h := range m.Headers {
				hm := model.HeaderMatch{Name: string(h.Name), Value: model.StringMatch{Exact: h.Value}}
				if h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression {
					hm.Value = model.StringMatch{Regex: h.Value}
				}
				rm.Headers = append(rm.Headers, hm)
			}
			for _, q := range m.QueryParams {
				hm := model.HeaderMatch{Name: string(q.Name), Value: model.StringMatch{Exact: q.Value}}
				if q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression {
					hm.Value = model.StringMatch{Regex: q.Value}
				}
				rm.QueryParams = append(rm.QueryParams, hm)
			}
			r.Matches = append(r.Matches, rm)
		}
		var resolved []int // index in rule.BackendRefs of each destination
		for bi, b := range rule.BackendRefs {
			r.Destinations = append(r.Destinations, lb.ruleBackend(KindHTTPRoute, rt.Namespace, rt.Name, b.BackendRef, defaultPort))
			resolved = append(resolved, bi)
		}
		if answersAll500(r.Destinations) {
			r.Destinations, resolved = nil, nil
			r.DirectResponse = &model.DirectResponse{Status: 500} // Gateway API: no valid backend → 500
		}
		var perTry time.Duration
		r.Timeout, perTry = lb.httpRouteTimeouts(rt, i, rule.Timeouts)
		if err := lb.applyHTTPRouteRule(rt, rule, &r, resolved, defaultPort); err != nil {
			// Gateway API: a filter that cannot be applied is never
			// skipped; the requests it would have handled get an error.
			lb.bd.rejecter(KindHTTPRoute, rt.Namespace, rt.Name).warn("rules[%d]: %v; its requests are answered 500", i, err)
			r = model.L7Route{Name: r.Name, Origin: r.Origin, Matches: r.Matches, DirectResponse: &model.DirectResponse{Status: 500}}
		}
		if len(r.Destinations) > 0 {
			r.Session = lb.ruleSession(KindHTTPRoute, rt.Namespace, rt.Name, ruleLabel(i, rule.Name), rule.SessionPersistence)
		}
		if perTry > 0 && len(r.Destinations) > 0 {
			if r.Retries == nil {
				// No retry stanza: the waypoint's default retries, each
				// try bounded.
				rp := model.DefaultRetry
				rp.RetryOn = slices.Clone(rp.RetryOn)
				rp.RetriableStatusCodes = slices.Clone(rp.RetriableStatusCodes)
				r.Retries = &rp
			}
			r.Retries.PerTryTimeout = perTry
		}
		for _, one := range splitMatches(r) {
			withCookiePath(&one)
			routes = append(routes, rankedRoute{L7Route: one, rank: httpRank(&one)})
		}
	}
	return routes
}

// httpRouteTimeouts reads rule i's timeouts: request bounds the whole
// request with its retries, backendRequest each try (Gateway API: "a
// timeout for an individual request from the gateway to a backend"). "0s"
// disables either. A value that is not a duration is reported on the route
// and that timeout left unset. A backendRequest longer than request is
// invalid (Gateway API) and reported; request then bounds each try.
func (lb *l7Builder) httpRouteTimeouts(rt *gatewayv1.HTTPRoute, i int, t *gatewayv1.HTTPRouteTimeouts) (request, backendRequest time.Duration) {
	if t == nil {
		return 0, 0
	}
	parse := func(field string, v *gatewayv1.Duration) time.Duration {
		if v == nil {
			return 0
		}
		d, err := time.ParseDuration(string(*v))
		if err != nil || d < 0 {
			lb.bd.rejecter(KindHTTPRoute, rt.Namespace, rt.Name).warn("rules[%d].timeouts.%s %q is not a duration (want one such as \"10s\" or \"500ms\", \"0s\" for none); the rule has no %s timeout", i, field, *v, field)
			return 0
		}
		return d
	}
	request, backendRequest = parse("request", t.Request), parse("backendRequest", t.BackendRequest)
	if request > 0 && backendRequest > request {
		lb.bd.rejecter(KindHTTPRoute, rt.Namespace, rt.Name).warn("rules[%d].timeouts.backendRequest %v is longer than timeouts.request %v, which Gateway API does not allow; each try is bounded by %v", i, backendRequest, request, request)
		backendRequest = request
	}
	return request, backendRequest
}

// referenceGranted reports whether a ReferenceGrant in toNS lets objects
// of kind (Gateway API's group) in fromNS refer to the Service name.
func (bd *build) referenceGranted(kind, fromNS, toNS, name string) bool {
	return bd.granted(kind, fromNS, "Service", toNS, name)
}

// granted reports whether a ReferenceGrant in toNS lets objects of kind
// (Gateway API's group) in fromNS refer to the core object toKind name.
func (bd *build) granted(kind, fromNS, toKind, toNS, name string) bool {
	for _, k := range sortedKeys(bd.in.referenceGrants) {
		g := bd.in.referenceGrants[k]
		if g.Namespace != toNS {
			continue
		}
		from, to := false, false
		for _, f := range g.Spec.From {
			from = from || (f.Group == gatewayv1.GroupName && string(f.Kind) == kind && string(f.Namespace) == fromNS)
		}
		for _, t := range g.Spec.To {
			to = to || (t.Group == "" && string(t.Kind) == toKind && (t.Name == nil || string(*t.Name) == name))
		}
		if from && to {
			return true
		}
	}
	return false
}

// backend translates one Gateway API backendRef to a Service; ok is false
// for other kinds and for cross-namespace references no ReferenceGrant allows.
// A Service that does not exist gets its cluster, without endpoints: a
// request mirror to it mirrors nothing. Route rules use ruleBackend.
func (lb *l7Builder) backend(kind, rtNS, rtName string, b gatewayv1.BackendRef, defaultPort uint32) (model.WeightedDestination, bool) {
	ns, fault := lb.bd.resolveBackendRef(kind, rtNS, b)
	switch fault.reason {
	case gatewayv1.RouteReasonInvalidKind:
		return model.WeightedDestination{}, false
	case gatewayv1.RouteReasonRefNotPermitted:
		lb.bd.rejecter(kind, rtNS, rtName).warn("backendRef %s/%s: no ReferenceGrant in %s allows it; dropped", ns, b.Name, ns)
		return model.WeightedDestination{}, false
	}
	p := defaultPort
	if b.Port != nil {
		p = uint32(*b.Port)
	}
	host := string(b.Name) + "." + ns + ".svc." + lb.bd.opts.ClusterDomain
	return model.WeightedDestination{Cluster: lb.cluster(host, p), Weight: backendWeight(b)}, true
}

// ruleBackend translates one backendRef of a route rule. A reference that
// does not resolve (a kind other than Service, another namespace without a
// ReferenceGrant, a Service that does not exist) keeps its weight and
// answers its share of the requests 500, as Gateway API asks ("requests
// that would have been sent to an invalid backend MUST receive a 500"):
// it is neither dropped, which would send its share to the others, nor an
// empty cluster, which would answer 503. The route's ResolvedRefs
// condition says why (gatewaystatus.go).
func (lb *l7Builder) ruleBackend(kind, rtNS, rtName string, b gatewayv1.BackendRef, defaultPort uint32) model.WeightedDestination {
	ns, fault := lb.bd.resolveBackendRef(kind, rtNS, b)
	if fault.reason == "" {
		d, _ := lb.backend(kind, rtNS, rtName, b, defaultPort)
		return d
	}
	if fault.reason == gatewayv1.RouteReasonRefNotPermitted {
		lb.bd.rejecter(kind, rtNS, rtName).warn("backendRef %s/%s: no ReferenceGrant in %s allows it; its requests are answered 500", ns, b.Name, ns)
	}
	return model.WeightedDestination{Weight: backendWeight(b), DirectResponse: &model.DirectResponse{Status: 500}}
}

// backendWeight is a backendRef's weight, 1 when unset.
func backendWeight(b gatewayv1.BackendRef) uint32 {
	if b.Weight != nil && *b.Weight >= 0 {
		return uint32(*b.Weight)
	}
	return 1
}

// answersAll500 reports whether a rule's destinations send no request to
// a backend: there are none, or those with weight are all answered
// directly (Gateway API: a rule without a valid backend, or whose weights
// are all zero, answers 500).
func answersAll500(ds []model.WeightedDestination) bool {
	for _, d := range ds {
		if d.DirectResponse == nil && (d.Weight > 0 || len(ds) == 1) {
			return false
		}
	}
	return true
}

// grpcRouteRules translates a GRPCRoute's rules, one route per match (see
// splitMatches): a method match becomes a match on the request path
// "/<service>/<method>".
func (lb *l7Builder) grpcRouteRules(rt *gatewayv1.GRPCRoute, defaultPort uint32) []rankedRoute {
	var routes []rankedRoute
	for i, rule := range rt.Spec.Rules {
		r := model.L7Route{Name: fmt.Sprintf("%s.%s.%d", rt.Name, rt.Namespace, i), Origin: "GRPCRoute/" + rt.Namespace + "/" + rt.Name}
		if rule.Name != nil {
			r.Name = string(*rule.Name)
		}
		for _, m := range rule.Matches {
			rm := model.RouteMatch{}
			if mm := m.Method; mm != nil {
				svc, method := "", ""
				if mm.Service != nil {
					svc = *mm.Service
				}
				if mm.Method != nil {
					method = *mm.Method
				}
				if mm.Type != nil && *mm.Type == gatewayv1.GRPCMethodMatchRegularExpression {
					if svc == "" {
						svc = "[^/]+"
					}
					if method == "" {
						method = "[^/]+"
					}
					rm.URI = &model.StringMatch{Regex: "/" + svc + "/" + method}
				} else {
					switch {
					case svc != "" && method != "":
						rm.URI = &model.StringMatch{Exact: "/" + svc + "/" + method}
					case svc != "":
						rm.URI = &model.StringMatch{Prefix: "/" + svc + "/"}
					case method != "":
						rm.URI = &model.StringMatch{Regex: "/[^/]+/" + regexp.QuoteMeta(method)}
					}
				}
			}
			for _, h := range m.Headers {
				hm := model.HeaderMatch{Name: string(h.Name), Value: model.StringMatch{Exact: h.Value}}
				if h.Type != nil && *h.Type == gatewayv1.GRPCHeaderMatchRegularExpression {
					hm.Value = model.StringMatch{Regex: h.Value}
				}
				rm.Headers = append(rm.Headers, hm)
			}
			r.Matches = append(r.Matches, rm)
		}
		for _, b := range rule.BackendRefs {
			r.Destinations = append(r.Destinations, lb.ruleBackend(KindGRPCRoute, rt.Namespace, rt.Name, b.BackendRef, defaultPort))
		}
		if answersAll500(r.Destinations) {
			r.Destinations = nil
			r.DirectResponse = &model.DirectResponse{Status: 500}
		}
		// GRPCRoute's filters are HTTPRoute's header modifiers, mirror and
		// extension reference, with the same type names and fields.
		for k, f := range rule.Filters {
			hf := gatewayv1.HTTPRouteFilter{
				Type:                   gatewayv1.HTTPRouteFilterType(f.Type),
				RequestHeaderModifier:  f.RequestHeaderModifier,
				ResponseHeaderModifier: f.ResponseHeaderModifier,
				RequestMirror:          f.RequestMirror,
				ExtensionRef:           f.ExtensionRef,
			}
			if err := lb.applyHTTPFilter(routeRef{KindGRPCRoute, rt.Namespace, rt.Name}, hf, &r, defaultPort); err != nil {
				// As for HTTPRoute: never skipped, its requests get an error.
				lb.bd.rejecter(KindGRPCRoute, rt.Namespace, rt.Name).warn("rules[%d]: filters[%d] (%s): %v; its requests are answered 500", i, k, f.Type, err)
				r = model.L7Route{Name: r.Name, Origin: r.Origin, Matches: r.Matches, DirectResponse: &model.DirectResponse{Status: 500}}
				break
			}
		}
		if len(r.Destinations) > 0 {
			r.Session = lb.ruleSession(KindGRPCRoute, rt.Namespace, rt.Name, ruleLabel(i, rule.Name), rule.SessionPersistence)
		}
		for j, one := range splitMatches(r) {
			withCookiePath(&one)
			var m *gatewayv1.GRPCRouteMatch
			if j < len(rule.Matches) {
				m = &rule.Matches[j]
			}
			routes = append(routes, rankedRoute{L7Route: one, grpc: true, rank: grpcRank(m)})
		}
	}
	return routes
}

// upstreamTLS turns a DestinationRule's client TLS settings into TLS
// origination for the proxy of namespace lb.ns (where its credentialName
// Secret is read, as Istio reads it beside the proxy). DISABLE and
// ISTIO_MUTUAL need none: mesh endpoints are reached over HBONE, mutual TLS
// already. ok is false when origination is asked for and cannot be set up
// (reported on the DestinationRule); the caller then sends nothing.
func (lb *l7Builder) upstreamTLS(dr config[networkingapi.DestinationRule], t *networkingapi.ClientTLSSettings, host, field string) (*model.UpstreamTLS, bool) {
	var mode string
	switch t.GetMode() {
	case networkingapi.ClientTLSSettings_SIMPLE:
		mode = model.TLSModeSimple
	case networkingapi.ClientTLSSettings_MUTUAL:
		mode = model.TLSModeMutual
	default:
		return nil, true
	}
	r := lb.bd.rejecter(KindDestinationRule, dr.meta.Namespace, dr.meta.Name)
	out := &model.UpstreamTLS{Mode: mode, SNI: cmp.Or(t.GetSni(), host), SubjectAltNames: slices.Clone(t.GetSubjectAltNames()),
		InsecureSkipVerify: t.GetInsecureSkipVerify().GetValue()}
	if t.GetCaCertificates() != "" || t.GetClientCertificate() != "" || t.GetPrivateKey() != "" || t.GetCaCrl() != "" {
		r.warn("%s.tls: certificates by file path (caCertificates, clientCertificate, privateKey, caCrl) are not read by meshlet's proxies: put them in a kubernetes.io/tls Secret (tls.crt, tls.key, ca.crt) in namespace %s and name it in credentialName", field, lb.ns)
	}
	if name := t.GetCredentialName(); name != "" {
		sec := lb.bd.in.tlsSecrets[lb.ns+"/"+name]
		if sec == nil {
			r.warn("%s.tls.credentialName %q: no Secret of type kubernetes.io/tls named so in namespace %s (the proxy's); requests to %s get 503 until it exists", field, name, lb.ns, host)
			return nil, false
		}
		check := lb.bd.credentialCheck(sec)
		if ca := sec.Data[caCertKey]; len(ca) > 0 {
			if !check.caUsable() {
				r.warn("%s.tls.credentialName %q: %s holds no PEM certificate; requests to %s get 503", field, name, caCertKey, host)
				return nil, false
			}
			out.CAPEM = string(ca)
		}
		if mode == model.TLSModeMutual {
			if err := check.keyPair(); err != nil {
				r.warn("%s.tls.credentialName %q: tls.crt and tls.key do not form a usable key pair (%v); requests to %s get 503", field, name, err, host)
				return nil, false
			}
			out.ClientCertPEM, out.ClientKeyPEM = string(sec.Data[corev1.TLSCertKey]), string(sec.Data[corev1.TLSPrivateKeyKey])
		}
	} else if mode == model.TLSModeMutual {
		r.warn("%s.tls: mode MUTUAL needs credentialName, a kubernetes.io/tls Secret in namespace %s with the client certificate (tls.crt, tls.key); requests to %s get 503", field, lb.ns, host)
		return nil, false
	}
	return out, true
}

// credentialCheck returns what parsing the credentialName Secret sec finds,
// shared by every cluster of every waypoint and every ingress server of
// this build that names it: each of its PEMs is parsed at most once per
// build. The key holds the Secret's resourceVersion, so that an entry
// never stands for another version of it.
func (bd *build) credentialCheck(sec *corev1.Secret) *credentialCheck {
	key := sec.Namespace + "/" + sec.Name + "@" + sec.ResourceVersion
	c, ok := bd.credentials[key]
	if !ok {
		if bd.credentials == nil {
			bd.credentials = map[string]*credentialCheck{}
		}
		c = &credentialCheck{key: key, secret: sec}
		bd.credentials[key] = c
	}
	return c
}

// credentialCheck holds the validation of one credentialName Secret, each
// part done when a DestinationRule first needs it (a SIMPLE origination
// never parses the key pair). The warnings stay with the callers, which
// name the rule's field and host.
type credentialCheck struct {
	key    string // namespace/name@resourceVersion
	secret *corev1.Secret

	caDone, caOK bool
	pairDone     bool
	pairErr      error
}

// credentialParsed, when set, is called with the Secret's key and the part
// (caCertKey or "key pair") each time a credentialCheck parses it. Nil but
// in tests, which count the parses.
var credentialParsed func(key, part string)

// caUsable reports whether the Secret's ca.crt holds a PEM certificate.
func (c *credentialCheck) caUsable() bool {
	if !c.caDone {
		if credentialParsed != nil {
			credentialParsed(c.key, caCertKey)
		}
		c.caDone, c.caOK = true, x509.NewCertPool().AppendCertsFromPEM(c.secret.Data[caCertKey])
	}
	return c.caOK
}

// keyPair says why the Secret's tls.crt and tls.key do not form a usable
// key pair, or nil.
func (c *credentialCheck) keyPair() error {
	if !c.pairDone {
		if credentialParsed != nil {
			credentialParsed(c.key, "key pair")
		}
		_, c.pairErr = tls.X509KeyPair(c.secret.Data[corev1.TLSCertKey], c.secret.Data[corev1.TLSPrivateKeyKey])
		c.pairDone = true
	}
	return c.pairErr
}

// viaWaypoint is the HBONE hop to the waypoint ref names, or nil when the
// snapshot has no address or identity for it yet (then the ingress cluster
// gets no endpoints: see l7Builder.cluster).
func (bd *build) viaWaypoint(ref *model.WaypointRef) *model.L7Via {
	wp, ok := bd.waypoints[ref.Waypoint]
	if !ok || len(ref.Addresses) == 0 || wp.Identity == "" {
		return nil
	}
	return &model.L7Via{
		Waypoint: ref.Waypoint,
		Address:  netip.AddrPortFrom(ref.Addresses[0], model.PortHBONE).String(),
		Identity: wp.Identity,
	}
}

// ingressUsesWaypoint reports whether ingress gateways send a service's
// requests through its waypoint: it has one (for services) and the
// istio.io/ingress-use-waypoint label is "true" on the service (Service or
// ServiceEntry), else on its namespace.
func (bd *build) ingressUsesWaypoint(ms *model.Service) bool {
	if ms.Waypoint == nil || len(ms.VIPs) == 0 {
		return false
	}
	var labels map[string]string
	if ms.Source == model.SourceKubernetes {
		if svc := bd.kubeSvcs[ms.Namespace+"/"+ms.Name]; svc != nil {
			labels = svc.Labels
		}
	} else if se, ok := bd.in.serviceEnts[ms.Namespace+"/"+ms.Name]; ok {
		labels = se.meta.Labels
	}
	if v, ok := labels[label.IoIstioIngressUseWaypoint.Name]; ok {
		return v == "true"
	}
	if nsObj := bd.in.namespaces[ms.Namespace]; nsObj != nil {
		return nsObj.Labels[label.IoIstioIngressUseWaypoint.Name] == "true"
	}
	return false
}
