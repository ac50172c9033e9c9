package controlplane

import (
	"fmt"
	"slices"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/deployer"
)

// ListenerSets (Gateway API GEP-1713, standard since v1.5) let other teams
// add listeners to an ingress Gateway without write access to it.
//
// Decisions:
//   - A ListenerSet is attached to the Gateway its spec.parentRef names
//     when that Gateway is an ingress Gateway meshd serves and its
//     spec.allowedListeners admits the set's namespace
//     (deployer.ListenerSetAllowed: None, the default, admits none). A set
//     whose parent is a Gateway of another class, or one meshd cannot
//     see, is another controller's business: no status. A set naming a
//     waypoint is Accepted False NotAllowed (a waypoint serves its HBONE
//     listener only); one naming an invalid ingress Gateway,
//     ParentNotAccepted; one its Gateway does not admit, NotAllowed.
//   - The Gateway serves the merged list: its own listeners, then the
//     attached sets' in Gateway API's order (oldest first, then by
//     namespace/name: deployer.SortListenerSets), validated as one list.
//     A later listener that clashes with an earlier one (the other of
//     HTTP, TLS and TCP on its port: ProtocolConflict; the same port,
//     protocol and hostname: HostnameConflict) is not served: in a set it
//     is Accepted False PortUnavailable, Programmed False, Conflicted
//     True, as the conformance tests have it. The Gateway's own listeners
//     always win over sets'; their status is unchanged by them.
//   - A set is Accepted when at least one of its listeners is served
//     (else Accepted False ListenersNotValid), and Programmed when
//     Accepted and its Gateway's Programmed (pkg/deployer's: the proxy is
//     ready and the Service has the addresses the Gateway requests) is
//     True, else Programmed False ParentNotProgrammed, naming the
//     Gateway's reason. The
//     Gateway's status.attachedListenerSets counts the Accepted sets.
//   - A route attaches to a set's listeners only through a parentRef to
//     the set (kind ListenerSet), and to the Gateway's own listeners only
//     through a parentRef to the Gateway: listener names need not be
//     unique across the merged list, so a Gateway parentRef never reaches
//     into its sets (GEP-1713, "Gateway parents and sectionName").
//   - A set's listener is its namespace's: allowedRoutes from Same means
//     the set's namespace, a certificateRef without namespace names a
//     Secret there, and one in another namespace needs a ReferenceGrant
//     from kind ListenerSet (a grant to the Gateway does not reach its
//     sets, nor one to a set its Gateway). The Gateway's spec.tls.frontend
//     client validation applies to the sets' HTTPS listeners on its
//     ports, as to its own: a set cannot serve a port without it.
//   - Messages written into a set's status never name another namespace's
//     set, so that teams sharing a Gateway learn nothing of each other.

// reasonParentNotProgrammed is the reason of a ListenerSet's Programmed
// False while its Gateway is not: Gateway API documents it, with no Go
// constant yet.
const reasonParentNotProgrammed = "ParentNotProgrammed"

// ingressListener is one listener of an ingress Gateway's merged list.
type ingressListener struct {
	gatewayv1.Listener
	// set is the ListenerSet the listener is written in; nil for the
	// Gateway's own.
	set *gatewayv1.ListenerSet
}

// namespace is the namespace of the object l is written in: where
// allowedRoutes Same and certificateRefs without namespace point.
func (l ingressListener) namespace(gw *gatewayv1.Gateway) string {
	if l.set != nil {
		return l.set.Namespace
	}
	return gw.Namespace
}

// kind is the kind of the object l is written in, as a ReferenceGrant's
// from names it.
func (l ingressListener) kind() string {
	if l.set != nil {
		return KindListenerSet
	}
	return KindGateway
}

// setState is what the build decided of one ListenerSet whose parent is a
// Gateway of a meshlet class.
type setState struct {
	set *gatewayv1.ListenerSet
	gw  *gatewayv1.Gateway
	// reason and msg say why the set is not attached; reason "" when it
	// is (its listeners then join gw's).
	reason gatewayv1.ListenerSetConditionReason
	msg    string
}

// ingressListeners returns gw's merged listener list: its own listeners,
// then those of the ListenerSets attached to it, in Gateway API's order.
// For a Gateway that is not a served ingress Gateway, its own only.
func (bd *build) ingressListeners(gw *gatewayv1.Gateway) []ingressListener {
	bd.attachListenerSets()
	if ls, ok := bd.gwListeners[gw]; ok {
		return ls
	}
	return ownListeners(gw)
}

