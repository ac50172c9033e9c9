package cli

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/meshlet/meshlet/deploy/crds"
)

// FieldManager is the server-side apply field manager of everything meshctl applies.
const FieldManager = "meshctl"

// ErrNotConfirmed is returned when the user did not confirm a change.
var ErrNotConfirmed = errors.New("not confirmed")

// installOptions are install's flags.
type installOptions struct {
	// render selects profile, values files and --set overrides.
	render RenderOptions
	// yes skips the confirmation.
	yes bool
	// dryRun prints the plan (and with -o yaml the manifest) and stops.
	dryRun bool
	// output is "" or "yaml": with --dry-run, print the rendered manifest.
	output string
	// timeout bounds the wait for the rollout.
	timeout time.Duration
	// gatewayAPIChannel is --gateway-api-channel: "" (keep the cluster's,
	// else standard), standard or experimental.
	gatewayAPIChannel string
	// forceGatewayAPIChannel allows standard over an installed experimental channel.
	forceGatewayAPIChannel bool
}

func newInstallCommand(s Streams, g *globalOptions) *cobra.Command {
	o := &installOptions{}
	cmd := &cobra.Command{
		Use:   "install",
		Short: "Install or upgrade meshlet in the cluster",
		Long: "Renders the meshlet chart for a profile (minimal, default, demo) and your values,\n" +
			"shows the plan, asks for confirmation unless -y, applies it server-side and\n" +
			"waits until every component is ready. The Gateway API CRDs are its standard\n" +
			"channel, or with --gateway-api-channel experimental its experimental one; the\n" +
			"channel the cluster already has is kept unless the flag is given.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.render.Namespace = g.meshNamespace
			return runInstall(cmd.Context(), s, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.render.Profile, "profile", "default", "configuration profile: minimal, default or demo")
	f.StringArrayVarP(&o.render.ValueFiles, "values", "f", nil, "values file (repeatable; later files win)")
	f.StringArrayVar(&o.render.Set, "set", nil, "set a value, e.g. --set trustDomain=example.org (repeatable; wins over -f)")
	f.BoolVarP(&o.yes, "yes", "y", false, "apply without asking")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan and stop; nothing is sent to the cluster")
	f.StringVarP(&o.output, "output", "o", "", "with --dry-run: yaml prints the rendered manifest")
	f.DurationVar(&o.timeout, "timeout", 5*time.Minute, "how long to wait for the rollout")
	addGatewayAPIChannelFlags(f, o)
	return cmd
}

func runInstall(ctx context.Context, s Streams, g *globalOptions, o *installOptions) error {
	if o.output != "" && o.output != "yaml" {
		return fmt.Errorf("unknown output format %q: use -o yaml", o.output)
	}
	requested, err := o.requestedGatewayAPIChannel()
	if err != nil {
		return err
	}
	// Not given, the channel the cluster has is kept, which is only known
	// once meshctl talks to it (below; upgrade reads it before).
	channelNote := ""
	if requested != "" {
		o.render.GatewayAPIChannel = requested
	} else if o.render.GatewayAPIChannel == "" {
		channelNote = " (if the cluster has the experimental channel, it is kept)"
	}
	r, err := Render(o.render)
	if err != nil {
		return err
	}
	if o.dryRun && o.output == "yaml" {
		m, err := Manifest(r.Objects)
		if err != nil {
			return err
		}
		_, err = s.Out.Write(m)
		return err
	}
	if err := writePlan(s.Out, r, o.render, channelNote); err != nil {
		return err
	}
	if o.dryRun {
		_, err := fmt.Fprintln(s.Out, "Dry run: nothing was applied. Rerun without --dry-run to install.")
		return err
	}
	if err := confirm(s, "Install meshlet with this plan?", o.yes, "meshctl install -y"); err != nil {
		return err
	}
	c, err := g.clients()
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	if !o.render.SkipCRDs {
		ch, err := o.clusterGatewayAPIChannel(ctx, c.dynamic, requested)
		if err != nil {
			return err
		}
		if ch != channelOf(o.render) {
			fmt.Fprintf(s.ErrOut, "keeping the Gateway API %s channel CRDs the cluster has (choose with --gateway-api-channel)\n", ch)
			o.render.GatewayAPIChannel = ch
			if r, err = Render(o.render); err != nil {
				return err
			}
		}
	}
	if err := checkPluggedInCA(ctx, c, r); err != nil {
		return err
	}
	if err := checkOptionalCRDs(ctx, c, r); err != nil {
		return err
	}
	if err := applyAll(ctx, s.ErrOut, c, r.Objects); err != nil {
		return err
	}
	if err := prune(ctx, s.ErrOut, c, r); err != nil {
		return err
	}
	wctx, cancel := context.WithTimeout(ctx, o.timeout)
	defer cancel()
	if err := waitRollout(wctx, s.ErrOut, c, r.Objects); err != nil {
		return fmt.Errorf("meshlet did not become ready: %w (inspect with kubectl -n %s get pods and kubectl -n %s describe pods; raise --timeout on slow clusters)", err, r.ns(), r.ns())
	}
	fmt.Fprintf(s.Out, "✔ meshlet is installed (profile %s) in namespace %s.\n", profileOf(o.render), r.ns())
	fmt.Fprintln(s.Out, "Next steps:")
	fmt.Fprintln(s.Out, "  meshctl ambient enable <namespace>     enroll a namespace's pods in the mesh")
	fmt.Fprintln(s.Out, "  meshctl waypoint apply -n <namespace>  add L7 policy and routing for a namespace")
	fmt.Fprintln(s.Out, "  meshctl analyze -A                     check your mesh configuration")
	return nil
}

func (r *Rendered) ns() string {
	for _, o := range r.Objects {
		if o.GetKind() == "Namespace" {
			return o.GetName()
		}
	}
	return DefaultNamespace
}

// channelOf is the Gateway API channel o renders.
func channelOf(o RenderOptions) crds.Channel {
	if o.GatewayAPIChannel == "" {
		return crds.Standard
	}
	return o.GatewayAPIChannel
}

func profileOf(o RenderOptions) string {
	if o.Profile == "" {
		return "default"
	}
	return o.Profile
}

// confirm asks question on s unless yes. Without a terminal it refuses and
// names the non-interactive command, hint.
func confirm(s Streams, question string, yes bool, hint string) error {
	if yes {
		return nil
	}
	if s.IsTerminal == nil || !s.IsTerminal() {
		return fmt.Errorf("refusing to change the cluster without confirmation: stdin is not a terminal; rerun as %q to confirm, or add --dry-run to only see the plan", hint)
	}
	fmt.Fprintf(s.Out, "%s [y/N] ", question)
	line, err := bufio.NewReader(s.In).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("read confirmation: %w", err)
	}
	switch strings.ToLower(strings.TrimSpace(line)) {
	case "y", "yes":
		return nil
	}
	return fmt.Errorf("%w: nothing was changed (answer y, or pass -y)", ErrNotConfirmed)
}

