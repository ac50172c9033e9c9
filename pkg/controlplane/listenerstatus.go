package controlplane

import (
	"fmt"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayconsts "sigs.k8s.io/gateway-api/pkg/consts"
)

// This file computes the status of the Gateways and GatewayClasses meshd
// serves, next to the routes' (gatewaystatus.go), from the same build.
//
// Decisions:
//   - Gateway status is split between two writers, one per field, so that
//     neither undoes the other: pkg/deployer (which deploys the Gateway's
//     proxy and alone knows when a pod is ready) server-side applies
//     status.conditions and status.addresses; meshd's status writer owns
//     status.listeners, computed here because attachedRoutes is a fact
//     about routes, which only the build knows.
//   - attachedRoutes counts the routes whose status.parents entry for a
//     parentRef to the Gateway is Accepted and that the listener matches
//     (sectionName, port), admits (allowedRoutes) and shares a hostname
//     with (routeDomains), as the Gateway API defines it. Routes bound to a Service (GAMMA) are attached to the
//     Service, not to any listener: a waypoint's HBONE listener counts 0,
//     as Istio's does.
//   - supportedKinds: HTTPRoute and GRPCRoute on HTTP and HTTPS listeners
//     (narrowed by allowedRoutes.kinds; a kind outside those is
//     ResolvedRefs False InvalidRouteKinds); none on a waypoint's HBONE
//     listener, which takes no routes directly, as Istio reports it.
//   - meshlet's ingress serves HTTP, HTTPS (Terminate), TLS passthrough
//     and TCP listeners (buildIngressL7); any other is Accepted False
//     UnsupportedProtocol and Programmed False, so that nothing waiting for
//     Programmed mistakes it for served. An HTTPS listener whose
//     certificateRefs do not resolve (ResolvedRefs False
//     InvalidCertificateRef for a Secret that is missing or not of type
//     kubernetes.io/tls, the only Secrets the inputs hold; RefNotPermitted
//     without a ReferenceGrant) is not served.
//   - The listeners of the ListenerSets attached to an ingress Gateway
//     are reported in each set's status.listeners, not the Gateway's
//     (listenersets.go); the Gateway's status.attachedListenerSets counts
//     the sets Accepted.
//   - A waypoint serves its HBONE listener (port 15008); any other
//     listener of a waypoint Gateway is Accepted False UnsupportedProtocol.
//   - A GatewayClass is meshd's when spec.controllerName is ControllerName.
//     Of those, the names meshlet serves (the waypoint and ingress classes)
//     are Accepted; any other name is Accepted False, reason Unsupported
//     (a user-defined class meshlet does not implement), the message
//     naming the classes it serves. A served class with a parametersRef
//     is Accepted False, reason InvalidParameters (meshlet has no
//     parameters resource, so no reference resolves), the message naming
//     the ref and saying to remove it. Its Gateways are still served:
//     meshlet serves a Gateway by its class name (the deployer and the
//     build never read the GatewayClass object), as it did before the
//     class had a parametersRef, and withdrawing them would tear down
//     every running waypoint or ingress gateway of the class (L7 policy
//     and routes gone, traffic to the waypoint refused) for a field that
//     changes nothing meshlet does; the class's status says what to fix.
//     A name meshlet does not serve (Unsupported) has no Gateways served
//     whatever its parametersRef. Gateway spec.infrastructure (and its
//     parametersRef) is not read.
//   - A GatewayClass's SupportedVersion says which Gateway API bundle
//     meshd is built against; meshd does not read the CRDs (it has no
//     access to them), so it cannot compare with what is installed.

