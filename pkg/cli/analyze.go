package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	networkingv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	istioscheme "istio.io/client-go/pkg/clientset/versioned/scheme"
	appsv1 "k8s.io/api/apps/v1"
	batchv1 "k8s.io/api/batch/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	clientgoscheme "k8s.io/client-go/kubernetes/scheme"
	gatewayscheme "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/scheme"

	"github.com/meshlet/meshlet/pkg/controlplane"
	"github.com/meshlet/meshlet/pkg/model"
)

// Severity of a finding.
type Severity string

// Severities, as istioctl analyze names them.
const (
	SeverityError   Severity = "Error"
	SeverityWarning Severity = "Warning"
)

// Finding is one problem analyze reports.
type Finding struct {
	// Severity is Error or Warning.
	Severity Severity `json:"severity"`
	// Check names the analysis that found it.
	Check string `json:"check"`
	// Kind, Namespace and Name identify the object at fault.
	Kind      string `json:"kind"`
	Namespace string `json:"namespace,omitempty"`
	Name      string `json:"name"`
	// Source is the file (and document index) the object came from; empty in live mode.
	Source string `json:"source,omitempty"`
	// Message says what is wrong and how to fix it.
	Message string `json:"message"`
}

func (f Finding) String() string {
	obj := f.Name
	if f.Namespace != "" {
		obj = f.Namespace + "/" + f.Name
	}
	src := ""
	if f.Source != "" {
		src = " (" + f.Source + ")"
	}
	return fmt.Sprintf("%s [%s] %s %s%s: %s", f.Severity, f.Check, f.Kind, obj, src, f.Message)
}

// removedAPI is an API version Kubernetes no longer serves for a kind.
type removedAPI struct {
	// since is the Kubernetes release that removed it.
	since string
	// replacement is the apiVersion to use instead.
	replacement string
	// note adds what else the move needs, if anything.
	note string
}

// removedAPIs is keyed by "apiVersion/Kind".
var removedAPIs = map[string]removedAPI{
	"apps/v1beta1/Deployment":                               {"1.16", "apps/v1", "apps/v1 also requires spec.selector matching the pod template's labels"},
	"apps/v1beta2/Deployment":                               {"1.16", "apps/v1", ""},
	"extensions/v1beta1/Deployment":                         {"1.16", "apps/v1", "apps/v1 also requires spec.selector matching the pod template's labels"},
	"apps/v1beta1/StatefulSet":                              {"1.16", "apps/v1", ""},
	"apps/v1beta2/StatefulSet":                              {"1.16", "apps/v1", ""},
	"apps/v1beta2/DaemonSet":                                {"1.16", "apps/v1", ""},
	"extensions/v1beta1/DaemonSet":                          {"1.16", "apps/v1", ""},
	"apps/v1beta2/ReplicaSet":                               {"1.16", "apps/v1", ""},
	"extensions/v1beta1/ReplicaSet":                         {"1.16", "apps/v1", ""},
	"extensions/v1beta1/NetworkPolicy":                      {"1.16", "networking.k8s.io/v1", ""},
	"extensions/v1beta1/Ingress":                            {"1.22", "networking.k8s.io/v1", "the backend fields are renamed (service.name, service.port.number)"},
	"networking.k8s.io/v1beta1/Ingress":                     {"1.22", "networking.k8s.io/v1", "the backend fields are renamed (service.name, service.port.number)"},
	"rbac.authorization.k8s.io/v1beta1/Role":                {"1.22", "rbac.authorization.k8s.io/v1", ""},
	"rbac.authorization.k8s.io/v1beta1/RoleBinding":         {"1.22", "rbac.authorization.k8s.io/v1", ""},
	"rbac.authorization.k8s.io/v1beta1/ClusterRole":         {"1.22", "rbac.authorization.k8s.io/v1", ""},
	"rbac.authorization.k8s.io/v1beta1/ClusterRoleBinding":  {"1.22", "rbac.authorization.k8s.io/v1", ""},
	"apiextensions.k8s.io/v1beta1/CustomResourceDefinition": {"1.22", "apiextensions.k8s.io/v1", ""},
	"batch/v1beta1/CronJob":                                 {"1.25", "batch/v1", ""},
	"policy/v1beta1/PodDisruptionBudget":                    {"1.25", "policy/v1", "in policy/v1 an empty selector selects every pod of the namespace"},
	"policy/v1beta1/PodSecurityPolicy":                      {"1.25", "", "use Pod Security Admission (namespace labels pod-security.kubernetes.io/*) instead"},
	"discovery.k8s.io/v1beta1/EndpointSlice":                {"1.25", "discovery.k8s.io/v1", ""},
	"autoscaling/v2beta1/HorizontalPodAutoscaler":           {"1.25", "autoscaling/v2", ""},
	"autoscaling/v2beta2/HorizontalPodAutoscaler":           {"1.26", "autoscaling/v2", ""},
	"flowcontrol.apiserver.k8s.io/v1beta2/FlowSchema":       {"1.29", "flowcontrol.apiserver.k8s.io/v1", ""},
}

