package cli

import (
	"bufio"
	"bytes"
	"cmp"
	"context"
	"fmt"
	"io"
	"slices"
	"sort"
	"strconv"
	"strings"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// describe explains how the mesh treats one pod or service, from the model
// meshd builds (the same translation, run here on the objects meshctl
// reads) and the node agents' counters: identity, enrollment and why,
// waypoint, the PeerAuthentication in force, the authorization policies and
// routes that apply, and recent refused connections.
func newDescribeCommand(s Streams, g *globalOptions) *cobra.Command {
	var namespace string
	cmd := &cobra.Command{
		Use:   "describe",
		Short: "Explain how the mesh treats a pod, a service or a gateway",
	}
	pod := &cobra.Command{
		Use:   "pod <name>",
		Short: "Identity, enrollment and why, waypoint, PeerAuthentication, policies, routes and refused connections of a pod",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := newDescriber(ctxOf(cmd), g)
			if err != nil {
				return err
			}
			return d.pod(ctxOf(cmd), s.Out, g.namespace(namespace), args[0])
		},
	}
	svc := &cobra.Command{
		Use:   "service <name>",
		Short: "Addresses, endpoints, waypoint, routes and policies of a service",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := newDescriber(ctxOf(cmd), g)
			if err != nil {
				return err
			}
			return d.service(s.Out, g.namespace(namespace), args[0])
		},
	}
	gw := &cobra.Command{
		Use:   "gateway <name>",
		Short: "Status, listeners (its own and its ListenerSets'), what it serves by port and host, and findings of a Gateway API Gateway of a meshlet class; for an Istio (networking.istio.io) Gateway its servers, the gateway deployments it selects and the VirtualServices bound to it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			d, err := newDescriber(ctxOf(cmd), g)
			if err != nil {
				return err
			}
			return d.gateway(s.Out, g.namespace(namespace), args[0])
		},
	}
	for _, c := range []*cobra.Command{pod, svc, gw} {
		c.Flags().StringVarP(&namespace, "namespace", "n", "", "the object's namespace"+nsUsage)
	}
	cmd.AddCommand(pod, svc, gw)
	return cmd
}

type describer struct {
	g        *globalOptions
	c        *clients
	objs     []sourced
	snap     *model.Snapshot
	findings []Finding
}

func newDescriber(ctx context.Context, g *globalOptions) (*describer, error) {
	c, err := g.clients()
	if err != nil {
		return nil, err
	}
	objs, unreadable, err := listLive(ctx, c, "")
	if err != nil {
		return nil, err
	}
	findings, snap, err := analyzeModel(objs, AnalyzeOptions{AssumeProfile: "live", MeshNamespace: g.meshNamespace, Unreadable: unreadable})
	if err != nil {
		return nil, err
	}
	return &describer{g: g, c: c, objs: objs, snap: snap, findings: findings}, nil
}