// listenerStatus computes the listeners of every Gateway of a meshlet
// class and the status of the ListenerSets whose parent is one of them.
// routes is the routes' status of this build.
func (bd *build) listenerStatus(routes []ObjectStatus) []ObjectStatus {
	sets, attachedSets := bd.listenerSetStatus(routes)
	var out []ObjectStatus
	for _, k := range sortedKeys(bd.in.gateways) {
		gw := bd.in.gateways[k]
		class := string(gw.Spec.GatewayClassName)
		waypoint := contains(bd.opts.WaypointClasses, class)
		if !waypoint && !slices.Contains(bd.ingress, gw) {
			continue // another class, or an invalid Gateway (its events say why)
		}
		st := ObjectStatus{Kind: KindGateway, Namespace: gw.Namespace, Name: gw.Name, Generation: gw.Generation}
		all := bd.ingressListeners(gw) // the Gateway's own come first
		for i := range gw.Spec.Listeners {
			s, _ := bd.oneListener(gw, all[i], i, waypoint, routes)
			st.Listeners = append(st.Listeners, s)
		}
		if !waypoint {
			st.Conditions = bd.gatewayTLSConditions(gw)
		}
		n := attachedSets[gw.Namespace+"/"+gw.Name]
		st.AttachedListenerSets = &n
		out = append(out, st)
	}
	return append(out, sets...)
}

// hboneProtocols name a waypoint's listener protocol: "HBONE" as Istio's
// waypoints and meshctl waypoint apply write it, and the domain-prefixed
// spelling Gateway API asks of implementation-specific protocols.
var hboneProtocols = []gatewayv1.ProtocolType{"HBONE", "istio.io/HBONE"}