// analyzeOptions are analyze's flags.
type analyzeOptions struct {
	// files are YAML files or directories of them; empty means analyze the live cluster.
	files []string
	// namespace is the namespace of file objects without one, and the one analyzed live.
	namespace string
	// allNamespaces analyzes every namespace of the cluster.
	allNamespaces bool
	// output is "" (text) or "json".
	output string
	// failureThreshold is the lowest severity that makes analyze exit non-zero.
	failureThreshold string
	// profile is the meshlet profile assumed installed when analyzing files; "none" assumes nothing.
	profile string
}

func newAnalyzeCommand(s Streams, g *globalOptions) *cobra.Command {
	o := &analyzeOptions{}
	cmd := &cobra.Command{
		Use:   "analyze",
		Short: "Find problems in mesh configuration, in files or in the cluster",
		Long: "With -f, analyzes YAML files offline (no cluster is contacted) as if meshlet's\n" +
			"--profile were installed; without -f, analyzes the live cluster. Exits 1 when a\n" +
			"finding reaches --failure-threshold (default Error).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			var findings []Finding
			var err error
			if len(o.files) > 0 {
				findings, err = AnalyzeFiles(o.files, AnalyzeOptions{DefaultNamespace: o.namespace, AssumeProfile: o.profile, MeshNamespace: g.meshNamespace})
			} else {
				findings, err = analyzeLive(ctxOf(cmd), g, o)
			}
			if err != nil {
				return err
			}
			return report(s.Out, findings, o)
		},
	}
	f := cmd.Flags()
	f.StringArrayVarP(&o.files, "filename", "f", nil, "YAML file or directory to analyze offline (repeatable)")
	f.StringVarP(&o.namespace, "namespace", "n", "default", "namespace of objects that name none; in live mode, the namespace analyzed")
	f.BoolVarP(&o.allNamespaces, "all-namespaces", "A", false, "live mode: analyze every namespace")
	f.StringVarP(&o.output, "output", "o", "", "output format: json (default text)")
	f.StringVar(&o.failureThreshold, "failure-threshold", string(SeverityError), "exit 1 on findings of this severity or worse: Error or Warning")
	f.StringVar(&o.profile, "profile", "default", "with -f: the meshlet profile assumed installed (minimal, default, demo, none)")
	return cmd
}

func report(w io.Writer, findings []Finding, o *analyzeOptions) error {
	var threshold int
	switch o.failureThreshold {
	case string(SeverityError):
		threshold = 2
	case string(SeverityWarning):
		threshold = 1
	default:
		return fmt.Errorf("unknown --failure-threshold %q: use Error or Warning", o.failureThreshold)
	}
	switch o.output {
	case "json":
		if findings == nil {
			findings = []Finding{}
		}
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		if err := enc.Encode(findings); err != nil {
			return fmt.Errorf("write findings: %w", err)
		}
	case "":
		if len(findings) == 0 {
			fmt.Fprintln(w, "✔ No problems found.")
		}
		for _, f := range findings {
			fmt.Fprintln(w, f.String())
		}
	default:
		return fmt.Errorf("unknown output format %q: use -o json, or no -o for text", o.output)
	}
	worst := 0
	for _, f := range findings {
		switch f.Severity {
		case SeverityError:
			worst = max(worst, 2)
		case SeverityWarning:
			worst = max(worst, 1)
		}
	}
	if worst >= threshold {
		return ExitError{Code: 1}
	}
	return nil
}

