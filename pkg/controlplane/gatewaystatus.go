package controlplane

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// This file computes the Gateway API status of the routes and policies
// meshd serves, from what the build decided: which parents a route binds
// to, which backends resolve, which BackendTLSPolicy holds each target.
// cmd/meshd writes it.
//
// Decisions:
//   - meshd writes under ControllerName. A route gets one status.parents
//     entry per parentRef meshlet serves: a Gateway of a waypoint or
//     ingress class, or a core Service (GAMMA). A Gateway of another class
//     (or one meshd cannot see, so whose class it cannot know) is another
//     controller's business: no entry.
//   - A Service parent is Accepted when the Service exists (with the
//     parentRef's port, if any) and is bound to a waypoint, the proxy that
//     applies the route. Without a waypoint the route does nothing yet:
//     Accepted False, reason Pending, so that tools waiting for
//     Accepted=True do not take a route that is not applied for one that is.
//   - meshlet's waypoints take routes through Service parentRefs only; a
//     parentRef to the waypoint Gateway itself is answered NotAllowedByListeners
//     with a message naming the fix.
//   - An ingress Gateway parent is Accepted when one of its listeners
//     matches sectionName and port, serves HTTP, admits the route's
//     namespace (allowedRoutes) and has a hostname in common with the
//     route (routeDomains: a listener or a route without hostnames has
//     every one in common). When only the hostnames keep the route off,
//     Accepted is False, reason NoMatchingListenerHostname; the route then
//     serves nothing through that Gateway.
//   - A route the build rejected (an invalid regex, a rule that failed
//     validation) is Accepted False, reason UnsupportedValue, with the
//     rejection as message, on every parent it would otherwise bind to.
//   - ResolvedRefs is about the route's backendRefs, the same for every
//     parent: the first fault's reason (InvalidKind, RefNotPermitted,
//     BackendNotFound) and every fault in the message.
//   - Conditions carry the object's generation as observedGeneration and
//     no lastTransitionTime: the writer keeps the one already written when
//     status and reason did not change, and stamps the others.
//   - A BackendTLSPolicy gets one status.ancestors entry per Service it
//     targets, the ancestorRef being that Service (with the target's
//     sectionName): in the mesh a Service's backends are reached through
//     whatever waypoint or gateway dials them, so the Service is where the
//     policy's effect is decided, as Istio reports it for the mesh. A
//     policy's faults (Invalid, NoValidCACertificate for a CA reference
//     that does not resolve, as meshlet then fails closed) apply to all its
//     targets; Conflicted and TargetNotFound to the target concerned.

// ControllerName is the controllerName meshd writes in Gateway API status
// (route parents, policy ancestors). Entries under any other name belong
// to other controllers and are left as they are.
const ControllerName gatewayv1.GatewayController = "meshlet.dev/gateway-controller"

// ObjectStatus is the Gateway API status meshd computed for one HTTPRoute,
// GRPCRoute, TLSRoute, TCPRoute, BackendTLSPolicy, Gateway, ListenerSet or GatewayClass: only the entries
// under ControllerName, or the fields meshd owns (listenerstatus.go).
// Conditions have no LastTransitionTime; the writer sets it.
type ObjectStatus struct {
	// Kind is KindHTTPRoute, KindGRPCRoute, KindTLSRoute, KindTCPRoute,
	// KindBackendTLSPolicy, KindGateway, KindListenerSet or KindGatewayClass.
	Kind string
	// Namespace is "" for a GatewayClass (cluster-scoped).
	Namespace, Name string
	// Generation is the object's metadata.generation the status is for.
	Generation int64
	// Parents, for a route: one entry per parentRef meshlet serves, in
	// the order of spec.parentRefs. Empty when it serves none (any entry
	// meshd wrote before is then to be removed).
	Parents []gatewayv1.RouteParentStatus
	// Ancestors, for a BackendTLSPolicy: one entry per Service target, in
	// the order of spec.targetRefs.
	Ancestors []gatewayv1.PolicyAncestorStatus
	// Listeners, for a Gateway of a meshlet class: status.listeners, one
	// entry per spec listener in spec order; for a ListenerSet whose
	// parent is one: its status.listeners (gatewayv1.ListenerEntryStatus,
	// the same fields), one entry per spec listener in spec order.
	Listeners []gatewayv1.ListenerStatus
	// AttachedListenerSets, for a Gateway of a meshlet class: its
	// status.attachedListenerSets, the ListenerSets attached to it and
	// Accepted.
	AttachedListenerSets *int32
	// Conditions, for a GatewayClass whose controllerName is
	// ControllerName: Accepted and SupportedVersion; for an ingress
	// Gateway, those of GatewayOwnedConditions that apply (its Accepted
	// and Programmed are pkg/deployer's); for a ListenerSet, Accepted and
	// Programmed.
	Conditions []metav1.Condition
}

