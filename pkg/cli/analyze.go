package cli

import "github.com/spf13/cobra"

func newAnalyzeCommand(s Streams, g *globalOptions) *cobra.Command { return &cobra.Command{Use: "analyze"} }