// AnalyzeOptions configure AnalyzeObjects and AnalyzeFiles.
type AnalyzeOptions struct {
	// DefaultNamespace is given to namespaced objects that name none; "" means "default".
	DefaultNamespace string
	// AssumeProfile is the meshlet profile whose components are taken as
	// installed (the ingress gateway, for Gateway selectors); "" means
	// "default", "none" means nothing, and "live" that objs already hold the cluster's pods.
	AssumeProfile string
	// MeshNamespace is meshlet's namespace; "" means DefaultNamespace.
	MeshNamespace string
	// RootNamespace holds mesh-wide policies; "" means "istio-system".
	RootNamespace string
	// Unreadable are the kinds (Secret, ConfigMap) live analysis was not
	// allowed to list: the checks of references to them are skipped
	// rather than report every such reference as missing.
	Unreadable []string
}

// AnalyzeFiles reads YAML files (directories: their *.yaml, *.yml and
// *.json files) and analyzes the objects in them. It contacts no cluster.
func AnalyzeFiles(paths []string, opts AnalyzeOptions) ([]Finding, error) {
	var objs []sourced
	for _, p := range paths {
		files := []string{p}
		if st, err := os.Stat(p); err != nil {
			return nil, fmt.Errorf("analyze %s: %w (pass existing files or directories with -f)", p, err)
		} else if st.IsDir() {
			files = nil
			entries, err := os.ReadDir(p)
			if err != nil {
				return nil, fmt.Errorf("read directory: %w", err)
			}
			for _, e := range entries {
				switch filepath.Ext(e.Name()) {
				case ".yaml", ".yml", ".json":
					files = append(files, filepath.Join(p, e.Name()))
				}
			}
		}
		for _, f := range files {
			data, err := os.ReadFile(f)
			if err != nil {
				return nil, fmt.Errorf("read manifest: %w", err)
			}
			us, err := decodeObjects(data, f)
			if err != nil {
				return nil, err
			}
			for i, u := range us {
				objs = append(objs, sourced{u, fmt.Sprintf("%s#%d", f, i+1)})
			}
		}
	}
	return analyze(objs, opts)
}

// sourced is an object and where it came from.
type sourced struct {
	obj    *unstructured.Unstructured
	source string
}

var analyzeScheme = func() *runtime.Scheme {
	s := runtime.NewScheme()
	for _, add := range []func(*runtime.Scheme) error{clientgoscheme.AddToScheme, istioscheme.AddToScheme, gatewayscheme.AddToScheme} {
		if err := add(s); err != nil {
			panic(fmt.Sprintf("build analyze scheme: %v", err))
		}
	}
	return s
}()

// analysis holds the typed view of the analyzed objects.
type analysis struct {
	opts     AnalyzeOptions
	findings []Finding
	pods     []*corev1.Pod
	sources  map[string]string // kind/ns/name -> source
	peerAuth []peerAuthView
	reqAuth  []selectorView
	istioGws []selectorView
	// nsLabels are the labels of the Namespace objects analyzed.
	nsLabels map[string]map[string]string
}

type peerAuthView struct {
	kind, ns, name string
	selector       map[string]string
}

type selectorView struct {
	ns, name string
	selector map[string]string
}

func (a *analysis) add(sev Severity, check, kind, ns, name, format string, args ...any) {
	a.findings = append(a.findings, Finding{
		Severity: sev, Check: check, Kind: kind, Namespace: ns, Name: name,
		Source: a.sources[kind+"/"+ns+"/"+name], Message: fmt.Sprintf(format, args...),
	})
}

// analyze runs every check on objs.
func analyze(objs []sourced, opts AnalyzeOptions) ([]Finding, error) {
	findings, _, err := analyzeModel(objs, opts)
	return findings, err
}

