package cli

import (
	"context"
	"encoding/json"
	"fmt"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Labels meshctl reads and writes, as Istio names them.
const (
	LabelDataplaneMode = "istio.io/dataplane-mode"
	LabelUseWaypoint   = "istio.io/use-waypoint"
	LabelWaypointFor   = "istio.io/waypoint-for"
)

func newAmbientCommand(s Streams, g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "ambient",
		Short: "Enroll namespaces in the mesh or take them out",
	}
	cmd.AddCommand(&cobra.Command{
		Use:   "enable <namespace>",
		Short: "Enroll every pod of a namespace (label istio.io/dataplane-mode=ambient)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := labelNamespace(cmd.Context(), g, args[0], map[string]any{LabelDataplaneMode: "ambient"}); err != nil {
				return err
			}
			_, err := fmt.Fprintf(s.Out, "✔ namespace %s is enrolled: its pods' traffic now goes through the mesh (no restart needed).\n", args[0])
			return err
		},
	}, &cobra.Command{
		Use:   "disable <namespace>",
		Short: "Take a namespace's pods out of the mesh (remove the label)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := labelNamespace(cmd.Context(), g, args[0], map[string]any{LabelDataplaneMode: nil}); err != nil {
				return err
			}
			_, err := fmt.Fprintf(s.Out, "✔ namespace %s is no longer enrolled.\n", args[0])
			return err
		},
	})
	return cmd
}

// labelNamespace merge-patches labels onto namespace ns; a nil value removes the label.
func labelNamespace(ctx context.Context, g *globalOptions, ns string, labels map[string]any) error {
	c, err := g.clients()
	if err != nil {
		return err
	}
	if ctx == nil {
		ctx = context.Background()
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"labels": labels}})
	if err != nil {
		return fmt.Errorf("encode label patch: %w", err)
	}
	_, err = c.kube.CoreV1().Namespaces().Patch(ctx, ns, types.MergePatchType, patch, metav1.PatchOptions{FieldManager: FieldManager})
	if apierrors.IsNotFound(err) {
		return fmt.Errorf("namespace %s not found: create it with kubectl create namespace %s, or check --context", ns, ns)
	}
	if err != nil {
		return fmt.Errorf("label namespace %s: %w", ns, err)
	}
	return nil
}