// writePlan prints what install will create, grouped by kind, and the
// workloads' images. channelNote follows the Gateway API channel's name.
func writePlan(w io.Writer, r *Rendered, o RenderOptions, channelNote string) error {
	td, _ := r.Values["trustDomain"].(string)
	ca, _ := r.Values["ca"].(map[string]any)
	fmt.Fprintf(w, "Plan: install meshlet, profile %s, namespace %s\n", profileOf(o), r.ns())
	fmt.Fprintf(w, "  trust domain: %s\n", td)
	fmt.Fprintf(w, "  CA:           %v (Secret %v)\n", ca["mode"], ca["secretName"])
	if !o.SkipCRDs {
		fmt.Fprintf(w, "  Gateway API:  %s channel CRDs%s\n", channelOf(o), channelNote)
	}
	counts := map[string]int{}
	for _, obj := range r.Objects {
		counts[obj.GetKind()]++
	}
	kinds := make([]string, 0, len(counts))
	for k := range counts {
		kinds = append(kinds, k)
	}
	sort.Slice(kinds, func(i, j int) bool {
		ri, rj := kindRank(kinds[i]), kindRank(kinds[j])
		if ri != rj {
			return ri < rj
		}
		return kinds[i] < kinds[j]
	})
	fmt.Fprintln(w, "Objects (server-side apply, field manager "+FieldManager+"):")
	for _, k := range kinds {
		fmt.Fprintf(w, "  %-26s %d\n", k, counts[k])
	}
	fmt.Fprintln(w, "Components:")
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  NAME\tKIND\tREPLICAS\tIMAGE")
	for _, obj := range r.Objects {
		if obj.GetKind() != "Deployment" && obj.GetKind() != "DaemonSet" {
			continue
		}
		replicas := "1 per node"
		if obj.GetKind() == "Deployment" {
			n, _, _ := unstructured.NestedInt64(obj.Object, "spec", "replicas")
			replicas = fmt.Sprint(n)
		}
		cs, _, _ := unstructured.NestedSlice(obj.Object, "spec", "template", "spec", "containers")
		var images []string
		for _, c := range cs {
			if m, ok := c.(map[string]any); ok {
				images = append(images, fmt.Sprint(m["image"]))
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\t%s\n", obj.GetName(), obj.GetKind(), replicas, strings.Join(images, ","))
	}
	return tw.Flush()
}

func kindRank(k string) int {
	if r, ok := kindOrder[k]; ok {
		return r
	}
	return len(kindOrder)
}

// resourceFor maps an object to its dynamic client, namespaced or not.
func resourceFor(c *clients, obj *unstructured.Unstructured) (dynamic.ResourceInterface, error) {
	gvk := obj.GroupVersionKind()
	m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
	if err != nil {
		return nil, fmt.Errorf("find the API resource of %s: %w (are the CRDs installed? run meshctl install)", gvk, err)
	}
	if m.Scope.Name() == meta.RESTScopeNameNamespace {
		return c.dynamic.Resource(m.Resource).Namespace(obj.GetNamespace()), nil
	}
	return c.dynamic.Resource(m.Resource), nil
}

// applyAll server-side applies objs in order, waiting for CRDs to be
// established before the objects that may need them.
func applyAll(ctx context.Context, progress io.Writer, c *clients, objs []*unstructured.Unstructured) error {
	var crdNames []string
	crdsDone := false
	for _, obj := range objs {
		if obj.GetKind() != "CustomResourceDefinition" && !crdsDone {
			crdsDone = true
			if len(crdNames) > 0 {
				fmt.Fprintf(progress, "waiting for %d CRDs to be established…\n", len(crdNames))
				if err := waitCRDs(ctx, c, crdNames); err != nil {
					return err
				}
				c.mapper.Reset()
			}
		}
		if obj.GetKind() == "CustomResourceDefinition" {
			crdNames = append(crdNames, obj.GetName())
		}
		ri, err := resourceFor(c, obj)
		if err != nil {
			return err
		}
		data, err := json.Marshal(obj.Object)
		if err != nil {
			return fmt.Errorf("encode %s %s: %w", obj.GetKind(), obj.GetName(), err)
		}
		force := true
		if _, err := ri.Patch(ctx, obj.GetName(), types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: FieldManager, Force: &force}); err != nil {
			return fmt.Errorf("apply %s %s: %w (check your permissions with kubectl auth can-i create %s)", obj.GetKind(), obj.GetName(), err, strings.ToLower(obj.GetKind()))
		}
		fmt.Fprintf(progress, "applied %s %s\n", obj.GetKind(), qualifiedName(obj))
	}
	return nil
}

func qualifiedName(obj *unstructured.Unstructured) string {
	if obj.GetNamespace() == "" {
		return obj.GetName()
	}
	return obj.GetNamespace() + "/" + obj.GetName()
}

// poll calls done every interval until it returns true, an error, or ctx ends.
func poll(ctx context.Context, interval time.Duration, done func() (bool, error)) error {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		ok, err := done()
		if err != nil || ok {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-t.C:
		}
	}
}

