package controlplane

import (
	"fmt"
	"maps"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// buildIngressL7 adds the L7 configuration of every ingress Gateway (a
// Gateway API Gateway of an ingress class) to out, keyed by the Gateway's
// name like a waypoint's. Each HTTP or HTTPS listener gets the HTTPRoutes
// and GRPCRoutes attached to it — parentRef to the Gateway, matching
// sectionName and port when given, and allowed by the listener's
// allowedRoutes (Same namespace by default) — one virtual host per distinct
// hostname set. Listeners on one port share it, as Gateway API has them:
// their virtual hosts are served together (a Host picks the most specific,
// as a request picks the listener with the most specific hostname), and an
// HTTPS listener's certificate (tls.mode Terminate, its first
// certificateRef: see listenerTLS) is chosen by SNI from its hostname, the first listener's serving a client
// whose SNI names no listener. An HTTP and an HTTPS listener on one port
// conflict: the later is skipped (status Conflicted, ProtocolConflict).
// Other protocols and TLS passthrough are reported and skipped. The
// listeners are the Gateway's merged list, its ListenerSets' after its own
// (listenersets.go); a set's listener's faults are reported on the set.
func (bd *build) buildIngressL7(out map[model.NamespacedName]*model.L7Config) {
	for _, gw := range bd.ingress {
		key := model.NamespacedName{Namespace: gw.Namespace, Name: gw.Name}
		r := bd.rejecter(KindGateway, gw.Namespace, gw.Name)
		warnUnservedGatewayFields(gw, r)
		lb := &l7Builder{bd: bd, ns: gw.Namespace, clusters: map[string]*model.L7Cluster{}, ingress: true}
		cfg := &model.L7Config{}
		// The hosts of each port, in the order listeners and routes name
		// them; a host's routes are ranked together whichever listener
		// they came through.
		type host struct {
			name    string
			domains []string
			routes  []rankedRoute
		}
		type port struct {
			listener model.L7Listener
			hosts    []*host
		}
		var ports []*port
		routes, grpcRoutes := bd.oldestRoutes()
		for i, l := range bd.ingressListeners(gw) {
			lr := bd.listenerRejecter(gw, l)
			if _, msg := bd.unservedListener(gw, i); msg != "" {
				lr.warn("listener %q: %s; skipped", l.Name, msg)
				continue
			}
			var tlsCfg *model.ListenerTLS
			if l.Protocol == gatewayv1.HTTPSProtocolType {
				if tlsCfg = bd.listenerTLS(gw, l, lr); tlsCfg == nil {
					continue
				}
			}
			var pt *port
			for _, p := range ports {
				if p.listener.Port == uint32(l.Port) {
					pt = p
				}
			}
			switch {
			case pt == nil:
				pt = &port{listener: model.L7Listener{Name: string(l.Name), Port: uint32(l.Port), TLS: tlsCfg}}
				ports = append(ports, pt)
			case tlsCfg != nil && pt.listener.TLS == nil:
				pt.listener.TLS = tlsCfg // the port's first HTTPS listener, after TLS passthrough ones
			case tlsCfg != nil:
				// Another HTTPS listener of the port: its certificate by SNI.
				addSNI(&pt.listener, tlsCfg, tlsCfg.SNIHosts)
			}
			if l.Protocol == gatewayv1.TLSProtocolType || l.Protocol == gatewayv1.TCPProtocolType {
				lb.l4Routes(gw, l, &pt.listener)
				continue
			}
			type attachedRoute struct {
				kind, ns, name string
				hostnames      []gatewayv1.Hostname
				routes         []rankedRoute
			}
			var rts []attachedRoute
			// A route attaches to the listener when it names it as a parent,
			// the listener admits its namespace, and their hostnames meet.
			for _, rt := range routes {
				if attached(bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Namespace, gw, l) && bd.listenerAdmits(rt.Namespace, gw, l) && routeDomains(rt.Spec.Hostnames, l.Listener) != nil {
					rts = append(rts, attachedRoute{KindHTTPRoute, rt.Namespace, rt.Name, rt.Spec.Hostnames, lb.httpRouteRules(rt, 0)})
				}
			}
			for _, rt := range grpcRoutes {
				if attached(bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Namespace, gw, l) && bd.listenerAdmits(rt.Namespace, gw, l) && routeDomains(rt.Spec.Hostnames, l.Listener) != nil {
					rts = append(rts, attachedRoute{KindGRPCRoute, rt.Namespace, rt.Name, rt.Spec.Hostnames, lb.grpcRouteRules(rt, 0)})
				}
			}
			for _, rt := range rts {
				if err := lb.check(plainRoutes(rt.routes)); err != nil {
					bd.rejecter(rt.kind, rt.ns, rt.name).reject("%v", err)
					continue
				}
				doms := routeDomains(rt.hostnames, l.Listener)
				i := slices.IndexFunc(pt.hosts, func(h *host) bool { return slices.Equal(h.domains, doms) })
				if i < 0 {
					i = len(pt.hosts)
					pt.hosts = append(pt.hosts, &host{name: rt.ns + "/" + rt.name, domains: doms})
				}
				pt.hosts[i].routes = append(pt.hosts[i].routes, rt.routes...)
			}
		}
		for _, pt := range ports {
			ml := pt.listener
			// A catch-all host goes last so that specific hosts win.
			var specific, wildcard []model.VirtualHost
			for _, h := range pt.hosts {
				sortGatewayRoutes(h.routes)
				vh := model.VirtualHost{Name: h.name, Domains: h.domains, Routes: plainRoutes(h.routes)}
				if len(vh.Domains) == 1 && vh.Domains[0] == "*" {
					wildcard = append(wildcard, vh)
				} else {
					specific = append(specific, vh)
				}
			}
			ml.VirtualHosts = append(specific, wildcard...)
			if len(ml.VirtualHosts) == 0 {
				ml.TLS, ml.SNI = nil, nil // TLS passthrough only: nothing terminates here
			}
			if len(ml.VirtualHosts) > 0 || len(ml.Passthrough) > 0 || ml.TCP != nil || len(ml.TCPMatched) > 0 {
				cfg.Listeners = append(cfg.Listeners, ml)
			}
		}
		if len(cfg.Listeners) == 0 {
			continue
		}
		if cert, reason, msg := bd.backendClientCert(gw); cert != nil {
			withClientCert(lb, cert)
		} else if reason != "" {
			r.warn("%s; TLS to backends (BackendTLSPolicy) goes without a client certificate", msg)
		}
		for _, name := range sortedKeys(lb.clusters) {
			cfg.Clusters = append(cfg.Clusters, *lb.clusters[name])
		}
		bd.finishSessions(cfg)
		if err := cfg.Validate(); err != nil {
			r.reject("gateway L7 configuration is invalid, not pushed: %v", err)
			continue
		}
		out[key] = cfg
	}
}

// unservedListener says why listener i of an ingress Gateway's merged list
// (ingressListeners) is not served, with the status reason, "" when it
// is: a protocol meshlet's ingress does not serve, or HTTPS passthrough
// and TLS termination (UnsupportedProtocol), a port an earlier listener
// serves as another of HTTP, TLS and TCP (ProtocolConflict), or the port,
// protocol and hostname of an earlier listener (HostnameConflict: the
// Gateway's CRD forbids it within the Gateway; across its ListenerSets
// the earlier wins). An HTTPS listener's certificate is its ResolvedRefs
// (certificateRefsFault).
// Decided once per Gateway and build: a route's status asks it of every
// listener for each of its parentRefs.
func (bd *build) unservedListener(gw *gatewayv1.Gateway, i int) (gatewayv1.ListenerConditionReason, string) {
	u, ok := bd.unserved[gw]
	if !ok {
		all := bd.ingressListeners(gw)
		u = make([]unserved, len(all))
		for j := range all {
			u[j].reason, u[j].msg = unservedIn(gw, all, u[:j], j)
		}
		if bd.unserved == nil {
			bd.unserved = map[*gatewayv1.Gateway][]unserved{}
		}
		bd.unserved[gw] = u
	}
	return u[i].reason, u[i].msg
}

// unserved is why a listener is not served (unservedListener).
type unserved struct {
	reason gatewayv1.ListenerConditionReason
	msg    string
}

// unservedIn is unservedListener for listener i of gw's merged list all,
// prior saying which of the listeners before it are not served: those
// take no port from a later one.
func unservedIn(gw *gatewayv1.Gateway, all []ingressListener, prior []unserved, i int) (gatewayv1.ListenerConditionReason, string) {
	l := all[i]
	passthrough := l.TLS != nil && l.TLS.Mode != nil && *l.TLS.Mode == gatewayv1.TLSModePassthrough
	switch l.Protocol {
	case gatewayv1.HTTPProtocolType, gatewayv1.TCPProtocolType:
	case gatewayv1.HTTPSProtocolType:
		if passthrough {
			return gatewayv1.ListenerReasonUnsupportedProtocol, "protocol HTTPS with tls.mode Passthrough is not valid Gateway API: use protocol TLS with TLSRoutes for passthrough, or Terminate"
		}
	case gatewayv1.TLSProtocolType:
		if !passthrough {
			return gatewayv1.ListenerReasonUnsupportedProtocol, "protocol TLS with tls.mode Terminate is not served by meshlet's ingress (use HTTPS to terminate, or tls.mode Passthrough with TLSRoutes)"
		}
	default:
		return gatewayv1.ListenerReasonUnsupportedProtocol, fmt.Sprintf("protocol %s is not served by meshlet's ingress (HTTP, HTTPS, TLS passthrough and TCP are)", l.Protocol)
	}
	for j, o := range all[:i] {
		if o.Port != l.Port || portFamily(o.Protocol) == "" || prior[j].reason != "" {
			continue
		}
		if portFamily(o.Protocol) != portFamily(l.Protocol) {
			return gatewayv1.ListenerReasonProtocolConflict, fmt.Sprintf("port %d already serves %s over %s; a port serves HTTP, or TLS (HTTPS and TLS passthrough, told apart by SNI), or TCP", l.Port, otherListener(gw, o, l), o.Protocol)
		}
		if o.Protocol == l.Protocol && listenerHostname(o.Listener) == listenerHostname(l.Listener) {
			host := "no hostname"
			if h := listenerHostname(l.Listener); h != "" {
				host = "hostname " + h
			}
			return gatewayv1.ListenerReasonHostnameConflict, fmt.Sprintf("port %d, protocol %s and %s are already %s's; give this listener another hostname or port", l.Port, l.Protocol, host, otherListener(gw, o, l))
		}
	}
	return "", ""
}

// portFamily is what a port of a listener of protocol p serves: listeners
// of one family may share a port; "" for protocols not served.
func portFamily(p gatewayv1.ProtocolType) string {
	switch p {
	case gatewayv1.HTTPProtocolType:
		return "http"
	case gatewayv1.HTTPSProtocolType, gatewayv1.TLSProtocolType:
		return "tls"
	case gatewayv1.TCPProtocolType:
		return "tcp"
	}
	return ""
}

// oldestRoutes are the valid HTTPRoutes and GRPCRoutes oldest first,
// sorted once per build.
func (bd *build) oldestRoutes() ([]*gatewayv1.HTTPRoute, []*gatewayv1.GRPCRoute) {
	if bd.sortedHTTP == nil {
		bd.sortedHTTP, bd.sortedGRPC = oldestFirst(bd.validRoutes), oldestFirst(bd.validGRPC)
	}
	return bd.sortedHTTP, bd.sortedGRPC
}

// l4Sorted are the TLSRoutes and TCPRoutes oldest first.
type l4Sorted struct {
	tls []*gatewayv1.TLSRoute
	tcp []*gatewayv1.TCPRoute
}

// oldestL4Routes sorts the TLSRoutes and TCPRoutes once per build.
func (bd *build) oldestL4Routes() *l4Sorted {
	if bd.sortedL4 == nil {
		bd.sortedL4 = &l4Sorted{tls: oldestFirst(slices.Collect(maps.Values(bd.in.tlsRoutes))), tcp: oldestFirst(slices.Collect(maps.Values(bd.in.tcpRoutes)))}
	}
	return bd.sortedL4
}

// listenerHostname is l's hostname, "" without one.
func listenerHostname(l gatewayv1.Listener) string {
	if l.Hostname == nil {
		return ""
	}
	return string(*l.Hostname)
}

// l4Routes adds to ml the TLSRoutes (a TLS passthrough listener) or the
// TCPRoute (a TCP listener: tcpRouteOn) attached to listener l of gw.
func (lb *l7Builder) l4Routes(gw *gatewayv1.Gateway, l ingressListener, ml *model.L7Listener) {
	bd := lb.bd
	backends := func(kind, ns, name string, refs []gatewayv1.BackendRef) []model.WeightedDestination {
		return lb.l4Backends(kind, ns, name, refs, 0)
	}
	switch l.Protocol {
	case gatewayv1.TLSProtocolType:
		for _, rt := range bd.oldestL4Routes().tls {
			doms := routeDomains(rt.Spec.Hostnames, l.Listener)
			if !attached(bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Namespace, gw, l) || !bd.listenerAdmits(rt.Namespace, gw, l) || doms == nil {
				continue
			}
			if ds := backends(KindTLSRoute, rt.Namespace, rt.Name, tlsRouteBackends(rt)); len(ds) > 0 {
				ml.Passthrough = append(ml.Passthrough, model.PassthroughRoute{Name: rt.Namespace + "/" + rt.Name, SNIHosts: doms, Destinations: ds})
			}
		}
	case gatewayv1.TCPProtocolType:
		rt := bd.tcpRouteOn(gw, l)
		if rt == nil {
			return
		}
		if ds := backends(KindTCPRoute, rt.Namespace, rt.Name, tcpRouteBackends(rt)); len(ds) > 0 {
			ml.TCP = &model.TCPRoute{Name: rt.Namespace + "/" + rt.Name, Destinations: ds}
		}
	}
}

// l4Backends are the destinations of a TLSRoute's or TCPRoute's
// backendRefs (port: a ref's without one). A backendRef of another kind,
// or to another namespace without a ReferenceGrant, is left out; a Service
// that does not exist keeps its share, whose connections fail (no
// endpoints), as Gateway API has an invalid backend's connections refused.
// backendRefsCondition reports both in the route's status.
func (lb *l7Builder) l4Backends(kind, ns, name string, refs []gatewayv1.BackendRef, port uint32) []model.WeightedDestination {
	var out []model.WeightedDestination
	for _, b := range refs {
		if d, ok := lb.backend(kind, ns, name, b, port); ok && d.Cluster != "" {
			out = append(out, d)
		}
	}
	return out
}

// tcpRouteOn is the TCPRoute a TCP listener l of gw forwards to: the
// oldest of those attached to it that it admits; nil for none. A TCP
// listener forwards to one route (Gateway API leaves several to the
// implementation); the others are not accepted there (parentAccepts).
func (bd *build) tcpRouteOn(gw *gatewayv1.Gateway, l ingressListener) *gatewayv1.TCPRoute {
	for _, rt := range bd.oldestL4Routes().tcp {
		if attached(bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Namespace, gw, l) && bd.listenerAdmits(rt.Namespace, gw, l) {
			return rt
		}
	}
	return nil
}

// listenerTLS is an HTTPS listener's certificate: its first certificateRef,
// a kubernetes.io/tls Secret of the namespace of the Gateway or ListenerSet
// it is written in (or of another one whose ReferenceGrant lets that
// object refer to it), chosen by SNI from
// the listener's hostname (any, without one). Nil, reported, when the
// reference does not resolve or the Secret's key pair is not usable (the
// listener's ResolvedRefs says why).
func (bd *build) listenerTLS(gw *gatewayv1.Gateway, l ingressListener, r *rejections) *model.ListenerTLS {
	if reason, msg := bd.certificateRefsFault(gw, l); reason != "" {
		r.warn("listener %q: %s; skipped", l.Name, msg)
		return nil
	}
	ref := l.TLS.CertificateRefs[0]
	if len(l.TLS.CertificateRefs) > 1 {
		r.warn("listener %q: only the first of %d certificateRefs (%s) is served", l.Name, len(l.TLS.CertificateRefs), ref.Name)
	}
	ns := l.namespace(gw)
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace) // granted: checked with the ref, as its key pair
	}
	sec := bd.in.tlsSecrets[ns+"/"+string(ref.Name)]
	host := "*"
	if l.Hostname != nil && *l.Hostname != "" {
		host = string(*l.Hostname)
	}
	out := &model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(sec.Data[corev1.TLSCertKey]), KeyPEM: string(sec.Data[corev1.TLSPrivateKeyKey]),
		SNIHosts: []string{host}}
	if fv := bd.frontendValidation(gw, l.Port); fv != nil {
		if fv.caPEM == "" {
			// Never served without the client validation asked for.
			r.warn("listener %q: %s; not served: no usable client CA certificate", l.Name, frontendFaultText(gw, l, fv))
			return nil
		}
		if fv.msg != "" {
			r.warn("listener %q: %s; served with the other CA certificates", l.Name, frontendFaultText(gw, l, fv))
		}
		if fv.mode == model.TLSModeOptionalMutual {
			r.warn("listener %q: spec.tls.frontend mode %s lets clients without a valid certificate in: use it while migrating clients only", l.Name, gatewayv1.AllowInsecureFallback)
		}
		out.Mode, out.ClientCAPEM = fv.mode, fv.caPEM
	}
	return out
}