// analyzeModel runs every check on objs and also returns the mesh model
// meshd would build from them (for describe).
func analyzeModel(objs []sourced, opts AnalyzeOptions) ([]Finding, *model.Snapshot, error) {
	if opts.DefaultNamespace == "" {
		opts.DefaultNamespace = "default"
	}
	if opts.MeshNamespace == "" {
		opts.MeshNamespace = DefaultNamespace
	}
	if opts.RootNamespace == "" {
		opts.RootNamespace = "istio-system"
	}
	a := &analysis{opts: opts, sources: map[string]string{}, nsLabels: map[string]map[string]string{}}
	in := &controlplane.Inputs{}
	namespaces := map[string]bool{}
	podIP := netip.MustParseAddr("240.0.0.1") // reserved, never routed: placeholders for pods from templates

	if opts.AssumeProfile != "none" && opts.AssumeProfile != "live" {
		r, err := Render(RenderOptions{Profile: opts.AssumeProfile, Namespace: opts.MeshNamespace, SkipCRDs: true})
		if err != nil {
			return nil, nil, fmt.Errorf("render the assumed installation: %w", err)
		}
		for _, u := range r.Objects {
			if u.GetKind() == "Deployment" || u.GetKind() == "DaemonSet" {
				objs = append(objs, sourced{u, "meshlet " + opts.AssumeProfile + " profile"})
			}
		}
	}

	for _, so := range objs {
		u := so.obj
		gvk := u.GroupVersionKind()
		if u.GetNamespace() == "" && isNamespaced(gvk) {
			u.SetNamespace(opts.DefaultNamespace)
		}
		ns, name, kind := u.GetNamespace(), u.GetName(), u.GetKind()
		a.sources[kind+"/"+ns+"/"+name] = so.source
		if gvk.Group == "networking.istio.io" && kind == "Gateway" {
			a.sources[controlplane.KindIstioGateway+"/"+ns+"/"+name] = so.source
		}
		if ns != "" {
			namespaces[ns] = true
		}
		if r, ok := removedAPIs[u.GetAPIVersion()+"/"+kind]; ok {
			msg := fmt.Sprintf("%s %s is removed since Kubernetes %s (the API server refuses it)", u.GetAPIVersion(), kind, r.since)
			if r.replacement != "" {
				msg += fmt.Sprintf(": change apiVersion to %s", r.replacement)
			}
			if r.note != "" {
				msg += "; " + r.note
			}
			a.add(SeverityError, "removed-api", kind, ns, name, "%s", msg)
			// Analyze it as its replacement, so its pods still count.
			if r.replacement == "" {
				continue
			}
			u.SetAPIVersion(r.replacement)
			gvk = u.GroupVersionKind()
		}
		typed, err := analyzeScheme.New(gvk)
		if err != nil {
			continue // a kind analyze has no checks for
		}
		if err := decodeInto(u.Object, typed); err != nil {
			a.add(SeverityError, "schema", kind, ns, name, "does not decode as %s: %v; fix the field named", gvk, err)
			continue
		}
		if err := a.collect(in, typed, &podIP); err != nil {
			return nil, nil, err
		}
	}
	for ns := range namespaces {
		if _, ok := a.nsLabels[ns]; ok {
			continue
		}
		if err := in.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}); err != nil {
			return nil, nil, fmt.Errorf("add namespace %s: %w", ns, err)
		}
	}

	snap, rejections := controlplane.NewBuilder(controlplane.BuilderOptions{RootNamespace: opts.RootNamespace}).Build(in)
	for _, r := range rejections {
		if superseded(r) || unverifiable(r, opts.Unreadable) {
			continue
		}
		sev := SeverityWarning
		if !r.Warning || danglingReference(r) {
			sev = SeverityError
		}
		a.add(sev, "config", r.Kind, r.Namespace, r.Name, "%s", r.Reason)
	}
	a.checkPeerAuthentications()
	a.checkSelectors()
	a.checkNodeAgents()
	sort.SliceStable(a.findings, func(i, j int) bool {
		x, y := a.findings[i], a.findings[j]
		if x.Severity != y.Severity {
			return x.Severity == SeverityError
		}
		if x.Namespace != y.Namespace {
			return x.Namespace < y.Namespace
		}
		if x.Kind != y.Kind {
			return x.Kind < y.Kind
		}
		return x.Name < y.Name
	})
	return a.findings, snap, nil
}

// danglingReference tells the builder's warnings that istioctl reports as
// errors (IST0101 ReferencedResourceNotFound): routes to hosts or subsets that
// do not exist send traffic nowhere.
func danglingReference(r controlplane.Rejection) bool {
	return r.Kind == controlplane.KindVirtualService &&
		(strings.Contains(r.Reason, "matches no service or ServiceEntry") || strings.Contains(r.Reason, "is not defined by a DestinationRule"))
}

// unverifiable tells the builder's findings of a reference to a Secret or
// ConfigMap that is missing only because analysis could not list that kind.
func unverifiable(r controlplane.Rejection, unreadable []string) bool {
	return slices.Contains(unreadable, "Secret") && strings.Contains(r.Reason, "no Secret of type kubernetes.io/tls") ||
		slices.Contains(unreadable, "ConfigMap") && strings.Contains(r.Reason, ": no ConfigMap ")
}