// Status returns the Gateway API status computed by the last Build: one
// entry per HTTPRoute, GRPCRoute and BackendTLSPolicy of its inputs, per
// Gateway of a meshlet class and per GatewayClass of meshd's controllerName,
// sorted by kind, namespace and name. The caller must not modify it.
func (b *Builder) Status() []ObjectStatus { return b.status }

// gatewayStatus computes the status of every route, BackendTLSPolicy,
// Gateway and GatewayClass meshd answers for. It runs last, when every rejection of the build has been made.
func (bd *build) gatewayStatus() []ObjectStatus {
	rejected := map[string]string{} // kind/namespace/name -> the first rejection
	for _, r := range bd.rej {
		k := r.Kind + "/" + r.Namespace + "/" + r.Name
		if _, seen := rejected[k]; !seen && !r.Warning {
			rejected[k] = r.Reason
		}
	}
	var out []ObjectStatus
	route := func(kind string, meta metav1.ObjectMeta, parents []gatewayv1.ParentReference, hostnames []gatewayv1.Hostname, backends []gatewayv1.BackendRef) {
		out = append(out, bd.routeStatus(kind, meta, parents, hostnames, backends, rejected[kind+"/"+meta.Namespace+"/"+meta.Name]))
	}
	for _, k := range sortedKeys(bd.in.grpcRoutes) {
		rt := bd.in.grpcRoutes[k]
		var backends []gatewayv1.BackendRef
		for _, rule := range rt.Spec.Rules {
			backends = appendBackendRefs(backends, rule.BackendRefs)
		}
		route(KindGRPCRoute, rt.ObjectMeta, bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Spec.Hostnames, backends)
	}
	for _, k := range sortedKeys(bd.in.httpRoutes) {
		rt := bd.in.httpRoutes[k]
		var backends []gatewayv1.BackendRef
		for _, rule := range rt.Spec.Rules {
			backends = appendBackendRefs(backends, rule.BackendRefs)
		}
		route(KindHTTPRoute, rt.ObjectMeta, bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Spec.Hostnames, backends)
	}
	for _, k := range sortedKeys(bd.in.tlsRoutes) {
		rt := bd.in.tlsRoutes[k]
		route(KindTLSRoute, rt.ObjectMeta, bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), rt.Spec.Hostnames, tlsRouteBackends(rt))
	}
	for _, k := range sortedKeys(bd.in.tcpRoutes) {
		rt := bd.in.tcpRoutes[k]
		route(KindTCPRoute, rt.ObjectMeta, bd.routeParents(rt.Spec.CommonRouteSpec, rt.Namespace), nil, tcpRouteBackends(rt))
	}
	out = append(out, bd.listenerStatus(out)...) // out: the routes, whose acceptance attachedRoutes counts
	out = append(out, bd.gatewayClassStatus()...)
	out = append(out, bd.backendTLSStatus()...)
	out = append(out, bd.backendTrafficStatus()...)
	slices.SortFunc(out, func(a, b ObjectStatus) int {
		return strings.Compare(a.Kind+"/"+a.Namespace+"/"+a.Name, b.Kind+"/"+b.Namespace+"/"+b.Name)
	})
	return out
}

// tlsRouteBackends and tcpRouteBackends are the backendRefs of all of an
// L4 route's rules (rules without matches: one set of backends).
func tlsRouteBackends(rt *gatewayv1.TLSRoute) []gatewayv1.BackendRef {
	var out []gatewayv1.BackendRef
	for _, r := range rt.Spec.Rules {
		out = append(out, r.BackendRefs...)
	}
	return out
}

func tcpRouteBackends(rt *gatewayv1.TCPRoute) []gatewayv1.BackendRef {
	var out []gatewayv1.BackendRef
	for _, r := range rt.Spec.Rules {
		out = append(out, r.BackendRefs...)
	}
	return out
}

