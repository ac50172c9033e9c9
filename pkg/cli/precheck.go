package cli

// meshctl precheck: what a platform team asks before `meshctl install`, as
// `linkerd check --pre` and `istioctl x precheck` answer it for theirs.
// Every check only reads (gets, lists, SelfSubjectAccessReviews): precheck
// never changes the cluster.
//
// Severities follow one rule: an error is something that makes
// `meshctl install` fail or leaves the mesh not working (the install waits
// for every node agent to be ready, so one node the agent cannot run on
// fails it); a warning is something that works but not as the user may
// expect (pods left out of the mesh, another mesh beside it); an info says
// what install will do with what is already there. Errors exit 1.
//
// Decisions, where meshlet's code and the other meshes' checks differ:
//   - Kubernetes floor 1.31: the repository states none, and its lab runs
//     1.37 (test/go.mod pins k8s.io/kubernetes). What install needs is the
//     Gateway API CRDs it bundles (v1.6.3): their TLSRoute CRD validates
//     hostnames with CEL's isIP, which API servers before 1.31 refuse, so
//     the apply of the CRDs fails there (Gateway API's 1.5 changelog says
//     so). meshlet uses no native sidecars nor ValidatingAdmissionPolicies.
//   - Kernel floor 5.15 from README.md and node-agent/ebpf.CheckKernel,
//     read from each node's status.nodeInfo.kernelVersion. The agent probes
//     features, not versions, so a RHEL-family kernel (".el8", ".el9"),
//     which backports BPF to an older version number, is a warning: the
//     agent's own check at start has the last word. BTF and cgroup v2 are
//     not visible through the API; the agent checks them.
//   - Permissions: Istio asks create on a fixed list, Linkerd likewise.
//     precheck asks for each kind, namespace and verb of what install
//     really does: create and patch (server-side apply creates missing
//     objects) every rendered object, get what it waits on, and delete
//     what its prune removes (another profile's components), since a
//     forbidden delete fails the install even when the object is absent.
//   - A GatewayClass meshlet renders that another controller owns is an
//     error, not a warning: meshctl renders without a cluster, so it
//     applies the class and the API server refuses to change its immutable
//     controllerName (see the chart's gatewayclasses.yaml).
//   - PodMonitors (monitoring.podMonitor.enabled) need the Prometheus
//     Operator's CRD, which meshlet does not bundle: without it, an error,
//     as install refuses before its first apply (checkOptionalCRDs).
//   - Linkerd refuses an existing control plane namespace; meshlet's
//     server-side apply takes an existing one, so only an existing meshlet
//     is reported (upgrade it instead).

import (
	"context"
	"errors"
	"fmt"
	"io"
	"regexp"
	"slices"
	"sort"
	"strings"
	"time"

	"github.com/spf13/cobra"
	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/version"
	"k8s.io/klog/v2"

	"github.com/meshlet/meshlet/deploy/crds"
	"github.com/meshlet/meshlet/pkg/model"
)

// minKubernetes is the oldest Kubernetes meshlet installs on (see above).
var minKubernetes = version.MajorMinor(1, 31)

// Kernel versions: the node agent's floor, and where TCX replaces clsact
// for pod ingress (node-agent/ebpf).
var (
	minKernel = version.MajorMinor(5, 15)
	tcxKernel = version.MajorMinor(6, 6)
)

// supportedArchs are the architectures meshlet is built for: the eBPF
// objects are little-endian (bpf2go -target bpfel) and compiled against
// the x86_64 and aarch64 headers only (node-agent/ebpf/gen.go).
var supportedArchs = []string{"amd64", "arm64"}

// nodeAgentName is the node agent DaemonSet the chart renders.
const nodeAgentName = "meshlet-node-agent"

// checkLevel is how much a check's result matters.
type checkLevel string

const (
	levelOK      checkLevel = "ok"
	levelInfo    checkLevel = "info"
	levelWarning checkLevel = "warning"
	levelError   checkLevel = "error"
)

// marks are printed before each result.
var marks = map[checkLevel]string{levelOK: "✔", levelInfo: "ℹ", levelWarning: "⚠", levelError: "✘"}

// checkResult is one line of precheck's output.
type checkResult struct {
	// Category groups results under a heading.
	Category string `json:"category"`
	// Level is ok, info, warning or error.
	Level checkLevel `json:"level"`
	// Message says what was found and, unless ok, what to do.
	Message string `json:"message"`
}

// Categories, in output order.
const (
	catAPI         = "Kubernetes API"
	catPermissions = "Permissions"
	catNodes       = "Nodes"
	catConflicts   = "Other meshes and installs"
	catCRDs        = "CRDs and GatewayClasses"
	catNamespaces  = "Namespaces"
)

var categories = []string{catAPI, catPermissions, catNodes, catConflicts, catCRDs, catNamespaces}

// precheckReport is what precheck found.
type precheckReport struct {
	// Ready is false when a result is an error.
	Ready   bool          `json:"ready"`
	Results []checkResult `json:"checks"`
}

func (r *precheckReport) add(cat string, l checkLevel, format string, args ...any) {
	r.Results = append(r.Results, checkResult{Category: cat, Level: l, Message: fmt.Sprintf(format, args...)})
}

func (r *precheckReport) count(l checkLevel) int {
	n := 0
	for _, c := range r.Results {
		if c.Level == l {
			n++
		}
	}
	return n
}

// precheckOptions are precheck's flags.
type precheckOptions struct {
	// render chooses what install would apply: profile, values, --set.
	render RenderOptions
	// output is "" (text), json or yaml.
	output string
}

