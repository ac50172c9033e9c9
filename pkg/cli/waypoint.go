package cli

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/dynamic"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

// The GatewayClasses of waypoints, both served by meshd. The chart
// installs WaypointClass always and IstioWaypointClass only with
// gatewayClasses.istioNames (the name may be Istio's own class).
const (
	// WaypointClass is meshlet's name for the waypoint class.
	WaypointClass = "meshlet-waypoint"
	// IstioWaypointClass is Istio's name for it.
	IstioWaypointClass = "istio-waypoint"
)

var (
	gatewayResource      = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}
	gatewayClassResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gatewayclasses"}
)

// isWaypointClass reports whether Gateways of class are meshlet waypoints.
func isWaypointClass(class string) bool {
	return class == WaypointClass || class == IstioWaypointClass
}

// isWaypoint reports whether gw is a Gateway of a waypoint class.
func isWaypoint(gw *unstructured.Unstructured) bool {
	class, _, _ := unstructured.NestedString(gw.Object, "spec", "gatewayClassName")
	return isWaypointClass(class)
}

// pickWaypointClass is the class `waypoint apply` gives a waypoint when
// --gateway-class is not set: the class of the waypoint Gateway that is
// already there (existing, "" when there is none), so that applying again
// changes nothing; else Istio's name when the cluster has a GatewayClass
// istio-waypoint that is meshd's (istio and istioErr are the result of
// reading it), so that users coming from Istio keep its name; else
// meshlet's name, whose GatewayClass the chart always installs. Not being
// allowed to read GatewayClasses, or there being none of that name (or no
// GatewayClass CRD), is no error: meshlet's name is used.
func pickWaypointClass(existing string, istio *unstructured.Unstructured, istioErr error) (string, error) {
	if isWaypointClass(existing) {
		return existing, nil
	}
	switch {
	case apierrors.IsNotFound(istioErr) || apierrors.IsForbidden(istioErr):
		return WaypointClass, nil
	case istioErr != nil:
		return "", fmt.Errorf("read GatewayClass %s: %w (choose one with --gateway-class)", IstioWaypointClass, istioErr)
	}
	if c, _, _ := unstructured.NestedString(istio.Object, "spec", "controllerName"); c == string(controlplane.ControllerName) {
		return IstioWaypointClass, nil
	}
	return WaypointClass, nil
}

// existingGateway reads the Gateway ns/name that `waypoint apply` is about
// to write: nil when there is none, or when meshctl may not read it (it is
// then applied unseen, as delete deletes it unseen).
func existingGateway(ctx context.Context, dyn dynamic.Interface, ns, name string) (*unstructured.Unstructured, error) {
	gw, err := dyn.Resource(gatewayResource).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	switch {
	case err == nil:
		return gw, nil
	case apierrors.IsNotFound(err) || apierrors.IsForbidden(err):
		return nil, nil
	}
	return nil, fmt.Errorf("read Gateway %s/%s: %w", ns, name, err)
}

// checkOverwrite refuses to apply a waypoint over gw, the Gateway of the
// name `waypoint apply` writes (nil when there is none), when gw is not a
// waypoint: applying would turn an ingress Gateway, or another
// controller's, into a waypoint. A waypoint is updated (its class kept by
// pickWaypointClass).
func checkOverwrite(gw *unstructured.Unstructured) error {
	if gw == nil || isWaypoint(gw) {
		return nil
	}
	class, _, _ := unstructured.NestedString(gw.Object, "spec", "gatewayClassName")
	return fmt.Errorf("not applied: Gateway %s/%s is not a waypoint (GatewayClass %q) and applying would make it one; choose another --name, or delete that Gateway yourself (kubectl delete gateway %s -n %s) if it is no longer needed",
		gw.GetNamespace(), gw.GetName(), class, gw.GetName(), gw.GetNamespace())
}

// waypointClass reads what pickWaypointClass decides on besides the
// Gateway already there (existing, nil when there is none): GatewayClass
// istio-waypoint.
func waypointClass(ctx context.Context, dyn dynamic.Interface, existing *unstructured.Unstructured) (string, error) {
	var class string
	if existing != nil {
		class, _, _ = unstructured.NestedString(existing.Object, "spec", "gatewayClassName")
	}
	gc, err := dyn.Resource(gatewayClassResource).Get(ctx, IstioWaypointClass, metav1.GetOptions{})
	return pickWaypointClass(class, gc, err)
}