func waitCRDs(ctx context.Context, c *clients, names []string) error {
	res := c.dynamic.Resource(crdResource)
	return poll(ctx, time.Second, func() (bool, error) {
		for _, n := range names {
			u, err := res.Get(ctx, n, metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return false, nil
			}
			if err != nil {
				return false, fmt.Errorf("read CRD %s: %w", n, err)
			}
			if !conditionTrue(u, "Established") {
				return false, nil
			}
		}
		return true, nil
	})
}

// conditionTrue reports whether status.conditions has typ with status True.
func conditionTrue(u *unstructured.Unstructured, typ string) bool {
	conds, _, _ := unstructured.NestedSlice(u.Object, "status", "conditions")
	for _, c := range conds {
		m, ok := c.(map[string]any)
		if ok && m["type"] == typ && m["status"] == "True" {
			return true
		}
	}
	return false
}

// waitRollout waits until every Deployment and DaemonSet in objs has all its
// replicas updated and ready, printing a line whenever progress changes.
func waitRollout(ctx context.Context, progress io.Writer, c *clients, objs []*unstructured.Unstructured) error {
	last := map[string]string{}
	return poll(ctx, 2*time.Second, func() (bool, error) {
		all := true
		for _, obj := range objs {
			var want, ready, updated int32
			switch obj.GetKind() {
			case "Deployment":
				d, err := c.kube.AppsV1().Deployments(obj.GetNamespace()).Get(ctx, obj.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, fmt.Errorf("read Deployment %s: %w", qualifiedName(obj), err)
				}
				want = 1
				if d.Spec.Replicas != nil {
					want = *d.Spec.Replicas
				}
				ready, updated = d.Status.ReadyReplicas, d.Status.UpdatedReplicas
				if d.Status.ObservedGeneration < d.Generation {
					updated = 0
				}
			case "DaemonSet":
				d, err := c.kube.AppsV1().DaemonSets(obj.GetNamespace()).Get(ctx, obj.GetName(), metav1.GetOptions{})
				if err != nil {
					return false, fmt.Errorf("read DaemonSet %s: %w", qualifiedName(obj), err)
				}
				want, ready, updated = d.Status.DesiredNumberScheduled, d.Status.NumberReady, d.Status.UpdatedNumberScheduled
				if d.Status.ObservedGeneration < d.Generation {
					updated = 0
				}
			default:
				continue
			}
			line := fmt.Sprintf("%s %s: %d/%d ready, %d/%d updated", obj.GetKind(), obj.GetName(), ready, want, updated, want)
			if last[obj.GetName()] != line {
				fmt.Fprintln(progress, line)
				last[obj.GetName()] = line
			}
			if ready < want || updated < want {
				all = false
			}
		}
		return all, nil
	})
}

