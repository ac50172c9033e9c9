package cli

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

// profileLabel records on every object meshctl applies the profile it was
// rendered with (see the chart's _helpers.tpl).
const profileLabel = "meshlet.dev/profile"

func newUpgradeCommand(s Streams, g *globalOptions) *cobra.Command {
	o := &installOptions{}
	cmd := &cobra.Command{
		Use:   "upgrade",
		Short: "Upgrade meshlet in place, keeping the installed profile",
		Long: "Renders the chart of this meshctl for the profile meshlet is installed with (or\n" +
			"--profile), with your values, shows the plan and applies it. The node agents roll\n" +
			"one node at a time, the new agent taking over each node's listeners before the old\n" +
			"one drains, and meshd rolls one replica at a time, so certificates keep being issued.\n" +
			"The Gateway API CRDs keep the channel the cluster has unless --gateway-api-channel.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			o.render.Namespace = g.meshNamespace
			ctx := cmd.Context()
			if ctx == nil {
				ctx = context.Background()
			}
			requested, err := o.requestedGatewayAPIChannel()
			if err != nil {
				return err
			}
			if !cmd.Flags().Changed("profile") {
				p, err := installedProfile(ctx, g)
				if err != nil {
					return err
				}
				o.render.Profile = p
			}
			// The plan shows the channel that will be installed: the
			// one asked for, else the one the cluster has.
			c, err := g.clients()
			if err != nil {
				return err
			}
			ch, err := o.clusterGatewayAPIChannel(ctx, c.dynamic, requested)
			if err != nil {
				return err
			}
			o.render.GatewayAPIChannel = ch
			return runInstall(ctx, s, g, o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.render.Profile, "profile", "", "configuration profile; default: the one meshlet is installed with")
	f.StringArrayVarP(&o.render.ValueFiles, "values", "f", nil, "values file (repeatable; later files win)")
	f.StringArrayVar(&o.render.Set, "set", nil, "set a value, e.g. --set logging.level=debug (repeatable; wins over -f)")
	f.BoolVarP(&o.yes, "yes", "y", false, "apply without asking")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the plan and stop; nothing is sent to the cluster")
	f.StringVarP(&o.output, "output", "o", "", "with --dry-run: yaml prints the rendered manifest")
	f.DurationVar(&o.timeout, "timeout", 10*time.Minute, "how long to wait for the rollout")
	addGatewayAPIChannelFlags(f, o)
	return cmd
}

// installedProfile reads the profile meshlet was installed with from its
// meshd Deployment, or says how to install it.
func installedProfile(ctx context.Context, g *globalOptions) (string, error) {
	c, err := g.clients()
	if err != nil {
		return "", err
	}
	d, err := c.kube.AppsV1().Deployments(g.meshNamespace).Get(ctx, "meshd", metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return "", fmt.Errorf("meshlet is not installed in namespace %s (no meshd Deployment): run meshctl install, or pass --mesh-namespace", g.meshNamespace)
	}
	if err != nil {
		return "", fmt.Errorf("read the installed meshd Deployment in %s: %w", g.meshNamespace, err)
	}
	p := d.Labels[profileLabel]
	if p == "" {
		return "", fmt.Errorf("meshd in %s carries no %s label, so its profile is unknown: pass --profile", g.meshNamespace, profileLabel)
	}
	return p, nil
}
