package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"slices"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"
	"k8s.io/streaming/pkg/httpstream"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
)

// `meshctl agent-config` and `meshctl proxy-config` show what a node agent
// or a waypoint holds, from its /config_dump (pkg/configdump), as istioctl's
// ztunnel-config and proxy-config do: the admin port is loopback only, so
// it is reached through a port-forward to the pod.

// maxDump bounds a config dump read (a mesh of ~100k workloads).
const maxDump = 256 << 20

// adminGet reads path from the loopback admin port of a pod, through a
// port-forward (WebSocket, or SPDY where the API server has no WebSocket
// port-forward).
func (c *clients) adminGet(ctx context.Context, ns, pod string, port int, path string) ([]byte, error) {
	var body []byte
	err := c.adminDo(ctx, ns, pod, port, path, func(res *http.Response, where string) error {
		var err error
		body, err = io.ReadAll(io.LimitReader(res.Body, maxDump+1))
		if err != nil {
			return fmt.Errorf("GET %s from %s: %w", path, where, err)
		}
		if len(body) > maxDump {
			return fmt.Errorf("GET %s from %s: answer over %d MiB", path, where, maxDump>>20)
		}
		if res.StatusCode != http.StatusOK {
			return fmt.Errorf("GET %s from %s: %s: %s", path, where, res.Status, strings.TrimSpace(string(body)))
		}
		return nil
	})
	return body, err
}