func newPrecheckCommand(s Streams, g *globalOptions) *cobra.Command {
	o := &precheckOptions{}
	cmd := &cobra.Command{
		Use:   "precheck",
		Short: "Check that the cluster is ready for meshctl install (read-only), and what to fix",
		Long: "Checks, without changing anything, what meshctl install needs: the API server and its\n" +
			"version, your rights to apply every object install applies, each node's OS,\n" +
			"architecture and kernel, other meshes and an existing meshlet, the Gateway API and\n" +
			"Istio CRDs and GatewayClasses already there, and namespaces already labelled for\n" +
			"ambient. One line per problem names the object and the fix. Exits 1 when something\n" +
			"would make the install fail or the mesh not work; warnings and infos exit 0.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			switch o.output {
			case "", "json", "yaml":
			default:
				return fmt.Errorf("--output %q: want json or yaml", o.output)
			}
			o.render.Namespace = g.meshNamespace
			c, err := g.clients()
			if err != nil {
				return err
			}
			return runPrecheck(ctxOf(cmd), s.Out, c, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.render.Profile, "profile", "default", "the profile you will install: minimal, default or demo")
	f.StringArrayVarP(&o.render.ValueFiles, "values", "f", nil, "values file you will install with (repeatable; later files win)")
	f.StringArrayVar(&o.render.Set, "set", nil, "a value you will install with, e.g. --set gatewayClasses.istioNames=true (repeatable)")
	f.StringVarP(&o.output, "output", "o", "", "output format: json or yaml (default: text)")
	return cmd
}

// runPrecheck checks the cluster c reaches, prints the report to w and
// returns ExitError 1 when it holds an error.
func runPrecheck(ctx context.Context, w io.Writer, c *clients, o *precheckOptions) error {
	r, err := Render(o.render)
	if err != nil {
		return err
	}
	rep := precheck(ctx, c, r, o.render)
	if err := printPrecheck(w, rep, o.output); err != nil {
		return err
	}
	if !rep.Ready {
		return ExitError{Code: 1}
	}
	return nil
}

// precheck runs every check against c for the rendered install r.
func precheck(ctx context.Context, c *clients, r *Rendered, opts RenderOptions) *precheckReport {
	rep := &precheckReport{}
	if checkAPIServer(ctx, rep, c) {
		checkPermissions(ctx, rep, c, r, opts)
		nodes := checkNodes(ctx, rep, c, r)
		checkNodeClocks(ctx, rep, c, nodes)
		workloads := checkConflicts(ctx, rep, c, r.ns(), opts)
		checkCRDs(ctx, rep, c, r, workloads)
		checkAmbientNamespaces(ctx, rep, c)
	}
	rep.Ready = rep.count(levelError) == 0
	return rep
}

// checkAPIServer reports whether the API server answers, and its version.
func checkAPIServer(ctx context.Context, rep *precheckReport, c *clients) bool {
	host := "the API server"
	if c.config != nil {
		host = "the API server at " + c.config.Host
	}
	info, err := c.kube.Discovery().ServerVersion()
	if err != nil {
		rep.add(catAPI, levelError, "cannot reach %s: %v; check --kubeconfig and --context (kubectl version shows the same)", host, err)
		return false
	}
	v, err := version.ParseGeneric(info.GitVersion)
	if err == nil && v.Major() == 0 {
		// An API server built without version stamps (from source, as
		// the lab's: "v0.0.0-master+$Format:%H$") says nothing of its
		// release.
		err = errors.New("an unstamped development build")
	}
	if err != nil {
		rep.add(catAPI, levelWarning, "%s answers with a version meshctl cannot read (%q): meshlet needs Kubernetes %s or newer", host, info.GitVersion, minKubernetes)
		return true
	}
	if v.LessThan(minKubernetes) {
		rep.add(catAPI, levelError, "%s runs Kubernetes %s; meshlet needs %s or newer (the Gateway API CRDs it installs use CEL the older API servers refuse): upgrade the cluster",
			host, info.GitVersion, minKubernetes)
		return true
	}
	rep.add(catAPI, levelOK, "%s is reachable and runs Kubernetes %s (meshlet needs %s or newer)", host, info.GitVersion, minKubernetes)
	return true
}

// accessRight is one SelfSubjectAccessReview: a verb on a resource in a
// namespace ("" for cluster-scoped).
type accessRight struct {
	verb, group, resource, namespace string
}

// resourceName is the resource as kubectl names it: plural.group.
func (a accessRight) resourceName() string {
	if a.group == "" {
		return a.resource
	}
	return a.resource + "." + a.group
}

// neededRights lists what install does to the rendered objects: the
// rights by resource and namespace, each with the objects needing it.
func neededRights(r *Rendered, opts RenderOptions) (map[accessRight][]string, error) {
	// Kinds whose CRDs install brings: their plural is in the CRD.
	plurals := map[schema.GroupKind]string{}
	for _, o := range r.Objects {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		kind, _, _ := unstructured.NestedString(o.Object, "spec", "names", "kind")
		plural, _, _ := unstructured.NestedString(o.Object, "spec", "names", "plural")
		plurals[schema.GroupKind{Group: group, Kind: kind}] = plural
	}
	rightOf := func(verb string, o *unstructured.Unstructured) accessRight {
		gvk := o.GroupVersionKind()
		res, ok := plurals[gvk.GroupKind()]
		if !ok {
			gvr, _ := meta.UnsafeGuessKindToResource(gvk)
			res = gvr.Resource
		}
		return accessRight{verb: verb, group: gvk.Group, resource: res, namespace: o.GetNamespace()}
	}
	out := map[accessRight][]string{}
	need := func(verb string, o *unstructured.Unstructured) {
		a := rightOf(verb, o)
		out[a] = append(out[a], o.GetKind()+" "+o.GetName())
	}
	for _, o := range r.Objects {
		need("create", o)
		need("patch", o)
		switch o.GetKind() {
		case "CustomResourceDefinition", "Deployment", "DaemonSet":
			need("get", o) // waited on until established or rolled out
		}
	}
	if profileOf(opts) != "demo" {
		// prune deletes what the demo profile has and this one does not.
		all, err := Render(RenderOptions{Profile: "demo", Namespace: r.ns(), SkipCRDs: true})
		if err != nil {
			return nil, err
		}
		keep := map[string]bool{}
		for _, o := range r.Objects {
			keep[o.GetKind()+"/"+qualifiedName(o)] = true
		}
		for _, o := range all.Objects {
			if !keep[o.GetKind()+"/"+qualifiedName(o)] {
				need("delete", o)
			}
		}
	}
	return out, nil
}