// attached reports whether a route in routeNS with refs names listener l
// of gw as a parent: through a parentRef to the object l is written in,
// the Gateway for its own listeners, the ListenerSet for a set's (a
// parentRef to the Gateway does not reach its sets' listeners).
func attached(refs []gatewayv1.ParentReference, routeNS string, gw *gatewayv1.Gateway, l ingressListener) bool {
	kind, parentNS, parentName := "Gateway", gw.Namespace, gw.Name
	if l.set != nil {
		kind, parentNS, parentName = KindListenerSet, l.set.Namespace, l.set.Name
	}
	for _, pr := range refs {
		if (pr.Kind == nil && kind != "Gateway") || (pr.Kind != nil && string(*pr.Kind) != kind) {
			continue
		}
		if pr.Group != nil && *pr.Group != gatewayv1.GroupName {
			continue
		}
		ns := routeNS
		if pr.Namespace != nil && *pr.Namespace != "" {
			ns = string(*pr.Namespace)
		}
		if ns != parentNS || string(pr.Name) != parentName {
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

// listenerAdmits applies allowedRoutes.namespaces of listener l of gw's
// merged list: Same is the namespace of the object l is written in.
func (bd *build) listenerAdmits(routeNS string, gw *gatewayv1.Gateway, l ingressListener) bool {
	return bd.allowedRoute(routeNS, l.namespace(gw), l.Listener)
}

// allowedRoute applies the listener's allowedRoutes.namespaces; ownNS is
// the namespace of the object the listener is written in (Same).
func (bd *build) allowedRoute(routeNS, ownNS string, l gatewayv1.Listener) bool {
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
		return routeNS == ownNS
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

// warnUnservedGatewayFields names the Gateway fields an ingress Gateway
// sets that meshlet does not serve, and what happens instead: a
// spec.defaultScope other than All and None.
func warnUnservedGatewayFields(gw *gatewayv1.Gateway, r *rejections) {
	if s := gw.Spec.DefaultScope; s != "" && s != gatewayv1.GatewayDefaultScopeNone && s != gatewayv1.GatewayDefaultScopeAll {
		r.warn("spec.defaultScope %s: meshlet knows the scopes All and None only: routes attach to this Gateway only by their parentRefs", s)
	}
}

// Default Gateways (Gateway API's experimental GEP-3793): an ingress
// Gateway with spec.defaultScope All claims the routes whose
// spec.useDefaultGateways is All, as if each named it in a parentRef
// without sectionName or port (so its own listeners, not its
// ListenerSets'), subject to its listeners' allowedRoutes like any route.
// The route's status gets a parents entry for each default Gateway it did
// not name itself, so that its author sees where it is served. Several
// default Gateways all claim it (the field says "any default Gateway").

// routeParents is a route's parentRefs with one to each default Gateway
// when the route asks for them (useDefaultGateways All) and does not name
// the Gateway already.
func (bd *build) routeParents(spec gatewayv1.CommonRouteSpec, routeNS string) []gatewayv1.ParentReference {
	if spec.UseDefaultGateways != gatewayv1.GatewayDefaultScopeAll {
		return spec.ParentRefs
	}
	out := spec.ParentRefs
	for _, gw := range bd.defaultGateways() {
		names := func(pr gatewayv1.ParentReference) bool {
			ns := routeNS
			if pr.Namespace != nil && *pr.Namespace != "" {
				ns = string(*pr.Namespace)
			}
			return (pr.Group == nil || *pr.Group == gatewayv1.GroupName) && (pr.Kind == nil || *pr.Kind == "Gateway") && ns == gw.Namespace && string(pr.Name) == gw.Name
		}
		if slices.ContainsFunc(spec.ParentRefs, names) {
			continue
		}
		if len(out) == len(spec.ParentRefs) {
			out = slices.Clone(spec.ParentRefs)
		}
		out = append(out, gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group(gatewayv1.GroupName)), Kind: ptrTo(gatewayv1.Kind("Gateway")),
			Namespace: ptrTo(gatewayv1.Namespace(gw.Namespace)), Name: gatewayv1.ObjectName(gw.Name)})
	}
	return out
}

// defaultGateways are the served ingress Gateways whose spec.defaultScope
// is All, in the build's order; found once per build (routeParents asks for
// them per route and listener).
func (bd *build) defaultGateways() []*gatewayv1.Gateway {
	if bd.defaults == nil {
		bd.defaults = []*gatewayv1.Gateway{}
		for _, gw := range bd.ingress {
			if gw.Spec.DefaultScope == gatewayv1.GatewayDefaultScopeAll {
				bd.defaults = append(bd.defaults, gw)
			}
		}
	}
	return bd.defaults
}