// checkPluggedInCA refuses to install with ca.mode=pluggedIn when the CA
// Secret is missing: meshd would never become ready.
func checkPluggedInCA(ctx context.Context, c *clients, r *Rendered) error {
	ca, _ := r.Values["ca"].(map[string]any)
	if ca["mode"] != "pluggedIn" {
		return nil
	}
	name, _ := ca["secretName"].(string)
	_, err := c.kube.CoreV1().Secrets(r.ns()).Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("ca.mode=pluggedIn but Secret %s/%s does not exist: create it with kubectl create secret generic %s -n %s --from-file=ca-cert.pem --from-file=ca-key.pem --from-file=root-cert.pem --from-file=cert-chain.pem, or use --set ca.mode=selfSigned", r.ns(), name, name, r.ns())
	}
	if err != nil && !apierrors.IsForbidden(err) {
		return fmt.Errorf("read CA Secret %s/%s: %w (is the cluster reachable? check --context)", r.ns(), name, err)
	}
	return nil
}

// optionalCRD is a kind the chart renders only when a value asks for it,
// whose CRD another project installs: meshctl never applies that CRD.
type optionalCRD struct {
	// crd is the CustomResourceDefinition's name.
	crd string
	// from says what installs it.
	from string
	// value is the chart value that renders objects of the kind.
	value string
}

