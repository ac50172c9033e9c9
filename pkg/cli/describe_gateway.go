package cli

import (
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/controlplane"
	"github.com/meshlet/meshlet/pkg/deployer"
	"github.com/meshlet/meshlet/pkg/model"
)

// describe gateway explains a Gateway API Gateway of a meshlet class, for
// the platform team asking why a route or a listener is not served: the
// Gateway's and its ListenerSets' status as meshd wrote it (from the live
// objects), what meshd serves on it (the L7 configuration of the local
// translation, the same meshd pushes), and the analysis findings about it,
// its ListenerSets and the routes naming either as parent.

const gatewayGroup = "gateway.networking.k8s.io"

func (d *describer) gateway(w io.Writer, ns, name string) error {
	return describeGateway(w, d.objs, d.snap, d.findings, ns, name)
}

// describeGateway prints Gateway ns/name from objs (as listLive returns
// them), snap and findings (analyzeModel's of objs).
func describeGateway(w io.Writer, objs []sourced, snap *model.Snapshot, findings []Finding, ns, name string) error {
	gw, sets, err := gatewayObjects(objs, ns, name)
	if err != nil {
		if found, ierr := describeIstioGateway(w, objs, snap, findings, ns, name); found || ierr != nil {
			return ierr
		}
		return err
	}
	class := gw.Spec.GatewayClassName
	kind := deployer.ClassKind(class)
	if kind == deployer.KindNone {
		return fmt.Errorf("gateway %s/%s is of class %q, which meshlet does not serve (meshlet serves the classes istio, meshlet, istio-waypoint and meshlet-waypoint); ask the controller of that class", ns, name, class)
	}
	waypoint := kind == deployer.KindWaypoint
	kindText := "ingress"
	if waypoint {
		kindText = "waypoint"
	}
	fmt.Fprintf(w, "Gateway:    %s/%s, class %s (%s)\n", ns, name, class, kindText)
	for _, typ := range []string{string(gatewayv1.GatewayConditionAccepted), string(gatewayv1.GatewayConditionProgrammed)} {
		fmt.Fprintf(w, "%-11s %s\n", typ+":", conditionText(gw.Status.Conditions, typ, true))
	}
	var addrs []string
	for _, a := range gw.Status.Addresses {
		addrs = append(addrs, a.Value)
	}
	fmt.Fprintf(w, "Addresses:  %s\n", orDash(strings.Join(addrs, ", ")))
	if !waypoint {
		fmt.Fprintf(w, "Allowed ListenerSets: %s\n", allowedListenersSummary(gw))
		attached := "- (no status yet)"
		if n := gw.Status.AttachedListenerSets; n != nil {
			attached = strconv.Itoa(int(*n))
		}
		fmt.Fprintf(w, "Attached ListenerSets: %s\n", attached)
	}

	fmt.Fprintln(w, "Listeners:")
	origin := "Gateway " + ns + "/" + name
	for _, l := range gw.Spec.Listeners {
		st, ok := findListenerStatus(gw.Status.Listeners, l.Name)
		fmt.Fprintf(w, "  %s\n", listenerLine(l, origin, st, ok, ""))
	}
	if len(gw.Spec.Listeners) == 0 && len(sets) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, ls := range sets {
		accepted := meta.IsStatusConditionTrue(ls.Status.Conditions, string(gatewayv1.ListenerSetConditionAccepted))
		var notAttached string
		if c := meta.FindStatusCondition(ls.Status.Conditions, string(gatewayv1.ListenerSetConditionAccepted)); c != nil && !accepted && c.Reason != string(gatewayv1.ListenerSetReasonListenersNotValid) {
			notAttached = "not served: the ListenerSet is not attached (" + c.Reason + ", see below)"
		}
		for _, e := range ls.Spec.Listeners {
			st, ok := findEntryStatus(ls.Status.Listeners, e.Name)
			fmt.Fprintf(w, "  %s\n", listenerLine(gatewayv1.Listener(e), "ListenerSet "+ls.Namespace+"/"+ls.Name, st, ok, notAttached))
		}
	}
	if !waypoint {
		fmt.Fprintln(w, "ListenerSets naming it as parent:")
		if len(sets) == 0 {
			fmt.Fprintln(w, "  none")
		}
		for _, ls := range sets {
			var parts []string
			for _, typ := range []string{string(gatewayv1.ListenerSetConditionAccepted), string(gatewayv1.ListenerSetConditionProgrammed)} {
				parts = append(parts, typ+" "+conditionText(ls.Status.Conditions, typ, false))
			}
			fmt.Fprintf(w, "  %s/%s: %s\n", ls.Namespace, ls.Name, strings.Join(parts, "; "))
		}
	}

	key := model.NamespacedName{Namespace: ns, Name: name}
	if waypoint {
		printWaypointBindings(w, snap, key)
	} else {
		printServed(w, snap, key)
	}

	routes := routesNaming(objs, ns, name, sets)
	var mine []Finding
	for _, f := range findings {
		if f.Kind == controlplane.KindGateway && f.Namespace == ns && f.Name == name ||
			f.Kind == controlplane.KindListenerSet && slices.ContainsFunc(sets, func(ls *gatewayv1.ListenerSet) bool { return ls.Namespace == f.Namespace && ls.Name == f.Name }) ||
			routes[f.Kind+"/"+f.Namespace+"/"+f.Name] {
			mine = append(mine, f)
		}
	}
	if len(mine) > 0 {
		fmt.Fprintln(w, "Findings (meshctl analyze):")
		for _, f := range mine {
			fmt.Fprintf(w, "  %s %s %s/%s: %s\n", f.Severity, f.Kind, f.Namespace, f.Name, f.Message)
		}
	}
	return nil
}