func (d *describer) pod(ctx context.Context, w io.Writer, ns, name string) error {
	p, err := d.c.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("pod %s/%s not found (pass -n <namespace>)", ns, name)
	}
	if err != nil {
		return fmt.Errorf("read pod %s/%s: %w", ns, name, err)
	}
	nsObj, err := d.c.kube.CoreV1().Namespaces().Get(ctx, ns, metav1.GetOptions{})
	if err != nil {
		return fmt.Errorf("read namespace %s: %w", ns, err)
	}
	wl, _ := d.snap.Workload(string(p.UID))
	fmt.Fprintf(w, "Pod:        %s/%s on %s, %s\n", ns, name, orDash(p.Spec.NodeName), orDash(p.Status.PodIP))
	sa := p.Spec.ServiceAccountName
	if sa == "" {
		sa = "default"
	}
	identity := fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", d.trustDomain(), ns, sa)
	if wl != nil && wl.Identity != "" {
		identity = wl.Identity
	}
	fmt.Fprintf(w, "Identity:   %s\n", identity)
	enrolled, why := enrollment(p, nsObj)
	fmt.Fprintf(w, "Enrolled:   %s (%s)\n", yesNo(enrolled), why)
	agent, agentReady := d.nodeAgent(ctx, p.Spec.NodeName)
	switch {
	case p.Spec.NodeName == "":
		fmt.Fprintln(w, "Node agent: - (not scheduled)")
	case agent == nil:
		fmt.Fprintf(w, "Node agent: NONE on %s: its traffic is not captured; check kubectl -n %s get daemonset meshlet-node-agent\n", p.Spec.NodeName, d.g.meshNamespace)
	default:
		fmt.Fprintf(w, "Node agent: %s on %s, ready: %s\n", agent.Name, p.Spec.NodeName, yesNo(agentReady))
	}
	if wl == nil {
		fmt.Fprintln(w, "Mesh model: this pod is not in it yet (no IP or not running)")
		return nil
	}
	var svcs []*model.Service
	for _, b := range wl.Services {
		if svc, ok := d.snap.ServiceByHostname(b.Hostname); ok {
			svcs = append(svcs, svc)
		}
	}
	fmt.Fprintln(w, "Services:")
	if len(svcs) == 0 {
		fmt.Fprintln(w, "  none select this pod")
	}
	for _, svc := range svcs {
		fmt.Fprintf(w, "  %s (%s), waypoint: %s\n", svc.Hostname(), addrs(svc), waypointText(d.snap, svc.Waypoint, model.WaypointForService))
	}
	fmt.Fprintf(w, "Waypoint for traffic to the pod's own address: %s\n", waypointText(d.snap, wl.Waypoint, model.WaypointForWorkload))
	pa := model.ResolvePeerAuthentication(d.snap.PeerAuthentications(), d.snap.RootNamespace(), ns, p.Labels)
	source := "no PeerAuthentication applies: the default"
	if len(pa.Policies) > 0 {
		names := make([]string, len(pa.Policies))
		for i, n := range pa.Policies {
			names[i] = n.String()
		}
		source = strings.Join(names, ", ")
	}
	fmt.Fprintf(w, "PeerAuthentication: %s (%s)", pa.ModeFor(0), source)
	if len(pa.PortModes) > 0 {
		ports := make([]int, 0, len(pa.PortModes))
		for port := range pa.PortModes {
			ports = append(ports, int(port))
		}
		sort.Ints(ports)
		for _, port := range ports {
			fmt.Fprintf(w, "; port %d: %s", port, pa.PortModes[uint32(port)])
		}
	}
	fmt.Fprintln(w)
	fmt.Fprintln(w, "AuthorizationPolicies:")
	n := 0
	for _, key := range wl.AuthorizationPolicies {
		if ap, ok := d.snap.AuthorizationPolicy(key); ok {
			fmt.Fprintf(w, "  %s %s, enforced by the node agent (L4)\n", key, actionOf(ap))
			n++
		}
	}
	for _, svc := range svcs {
		for _, ap := range d.targeting("Service", svc.Namespace, svc.Name) {
			fmt.Fprintf(w, "  %s %s, targets Service %s: enforced by its waypoint (L7)\n", ap.Key(), actionOf(ap), svc.Name)
			n++
		}
	}
	if n == 0 {
		fmt.Fprintln(w, "  none: every connection is allowed")
	}
	fmt.Fprintln(w, "Routes:")
	routes := 0
	for _, svc := range svcs {
		for _, r := range d.routesFor(svc) {
			fmt.Fprintf(w, "  %s\n", r)
			routes++
		}
	}
	if routes == 0 {
		fmt.Fprintln(w, "  none: traffic goes to the services' endpoints as Kubernetes balances them")
	}
	d.printRefused(ctx, w, agent, ns, podWorkloadName(p))
	d.printFindings(w, ns, name, p.Labels)
	return nil
}

