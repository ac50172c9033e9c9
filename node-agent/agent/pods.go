package agent

import (
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"net"
	"net/netip"
	"os"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/enroll"
	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/proxy"
)

// Agent holds the enrolled pods' state.
type Agent struct {
	opts Options

	mu        sync.Mutex
	pods      map[string]*enrolledPod // by pod UID
	workloads map[string]uint32       // namespace/workload/sa → data path workload ID
	draining  bool
	probeSrc  []netip.Addr // the node's addresses, as last given to the data path
	// hostAddrs is the node's addresses as WatchHostAddrs last read them;
	// nil when it does not run (then Options.HostAddrs is asked each time).
	hostAddrs atomic.Pointer[[]netip.Addr]
	// local maps each enrolled pod's addresses to its proxy, for the
	// same-node path (proxy.Options.Local), read without a.mu: a
	// connection never waits for an enrollment in progress.
	local sync.Map // netip.Addr → *proxy.Proxy
}

type enrolledPod struct {
	pod    enroll.Pod
	cookie uint64
	rec    ebpf.Pod
	proxy  *proxy.Proxy
	dns    DNSServer // nil without a DNS proxy
}

// New checks opts and returns an Agent with nothing enrolled.
func New(opts Options) (*Agent, error) {
	if opts.NodeName == "" || opts.Datapath == nil {
		return nil, errors.New("agent: Options.NodeName and Datapath are required")
	}
	if opts.TrustDomain == "" {
		opts.TrustDomain = "cluster.local"
	}
	if opts.NetnsCookie == nil {
		opts.NetnsCookie = ebpf.NetnsCookie
	}
	if opts.AgentMark == 0 {
		opts.AgentMark = DefaultAgentMark
	}
	if opts.ReturnMark == 0 {
		opts.ReturnMark = DefaultReturnMark
	}
	if opts.ReturnTable == 0 {
		opts.ReturnTable = DefaultReturnTable
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	if opts.Errorf == nil {
		opts.Errorf = func(string, ...any) {}
	}
	if opts.HostAddrs == nil {
		opts.HostAddrs = interfaceAddrs
	}
	return &Agent{opts: opts, pods: map[string]*enrolledPod{}, workloads: map[string]uint32{}}, nil
}

// proxyPod is the proxy's view of an enrolled pod.
func (a *Agent) proxyPod(p enroll.Pod) proxy.Pod {
	return proxy.Pod{
		Workload: proxy.Workload{
			Namespace: p.Namespace, Name: p.Workload,
			Identity: fmt.Sprintf("spiffe://%s/ns/%s/sa/%s", a.opts.TrustDomain, p.Namespace, p.ServiceAccount),
		},
		UID: p.UID, Netns: p.Netns, IPs: p.IPs,
	}
}

// workloadID numbers (namespace, workload, service account) for the data
// path's per-workload counters. Called with a.mu held. The number is a hash
// of the three, so that an agent that restarts (and adopts the pinned
// counters) gives a workload the number its predecessor gave it and names
// the old counters right.
func (a *Agent) workloadID(p enroll.Pod) uint32 {
	k := p.Namespace + "/" + p.Workload + "/" + p.ServiceAccount
	id, ok := a.workloads[k]
	if !ok {
		id = stableWorkloadID(k, func(id uint32) bool {
			for other, oid := range a.workloads {
				if oid == id && other != k {
					return true
				}
			}
			return false
		})
		a.workloads[k] = id
	}
	return id
}

// stableWorkloadID is the FNV-1a hash of key, moved past 0 (no workload)
// and past numbers taken by other keys (a collision, rare: the next free
// number is used, which a restarted agent may assign differently).
func stableWorkloadID(key string, taken func(uint32) bool) uint32 {
	h := fnv.New32a()
	h.Write([]byte(key))
	id := h.Sum32()
	for id == 0 || taken(id) {
		id++
	}
	return id
}

// Enroll puts a pod in the mesh; see the package doc for the order.
func (a *Agent) Enroll(_ context.Context, p enroll.Pod) (err error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.draining {
		return errors.New("agent is shutting down")
	}
	if old, ok := a.pods[p.UID]; ok {
		a.unenrollLocked(old, 0)
	}
	o := a.opts
	cookie, err := o.NetnsCookie(p.Netns)
	if err != nil {
		return err
	}
	var undo []func()
	defer func() {
		if err != nil {
			for i := len(undo) - 1; i >= 0; i-- {
				undo[i]()
			}
		}
	}()
	// The DNS proxy first: the pod's proxy hands it DNS over TCP.
	var dns DNSServer
	if o.DNS != nil {
		if dns, err = o.DNS(p.Netns, p.Namespace); err != nil {
			return fmt.Errorf("start the DNS proxy: %w", err)
		}
		undo = append(undo, func() { dns.Close() })
	}
	pp := a.proxyPod(p)
	popts := proxy.Options{
		Pod: pp, Mark: o.AgentMark, ReturnMark: o.ReturnMark,
		OriginalDst: o.Datapath.OriginalDst, Metrics: o.Metrics, Tap: o.Tap, Errorf: o.Errorf,
		ProbeExempt: func(src netip.Addr, port uint16) bool {
			return slices.Contains(p.ProbePorts, port) && slices.Contains(a.nodeAddrs(), src)
		},
	}
	if m := o.Mesh; m != nil {
		popts.Resolve, popts.DialTunnel = m.Resolve, m.DialTunnel
		popts.Tunnel = func(h proxy.StreamHandler) (proxy.TunnelServer, error) {
			return m.TunnelServer(pp, h)
		}
		popts.PeerAuth, popts.Authorize, popts.PeerWorkload = m.PeerAuth, m.Authorize, m.PeerWorkload
		popts.Local = a.localProxy
	}
	if dns != nil {
		popts.DNS = dns.ServeTCP
	}
	px, err := proxy.Start(popts)
	if err != nil {
		return err
	}
	undo = append(undo, func() { px.Close() })
	if err := netns.PrepareReturnPath(p.Netns, netns.ReturnPath{Mark: o.ReturnMark, Table: o.ReturnTable}); err != nil {
		return err
	}
	// When a draining agent closes its listeners, connections still in their
	// accept queues move to the new agent's listeners of the same
	// SO_REUSEPORT group instead of being reset (Linux 5.14+; best effort).
	_ = netns.Do(p.Netns, func() error {
		return os.WriteFile("/proc/sys/net/ipv4/tcp_migrate_req", []byte("1"), 0o644)
	})
	ifname := ifName(p)
	if p.BypassInbound {
		// Istio's bypass-inbound-capture: inbound plaintext goes to the app
		// as it came (a steering program left by an earlier enrollment too).
		_ = o.Datapath.DetachPodIngress(p.Netns, ifname)
	} else {
		if err := o.Datapath.AttachPodIngress(p.Netns, ifname, ebpf.IngressOptions{}); err != nil {
			return fmt.Errorf("attach inbound steering: %w", err)
		}
		undo = append(undo, func() { _ = o.Datapath.DetachPodIngress(p.Netns, ifname) })
	}
	rec := ebpf.Pod{WorkloadID: a.workloadID(p), ProbePorts: p.ProbePorts}
	if len(p.ProbePorts) > 0 {
		a.syncProbeSourcesLocked()
	}
	if dns == nil {
		rec.Flags |= ebpf.NoCaptureDNS // no proxy: the pod's DNS goes where it was sent
	}
	for _, ip := range p.IPs {
		if ip.Is4() && !rec.IPv4.IsValid() {
			rec.IPv4 = ip
		} else if ip.Is6() && !rec.IPv6.IsValid() {
			rec.IPv6 = ip
		}
	}
	if err := o.Datapath.Enroll(cookie, rec); err != nil {
		return fmt.Errorf("start capture: %w", err)
	}
	a.pods[p.UID] = &enrolledPod{pod: p, cookie: cookie, rec: rec, proxy: px, dns: dns}
	for _, ip := range p.IPs {
		a.local.Store(ip.Unmap(), px)
	}
	return nil
}

// localProxy returns the proxy of the enrolled pod that owns addr, or nil.
func (a *Agent) localProxy(addr netip.Addr) *proxy.Proxy {
	if v, ok := a.local.Load(addr.Unmap()); ok {
		return v.(*proxy.Proxy)
	}
	return nil
}

// syncProbeSourcesLocked gives the data path the node's addresses, which
// kubelet's probes come from, when they changed (a pod's host-side veth may
// bring the address its probes use). Probes from elsewhere, or before this
// succeeds, go through the agent, which exempts them as well (ProbeExempt).
// a.mu held.
func (a *Agent) syncProbeSourcesLocked() {
	addrs := slices.Clone(a.nodeAddrs())
	slices.SortFunc(addrs, func(x, y netip.Addr) int { return x.Compare(y) })
	addrs = slices.Compact(addrs)
	if slices.Equal(addrs, a.probeSrc) {
		return
	}
	if err := a.opts.Datapath.SetProbeSources(addrs); err != nil {
		a.opts.Errorf("kubelet probes go through the agent: %v", err)
		return
	}
	a.probeSrc = addrs
}

// nodeAddrs returns the node's addresses: WatchHostAddrs's when it runs,
// else Options.HostAddrs's. The slice is not to be changed.
func (a *Agent) nodeAddrs() []netip.Addr {
	if p := a.hostAddrs.Load(); p != nil {
		return *p
	}
	return a.opts.HostAddrs()
}

// setHostAddrs takes the node's addresses as WatchHostAddrs read them and
// gives them to the data path if they changed.
func (a *Agent) setHostAddrs(addrs []netip.Addr) {
	a.hostAddrs.Store(&addrs)
	a.mu.Lock()
	defer a.mu.Unlock()
	a.syncProbeSourcesLocked()
}

// ReconcileDatapath makes the data path's enrolled set exactly the agent's:
// entries a previous agent left for pods that are gone, or for a pod IP now
// used by another pod, are removed. Run it once every running pod has been
// enrolled after a start.
func (a *Agent) ReconcileDatapath() (ebpf.ReconcileResult, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	desired := make(map[uint64]ebpf.Pod, len(a.pods))
	for _, ep := range a.pods {
		desired[ep.cookie] = ep.rec
	}
	res, err := a.opts.Datapath.Reconcile(desired)
	if err != nil {
		return res, fmt.Errorf("reconcile data path: %w", err)
	}
	return res, nil
}

func interfaceAddrs() []netip.Addr {
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []netip.Addr
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok {
			if ip, ok := netip.AddrFromSlice(n.IP); ok {
				out = append(out, ip.Unmap())
			}
		}
	}
	return out
}