// appendBackendRefs appends the BackendRef of each of a rule's
// backendRefs (HTTPBackendRef or GRPCBackendRef) to out.
func appendBackendRefs[B gatewayv1.HTTPBackendRef | gatewayv1.GRPCBackendRef](out []gatewayv1.BackendRef, refs []B) []gatewayv1.BackendRef {
	for _, r := range refs {
		switch v := any(r).(type) {
		case gatewayv1.HTTPBackendRef:
			out = append(out, v.BackendRef)
		case gatewayv1.GRPCBackendRef:
			out = append(out, v.BackendRef)
		}
	}
	return out
}

func condition(typ string, ok bool, reason, message string, generation int64) metav1.Condition {
	st := metav1.ConditionFalse
	if ok {
		st = metav1.ConditionTrue
	}
	return metav1.Condition{Type: typ, Status: st, Reason: reason, Message: message, ObservedGeneration: generation}
}

// routeStatus computes one route's parents. rejected is the build's first
// rejection of the route, "" when none.
func (bd *build) routeStatus(kind string, meta metav1.ObjectMeta, parents []gatewayv1.ParentReference, hostnames []gatewayv1.Hostname, backends []gatewayv1.BackendRef, rejected string) ObjectStatus {
	st := ObjectStatus{Kind: kind, Namespace: meta.Namespace, Name: meta.Name, Generation: meta.Generation}
	resolved := bd.backendRefsCondition(kind, meta.Namespace, backends, meta.Generation)
	for i, pr := range parents {
		if slices.ContainsFunc(parents[:i], func(p gatewayv1.ParentReference) bool { return sameParentRef(p, pr) }) {
			continue // written twice: one entry
		}
		ours, ok, reason, msg := bd.parentAccepts(kind, meta.Namespace, meta.Name, hostnames, pr)
		if !ours {
			continue
		}
		if ok && rejected != "" {
			ok, reason, msg = false, string(gatewayv1.RouteReasonUnsupportedValue), rejected
		}
		st.Parents = append(st.Parents, gatewayv1.RouteParentStatus{
			ParentRef:      pr,
			ControllerName: ControllerName,
			Conditions: []metav1.Condition{
				condition(string(gatewayv1.RouteConditionAccepted), ok, reason, msg, meta.Generation),
				resolved,
			},
		})
	}
	return st
}

// parentAccepts decides one parentRef of a route in routeNS with
// hostnames: ours says whether meshlet serves that parent at all; ok,
// reason and msg are the Accepted condition's.
func (bd *build) parentAccepts(routeKind, routeNS, routeName string, hostnames []gatewayv1.Hostname, pr gatewayv1.ParentReference) (ours, ok bool, reason, msg string) {
	group, kind := gatewayv1.GroupName, "Gateway"
	if pr.Group != nil {
		group = string(*pr.Group)
	}
	if pr.Kind != nil {
		kind = string(*pr.Kind)
	}
	ns := routeNS
	if pr.Namespace != nil && *pr.Namespace != "" {
		ns = string(*pr.Namespace)
	}
	key := ns + "/" + string(pr.Name)
	noParent := string(gatewayv1.RouteReasonNoMatchingParent)
	notAllowed := string(gatewayv1.RouteReasonNotAllowedByListeners)
	switch {
	case kind == "Service" && (group == "" || group == "core"):
		svc, found := bd.kubeSvcs[key]
		if !found {
			return true, false, noParent, fmt.Sprintf("no Service %s: create it, or name an existing Service in parentRefs", key)
		}
		if pr.Port != nil && !slices.ContainsFunc(svc.Spec.Ports, func(p corev1.ServicePort) bool { return p.Port == int32(*pr.Port) }) {
			return true, false, noParent, fmt.Sprintf("Service %s has no port %d", key, *pr.Port)
		}
		ms := bd.svcByKey[key] // set with kubeSvcs; checked all the same
		if ms == nil || ms.Waypoint == nil {
			return true, false, string(gatewayv1.RouteReasonPending), fmt.Sprintf("Service %s has no waypoint, so nothing applies the route yet: label the Service or its namespace istio.io/use-waypoint=<waypoint Gateway>", key)
		}
		if routeKind == KindTCPRoute {
			return bd.meshTCPRouteAccepts(routeNS, routeName, svc, ms, pr)
		}
		if routeKind == KindTLSRoute {
			return true, true, string(gatewayv1.RouteReasonAccepted), fmt.Sprintf("applied to TLS connections to Service %s, by server name, by its waypoint %s", key, ms.Waypoint.Waypoint)
		}
		return true, true, string(gatewayv1.RouteReasonAccepted), fmt.Sprintf("applied to requests for Service %s by its waypoint %s", key, ms.Waypoint.Waypoint)
	case kind == "Gateway" && group == gatewayv1.GroupName:
		gw := bd.in.gateways[key]
		if gw == nil {
			return false, false, "", "" // class unknown: not ours to say
		}
		class := string(gw.Spec.GatewayClassName)
		if contains(bd.opts.WaypointClasses, class) {
			return true, false, notAllowed, fmt.Sprintf("the waypoint Gateway %s takes routes through the Services bound to it: set parentRefs to such a Service (group \"\", kind Service) instead", key)
		}
		if !contains(bd.opts.IngressClasses, class) {
			return false, false, "", ""
		}
		if !slices.Contains(bd.ingress, gw) {
			return true, false, noParent, fmt.Sprintf("Gateway %s is invalid and serves no route (see its events)", key)
		}
		return bd.listenersAccept(routeKind, routeNS, routeName, hostnames, pr, gw, "Gateway "+key)
	case kind == KindListenerSet && group == gatewayv1.GroupName:
		st := bd.listenerSet(key)
		if st == nil {
			return false, false, "", "" // no such set, or its Gateway is not ours
		}
		if st.reason != "" {
			return true, false, noParent, fmt.Sprintf("ListenerSet %s is not attached to a Gateway: %s", key, st.msg)
		}
		return bd.listenersAccept(routeKind, routeNS, routeName, hostnames, pr, st.gw, "ListenerSet "+key)
	}
	return false, false, "", ""
}