// adminDo GETs path from the loopback admin port of a pod, through a
// port-forward, and hands the answer to read while the port-forward lasts
// (where names the pod and port for messages).
func (c *clients) adminDo(ctx context.Context, ns, pod string, port int, path string, read func(res *http.Response, where string) error) error {
	where := fmt.Sprintf("pod %s/%s port %d", ns, pod, port)
	u := c.kube.CoreV1().RESTClient().Post().Resource("pods").Namespace(ns).Name(pod).SubResource("portforward").URL()
	transport, upgrader, err := spdy.RoundTripperFor(c.config)
	if err != nil {
		return fmt.Errorf("port-forward to %s: %w", where, err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: transport}, http.MethodPost, u)
	if ws, err := portforward.NewSPDYOverWebsocketDialer(u, c.config); err == nil {
		dialer = portforward.NewFallbackDialer(ws, dialer, func(err error) bool {
			return httpstream.IsUpgradeFailure(err) || httpstream.IsHTTPSProxyError(err)
		})
	}
	fctx, stop := context.WithCancel(ctx)
	defer stop()
	ready := make(chan struct{})
	errOut := newLockedBuffer()
	fw, err := portforward.NewOnAddressesWithContext(fctx, dialer, []string{"127.0.0.1"}, []string{"0:" + strconv.Itoa(port)}, ready, io.Discard, errOut)
	if err != nil {
		return fmt.Errorf("port-forward to %s: %w", where, err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New("ended before it was ready")
		}
		return fmt.Errorf("port-forward to %s: %w", where, err)
	case <-ctx.Done():
		return fmt.Errorf("port-forward to %s: %w", where, ctx.Err())
	}
	ports, err := fw.GetPorts()
	if err != nil || len(ports) == 0 {
		return fmt.Errorf("port-forward to %s: no local port: %v", where, err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, fmt.Sprintf("http://127.0.0.1:%d%s", ports[0].Local, path), nil)
	if err != nil {
		return err
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		if msg := strings.TrimSpace(errOut.String()); msg != "" {
			err = fmt.Errorf("%w (%s)", err, msg)
		}
		return fmt.Errorf("GET %s from %s: %w", path, where, err)
	}
	defer res.Body.Close()
	return read(res, where)
}

// lockedBuffer collects what the port-forward's goroutines report, for an
// error message read while they may still write.
type lockedBuffer struct {
	lockedWriter
	b strings.Builder
}

func newLockedBuffer() *lockedBuffer {
	l := &lockedBuffer{}
	l.w = &l.b
	return l
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// dataplaneFlags are the flags agent-config and proxy-config share.
type dataplaneFlags struct {
	output    string
	namespace string
	timeout   time.Duration
}

func (f *dataplaneFlags) add(cmd *cobra.Command, nsUsage string) {
	cmd.Flags().StringVarP(&f.output, "output", "o", "table", "output format: table or json (the whole config dump)")
	cmd.Flags().StringVarP(&f.namespace, "namespace", "n", "", nsUsage)
	cmd.Flags().DurationVar(&f.timeout, "timeout", 30*time.Second, "how long to wait for the pod's answer")
}

func (f *dataplaneFlags) check() error {
	if f.output != "table" && f.output != "json" {
		return fmt.Errorf("--output %q: want table or json", f.output)
	}
	return nil
}

// readDump reads pod's config dump: with -o json it is written to out as
// is (done), else decoded into doc.
func (f *dataplaneFlags) readDump(ctx context.Context, c *clients, out io.Writer, pod *corev1.Pod, doc any) (done bool, err error) {
	raw, err := c.adminGet(ctx, pod.Namespace, pod.Name, configdump.AdminPort, configdump.Path)
	if err != nil {
		return false, err
	}
	if f.output == "json" {
		_, err := out.Write(raw)
		return true, err
	}
	if err := json.Unmarshal(raw, doc); err != nil {
		return false, fmt.Errorf("pod %s/%s: config dump: %w", pod.Namespace, pod.Name, err)
	}
	return false, nil
}

var agentConfigKinds = []string{"workloads", "services", "policies", "certificates", "all"}

func newAgentConfigCommand(s Streams, g *globalOptions) *cobra.Command {
	var f dataplaneFlags
	var node string
	cmd := &cobra.Command{
		Use:   "agent-config <" + strings.Join(agentConfigKinds, "|") + ">",
		Short: "Show what a node agent holds: workloads, services, policies, certificates",
		Long: `Shows the mesh as one node agent sees it, read from its admin port (loopback,
through a port-forward): the workloads and services of its model, the
policies in force, and the certificates it holds for the pods of its node.
As istioctl ztunnel-config. -o json prints the whole config dump.`,
		Example: `  meshctl agent-config workloads -n shop
  meshctl agent-config certificates --node worker-1`,
		Args:      cobra.ExactArgs(1),
		ValidArgs: agentConfigKinds,
		RunE: func(cmd *cobra.Command, args []string) error {
			kind := args[0]
			if !slices.Contains(agentConfigKinds, kind) {
				return fmt.Errorf("unknown kind %q: want one of %s", kind, strings.Join(agentConfigKinds, ", "))
			}
			if err := f.check(); err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx, cancel := context.WithTimeout(ctxOf(cmd), f.timeout)
			defer cancel()
			pod, err := agentOn(ctx, c, g.meshNamespace, node)
			if err != nil {
				return err
			}
			var d configdump.Agent
			if done, err := f.readDump(ctx, c, s.Out, pod, &d); done || err != nil {
				return err
			}
			fmt.Fprintf(s.ErrOut, "node agent %s on %s, config version %d\n", pod.Name, d.Node, d.ConfigVersion)
			return printAgentConfig(s.Out, &d, kind, f.namespace, time.Now())
		},
	}
	f.add(cmd, "only workloads, services and policies of this namespace")
	cmd.Flags().StringVar(&node, "node", "", "the node whose agent to ask (default: the first running agent by node name)")
	return cmd
}

// agentOn finds the running node agent on node ("" any, the first by node
// name).
func agentOn(ctx context.Context, c *clients, meshNS, node string) (*corev1.Pod, error) {
	opts := metav1.ListOptions{LabelSelector: nodeAgentSelector}
	if node != "" {
		opts.FieldSelector = "spec.nodeName=" + node
	}
	l, err := c.kube.CoreV1().Pods(meshNS).List(ctx, opts)
	if err != nil {
		return nil, fmt.Errorf("list node agents in namespace %s: %w (is meshlet installed? run meshctl install)", meshNS, err)
	}
	p, ok := firstRunning(l.Items, func(p corev1.Pod) string { return p.Spec.NodeName + "/" + p.Name })
	if !ok {
		if node != "" {
			return nil, fmt.Errorf("no running node agent on node %q (check kubectl -n %s get pods -o wide -l app.kubernetes.io/name=meshlet-node-agent)", node, meshNS)
		}
		return nil, fmt.Errorf("no running node agent in namespace %s (is meshlet installed? run meshctl install, or pass --mesh-namespace)", meshNS)
	}
	return p, nil
}

// firstRunning is the first by key of the pods running and not being
// deleted.
func firstRunning(pods []corev1.Pod, key func(corev1.Pod) string) (*corev1.Pod, bool) {
	running := slices.DeleteFunc(pods, func(p corev1.Pod) bool { return p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil })
	if len(running) == 0 {
		return nil, false
	}
	slices.SortFunc(running, func(a, b corev1.Pod) int { return strings.Compare(key(a), key(b)) })
	return &running[0], true
}

func printAgentConfig(w io.Writer, d *configdump.Agent, kind, ns string, now time.Time) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	section := func(title string) {
		if kind == "all" {
			fmt.Fprintf(tw, "\n%s\n", title)
		}
	}
	if kind == "workloads" || kind == "all" {
		section("WORKLOADS")
		enrolled := make(map[string]bool, len(d.Enrolled))
		for _, uid := range d.Enrolled {
			enrolled[uid] = true
		}
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tIP\tNODE\tIDENTITY\tWAYPOINT\tPROTOCOL")
		for _, wl := range sortedWorkloads(d.Workloads) {
			if ns != "" && wl.Namespace != ns {
				continue
			}
			proto := "TCP"
			if wl.Enrolled {
				proto = "HBONE"
			}
			if enrolled[wl.UID] {
				proto += " (this node)"
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\n", wl.Namespace, wl.Name, joinAddrs(wl.IPs), dash(wl.Node),
				dash(wl.Identity), waypointName(wl.Waypoint), proto)
		}
	}
	if kind == "services" || kind == "all" {
		section("SERVICES")
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tKIND\tVIP\tPORTS\tENDPOINTS\tWAYPOINT\tTRAFFIC")
		for _, sv := range sortedServices(d.Services) {
			if ns != "" && sv.Namespace != ns {
				continue
			}
			ready := 0
			for _, ep := range sv.Endpoints {
				if ep.Ready {
					ready++
				}
			}
			ports := make([]string, 0, len(sv.Ports))
			for _, p := range sv.Ports {
				ports = append(ports, strconv.FormatUint(uint64(p.Port), 10))
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%d/%d\t%s\t%s\n", sv.Namespace, sv.Name, sv.Source, joinAddrs(sv.VIPs),
				dash(strings.Join(ports, ",")), ready, len(sv.Endpoints), waypointName(sv.Waypoint), trafficName(sv))
		}
	}
	if kind == "policies" || kind == "all" {
		section("POLICIES")
		fmt.Fprintln(tw, "NAMESPACE\tNAME\tKIND\tACTION\tSCOPE")
		type row struct{ ns, name, kind, action, scope string }
		var rows []row
		for _, a := range d.AuthorizationPolicies {
			if a.Policy == nil {
				continue
			}
			action := actionOf(a)
			if a.Policy.DryRun {
				action += " (dry-run)"
			}
			rows = append(rows, row{a.Policy.Namespace, a.Policy.Name, "AuthorizationPolicy", action, scope(a.Mesh, a.Selector, len(a.Targets))})
		}
		for _, p := range d.PeerAuthentications {
			mode := string(p.Mode)
			for _, port := range slices.Sorted(maps.Keys(p.PortModes)) {
				mode += fmt.Sprintf(", %d: %s", port, p.PortModes[port])
			}
			rows = append(rows, row{p.Meta.Namespace, p.Meta.Name, "PeerAuthentication", mode, scope(p.Meta.Namespace == d.RootNamespace, p.Selector, 0)})
		}
		slices.SortFunc(rows, func(a, b row) int {
			return strings.Compare(a.ns+"/"+a.name+"/"+a.kind, b.ns+"/"+b.name+"/"+b.kind)
		})
		for _, r := range rows {
			if ns != "" && r.ns != ns {
				continue
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", r.ns, r.name, r.kind, r.action, r.scope)
		}
	}
	if kind == "certificates" || kind == "all" {
		section("CERTIFICATES")
		printCertificates(tw, d.Certificates, now)
	}
	return tw.Flush()
}

func printCertificates(tw io.Writer, certs []configdump.Certificate, now time.Time) {
	fmt.Fprintln(tw, "IDENTITY\tSTATE\tNOT BEFORE\tNOT AFTER\tSERIAL\tISSUER")
	for _, c := range certs {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", c.Identity, c.State(now), c.NotBefore.Format(time.RFC3339),
			c.NotAfter.Format(time.RFC3339), c.SerialNumber, c.Issuer)
	}
}

func sortedWorkloads(in []*model.Workload) []*model.Workload {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b *model.Workload) int {
		return strings.Compare(a.Namespace+"/"+a.Name+"/"+a.UID, b.Namespace+"/"+b.Name+"/"+b.UID)
	})
	return out
}

