package ebpf

import (
	"context"
	"errors"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/pkg/testutil"
)

func TestCheckKernel(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("feature probes load programs: needs root")
	}
	if err := CheckKernel(); err != nil {
		t.Fatalf("CheckKernel on this kernel: %v", err)
	}
	// The attach-type probe must be able to say no: sockops is no sock_addr hook.
	if err := haveAttachType(ebpf.CGroupSockAddr, ebpf.AttachCGroupSockOps); !errors.Is(err, ebpf.ErrNotSupported) {
		t.Errorf("haveAttachType(CGroupSockAddr, SockOps) = %v; want ErrNotSupported", err)
	}
}

// TestAdopt closes the first loader, checks capture goes on with no agent
// holding the data path, and adopts the pins with a second loader.
func TestAdopt(t *testing.T) {
	s := newSetup(t, Options{})
	pod := newNetns(t, "adopt", remoteIP+"/32")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	rec := Pod{WorkloadID: workload, IPv4: netip.MustParseAddr(podIP)}
	if err := s.dp.Enroll(cookie, rec); err != nil {
		t.Fatal(err)
	}
	outbound := accepted(t, listen(t, pod, "127.0.0.1:15001", agentMark))
	dst := remoteIP + ":8080"
	captured := func(dp *Datapath) {
		t.Helper()
		c, err := netns.Dial(context.Background(), pod, dst, netns.DialOptions{Timeout: 3 * time.Second})
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		srv := wait(t, outbound, "15001")
		if dp == nil {
			return
		}
		if got, err := dp.OriginalDst(srv); err != nil || got.String() != dst {
			t.Errorf("OriginalDst = %v, %v; want %s", got, err, dst)
		}
	}
	captured(s.dp)

	// Inbound steering on a pod interface, to survive the restart too.
	client, tcPod := vethPair(t, "adp", "198.19.2.1/24", "198.19.2.2/24")
	inbound := accepted(t, listen(t, tcPod, "0.0.0.0:15006", agentMark))
	if err := s.dp.AttachPodIngress(tcPod, "mlbpf-adpb", IngressOptions{}); err != nil {
		t.Fatal(err)
	}
	steered := func() {
		t.Helper()
		c, err := netns.Dial(context.Background(), client, "198.19.2.2:8080", netns.DialOptions{Timeout: 3 * time.Second})
		if err != nil {
			t.Fatalf("SYN to the pod's app port: %v", err)
		}
		c.Close()
		wait(t, inbound, "15006")
	}
	steered()

	opts := s.dp.opts
	if err := s.dp.Close(); err != nil {
		t.Fatal(err)
	}
	s.dp = nil
	captured(nil) // nobody holds the data path: the pins keep it working
	steered()

	if _, err := Adopt(Options{PinDir: filepath.Join(testutil.MountBPFFS(t), "meshlet"), CgroupPath: opts.CgroupPath}); !errors.Is(err, ErrNothingPinned) {
		t.Errorf("Adopt of an empty pin dir = %v; want ErrNothingPinned", err)
	}
	dp, err := Adopt(opts)
	if err != nil {
		t.Fatalf("Adopt: %v", err)
	}
	s.dp = dp
	got, err := dp.Enrolled()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[uint64]Pod{cookie: rec}, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("adopted enrolled pods (-want +got):\n%s", diff)
	}
	captured(dp)
	if err := dp.AttachPodIngress(tcPod, "mlbpf-adpb", IngressOptions{}); err != nil {
		t.Fatalf("AttachPodIngress after adoption: %v", err)
	}
	steered()
	if n := countLinks(t, s.cgroup); n != 10 {
		t.Errorf("%d programs attached to the cgroup after adoption; want 10 (one per hook, none doubled)", n)
	}
}

// countLinks counts the bpf links attached to a cgroup.
func countLinks(t *testing.T, cg string) int {
	t.Helper()
	id, err := cgroupID(cg)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	var it link.Iterator
	defer it.Close()
	for it.Next() {
		info, err := it.Link.Info()
		if err != nil {
			continue // gone meanwhile
		}
		if c := info.Cgroup(); c != nil && c.CgroupId == id {
			n++
		}
	}
	if err := it.Err(); err != nil {
		t.Fatal(err)
	}
	return n
}

