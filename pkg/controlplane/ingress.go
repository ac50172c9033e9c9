package controlplane

import (
	"slices"
	"strings"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// buildIngressL7 adds the L7 configuration of every ingress Gateway (a
// Gateway API Gateway of an ingress class) to out, keyed by the Gateway's
// name like a waypoint's. Each HTTP listener gets the HTTPRoutes attached to
// it — parentRef to the Gateway, matching sectionName and port when given,
// and allowed by the listener's allowedRoutes (Same namespace by default) —
// one virtual host per distinct hostname set. Listeners of other protocols
// (HTTPS/TLS termination) are reported and skipped for now.
func (bd *build) buildIngressL7(out map[model.NamespacedName]*model.L7Config) {
	for _, gw := range bd.ingress {
		key := model.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}
		r := bd.rejecter(KindGateway, gw.Namespace, gw.Name)
		lb := &l7Builder{bd: bd, ns: gw.Namespace, clusters: map[string]*model.L7Cluster{}, ingress: true}
		cfg := &model.L7Config{}
		for _, l := range gw.Spec.Listeners {
			if l.Protocol != gatewayv1.HTTPProtocolType {
				r.warn("listener %q: protocol %s is not served by meshlet's ingress yet; skipped", l.Name, l.Protocol)
				continue
			}
			ml := model.L7Listener{Name: string(l.Name), Port: uint32(l.Port)}
			type attachedRoute struct {
				kind, ns, name string
				hostnames      []gatewayv1.Hostname
				routes         []rankedRoute
			}
			var rts []attachedRoute
			// A route attaches to the listener when it names it as a parent,
			// the listener admits its namespace, and their hostnames meet.
			for _, rt := range oldestFirst(bd.validRoutes) {
				if attached(rt.Spec.ParentRefs, rt.Namespace, gw, l) && bd.allowedRoute(rt.Namespace, gw, l) && routeDomains(rt.Spec.Hostnames, l) != nil {
					rts = append(rts, attachedRoute{KindHTTPRoute, rt.Namespace, rt.Name, rt.Spec.Hostnames, lb.httpRouteRules(rt, 0)})
				}
			}
			for _, rt := range oldestFirst(bd.validGRPC) {
				if attached(rt.Spec.ParentRefs, rt.Namespace, gw, l) && bd.allowedRoute(rt.Namespace, gw, l) && routeDomains(rt.Spec.Hostnames, l) != nil {
					rts = append(rts, attachedRoute{KindGRPCRoute, rt.Namespace, rt.Name, rt.Spec.Hostnames, lb.grpcRouteRules(rt, 0)})
				}
			}
			ranked := map[int][]rankedRoute{} // by index in ml.VirtualHosts
			for _, rt := range rts {
				routes := rt.routes
				if err := lb.check(plainRoutes(routes)); err != nil {
					bd.rejecter(rt.kind, rt.ns, rt.name).reject("%v", err)
					continue
				}
				doms := routeDomains(rt.hostnames, l)
				merged := false
				for i := range ml.VirtualHosts {
					if strings.Join(ml.VirtualHosts[i].Domains, ",") == strings.Join(doms, ",") {
						ranked[i] = append(ranked[i], routes...)
						merged = true
					}
				}
				if !merged {
					ranked[len(ml.VirtualHosts)] = routes
					ml.VirtualHosts = append(ml.VirtualHosts, model.VirtualHost{Name: rt.ns + "/" + rt.name, Domains: doms})
				}
			}
			for i := range ml.VirtualHosts {
				sortGatewayRoutes(ranked[i])
				ml.VirtualHosts[i].Routes = plainRoutes(ranked[i])
			}
			// A catch-all host goes last so that specific hosts win.
			var specific, wildcard []model.VirtualHost
			for _, vh := range ml.VirtualHosts {
				if len(vh.Domains) == 1 && vh.Domains[0] == "*" {
					wildcard = append(wildcard, vh)
				} else {
					specific = append(specific, vh)
				}
			}
			ml.VirtualHosts = append(specific, wildcard...)
			if len(ml.VirtualHosts) > 0 {
				cfg.Listeners = append(cfg.Listeners, ml)
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

// attached reports whether a route in routeNS with refs names gw and listener l as a parent.
func attached(refs []gatewayv1.ParentReference, routeNS string, gw *gatewayv1.Gateway, l gatewayv1.Listener) bool {
	for _, pr := range refs {
		if pr.Kind != nil && *pr.Kind != "Gateway" {
			continue
		}
		if pr.Group != nil && *pr.Group != gatewayv1.GroupName {
			continue
		}
		ns := routeNS
		if pr.Namespace != nil && *pr.Namespace != "" {
			ns = string(*pr.Namespace)
		}
		if ns != gw.Namespace || string(pr.Name) != gw.Name {
			continue
		}
		if pr.SectionName != nil && *pr.SectionName != l.Name {
			continue
		}
		if pr.Port != nil && *pr.Port != l.Port {
			continue
		}
		return true
	}
	return false
}

// allowedRoute applies the listener's allowedRoutes.namespaces.
func (bd *build) allowedRoute(routeNS string, gw *gatewayv1.Gateway, l gatewayv1.Listener) bool {
	from := gatewayv1.NamespacesFromSame
	var sel *metav1.LabelSelector
	if l.AllowedRoutes != nil && l.AllowedRoutes.Namespaces != nil {
		if l.AllowedRoutes.Namespaces.From != nil {
			from = *l.AllowedRoutes.Namespaces.From
		}
		sel = l.AllowedRoutes.Namespaces.Selector
	}
	switch from {
	case gatewayv1.NamespacesFromAll:
		return true
	case gatewayv1.NamespacesFromSame:
		return routeNS == gw.Namespace
	case gatewayv1.NamespacesFromSelector:
		s, err := metav1.LabelSelectorAsSelector(sel)
		if err != nil || sel == nil {
			return false
		}
		ns := bd.in.namespaces[routeNS]
		return ns != nil && s.Matches(labels.Set(ns.Labels))
	}
	return false
}

// routeDomains returns the hostnames a route with hostnames serves on
// listener l, as Gateway API intersects them: a listener without hostname
// takes the route's (every host when it has none), a route without
// hostnames takes the listener's, and otherwise each route hostname that
// matches the listener's (intersectHostname) gives the more specific of the
// two. Nil when none matches: the route does not attach to l, and its
// status says NoMatchingListenerHostname when no listener of the parent is
// left (parentAccepts).
func routeDomains(hostnames []gatewayv1.Hostname, l gatewayv1.Listener) []string {
	lh := ""
	if l.Hostname != nil {
		lh = string(*l.Hostname)
	}
	var out []string
	for _, h := range hostnames {
		d := string(h)
		if lh != "" {
			var ok bool
			if d, ok = intersectHostname(d, lh); !ok {
				continue
			}
		}
		if !slices.Contains(out, d) {
			out = append(out, d)
		}
	}
	switch {
	case len(hostnames) > 0:
		return out
	case lh != "":
		return []string{lh}
	}
	return []string{"*"}
}

// intersectHostname returns the hostname a route hostname h and a listener
// hostname lh have in common, as Gateway API matches them: the same name,
// or a name under a wildcard, "*.example.com" matching names with one or
// more labels in front of example.com (not example.com itself) and
// wildcards under it such as "*.foo.example.com". The result is the more
// specific of the two; ok is false when they have none in common.
func intersectHostname(h, lh string) (string, bool) {
	switch {
	case h == lh:
		return h, true
	case strings.HasPrefix(lh, "*.") && strings.HasSuffix(h, lh[1:]):
		return h, true
	case strings.HasPrefix(h, "*.") && strings.HasSuffix(lh, h[1:]):
		return lh, true
	}
	return "", false
}
