package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"time"

	"github.com/spf13/cobra"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"

	"github.com/meshlet/meshlet/deploy/crds"
	"github.com/meshlet/meshlet/pkg/crdwatch"
	"github.com/meshlet/meshlet/pkg/meshstatus"
	"github.com/meshlet/meshlet/pkg/model"
)

var crdResource = crdwatch.Resource

// uninstallOptions are uninstall's flags.
type uninstallOptions struct {
	// purge also removes the CRDs (and with them every mesh resource) and the namespace.
	purge bool
	// yes skips the confirmation.
	yes bool
}

func newUninstallCommand(s Streams, g *globalOptions) *cobra.Command {
	o := &uninstallOptions{}
	cmd := &cobra.Command{
		Use:   "uninstall",
		Short: "Remove meshlet from the cluster; your workloads keep running",
		Long: "Deletes everything meshctl install created. Your workloads and their Services\n" +
			"are not touched and keep serving, without the mesh. Without --purge the CRDs and\n" +
			"your mesh resources (VirtualServices, policies, …) and the namespace stay.\n" +
			"Running it again is harmless.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runUninstall(cmd.Context(), s, g, o)
		},
	}
	cmd.Flags().BoolVar(&o.purge, "purge", false, "also delete the CRDs, every mesh resource with them, and the namespace")
	cmd.Flags().BoolVarP(&o.yes, "yes", "y", false, "delete without asking")
	return cmd
}

func runUninstall(ctx context.Context, s Streams, g *globalOptions, o *uninstallOptions) error {
	// The demo profile with every optional value renders a superset of the
	// others' objects, and the Gateway API's experimental channel a
	// superset of the standard CRDs.
	r, err := Render(RenderOptions{Profile: "demo", Namespace: g.meshNamespace, SkipCRDs: !o.purge, GatewayAPIChannel: crds.Experimental, Set: optionalValues})
	if err != nil {
		return err
	}
	what := "meshlet's components in namespace " + g.meshNamespace
	if o.purge {
		what += ", the namespace, and the CRDs with every mesh resource"
	}
	fmt.Fprintf(s.Out, "Plan: delete %s. Your workloads keep running.\n", what)
	hint := "meshctl uninstall -y"
	if o.purge {
		hint = "meshctl uninstall --purge -y"
	}
	if err := confirm(s, "Uninstall meshlet?", o.yes, hint); err != nil {
		return err
	}
	c, err := g.clients()
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	deleted := 0
	policy := metav1.DeletePropagationForeground
	for i := len(r.Objects) - 1; i >= 0; i-- {
		obj := r.Objects[i]
		// Only meshlet's own namespace goes, and only with --purge: the
		// mesh root namespace holds the user's mesh-wide policies.
		if obj.GetKind() == "Namespace" && (!o.purge || obj.GetName() != g.meshNamespace) {
			continue
		}
		ri, err := resourceFor(c, obj)
		if meta.IsNoMatchError(err) {
			continue // its CRD is gone: nothing of this kind exists.
		}
		if err != nil {
			return err
		}
		err = ri.Delete(ctx, obj.GetName(), metav1.DeleteOptions{PropagationPolicy: &policy})
		switch {
		case apierrors.IsNotFound(err):
			continue
		case err != nil:
			return fmt.Errorf("delete %s %s: %w (check your permissions with kubectl auth can-i delete %s)", obj.GetKind(), qualifiedName(obj), err, obj.GetKind())
		}
		deleted++
		fmt.Fprintf(s.ErrOut, "deleted %s %s\n", obj.GetKind(), qualifiedName(obj))
	}
	// What meshd made at run time goes too, once no meshd is left to write
	// it again: the root certificate ConfigMaps it published in every
	// namespace (Istio's istio-ca-root-cert), its replicas' status reports
	// and its leader Lease. The CA Secret stays (a reinstall keeps the
	// mesh's root), as Istio keeps istio-ca-secret.
	n, err := deleteMeshdMade(ctx, c, g.meshNamespace, s.ErrOut)
	deleted += n
	if err != nil {
		// meshlet's components are gone; what meshd left is not, in part.
		return fmt.Errorf("meshlet's components are deleted (%d objects deleted), but some of what meshd made at run time is left: %w", deleted, err)
	}
	if deleted == 0 {
		fmt.Fprintln(s.Out, "✔ nothing of meshlet is left to delete; nothing to do.")
		return nil
	}
	fmt.Fprintf(s.Out, "✔ meshlet is uninstalled (%d objects deleted). Enrolled namespaces keep their istio.io/dataplane-mode label; remove it with meshctl ambient disable <namespace>.\n", deleted)
	return nil
}