func ownListeners(gw *gatewayv1.Gateway) []ingressListener {
	out := make([]ingressListener, len(gw.Spec.Listeners))
	for i, l := range gw.Spec.Listeners {
		out[i] = ingressListener{Listener: l}
	}
	return out
}

// listenerSet returns the state of ListenerSet namespace/name, nil when it
// does not exist or its parent is not a Gateway meshd serves.
func (bd *build) listenerSet(key string) *setState {
	bd.attachListenerSets()
	return bd.setStates[key]
}

// attachListenerSets decides, once per build, which ListenerSets attach to
// which ingress Gateway (setStates) and the merged listener lists
// (gwListeners).
func (bd *build) attachListenerSets() {
	if bd.gwListeners != nil {
		return
	}
	bd.gwListeners = map[*gatewayv1.Gateway][]ingressListener{}
	bd.setStates = map[string]*setState{}
	attached := map[*gatewayv1.Gateway][]*gatewayv1.ListenerSet{}
	for _, k := range sortedKeys(bd.in.listenerSets) {
		ls := bd.in.listenerSets[k]
		ns, name, ok := deployer.ListenerSetParent(ls)
		if !ok {
			continue
		}
		gwKey := ns + "/" + name
		gw := bd.in.gateways[gwKey]
		if gw == nil {
			continue // its class unknown: not ours to say
		}
		class := string(gw.Spec.GatewayClassName)
		st := &setState{set: ls, gw: gw}
		var nsLabels map[string]string
		if n := bd.in.namespaces[ls.Namespace]; n != nil {
			nsLabels = n.Labels
		}
		switch {
		case contains(bd.opts.WaypointClasses, class):
			st.reason, st.msg = gatewayv1.ListenerSetReasonNotAllowed,
				fmt.Sprintf("Gateway %s is a waypoint: it serves its HBONE listener only and takes no ListenerSets; name an ingress Gateway (class %s) in spec.parentRef", gwKey, bd.opts.IngressClasses[0])
		case !contains(bd.opts.IngressClasses, class):
			continue
		case !slices.Contains(bd.ingress, gw):
			st.reason, st.msg = gatewayv1.ListenerSetReasonParentNotAccepted, fmt.Sprintf("Gateway %s is invalid and serves no listener (see its events)", gwKey)
		case !deployer.ListenerSetAllowed(gw, ls.Namespace, nsLabels):
			st.reason, st.msg = gatewayv1.ListenerSetReasonNotAllowed, fmt.Sprintf("Gateway %s does not admit ListenerSets of namespace %s: %s", gwKey, ls.Namespace, allowedListenersText(gw))
		default:
			if dup := duplicateEntryName(ls); dup != "" {
				st.reason, st.msg = gatewayv1.ListenerSetReasonInvalid, fmt.Sprintf("listener name %q is used twice: names must be unique within a ListenerSet", dup)
				break
			}
			attached[gw] = append(attached[gw], ls)
		}
		bd.setStates[k] = st
		if st.reason != "" {
			bd.rejecter(KindListenerSet, ls.Namespace, ls.Name).warn("not attached to Gateway %s: %s", gwKey, st.msg)
		}
	}
	for _, gw := range bd.ingress {
		out := ownListeners(gw)
		sets := attached[gw]
		deployer.SortListenerSets(sets)
		for _, ls := range sets {
			for _, e := range ls.Spec.Listeners {
				out = append(out, ingressListener{Listener: gatewayv1.Listener(e), set: ls})
			}
		}
		bd.gwListeners[gw] = out
	}
}

// allowedListenersText says what gw's spec.allowedListeners admits, and
// how to have it admit more.
func allowedListenersText(gw *gatewayv1.Gateway) string {
	from := gatewayv1.NamespacesFromNone
	if a := gw.Spec.AllowedListeners; a != nil && a.Namespaces != nil && a.Namespaces.From != nil {
		from = *a.Namespaces.From
	}
	switch from {
	case gatewayv1.NamespacesFromSame:
		return fmt.Sprintf("its spec.allowedListeners.namespaces.from is Same (namespace %s only); its owner can set All, or Selector with a selector matching this namespace", gw.Namespace)
	case gatewayv1.NamespacesFromSelector:
		return "its spec.allowedListeners.namespaces.selector does not match this namespace's labels"
	}
	return "its spec.allowedListeners.namespaces.from is None (the default); its owner can set Same, All or Selector"
}

// duplicateEntryName returns a listener name ls uses twice, "" when none
// is (the CRD refuses it; objects that bypassed validation are told).
func duplicateEntryName(ls *gatewayv1.ListenerSet) gatewayv1.SectionName {
	for i, l := range ls.Spec.Listeners {
		for _, o := range ls.Spec.Listeners[:i] {
			if o.Name == l.Name {
				return l.Name
			}
		}
	}
	return ""
}