// waypointOptions are the waypoint commands' flags.
type waypointOptions struct {
	// namespace holds the waypoint.
	namespace string
	// name is the waypoint Gateway's name.
	name string
	// forTraffic is the istio.io/waypoint-for value: service, workload, all (or none).
	forTraffic string
	// enroll labels the namespace istio.io/use-waypoint=<name>.
	enroll bool
	// class is the waypoint's GatewayClass; "" picks one (waypointClass).
	class string
}

// checkWaypointFlags checks the --for and --gateway-class of `waypoint
// apply` ("" is a valid class: one is picked).
func checkWaypointFlags(forTraffic, class string) error {
	switch forTraffic {
	case "service", "workload", "all", "none":
	default:
		return fmt.Errorf("unknown --for %q: use service, workload, all or none", forTraffic)
	}
	if class != "" && !isWaypointClass(class) {
		return fmt.Errorf("unknown --gateway-class %q: use %s or %s", class, WaypointClass, IstioWaypointClass)
	}
	return nil
}

// WaypointGateway returns the Gateway API Gateway of a waypoint of the
// given GatewayClass (WaypointClass or IstioWaypointClass).
func WaypointGateway(ns, name, forTraffic, class string) (*unstructured.Unstructured, error) {
	if err := checkWaypointFlags(forTraffic, class); err != nil {
		return nil, err
	}
	if class == "" {
		return nil, errors.New("waypoint Gateway: no GatewayClass")
	}
	return &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "gateway.networking.k8s.io/v1",
		"kind":       "Gateway",
		"metadata": map[string]any{
			"name":      name,
			"namespace": ns,
			"labels":    map[string]any{LabelWaypointFor: forTraffic},
		},
		"spec": map[string]any{
			"gatewayClassName": class,
			"listeners": []any{map[string]any{
				"name":     "mesh",
				"port":     int64(15008),
				"protocol": "HBONE",
			}},
		},
	}}, nil
}

