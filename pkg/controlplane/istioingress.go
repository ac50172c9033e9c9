package controlplane

import (
	"sort"
	"strconv"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"

	"github.com/meshlet/meshlet/pkg/model"
)

// buildIstioIngressL7 adds the L7 configuration of every Istio
// (networking.istio.io) Gateway to out, keyed by the Gateway's namespace and
// name. Each HTTP server port becomes a listener; the VirtualServices that
// name the Gateway in spec.gateways ("name" in their own namespace, or
// "namespace/name") supply one virtual host per VirtualService with its
// hosts, limited to the server's hosts. HTTPS/TLS servers (certificates from
// Secrets) are reported and skipped for now. A name already used by a Gateway
// API Gateway keeps the Gateway API configuration.
func (bd *build) buildIstioIngressL7(out map[model.NamespacedName]*model.L7Config) {
	for _, gw := range bd.validIstioGws {
		key := model.NamespacedName{Namespace: gw.meta.Namespace, Name: gw.meta.Name}
		r := bd.rejecter(KindIstioGateway, key.Namespace, key.Name)
		if _, taken := out[key]; taken {
			r.warn("a Gateway API Gateway %s has the same name; its configuration is used", key)
			continue
		}
		lb := &l7Builder{bd: bd, clusters: map[string]*model.L7Cluster{}}
		listeners := map[uint32]*model.L7Listener{}
		serverHosts := map[uint32][]string{}
		for i, s := range gw.spec.GetServers() {
			proto := strings.ToUpper(s.GetPort().GetProtocol())
			if proto != "HTTP" && proto != "HTTP2" && proto != "GRPC" {
				r.warn("servers[%d]: protocol %s is not served by meshlet's ingress yet; skipped", i, s.GetPort().GetProtocol())
				continue
			}
			if s.GetTls().GetHttpsRedirect() {
				r.warn("servers[%d]: tls.httpsRedirect needs an HTTPS server, which meshlet's ingress does not serve yet; ignored", i)
			}
			p := s.GetPort().GetNumber()
			if listeners[p] == nil {
				listeners[p] = &model.L7Listener{Name: s.GetPort().GetName(), Port: p}
				if listeners[p].Name == "" {
					listeners[p].Name = "port-" + strconv.FormatUint(uint64(p), 10)
				}
			}
			for _, h := range s.GetHosts() {
				// "namespace/host" limits which namespaces' VirtualServices may
				// bind; meshlet keeps the host part.
				if _, host, ok := strings.Cut(h, "/"); ok {
					h = host
				}
				serverHosts[p] = append(serverHosts[p], h)
			}
		}
		for _, vs := range bd.validVS {
			if !vsBindsGateway(vs, key) {
				continue
			}
			for port, l := range listeners {
				doms := hostIntersection(vs.spec.GetHosts(), serverHosts[port])
				if len(doms) == 0 {
					continue
				}
				routes := lb.virtualServiceRoutes(vs, port)
				if len(routes) == 0 {
					continue
				}
				l.VirtualHosts = append(l.VirtualHosts, model.VirtualHost{Name: vs.meta.Namespace + "/" + vs.meta.Name, Domains: doms, Routes: routes})
			}
		}
		cfg := &model.L7Config{}
		ports := make([]uint32, 0, len(listeners))
		for p := range listeners {
			ports = append(ports, p)
		}
		sort.Slice(ports, func(i, j int) bool { return ports[i] < ports[j] })
		for _, p := range ports {
			if l := listeners[p]; len(l.VirtualHosts) > 0 {
				cfg.Listeners = append(cfg.Listeners, *l)
			}
		}
		if len(cfg.Listeners) == 0 {
			continue
		}
		for _, name := range sortedKeys(lb.clusters) {
			cfg.Clusters = append(cfg.Clusters, *lb.clusters[name])
		}
		if err := cfg.Validate(); err != nil {
			r.reject("gateway L7 configuration is invalid, not pushed: %v", err)
			continue
		}
		out[key] = cfg
	}
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