func sortedServices(in []*model.Service) []*model.Service {
	out := slices.Clone(in)
	slices.SortFunc(out, func(a, b *model.Service) int { return strings.Compare(a.Namespace+"/"+a.Name, b.Namespace+"/"+b.Name) })
	return out
}

func joinAddrs[T fmt.Stringer](in []T) string {
	out := make([]string, len(in))
	for i, a := range in {
		out[i] = a.String()
	}
	return dash(strings.Join(out, ","))
}

// shortList joins the first n of list and says how many more there are:
// a service's virtual host answers to its short names and VIP too.
func shortList(list []string, n int) string {
	if len(list) <= n {
		return dash(strings.Join(list, ","))
	}
	return fmt.Sprintf("%s (+%d)", strings.Join(list[:n], ","), len(list)-n)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func waypointName(r *model.WaypointRef) string {
	if r == nil {
		return "None"
	}
	return r.Waypoint.Namespace + "/" + r.Waypoint.Name
}

// scope says what a policy applies to: the mesh (root namespace), workloads
// by label, targets (Gateway API targetRefs), or its namespace.
func scope(mesh bool, selector map[string]string, targets int) string {
	switch {
	case targets > 0:
		return fmt.Sprintf("%d targets", targets)
	case len(selector) > 0:
		return "workloads " + labelsText(selector)
	case mesh:
		return "mesh"
	}
	return "namespace"
}

var proxyConfigKinds = []string{"listeners", "routes", "clusters", "endpoints", "certificates", "all"}

func newProxyConfigCommand(s Streams, g *globalOptions) *cobra.Command {
	var f dataplaneFlags
	cmd := &cobra.Command{
		Use:   "proxy-config <" + strings.Join(proxyConfigKinds, "|") + "> <waypoint>",
		Short: "Show what a waypoint or ingress gateway holds: listeners, routes, clusters, endpoints, certificate",
		Long: `Shows the L7 configuration a waypoint (or ingress gateway) serves, read from
its admin port (loopback, through a port-forward): listeners, the routes of
their virtual hosts in match order, clusters, their endpoints with requests in
flight and outlier ejections, and its certificate. <waypoint> is a pod name or a Gateway's name (then one of its
running pods). As istioctl proxy-config. -o json prints the whole config dump.`,
		Example: `  meshctl proxy-config routes waypoint -n shop
  meshctl proxy-config clusters waypoint-7d9c6b5f4-x2k8p -n shop -o json`,
		Args:      cobra.ExactArgs(2),
		ValidArgs: proxyConfigKinds,
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, name := args[0], args[1]
			if !slices.Contains(proxyConfigKinds, kind) {
				return fmt.Errorf("unknown kind %q: want one of %s", kind, strings.Join(proxyConfigKinds, ", "))
			}
			if err := f.check(); err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ns := g.namespace(f.namespace)
			ctx, cancel := context.WithTimeout(ctxOf(cmd), f.timeout)
			defer cancel()
			pod, err := waypointPod(ctx, c, ns, name)
			if err != nil {
				return err
			}
			var d configdump.Waypoint
			if done, err := f.readDump(ctx, c, s.Out, pod, &d); done || err != nil {
				return err
			}
			if d.L7 == nil {
				fmt.Fprintf(s.ErrOut, "waypoint %s of Gateway %s: no config from meshd yet\n", pod.Name, d.Gateway)
				d.L7 = &model.L7Config{}
			} else {
				fmt.Fprintf(s.ErrOut, "waypoint %s of Gateway %s, config applied %s\n", pod.Name, d.Gateway, d.Applied.Format(time.RFC3339))
			}
			return printProxyConfig(s.Out, &d, kind, time.Now())
		},
	}
	f.add(cmd, "namespace of the waypoint"+nsUsage)
	return cmd
}