func newWaypointCommand(s Streams, g *globalOptions) *cobra.Command {
	o := &waypointOptions{}
	cmd := &cobra.Command{
		Use:   "waypoint",
		Short: "Manage waypoints, the L7 proxies of a namespace or service",
		PersistentPreRun: func(*cobra.Command, []string) {
			o.namespace = g.namespace(o.namespace)
		},
	}
	cmd.PersistentFlags().StringVarP(&o.namespace, "namespace", "n", "", "namespace of the waypoint"+nsUsage)
	apply := &cobra.Command{
		Use:   "apply",
		Short: "Create or update a waypoint",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkWaypointFlags(o.forTraffic, o.class); err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := ctxOf(cmd)
			existing, err := existingGateway(ctx, c.dynamic, o.namespace, o.name)
			if err != nil {
				return err
			}
			if err := checkOverwrite(existing); err != nil {
				return err
			}
			class := o.class
			if class == "" {
				if class, err = waypointClass(ctx, c.dynamic, existing); err != nil {
					return err
				}
			}
			gw, err := WaypointGateway(o.namespace, o.name, o.forTraffic, class)
			if err != nil {
				return err
			}
			data, err := json.Marshal(gw.Object)
			if err != nil {
				return fmt.Errorf("encode waypoint: %w", err)
			}
			force := true
			_, err = c.dynamic.Resource(gatewayResource).Namespace(o.namespace).Patch(ctx, o.name, types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: FieldManager, Force: &force})
			if err != nil {
				return fmt.Errorf("apply waypoint %s/%s: %w (are the Gateway API CRDs installed? run meshctl install)", o.namespace, o.name, err)
			}
			fmt.Fprintf(s.Out, "✔ waypoint %s/%s applied (for %s traffic, GatewayClass %s).\n", o.namespace, o.name, o.forTraffic, class)
			if o.enroll {
				if err := labelNamespace(ctx, g, o.namespace, map[string]any{LabelUseWaypoint: o.name}); err != nil {
					return err
				}
				fmt.Fprintf(s.Out, "✔ namespace %s uses waypoint %s.\n", o.namespace, o.name)
			} else {
				fmt.Fprintf(s.Out, "Traffic uses it once you label a namespace, service or pod %s=%s (or rerun with --enroll-namespace).\n", LabelUseWaypoint, o.name)
			}
			return nil
		},
	}
	apply.Flags().StringVar(&o.name, "name", "waypoint", "waypoint name")
	apply.Flags().StringVar(&o.forTraffic, "for", "service", "traffic the waypoint handles: service, workload, all or none")
	apply.Flags().BoolVar(&o.enroll, "enroll-namespace", false, "label the namespace to use this waypoint")
	apply.Flags().StringVar(&o.class, "gateway-class", "", "GatewayClass of the waypoint: "+WaypointClass+" or "+IstioWaypointClass+" (default: the existing waypoint's, else "+IstioWaypointClass+" if that GatewayClass is meshlet's, else "+WaypointClass+")")

	del := &cobra.Command{
		Use:   "delete [name]",
		Short: "Delete a waypoint (default name waypoint)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name := "waypoint"
			if len(args) == 1 {
				name = args[0]
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := ctxOf(cmd)
			gws := c.dynamic.Resource(gatewayResource).Namespace(o.namespace)
			// A Gateway of another class (an ingress gateway) is not
			// deleted; without the right to read it, it is deleted unseen.
			gw, err := gws.Get(ctx, name, metav1.GetOptions{})
			switch {
			case err == nil && !isWaypoint(gw):
				class, _, _ := unstructured.NestedString(gw.Object, "spec", "gatewayClassName")
				return fmt.Errorf("not deleted: Gateway %s/%s is not a waypoint (GatewayClass %q)", o.namespace, name, class)
			case err == nil:
				uid := gw.GetUID()
				err = gws.Delete(ctx, name, metav1.DeleteOptions{Preconditions: &metav1.Preconditions{UID: &uid}})
			case apierrors.IsForbidden(err):
				err = gws.Delete(ctx, name, metav1.DeleteOptions{})
			}
			if apierrors.IsNotFound(err) {
				fmt.Fprintf(s.Out, "waypoint %s/%s does not exist; nothing to do.\n", o.namespace, name)
				return nil
			}
			if err != nil {
				return fmt.Errorf("delete waypoint %s/%s: %w", o.namespace, name, err)
			}
			ns, err := c.kube.CoreV1().Namespaces().Get(ctx, o.namespace, metav1.GetOptions{})
			if err == nil && ns.Labels[LabelUseWaypoint] == name {
				if err := labelNamespace(ctx, g, o.namespace, map[string]any{LabelUseWaypoint: nil}); err != nil {
					return err
				}
			}
			_, err = fmt.Fprintf(s.Out, "✔ waypoint %s/%s deleted.\n", o.namespace, name)
			return err
		},
	}

	var allNS bool
	list := &cobra.Command{
		Use:   "list",
		Short: "List waypoints",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, err := g.clients()
			if err != nil {
				return err
			}
			ns := o.namespace
			if allNS {
				ns = ""
			}
			l, err := c.dynamic.Resource(gatewayResource).Namespace(ns).List(ctxOf(cmd), metav1.ListOptions{})
			if err != nil {
				return fmt.Errorf("list Gateways: %w (are the Gateway API CRDs installed? run meshctl install)", err)
			}
			n, err := printWaypoints(s.Out, l.Items)
			if err != nil {
				return err
			}
			if n == 0 {
				fmt.Fprintln(s.ErrOut, "no waypoints found; create one with meshctl waypoint apply -n <namespace>")
			}
			return nil
		},
	}
	list.Flags().BoolVarP(&allNS, "all-namespaces", "A", false, "list waypoints in every namespace")
	cmd.AddCommand(apply, del, list)
	return cmd
}

// printWaypoints writes the table of `waypoint list`: the Gateways among
// gws of either waypoint class. It returns how many it wrote.
func printWaypoints(w io.Writer, gws []unstructured.Unstructured) (int, error) {
	tw := tabwriter.NewWriter(w, 2, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NAMESPACE\tNAME\tCLASS\tFOR\tPROGRAMMED")
	n := 0
	for i := range gws {
		gw := &gws[i]
		if !isWaypoint(gw) {
			continue
		}
		n++
		class, _, _ := unstructured.NestedString(gw.Object, "spec", "gatewayClassName")
		forT := gw.GetLabels()[LabelWaypointFor]
		if forT == "" {
			forT = "service"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%t\n", gw.GetNamespace(), gw.GetName(), class, forT, conditionTrue(gw, "Programmed"))
	}
	return n, tw.Flush()
}

func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