// gatewayObjects finds Gateway ns/name among objs, and the ListenerSets
// whose spec.parentRef names it, in the order their listeners join the
// Gateway's.
func gatewayObjects(objs []sourced, ns, name string) (*gatewayv1.Gateway, []*gatewayv1.ListenerSet, error) {
	var gw *gatewayv1.Gateway
	var sets []*gatewayv1.ListenerSet
	for _, so := range objs {
		u := so.obj
		if u.GroupVersionKind().Group != gatewayGroup {
			continue
		}
		switch u.GetKind() {
		case "Gateway":
			if u.GetNamespace() != ns || u.GetName() != name {
				continue
			}
			gw = &gatewayv1.Gateway{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, gw); err != nil {
				return nil, nil, fmt.Errorf("read gateway %s/%s: %w", ns, name, err)
			}
		case "ListenerSet":
			ls := &gatewayv1.ListenerSet{}
			if err := runtime.DefaultUnstructuredConverter.FromUnstructured(u.Object, ls); err != nil {
				continue // analyze reports it
			}
			if pns, pname, ok := deployer.ListenerSetParent(ls); ok && pns == ns && pname == name {
				sets = append(sets, ls)
			}
		}
	}
	if gw == nil {
		return nil, nil, fmt.Errorf("gateway %s/%s not found, neither a Gateway API nor an Istio one (pass -n <namespace>; kubectl get gateways.gateway.networking.k8s.io,gateways.networking.istio.io -A lists them)", ns, name)
	}
	deployer.SortListenerSets(sets)
	return gw, sets, nil
}

// routeKinds are the Gateway API routes that attach to an ingress Gateway.
var routeKinds = []string{"HTTPRoute", "GRPCRoute", "TLSRoute", "TCPRoute"}

// routesNaming returns the routes among objs (as "Kind/ns/name") with a
// parentRef to Gateway ns/name or to one of its ListenerSets sets, whose
// findings say why a route is not served there.
func routesNaming(objs []sourced, ns, name string, sets []*gatewayv1.ListenerSet) map[string]bool {
	out := map[string]bool{}
	for _, so := range objs {
		u := so.obj
		if u.GroupVersionKind().Group != gatewayGroup || !slices.Contains(routeKinds, u.GetKind()) {
			continue
		}
		refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "parentRefs")
		for _, r := range refs {
			m, _ := r.(map[string]any)
			group, _ := m["group"].(string)
			kind, _ := m["kind"].(string)
			refName, _ := m["name"].(string)
			refNS, _ := m["namespace"].(string)
			if refNS == "" {
				refNS = u.GetNamespace()
			}
			if group != "" && group != gatewayGroup {
				continue
			}
			named := (kind == "" || kind == "Gateway") && refNS == ns && refName == name ||
				kind == "ListenerSet" && slices.ContainsFunc(sets, func(ls *gatewayv1.ListenerSet) bool { return ls.Namespace == refNS && ls.Name == refName })
			if named {
				out[u.GetKind()+"/"+u.GetNamespace()+"/"+u.GetName()] = true
				break
			}
		}
	}
	return out
}

