package agent

import (
	"context"
	"io"
	"net"
	"net/netip"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/enroll"
	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestEnrollDataPath runs the real eBPF data path with the agent's
// enrollment: pod A dials pod B's app; A's connect is captured into A's
// outbound listener, leaves A (passthrough: no Mesh here), is steered by B's
// tc program into B's inbound listener, and reaches B's app with A's address
// as its source. Unenrolling A stops the capture at once.
func TestEnrollDataPath(t *testing.T) {
	dp := loadDatapath(t)

	na, nb := nstest.Pair(t, "mlna-ag", netip.MustParseAddr("198.19.4.11"), netip.MustParseAddr("198.19.4.12"))
	reg := prometheus.NewRegistry()
	ag, err := New(Options{NodeName: "node-1", Datapath: dp, Metrics: proxy.NewMetrics(reg), DrainTimeout: time.Second, Errorf: t.Logf})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		ag.Drain(ctx)
	})
	podA := enroll.Pod{UID: "uid-a", Namespace: "shop", Name: "cart-0", Workload: "cart", ServiceAccount: "cart",
		IPs: []netip.Addr{na.Addr}, Netns: na.Path, IfName: "mlna-aga"}
	podB := enroll.Pod{UID: "uid-b", Namespace: "shop", Name: "db-0", Workload: "db", ServiceAccount: "db",
		IPs: []netip.Addr{nb.Addr}, Netns: nb.Path, IfName: "mlna-agb"}
	ctx := context.Background()
	for _, p := range []enroll.Pod{podA, podB} {
		if err := ag.Enroll(ctx, p); err != nil {
			t.Fatalf("enroll %s: %v", p.Name, err)
		}
	}

	app := nstest.MustListen(t)(netns.Listen(nb.Path, nb.Addr.String()+":8080", netns.ListenOptions{}))
	sources := make(chan string, 4)
	go func() {
		for {
			c, err := app.Accept()
			if err != nil {
				return
			}
			sources <- addrOf(c.RemoteAddr())
			go func() { io.Copy(c, c); c.Close() }()
		}
	}()

	call := func() (peer string) {
		t.Helper()
		c, err := netns.Dial(ctx, na.Path, nb.Addr.String()+":8080", netns.DialOptions{Timeout: 5 * time.Second})
		if err != nil {
			t.Fatalf("pod A dials pod B: %v", err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		io.WriteString(c, "ping")
		c.(*net.TCPConn).CloseWrite()
		got, err := io.ReadAll(c)
		if err != nil || string(got) != "ping" {
			t.Fatalf("echo = %q, %v; want ping", got, err)
		}
		return addrOf(c.RemoteAddr())
	}

	if peer := call(); peer != nb.Addr.String() {
		t.Errorf("app in A sees peer %s; want the address it dialled, %s", peer, nb.Addr)
	}
	if src := <-sources; src != na.Addr.String() {
		t.Errorf("app in B sees client %s; want pod A %s", src, na.Addr)
	}
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "source"); got != 1 {
		t.Errorf("connections opened (reporter=source) = %v; want 1 (A's outbound was captured)", got)
	}
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "destination"); got != 1 {
		t.Errorf("connections opened (reporter=destination) = %v; want 1 (B's inbound was steered)", got)
	}

	// The kernel counters, exported per workload, saw A's captured connect.
	kreg := prometheus.NewRegistry()
	kreg.MustRegister(ag.NewKernelCollector(dp))
	if got := counter(t, kreg, "meshlet_kernel_redirect_decisions_total", "decision", "captured_tcp"); got < 1 {
		t.Errorf("kernel captured_tcp = %v; want at least 1", got)
	}
	if got := counter(t, kreg, "meshlet_kernel_inbound_decisions_total", "decision", "steered"); got < 1 {
		t.Errorf("kernel inbound steered = %v; want at least 1 (B's inbound)", got)
	}
	if got := testutil.MetricSum(t, kreg, "meshlet_kernel_tcp_connections_total", map[string]string{"workload": "cart", "namespace": "shop", "service_account": "cart", "event": "opened"}); got < 1 {
		t.Errorf("kernel connections opened for shop/cart = %v; want at least 1", got)
	}

	// An entry a previous agent left for a pod that is gone is dropped by
	// the reconcile after start; the live pods' entries stay.
	const staleCookie = 0xdead
	if err := dp.Enroll(staleCookie, ebpf.Pod{WorkloadID: 99, IPv4: netip.MustParseAddr("198.19.4.99")}); err != nil {
		t.Fatal(err)
	}
	res, err := ag.ReconcileDatapath()
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Contains(res.Removed, uint64(staleCookie)) {
		t.Errorf("ReconcileDatapath removed %v; want the stale cookie %#x", res.Removed, staleCookie)
	}
	enrolled, err := dp.Enrolled()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := enrolled[staleCookie]; ok || len(enrolled) != 2 {
		t.Errorf("data path enrolled after reconcile = %v; want exactly pods A and B", enrolled)
	}

	// A leaves the mesh: its next connect is not captured; B still steers.
	if err := ag.Unenroll(ctx, podA); err != nil {
		t.Fatal(err)
	}
	call()
	<-sources
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "source"); got != 1 {
		t.Errorf("connections opened (reporter=source) after unenrolling A = %v; want still 1", got)
	}
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "destination"); got != 2 {
		t.Errorf("connections opened (reporter=destination) = %v; want 2", got)
	}

	// B annotated bypass-inbound-capture (re-enrolled as the reconciler
	// does): A's plaintext goes straight to B's app, not through B's
	// proxy; without the annotation again, it is steered again.
	bypass := podB
	bypass.BypassInbound = true
	if err := ag.Enroll(ctx, bypass); err != nil {
		t.Fatal(err)
	}
	call()
	if src := <-sources; src != na.Addr.String() {
		t.Errorf("app in B sees client %s with inbound bypassed; want pod A %s", src, na.Addr)
	}
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "destination"); got != 2 {
		t.Errorf("connections opened (reporter=destination) with B's inbound bypassed = %v; want still 2", got)
	}
	if err := ag.Enroll(ctx, podB); err != nil {
		t.Fatal(err)
	}
	call()
	<-sources
	if got := counter(t, reg, "istio_tcp_connections_opened_total", "reporter", "destination"); got != 3 {
		t.Errorf("connections opened (reporter=destination) after B's bypass ended = %v; want 3", got)
	}
}

func addrOf(a net.Addr) string { return a.(*net.TCPAddr).AddrPort().Addr().Unmap().String() }

// counter sums a metric's series whose label has value, waiting up to 2s
// for it to move from 0 (the proxy counts on its own goroutines).
func counter(t *testing.T, reg *prometheus.Registry, name, label, value string) float64 {
	t.Helper()
	deadline := time.Now().Add(2 * time.Second)
	for {
		sum := testutil.MetricSum(t, reg, name, map[string]string{label: value})
		if sum > 0 || time.Now().After(deadline) {
			return sum
		}
		time.Sleep(20 * time.Millisecond)
	}
}
