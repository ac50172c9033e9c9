// Command lab runs the meshlet lab: a real multi-node Kubernetes cluster on
// this machine (see package github.com/meshlet/meshlet/test/lab).
//
//	lab up [--nodes N]   start the lab (or report the running one) and wait until it is ready
//	lab down             stop it and remove everything it made
//	lab status           processes and nodes
//	lab kubectl ARGS...  kubectl with the lab's admin kubeconfig
//
// It must not be pointed at anything but its own .lab directory.
package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/meshlet/meshlet/test/lab"
	"github.com/meshlet/meshlet/test/lab/kubelet"
)

func main() {
	// Descriptors inherited from whoever started us (a flock(1) lock, a
	// terminal's extras) must not live on in the lab's long-running
	// processes: a supervisor holding its caller's lock would hold it
	// until the lab goes down.
	for fd := 3; fd < 1024; fd++ {
		syscall.CloseOnExec(fd)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := root().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "lab:", err)
		os.Exit(1)
	}
}

func root() *cobra.Command {
	c := &cobra.Command{
		Use:           "lab",
		Short:         "a real multi-node Kubernetes cluster on this machine, for meshlet tests and demos",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	c.AddCommand(upCmd(), buildCmd(), downCmd(), statusCmd(), kubectlCmd(), superviseCmd(), kubeletCmd())
	return c
}

func self() (string, error) {
	p, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find the lab binary's own path: %w", err)
	}
	return filepath.EvalSymlinks(p)
}

func upCmd() *cobra.Command {
	var nodes, owner int
	c := &cobra.Command{
		Use:   "up",
		Short: "start the lab (idempotent) and wait until nodes and DNS are ready",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.FindLayout()
			if err != nil {
				return err
			}
			me, err := self()
			if err != nil {
				return err
			}
			return lab.Up(cmd.Context(), lab.UpOptions{Layout: l, Nodes: nodes, Self: me, Out: os.Stdout, Owner: owner})
		},
	}
	c.Flags().IntVar(&nodes, "nodes", 2, "number of nodes")
	c.Flags().IntVar(&owner, "owner-pid", 0, "take the lab down once this process ends (a test binary passes its own pid, so a run that panics leaves no lab behind)")
	return c
}

func buildCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "build",
		Short: "rebuild meshlet's binaries and the test apps into .lab/bin and refresh the image table (restart a pod to run the new binary)",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			l, err := lab.FindLayout()
			if err != nil {
				return err
			}
			return lab.Build(l, os.Stdout)
		},
	}
}

func downCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "down",
		Short: "stop the lab and remove every process, namespace, link, cgroup and mount it made",
		Args:  cobra.NoArgs,
		RunE: func(*cobra.Command, []string) error {
			l, err := lab.FindLayout()
			if err != nil {
				return err
			}
			return lab.Down(lab.DownOptions{Layout: l, Out: os.Stdout})
		},
	}
}

func statusCmd() *cobra.Command {
	return &cobra.Command{
		Use:   "status",
		Short: "show whether the lab runs, its processes and nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.FindLayout()
			if err != nil {
				return err
			}
			return lab.Status(cmd.Context(), l, os.Stdout)
		},
	}
}

func kubectlCmd() *cobra.Command {
	return &cobra.Command{
		Use:                "kubectl [args...]",
		Short:              "run the lab's kubectl with its admin kubeconfig",
		DisableFlagParsing: true,
		RunE: func(_ *cobra.Command, args []string) error {
			l, err := lab.FindLayout()
			if err != nil {
				return err
			}
			kubectl := l.Bin("kubectl")
			if _, err := os.Stat(kubectl); err != nil {
				return fmt.Errorf("%s is missing: run `lab up` first", kubectl)
			}
			argv := append([]string{"kubectl", "--kubeconfig", l.Kubeconfig()}, args...)
			return syscall.Exec(kubectl, argv, os.Environ())
		},
	}
}

func superviseCmd() *cobra.Command {
	var opt lab.SuperviseOptions
	c := &cobra.Command{
		Use:    "supervise",
		Short:  "run the lab's processes (started detached by `lab up`)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			l, err := lab.FindLayout()
			if err != nil {
				return err
			}
			me, err := self()
			if err != nil {
				return err
			}
			opt.Layout, opt.Self = l, me
			return lab.Supervise(cmd.Context(), opt)
		},
	}
	c.Flags().IntVar(&opt.Nodes, "nodes", 2, "number of nodes")
	c.Flags().StringVar(&opt.Tools, "tools", "", "directory of the upstream binaries")
	c.Flags().IntVar(&opt.Owner, "owner-pid", 0, "run `lab down` once this process ends")
	return c
}

func kubeletCmd() *cobra.Command {
	var cfgPath string
	c := &cobra.Command{
		Use:    "kubelet",
		Short:  "run the lab kubelet of one node (started by the supervisor inside the node's netns)",
		Hidden: true,
		Args:   cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			b, err := os.ReadFile(cfgPath)
			if err != nil {
				return fmt.Errorf("read kubelet config: %w", err)
			}
			var cfg kubelet.Config
			if err := json.Unmarshal(b, &cfg); err != nil {
				return fmt.Errorf("parse kubelet config %s: %w", cfgPath, err)
			}
			return kubelet.Run(cmd.Context(), cfg)
		},
	}
	c.Flags().StringVar(&cfgPath, "config", "", "path of the node's kubelet.json")
	_ = c.MarkFlagRequired("config")
	return c
}
