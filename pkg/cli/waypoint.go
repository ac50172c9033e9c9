package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"text/tabwriter"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
)

// WaypointClass is the GatewayClass of waypoints, as Istio names it.
const WaypointClass = "istio-waypoint"

var gatewayResource = schema.GroupVersionResource{Group: "gateway.networking.k8s.io", Version: "v1", Resource: "gateways"}

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
}

// WaypointGateway returns the Gateway API Gateway of a waypoint.
func WaypointGateway(ns, name, forTraffic string) (*unstructured.Unstructured, error) {
	switch forTraffic {
	case "service", "workload", "all", "none":
	default:
		return nil, fmt.Errorf("unknown --for %q: use service, workload, all or none", forTraffic)
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
			"gatewayClassName": WaypointClass,
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
	}
	cmd.PersistentFlags().StringVarP(&o.namespace, "namespace", "n", "default", "namespace of the waypoint")
	apply := &cobra.Command{
		Use:   "apply",
		Short: "Create or update a waypoint",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			gw, err := WaypointGateway(o.namespace, o.name, o.forTraffic)
			if err != nil {
				return err
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx := ctxOf(cmd)
			data, err := json.Marshal(gw.Object)
			if err != nil {
				return fmt.Errorf("encode waypoint: %w", err)
			}
			force := true
			_, err = c.dynamic.Resource(gatewayResource).Namespace(o.namespace).Patch(ctx, o.name, types.ApplyPatchType, data, metav1.PatchOptions{FieldManager: FieldManager, Force: &force})
			if err != nil {
				return fmt.Errorf("apply waypoint %s/%s: %w (are the Gateway API CRDs installed? run meshctl install)", o.namespace, o.name, err)
			}
			fmt.Fprintf(s.Out, "✔ waypoint %s/%s applied (for %s traffic).\n", o.namespace, o.name, o.forTraffic)
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
			err = c.dynamic.Resource(gatewayResource).Namespace(o.namespace).Delete(ctx, name, metav1.DeleteOptions{})
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
			tw := tabwriter.NewWriter(s.Out, 2, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAMESPACE\tNAME\tFOR\tPROGRAMMED")
			n := 0
			for i := range l.Items {
				gw := &l.Items[i]
				if cls, _, _ := unstructured.NestedString(gw.Object, "spec", "gatewayClassName"); cls != WaypointClass {
					continue
				}
				n++
				forT := gw.GetLabels()[LabelWaypointFor]
				if forT == "" {
					forT = "service"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%t\n", gw.GetNamespace(), gw.GetName(), forT, conditionTrue(gw, "Programmed"))
			}
			if err := tw.Flush(); err != nil {
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

func ctxOf(cmd *cobra.Command) context.Context {
	if ctx := cmd.Context(); ctx != nil {
		return ctx
	}
	return context.Background()
}
