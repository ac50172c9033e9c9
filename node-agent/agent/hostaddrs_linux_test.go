package agent

import (
	"context"
	"net/netip"
	"os/exec"
	"slices"
	"testing"
	"time"

	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/internal/nstest"
)

// probeSourceRecorder is the real data path, with each probe source set
// that was written to it reported on sets.
type probeSourceRecorder struct {
	*ebpf.Datapath
	sets chan []netip.Addr
}

func (r probeSourceRecorder) SetProbeSources(addrs []netip.Addr) error {
	err := r.Datapath.SetProbeSources(addrs)
	if err == nil {
		r.sets <- slices.Clone(addrs)
	}
	return err
}

// TestWatchHostAddrs: an address the node gains while the agent runs
// reaches the data path's probe sources, and ProbeExempt, without any pod
// being enrolled; one it loses leaves them; the watch stops with its
// context.
func TestWatchHostAddrs(t *testing.T) {
	dp := loadDatapath(t)
	node := nstest.Loopback(t, "mlna-hadr")
	ip := func(args ...string) {
		t.Helper()
		if out, err := exec.Command("ip", append([]string{"-n", node.Name}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("ip %v: %v\n%s", args, err, out)
		}
	}
	ip("link", "add", "mlhad0", "type", "veth", "peer", "name", "mlhad1") // no dummy module on every kernel
	ip("link", "set", "mlhad0", "up")
	ip("link", "set", "mlhad1", "up")

	rec := probeSourceRecorder{Datapath: dp, sets: make(chan []netip.Addr, 16)}
	ag, err := New(Options{NodeName: "node-1", Datapath: rec, Errorf: t.Logf,
		HostAddrs: func() []netip.Addr { t.Error("HostAddrs asked while WatchHostAddrs runs"); return nil }})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	stopped := make(chan error, 1)
	go func() { stopped <- ag.WatchHostAddrs(ctx, node.Path) }()
	defer func() {
		cancel()
		select {
		case err := <-stopped:
			if err != nil {
				t.Errorf("WatchHostAddrs: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Error("WatchHostAddrs still running 5s after its context ended")
		}
	}()

	// until waits for a probe source set that satisfies ok.
	until := func(what string, ok func([]netip.Addr) bool) {
		t.Helper()
		deadline := time.After(10 * time.Second)
		for {
			select {
			case got := <-rec.sets:
				if ok(got) {
					return
				}
			case <-deadline:
				t.Fatalf("no probe source set %s within 10s", what)
			}
		}
	}
	loop := netip.MustParseAddr("127.0.0.1")
	until("with the node's loopback address at start", func(a []netip.Addr) bool { return slices.Contains(a, loop) })

	added := netip.MustParseAddr("198.19.7.1")
	if slices.Contains(ag.nodeAddrs(), added) {
		t.Fatalf("%s a node address before it was added", added)
	}
	ip("addr", "add", added.String()+"/24", "dev", "mlhad0")
	until("with the added "+added.String(), func(a []netip.Addr) bool { return slices.Contains(a, added) && slices.Contains(a, loop) })
	if !slices.Contains(ag.nodeAddrs(), added) {
		t.Errorf("ProbeExempt's node addresses %v lack the added %s", ag.nodeAddrs(), added)
	}

	ip("addr", "del", added.String()+"/24", "dev", "mlhad0")
	until("without the removed "+added.String(), func(a []netip.Addr) bool { return !slices.Contains(a, added) && slices.Contains(a, loop) })
	if slices.Contains(ag.nodeAddrs(), added) {
		t.Errorf("ProbeExempt's node addresses %v still hold the removed %s", ag.nodeAddrs(), added)
	}
}