// waypointPod finds the pod name in ns, or else a running pod of the
// Gateway name.
func waypointPod(ctx context.Context, c *clients, ns, name string) (*corev1.Pod, error) {
	p, err := c.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
	if err == nil {
		if _, ok := p.Labels[gatewayNameLabel]; !ok {
			return nil, fmt.Errorf("pod %s/%s is not a waypoint or gateway (no %s label): meshctl agent-config shows what a node agent holds", ns, name, gatewayNameLabel)
		}
		return p, nil
	}
	if !apierrors.IsNotFound(err) {
		return nil, fmt.Errorf("get pod %s/%s: %w", ns, name, err)
	}
	l, err := c.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: gatewayNameLabel + "=" + name})
	if err != nil {
		return nil, fmt.Errorf("list pods of Gateway %s/%s: %w", ns, name, err)
	}
	p, ok := firstRunning(l.Items, func(p corev1.Pod) string { return p.Name })
	if !ok {
		return nil, fmt.Errorf("no pod %s in namespace %s, and no running pod of a Gateway %s there (meshctl waypoint list -n %s)", name, ns, name, ns)
	}
	return p, nil
}

func printProxyConfig(w io.Writer, d *configdump.Waypoint, kind string, now time.Time) error {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	section := func(title string) {
		if kind == "all" {
			fmt.Fprintf(tw, "\n%s\n", title)
		}
	}
	if kind == "listeners" || kind == "all" {
		section("LISTENERS")
		fmt.Fprintln(tw, "NAME\tPORT\tMODE\tVIRTUAL HOSTS")
		for _, l := range d.L7.Listeners {
			var modes []string
			if l.TLS != nil || len(l.SNI) > 0 {
				modes = append(modes, "terminated")
			}
			if len(l.Passthrough) > 0 {
				modes = append(modes, "passthrough")
			}
			if l.TCP != nil || len(l.TCPMatched) > 0 {
				modes = append(modes, "tcp")
			}
			tls := dash(strings.Join(modes, "+"))
			hosts := make([]string, len(l.VirtualHosts))
			for i, vh := range l.VirtualHosts {
				hosts[i] = vh.Name
			}
			fmt.Fprintf(tw, "%s\t%d\t%s\t%s\n", l.Name, l.Port, tls, dash(strings.Join(hosts, ",")))
		}
		// A waypoint for workloads takes what is addressed to them, any port.
		if ws := d.L7.Workloads; len(ws) > 0 {
			names := make([]string, len(ws))
			for i, w := range ws {
				names[i] = w.Namespace + "/" + w.Name
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", "(workloads)", "*", "workload", shortList(names, 5))
		}
	}
	if kind == "routes" || kind == "all" {
		section("ROUTES")
		fmt.Fprintln(tw, "LISTENER\tVIRTUAL HOST\tDOMAINS\tROUTE\tMATCH\tTO")
		for _, l := range d.L7.Listeners {
			for _, vh := range l.VirtualHosts {
				for _, r := range vh.Routes {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, vh.Name, shortList(vh.Domains, 2),
						dash(r.Name), describeMatches(r.Matches), describeAction(&r))
				}
				// Its connections that are not HTTP, or all of them when the
				// port is declared TCP (opaque): the routes with conditions
				// first, in order.
				for _, r := range vh.Passthrough {
					rt := model.L7Route{Destinations: r.Destinations}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, vh.Name, shortList(vh.Domains, 2), r.Name, "tls sni "+strings.Join(r.SNIHosts, ","), describeAction(&rt))
				}
				for _, r := range vh.TCPMatched {
					rt := model.L7Route{Destinations: r.Destinations}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, vh.Name, shortList(vh.Domains, 2), r.Name, "tcp "+describeTCPMatches(r.Matches), describeAction(&rt))
				}
				if r := vh.TCP; r != nil || vh.Opaque {
					match, to := "tcp (not http)", "closed"
					if vh.Opaque {
						match = "tcp (all: port declared tcp)"
					}
					if r != nil {
						rt := model.L7Route{Destinations: r.Destinations}
						to = describeAction(&rt)
					}
					name := "-"
					if r != nil {
						name = r.Name
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, vh.Name, shortList(vh.Domains, 2), name, match, to)
				}
			}
			for _, r := range l.Passthrough {
				rt := model.L7Route{Destinations: r.Destinations}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, "(tls passthrough)", shortList(r.SNIHosts, 2),
					r.Name, "sni "+strings.Join(r.SNIHosts, ","), describeAction(&rt))
			}
			for _, r := range l.TCPMatched {
				rt := model.L7Route{Destinations: r.Destinations}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, "(tcp)", "-", r.Name, describeTCPMatches(r.Matches), describeAction(&rt))
			}
			if r := l.TCP; r != nil {
				rt := model.L7Route{Destinations: r.Destinations}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", l.Name, "(tcp)", "-", r.Name, "*", describeAction(&rt))
			}
		}
	}
	if kind == "clusters" || kind == "all" {
		section("CLUSTERS")
		fmt.Fprintln(tw, "NAME\tPROTOCOL\tLB\tSUBSETS\tENDPOINTS")
		for _, c := range d.L7.Clusters {
			eps := make([]string, len(c.Endpoints))
			for i, ep := range c.Endpoints {
				eps[i] = ep.Address
			}
			subsets := make([]string, len(c.Subsets))
			for i, ss := range c.Subsets {
				subsets[i] = ss.Name
			}
			lb := string(c.Traffic.LB.Simple)
			if c.Traffic.LB.ConsistentHash != nil {
				lb = "CONSISTENT_HASH"
			}
			if l := c.Traffic.LB.Locality; l != nil {
				lb = strings.TrimPrefix(lb+"+", "+")
				if len(l.Distribute) > 0 {
					lb += "LOCALITY_DISTRIBUTE"
				} else {
					lb += "LOCALITY_FAILOVER(" + strings.Join(l.Priority, ",") + ")"
				}
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", c.Name, dash(string(c.Protocol)), dash(lb),
				dash(strings.Join(subsets, ",")), dash(strings.Join(eps, ",")))
		}
	}
	if kind == "endpoints" || kind == "all" {
		section("ENDPOINTS")
		fmt.Fprintln(tw, "CLUSTER\tSUBSET\tENDPOINT\tSTATUS\tACTIVE\tEJECTIONS\tLOCALITY\tPRIORITY")
		for _, e := range d.Endpoints {
			status := "HEALTHY"
			if e.Draining {
				status = "DRAINING (sessions only)"
			}
			if !e.EjectedUntil.IsZero() && now.Before(e.EjectedUntil) {
				status = "EJECTED for " + e.EjectedUntil.Sub(now).Round(time.Second).String()
			}
			fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%s\t%s\n", e.Cluster, dash(e.Subset), e.Address, status, e.Active, e.Ejections,
				dash(e.Locality), dash(e.Priority))
		}
	}
	if kind == "certificates" || kind == "all" {
		section("CERTIFICATES")
		printCertificates(tw, d.Certificates, now)
	}
	return tw.Flush()
}