// allowedListenersSummary says which namespaces' ListenerSets gw admits.
func allowedListenersSummary(gw *gatewayv1.Gateway) string {
	a := gw.Spec.AllowedListeners
	if a == nil || a.Namespaces == nil || a.Namespaces.From == nil || *a.Namespaces.From == gatewayv1.NamespacesFromNone {
		return "from None (the default: no ListenerSet attaches)"
	}
	switch *a.Namespaces.From {
	case gatewayv1.NamespacesFromSame:
		return fmt.Sprintf("from Same (namespace %s only)", gw.Namespace)
	case gatewayv1.NamespacesFromAll:
		return "from All (every namespace)"
	case gatewayv1.NamespacesFromSelector:
		if a.Namespaces.Selector == nil {
			return "from Selector, with no selector: none admitted"
		}
		return "from Selector, namespaces matching " + metav1.FormatLabelSelector(a.Namespaces.Selector)
	}
	return fmt.Sprintf("from %s", *a.Namespaces.From)
}

// conditionText is a condition's status and reason, with its message when
// full or when the status is not True.
func conditionText(conds []metav1.Condition, typ string, full bool) string {
	c := meta.FindStatusCondition(conds, typ)
	if c == nil {
		return "- (no status yet: meshd has not written it)"
	}
	s := fmt.Sprintf("%s (%s)", c.Status, c.Reason)
	if c.Message != "" && (full || c.Status != metav1.ConditionTrue) {
		s += ": " + c.Message
	}
	return s
}

// happyListener is the status of each listener condition when all is well.
var happyListener = []struct {
	typ   string
	happy metav1.ConditionStatus
}{
	{string(gatewayv1.ListenerConditionAccepted), metav1.ConditionTrue},
	{string(gatewayv1.ListenerConditionProgrammed), metav1.ConditionTrue},
	{string(gatewayv1.ListenerConditionResolvedRefs), metav1.ConditionTrue},
	{string(gatewayv1.ListenerConditionConflicted), metav1.ConditionFalse},
}

// listenerLine is one listener: its name, where it is written, port,
// protocol, hostname, attached routes and status conditions (the message
// of each that is not its happy value). notServed, when set, replaces the
// status (a ListenerSet not attached has none for its listeners).
func listenerLine(l gatewayv1.Listener, origin string, st gatewayv1.ListenerStatus, hasStatus bool, notServed string) string {
	host := "*"
	if l.Hostname != nil && *l.Hostname != "" {
		host = string(*l.Hostname)
	}
	s := fmt.Sprintf("%s (%s): port %d %s, hostname %s", l.Name, origin, l.Port, l.Protocol, host)
	switch {
	case notServed != "":
		return s + "; " + notServed
	case !hasStatus:
		return s + "; no status yet (meshd has not written it)"
	}
	s += fmt.Sprintf(", attachedRoutes %d", st.AttachedRoutes)
	var parts []string
	for _, h := range happyListener {
		c := meta.FindStatusCondition(st.Conditions, h.typ)
		switch {
		case c == nil:
			if h.typ != string(gatewayv1.ListenerConditionConflicted) {
				parts = append(parts, h.typ+" unknown")
			}
		case c.Status == h.happy:
			if h.happy == metav1.ConditionTrue {
				parts = append(parts, h.typ)
			}
		default:
			p := fmt.Sprintf("%s %s (%s)", h.typ, c.Status, c.Reason)
			if c.Message != "" {
				p += ": " + c.Message
			}
			parts = append(parts, p)
		}
	}
	return s + "; " + strings.Join(parts, "; ")
}