// listenersAccept decides parentRef pr of a route to ingress Gateway gw,
// or to one of its ListenerSets (parent names which in messages), over the
// listeners of gw's merged list the parentRef reaches (attached).
func (bd *build) listenersAccept(routeKind, routeNS, routeName string, hostnames []gatewayv1.Hostname, pr gatewayv1.ParentReference, gw *gatewayv1.Gateway, parent string) (ours, ok bool, reason, msg string) {
	noParent := string(gatewayv1.RouteReasonNoMatchingParent)
	notAllowed := string(gatewayv1.RouteReasonNotAllowedByListeners)
	one := []gatewayv1.ParentReference{pr}
	matched, http, allowed := false, false, false
	var listenerHosts, taken []string
	for i, l := range bd.ingressListeners(gw) {
		if !attached(one, routeNS, gw, l) {
			continue
		}
		matched = true
		if reason, _ := bd.unservedListener(gw, i); reason != "" {
			continue
		}
		if kinds, _ := listenerKinds(l.Listener); !slices.ContainsFunc(kinds, func(k gatewayv1.RouteGroupKind) bool { return string(k.Kind) == routeKind }) {
			continue
		}
		http = true
		if !bd.listenerAdmits(routeNS, gw, l) {
			continue
		}
		allowed = true
		if routeKind == KindTCPRoute {
			if on := bd.tcpRouteOn(gw, l); on.Namespace != routeNS || on.Name != routeName {
				taken = append(taken, fmt.Sprintf("listener %q forwards to TCPRoute %s/%s, the oldest", l.Name, on.Namespace, on.Name))
				continue
			}
		}
		if routeDomains(hostnames, l.Listener) != nil {
			return true, true, string(gatewayv1.RouteReasonAccepted), fmt.Sprintf("attached to %s listener %q", parent, l.Name)
		}
		listenerHosts = append(listenerHosts, fmt.Sprintf("%q (listener %q)", *l.Hostname, l.Name))
	}
	switch {
	case !matched:
		return true, false, noParent, fmt.Sprintf("%s has no listener matching the parentRef's sectionName and port", parent)
	case !http:
		return true, false, notAllowed, fmt.Sprintf("no listener of %s the parentRef matches takes a %s: HTTP and HTTPS listeners take HTTPRoutes and GRPCRoutes, TLS passthrough listeners TLSRoutes, TCP listeners TCPRoutes (see its status.listeners)", parent, routeKind)
	case !allowed:
		return true, false, notAllowed, fmt.Sprintf("no listener of %s the parentRef matches admits routes from namespace %s (allowedRoutes.namespaces)", parent, routeNS)
	case len(taken) > 0:
		return true, false, notAllowed, fmt.Sprintf("a TCP listener forwards to one TCPRoute: of %s, %s", parent, strings.Join(taken, "; "))
	default:
		return true, false, string(gatewayv1.RouteReasonNoMatchingListenerHostname), fmt.Sprintf("none of the route's hostnames %s matches the hostname of a listener of %s the parentRef matches: %s; add a matching hostname to the route or to a listener",
			hostnameList(hostnames), parent, strings.Join(listenerHosts, ", "))
	}

}