// oneListener computes the status of listener l of gw, i in its merged
// list (ingressListeners), and whether it is served.
func (bd *build) oneListener(gw *gatewayv1.Gateway, l ingressListener, i int, waypoint bool, routes []ObjectStatus) (gatewayv1.ListenerStatus, bool) {
	gen := gw.Generation
	if l.set != nil {
		gen = l.set.Generation
	}
	kinds, invalidKinds := listenerKinds(l.Listener)
	var reason gatewayv1.ListenerConditionReason
	var unsupported string
	if waypoint {
		if !slices.Contains(hboneProtocols, l.Protocol) {
			reason = gatewayv1.ListenerReasonUnsupportedProtocol
			unsupported = fmt.Sprintf("protocol %s: a waypoint serves one listener, protocol HBONE port 15008; routes reach it through the Services bound to it", l.Protocol)
		}
	} else {
		reason, unsupported = bd.unservedListener(gw, i)
	}
	served := reason == ""
	accepted := condition(string(gatewayv1.ListenerConditionAccepted), true, string(gatewayv1.ListenerReasonAccepted), "listener accepted", gen)
	programmed := condition(string(gatewayv1.ListenerConditionProgrammed), true, string(gatewayv1.ListenerReasonProgrammed), "configuration pushed to the gateway's proxies", gen)
	var conflicted *metav1.Condition
	switch reason {
	case "":
	case gatewayv1.ListenerReasonProtocolConflict, gatewayv1.ListenerReasonHostnameConflict:
		c := condition(string(gatewayv1.ListenerConditionConflicted), true, string(reason), unsupported, gen)
		conflicted = &c
		programmed = condition(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: see Conflicted", gen)
		if l.set != nil {
			// A set's listener that lost its port to an earlier one, as
			// Gateway API's ListenerSet conformance tests report it.
			accepted = condition(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerEntryReasonPortUnavailable), unsupported, gen)
			programmed = condition(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerEntryReasonPortUnavailable), "not served: see Conflicted", gen)
		}
	default:
		accepted = condition(string(gatewayv1.ListenerConditionAccepted), false, string(reason), unsupported, gen)
		programmed = condition(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: see Accepted", gen)
	}
	resolved := condition(string(gatewayv1.ListenerConditionResolvedRefs), true, string(gatewayv1.ListenerReasonResolvedRefs), "all references resolved", gen)
	if reason, msg := bd.certificateRefsFault(gw, l); reason != "" {
		resolved = condition(string(gatewayv1.ListenerConditionResolvedRefs), false, string(reason), msg, gen)
		if served {
			// An HTTPS listener without its certificate is not served.
			served = false
			programmed = condition(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: see ResolvedRefs", gen)
		}
	} else if fv := bd.frontendFault(gw, l.Listener); fv != nil {
		msg := frontendFaultText(gw, l, fv)
		resolved = condition(string(gatewayv1.ListenerConditionResolvedRefs), false, string(fv.reason), msg, gen)
		if fv.caPEM == "" && served {
			// Not served without the client validation its Gateway asks for.
			served = false
			accepted = condition(string(gatewayv1.ListenerConditionAccepted), false, string(gatewayv1.ListenerReasonNoValidCACertificate), msg, gen)
			programmed = condition(string(gatewayv1.ListenerConditionProgrammed), false, string(gatewayv1.ListenerReasonInvalid), "not served: see Accepted", gen)
		}
	} else if len(invalidKinds) > 0 {
		resolved = condition(string(gatewayv1.ListenerConditionResolvedRefs), false, string(gatewayv1.ListenerReasonInvalidRouteKinds),
			fmt.Sprintf("allowedRoutes.kinds %s: a listener of protocol %s takes %s (group %s) only", strings.Join(invalidKinds, ", "), l.Protocol, kindNames(l.Listener), gatewayv1.GroupName), gen)
	}
	conds := []metav1.Condition{accepted, programmed, resolved}
	if conflicted != nil {
		conds = append(conds, *conflicted)
	}
	return gatewayv1.ListenerStatus{
		Name:           l.Name,
		SupportedKinds: kinds,
		AttachedRoutes: bd.attachedRoutes(gw, l, served, kinds, routes),
		Conditions:     conds,
	}, served
}

// listenerKinds returns the route kinds listener l takes, and the kinds
// its allowedRoutes.kinds names that meshlet does not attach.
func listenerKinds(l gatewayv1.Listener) (kinds []gatewayv1.RouteGroupKind, invalid []string) {
	group := gatewayv1.Group(gatewayv1.GroupName)
	var supported []gatewayv1.RouteGroupKind
	switch l.Protocol {
	case gatewayv1.HTTPProtocolType, gatewayv1.HTTPSProtocolType:
		supported = []gatewayv1.RouteGroupKind{{Group: &group, Kind: KindHTTPRoute}, {Group: &group, Kind: KindGRPCRoute}}
	case gatewayv1.TLSProtocolType:
		supported = []gatewayv1.RouteGroupKind{{Group: &group, Kind: KindTLSRoute}}
	case gatewayv1.TCPProtocolType:
		supported = []gatewayv1.RouteGroupKind{{Group: &group, Kind: KindTCPRoute}}
	default:
		return nil, nil
	}
	if l.AllowedRoutes == nil || len(l.AllowedRoutes.Kinds) == 0 {
		return supported, nil
	}
	for _, want := range l.AllowedRoutes.Kinds {
		g := gatewayv1.GroupName
		if want.Group != nil {
			g = string(*want.Group)
		}
		i := slices.IndexFunc(supported, func(s gatewayv1.RouteGroupKind) bool { return g == gatewayv1.GroupName && s.Kind == want.Kind })
		if i < 0 {
			invalid = append(invalid, g+"/"+string(want.Kind))
		} else if !slices.ContainsFunc(kinds, func(k gatewayv1.RouteGroupKind) bool { return k.Kind == want.Kind }) {
			kinds = append(kinds, supported[i])
		}
	}
	return kinds, invalid
}

// kindNames names the route kinds a listener of l's protocol takes.
func kindNames(l gatewayv1.Listener) string {
	all := l
	all.AllowedRoutes = nil
	kinds, _ := listenerKinds(all)
	names := make([]string, len(kinds))
	for i, k := range kinds {
		names[i] = string(k.Kind)
	}
	return strings.Join(names, " and ")
}

// certificateRefsFault checks an HTTPS listener's certificateRefs against
// the build's Secrets (only those of type kubernetes.io/tls are read, so a
// Secret of another type is as good as missing); reason is "" when all
// resolve. A reference is to the namespace of the Gateway or ListenerSet
// the listener is written in, or to another one through a ReferenceGrant
// to that object's kind.
func (bd *build) certificateRefsFault(gw *gatewayv1.Gateway, l ingressListener) (gatewayv1.ListenerConditionReason, string) {
	own, kind := l.namespace(gw), l.kind()
	if l.Protocol != gatewayv1.HTTPSProtocolType {
		return "", ""
	}
	if l.TLS == nil || len(l.TLS.CertificateRefs) == 0 {
		if l.TLS != nil && l.TLS.Mode != nil && *l.TLS.Mode == gatewayv1.TLSModePassthrough {
			return "", "" // no certificate to refer to (and not served: see Accepted)
		}
		return gatewayv1.ListenerReasonInvalidCertificateRef, fmt.Sprintf("protocol HTTPS needs tls.certificateRefs naming a kubernetes.io/tls Secret of the %s's namespace", kind)
	}
	var reason gatewayv1.ListenerConditionReason
	var msgs []string
	fault := func(r gatewayv1.ListenerConditionReason, format string, args ...any) {
		if reason == "" {
			reason = r
		}
		msgs = append(msgs, fmt.Sprintf(format, args...))
	}
	for i, ref := range l.TLS.CertificateRefs {
		ns := own
		if ref.Namespace != nil && *ref.Namespace != "" {
			ns = string(*ref.Namespace)
		}
		switch {
		case (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Secret"):
			fault(gatewayv1.ListenerReasonInvalidCertificateRef, "certificateRefs[%d] %s: meshlet reads certificates from Secrets only (group \"\", kind Secret)", i, ref.Name)
		case ns != own && !bd.granted(kind, own, "Secret", ns, string(ref.Name)):
			fault(gatewayv1.ListenerReasonRefNotPermitted, "certificateRefs[%d] Secret %s/%s: no ReferenceGrant in %s lets %ss of %s refer to it: create one (from: group %s, kind %s, namespace %s; to: group \"\", kind Secret), or put the Secret in %s",
				i, ns, ref.Name, ns, kind, own, gatewayv1.GroupName, kind, own, own)
		case bd.in.tlsSecrets[ns+"/"+string(ref.Name)] == nil:
			fault(gatewayv1.ListenerReasonInvalidCertificateRef, "certificateRefs[%d]: no Secret of type kubernetes.io/tls named %s in namespace %s: create it with kubectl create secret tls %s -n %s --cert=<file> --key=<file>", i, ref.Name, ns, ref.Name, ns)
		case i == 0: // the one served
			if err := bd.credentialCheck(bd.in.tlsSecrets[ns+"/"+string(ref.Name)]).keyPair(); err != nil {
				fault(gatewayv1.ListenerReasonInvalidCertificateRef, "certificateRefs[%d] Secret %s/%s: tls.crt and tls.key do not form a usable key pair: %v", i, ns, ref.Name, err)
			}
		}
	}
	return reason, strings.Join(msgs, "; ")
}

// attachedRoutes counts the routes attached to listener l of gw: those
// with an Accepted status.parents entry for a parentRef l matches, of a
// kind l takes (kinds), from a namespace l admits, with a hostname in
// common with l. A listener meshlet does not serve has none: Accepted on
// the Gateway says the route is served by another of its listeners, not by
// this one. A route is counted once however many of its parentRefs match.
func (bd *build) attachedRoutes(gw *gatewayv1.Gateway, l ingressListener, served bool, kinds []gatewayv1.RouteGroupKind, routes []ObjectStatus) int32 {
	if !served {
		return 0
	}
	var n int32
	for _, rt := range routes {
		if !slices.ContainsFunc(kinds, func(k gatewayv1.RouteGroupKind) bool { return string(k.Kind) == rt.Kind }) || !bd.listenerAdmits(rt.Namespace, gw, l) {
			continue
		}
		if routeDomains(bd.routeHostnames(rt.Kind, rt.Namespace, rt.Name), l.Listener) == nil {
			continue
		}
		if slices.ContainsFunc(rt.Parents, func(p gatewayv1.RouteParentStatus) bool {
			return attached([]gatewayv1.ParentReference{p.ParentRef}, rt.Namespace, gw, l) &&
				meta.IsStatusConditionTrue(p.Conditions, string(gatewayv1.RouteConditionAccepted))
		}) {
			n++
		}
	}
	return n
}

// routeHostnames returns the spec.hostnames of the HTTPRoute, GRPCRoute or
// TLSRoute kind namespace/name of the build's inputs (a TCPRoute has none).
func (bd *build) routeHostnames(kind, namespace, name string) []gatewayv1.Hostname {
	switch kind {
	case KindHTTPRoute:
		if rt := bd.in.httpRoutes[namespace+"/"+name]; rt != nil {
			return rt.Spec.Hostnames
		}
	case KindGRPCRoute:
		if rt := bd.in.grpcRoutes[namespace+"/"+name]; rt != nil {
			return rt.Spec.Hostnames
		}
	case KindTLSRoute:
		if rt := bd.in.tlsRoutes[namespace+"/"+name]; rt != nil {
			return rt.Spec.Hostnames
		}
	}
	return nil
}

// gatewayClassStatus computes the conditions of every GatewayClass whose
// controllerName is meshd's.
func (bd *build) gatewayClassStatus() []ObjectStatus {
	served := append(slices.Clone(bd.opts.IngressClasses), bd.opts.WaypointClasses...)
	slices.Sort(served)
	var out []ObjectStatus
	for _, k := range sortedKeys(bd.in.gatewayClasses) {
		gc := bd.in.gatewayClasses[k]
		if gc.Spec.ControllerName != ControllerName {
			continue
		}
		gen := gc.Generation
		accepted := condition(string(gatewayv1.GatewayClassConditionStatusAccepted), true, string(gatewayv1.GatewayClassReasonAccepted),
			"handled by meshlet", gen)
		switch {
		case !slices.Contains(served, gc.Name):
			accepted = condition(string(gatewayv1.GatewayClassConditionStatusAccepted), false, string(gatewayv1.GatewayClassReasonUnsupported),
				fmt.Sprintf("meshlet serves the classes %s only; name one of them in gatewayClassName (user-defined classes are not supported)", strings.Join(served, ", ")), gen)
		case gc.Spec.ParametersRef != nil:
			accepted = condition(string(gatewayv1.GatewayClassConditionStatusAccepted), false, string(gatewayv1.GatewayClassReasonInvalidParameters),
				fmt.Sprintf("parametersRef %s: meshlet takes no parameters; remove spec.parametersRef (its Gateways are served all the same, without parameters)", parametersRefString(gc.Spec.ParametersRef)), gen)
		}
		out = append(out, ObjectStatus{Kind: KindGatewayClass, Name: gc.Name, Generation: gen, Conditions: []metav1.Condition{
			accepted,
			condition(string(gatewayv1.GatewayClassConditionStatusSupportedVersion), true, string(gatewayv1.GatewayClassReasonSupportedVersion),
				"meshd is built for Gateway API "+gatewayconsts.BundleVersion+", the CRDs meshlet's chart installs", gen),
		}})
	}
	return out
}

// parametersRefString names ref as kubectl does a resource: kind, with its
// group after a dot when it has one, then namespace/name (name alone for a
// cluster-scoped referent).
func parametersRefString(ref *gatewayv1.ParametersReference) string {
	kind := string(ref.Kind)
	if ref.Group != "" {
		kind += "." + string(ref.Group)
	}
	if ref.Namespace != nil && *ref.Namespace != "" {
		return kind + " " + string(*ref.Namespace) + "/" + ref.Name
	}
	return kind + " " + ref.Name
}