// checkPermissions asks the API server, for each right install needs,
// whether the user has it; one line per resource lacking any.
func checkPermissions(ctx context.Context, rep *precheckReport, c *clients, r *Rendered, opts RenderOptions) {
	rights, err := neededRights(r, opts)
	if err != nil {
		rep.add(catPermissions, levelError, "cannot list what install applies: %v", err)
		return
	}
	keys := make([]accessRight, 0, len(rights))
	for a := range rights {
		keys = append(keys, a)
	}
	verbOrder := map[string]int{"create": 0, "patch": 1, "get": 2, "delete": 3}
	sort.Slice(keys, func(i, j int) bool {
		a, b := keys[i], keys[j]
		if a.namespace != b.namespace {
			return a.namespace < b.namespace
		}
		if a.resourceName() != b.resourceName() {
			return a.resourceName() < b.resourceName()
		}
		return verbOrder[a.verb] < verbOrder[b.verb]
	})
	type missing struct {
		verbs   []string
		objects []string
	}
	denied := map[accessRight]*missing{} // by resource and namespace, verb ""
	var order []accessRight
	for _, a := range keys {
		ok, err := mayI(ctx, c, &authorizationv1.ResourceAttributes{Namespace: a.namespace, Verb: a.verb, Group: a.group, Resource: a.resource})
		if err != nil {
			rep.add(catPermissions, levelError, "cannot ask the API server whether you may %s %s: %v; check with %s", a.verb, a.resourceName(), err, canI(a))
			return
		}
		if ok {
			continue
		}
		key := a
		key.verb = ""
		m := denied[key]
		if m == nil {
			m = &missing{}
			denied[key] = m
			order = append(order, key)
		}
		m.verbs = append(m.verbs, a.verb)
		for _, obj := range rights[a] {
			if !slices.Contains(m.objects, obj) {
				m.objects = append(m.objects, obj)
			}
		}
	}
	for _, key := range order {
		m := denied[key]
		where := "cluster-wide"
		if key.namespace != "" {
			where = "in namespace " + key.namespace
		}
		first := key
		first.verb = m.verbs[0]
		rep.add(catPermissions, levelError, "you may not %s %s %s, which install needs for %s: ask for the right, or have a cluster admin install; check with %s",
			strings.Join(m.verbs, ", "), key.resourceName(), where, listSome(m.objects, 3), canI(first))
	}
	if len(order) == 0 {
		rep.add(catPermissions, levelOK, "you may create and patch the %d objects install applies (%d rights checked)", len(r.Objects), len(keys))
	}
	checkGrants(ctx, rep, c, r)
}

// checkGrants checks that the user may create the roles install applies:
// the API server refuses a Role or ClusterRole that grants a right its
// creator does not hold (RBAC's escalation prevention) unless the creator
// may escalate roles, so a user with every right checkPermissions asks for
// can still see install fail half-way. One line per role with rights the
// user lacks.
func checkGrants(ctx context.Context, rep *precheckReport, c *clients, r *Rendered) {
	for _, o := range r.Objects {
		kind := o.GetKind()
		if o.GroupVersionKind().Group != "rbac.authorization.k8s.io" || (kind != "ClusterRole" && kind != "Role") {
			continue
		}
		resource := "clusterroles"
		if kind == "Role" {
			resource = "roles"
		}
		if ok, err := mayI(ctx, c, &authorizationv1.ResourceAttributes{Namespace: o.GetNamespace(), Verb: "escalate", Group: "rbac.authorization.k8s.io", Resource: resource, Name: o.GetName()}); err != nil || ok {
			continue // may grant anything (a cluster admin), or checkPermissions already said the API server does not answer
		}
		var role rbacv1.ClusterRole // a Role's rules are the same type
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &role); err != nil {
			rep.add(catPermissions, levelError, "cannot read %s %s: %v", kind, qualifiedName(o), err)
			continue
		}
		var lacking []string
		for _, rule := range role.Rules {
			for _, g := range rule.APIGroups {
				for _, res := range rule.Resources {
					for _, v := range rule.Verbs {
						names := rule.ResourceNames
						if len(names) == 0 {
							names = []string{""}
						}
						for _, n := range names {
							resource, sub, _ := strings.Cut(res, "/") // pods/status
							ok, err := mayI(ctx, c, &authorizationv1.ResourceAttributes{Namespace: o.GetNamespace(), Verb: v, Group: g, Resource: resource, Subresource: sub, Name: n})
							if err == nil && !ok {
								lacking = append(lacking, grantName(v, g, res, n))
							}
						}
					}
				}
			}
		}
		if len(lacking) > 0 {
			rep.add(catPermissions, levelError, "%s %s grants rights you do not hold (%s): the API server refuses to create it unless you hold them or may escalate %s; have a cluster admin install, or check with kubectl auth can-i escalate %s",
				kind, qualifiedName(o), listSome(lacking, 4), resource, resource)
		}
	}
}

// mayI asks the API server whether the user has the right ra describes (a
// SelfSubjectAccessReview: kubectl auth can-i).
func mayI(ctx context.Context, c *clients, ra *authorizationv1.ResourceAttributes) (bool, error) {
	res, err := c.kube.AuthorizationV1().SelfSubjectAccessReviews().Create(ctx,
		&authorizationv1.SelfSubjectAccessReview{Spec: authorizationv1.SelfSubjectAccessReviewSpec{ResourceAttributes: ra}}, metav1.CreateOptions{})
	if err != nil {
		return false, err
	}
	return res.Status.Allowed, nil
}

// grantName is one right of a role rule as kubectl auth can-i names it.
func grantName(verb, group, resource, name string) string {
	r := resource
	if group != "" {
		r += "." + group
	}
	if name != "" {
		r += "/" + name
	}
	return verb + " " + r
}

// canI is the kubectl command that checks right a.
func canI(a accessRight) string {
	cmd := "kubectl auth can-i " + a.verb + " " + a.resourceName()
	if a.namespace != "" {
		cmd += " -n " + a.namespace
	}
	return cmd
}

// listSome joins up to n items and says how many more there are.
func listSome(items []string, n int) string {
	if len(items) <= n {
		return strings.Join(items, ", ")
	}
	return fmt.Sprintf("%s and %d more", strings.Join(items[:n], ", "), len(items)-n)
}

// parseKernel reads the version of a kernel release string as uname -r
// prints it ("6.1.0-18-amd64", "5.15.0-1034-aws", "4.18.0-477.el8.x86_64"):
// its leading dotted numbers, the rest uninterpreted.
func parseKernel(release string) (*version.Version, bool) {
	v, err := version.ParseGeneric(strings.TrimSpace(release))
	return v, err == nil
}