// superseded tells the builder's findings that a check of analyze reports
// as an error, with the fix.
func superseded(r controlplane.Rejection) bool {
	return (r.Kind == controlplane.KindPeerAuthentication && strings.Contains(r.Reason, "conflicts with")) ||
		(r.Kind == controlplane.KindIstioGateway && strings.Contains(r.Reason, "matches no gateway pod"))
}

func isNamespaced(gvk schema.GroupVersionKind) bool {
	switch gvk.Kind {
	case "Namespace", "Node", "ClusterRole", "ClusterRoleBinding", "CustomResourceDefinition", "GatewayClass", "PersistentVolume", "StorageClass", "PriorityClass":
		return false
	}
	return true
}

// collect adds a typed object to the builder's inputs and to the checks'
// views; workloads' pod templates become pods with placeholder addresses.
func (a *analysis) collect(in *controlplane.Inputs, obj runtime.Object, ip *netip.Addr) error {
	addTemplate := func(meta metav1.ObjectMeta, tpl corev1.PodTemplateSpec) error {
		pod := &corev1.Pod{ObjectMeta: tpl.ObjectMeta, Spec: tpl.Spec}
		pod.Namespace, pod.Name = meta.Namespace, meta.Name+"-pod"
		pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
		*ip = ip.Next()
		a.pods = append(a.pods, pod)
		return in.Add(pod)
	}
	if o, ok := obj.(*corev1.Pod); ok {
		if o.Status.PodIP == "" {
			if a.opts.AssumeProfile == "live" {
				return nil // not running yet: nothing reaches it
			}
			return addTemplate(o.ObjectMeta, corev1.PodTemplateSpec{ObjectMeta: o.ObjectMeta, Spec: o.Spec})
		}
		a.pods = append(a.pods, o)
		return in.Add(o)
	}
	if meta, tpl, ok := podTemplate(obj); ok {
		return addTemplate(meta, tpl)
	}
	switch o := obj.(type) {
	case *corev1.Namespace:
		a.nsLabels[o.Name] = o.Labels
	case *securityv1.PeerAuthentication:
		a.peerAuth = append(a.peerAuth, peerAuthView{"PeerAuthentication", o.Namespace, o.Name, o.Spec.GetSelector().GetMatchLabels()})
	case *securityv1beta1.PeerAuthentication:
		a.peerAuth = append(a.peerAuth, peerAuthView{"PeerAuthentication", o.Namespace, o.Name, o.Spec.GetSelector().GetMatchLabels()})
	case *securityv1.RequestAuthentication:
		if sel := o.Spec.GetSelector().GetMatchLabels(); len(sel) > 0 {
			a.reqAuth = append(a.reqAuth, selectorView{o.Namespace, o.Name, sel})
		}
	case *securityv1beta1.RequestAuthentication:
		if sel := o.Spec.GetSelector().GetMatchLabels(); len(sel) > 0 {
			a.reqAuth = append(a.reqAuth, selectorView{o.Namespace, o.Name, sel})
		}
	case *networkingv1.Gateway:
		a.istioGws = append(a.istioGws, selectorView{o.Namespace, o.Name, o.Spec.GetSelector()})
	case *networkingv1beta1.Gateway:
		a.istioGws = append(a.istioGws, selectorView{o.Namespace, o.Name, o.Spec.GetSelector()})
	case *networkingv1alpha3.Gateway:
		a.istioGws = append(a.istioGws, selectorView{o.Namespace, o.Name, o.Spec.GetSelector()})
	}
	// An error means a kind the builder does not read: the checks above are all it gets.
	_ = in.Add(obj)
	return nil
}

// podTemplate returns the pod template of a workload controller.
func podTemplate(obj runtime.Object) (metav1.ObjectMeta, corev1.PodTemplateSpec, bool) {
	switch o := obj.(type) {
	case *appsv1.Deployment:
		return o.ObjectMeta, o.Spec.Template, true
	case *appsv1.StatefulSet:
		return o.ObjectMeta, o.Spec.Template, true
	case *appsv1.DaemonSet:
		return o.ObjectMeta, o.Spec.Template, true
	case *appsv1.ReplicaSet:
		return o.ObjectMeta, o.Spec.Template, true
	case *batchv1.Job:
		return o.ObjectMeta, o.Spec.Template, true
	}
	return metav1.ObjectMeta{}, corev1.PodTemplateSpec{}, false
}