// deleteMeshdMade waits (bounded) for meshd's and the node agents' pods to
// be gone, then deletes the istio-ca-root-cert ConfigMaps meshd made (label
// app.kubernetes.io/managed-by=meshd) in every namespace, its status
// ConfigMaps and leader Lease in meshNS, and the node agents' status
// annotation on pods (removeRedirectionAnnotations). One it cannot delete
// (no right to, say) does not stop the others: it returns how many it
// deleted and what it could not, each with the right to check.
func deleteMeshdMade(ctx context.Context, c *clients, meshNS string, progress io.Writer) (int, error) {
	deadline := time.Now().Add(90 * time.Second)
	for _, sel := range []string{meshdSelector, nodeAgentSelector} {
		for {
			pods, err := c.kube.CoreV1().Pods(meshNS).List(ctx, metav1.ListOptions{LabelSelector: sel})
			if err != nil || len(pods.Items) == 0 || time.Now().After(deadline) {
				break
			}
			select {
			case <-ctx.Done():
				return 0, ctx.Err()
			case <-time.After(time.Second):
			}
		}
	}
	n, err := removeRedirectionAnnotations(ctx, c, progress)
	errs := []error{err}
	var cms []corev1.ConfigMap
	if roots, err := c.kube.CoreV1().ConfigMaps("").List(ctx, metav1.ListOptions{LabelSelector: "app.kubernetes.io/managed-by=meshd", FieldSelector: "metadata.name=istio-ca-root-cert"}); err != nil {
		errs = append(errs, fmt.Errorf("list the mesh root ConfigMaps: %w (check your permissions with kubectl auth can-i list configmaps --all-namespaces)", err))
	} else {
		cms = roots.Items
	}
	if reports, err := c.kube.CoreV1().ConfigMaps(meshNS).List(ctx, metav1.ListOptions{LabelSelector: meshstatus.Label + "=true"}); err != nil {
		errs = append(errs, fmt.Errorf("list meshd's status reports in namespace %s: %w (check your permissions with kubectl auth can-i list configmaps -n %s)", meshNS, err, meshNS))
	} else {
		cms = append(cms, reports.Items...)
	}
	for _, cm := range cms {
		switch err := c.kube.CoreV1().ConfigMaps(cm.Namespace).Delete(ctx, cm.Name, metav1.DeleteOptions{}); {
		case err == nil:
			n++
			fmt.Fprintf(progress, "deleted ConfigMap %s/%s\n", cm.Namespace, cm.Name)
		case !apierrors.IsNotFound(err):
			errs = append(errs, fmt.Errorf("delete ConfigMap %s/%s: %w (check your permissions with kubectl auth can-i delete configmaps -n %s)", cm.Namespace, cm.Name, err, cm.Namespace))
		}
	}
	switch err := c.kube.CoordinationV1().Leases(meshNS).Delete(ctx, meshstatus.LeaderLease, metav1.DeleteOptions{}); {
	case err == nil:
		n++
		fmt.Fprintf(progress, "deleted Lease %s/%s\n", meshNS, meshstatus.LeaderLease)
	case !apierrors.IsNotFound(err):
		errs = append(errs, fmt.Errorf("delete Lease %s/%s: %w (check your permissions with kubectl auth can-i delete leases -n %s)", meshNS, meshstatus.LeaderLease, err, meshNS))
	}
	return n, errors.Join(errs...)
}

// removeRedirectionAnnotations removes the status annotation the node
// agents wrote on the pods they enrolled (ambient.istio.io/redirection:
// enabled), so that nothing reads a pod as in the mesh once the mesh is
// gone. The JSON patch tests the value first: a pod whose annotation
// changed in between (a user's "disabled") keeps it.
func removeRedirectionAnnotations(ctx context.Context, c *clients, progress io.Writer) (int, error) {
	patch := []byte(`[{"op":"test","path":"/metadata/annotations/ambient.istio.io~1redirection","value":"enabled"},` +
		`{"op":"remove","path":"/metadata/annotations/ambient.istio.io~1redirection"}]`)
	n := 0
	opts := metav1.ListOptions{Limit: 500}
	for {
		pods, err := c.kube.CoreV1().Pods("").List(ctx, opts)
		if err != nil {
			return n, fmt.Errorf("list pods for their %s annotation: %w", model.AnnotationRedirection, err)
		}
		for _, p := range pods.Items {
			if p.Annotations[model.AnnotationRedirection] != model.AnnotationRedirectionEnabled {
				continue
			}
			_, err := c.kube.CoreV1().Pods(p.Namespace).Patch(ctx, p.Name, types.JSONPatchType, patch, metav1.PatchOptions{})
			switch {
			case err == nil:
				n++
				fmt.Fprintf(progress, "removed annotation %s from pod %s/%s\n", model.AnnotationRedirection, p.Namespace, p.Name)
			case apierrors.IsNotFound(err), apierrors.IsInvalid(err), apierrors.IsBadRequest(err), apierrors.IsConflict(err):
				// Gone, or its annotation changed since the list.
			default:
				return n, fmt.Errorf("remove annotation %s from pod %s/%s: %w (check your permissions with kubectl auth can-i patch pods)", model.AnnotationRedirection, p.Namespace, p.Name, err)
			}
		}
		if pods.Continue == "" {
			return n, nil
		}
		opts.Continue = pods.Continue
	}
}