// optionalCRDs are the chart's kinds of optionalCRD. Checking them before
// the first apply, rather than letting the apply of such an object fail,
// leaves the cluster untouched and names the value to turn off.
var optionalCRDs = map[schema.GroupKind]optionalCRD{
	{Group: "monitoring.coreos.com", Kind: "PodMonitor"}: {crd: "podmonitors.monitoring.coreos.com", from: "the Prometheus Operator", value: "monitoring.podMonitor.enabled"},
}

// optionalValues is every chart value of optionalCRDs turned on: rendered
// with them, the demo profile holds every object an install can make.
var optionalValues = []string{"monitoring.podMonitor.enabled=true"}

// missingOptionalCRDs returns the message of each optional CRD the rendered
// objects need and the cluster lacks, and the names of those it has. A CRD
// it may not read is in neither (the apply will say).
func missingOptionalCRDs(ctx context.Context, c *clients, r *Rendered) (missing, present []string, err error) {
	seen := map[schema.GroupKind]bool{}
	for _, o := range r.Objects {
		gk := o.GroupVersionKind().GroupKind()
		oc, ok := optionalCRDs[gk]
		if !ok || seen[gk] {
			continue
		}
		seen[gk] = true
		_, err := c.dynamic.Resource(crdResource).Get(ctx, oc.crd, metav1.GetOptions{})
		switch {
		case apierrors.IsNotFound(err):
			missing = append(missing, fmt.Sprintf("%s is on, but the cluster has no %s CRD (%s, which %s installs): install that first, or set %s=false",
				oc.value, gk.Kind, oc.crd, oc.from, oc.value))
		case apierrors.IsForbidden(err):
		case err != nil:
			return nil, nil, fmt.Errorf("read CRD %s: %w (is the cluster reachable? check --context)", oc.crd, err)
		default:
			present = append(present, oc.crd)
		}
	}
	return missing, present, nil
}

// checkOptionalCRDs refuses to install objects whose CRD the cluster lacks
// (see optionalCRDs), before anything is applied.
func checkOptionalCRDs(ctx context.Context, c *clients, r *Rendered) error {
	missing, _, err := missingOptionalCRDs(ctx, c, r)
	if err != nil {
		return err
	}
	if len(missing) > 0 {
		return errors.New(strings.Join(missing, "; "))
	}
	return nil
}

// prune deletes the components an earlier install made that this one does
// not render (for example Prometheus when going from demo to default, or
// the PodMonitors once monitoring.podMonitor.enabled is off). The demo
// profile with every optional value renders every component, so it is the
// set to compare with.
func prune(ctx context.Context, progress io.Writer, c *clients, r *Rendered) error {
	all, err := Render(RenderOptions{Profile: "demo", Namespace: r.ns(), SkipCRDs: true, Set: optionalValues})
	if err != nil {
		return err
	}
	keep := map[string]bool{}
	for _, o := range r.Objects {
		keep[o.GetKind()+"/"+qualifiedName(o)] = true
	}
	for i := len(all.Objects) - 1; i >= 0; i-- {
		o := all.Objects[i]
		if keep[o.GetKind()+"/"+qualifiedName(o)] {
			continue
		}
		ri, err := resourceFor(c, o)
		if meta.IsNoMatchError(err) {
			continue // a kind the cluster does not serve (a PodMonitor without its CRD): none to delete
		}
		if err != nil {
			return err
		}
		err = ri.Delete(ctx, o.GetName(), metav1.DeleteOptions{})
		if apierrors.IsNotFound(err) {
			continue
		}
		if err != nil {
			return fmt.Errorf("remove %s %s, which this profile does not have: %w", o.GetKind(), qualifiedName(o), err)
		}
		fmt.Fprintf(progress, "removed %s %s (not in this profile)\n", o.GetKind(), qualifiedName(o))
	}
	return nil
}