func findListenerStatus(sts []gatewayv1.ListenerStatus, name gatewayv1.SectionName) (gatewayv1.ListenerStatus, bool) {
	for _, s := range sts {
		if s.Name == name {
			return s, true
		}
	}
	return gatewayv1.ListenerStatus{}, false
}

func findEntryStatus(sts []gatewayv1.ListenerEntryStatus, name gatewayv1.SectionName) (gatewayv1.ListenerStatus, bool) {
	for _, s := range sts {
		if s.Name == name {
			return gatewayv1.ListenerStatus{Name: s.Name, AttachedRoutes: s.AttachedRoutes, Conditions: s.Conditions}, true
		}
	}
	return gatewayv1.ListenerStatus{}, false
}

// printServed prints an ingress Gateway's L7 configuration, as meshd
// pushes it: per port, its TLS, virtual hosts and routes, passthrough and
// TCP routes.
func printServed(w io.Writer, snap *model.Snapshot, key model.NamespacedName) {
	fmt.Fprintln(w, "Served (the configuration meshd pushes to the gateway):")
	cfg, ok := snap.L7Config(key)
	if !ok || len(cfg.Listeners) == 0 {
		fmt.Fprintln(w, "  nothing: no listener has a route attached (or the Gateway is invalid; see the findings)")
		return
	}
	for _, l := range cfg.Listeners {
		tls := "plaintext"
		if l.TLS != nil {
			tls = "TLS " + l.TLS.Mode + sniText(l.TLS.SNIHosts)
			for _, s := range l.SNI {
				tls += "; TLS " + s.Mode + sniText(s.SNIHosts)
			}
		}
		fmt.Fprintf(w, "  port %d (%s):\n", l.Port, tls)
		for _, vh := range l.VirtualHosts {
			fmt.Fprintf(w, "    hosts %s:\n", strings.Join(vh.Domains, ", "))
			for _, r := range vh.Routes {
				fmt.Fprintf(w, "      %s\n", routeLine(r))
			}
		}
		for _, p := range l.Passthrough {
			fmt.Fprintf(w, "    passthrough SNI %s: %s -> %s\n", strings.Join(p.SNIHosts, ", "), p.Name, destinationsText(p.Destinations))
		}
		for _, t := range l.TCPMatched {
			fmt.Fprintf(w, "    tcp (matched): %s -> %s\n", t.Name, destinationsText(t.Destinations))
		}
		if l.TCP != nil {
			fmt.Fprintf(w, "    tcp: %s -> %s\n", l.TCP.Name, destinationsText(l.TCP.Destinations))
		}
	}
}

func sniText(hosts []string) string {
	if len(hosts) == 0 {
		return ""
	}
	return ", SNI " + strings.Join(hosts, ",")
}

// routeLine is one route on one line: where it comes from, what it
// matches and where it sends.
func routeLine(r model.L7Route) string {
	s := r.Name
	if parts := strings.SplitN(r.Origin, "/", 3); len(parts) == 3 {
		// meshd names a rule <name>.<namespace>.<index> unless the
		// rule has its own name.
		kind, ns, name := parts[0], parts[1], parts[2]
		rule := r.Name
		if i, ok := strings.CutPrefix(r.Name, name+"."+ns+"."); ok {
			rule = i
		}
		s = fmt.Sprintf("%s %s/%s rule %s", kind, ns, name, rule)
	}
	if m := matchesText(r.Matches); m != "" {
		s += " [" + m + "]"
	}
	switch {
	case r.Redirect != nil:
		return s + " -> " + redirectText(r.Redirect)
	case r.DirectResponse != nil:
		return s + fmt.Sprintf(" -> responds %d", r.DirectResponse.Status)
	}
	return s + " -> " + destinationsText(r.Destinations)
}