// selects reports whether some pod in ns ("" means any) has all labels of sel.
func (a *analysis) selects(ns string, sel map[string]string) bool {
	for _, p := range a.pods {
		if ns != "" && p.Namespace != ns {
			continue
		}
		if labels.SelectorFromSet(sel).Matches(labels.Set(p.Labels)) {
			return true
		}
	}
	return false
}

// checkPeerAuthentications finds PeerAuthentications that compete for the
// same workloads: Istio then applies the oldest and ignores the others.
func (a *analysis) checkPeerAuthentications() {
	groups := map[string][]peerAuthView{}
	for _, p := range a.peerAuth {
		k := p.ns + "|" + labels.SelectorFromSet(p.selector).String()
		groups[k] = append(groups[k], p)
	}
	keys := make([]string, 0, len(groups))
	for k := range groups {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		g := groups[k]
		if len(g) < 2 {
			continue
		}
		names := make([]string, len(g))
		for i, p := range g {
			names[i] = p.name
		}
		sort.Strings(names)
		scope := "namespace-wide (no selector)"
		if len(g[0].selector) > 0 {
			scope = "with selector " + labels.SelectorFromSet(g[0].selector).String()
		}
		if len(g[0].selector) == 0 && g[0].ns == a.opts.RootNamespace {
			scope = "mesh-wide (root namespace " + a.opts.RootNamespace + ", no selector)"
		}
		for _, p := range g {
			a.add(SeverityError, "conflicting-peerauthentication", "PeerAuthentication", p.ns, p.name,
				"%d PeerAuthentications are %s in namespace %s (%s): only the oldest applies; merge them into one", len(g), scope, p.ns, strings.Join(names, ", "))
		}
	}
}

// checkSelectors finds RequestAuthentications that select no pod and Istio
// Gateways whose selector matches no gateway deployment.
func (a *analysis) checkSelectors() {
	for _, r := range a.reqAuth {
		ns := r.ns
		if ns == a.opts.RootNamespace {
			ns = ""
		}
		if !a.selects(ns, r.selector) {
			a.add(SeverityWarning, "policy-selects-nothing", "RequestAuthentication", r.ns, r.name,
				"selector %s matches no pod in namespace %s: check the labels, or remove the selector to apply it namespace-wide", labels.SelectorFromSet(r.selector), r.ns)
		}
	}
	for _, g := range a.istioGws {
		if len(g.selector) == 0 {
			a.add(SeverityError, "gateway-no-deployment", "Gateway.networking.istio.io", g.ns, g.name,
				"selector is empty: set it to the labels of a gateway deployment, e.g. istio: ingressgateway")
			continue
		}
		if !a.selects("", g.selector) {
			hint := "install one with meshctl install (the default profile has istio: ingressgateway)"
			if a.opts.AssumeProfile == "live" {
				hint = "install one with meshctl install, or fix the selector"
			}
			a.add(SeverityError, "gateway-no-deployment", "Gateway.networking.istio.io", g.ns, g.name,
				"selector %s matches no gateway deployment: %s", labels.SelectorFromSet(g.selector), hint)
		}
	}
}

// checkNodeAgents finds running pods that are enrolled (by their own or
// their namespace's istio.io/dataplane-mode label) on a node where no ready
// node agent runs: their traffic is not in the mesh. Pods from manifests are
// not scheduled, so this only finds anything in live mode.
func (a *analysis) checkNodeAgents() {
	agents := map[string]bool{}
	for _, p := range a.pods {
		if p.Labels["app.kubernetes.io/name"] == "meshlet-node-agent" && p.Spec.NodeName != "" && podIsReady(p) {
			agents[p.Spec.NodeName] = true
		}
	}
	for _, p := range a.pods {
		if p.Spec.NodeName == "" || p.Spec.HostNetwork {
			continue
		}
		mode := p.Labels[LabelDataplaneMode]
		if mode == "" {
			mode = a.nsLabels[p.Namespace][LabelDataplaneMode]
		}
		if mode != "ambient" || agents[p.Spec.NodeName] {
			continue
		}
		a.add(SeverityError, "no-node-agent", "Pod", p.Namespace, p.Name,
			"enrolled (istio.io/dataplane-mode=ambient) but no ready meshlet node agent runs on node %s, so its traffic bypasses the mesh: check kubectl -n %s get pods -o wide -l app.kubernetes.io/name=meshlet-node-agent (taints, resources), or run meshctl install",
			p.Spec.NodeName, a.opts.MeshNamespace)
	}
}

func podIsReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}
