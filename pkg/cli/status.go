package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/meshstatus"
)

// Proxy states in proxy-status, worst first.
const (
	proxyNotConnected = "NOT CONNECTED"
	proxyNACK         = "NACK"
	proxyStale        = "STALE REPORT"
	proxySynced       = "SYNCED"
)

// gatewayNameLabel is on the pods of every waypoint and gateway; meshd
// recognises their xDS streams by it.
const gatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// The label selectors of meshd's and the node agents' pods.
const (
	meshdSelector     = "app.kubernetes.io/name=meshd"
	nodeAgentSelector = "app.kubernetes.io/name=meshlet-node-agent"
)

// proxyRow is one node agent or waypoint/gateway pod as proxy-status shows it.
type proxyRow struct {
	Namespace string `json:"namespace"`
	Pod       string `json:"pod"`
	Kind      string `json:"kind"` // node-agent, waypoint or gateway
	Node      string `json:"node"`
	Gateway   string `json:"gateway,omitempty"` // namespace/name, waypoints and gateways
	Status    string `json:"status"`
	Meshd     string `json:"meshd,omitempty"`
	// Acked is the newest configuration version it acknowledged, of any type.
	Acked string `json:"ackedVersion,omitempty"`
	// Generation is the newest version meshd has; Acked may be older when
	// the later pushes did not change what this proxy holds.
	Generation string     `json:"meshdVersion,omitempty"`
	NACK       string     `json:"nack,omitempty"`
	Connected  *time.Time `json:"connectedSince,omitempty"`
	// CertExpiry is the soonest expiry of the pod's valid certificates, the
	// latest per identity of those meshd signed for it or it reported
	// holding; Certs counts them.
	CertExpiry *time.Time `json:"certExpiry,omitempty"`
	Certs      int        `json:"certificates"`
}

// meshState is what status and proxy-status read from the cluster.
type meshState struct {
	meshdPods []corev1.Pod
	reports   []meshstatus.Report
	rows      []proxyRow
	now       time.Time
	// leaseRead is set when the leader Lease was read; leader is then the
	// meshd pod holding it, "" when none does (released or expired).
	leaseRead bool
	leader    string
}

// meshState reads the mesh's state with the command's clients, now.
func (g *globalOptions) meshState(ctx context.Context) (*meshState, error) {
	c, err := g.clients()
	if err != nil {
		return nil, err
	}
	return readMeshState(ctx, c, g.meshNamespace, time.Now())
}

func readMeshState(ctx context.Context, c *clients, ns string, now time.Time) (*meshState, error) {
	st := &meshState{now: now}
	cms, err := c.kube.CoreV1().ConfigMaps(ns).List(ctx, metav1.ListOptions{LabelSelector: meshstatus.Label + "=true"})
	if err != nil {
		return nil, fmt.Errorf("read meshd's status reports in namespace %s: %w (is meshlet installed? run meshctl install)", ns, err)
	}
	for _, cm := range cms.Items {
		var r meshstatus.Report
		if err := json.Unmarshal([]byte(cm.Data[meshstatus.Key]), &r); err != nil {
			return nil, fmt.Errorf("status report %s/%s is not valid JSON: %w", ns, cm.Name, err)
		}
		st.reports = append(st.reports, r)
	}
	meshd, err := c.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: meshdSelector})
	if err != nil {
		return nil, fmt.Errorf("list meshd pods in namespace %s: %w", ns, err)
	}
	st.meshdPods = meshd.Items
	lease, err := c.kube.CoordinationV1().Leases(ns).Get(ctx, meshstatus.LeaderLease, metav1.GetOptions{})
	switch {
	case err == nil:
		st.leaseRead, st.leader = true, leaseHolder(lease, now)
	case apierrors.IsNotFound(err) || apierrors.IsForbidden(err):
		// Not made yet (no replica has run), or not the user's to read.
	default:
		return nil, fmt.Errorf("read Lease %s/%s: %w", ns, meshstatus.LeaderLease, err)
	}
	agents, err := c.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: nodeAgentSelector})
	if err != nil {
		return nil, fmt.Errorf("list node agents in namespace %s: %w", ns, err)
	}
	gws, err := c.kube.CoreV1().Pods("").List(ctx, metav1.ListOptions{LabelSelector: gatewayNameLabel})
	if err != nil {
		return nil, fmt.Errorf("list waypoint and gateway pods: %w", err)
	}
	for _, p := range agents.Items {
		st.rows = append(st.rows, st.row(p, "node-agent", "node-agent~"+p.Spec.NodeName))
	}
	for _, p := range gws.Items {
		kind := "gateway"
		if p.Labels["app.kubernetes.io/component"] == "waypoint" {
			kind = "waypoint"
		}
		gw := p.Namespace + "/" + p.Labels[gatewayNameLabel]
		r := st.row(p, kind, "waypoint~"+gw)
		r.Gateway = gw
		st.rows = append(st.rows, r)
	}
	sort.SliceStable(st.rows, func(i, j int) bool {
		a, b := st.rows[i], st.rows[j]
		if a.Kind != b.Kind {
			return a.Kind < b.Kind
		}
		return a.Namespace+"/"+a.Pod < b.Namespace+"/"+b.Pod
	})
	return st, nil
}

