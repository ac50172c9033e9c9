package cli

import (
	"fmt"
	"io"
	"os"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"k8s.io/client-go/discovery"
	"k8s.io/client-go/discovery/cached/memory"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/restmapper"
	"k8s.io/client-go/tools/clientcmd"
)

// Streams are where a command reads and writes.
type Streams struct {
	// In is read for confirmations.
	In io.Reader
	// Out receives results; ErrOut receives progress and warnings.
	Out, ErrOut io.Writer
	// IsTerminal reports whether In is an interactive terminal; nil means never.
	IsTerminal func() bool
}

// StdStreams returns the process's standard streams.
func StdStreams() Streams {
	return Streams{
		In: os.Stdin, Out: os.Stdout, ErrOut: os.Stderr,
		IsTerminal: func() bool { return term.IsTerminal(int(os.Stdin.Fd())) },
	}
}

// globalOptions are the flags every command shares, as kubectl names them.
type globalOptions struct {
	// kubeconfig is the kubeconfig file; "" means $KUBECONFIG or ~/.kube/config.
	kubeconfig string
	// context is the kubeconfig context; "" means the current one.
	context string
	// meshNamespace is where meshlet is (or will be) installed.
	meshNamespace string
}

// clients are the API clients of one command run.
type clients struct {
	config  *rest.Config
	kube    kubernetes.Interface
	dynamic dynamic.Interface
	mapper  *restmapper.DeferredDiscoveryRESTMapper
}

// nsUsage ends the help of a -n flag whose default is the context's.
const nsUsage = " (default: the kubeconfig context's namespace, else default)"

// namespace is ns when set, else the namespace of the kubeconfig's context
// (as kubectl and istioctl default to it), else "default".
func (g *globalOptions) namespace(ns string) string {
	if ns != "" {
		return ns
	}
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if g.kubeconfig != "" {
		rules.ExplicitPath = g.kubeconfig
	}
	n, _, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: g.context}).Namespace()
	if err != nil || n == "" {
		return "default"
	}
	return n
}

// clients builds API clients from the kubeconfig flags.
func (g *globalOptions) clients() (*clients, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if g.kubeconfig != "" {
		rules.ExplicitPath = g.kubeconfig
	}
	cfg, err := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, &clientcmd.ConfigOverrides{CurrentContext: g.context}).ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("load kubeconfig: %w (pass --kubeconfig and --context, or set KUBECONFIG)", err)
	}
	kube, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create Kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create dynamic client: %w", err)
	}
	disc, err := discovery.NewDiscoveryClientForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("create discovery client: %w", err)
	}
	return &clients{config: cfg, kube: kube, dynamic: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}, nil
}

// NewRootCommand returns meshctl's command tree writing to s.
func NewRootCommand(s Streams) *cobra.Command {
	g := &globalOptions{}
	root := &cobra.Command{
		Use:           "meshctl",
		Short:         "Install, operate and inspect the meshlet service mesh",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetIn(s.In)
	root.SetOut(s.Out)
	root.SetErr(s.ErrOut)
	pf := root.PersistentFlags()
	pf.StringVar(&g.kubeconfig, "kubeconfig", "", "path to the kubeconfig file (default $KUBECONFIG or ~/.kube/config)")
	pf.StringVar(&g.context, "context", "", "kubeconfig context to use (default the current context)")
	pf.StringVar(&g.meshNamespace, "mesh-namespace", DefaultNamespace, "namespace meshlet is installed in")
	root.AddCommand(
		newPrecheckCommand(s, g),
		newInstallCommand(s, g),
		newUpgradeCommand(s, g),
		newUninstallCommand(s, g),
		newAmbientCommand(s, g),
		newWaypointCommand(s, g),
		newAnalyzeCommand(s, g),
		newVersionCommand(s, g),
		newStatusCommand(s, g),
		newProxyStatusCommand(s, g),
		newDescribeCommand(s, g),
		newTopCommand(s, g),
		newAgentConfigCommand(s, g),
		newProxyConfigCommand(s, g),
		newTapCommand(s, g),
		newBugReportCommand(s, g),
	)
	return root
}
