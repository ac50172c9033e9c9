package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/tap"
)

// `meshctl tap`: live events from the data plane's loopback admin port
// (configdump.TapPath, served by pkg/tap) through a port-forward.
//
//   - `meshctl tap <waypoint>`: the requests a waypoint or ingress gateway
//     finishes, as Linkerd's tap shows them. The proxy never sends headers
//     or query strings.
//   - `meshctl tap node/<node>` or `pod/<pod>`: the L4 connection events of
//     a node agent — opened, closed, refused with its reason and policy —
//     as Cilium's `hubble observe` shows flows. pod/ asks the agent of the
//     pod's node for the events of the pod's addresses; node/ for all of
//     the node's, narrowed by -n when given. Never any payload.
//
// The proxies bound the taps (4 at once, 10000 events, 10 minutes) and drop
// events a slow reader cannot take (counted in the end line).

type tapFlags struct {
	namespace, method, authority, path, source, output string
	max                                                int
	duration                                           time.Duration
	refused                                            bool
	port                                               int
}

func newTapCommand(s Streams, g *globalOptions) *cobra.Command {
	var f tapFlags
	cmd := &cobra.Command{
		Use:   "tap <waypoint> | node/<node> | pod/<pod> | deploy/<deployment>",
		Short: "Watch a waypoint's requests, or a node agent's connections and verdicts, live",
		Long: `<waypoint>: streams the requests a waypoint (or ingress gateway) finishes from
now on, one line each: when, client, service, method, authority, path (without
its query), status, latency, the endpoint that answered, route and response
flags, as Linkerd's tap. Headers and query strings are never shown. <waypoint>
is a pod name or a Gateway's name (then one of its running pods).

node/<node>, pod/<pod>: streams a node agent's L4 connection events, as
Cilium's hubble observe: each connection opened, closed (with the bytes each
way and how long it lasted) or refused (with the reason: strict_mtls_plaintext,
policy_denied and the AuthorizationPolicy that denied, …), as the client's
agent (reporter=source) or the server's (reporter=destination) saw it, with
both workloads and addresses, the identity the client proved and the
security (mutual_tls or none). pod/<pod> asks the agent of the pod's node for
the pod's connections; deploy/<deployment> the agents of every node running
its pods, at once, for theirs (--max then counts per node agent);
node/<node> for all of that node's (only those of namespace -n when given).
--refused shows refusals only. Never any payload.

Either ends after --max events or --duration, or on Ctrl-C, read from the
proxy's admin port (loopback, through a port-forward). -o json prints the
proxy's JSON lines.`,
		Example: `  meshctl tap waypoint -n shop
  meshctl tap waypoint -n shop --path /api --method POST --max 20
  meshctl tap ingress -n istio-ingress --authority shop.example.com -o json
  meshctl tap pod/db-0 -n shop --refused
  meshctl tap deploy/reviews -n shop --port 9080
  meshctl tap node/worker-1 -n shop --port 5432 --duration 5m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			kind, name, agent := strings.Cut(args[0], "/")
			if kind == "deployment" {
				kind = "deploy"
			}
			switch {
			case f.output != "" && f.output != "json":
				return fmt.Errorf("--output %q: want json or nothing", f.output)
			case f.max < 1 || f.max > 10000:
				return fmt.Errorf("--max %d: want 1 to 10000", f.max)
			case f.duration < time.Second || f.duration > 10*time.Minute:
				return fmt.Errorf("--duration %v: want 1s to 10m", f.duration)
			case agent && kind != "node" && kind != "pod" && kind != "deploy" || agent && name == "":
				return fmt.Errorf("%q: want a waypoint's name, node/<node>, pod/<pod> or deploy/<deployment>", args[0])
			case agent && (f.method != "" || f.authority != "" || f.path != "" || f.source != ""):
				return errors.New("--method, --authority, --path and --source filter a waypoint's requests: a node agent's connections take -n, --refused and --port")
			case !agent && (f.refused || f.port != 0):
				return errors.New("--refused and --port filter a node agent's connections (node/<node> or pod/<pod>): a waypoint's requests take --method, --authority, --path and --source")
			case f.port < 0 || f.port > 65535:
				return fmt.Errorf("--port %d: want 1 to 65535", f.port)
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ns := g.namespace(f.namespace)
			ctx, cancel := context.WithTimeout(ctxOf(cmd), f.duration+30*time.Second)
			defer cancel()
			q := url.Values{"max": {strconv.Itoa(f.max)}, "seconds": {strconv.Itoa(int(f.duration / time.Second))}}
			if agent {
				return tapAgent(ctx, s, c, g.meshNamespace, kind, name, ns, cmd.Flags().Changed("namespace"), q, &f)
			}
			pod, err := waypointPod(ctx, c, ns, args[0])
			if err != nil {
				return err
			}
			for k, v := range map[string]string{"method": f.method, "authority": f.authority, "path": f.path, "source": f.source} {
				if v != "" {
					q.Set(k, v)
				}
			}
			fmt.Fprintf(s.ErrOut, "tapping %s/%s for %v or %d requests\n", pod.Namespace, pod.Name, f.duration, f.max)
			return c.adminDo(ctx, pod.Namespace, pod.Name, configdump.AdminPort, configdump.TapPath+"?"+q.Encode(), func(res *http.Response, where string) error {
				if res.StatusCode != http.StatusOK {
					b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
					return fmt.Errorf("tap %s: %s: %s", where, res.Status, b)
				}
				return printTap(res.Body, s.Out, s.ErrOut, f.output == "json")
			})
		},
	}
	fl := cmd.Flags()
	fl.StringVarP(&f.namespace, "namespace", "n", "", "namespace of the waypoint or pod; with node/, only connections of this namespace"+nsUsage)
	fl.StringVar(&f.method, "method", "", "waypoint: only requests with this method")
	fl.StringVar(&f.authority, "authority", "", "waypoint: only requests with this Host/:authority, or for this service hostname")
	fl.StringVar(&f.path, "path", "", "waypoint: only requests whose path starts with this")
	fl.StringVar(&f.source, "source", "", "waypoint: only requests from this client (namespace/workload, as shown)")
	fl.BoolVar(&f.refused, "refused", false, "node agent: only refused connections")
	fl.IntVar(&f.port, "port", 0, "node agent: only connections to this destination port")
	fl.IntVar(&f.max, "max", 100, "stop after this many events (at most 10000)")
	fl.DurationVar(&f.duration, "duration", 30*time.Second, "stop after this long (at most 10m)")
	fl.StringVarP(&f.output, "output", "o", "", "json: the proxy's JSON lines")
	return cmd
}

// tapTarget is one node agent to tap and the pod addresses it is asked
// for (none: the node's connections).
type tapTarget struct {
	node string
	ips  []string
}

// podIPs are a pod's addresses.
func podIPs(p *corev1.Pod) []string {
	var ips []string
	for _, ip := range p.Status.PodIPs {
		ips = append(ips, ip.IP)
	}
	if len(ips) == 0 && p.Status.PodIP != "" {
		ips = append(ips, p.Status.PodIP)
	}
	return ips
}

// tapTargets resolves node/<name>, pod/<name> and deploy/<name> to the
// node agents to tap: a pod's node for its addresses, a Deployment's
// running pods' nodes for theirs (one agent per node).
func tapTargets(ctx context.Context, c *clients, kind, name, ns string) ([]tapTarget, string, error) {
	switch kind {
	case "node":
		return []tapTarget{{node: name}}, "node " + name, nil
	case "pod":
		p, err := c.kube.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			return nil, "", fmt.Errorf("get pod %s/%s: %w", ns, name, err)
		}
		if p.Spec.NodeName == "" {
			return nil, "", fmt.Errorf("pod %s/%s is not scheduled to a node yet", ns, name)
		}
		ips := podIPs(p)
		if len(ips) == 0 {
			return nil, "", fmt.Errorf("pod %s/%s has no IP yet", ns, name)
		}
		return []tapTarget{{node: p.Spec.NodeName, ips: ips}}, fmt.Sprintf("pod %s/%s (%s) on node %s", ns, name, strings.Join(ips, ", "), p.Spec.NodeName), nil
	}
	d, err := c.kube.AppsV1().Deployments(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return nil, "", fmt.Errorf("get deployment %s/%s: %w", ns, name, err)
	}
	sel, err := metav1.LabelSelectorAsSelector(d.Spec.Selector)
	if err != nil {
		return nil, "", fmt.Errorf("deployment %s/%s: selector: %w", ns, name, err)
	}
	pods, err := c.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel.String()})
	if err != nil {
		return nil, "", fmt.Errorf("list the pods of deployment %s/%s: %w", ns, name, err)
	}
	byNode := map[string][]string{}
	n := 0
	for i := range pods.Items {
		p := &pods.Items[i]
		if p.Status.Phase != corev1.PodRunning || p.DeletionTimestamp != nil || p.Spec.NodeName == "" {
			continue
		}
		if ips := podIPs(p); len(ips) > 0 {
			byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], ips...)
			n++
		}
	}
	if n == 0 {
		return nil, "", fmt.Errorf("deployment %s/%s has no running pod with an address", ns, name)
	}
	var targets []tapTarget
	for _, node := range slices.Sorted(maps.Keys(byNode)) {
		targets = append(targets, tapTarget{node: node, ips: byNode[node]})
	}
	return targets, fmt.Sprintf("deployment %s/%s (%s on %s)", ns, name, count(n, "pod"), count(len(targets), "node")), nil
}

// tapAgent taps the node agent of node/<name>, of pod/<name>'s node for
// that pod's addresses, or of each node running deploy/<name>'s pods for
// theirs, at once, their events printed as they come.
func tapAgent(ctx context.Context, s Streams, c *clients, meshNS, kind, name, ns string, nsGiven bool, q url.Values, f *tapFlags) error {
	targets, what, err := tapTargets(ctx, c, kind, name, ns)
	if err != nil {
		return err
	}
	if kind == "node" && nsGiven {
		q.Set("namespace", ns)
		what += ", namespace " + ns
	}
	if f.refused {
		q.Set("kind", configdump.ConnRefused)
	}
	if f.port != 0 {
		q.Set("port", strconv.Itoa(f.port))
	}
	agents := make([]*corev1.Pod, len(targets))
	for i, tg := range targets {
		if agents[i], err = agentOn(ctx, c, meshNS, tg.node); err != nil {
			return err
		}
	}
	per := ""
	if len(targets) > 1 {
		per = " each"
	}
	fmt.Fprintf(s.ErrOut, "tapping %s through %s, %v or %d events%s\n", what, count(len(agents), "node agent"), f.duration, f.max, per)
	out, errOut := &lockedWriter{w: s.Out}, &lockedWriter{w: s.ErrOut}
	errs := make([]error, len(targets))
	var wg sync.WaitGroup
	for i, tg := range targets {
		aq := maps.Clone(q)
		if len(tg.ips) > 0 {
			aq["ip"] = tg.ips
		}
		agent := agents[i]
		wg.Go(func() {
			errs[i] = c.adminDo(ctx, agent.Namespace, agent.Name, configdump.AdminPort, configdump.TapPath+"?"+aq.Encode(), func(res *http.Response, where string) error {
				if res.StatusCode != http.StatusOK {
					b, _ := io.ReadAll(io.LimitReader(res.Body, 4096))
					if res.StatusCode == http.StatusNotFound {
						return fmt.Errorf("tap %s: %s: this node agent has no tap (older than meshctl?)", where, res.Status)
					}
					return fmt.Errorf("tap %s: %s: %s", where, res.Status, b)
				}
				return printConnTap(res.Body, out, errOut, f.output == "json")
			})
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// count is "1 <noun>" or "<n> <noun>s".
func count(n int, noun string) string {
	if n == 1 {
		return "1 " + noun
	}
	return strconv.Itoa(n) + " " + noun + "s"
}

// lockedWriter serializes the writes of several taps printing to one
// stream (each line is one Write).
type lockedWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (l *lockedWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.w.Write(p)
}

// maxTapLine bounds one line of the tap stream.
const maxTapLine = 64 << 10

// printTap prints a waypoint's tap stream in: one line per request on out
// (or the JSON lines as they come), the end on errOut.
func printTap(in io.Reader, out, errOut io.Writer, raw bool) error {
	return printTapStream(in, out, errOut, raw, "requests", tapText)
}

// printConnTap prints a node agent's tap stream in: one line per
// connection event on out (or the JSON lines), the end on errOut.
func printConnTap(in io.Reader, out, errOut io.Writer, raw bool) error {
	return printTapStream(in, out, errOut, raw, "events", connTapText)
}

// printTapStream prints the tap stream in of events E, each as text
// makes it (or the JSON lines as they come), then the end, counting what
// it showed as noun.
func printTapStream[E any](in io.Reader, out, errOut io.Writer, raw bool, noun string, text func(*E) string) error {
	sc := bufio.NewScanner(in)
	sc.Buffer(make([]byte, 4096), maxTapLine)
	for sc.Scan() {
		var l tap.Line[E]
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			return fmt.Errorf("tap stream: %w", err)
		}
		if e := l.End; e != nil {
			why := ""
			if e.Dropped > 0 {
				why = " (the reader was too slow)"
			}
			fmt.Fprintf(errOut, "tap ended (%s): %d %s shown, %d dropped%s\n", e.Reason, e.Events, noun, e.Dropped, why)
			if raw {
				fmt.Fprintln(out, sc.Text())
			}
			return nil
		}
		if l.Event == nil {
			continue
		}
		if raw {
			fmt.Fprintln(out, sc.Text())
			continue
		}
		fmt.Fprintln(out, text(l.Event))
	}
	if err := sc.Err(); err != nil {
		return fmt.Errorf("tap stream: %w", err)
	}
	return fmt.Errorf("tap stream ended without its end line (the proxy restarted, or the port-forward broke)")
}

// tapText is one request as a line, in Linkerd tap's key=value manner.
func tapText(e *configdump.TapEvent) string {
	status := strconv.Itoa(e.Status)
	if e.GRPCStatus != "" {
		status += " grpc-status=" + e.GRPCStatus
	}
	return fmt.Sprintf("%s src=%s dst=%s :method=%s :authority=%s :path=%s status=%s latency=%s upstream=%s route=%s flags=%s bytes=%d/%d",
		e.Time.Format("15:04:05.000"), dash(e.Source), dash(e.Destination), e.Method, e.Authority, e.Path, status,
		time.Duration(e.DurationMS*float64(time.Millisecond)).Round(10*time.Microsecond), dash(e.Upstream), dash(e.Route), e.Flags,
		e.RequestBytes, e.ResponseBytes)
}

// connTapText is one connection event as a line, in the key=value manner
// of the waypoint's: when, what, who reported it, both ends with their
// addresses, the identity proven, the security, the policy; for a closed
// connection its bytes (from the client / to it) and duration; for a
// refused one its reason and why.
func connTapText(e *configdump.ConnEvent) string {
	var b strings.Builder
	fmt.Fprintf(&b, "%s %-7s reporter=%s src=%s src_addr=%s identity=%s dst=%s dst_addr=%s service=%s security=%s policy=%s",
		e.Time.Format("15:04:05.000"), e.Kind, e.Reporter, dash(e.Source), dash(e.SourceAddr), dash(e.SourceIdentity),
		dash(e.Destination), dash(e.DestinationAddr), dash(e.DestinationService), dash(e.ConnectionSecurityPolicy), dash(e.Policy))
	switch e.Kind {
	case configdump.ConnClosed:
		d := "-" // not measured (node agents before 2026-12 did not, for a connection opened before the tap)
		if e.DurationMS > 0 {
			d = time.Duration(e.DurationMS * float64(time.Millisecond)).Round(10 * time.Microsecond).String()
		}
		fmt.Fprintf(&b, " bytes=%d/%d duration=%s", e.ReceivedBytes, e.SentBytes, d)
	case configdump.ConnRefused:
		fmt.Fprintf(&b, " reason=%s detail=%q", dash(e.Reason), e.Detail)
	}
	return b.String()
}