// redirectText says what a redirect changes.
func redirectText(rd *model.Redirect) string {
	s := "redirect"
	if rd.Code != 0 {
		s += " " + strconv.Itoa(rd.Code)
	}
	var parts []string
	if rd.Scheme != "" {
		parts = append(parts, "scheme "+rd.Scheme)
	}
	if rd.Authority != "" {
		parts = append(parts, "host "+rd.Authority)
	}
	if rd.Port != 0 {
		parts = append(parts, "port "+strconv.FormatUint(uint64(rd.Port), 10))
	}
	if rd.URI != "" {
		parts = append(parts, "path "+rd.URI)
	}
	if len(parts) > 0 {
		s += " to " + strings.Join(parts, ", ")
	}
	return s
}

// matchesText summarises a route's matches: path and method of each
// alternative, header and query conditions counted.
func matchesText(ms []model.RouteMatch) string {
	var alts []string
	for _, m := range ms {
		var parts []string
		if u := m.URI; u != nil {
			switch {
			case u.PathPrefix != "":
				parts = append(parts, "path prefix "+u.PathPrefix)
			case u.Prefix != "":
				parts = append(parts, "path prefix "+u.Prefix)
			case u.Exact != "":
				parts = append(parts, "path "+u.Exact)
			case u.Regex != "":
				parts = append(parts, "path ~ "+u.Regex)
			}
		}
		if m.Method != nil && m.Method.Exact != "" {
			parts = append(parts, m.Method.Exact)
		}
		if n := len(m.Headers); n > 0 {
			parts = append(parts, fmt.Sprintf("%d header condition(s)", n))
		}
		if n := len(m.QueryParams); n > 0 {
			parts = append(parts, fmt.Sprintf("%d query condition(s)", n))
		}
		if len(parts) > 0 {
			alts = append(alts, strings.Join(parts, " "))
		}
	}
	return strings.Join(alts, " or ")
}

// destinationsText lists destinations as host:port (subset) weight.
func destinationsText(ds []model.WeightedDestination) string {
	if len(ds) == 0 {
		return "nothing"
	}
	parts := make([]string, len(ds))
	for i, d := range ds {
		var p string
		switch {
		case d.DirectResponse != nil:
			p = fmt.Sprintf("responds %d", d.DirectResponse.Status)
		default:
			p = clusterText(d.Cluster)
			if d.Subset != "" {
				p += " subset " + d.Subset
			}
		}
		if len(ds) > 1 {
			p += fmt.Sprintf(" (weight %d)", d.Weight)
		}
		parts[i] = p
	}
	return strings.Join(parts, ", ")
}

// clusterText writes meshd's "outbound|port|subset|host" as host:port.
func clusterText(c string) string {
	f := strings.Split(c, "|")
	if len(f) != 4 || f[0] != "outbound" {
		return c
	}
	s := f[3] + ":" + f[1]
	if f[2] != "" {
		s += " subset " + f[2]
	}
	return s
}

// printWaypointBindings prints what a waypoint serves, from the model.
func printWaypointBindings(w io.Writer, snap *model.Snapshot, key model.NamespacedName) {
	wp, ok := snap.Waypoint(key)
	if !ok {
		fmt.Fprintln(w, "Mesh model: not a waypoint yet (no address: its Service is not there, or the Gateway is invalid; see the findings)")
		return
	}
	var addrs []string
	for _, a := range wp.Addresses {
		addrs = append(addrs, a.String())
	}
	fmt.Fprintf(w, "Takes:      %s traffic, at %s\n", orDash(string(wp.For)), orDash(strings.Join(addrs, ",")))
	b := snap.WaypointBindings(key)
	fmt.Fprintln(w, "Services bound to it:")
	if len(b.Services) == 0 {
		fmt.Fprintf(w, "  none: label a Service or namespace %s=%s\n", LabelUseWaypoint, key.Name)
	}
	for _, s := range b.Services {
		src := ""
		if s.Waypoint != nil {
			src = " (by the " + s.Waypoint.Source + "'s label)"
		}
		fmt.Fprintf(w, "  %s%s\n", s.Hostname(), src)
	}
	if len(b.Workloads) > 0 {
		fmt.Fprintln(w, "Workloads bound to it:")
		for _, wl := range b.Workloads {
			fmt.Fprintf(w, "  %s/%s\n", wl.Namespace, wl.Name)
		}
	}
}