// hostnameList prints a route's hostnames for a message.
func hostnameList(hostnames []gatewayv1.Hostname) string {
	var q []string
	for _, h := range hostnames {
		q = append(q, strconv.Quote(string(h)))
	}
	return strings.Join(q, ", ")
}

// sameParentRef reports whether two parentRefs are written alike.
func sameParentRef(a, b gatewayv1.ParentReference) bool {
	str := func(p *gatewayv1.SectionName) string {
		if p == nil {
			return ""
		}
		return string(*p)
	}
	port := func(p *gatewayv1.PortNumber) int32 {
		if p == nil {
			return 0
		}
		return int32(*p)
	}
	return ptrEq(a.Group, b.Group) && ptrEq(a.Kind, b.Kind) && ptrEq(a.Namespace, b.Namespace) &&
		a.Name == b.Name && str(a.SectionName) == str(b.SectionName) && port(a.Port) == port(b.Port)
}

func ptrEq[T comparable](a, b *T) bool {
	return (a == nil) == (b == nil) && (a == nil || *a == *b)
}

// backendFault is why one backendRef does not resolve; reason is "" when it does.
type backendFault struct {
	reason  gatewayv1.RouteConditionReason
	message string
}

// resolveBackendRef checks one backendRef of a route of kind in rtNS, as
// the waypoints and gateways use it (l7Builder.ruleBackend): a core Service,
// in another namespace only with a ReferenceGrant there, that exists.
// ns is the namespace it refers to.
func (bd *build) resolveBackendRef(kind, rtNS string, b gatewayv1.BackendRef) (ns string, fault backendFault) {
	ns = rtNS
	if b.Namespace != nil && *b.Namespace != "" {
		ns = string(*b.Namespace)
	}
	group, bkind := "", "Service"
	if b.Group != nil {
		group = string(*b.Group)
	}
	if b.Kind != nil {
		bkind = string(*b.Kind)
	}
	if bkind != "Service" || (group != "" && group != "core") {
		return ns, backendFault{gatewayv1.RouteReasonInvalidKind, fmt.Sprintf("backendRef %s %s/%s (group %q): meshlet routes to Services only (group \"\", kind Service)", bkind, ns, b.Name, group)}
	}
	if ns != rtNS && !bd.referenceGranted(kind, rtNS, ns, string(b.Name)) {
		return ns, backendFault{gatewayv1.RouteReasonRefNotPermitted, fmt.Sprintf("backendRef Service %s/%s: no ReferenceGrant in namespace %s allows %ss from %s to refer to it", ns, b.Name, ns, kind, rtNS)}
	}
	if _, ok := bd.hostOwners[string(b.Name)+"."+ns+".svc."+bd.opts.ClusterDomain]; !ok {
		return ns, backendFault{gatewayv1.RouteReasonBackendNotFound, fmt.Sprintf("backendRef Service %s/%s not found", ns, b.Name)}
	}
	return ns, backendFault{}
}

// backendRefsCondition is a route's ResolvedRefs condition.
func (bd *build) backendRefsCondition(kind, rtNS string, backends []gatewayv1.BackendRef, generation int64) metav1.Condition {
	var reason gatewayv1.RouteConditionReason
	var msgs []string
	for _, b := range backends {
		_, f := bd.resolveBackendRef(kind, rtNS, b)
		if f.reason == "" || slices.Contains(msgs, f.message) {
			continue
		}
		if reason == "" {
			reason = f.reason
		}
		msgs = append(msgs, f.message)
	}
	typ := string(gatewayv1.RouteConditionResolvedRefs)
	if reason == "" {
		return condition(typ, true, string(gatewayv1.RouteReasonResolvedRefs), "all backendRefs resolved", generation)
	}
	return condition(typ, false, string(reason), strings.Join(msgs, "; "), generation)
}