func (d *describer) service(w io.Writer, ns, name string) error {
	var svc *model.Service
	for _, s := range d.snap.Services() {
		if s.Namespace == ns && s.Name == name && s.Source == model.SourceKubernetes {
			svc = s
		}
	}
	if svc == nil {
		return fmt.Errorf("service %s/%s not found in the mesh model (pass -n <namespace>; kubectl -n %s get service %s)", ns, name, ns, name)
	}
	fmt.Fprintf(w, "Service:    %s (%s)\n", svc.Hostname(), addrs(svc))
	fmt.Fprintf(w, "Waypoint:   %s\n", waypointText(d.snap, svc.Waypoint, model.WaypointForService))
	switch {
	case svc.NodeLocal:
		fmt.Fprintln(w, "Traffic:    internalTrafficPolicy Local: a client's connections go only to the ready endpoints on its node (none there: dropped, as by kube-proxy)")
	case svc.TrafficDistribution == model.TrafficPreferClose, svc.TrafficDistribution == model.TrafficPreferSameZone:
		fmt.Fprintf(w, "Traffic:    %s: a client's connections go to the ready endpoints in its zone, else its region, else any\n", svc.TrafficDistribution)
	case svc.TrafficDistribution == model.TrafficPreferSameNode:
		fmt.Fprintf(w, "Traffic:    %s: a client's connections go to the ready endpoints on its node, else any\n", svc.TrafficDistribution)
	}
	switch {
	case svc.Waypoint == nil:
	case svc.NodeLocal:
		fmt.Fprintln(w, "            (not applied: its waypoint picks the endpoints)")
	case svc.TrafficDistribution != "":
		fmt.Fprintln(w, "            (its waypoint applies it, from the node each waypoint pod runs on)")
	}
	if svc.SessionAffinity > 0 {
		fmt.Fprintf(w, "Affinity:   ClientIP: a client's connections keep to one ready endpoint while it comes back within %s\n", svc.SessionAffinity)
		if svc.Waypoint != nil {
			fmt.Fprintln(w, "            (its waypoint hashes the client's address instead, unless a DestinationRule sets the load balancer)")
		}
	}
	fmt.Fprintln(w, "Endpoints:")
	if len(svc.Endpoints) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, ep := range svc.Endpoints {
		wl, ok := d.snap.Workload(ep.WorkloadUID)
		if !ok {
			continue
		}
		ips := make([]string, len(ep.Addresses))
		for i, a := range ep.Addresses {
			ips[i] = a.String()
		}
		where := ""
		if z := wl.Locality.Zone; z != "" {
			where = ", zone: " + z
		}
		fmt.Fprintf(w, "  %s/%s %s ready: %s, enrolled: %s%s\n", wl.Namespace, wl.Name, strings.Join(ips, ","), yesNo(ep.Ready), yesNo(wl.Enrolled), where)
	}
	fmt.Fprintln(w, "Routes:")
	routes := d.routesFor(svc)
	if len(routes) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, r := range routes {
		fmt.Fprintf(w, "  %s\n", r)
	}
	fmt.Fprintln(w, "AuthorizationPolicies targeting it (enforced by its waypoint):")
	aps := d.targeting("Service", ns, name)
	if len(aps) == 0 {
		fmt.Fprintln(w, "  none")
	}
	for _, ap := range aps {
		fmt.Fprintf(w, "  %s %s\n", ap.Key(), actionOf(ap))
	}
	d.printFindings(w, ns, name, nil)
	return nil
}

func (d *describer) trustDomain() string {
	if td := d.snap.TrustDomain(); td != "" {
		return td
	}
	return "cluster.local"
}

// nodeAgent finds the node agent pod on node.
func (d *describer) nodeAgent(ctx context.Context, node string) (*corev1.Pod, bool) {
	if node == "" {
		return nil, false
	}
	l, err := d.c.kube.CoreV1().Pods(d.g.meshNamespace).List(ctx, metav1.ListOptions{LabelSelector: nodeAgentSelector, FieldSelector: "spec.nodeName=" + node})
	if err != nil || len(l.Items) == 0 {
		return nil, false
	}
	return &l.Items[0], podReady(l.Items[0])
}

// targeting lists the authorization policies with a targetRef of kind to ns/name.
func (d *describer) targeting(kind, ns, name string) []*model.AuthorizationPolicy {
	var out []*model.AuthorizationPolicy
	for _, ap := range d.snap.AuthorizationPolicies() {
		for _, t := range ap.Targets {
			if t.Kind == kind && t.Namespace == ns && t.Name == name {
				out = append(out, ap)
				break
			}
		}
	}
	return out
}