// backportingKernel reports a RHEL-family kernel (RHEL, CentOS Stream,
// Rocky, Alma, Oracle Linux), whose version number understates its BPF.
var backportingKernel = regexp.MustCompile(`\.el[0-9]+`)

// daemonSetTolerations are the tolerations the DaemonSet controller adds
// to every DaemonSet pod (and, for hostNetwork pods, network-unavailable).
var daemonSetTolerations = []corev1.Toleration{
	{Key: "node.kubernetes.io/not-ready", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
	{Key: "node.kubernetes.io/unreachable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoExecute},
	{Key: "node.kubernetes.io/disk-pressure", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: "node.kubernetes.io/memory-pressure", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: "node.kubernetes.io/pid-pressure", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: "node.kubernetes.io/unschedulable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
	{Key: "node.kubernetes.io/network-unavailable", Operator: corev1.TolerationOpExists, Effect: corev1.TaintEffectNoSchedule},
}

// tolerates reports whether one of ts tolerates taint, as the scheduler
// matches them.
func tolerates(ts []corev1.Toleration, taint corev1.Taint) bool {
	for i := range ts {
		if ts[i].ToleratesTaint(klog.Background(), &taint, false) {
			return true
		}
	}
	return false
}

// nodeAgentPlacement is the rendered node agent's node selector and
// tolerations, with those the DaemonSet controller adds.
func nodeAgentPlacement(r *Rendered) (selector map[string]string, tolerations []corev1.Toleration, ok bool) {
	for _, o := range r.Objects {
		if o.GetKind() != "DaemonSet" || o.GetName() != nodeAgentName {
			continue
		}
		var ds appsv1.DaemonSet
		if decodeInto(o.Object, &ds) != nil {
			return nil, nil, false
		}
		spec := ds.Spec.Template.Spec
		return spec.NodeSelector, append(slices.Clone(spec.Tolerations), daemonSetTolerations...), true
	}
	return nil, nil, false
}

// nodeGroup collects the nodes that share one finding.
type nodeGroup struct {
	level checkLevel
	names []string
	text  func(nodes string) string
}

// clockSkewLimit is how far apart two nodes' clocks may be: the backdate
// of the certificates meshd signs (pkg/ca), less than which a node whose
// clock is behind takes a fresh peer certificate as not yet valid. A
// node's Lease is renewed every 10 s by default, so renewal times of
// nodes with agreeing clocks are up to that apart besides.
const (
	clockSkewLimit      = time.Minute
	leaseRenewInterval  = 10 * time.Second
	nodeLeaseNamespace  = "kube-node-lease"
	clockCheckMinLeases = 2
)

// checkNodeClocks compares the clocks of the Ready nodes, as their kubelets
// stamp their node Leases (spec.renewTime, in the node's own time): a node
// whose clock is off the others' by more than the certificates' backdate
// refuses fresh certificates of its peers (or they its) after every
// renewal, until its clock catches up. nodes are checkNodes' (none when
// they could not be listed). Nothing is said when there are fewer than two
// Leases to compare or they may not be read.
func checkNodeClocks(ctx context.Context, rep *precheckReport, c *clients, nodes []corev1.Node) {
	ready := map[string]bool{}
	for _, n := range nodes {
		for _, cond := range n.Status.Conditions {
			if cond.Type == corev1.NodeReady && cond.Status == corev1.ConditionTrue {
				ready[n.Name] = true
			}
		}
	}
	leases, err := c.kube.CoordinationV1().Leases(nodeLeaseNamespace).List(ctx, metav1.ListOptions{})
	if err != nil {
		return
	}
	type stamp struct {
		node string
		at   time.Time
	}
	var stamps []stamp
	for _, l := range leases.Items {
		if ready[l.Name] && l.Spec.RenewTime != nil {
			stamps = append(stamps, stamp{l.Name, l.Spec.RenewTime.Time})
		}
	}
	if len(stamps) < clockCheckMinLeases {
		return
	}
	slices.SortFunc(stamps, func(a, b stamp) int { return a.at.Compare(b.at) })
	median := stamps[len(stamps)/2].at
	var off []string
	for _, st := range stamps {
		d := st.at.Sub(median)
		if d.Abs() <= clockSkewLimit+leaseRenewInterval {
			continue
		}
		way := "behind"
		if d > 0 {
			way = "ahead"
		}
		off = append(off, fmt.Sprintf("%s (%s %s)", st.node, d.Abs().Round(time.Second), way))
	}
	if len(off) > 0 {
		rep.add(catNodes, levelWarning, "node(s) %s: their clocks are off the other nodes' by more than %s (as their kubelets stamp their node Leases): mutual TLS between their pods and others' fails after each certificate renewal until the clocks agree; keep the nodes' clocks synchronized (NTP, chrony)",
			strings.Join(off, ", "), clockSkewLimit)
		return
	}
	rep.add(catNodes, levelOK, "the clocks of the %d Ready nodes agree within %s (node Leases)", len(stamps), clockSkewLimit)
}

// checkNodes checks every node the node agent will run on: OS,
// architecture, kernel; and the nodes it will not run on. It returns the
// nodes it listed, for the other checks of nodes.
func checkNodes(ctx context.Context, rep *precheckReport, c *clients, r *Rendered) (listed []corev1.Node) {
	nodes, err := c.kube.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if apierrors.IsForbidden(err) {
		rep.add(catNodes, levelWarning, "you may not list nodes, so their kernels and architectures were not checked: rerun with read access to nodes (kubectl auth can-i list nodes)")
		return nil
	}
	if err != nil {
		rep.add(catNodes, levelError, "cannot list nodes: %v", err)
		return nil
	}
	listed = nodes.Items
	if len(nodes.Items) == 0 {
		rep.add(catNodes, levelError, "the cluster has no nodes: the node agents have nowhere to run")
		return
	}
	selector, tolerations, ok := nodeAgentPlacement(r)
	if !ok {
		rep.add(catNodes, levelInfo, "this profile renders no node agent: nodes not checked")
		return
	}
	groups := map[string]*nodeGroup{}
	var order []string
	add := func(key string, l checkLevel, node string, text func(nodes string) string) {
		g := groups[key]
		if g == nil {
			g = &nodeGroup{level: l, text: text}
			groups[key] = g
			order = append(order, key)
		}
		g.names = append(g.names, node)
	}
	var agentNodes, tcx int
	var oldest, newest string
	var oldestV, newestV *version.Version
	archs := map[string]bool{}
	for _, n := range nodes.Items {
		info := n.Status.NodeInfo
		if info.OperatingSystem != "" && info.OperatingSystem != "linux" {
			os := info.OperatingSystem
			add("os/"+os, levelWarning, n.Name, func(nodes string) string {
				return fmt.Sprintf("%s node(s) %s: meshlet runs on Linux only, so no node agent runs there and their pods cannot be enrolled (keep them out of ambient namespaces)", os, nodes)
			})
			continue
		}
		if k, v, match := selectorMismatch(selector, n.Labels); !match {
			add("selector/"+k+"="+v, levelWarning, n.Name, func(nodes string) string {
				return fmt.Sprintf("node(s) %s lack the label %s=%s the node agent's nodeSelector asks (value nodeAgent.nodeSelector): no node agent runs there and their pods cannot be enrolled", nodes, k, v)
			})
			continue
		}
		if t, untolerated := untoleratedTaint(n.Spec.Taints, tolerations); untolerated {
			taint := t.ToString()
			add("taint/"+taint, levelWarning, n.Name, func(nodes string) string {
				return fmt.Sprintf("node(s) %s have the taint %s, which the node agent DaemonSet does not tolerate: no node agent runs there and their pods cannot be enrolled; add a toleration for it (value nodeAgent.tolerations) or remove the taint", nodes, taint)
			})
			continue
		}
		agentNodes++
		if arch := info.Architecture; arch != "" && !slices.Contains(supportedArchs, arch) {
			add("arch/"+arch, levelError, n.Name, func(nodes string) string {
				return fmt.Sprintf("node(s) %s are %s; meshlet is built for %s only: the node agent cannot start there and install waits for it in vain; keep meshlet off them with a taint, or use %s nodes",
					nodes, arch, strings.Join(supportedArchs, " and "), strings.Join(supportedArchs, "/"))
			})
		} else if arch != "" {
			archs[arch] = true
		}
		release := info.KernelVersion
		kv, parsed := parseKernel(release)
		switch {
		case !parsed:
			add("kernel?/"+release, levelWarning, n.Name, func(nodes string) string {
				return fmt.Sprintf("node(s) %s report the kernel %q, whose version meshctl cannot read: meshlet needs Linux %s or newer with BTF and cgroup v2; the node agent checks at start and names what is missing", nodes, release, minKernel)
			})
			continue
		case kv.LessThan(minKernel) && backportingKernel.MatchString(release):
			add("kernel-el/"+release, levelWarning, n.Name, func(nodes string) string {
				return fmt.Sprintf("node(s) %s run kernel %s, older than meshlet's floor %s, but a RHEL-family kernel backports BPF features: the node agent probes them at start and names what is missing; check kubectl -n <mesh namespace> logs of its pod there after install",
					nodes, release, minKernel)
			})
		case kv.LessThan(minKernel):
			add("kernel/"+release, levelError, n.Name, func(nodes string) string {
				return fmt.Sprintf("node(s) %s run kernel %s; the node agent needs Linux %s or newer (cgroup connect, sockops and tc programs with bpf_sk_assign): it fails its kernel check there and install waits for it in vain; upgrade the node image or keep meshlet off these nodes",
					nodes, release, minKernel)
			})
		}
		if !kv.LessThan(tcxKernel) {
			tcx++
		}
		if oldest == "" || kv.LessThan(oldestV) {
			oldest, oldestV = release, kv
		}
		if newest == "" || newestV.LessThan(kv) {
			newest, newestV = release, kv
		}
	}
	for _, key := range order {
		g := groups[key]
		rep.add(catNodes, g.level, "%s", g.text(listSome(g.names, 3)))
	}
	if agentNodes == 0 {
		rep.add(catNodes, levelError, "the node agent would run on none of the %d nodes: the mesh has no data plane; see the lines above", len(nodes.Items))
		return
	}
	bad := false
	for _, key := range order {
		if g := groups[key]; g.level == levelError && (strings.HasPrefix(key, "kernel/") || strings.HasPrefix(key, "arch/")) {
			bad = true
		}
	}
	if !bad && oldest != "" {
		kernels := oldest
		if newest != oldest {
			kernels = oldest + " to " + newest
		}
		archList := make([]string, 0, len(archs))
		for a := range archs {
			archList = append(archList, a)
		}
		sort.Strings(archList)
		rep.add(catNodes, levelOK, "the node agent will run on %d node(s) (Linux, %s), kernels %s (meshlet needs %s or newer; the agent checks BTF and BPF features at start)",
			agentNodes, strings.Join(archList, ", "), kernels, minKernel)
	}
	switch {
	case tcx == agentNodes:
		rep.add(catNodes, levelInfo, "every node agent will use TCX for pod ingress (kernel %s or newer)", tcxKernel)
	case tcx == 0:
		rep.add(catNodes, levelInfo, "no node has TCX (kernel %s or newer): the node agents attach pod ingress with a clsact filter instead", tcxKernel)
	default:
		rep.add(catNodes, levelInfo, "%d of %d node agents will use TCX for pod ingress (kernel %s or newer), the others clsact", tcx, agentNodes, tcxKernel)
	}
	return listed
}

// selectorMismatch returns the first label of selector the node's labels
// lack, and whether they match.
func selectorMismatch(selector, labels map[string]string) (key, value string, match bool) {
	keys := make([]string, 0, len(selector))
	for k := range selector {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		if labels[k] != selector[k] {
			return k, selector[k], false
		}
	}
	return "", "", true
}

// untoleratedTaint returns the first NoSchedule or NoExecute taint that no
// toleration tolerates (PreferNoSchedule does not keep a DaemonSet away).
func untoleratedTaint(taints []corev1.Taint, ts []corev1.Toleration) (corev1.Taint, bool) {
	for _, t := range taints {
		if t.Effect == corev1.TaintEffectPreferNoSchedule {
			continue
		}
		if !tolerates(ts, t) {
			return t, true
		}
	}
	return corev1.Taint{}, false
}

// clusterWorkloads are the Deployments and DaemonSets of every namespace,
// for the checks that look for other meshes.
type clusterWorkloads struct {
	deployments []appsv1.Deployment
	daemonSets  []appsv1.DaemonSet
	// istiod are the Istio control planes found.
	istiod []appsv1.Deployment
}

// imageOf is the first container's image of a pod template.
func imageOf(t corev1.PodTemplateSpec) string {
	if len(t.Spec.Containers) == 0 {
		return ""
	}
	return t.Spec.Containers[0].Image
}

func envOf(t corev1.PodTemplateSpec, name string) string {
	for _, c := range t.Spec.Containers {
		for _, e := range c.Env {
			if e.Name == name {
				return e.Value
			}
		}
	}
	return ""
}

// checkConflicts looks for Istio, Linkerd and Cilium components and for a
// meshlet already installed.
func checkConflicts(ctx context.Context, rep *precheckReport, c *clients, meshNS string, opts RenderOptions) *clusterWorkloads {
	w := &clusterWorkloads{}
	deps, err := c.kube.AppsV1().Deployments("").List(ctx, metav1.ListOptions{})
	if err == nil {
		w.deployments = deps.Items
		var dss *appsv1.DaemonSetList
		dss, err = c.kube.AppsV1().DaemonSets("").List(ctx, metav1.ListOptions{})
		if err == nil {
			w.daemonSets = dss.Items
		}
	}
	if err != nil {
		level := levelError
		if apierrors.IsForbidden(err) {
			level = levelWarning
		}
		rep.add(catConflicts, level, "cannot list Deployments and DaemonSets in every namespace (%v), so other meshes and an existing meshlet were not looked for; rerun with read access to them", err)
		return w
	}
	found := false
	for _, d := range w.deployments {
		l := d.Labels
		switch {
		case l["app.kubernetes.io/name"] == "meshd" && d.Namespace == meshNS:
			found = true
			profile := l[profileLabel]
			if profile == "" {
				profile = "unknown"
			}
			then := ""
			if profile != profileOf(opts) {
				then = fmt.Sprintf("; meshctl install --profile %s would switch it to that profile, removing what only %s has", profileOf(opts), profile)
			}
			rep.add(catConflicts, levelInfo, "meshlet %s is already installed in namespace %s (profile %s): meshctl status checks its health, meshctl upgrade moves it to this meshctl's version%s",
				imageTag(imageOf(d.Spec.Template)), d.Namespace, profile, then)
		case l["app.kubernetes.io/name"] == "meshd" && l["app.kubernetes.io/part-of"] == "meshlet":
			found = true
			rep.add(catConflicts, levelError, "meshlet is already installed in namespace %s (Deployment %s/%s), not in %s: a second install would run a second meshd and a second node agent on every node, both capturing the same pods; pass --mesh-namespace %s to upgrade that one",
				d.Namespace, d.Namespace, d.Name, meshNS, d.Namespace)
		case l["app"] == "istiod" || d.Name == "istiod" || strings.HasPrefix(d.Name, "istiod-"):
			found = true
			w.istiod = append(w.istiod, d)
			rep.add(catConflicts, levelWarning, "Istio's control plane runs (Deployment %s/%s, Istio %s): meshlet leaves its sidecar pods alone and reads the same Istio resources, but both serve Gateways of class istio and istio-waypoint, and install replaces the Istio CRDs with its own version's; migrate namespaces one at a time, then uninstall Istio (istioctl uninstall --purge)",
				d.Namespace, d.Name, imageTag(imageOf(d.Spec.Template)))
		case l["linkerd.io/control-plane-component"] == "destination":
			found = true
			rep.add(catConflicts, levelWarning, "Linkerd's control plane runs (Deployment %s/%s): a pod with Linkerd's proxy enrolled in meshlet too would have its traffic go through both meshes; keep namespaces with linkerd.io/inject out of ambient enrollment, or uninstall Linkerd (linkerd uninstall | kubectl delete -f -)",
				d.Namespace, d.Name)
		}
	}
	for _, ds := range w.daemonSets {
		l := ds.Labels
		switch {
		case l["app"] == "ztunnel" || ds.Name == "ztunnel":
			found = true
			rep.add(catConflicts, levelError, "Istio's ztunnel runs (DaemonSet %s/%s): it and meshlet's node agent would both capture the pods of namespaces labelled istio.io/dataplane-mode=ambient; remove Istio's ambient data plane first (helm uninstall ztunnel -n %s, or istioctl uninstall)",
				ds.Namespace, ds.Name, ds.Namespace)
		case l["k8s-app"] == "istio-cni-node" || ds.Name == "istio-cni-node":
			found = true
			if strings.EqualFold(envOf(ds.Spec.Template, "AMBIENT_ENABLED"), "true") {
				rep.add(catConflicts, levelError, "Istio's CNI agent runs in ambient mode (DaemonSet %s/%s, AMBIENT_ENABLED=true): it redirects the traffic of ambient-labelled pods to ztunnel, as meshlet's node agent does to its own; remove it (helm uninstall istio-cni -n %s) or turn its ambient mode off",
					ds.Namespace, ds.Name, ds.Namespace)
				continue
			}
			rep.add(catConflicts, levelWarning, "Istio's CNI agent runs (DaemonSet %s/%s) for sidecar pods: meshlet-cni chains after it and meshlet leaves sidecar pods alone; remove it with Istio once no pod has a sidecar", ds.Namespace, ds.Name)
		case l["k8s-app"] == "cilium" || ds.Name == "cilium":
			found = true
			checkCilium(ctx, rep, c, ds)
		case l["app.kubernetes.io/name"] == nodeAgentName && ds.Namespace != meshNS:
			found = true
			rep.add(catConflicts, levelError, "a meshlet node agent runs in namespace %s (DaemonSet %s/%s), not in %s: a second install would capture every pod twice; pass --mesh-namespace %s",
				ds.Namespace, ds.Namespace, ds.Name, meshNS, ds.Namespace)
		}
	}
	if !found {
		rep.add(catConflicts, levelOK, "no other mesh (Istio, Linkerd, Cilium) and no meshlet installed")
	}
	return w
}

// checkCilium reads Cilium's configuration for what gets in meshlet's way,
// the settings Istio's ambient mode needs on Cilium too.
func checkCilium(ctx context.Context, rep *precheckReport, c *clients, ds appsv1.DaemonSet) {
	cm, err := c.kube.CoreV1().ConfigMaps(ds.Namespace).Get(ctx, "cilium-config", metav1.GetOptions{})
	if err != nil {
		rep.add(catConflicts, levelWarning, "Cilium runs (DaemonSet %s/%s) and its ConfigMap %s/cilium-config could not be read (%v): make sure cni.exclusive=false (else it removes meshlet-cni's configuration) and socketLB.hostNamespaceOnly=true",
			ds.Namespace, ds.Name, ds.Namespace, err)
		return
	}
	ok := true
	if cm.Data["cni-exclusive"] != "false" {
		ok = false
		rep.add(catConflicts, levelWarning, "Cilium (ConfigMap %s/cilium-config) has cni-exclusive not false: it removes other CNI configurations, meshlet-cni's among them, so new pods start before their node agent knows them; set cni.exclusive=false in Cilium's values", ds.Namespace)
	}
	if kpr := cm.Data["kube-proxy-replacement"]; (kpr == "true" || kpr == "strict") && cm.Data["bpf-lb-sock-hostns-only"] != "true" {
		ok = false
		rep.add(catConflicts, levelWarning, "Cilium (ConfigMap %s/cilium-config) replaces kube-proxy with socket load balancing inside pods: it turns a Service's address into a pod's before meshlet sees the connection, so service waypoints and policies are bypassed; set socketLB.hostNamespaceOnly=true in Cilium's values", ds.Namespace)
	}
	if ok {
		rep.add(catConflicts, levelOK, "Cilium runs (DaemonSet %s/%s) with cni-exclusive false and socket load balancing kept to the host: meshlet-cni chains after it", ds.Namespace, ds.Name)
	}
}

// checkCRDs compares the Gateway API and Istio CRDs the cluster has with
// those install applies, and the GatewayClasses with meshlet's.
func checkCRDs(ctx context.Context, rep *precheckReport, c *clients, r *Rendered, w *clusterWorkloads) {
	var gwBundled, gwChannel string
	var gwNames, istioNames []string
	for _, o := range r.Objects {
		if o.GetKind() != "CustomResourceDefinition" {
			continue
		}
		group, _, _ := unstructured.NestedString(o.Object, "spec", "group")
		switch {
		case group == "gateway.networking.k8s.io":
			gwNames = append(gwNames, o.GetName())
			gwBundled = o.GetAnnotations()["gateway.networking.k8s.io/bundle-version"]
			gwChannel = o.GetAnnotations()[crds.ChannelAnnotation]
		case strings.HasSuffix(group, ".istio.io"):
			istioNames = append(istioNames, o.GetName())
		}
	}
	get := func(name string) (*unstructured.Unstructured, bool) {
		u, err := c.dynamic.Resource(crdResource).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			if !apierrors.IsNotFound(err) {
				rep.add(catCRDs, levelWarning, "cannot read CRD %s (%v): what install will do with it was not checked (kubectl auth can-i get customresourcedefinitions)", name, err)
			}
			return nil, false
		}
		return u, true
	}
	// Gateway API.
	versions := map[string][]string{} // bundle-version/channel -> CRDs
	present := 0
	for _, n := range gwNames {
		u, ok := get(n)
		if !ok {
			continue
		}
		present++
		a := u.GetAnnotations()
		v := a["gateway.networking.k8s.io/bundle-version"]
		ch := a[crds.ChannelAnnotation]
		if ch == "" {
			ch = string(crds.Standard)
		}
		versions[v+"/"+ch] = append(versions[v+"/"+ch], n)
	}
	keys := make([]string, 0, len(versions))
	for k := range versions {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	switch {
	case present == 0:
		rep.add(catCRDs, levelInfo, "the cluster has no Gateway API CRDs: install adds Gateway API %s (%s channel)", gwBundled, gwChannel)
	case len(keys) == 1 && keys[0] == gwBundled+"/"+gwChannel:
		rep.add(catCRDs, levelOK, "Gateway API CRDs %s (%s channel), as meshlet bundles", gwBundled, gwChannel)
	}
	if present > 0 {
		for _, k := range keys {
			v, ch, _ := strings.Cut(k, "/")
			names := versions[k]
			switch {
			case k == gwBundled+"/"+gwChannel:
				if len(keys) > 1 {
					rep.add(catCRDs, levelOK, "%s: Gateway API %s (%s channel), as meshlet bundles", listSome(names, 2), v, ch)
				}
			case v == "":
				rep.add(catCRDs, levelInfo, "%s carry no gateway.networking.k8s.io/bundle-version (not from a Gateway API release): install replaces them with Gateway API %s (%s channel) by server-side apply", listSome(names, 2), gwBundled, ch)
			case semverLess(gwBundled, v):
				rep.add(catCRDs, levelWarning, "the cluster has Gateway API %s (%s), newer than meshlet's %s: install would replace them with the older CRDs, dropping what %s added that other controllers may use; use a meshctl that bundles %s or newer",
					v, listSome(names, 2), gwBundled, v, v)
			case ch == string(crds.Experimental):
				rep.add(catCRDs, levelInfo, "the cluster has Gateway API %s experimental channel (%s): install keeps the experimental channel and brings it to %s", v, listSome(names, 2), gwBundled)
			default:
				rep.add(catCRDs, levelInfo, "the cluster has Gateway API %s %s channel (%s): install upgrades them to %s", v, ch, listSome(names, 2), gwBundled)
			}
		}
	}
	// Istio.
	var foreign []string
	managers := map[string]bool{}
	for _, n := range istioNames {
		u, ok := get(n)
		if !ok {
			continue
		}
		mine := false
		for _, mf := range u.GetManagedFields() {
			switch {
			case mf.Manager == FieldManager:
				mine = true
			case mf.Subresource == "" && mf.Manager != "kube-apiserver":
				managers[mf.Manager] = true
			}
		}
		if !mine {
			foreign = append(foreign, n)
		}
	}
	if len(foreign) > 0 {
		by := "another tool"
		if len(managers) > 0 {
			ms := make([]string, 0, len(managers))
			for m := range managers {
				ms = append(ms, m)
			}
			sort.Strings(ms)
			by = strings.Join(ms, ", ")
		}
		istio := ""
		for _, d := range w.istiod {
			istio = fmt.Sprintf(" (Istio %s runs)", imageTag(imageOf(d.Spec.Template)))
		}
		rep.add(catCRDs, levelInfo, "%d Istio CRDs (%s) were applied by %s%s: install applies those of istio.io/api %s over them (server-side apply, forced), which Istio's own installer may later take back",
			len(foreign), listSome(foreign, 2), by, istio, crds.SourceVersion("istio.io/api"))
	}
	checkGatewayClasses(ctx, rep, c, r)
	// CRDs of kinds a value adds (a PodMonitor), which install checks
	// before its first apply, and fails on, as here.
	missing, have, err := missingOptionalCRDs(ctx, c, r)
	if err != nil {
		rep.add(catCRDs, levelWarning, "%v: whether the cluster has the CRDs of the PodMonitors the values ask for was not checked", err)
		return
	}
	for _, m := range missing {
		rep.add(catCRDs, levelError, "%s", m)
	}
	for _, name := range have {
		rep.add(catCRDs, levelOK, "CRD %s, which your values' objects need, is installed", name)
	}
}

// semverLess reports a < b for versions like v1.6.3; unreadable ones are
// not less.
func semverLess(a, b string) bool {
	va, err1 := version.ParseSemantic(a)
	vb, err2 := version.ParseSemantic(b)
	return err1 == nil && err2 == nil && va.LessThan(vb)
}

// checkGatewayClasses finds GatewayClasses with meshlet's names (and
// Istio's, which meshd serves too) that another controller owns.
func checkGatewayClasses(ctx context.Context, rep *precheckReport, c *clients, r *Rendered) {
	rendered := map[string]bool{}
	for _, o := range r.Objects {
		if o.GetKind() == "GatewayClass" {
			rendered[o.GetName()] = true
		}
	}
	l, err := c.dynamic.Resource(gatewayClassResource).List(ctx, metav1.ListOptions{})
	if err != nil {
		if !apierrors.IsNotFound(err) && !meta.IsNoMatchError(err) {
			rep.add(catCRDs, levelWarning, "cannot list GatewayClasses (%v): classes of meshlet's names owned by another controller were not looked for", err)
		}
		return
	}
	const mine = "meshlet.dev/gateway-controller"
	for _, gc := range l.Items {
		name := gc.GetName()
		ctrl, _, _ := unstructured.NestedString(gc.Object, "spec", "controllerName")
		if ctrl == mine {
			continue
		}
		switch {
		case rendered[name]:
			rep.add(catCRDs, levelError, "GatewayClass %s belongs to controller %s: its controllerName cannot change, so install's apply of it fails; delete it if no Gateway uses it (kubectl delete gatewayclass %s), or install with --set gatewayClasses.enabled=false",
				name, ctrl, name)
		case name == "meshlet" || name == "meshlet-waypoint" || name == "istio" || name == "istio-waypoint":
			rep.add(catCRDs, levelWarning, "GatewayClass %s belongs to controller %s: install leaves it, but meshd serves Gateways of class %s as well, so two controllers would deploy for them; give meshlet's Gateways the class meshlet or meshlet-waypoint and remove the other controller's use of %s",
				name, ctrl, name, name)
		}
	}
}

// checkAmbientNamespaces reports namespaces and pods already asking for
// the mesh: they are enrolled as soon as the node agents start.
func checkAmbientNamespaces(ctx context.Context, rep *precheckReport, c *clients) {
	sel := LabelDataplaneMode + "=" + "ambient"
	nss, err := c.kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		rep.add(catNamespaces, levelWarning, "cannot list namespaces (%v): namespaces already labelled %s were not looked for", err, sel)
		return
	}
	if len(nss.Items) == 0 {
		rep.add(catNamespaces, levelOK, "no namespace is labelled %s yet: enroll one after install with meshctl ambient enable <namespace>", sel)
	}
	for _, ns := range nss.Items {
		pods, err := c.kube.CoreV1().Pods(ns.Name).List(ctx, metav1.ListOptions{})
		if err != nil {
			rep.add(catNamespaces, levelInfo, "namespace %s is labelled %s: its pods are enrolled as soon as the node agents start (its pods could not be listed: %v)", ns.Name, sel, err)
			continue
		}
		var enrolled int
		var sidecars []string
		for _, p := range pods.Items {
			switch {
			case p.Labels[LabelDataplaneMode] == "none":
			case hasIstioSidecar(p):
				sidecars = append(sidecars, p.Name)
			default:
				enrolled++
			}
		}
		rep.add(catNamespaces, levelInfo, "namespace %s is labelled %s: its %d pod(s) are enrolled as soon as the node agents start, without a restart", ns.Name, sel, enrolled)
		if len(sidecars) > 0 {
			rep.add(catNamespaces, levelWarning, "namespace %s: %d pod(s) with an Istio sidecar (%s) are left alone, their traffic staying the sidecar's; to enroll them, remove the injection (kubectl label namespace %s istio-injection- istio.io/rev-) and restart them",
				ns.Name, len(sidecars), listSome(sidecars, 3), ns.Name)
		}
	}
}

// hasIstioSidecar reports an istio-proxy container or native sidecar, as
// the node agent tells them.
func hasIstioSidecar(p corev1.Pod) bool {
	for _, c := range append(slices.Clone(p.Spec.Containers), p.Spec.InitContainers...) {
		if c.Name == model.IstioSidecarContainer {
			return true
		}
	}
	return false
}

// printPrecheck writes the report as text (by category, a verdict last),
// JSON or YAML.
func printPrecheck(w io.Writer, rep *precheckReport, output string) error {
	switch output {
	case "json", "yaml":
		return writeStructured(w, rep, output)
	case "":
	default:
		return fmt.Errorf("--output %q: want json or yaml", output)
	}
	for _, cat := range categories {
		first := true
		for _, r := range rep.Results {
			if r.Category != cat {
				continue
			}
			if first {
				fmt.Fprintln(w, cat)
				first = false
			}
			fmt.Fprintf(w, "  %s %s\n", marks[r.Level], r.Message)
		}
	}
	errs, warns := rep.count(levelError), rep.count(levelWarning)
	switch {
	case errs > 0:
		fmt.Fprintf(w, "✘ %d error(s), %d warning(s): fix the errors before meshctl install\n", errs, warns)
	case warns > 0:
		fmt.Fprintf(w, "✔ the cluster is ready for meshctl install, with %d warning(s) to read first\n", warns)
	default:
		fmt.Fprintln(w, "✔ the cluster is ready for meshctl install")
	}
	return nil
}