func ifName(p enroll.Pod) string {
	if p.IfName != "" {
		return p.IfName
	}
	return "eth0"
}

// Unenroll takes a pod out of the mesh: capture stops at once, open
// connections get DrainTimeout to finish.
func (a *Agent) Unenroll(_ context.Context, p enroll.Pod) error {
	a.mu.Lock()
	defer a.mu.Unlock()
	ep, ok := a.pods[p.UID]
	if !ok {
		return nil
	}
	return a.unenrollLocked(ep, a.opts.DrainTimeout)
}

func (a *Agent) unenrollLocked(ep *enrolledPod, drain time.Duration) error {
	delete(a.pods, ep.pod.UID)
	for _, ip := range ep.pod.IPs {
		a.local.CompareAndDelete(ip.Unmap(), ep.proxy)
	}
	var errs []error
	if err := a.opts.Datapath.Unenroll(ep.cookie); err != nil {
		errs = append(errs, fmt.Errorf("stop capture: %w", err))
	}
	// The netns may be gone with the pod; then so is the program.
	_ = a.opts.Datapath.DetachPodIngress(ep.pod.Netns, ifName(ep.pod))
	forget, _ := a.opts.Mesh.(PodForgetter)
	pp := a.proxyPod(ep.pod)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), drain)
		defer cancel()
		_ = ep.proxy.Drain(ctx)
		if ep.dns != nil {
			_ = ep.dns.Close()
		}
		if forget != nil {
			forget.Forget(pp)
		}
	}()
	return errors.Join(errs...)
}