// describeMatches renders a route's matches (ORed) in short form.
func describeMatches(ms []model.RouteMatch) string {
	if len(ms) == 0 {
		return "*"
	}
	out := make([]string, 0, len(ms))
	for _, m := range ms {
		var parts []string
		str := func(what string, sm *model.StringMatch) {
			if sm == nil || sm.IsZero() {
				return
			}
			switch {
			case sm.Exact != "":
				parts = append(parts, what+"="+sm.Exact)
			case sm.Prefix != "":
				parts = append(parts, what+"^="+sm.Prefix)
			case sm.PathPrefix != "":
				parts = append(parts, what+"^="+sm.PathPrefix)
			case sm.Regex != "":
				parts = append(parts, what+"~="+sm.Regex)
			}
		}
		str("uri", m.URI)
		str("method", m.Method)
		str("authority", m.Authority)
		for _, h := range m.Headers {
			parts = append(parts, "header:"+h.Name)
		}
		for _, q := range m.QueryParams {
			parts = append(parts, "query:"+q.Name)
		}
		if m.Port != 0 {
			parts = append(parts, fmt.Sprintf("port=%d", m.Port))
		}
		if m.SourceNamespace != "" {
			parts = append(parts, "from ns "+m.SourceNamespace)
		}
		if len(parts) == 0 {
			parts = append(parts, "*")
		}
		out = append(out, strings.Join(parts, " "))
	}
	return strings.Join(out, " | ")
}