// listenerRejecter is where faults of listener l of gw are reported: the
// ListenerSet it is written in, else the Gateway.
func (bd *build) listenerRejecter(gw *gatewayv1.Gateway, l ingressListener) *rejections {
	if l.set != nil {
		return bd.rejecter(KindListenerSet, l.set.Namespace, l.set.Name)
	}
	return bd.rejecter(KindGateway, gw.Namespace, gw.Name)
}

// otherListener names listener o of gw's merged list in a message about
// listener l, without naming a ListenerSet of another namespace than l's.
func otherListener(gw *gatewayv1.Gateway, o, l ingressListener) string {
	switch {
	case o.set == nil && l.set == nil:
		return fmt.Sprintf("listener %q", o.Name)
	case o.set == nil:
		return fmt.Sprintf("listener %q of Gateway %s/%s", o.Name, gw.Namespace, gw.Name)
	case l.set != nil && o.set.Namespace == l.set.Namespace:
		return fmt.Sprintf("listener %q of ListenerSet %s", o.Name, o.set.Name)
	}
	return fmt.Sprintf("a listener of an older ListenerSet attached to Gateway %s/%s", gw.Namespace, gw.Name)
}

// listenerSetStatus computes the status of every ListenerSet whose parent
// is a Gateway of a meshlet class, and counts the Accepted ones of each
// Gateway (attachedListenerSets, by Gateway key). routes is the routes'
// status of this build.
func (bd *build) listenerSetStatus(routes []ObjectStatus) (out []ObjectStatus, accepted map[string]int32) {
	bd.attachListenerSets()
	accepted = map[string]int32{}
	// Each set's listeners by their index in its Gateway's merged list,
	// gathered in one pass over each list.
	bySet := map[*gatewayv1.ListenerSet][]int{}
	for _, ls := range bd.gwListeners {
		for i, l := range ls {
			if l.set != nil {
				bySet[l.set] = append(bySet[l.set], i)
			}
		}
	}
	for _, k := range sortedKeys(bd.setStates) {
		st := bd.setStates[k]
		ls, gw := st.set, st.gw
		gen := ls.Generation
		os := ObjectStatus{Kind: KindListenerSet, Namespace: ls.Namespace, Name: ls.Name, Generation: gen}
		if st.reason != "" {
			os.Conditions = []metav1.Condition{
				condition(string(gatewayv1.ListenerSetConditionAccepted), false, string(st.reason), st.msg, gen),
				condition(string(gatewayv1.ListenerSetConditionProgrammed), false, string(st.reason), "not attached: see Accepted", gen),
			}
			out = append(out, os)
			continue
		}
		served := 0
		all := bd.ingressListeners(gw)
		for _, i := range bySet[ls] {
			s, ok := bd.oneListener(gw, all[i], i, false, routes)
			os.Listeners = append(os.Listeners, s)
			if ok {
				served++
			}
		}
		acc := condition(string(gatewayv1.ListenerSetConditionAccepted), true, string(gatewayv1.ListenerSetReasonAccepted),
			fmt.Sprintf("attached to Gateway %s/%s", gw.Namespace, gw.Name), gen)
		prog := condition(string(gatewayv1.ListenerSetConditionProgrammed), true, string(gatewayv1.ListenerSetReasonProgrammed),
			"configuration pushed to the gateway's proxies", gen)
		switch {
		case served == 0:
			acc = condition(string(gatewayv1.ListenerSetConditionAccepted), false, string(gatewayv1.ListenerSetReasonListenersNotValid), "none of its listeners is served: see status.listeners", gen)
			prog = condition(string(gatewayv1.ListenerSetConditionProgrammed), false, string(gatewayv1.ListenerSetReasonListenersNotValid), "none of its listeners is served: see status.listeners", gen)
		case !meta.IsStatusConditionTrue(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)):
			accepted[gw.Namespace+"/"+gw.Name]++
			why := "no Programmed condition yet"
			if c := meta.FindStatusCondition(gw.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); c != nil {
				why = "reason " + c.Reason
			}
			prog = condition(string(gatewayv1.ListenerSetConditionProgrammed), false, reasonParentNotProgrammed,
				fmt.Sprintf("Gateway %s/%s is not programmed yet (%s: see its Programmed condition)", gw.Namespace, gw.Name, why), gen)
		default:
			accepted[gw.Namespace+"/"+gw.Name]++
		}
		os.Conditions = []metav1.Condition{acc, prog}
		out = append(out, os)
	}
	return out, accepted
}