// leaseHolder is the pod holding l at now, "" when none holds it or the holder stopped renewing it.
func leaseHolder(l *coordinationv1.Lease, now time.Time) string {
	sp := l.Spec
	if sp.HolderIdentity == nil || *sp.HolderIdentity == "" || sp.RenewTime == nil || sp.LeaseDurationSeconds == nil {
		return ""
	}
	if now.After(sp.RenewTime.Add(time.Duration(*sp.LeaseDurationSeconds) * time.Second)) {
		return ""
	}
	return meshstatus.LeaderPod(*sp.HolderIdentity)
}

// row joins a pod with the reports: the freshest stream with its node id,
// and the certificates signed for the pod.
func (st *meshState) row(p corev1.Pod, kind, nodeID string) proxyRow {
	r := proxyRow{Namespace: p.Namespace, Pod: p.Name, Kind: kind, Node: p.Spec.NodeName, Status: proxyNotConnected}
	podKey := p.Namespace + "/" + p.Name
	var signed, reported []meshstatus.Cert
	for _, rep := range st.reports {
		stale := st.now.Sub(rep.Updated) > 6*meshstatus.Interval
		for _, c := range rep.Clients {
			if c.NodeID != nodeID || (r.Connected != nil && !c.Connected.After(*r.Connected)) {
				continue
			}
			connected := c.Connected
			r.Connected, r.Meshd, r.Generation = &connected, rep.Meshd, rep.Generation
			r.Acked = newestVersion(c.Acked)
			r.NACK = ""
			switch {
			case stale:
				r.Status = proxyStale
			case c.NACK != nil && versionNum(c.NACK.Version) >= versionNum(c.Acked[c.NACK.TypeURL]):
				r.Status = proxyNACK
				r.NACK = fmt.Sprintf("%s version %s: %s", shortType(c.NACK.TypeURL), c.NACK.Version, c.NACK.Error)
			default:
				r.Status = proxySynced
			}
			reported = c.Certs
		}
		for _, cert := range rep.Certs {
			if cert.Pod == podKey {
				signed = append(signed, cert)
			}
		}
	}
	// Per identity, the latest certificate: one a replica signed for this
	// pod, or one the pod's freshest stream reported holding (signed by a
	// replica since restarted).
	latest := map[string]time.Time{}
	for _, cert := range append(signed, reported...) {
		if na, ok := latest[cert.Identity]; !ok || cert.NotAfter.After(na) {
			latest[cert.Identity] = cert.NotAfter
		}
	}
	for _, na := range latest {
		if st.now.After(na) {
			continue
		}
		r.Certs++
		if r.CertExpiry == nil || na.Before(*r.CertExpiry) {
			r.CertExpiry = &na
		}
	}
	return r
}

func versionNum(v string) uint64 {
	n, _ := strconv.ParseUint(v, 10, 64)
	return n
}

func newestVersion(acked map[string]string) string {
	var best string
	for _, v := range acked {
		if best == "" || versionNum(v) > versionNum(best) {
			best = v
		}
	}
	return best
}

// shortType turns a type URL into its message name.
func shortType(typeURL string) string {
	if i := strings.LastIndex(typeURL, "."); i >= 0 {
		return typeURL[i+1:]
	}
	return typeURL
}

func until(now time.Time, t *time.Time) string {
	if t == nil {
		return "-"
	}
	return t.Sub(now).Round(time.Minute).String()
}

func newProxyStatusCommand(s Streams, g *globalOptions) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "proxy-status",
		Short: "Show each node agent and waypoint: connected to meshd or not, config acknowledged or rejected, certificate expiry",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := g.meshState(ctxOf(cmd))
			if err != nil {
				return err
			}
			return printProxyStatus(s.Out, st, output)
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "", "output format: wide, json or yaml")
	return cmd
}

func printProxyStatus(w io.Writer, st *meshState, output string) error {
	switch output {
	case "json", "yaml":
		return writeStructured(w, st.rows, output)
	case "", "wide":
	default:
		return fmt.Errorf("--output %q: want wide, json or yaml", output)
	}
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	head := "NAMESPACE\tPOD\tKIND\tNODE\tSTATUS\tMESHD\tVERSION\tCERT EXPIRY"
	if output == "wide" {
		head += "\tCERTS\tCONNECTED\tGATEWAY"
	}
	fmt.Fprintln(tw, head)
	for _, r := range st.rows {
		version := "-"
		if r.Acked != "" {
			version = r.Acked + "/" + r.Generation
		}
		meshd := r.Meshd
		if meshd == "" {
			meshd = "-"
		}
		line := fmt.Sprintf("%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s", r.Namespace, r.Pod, r.Kind, r.Node, r.Status, meshd, version, until(st.now, r.CertExpiry))
		if output == "wide" {
			since := "-"
			if r.Connected != nil {
				since = st.now.Sub(*r.Connected).Round(time.Second).String()
			}
			line += fmt.Sprintf("\t%d\t%s\t%s", r.Certs, since, r.Gateway)
		}
		fmt.Fprintln(tw, line)
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	for _, r := range st.rows {
		if r.NACK != "" {
			fmt.Fprintf(w, "%s/%s rejected %s\n", r.Namespace, r.Pod, r.NACK)
		}
	}
	if len(st.reports) == 0 {
		fmt.Fprintln(w, "no meshd status report found: is meshd running? check meshctl status")
	}
	return nil
}

func newStatusCommand(s Streams, g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "Summarize the mesh's health: meshd, node agents, waypoints and gateways, with what to do about problems",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			st, err := g.meshState(ctxOf(cmd))
			if err != nil {
				return err
			}
			problems := printStatus(s.Out, st, g.meshNamespace)
			if problems > 0 {
				return ExitError{Code: 1}
			}
			return nil
		},
	}
}