// routesFor lists the VirtualServices (by host) and HTTPRoutes/GRPCRoutes
// (by parentRef) that route a service's traffic.
func (d *describer) routesFor(svc *model.Service) []string {
	var out []string
	short, withNS := svc.Name, svc.Name+"."+svc.Namespace
	for _, so := range d.objs {
		u := so.obj
		switch u.GetKind() {
		case "VirtualService":
			if len(stringSlice(u, "spec", "gateways")) > 0 && !slices.Contains(stringSlice(u, "spec", "gateways"), "mesh") {
				continue // ingress-only
			}
			for _, h := range stringSlice(u, "spec", "hosts") {
				if h == svc.Hostname() || h == withNS || (h == short && u.GetNamespace() == svc.Namespace) {
					out = append(out, fmt.Sprintf("VirtualService %s/%s (hosts %s)", u.GetNamespace(), u.GetName(), strings.Join(stringSlice(u, "spec", "hosts"), ",")))
					break
				}
			}
		case "HTTPRoute", "GRPCRoute":
			refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "parentRefs")
			for _, r := range refs {
				m, _ := r.(map[string]any)
				kind, _ := m["kind"].(string)
				name, _ := m["name"].(string)
				refNS, _ := m["namespace"].(string)
				if refNS == "" {
					refNS = u.GetNamespace()
				}
				if kind == "Service" && name == svc.Name && refNS == svc.Namespace {
					out = append(out, fmt.Sprintf("%s %s/%s (parentRef Service %s)", u.GetKind(), u.GetNamespace(), u.GetName(), svc.Name))
					break
				}
			}
		case "DestinationRule":
			h, _, _ := unstructured.NestedString(u.Object, "spec", "host")
			if h == svc.Hostname() || h == withNS || (h == short && u.GetNamespace() == svc.Namespace) {
				out = append(out, fmt.Sprintf("DestinationRule %s/%s (host %s)", u.GetNamespace(), u.GetName(), h))
			}
		}
	}
	sort.Strings(out)
	return out
}

// printRefused reads the node agent's counters of connections it refused
// to the workload, through the API server's pod proxy.
// podWorkloadName is the workload name the node agents' metrics use.
func podWorkloadName(p *corev1.Pod) string {
	for _, o := range p.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			return model.WorkloadName(p.Name, o.Kind, o.Name, p.Labels["pod-template-hash"])
		}
	}
	return p.Name
}

func (d *describer) printRefused(ctx context.Context, w io.Writer, agent *corev1.Pod, ns, name string) {
	if agent == nil {
		return
	}
	raw, err := d.c.kube.CoreV1().Pods(agent.Namespace).ProxyGet("http", agent.Name, "15020", "/metrics", nil).DoRaw(ctx)
	if err != nil {
		fmt.Fprintf(w, "Refused connections: unknown (read %s metrics: %v)\n", agent.Name, err)
		return
	}
	byReason := refusedByReason(raw, ns, name)
	if len(byReason) == 0 {
		fmt.Fprintln(w, "Refused connections: none since the node agent started")
		return
	}
	reasons := make([]string, 0, len(byReason))
	for r := range byReason {
		reasons = append(reasons, r)
	}
	sort.Strings(reasons)
	parts := make([]string, len(reasons))
	for i, r := range reasons {
		parts[i] = fmt.Sprintf("%s %g", r, byReason[r])
	}
	fmt.Fprintf(w, "Refused connections (to this workload, since the node agent started): %s\n", strings.Join(parts, ", "))
}

// refusedByReason sums meshlet_tcp_connections_refused_total for one
// destination workload by reason, from the Prometheus text format.
func refusedByReason(metrics []byte, ns, workload string) map[string]float64 {
	out := map[string]float64{}
	sc := bufio.NewScanner(bytes.NewReader(metrics))
	sc.Buffer(make([]byte, 0, 64<<10), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, "meshlet_tcp_connections_refused_total{") {
			continue
		}
		end := strings.LastIndexByte(line, '}')
		if end < 0 {
			continue
		}
		labels := parseLabels(line[len("meshlet_tcp_connections_refused_total{"):end])
		if labels["destination_workload_namespace"] != ns || labels["destination_workload"] != workload {
			continue
		}
		v, err := strconv.ParseFloat(strings.TrimSpace(line[end+1:]), 64)
		if err == nil && v > 0 {
			out[labels["reason"]] += v
		}
	}
	return out
}

