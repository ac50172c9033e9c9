package lab

import (
	"context"
	"io"
	"strings"
	"testing"
)

func TestUpRejectsBadNodeCounts(t *testing.T) {
	tests := []struct {
		name  string // test case
		nodes int    // --nodes
	}{
		{"negative", -1},
		{"too many", MaxNodes + 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			l := Layout{Dir: t.TempDir()}
			err := Up(context.Background(), UpOptions{Layout: l, Nodes: tt.nodes, Out: io.Discard})
			if err == nil || !strings.Contains(err.Error(), "--nodes") {
				t.Fatalf("Up(nodes=%d) = %v, want an error naming --nodes", tt.nodes, err)
			}
		})
	}
}