// printStatus writes the summary and returns how many problems it found.
func printStatus(w io.Writer, st *meshState, ns string) int {
	var problems []string
	ready := 0
	for _, p := range st.meshdPods {
		if podReady(p) {
			ready++
		}
	}
	fmt.Fprintf(w, "meshd        %d/%d ready", ready, len(st.meshdPods))
	if len(st.reports) > 0 {
		gen := ""
		for _, r := range st.reports {
			if versionNum(r.Generation) > versionNum(gen) {
				gen = r.Generation
			}
		}
		fmt.Fprintf(w, ", config version %s", gen)
	}
	if st.leader != "" {
		fmt.Fprintf(w, ", leader %s", st.leader)
	}
	fmt.Fprintln(w)
	switch {
	case len(st.meshdPods) == 0:
		problems = append(problems, fmt.Sprintf("meshd is not running in namespace %s: is meshlet installed? run meshctl install", ns))
	case ready == 0:
		problems = append(problems, fmt.Sprintf("no meshd replica is ready: see kubectl -n %s describe pods -l app.kubernetes.io/name=meshd", ns))
	case st.leaseRead && st.leader == "":
		problems = append(problems, fmt.Sprintf("no meshd replica holds the Lease %s/%s: until one does, new waypoints and gateways are not deployed and Gateway API status is not written; see kubectl -n %s logs -l app.kubernetes.io/name=meshd",
			ns, meshstatus.LeaderLease, ns))
	}
	for _, kind := range []string{"node-agent", "waypoint", "gateway"} {
		var total, synced, nack int
		var soonest *time.Time
		var soonestPod string
		for _, r := range st.rows {
			if r.Kind != kind {
				continue
			}
			total++
			switch r.Status {
			case proxySynced:
				synced++
			case proxyNACK:
				nack++
				problems = append(problems, fmt.Sprintf("%s %s/%s rejected its config: %s (fix the object it names; meshctl analyze helps)", kind, r.Namespace, r.Pod, r.NACK))
			case proxyNotConnected:
				problems = append(problems, fmt.Sprintf("%s %s/%s is not connected to meshd: see kubectl -n %s logs %s", kind, r.Namespace, r.Pod, r.Namespace, r.Pod))
			case proxyStale:
				problems = append(problems, fmt.Sprintf("%s %s/%s: the report of meshd %s is stale (meshd stuck?)", kind, r.Namespace, r.Pod, r.Meshd))
			}
			if r.CertExpiry != nil && (soonest == nil || r.CertExpiry.Before(*soonest)) {
				soonest, soonestPod = r.CertExpiry, r.Namespace+"/"+r.Pod
			}
		}
		if total == 0 && kind != "node-agent" {
			continue
		}
		line := fmt.Sprintf("%-12s %d/%d connected and synced", kind+"s", synced, total)
		if nack > 0 {
			line += fmt.Sprintf(", %d rejected their config", nack)
		}
		if soonest != nil {
			line += fmt.Sprintf("; soonest certificate expiry in %s (%s)", until(st.now, soonest), soonestPod)
		}
		fmt.Fprintln(w, line)
		if kind == "node-agent" && total == 0 {
			problems = append(problems, fmt.Sprintf("no node agent runs in namespace %s: check kubectl -n %s get daemonset meshlet-node-agent", ns, ns))
		}
	}
	if len(problems) == 0 {
		fmt.Fprintln(w, "✔ the mesh is healthy")
		return 0
	}
	fmt.Fprintf(w, "✘ %d problem(s):\n", len(problems))
	for _, p := range problems {
		fmt.Fprintln(w, "  - "+p)
	}
	return len(problems)
}

func podReady(p corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// writeStructured writes v as indented JSON, or as YAML when output is
// "yaml" (the -o json|yaml of status, proxy-status and precheck).
func writeStructured(w io.Writer, v any, output string) error {
	b, err := json.MarshalIndent(v, "", "  ")
	if err != nil {
		return err
	}
	if output == "yaml" {
		if b, err = yaml.JSONToYAML(b); err != nil {
			return err
		}
	}
	_, err = w.Write(append(b, '\n'))
	return err
}