// Enrolled returns the UIDs of the enrolled pods.
func (a *Agent) Enrolled() []string {
	a.mu.Lock()
	defer a.mu.Unlock()
	var out []string
	for uid := range a.pods {
		out = append(out, uid)
	}
	return out
}

// Drain stops taking new connections on every pod and lets open ones finish
// until ctx ends. Capture stays in place (the maps are pinned) so the next
// agent takes over with no gap.
func (a *Agent) Drain(ctx context.Context) error { return a.Handoff(ctx, 0) }

// Handoff is Drain for a rolling update: each pod's proxy first waits, up
// to wait, until another agent listens on its ports beside it (the new
// agent, whose readiness let the update stop this one), so that no pod is
// left without a listener even for a moment; a pod without a successor by
// then is reported and drained anyway. Zero waits for nothing (Drain:
// uninstalling, no successor comes).
func (a *Agent) Handoff(ctx context.Context, wait time.Duration) error {
	a.mu.Lock()
	a.draining = true
	var pods []*enrolledPod
	for _, ep := range a.pods {
		pods = append(pods, ep)
	}
	a.mu.Unlock()
	var wg sync.WaitGroup
	errs := make([]error, len(pods))
	for i, ep := range pods {
		wg.Go(func() {
			if wait > 0 {
				a.awaitSuccessor(ctx, ep, wait)
			}
			errs[i] = ep.proxy.Drain(ctx)
		})
	}
	wg.Wait()
	return errors.Join(errs...)
}

// awaitSuccessor waits up to wait for another agent's listeners in ep's pod
// and logs a late or missing successor.
func (a *Agent) awaitSuccessor(ctx context.Context, ep *enrolledPod, wait time.Duration) {
	name := ep.pod.Namespace + "/" + ep.pod.Name
	wctx, cancel := context.WithTimeout(ctx, wait)
	defer cancel()
	began := time.Now()
	switch err := ep.proxy.AwaitSuccessor(wctx); {
	case err != nil:
		a.opts.Errorf("handoff of %s: %v after %s; closing ours anyway", name, err, wait)
	case time.Since(began) > 100*time.Millisecond:
		a.opts.Errorf("handoff of %s: the successor's listeners came after %s", name, time.Since(began).Round(time.Millisecond))
	}
}

// Draining reports whether Drain has started (readiness is false then).
func (a *Agent) Draining() bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	return a.draining
}
