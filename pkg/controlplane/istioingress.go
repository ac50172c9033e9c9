package controlplane

import (
	"errors"
	"fmt"
	"slices"
	"sort"
	"strconv"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// buildIstioIngressL7 adds the L7 configuration of every gateway
// deployment that Istio (networking.istio.io) Gateways select to out, keyed
// by the deployment's namespace and name: the gateway-name label its pods
// carry, which is also how meshd recognises their xDS stream. As in Istio, a
// Gateway's selector picks gateway pods in any namespace, several Gateways
// may select one deployment (their servers merge), and a server port is the
// port of the gateway's Service: the listener opens on that Service port's
// targetPort, so an unprivileged gateway serves port 80 on 8080.
//
// Each server becomes a listener: HTTP/HTTP2/GRPC in plaintext, HTTPS with
// tls.mode SIMPLE or MUTUAL and a credentialName naming a kubernetes.io/tls
// Secret in the gateway's namespace (tls.crt, tls.key, and ca.crt for
// MUTUAL). A VirtualService naming the Gateway in spec.gateways ("name" in
// its own namespace, or "namespace/name") supplies one virtual host per
// server with its hosts limited to the server's. A server with
// tls.httpsRedirect answers every request with a 301 to https. A server
// with protocol TLS (or HTTPS) and tls.mode PASSTHROUGH forwards whole TLS
// connections by their server name to the destinations of the bound
// VirtualServices' tls routes (sniHosts); it may share a port with HTTPS
// servers, SNI deciding whether a connection is terminated or passed
// through. A TCP server forwards every connection to the destinations of
// the first bound VirtualService's tcp route for its port (by weight, as
// Istio's TCP traffic shifting). Anything else (AUTO_PASSTHROUGH,
// ISTIO_MUTUAL, certificates by file) is reported and skipped. A
// deployment that is also a Gateway API gateway keeps that configuration.
func (bd *build) buildIstioIngressL7(out map[model.NamespacedName]*model.L7Config) {
	if len(bd.validIstioGws) == 0 {
		return
	}
	deployments := map[model.NamespacedName]map[string]string{}
	for _, w := range bd.workloads {
		name := w.Labels[gatewayNameLabel]
		if w.Kind != model.KindPod || name == "" {
			continue
		}
		k := model.NamespacedName{Namespace: w.Namespace, Name: name}
		if _, seen := deployments[k]; !seen {
			deployments[k] = w.Labels
		}
	}
	keys := make([]model.NamespacedName, 0, len(deployments))
	for k := range deployments {
		keys = append(keys, k)
	}
	sort.Slice(keys, func(i, j int) bool { return keys[i].String() < keys[j].String() })
	for _, key := range keys {
		if _, isWaypoint := bd.waypoints[key]; isWaypoint {
			continue
		}
		labels := deployments[key]
		var gws []config[networkingapi.Gateway]
		for _, gw := range bd.validIstioGws {
			if sel := gw.spec.GetSelector(); len(sel) > 0 && model.SelectorMatches(sel, labels) {
				gws = append(gws, gw)
			}
		}
		if len(gws) == 0 {
			continue
		}
		if _, taken := out[key]; taken {
			for _, gw := range gws {
				bd.rejecter(KindIstioGateway, gw.meta.Namespace, gw.meta.Name).warn("its selector picks %s, a Gateway API gateway; that configuration is used", key)
			}
			continue
		}
		if cfg := bd.istioIngressConfig(key, labels, gws); cfg != nil {
			out[key] = cfg
		}
	}
}

// ingressServer is one Istio Gateway server as a listener will serve it.
type ingressServer struct {
	gw       model.NamespacedName
	port     uint32 // the server (Service) port VirtualServices match on
	hosts    []string
	redirect bool // tls.httpsRedirect
	pass     bool // tls.mode PASSTHROUGH: VirtualServices' tls routes
	tcp      bool // protocol TCP: a VirtualService's tcp route
}

// tcpRoute is the first tcp route of vs for port (with a match for the
// port, or none, and no other condition): a TCP server's, or a service's at
// its waypoint; nil when it has none. matched are the routes before it
// whose matches for the port have conditions on the client (sourceLabels,
// sourceNamespace) or the address dialled (destinationSubnets), which the
// proxy evaluates on each connection, in order.
func (lb *l7Builder) tcpRoute(vs config[networkingapi.VirtualService], port uint32) (matched []model.TCPRoute, route *model.TCPRoute) {
	for i, tr := range vs.spec.GetTcp() {
		applies := len(tr.GetMatch()) == 0
		var conds []model.TCPMatch
		for j, m := range tr.GetMatch() {
			if m.GetPort() != 0 && m.GetPort() != port {
				continue
			}
			if len(m.GetSourceLabels()) == 0 && m.GetSourceNamespace() == "" && len(m.GetDestinationSubnets()) == 0 {
				applies = true
				continue
			}
			subnets := m.GetDestinationSubnets()
			bad := false
			for _, sn := range subnets {
				if _, err := model.ParseSubnet(sn); err != nil {
					lb.bd.rejecter(KindVirtualService, vs.meta.Namespace, vs.meta.Name).warn("tcp[%d].match[%d].destinationSubnets: %v; the match is ignored", i, j, err)
					bad = true
				}
			}
			if !bad {
				conds = append(conds, model.TCPMatch{SourceLabels: m.GetSourceLabels(), SourceNamespace: m.GetSourceNamespace(), DestinationSubnets: subnets})
			}
		}
		if (!applies && len(conds) == 0) || len(tr.GetRoute()) == 0 {
			continue
		}
		r := &model.TCPRoute{Name: fmt.Sprintf("%s.%s.tcp.%d", vs.meta.Name, vs.meta.Namespace, i)}
		for _, d := range tr.GetRoute() {
			r.Destinations = append(r.Destinations, model.WeightedDestination{
				Cluster: lb.cluster(lb.bd.resolveHost(d.GetDestination().GetHost(), vs.meta.Namespace), destPort(d.GetDestination(), port)),
				Subset:  d.GetDestination().GetSubset(),
				Weight:  weight(d.GetWeight(), len(tr.GetRoute())),
			})
		}
		if applies {
			return matched, r
		}
		r.Matches = conds
		matched = append(matched, *r)
	}
	return matched, nil
}

// passthroughRoutes are the tls routes of vs for a PASSTHROUGH server (or a
// service's port at its waypoint, hosts "*"):
// each route whose matches (for the server's port, or any) name server
// names among the server's hosts, with its destinations by weight.
func (lb *l7Builder) passthroughRoutes(vs config[networkingapi.VirtualService], srv ingressServer) []model.PassthroughRoute {
	var out []model.PassthroughRoute
	for i, tr := range vs.spec.GetTls() {
		var snis []string
		for _, m := range tr.GetMatch() {
			if m.GetPort() != 0 && m.GetPort() != srv.port {
				continue
			}
			for _, h := range hostIntersection(m.GetSniHosts(), srv.hosts) {
				if !slices.Contains(snis, h) {
					snis = append(snis, h)
				}
			}
		}
		if len(snis) == 0 || len(tr.GetRoute()) == 0 {
			continue
		}
		r := model.PassthroughRoute{Name: fmt.Sprintf("%s.%s.tls.%d", vs.meta.Name, vs.meta.Namespace, i), SNIHosts: snis}
		for _, d := range tr.GetRoute() {
			r.Destinations = append(r.Destinations, model.WeightedDestination{
				Cluster: lb.cluster(lb.bd.resolveHost(d.GetDestination().GetHost(), vs.meta.Namespace), destPort(d.GetDestination(), srv.port)),
				Subset:  d.GetDestination().GetSubset(),
				Weight:  weight(d.GetWeight(), len(tr.GetRoute())),
			})
		}
		out = append(out, r)
	}
	return out
}

// addSNI adds a server's TLS settings to a TLS listener of the same port:
// its hosts join those of the listener's default or of an SNI entry with
// the same settings, or it becomes a new SNI entry.
func addSNI(l *model.L7Listener, t *model.ListenerTLS, hosts []string) {
	same := func(a *model.ListenerTLS) bool {
		return a.Mode == t.Mode && a.CertPEM == t.CertPEM && a.KeyPEM == t.KeyPEM && a.ClientCAPEM == t.ClientCAPEM
	}
	if same(l.TLS) {
		l.TLS.SNIHosts = append(l.TLS.SNIHosts, hosts...)
		return
	}
	for i := range l.SNI {
		if same(&l.SNI[i]) {
			l.SNI[i].SNIHosts = append(l.SNI[i].SNIHosts, hosts...)
			return
		}
	}
	e := *t
	e.SNIHosts = slices.Clone(hosts)
	l.SNI = append(l.SNI, e)
}

// istioIngressConfig merges the servers of gws into the configuration of one
// gateway deployment; nil when nothing is left to serve.
func (bd *build) istioIngressConfig(key model.NamespacedName, podLabels map[string]string, gws []config[networkingapi.Gateway]) *model.L7Config {
	targets := bd.gatewayTargetPorts(key.Namespace, podLabels)
	lb := &l7Builder{bd: bd, ns: key.Namespace, clusters: map[string]*model.L7Cluster{}, ingress: true}
	listeners := map[uint32]*model.L7Listener{}
	kindOn := map[uint32]string{} // what the port serves: plaintext HTTP, TLS or TCP
	servers := map[uint32][]ingressServer{}
	for _, gw := range gws {
		gwKey := model.NamespacedName{Namespace: gw.meta.Namespace, Name: gw.meta.Name}
		r := bd.rejecter(KindIstioGateway, gwKey.Namespace, gwKey.Name)
		for i, s := range gw.spec.GetServers() {
			p := s.GetPort().GetNumber()
			listenPort := p
			if t, ok := targets[p]; ok {
				listenPort = t
			}
			var tlsCfg *model.ListenerTLS
			pass, tcp := false, false
			switch proto := strings.ToUpper(s.GetPort().GetProtocol()); {
			case (proto == "TLS" || proto == "HTTPS") && s.GetTls().GetMode() == networkingapi.ServerTLSSettings_PASSTHROUGH:
				pass = true
			case proto == "TCP":
				tcp = true
			case proto == "HTTP", proto == "HTTP2", proto == "GRPC":
			case proto == "HTTPS":
				var err error
				if tlsCfg, err = bd.ingressTLS(key.Namespace, s); err != nil {
					r.warn("servers[%d] (port %d): %v; server skipped", i, p, err)
					continue
				}
			default:
				r.warn("servers[%d]: protocol %s is not served by meshlet's ingress (HTTP, HTTP2, GRPC, HTTPS, TCP, and TLS or HTTPS with tls.mode PASSTHROUGH are); skipped", i, s.GetPort().GetProtocol())
				continue
			}
			srv := ingressServer{gw: gwKey, port: p, redirect: s.GetTls().GetHttpsRedirect() && tlsCfg == nil && !pass && !tcp, pass: pass, tcp: tcp}
			for _, h := range s.GetHosts() {
				// "namespace/host" limits which namespaces' VirtualServices may
				// bind; meshlet keeps the host part.
				if _, host, ok := strings.Cut(h, "/"); ok {
					h = host
				}
				srv.hosts = append(srv.hosts, h)
			}
			// A port serves plaintext HTTP, TLS (terminated, passed
			// through, or both, told apart by SNI), or TCP.
			kind := "plaintext HTTP"
			switch {
			case tcp:
				kind = "TCP"
			case tlsCfg != nil || pass:
				kind = "TLS"
			}
			l := listeners[listenPort]
			switch {
			case l == nil:
				l = &model.L7Listener{Name: s.GetPort().GetName(), Port: listenPort}
				if l.Name == "" {
					l.Name = "port-" + strconv.FormatUint(uint64(p), 10)
				}
				listeners[listenPort], kindOn[listenPort] = l, kind
			case kindOn[listenPort] != kind:
				r.warn("servers[%d]: port %d already serves another server in %s; skipped", i, p, kindOn[listenPort])
				continue
			}
			switch {
			case tlsCfg != nil && l.TLS == nil:
				tlsCfg.SNIHosts = slices.Clone(srv.hosts)
				l.TLS = tlsCfg
			case tlsCfg != nil:
				// Another server's certificate on the same port: chosen by SNI.
				addSNI(l, tlsCfg, srv.hosts)
			}
			servers[listenPort] = append(servers[listenPort], srv)
		}
	}
	for port, l := range listeners {
		for _, srv := range servers[port] {
			if srv.tcp {
				for _, vs := range bd.validVS {
					if l.TCP == nil && l.TCPMatched == nil && vsBindsGateway(vs, srv.gw) && model.ExportedTo(vs.spec.GetExportTo(), vs.meta.Namespace, key.Namespace) {
						l.TCPMatched, l.TCP = lb.tcpRoute(vs, srv.port)
					}
				}
				continue
			}
			if srv.pass {
				for _, vs := range bd.validVS {
					if vsBindsGateway(vs, srv.gw) && model.ExportedTo(vs.spec.GetExportTo(), vs.meta.Namespace, key.Namespace) {
						l.Passthrough = append(l.Passthrough, lb.passthroughRoutes(vs, srv)...)
					}
				}
				continue
			}
			if srv.redirect {
				l.VirtualHosts = append(l.VirtualHosts, model.VirtualHost{
					Name: "https-redirect/" + srv.gw.String(), Domains: srv.hosts,
					Routes: []model.L7Route{{Name: "https-redirect", Redirect: &model.Redirect{Scheme: "https", Code: 301}}},
				})
				continue
			}
			for _, vs := range bd.validVS {
				// A VirtualService not exported to the gateway's namespace is
				// not the gateway's to serve, whatever its gateways say.
				if !vsBindsGateway(vs, srv.gw) || !model.ExportedTo(vs.spec.GetExportTo(), vs.meta.Namespace, key.Namespace) ||
					hasVirtualHost(l, vs.meta.Namespace+"/"+vs.meta.Name) {
					continue
				}
				doms := hostIntersection(vs.spec.GetHosts(), srv.hosts)
				if len(doms) == 0 {
					continue
				}
				routes := lb.virtualServiceRoutes(vs, srv.port)
				// Port matches were decided against the server port here;
				// the listener itself may open on another (the targetPort).
				for i := range routes {
					for j := range routes[i].Matches {
						routes[i].Matches[j].Port = 0
					}
				}
				if len(routes) > 0 {
					l.VirtualHosts = append(l.VirtualHosts, model.VirtualHost{Name: vs.meta.Namespace + "/" + vs.meta.Name, Domains: doms, Routes: routes})
				}
			}
		}
	}
	cfg := &model.L7Config{}
	ports := make([]uint32, 0, len(listeners))
	for p := range listeners {
		ports = append(ports, p)
	}
	sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
	for _, p := range ports {
		l := listeners[p]
		if len(l.VirtualHosts) == 0 {
			l.TLS, l.SNI = nil, nil // passthrough only: nothing terminates here
		}
		if len(l.VirtualHosts) > 0 || len(l.Passthrough) > 0 || l.TCP != nil || len(l.TCPMatched) > 0 {
			cfg.Listeners = append(cfg.Listeners, *l)
		}
	}
	if len(cfg.Listeners) == 0 {
		return nil
	}
	for _, name := range sortedKeys(lb.clusters) {
		cfg.Clusters = append(cfg.Clusters, *lb.clusters[name])
	}
	bd.finishSessions(cfg)
	if err := cfg.Validate(); err != nil {
		for _, gw := range gws {
			bd.rejecter(KindIstioGateway, gw.meta.Namespace, gw.meta.Name).reject("configuration of gateway %s is invalid, not pushed: %v", key, err)
		}
		return nil
	}
	return cfg
}

func hasVirtualHost(l *model.L7Listener, name string) bool {
	for _, vh := range l.VirtualHosts {
		if vh.Name == name {
			return true
		}
	}
	return false
}

// gatewayTargetPorts maps each port of the Services in ns that select a
// gateway's pods to the numeric port the pods serve it on.
func (bd *build) gatewayTargetPorts(ns string, podLabels map[string]string) map[uint32]uint32 {
	out := map[uint32]uint32{}
	for _, k := range sortedKeys(bd.kubeSvcs) {
		svc := bd.kubeSvcs[k]
		if svc.Namespace != ns || len(svc.Spec.Selector) == 0 || !model.SelectorMatches(svc.Spec.Selector, podLabels) {
			continue
		}
		for _, sp := range svc.Spec.Ports {
			if _, seen := out[uint32(sp.Port)]; seen {
				continue
			}
			if t := sp.TargetPort.IntValue(); t > 0 {
				out[uint32(sp.Port)] = uint32(t)
			} else if sp.TargetPort.StrVal == "" {
				out[uint32(sp.Port)] = uint32(sp.Port)
			}
		}
	}
	return out
}

// ingressTLS reads an HTTPS server's certificate from the kubernetes.io/tls
// Secret its credentialName names, in the gateway's namespace (Istio's rule).
func (bd *build) ingressTLS(gatewayNS string, s *networkingapi.Server) (*model.ListenerTLS, error) {
	t := s.GetTls()
	var mode string
	switch t.GetMode() {
	case networkingapi.ServerTLSSettings_SIMPLE:
		mode = model.TLSModeSimple
	case networkingapi.ServerTLSSettings_MUTUAL:
		mode = model.TLSModeMutual
	case networkingapi.ServerTLSSettings_OPTIONAL_MUTUAL:
		mode = model.TLSModeOptionalMutual
	default:
		return nil, fmt.Errorf("tls.mode %s is not served by meshlet's ingress: use SIMPLE, MUTUAL or OPTIONAL_MUTUAL", t.GetMode())
	}
	if t.GetCredentialName() == "" {
		return nil, errors.New("tls.credentialName is empty: name a kubernetes.io/tls Secret in the gateway's namespace (certificates by file path are not read)")
	}
	sec := bd.in.tlsSecrets[gatewayNS+"/"+t.GetCredentialName()]
	if sec == nil {
		return nil, fmt.Errorf("tls.credentialName %q: no Secret of type kubernetes.io/tls named so in namespace %s (the gateway's): create it with kubectl create secret tls %s -n %s --cert=<file> --key=<file>",
			t.GetCredentialName(), gatewayNS, t.GetCredentialName(), gatewayNS)
	}
	// Parsed once per build however many servers and gateways name it.
	check := bd.credentialCheck(sec)
	if err := check.keyPair(); err != nil {
		return nil, fmt.Errorf("credential secret %s/%s: tls.crt and tls.key do not form a usable key pair: %w", gatewayNS, t.GetCredentialName(), err)
	}
	out := &model.ListenerTLS{Mode: mode, CertPEM: string(sec.Data[corev1.TLSCertKey]), KeyPEM: string(sec.Data[corev1.TLSPrivateKeyKey])}
	if mode != model.TLSModeSimple {
		ca := sec.Data[caCertKey]
		if !check.caUsable() {
			return nil, fmt.Errorf("tls.mode %s: Secret %s/%s has no usable %s: add the client CA certificates to it", mode, gatewayNS, t.GetCredentialName(), caCertKey)
		}
		out.ClientCAPEM = string(ca)
	}
	return out, nil
}

// vsBindsGateway reports whether a VirtualService's gateways name gw.
func vsBindsGateway(vs config[networkingapi.VirtualService], gw model.NamespacedName) bool {
	for _, g := range vs.spec.GetGateways() {
		ns, name, ok := strings.Cut(g, "/")
		if !ok {
			ns, name = vs.meta.Namespace, g
		}
		if ns == gw.Namespace && name == gw.Name {
			return true
		}
	}
	return false
}

// hostIntersection returns the VirtualService hosts a server with
// serverHosts accepts: every host when the server has "*", else the hosts
// equal to or under a server host ("*.example.com").
func hostIntersection(vsHosts, serverHosts []string) []string {
	var out []string
	for _, h := range vsHosts {
		for _, s := range serverHosts {
			if s == "*" || s == h || (strings.HasPrefix(s, "*.") && strings.HasSuffix(h, s[1:])) {
				out = append(out, h)
				break
			}
			if h == "*" || (strings.HasPrefix(h, "*.") && strings.HasSuffix(s, h[1:])) {
				out = append(out, s)
				break
			}
		}
	}
	return out
}

// warnIstioGatewaysWithoutPods reports Istio Gateways whose selector matches
// no pod in any namespace: nothing serves them.
func (bd *build) warnIstioGatewaysWithoutPods() {
	for _, gw := range bd.validIstioGws {
		sel := gw.spec.GetSelector()
		found := false
		for _, w := range bd.workloads {
			if w.Kind == model.KindPod && model.SelectorMatches(sel, w.Labels) {
				found = true
				break
			}
		}
		if !found {
			bd.rejecter(KindIstioGateway, gw.meta.Namespace, gw.meta.Name).warn("selector %v matches no gateway pod", sel)
		}
	}
}