// backendTLSStatus computes every BackendTLSPolicy's ancestors.
func (bd *build) backendTLSStatus() []ObjectStatus {
	var out []ObjectStatus
	for _, bt := range bd.btlsPolicies {
		p := bd.in.backendTLS[bt.namespace+"/"+bt.name]
		gen := p.Generation
		st := ObjectStatus{Kind: KindBackendTLSPolicy, Namespace: p.Namespace, Name: p.Name, Generation: gen}
		// The policy's own faults, the same for every target.
		refsOK, refsReason, refsMsg := true, string(gatewayv1.BackendTLSPolicyReasonResolvedRefs), "all caCertificateRefs resolved"
		switch {
		case len(bt.caKind) > 0:
			refsOK, refsReason, refsMsg = false, string(gatewayv1.BackendTLSPolicyReasonInvalidKind), strings.Join(append(slices.Clone(bt.caKind), bt.caRef...), "; ")
		case len(bt.caRef) > 0:
			refsOK, refsReason, refsMsg = false, string(gatewayv1.BackendTLSPolicyReasonInvalidCACertificateRef), strings.Join(bt.caRef, "; ")
		}
		accOK, accReason, accMsg := true, string(gatewayv1.PolicyReasonAccepted), "TLS to the Service's backends is originated as the policy says"
		switch {
		case len(bt.invalid) > 0:
			accOK, accReason, accMsg = false, string(gatewayv1.PolicyReasonInvalid), strings.Join(bt.invalid, "; ")+"; requests to the Service get 503 until it is fixed"
		case !refsOK:
			// meshlet fails closed when any reference is invalid, not only all.
			accOK, accReason, accMsg = false, string(gatewayv1.BackendTLSPolicyReasonNoValidCACertificate), "a caCertificateRef does not resolve (see ResolvedRefs); requests to the Service get 503 until it is fixed"
		}
		for _, t := range bt.targets {
			ok, reason, msg := accOK, accReason, accMsg
			if t.reason != "" {
				ok, reason, msg = false, string(t.reason), t.message
			}
			a := serviceAncestor(t.ref.Name, t.ref.SectionName,
				condition(string(gatewayv1.PolicyConditionAccepted), ok, reason, msg, gen),
				condition(string(gatewayv1.BackendTLSPolicyConditionResolvedRefs), refsOK, refsReason, refsMsg, gen))
			if slices.ContainsFunc(st.Ancestors, func(b gatewayv1.PolicyAncestorStatus) bool { return sameParentRef(b.AncestorRef, a.AncestorRef) }) {
				continue
			}
			st.Ancestors = append(st.Ancestors, a)
		}
		out = append(out, st)
	}
	return out
}

func ptrTo[T any](v T) *T { return &v }

// meshTCPRouteAccepts decides a TCPRoute's parentRef pr to Service svc,
// which has a waypoint: accepted when the route is the one the waypoint
// forwards the service's TCP connections by on some port pr covers (the
// oldest: meshTCPRouteOn), else not, naming the route that port takes.
func (bd *build) meshTCPRouteAccepts(routeNS, routeName string, svc *corev1.Service, ms *model.Service, pr gatewayv1.ParentReference) (ours, ok bool, reason, msg string) {
	key := svc.Namespace + "/" + svc.Name
	rts := bd.tcpRoutesByService()[key]
	var taken []string
	for _, sp := range svc.Spec.Ports {
		if pr.Port != nil && int32(*pr.Port) != sp.Port {
			continue
		}
		on := meshTCPRouteOn(rts, svc.Name, uint32(sp.Port))
		if on == nil || (on.Namespace == routeNS && on.Name == routeName) {
			return true, true, string(gatewayv1.RouteReasonAccepted), fmt.Sprintf("the TCP connections to Service %s are forwarded by it at its waypoint %s", key, ms.Waypoint.Waypoint)
		}
		taken = append(taken, fmt.Sprintf("port %d by TCPRoute %s/%s, the oldest", sp.Port, on.Namespace, on.Name))
	}
	return true, false, string(gatewayv1.RouteReasonNotAllowedByListeners), fmt.Sprintf("a Service's port forwards its TCP connections by one TCPRoute: of Service %s, %s", key, strings.Join(taken, "; "))
}