// describeAction renders where a route sends a request.
func describeAction(r *model.L7Route) string {
	switch {
	case r.Redirect != nil:
		return "redirect"
	case r.DirectResponse != nil:
		return fmt.Sprintf("direct response %d", r.DirectResponse.Status)
	}
	var total uint32
	for _, d := range r.Destinations {
		total += d.Weight
	}
	out := make([]string, 0, len(r.Destinations))
	for _, d := range r.Destinations {
		to := d.Cluster
		if d.Subset != "" {
			to += "|" + d.Subset
		}
		if len(r.Destinations) > 1 && total > 0 {
			to += fmt.Sprintf(" %d%%", d.Weight*100/total)
		}
		out = append(out, to)
	}
	action := dash(strings.Join(out, ", "))
	if s := r.Session; s != nil {
		// Where the client's session lives, as the user looks for it.
		if s.Header != "" {
			action += " (session: header " + s.Header + ")"
		} else {
			action += " (session: cookie " + s.Cookie + ")"
		}
	}
	return action
}

// trafficName is a service's endpoint preference for a table: "NodeLocal"
// for internalTrafficPolicy Local (which wins), else its traffic
// distribution, then "ClientIP" for session affinity; "-" for none.
func trafficName(sv *model.Service) string {
	var out []string
	switch {
	case sv.NodeLocal:
		out = append(out, "NodeLocal")
	case sv.TrafficDistribution != "":
		out = append(out, string(sv.TrafficDistribution))
	}
	if sv.SessionAffinity > 0 {
		out = append(out, "ClientIP")
	}
	return dash(strings.Join(out, ","))
}

// describeTCPMatches is a tcp route's match conditions, "a or b", each
// "ns=x labels=k=v subnets=c".
func describeTCPMatches(ms []model.TCPMatch) string {
	alts := make([]string, 0, len(ms))
	for _, m := range ms {
		var parts []string
		if m.SourceNamespace != "" {
			parts = append(parts, "ns="+m.SourceNamespace)
		}
		if len(m.SourceLabels) > 0 {
			kv := make([]string, 0, len(m.SourceLabels))
			for _, k := range slices.Sorted(maps.Keys(m.SourceLabels)) {
				kv = append(kv, k+"="+m.SourceLabels[k])
			}
			parts = append(parts, "labels="+strings.Join(kv, ","))
		}
		if len(m.DestinationSubnets) > 0 {
			parts = append(parts, "subnets="+strings.Join(m.DestinationSubnets, ","))
		}
		alts = append(alts, strings.Join(parts, " "))
	}
	return strings.Join(alts, " or ")
}