// parseLabels reads `a="x",b="y"` (values without escaped quotes suffice
// for the labels read here).
func parseLabels(s string) map[string]string {
	out := map[string]string{}
	for s != "" {
		k, rest, ok := strings.Cut(s, `="`)
		if !ok {
			break
		}
		v, rest2, ok := strings.Cut(rest, `"`)
		if !ok {
			break
		}
		out[strings.TrimLeft(k, ", ")] = v
		s = strings.TrimPrefix(rest2, ",")
	}
	return out
}

func (d *describer) printFindings(w io.Writer, ns, name string, labels map[string]string) {
	var mine []Finding
	for _, f := range d.findings {
		if f.Namespace == ns && (f.Name == name || labels != nil && f.Kind != "Pod") {
			mine = append(mine, f)
		}
	}
	if len(mine) == 0 {
		return
	}
	fmt.Fprintln(w, "Findings (meshctl analyze):")
	for _, f := range mine {
		fmt.Fprintf(w, "  %s %s %s/%s: %s\n", f.Severity, f.Kind, f.Namespace, f.Name, f.Message)
	}
}

// enrollment says whether a pod's traffic is captured and why, as the node
// agent decides it.
func enrollment(p *corev1.Pod, ns *corev1.Namespace) (bool, string) {
	switch {
	case p.Spec.HostNetwork:
		return false, "hostNetwork pods are never enrolled"
	case p.Labels[LabelDataplaneMode] == "none":
		return false, fmt.Sprintf("the pod's label %s=none opts it out", LabelDataplaneMode)
	case p.Labels[LabelDataplaneMode] == "ambient":
		return true, fmt.Sprintf("the pod's label %s=ambient", LabelDataplaneMode)
	case ns.Labels[LabelDataplaneMode] == "ambient":
		return true, fmt.Sprintf("namespace %s has %s=ambient", ns.Name, LabelDataplaneMode)
	}
	return false, fmt.Sprintf("namespace %s has no %s=ambient label: run meshctl ambient enable %s", ns.Name, LabelDataplaneMode, ns.Name)
}

func actionOf(ap *model.AuthorizationPolicy) string {
	switch ap.Policy.Action {
	case "":
		return "ALLOW"
	case policy.Custom:
		return "CUSTOM (" + ap.Policy.Provider + ")"
	}
	return string(ap.Policy.Action)
}

// waypointText says which waypoint the traffic of kind (to a service, or to
// a pod's own address) goes through: the bound one when its
// istio.io/waypoint-for takes that kind (service by default), else none,
// saying why.
func waypointText(snap *model.Snapshot, ref *model.WaypointRef, kind model.WaypointFor) string {
	if ref == nil {
		return "none"
	}
	bound := fmt.Sprintf("%s (bound by the %s's %s label)", ref.Waypoint, ref.Source, LabelUseWaypoint)
	wp, ok := snap.Waypoint(ref.Waypoint)
	if !ok {
		return bound + ", not deployed yet: traffic goes straight to the pods"
	}
	takes := cmp.Or(wp.For, model.WaypointForService)
	if takes == model.WaypointForNone {
		return fmt.Sprintf("none: %s is bound, but it takes no traffic (%s=none)", ref.Waypoint, LabelWaypointFor)
	}
	if takes != model.WaypointForAll && takes != kind {
		return fmt.Sprintf("none: %s is bound, but it takes %s traffic only (%s=%s)", ref.Waypoint, takes, LabelWaypointFor, takes)
	}
	return bound
}

func addrs(svc *model.Service) string {
	var ips, ports []string
	for _, v := range svc.VIPs {
		ips = append(ips, v.String())
	}
	for _, p := range svc.Ports {
		ports = append(ports, strconv.FormatUint(uint64(p.Port), 10))
	}
	if len(ips) == 0 {
		ips = []string{"headless"}
	}
	return strings.Join(ips, ",") + " ports " + strings.Join(ports, ",")
}

func stringSlice(u *unstructured.Unstructured, path ...string) []string {
	v, _, _ := unstructured.NestedStringSlice(u.Object, path...)
	return v
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
