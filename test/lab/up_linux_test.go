package lab

import (
	"context"
	"io"
	"os/exec"
	"strings"
	"testing"
	"time"
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

// TestWatchOwner: the supervisor's watch on the process a lab was started
// for says nothing while it runs and reports it gone once it has ended
// (here a sleep the test kills, as a panicking test binary ends).
func TestWatchOwner(t *testing.T) {
	cmd := exec.Command("sleep", "30")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	started, err := procStartTime(cmd.Process.Pid)
	if err != nil || started == "" {
		t.Fatalf("procStartTime(sleep) = %q, %v", started, err)
	}
	gone := make(chan struct{})
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go watchOwner(ctx, cmd.Process.Pid, started, 20*time.Millisecond, func() { close(gone) })
	select {
	case <-gone:
		t.Fatal("owner reported gone while it runs")
	case <-time.After(200 * time.Millisecond):
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	select {
	case <-gone:
	case <-time.After(5 * time.Second):
		t.Fatal("owner's end not reported")
	}
	if _, err := procStartTime(cmd.Process.Pid); err == nil {
		t.Errorf("procStartTime of an ended process = nil error")
	}
}
