// Command meshctl installs, operates and inspects the meshlet service mesh.
// It holds no logic of its own: the commands live in package pkg/cli.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/meshlet/meshlet/pkg/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := cli.NewRootCommand(cli.StdStreams()).ExecuteContext(ctx)
	stop()
	if err != nil {
		var ex cli.ExitError
		if errors.As(err, &ex) {
			if ex.Err != nil {
				fmt.Fprintln(os.Stderr, "meshctl:", ex.Err)
			}
			os.Exit(ex.Code)
		}
		fmt.Fprintln(os.Stderr, "meshctl:", err)
		os.Exit(1)
	}
}
