package cli

import (
	"fmt"
	"runtime/debug"
	"strings"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// Version is meshctl's version, set with -ldflags "-X github.com/meshlet/meshlet/pkg/cli.Version=v1.2.3".
var Version = ""

// clientVersion returns Version, else the module version Go recorded, else "devel".
func clientVersion() string {
	if Version != "" {
		return Version
	}
	if bi, ok := debug.ReadBuildInfo(); ok && bi.Main.Version != "" && bi.Main.Version != "(devel)" {
		return bi.Main.Version
	}
	return "devel"
}

// imageTag returns the tag of an image reference, or "latest" when it has none.
func imageTag(image string) string {
	if i := strings.LastIndex(image, "@"); i >= 0 {
		return image[i+1:]
	}
	if i := strings.LastIndex(image, ":"); i > strings.LastIndex(image, "/") {
		return image[i+1:]
	}
	return "latest"
}

func newVersionCommand(s Streams, g *globalOptions) *cobra.Command {
	var clientOnly bool
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the versions of meshctl, meshd and the node agents",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			fmt.Fprintf(s.Out, "client version: %s\n", clientVersion())
			if clientOnly {
				return nil
			}
			c, err := g.clients()
			if err != nil {
				return err
			}
			ctx, ns := ctxOf(cmd), g.meshNamespace
			d, err := c.kube.AppsV1().Deployments(ns).Get(ctx, "meshd", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("meshd not found in namespace %s: is it installed? run meshctl install (or pass --mesh-namespace)", ns)
			}
			if err != nil {
				return fmt.Errorf("meshd not reachable in namespace %s: %w (is the cluster reachable? check --context)", ns, err)
			}
			fmt.Fprintf(s.Out, "meshd version: %s (%d/%d replicas ready)\n", imageTag(d.Spec.Template.Spec.Containers[0].Image), d.Status.ReadyReplicas, d.Status.Replicas)
			ds, err := c.kube.AppsV1().DaemonSets(ns).Get(ctx, "meshlet-node-agent", metav1.GetOptions{})
			if apierrors.IsNotFound(err) {
				return fmt.Errorf("node agent DaemonSet not found in namespace %s: rerun meshctl install", ns)
			}
			if err != nil {
				return fmt.Errorf("read the node agent DaemonSet in %s: %w", ns, err)
			}
			_, err = fmt.Fprintf(s.Out, "node agent version: %s (%d/%d nodes ready)\n", imageTag(ds.Spec.Template.Spec.Containers[0].Image), ds.Status.NumberReady, ds.Status.DesiredNumberScheduled)
			return err
		},
	}
	cmd.Flags().BoolVar(&clientOnly, "client", false, "print only meshctl's version; contact no cluster")
	return cmd
}