func TestReconcile(t *testing.T) {
	s := newSetup(t, Options{})
	ip := netip.MustParseAddr
	pod := newNetns(t, "recon", remoteIP+"/32")
	live, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	// An open captured connection in the pod that goes away.
	if err := s.dp.Enroll(live, Pod{WorkloadID: 1, IPv4: ip("198.19.1.20")}); err != nil {
		t.Fatal(err)
	}
	outbound := accepted(t, listen(t, pod, "127.0.0.1:15001", agentMark))
	c, err := netns.Dial(context.Background(), pod, remoteIP+":8080", netns.DialOptions{Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	srv := wait(t, outbound, "15001")
	if _, err := s.dp.OriginalDst(srv); err != nil {
		t.Fatal(err)
	}

	for cookie, p := range map[uint64]Pod{
		1001: {WorkloadID: 2, IPv4: ip("198.19.1.21")},                      // IP reused below by another identity
		1002: {WorkloadID: 3, IPv4: ip("198.19.1.22")},                      // stays
		1003: {WorkloadID: 4, IPv4: ip("198.19.1.23"), Flags: NoCaptureDNS}, // record changes
	} {
		if err := s.dp.Enroll(cookie, p); err != nil {
			t.Fatal(err)
		}
	}
	desired := map[uint64]Pod{
		2001: {WorkloadID: 5, IPv4: ip("198.19.1.21")},
		1002: {WorkloadID: 3, IPv4: ip("198.19.1.22")},
		1003: {WorkloadID: 4, IPv4: ip("198.19.1.23")},
	}
	// A pod whose netns went away with the tc program still pinned.
	_, gone := vethPair(t, "gone", "198.19.2.1/24", "198.19.2.2/24")
	if err := s.dp.AttachPodIngress(gone, "mlbpf-goneb", IngressOptions{}); err != nil {
		t.Fatal(err)
	}
	mustRun(t, "ip", "netns", "del", "mlbpf-goneb")
	mustRun(t, "ip", "netns", "del", "mlbpf-gonea")
	eventually(t, "the kernel to destroy the gone pod's interface", func() bool {
		for _, e := range mustReadDir(t, s.pinDir) {
			if !strings.HasPrefix(e, ingressPinPrefix) {
				continue
			}
			l, err := link.LoadPinnedLink(filepath.Join(s.pinDir, e), nil)
			if err != nil {
				t.Fatal(err)
			}
			defer l.Close()
			info, err := l.Info()
			return err == nil && info.TCX() != nil && info.TCX().Ifindex == 0
		}
		return false
	})

	if _, err := s.dp.Reconcile(map[uint64]Pod{
		1: {IPv4: ip("198.19.1.30")}, 2: {IPv4: ip("198.19.1.30")},
	}); err == nil {
		t.Errorf("Reconcile with two pods on one IP succeeded")
	}
	host, err := ownNetnsCookie()
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(host, Pod{WorkloadID: 9}); err == nil {
		t.Errorf("Enroll of the agent's own netns succeeded")
	}
	if _, err := s.dp.Reconcile(map[uint64]Pod{host: {WorkloadID: 9}}); err == nil {
		t.Errorf("Reconcile with the agent's own netns succeeded")
	}
	res, err := s.dp.Reconcile(desired)
	if err != nil {
		t.Fatal(err)
	}
	for _, l := range [][]uint64{res.Removed, res.Upserted} {
		slices.Sort(l)
	}
	want := ReconcileResult{Removed: []uint64{1001, live}, Upserted: []uint64{1003, 2001}, RemovedConns: 1, RemovedIngress: 1}
	slices.Sort(want.Removed)
	if diff := cmp.Diff(want, res); diff != "" {
		t.Errorf("Reconcile result (-want +got):\n%s", diff)
	}
	got, err := s.dp.Enrolled()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(desired, got, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); diff != "" {
		t.Errorf("enrolled after Reconcile (-want +got):\n%s", diff)
	}
	for _, e := range mustReadDir(t, s.pinDir) {
		if strings.HasPrefix(e, ingressPinPrefix) {
			t.Errorf("ingress link pin %s of a gone pod left after Reconcile", e)
		}
	}
	if _, err := s.dp.OriginalDst(srv); !errors.Is(err, ErrNoOriginalDst) {
		t.Errorf("OriginalDst of a connection from an unenrolled pod = %v; want ErrNoOriginalDst", err)
	}
}

// TestUninstall checks that nothing is left: no pins, no programs on the
// cgroup, no capture.
func TestUninstall(t *testing.T) {
	s := newSetup(t, Options{})
	pod := newNetns(t, "uninst", remoteIP+"/32")
	cookie, err := NetnsCookie(pod)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.dp.Enroll(cookie, Pod{WorkloadID: workload}); err != nil {
		t.Fatal(err)
	}
	client, tcPod := vethPair(t, "uni", "198.19.2.1/24", "198.19.2.2/24")
	if err := s.dp.AttachPodIngress(tcPod, "mlbpf-unib", IngressOptions{}); err != nil {
		t.Fatal(err)
	}
	if n := countLinks(t, s.cgroup); n != 10 {
		t.Fatalf("%d programs on the cgroup; want 10", n)
	}
	inbound := accepted(t, listen(t, tcPod, "0.0.0.0:15006", agentMark))
	dialApp := func() error {
		c, err := netns.Dial(context.Background(), client, "198.19.2.2:8080", netns.DialOptions{Timeout: 3 * time.Second})
		if err == nil {
			c.Close()
		}
		return err
	}
	if err := dialApp(); err != nil {
		t.Fatalf("SYN to the pod's app port with ingress attached: %v", err)
	}
	wait(t, inbound, "15006")
	if err := s.dp.Uninstall(); err != nil {
		t.Fatalf("Uninstall: %v", err)
	}
	s.dp = nil
	if _, err := os.Stat(s.pinDir); !errors.Is(err, os.ErrNotExist) {
		entries, _ := os.ReadDir(s.pinDir)
		t.Errorf("pin dir still there after Uninstall (%v): %v", err, entries)
	}
	if n := countLinks(t, s.cgroup); n != 0 {
		t.Errorf("%d programs still on the cgroup after Uninstall", n)
	}
	if err := dialApp(); err == nil {
		t.Errorf("SYN to the pod's app port still steered to 15006 after Uninstall")
	}
	app := accepted(t, listen(t, pod, remoteIP+":8080", 0))
	c, err := netns.Dial(context.Background(), pod, remoteIP+":8080", netns.DialOptions{Timeout: 3 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	wait(t, app, "the app after Uninstall (no capture)")
}

func mustReadDir(t *testing.T, dir string) []string {
	t.Helper()
	entries, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	return names
}

// TestLoadFailureDetaches makes the last attach fail (something that is not
// a link is pinned where the sockops link goes) and checks that the failed
// Load left no program attached.
func TestLoadFailureDetaches(t *testing.T) {
	testutil.RequireRoot(t)
	pinDir := filepath.Join(testutil.MountBPFFS(t), "meshlet")
	cg := testutil.EnterCgroup(t, "mlbpf")
	if err := os.MkdirAll(pinDir, 0o700); err != nil {
		t.Fatal(err)
	}
	m, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	if err := m.Pin(filepath.Join(pinDir, linkPinPrefix+"sockops")); err != nil {
		t.Fatal(err)
	}
	dp, err := Load(Options{PinDir: pinDir, CgroupPath: cg})
	if err == nil {
		_ = dp.Uninstall()
		t.Fatal("Load over a bogus link pin succeeded")
	}
	if !strings.Contains(err.Error(), "link_sockops") {
		t.Errorf("Load error %q does not name the bad pin", err)
	}
	if n := countLinks(t, cg); n != 0 {
		t.Errorf("%d programs left attached to the cgroup after a failed Load", n)
	}
	for _, e := range mustReadDir(t, pinDir) {
		if strings.HasPrefix(e, linkPinPrefix) && e != linkPinPrefix+"sockops" {
			t.Errorf("link pin %s left after a failed Load", e)
		}
	}
	// Unpin the maps the failed Load created, so the bpffs unmounts clean.
	for _, e := range mustReadDir(t, pinDir) {
		_ = os.Remove(filepath.Join(pinDir, e))
	}
}

func TestPruneStats(t *testing.T) {
	s := newSetup(t, Options{})
	ncpu, err := ebpf.PossibleCPU()
	if err != nil {
		t.Fatal(err)
	}
	for _, wl := range []uint32{1, 2, 3} {
		vs := make([]sockopsMlStats, ncpu)
		vs[0].ConnsOpened = uint64(wl)
		if err := s.dp.maps.MlWorkloadStats.Put(wl, vs); err != nil {
			t.Fatal(err)
		}
	}
	n, err := s.dp.PruneStats(map[uint32]bool{2: true})
	if err != nil {
		t.Fatal(err)
	}
	got, err := s.dp.Stats()
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(map[uint32]Stats{2: {ConnsOpened: 2}}, got); n != 2 || diff != "" {
		t.Errorf("PruneStats removed %d (want 2); stats after (-want +got):\n%s", n, diff)
	}
}

// TestLoadReplacesIncompatibleMap pins a map of another layout where
// ml_tc_counts goes (as an older agent version might have): Load must
// replace it, and keep compatible maps with their data.
func TestLoadReplacesIncompatibleMap(t *testing.T) {
	s := newSetup(t, Options{})
	if err := s.dp.Enroll(1234, Pod{WorkloadID: 1}); err != nil {
		t.Fatal(err)
	}
	opts := s.dp.opts
	if err := s.dp.Close(); err != nil {
		t.Fatal(err)
	}
	s.dp = nil
	path := filepath.Join(opts.PinDir, "ml_tc_counts")
	if err := os.Remove(path); err != nil {
		t.Fatal(err)
	}
	old, err := ebpf.NewMap(&ebpf.MapSpec{Type: ebpf.PerCPUArray, KeySize: 4, ValueSize: 8, MaxEntries: 1})
	if err != nil {
		t.Fatal(err)
	}
	defer old.Close()
	if err := old.Pin(path); err != nil {
		t.Fatal(err)
	}
	dp, err := Adopt(opts)
	if err != nil {
		t.Fatalf("Adopt over an incompatible pinned map: %v", err)
	}
	s.dp = dp
	if _, err := dp.IngressStats(); err != nil {
		t.Errorf("IngressStats on the replaced map: %v", err)
	}
	got, err := dp.Enrolled()
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := got[1234]; !ok {
		t.Errorf("the compatible ml_enrolled lost its entry: %v", got)
	}
}
