// Package mesh answers the per-pod proxies' questions from the pushed mesh
// model (a pkg/model Snapshot): where an original destination goes (a pod, a
// service's endpoint or a waypoint), which PeerAuthentication mode applies to
// a port, and what the L4 AuthorizationPolicies say (pkg/policy). It also
// carries the tunnel hooks (pkg/hbone's client and server) through to the
// proxies.
//
// Decisions when the model is silent: an address the model does not know,
// or a workload outside the mesh, passes through without the tunnel; inbound
// to a local pod the model does not know yet is refused (its policies are
// unknown). A service with no ready endpoint passes through to its VIP, and
// so does one not exported to the client's namespace (exportTo). Service
// endpoints are picked by the service's load balancing (pickEndpoint); a
// ServiceEntry's endpoints known by hostname are resolved through
// Options.LookupHost (hostResolver caches the answers).
//
// Before the first config (an agent that just started) and for a local pod
// the model does not have yet (meshd's push trails the CNI's enrollment),
// decisions wait for it, up to Options.Wait. Inbound connections are
// refused if there is still no config for the pod by then: the policies
// that would allow them are unknown.
//
// It must not open connections or hold certificates itself.
package mesh

import (
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// Options configures a Mesh.
type Options struct {
	// Snapshot returns the current model. Nil, or a nil result, means
	// nothing is known yet.
	Snapshot func() *model.Snapshot
	// Changed returns a channel closed when the model next changes (see
	// Store). With Wait, decisions made before the first model, or about a
	// pod the model does not have yet, wait for it. Nil means no waiting.
	Changed func() <-chan struct{}
	// Wait bounds that wait for one decision.
	Wait time.Duration
	// Dial opens a tunnel stream (pkg/hbone client): from src's netns to
	// d.Via, CONNECT d.Target, requiring the peer to present d.Identity.
	// Nil makes tunnelled destinations fail.
	Dial func(ctx context.Context, src proxy.Pod, d proxy.Destination) (io.ReadWriteCloser, error)
	// Server makes the HBONE server of pod's 15008 (pkg/hbone), with the
	// pod's identity. Nil leaves 15008 closed.
	Server func(pod proxy.Pod, h proxy.StreamHandler) (proxy.TunnelServer, error)
	// Forget releases per-pod tunnel state when a pod leaves the mesh. Nil
	// means nothing to release.
	Forget func(pod proxy.Pod)
	// LookupHost resolves the hostname of a ServiceEntry endpoint
	// (resolution DNS or DNS_ROUND_ROBIN) to addresses, e.g. with
	// net.Resolver.LookupNetIP; answers are cached (see hostResolver). Nil
	// leaves such endpoints unpicked: their connections pass through to
	// the address dialled.
	LookupHost func(ctx context.Context, host string) ([]netip.Addr, error)
	// Errorf reports problems (a name that does not resolve); nil discards
	// them.
	Errorf func(format string, args ...any)
}

// Mesh implements the agent's Mesh hooks over a model snapshot.
type Mesh struct {
	opts   Options
	next   atomic.Uint64 // round-robin cursor
	conns  connCounts    // open connections per endpoint (LEAST_REQUEST)
	sticky affinities    // ClientIP session affinity: client -> endpoint
	now    func() time.Time

	gaveUp sync.Map // pod UIDs a wait for ended without them; see snapshotFor

	hostsMu sync.Mutex
	hosts   *hostIndex // LookupHost's index of the current snapshot

	resolver *hostResolver // nil without Options.LookupHost
}

// New returns a Mesh.
func New(opts Options) *Mesh {
	m := &Mesh{opts: opts, now: time.Now}
	if opts.LookupHost != nil {
		errorf := opts.Errorf
		if errorf == nil {
			errorf = func(string, ...any) {}
		}
		m.resolver = &hostResolver{lookup: opts.LookupHost, now: time.Now, errorf: errorf}
	}
	return m
}

func (m *Mesh) snapshot() *model.Snapshot {
	if m.opts.Snapshot == nil {
		return nil
	}
	return m.opts.Snapshot()
}

// awaitSnapshot returns the model once done(model) holds, or the latest
// model when Options.Wait has passed (at once without Options.Changed), and
// whether done holds for the model returned.
func (m *Mesh) awaitSnapshot(done func(*model.Snapshot) bool) (*model.Snapshot, bool) {
	s := m.snapshot()
	if done(s) {
		return s, true
	}
	if m.opts.Changed == nil || m.opts.Wait <= 0 {
		return s, false
	}
	timeout := time.NewTimer(m.opts.Wait)
	defer timeout.Stop()
	for {
		changed := m.opts.Changed()
		// Read again after taking the channel: a change between the first
		// read and now has closed an earlier channel, not this one.
		if s = m.snapshot(); done(s) {
			return s, true
		}
		select {
		case <-changed:
		case <-timeout.C:
			s = m.snapshot()
			return s, done(s)
		}
	}
}

// snapshotFor waits for a model that has pod (a local pod: meshd will
// push it). Once a wait for pod ended without it, later decisions for pod
// do not wait again (until Forget): one slow push costs one wait.
func (m *Mesh) snapshotFor(pod proxy.Pod) *model.Snapshot {
	if _, gaveUp := m.gaveUp.Load(pod.UID); gaveUp {
		return m.snapshot()
	}
	s, ok := m.awaitSnapshot(func(s *model.Snapshot) bool {
		if s == nil {
			return false
		}
		// All of it: its full resource, its PeerAuthentication and the
		// policies meshd bound to it, not just its address.
		w, ok := s.Workload(pod.UID)
		return ok && !w.Partial
	})
	if !ok && s != nil && pod.UID != "" {
		m.gaveUp.Store(pod.UID, struct{}{})
	}
	return s
}

// Store holds the current model and tells waiters when it changes: its
// Load and Changed are Options.Snapshot and Options.Changed.
type Store struct {
	cur     atomic.Pointer[model.Snapshot]
	mu      sync.Mutex
	changed chan struct{}
}

// NewStore returns an empty Store.
func NewStore() *Store { return &Store{changed: make(chan struct{})} }

// Load returns the current model, nil before the first Set.
func (st *Store) Load() *model.Snapshot { return st.cur.Load() }

// Set replaces the model and wakes every waiter.
func (st *Store) Set(s *model.Snapshot) {
	st.cur.Store(s)
	st.mu.Lock()
	close(st.changed)
	st.changed = make(chan struct{})
	st.mu.Unlock()
}

// Changed returns a channel closed at the next Set.
func (st *Store) Changed() <-chan struct{} {
	st.mu.Lock()
	defer st.mu.Unlock()
	return st.changed
}

// Resolve maps an original destination to where the tunnel goes.
func (m *Mesh) Resolve(src proxy.Pod, dst netip.AddrPort) (proxy.Destination, bool) {
	s, _ := m.awaitSnapshot(func(s *model.Snapshot) bool { return s != nil })
	if s == nil {
		return proxy.Destination{}, false
	}
	return m.resolve(s, src, dst, false)
}

// resolve is Resolve on s. nested is set when dst is a service endpoint's
// address that is itself another service's VIP (a ServiceEntry endpoint
// naming a Kubernetes Service): that service's endpoint is picked in turn,
// once, never again from there.
func (m *Mesh) resolve(s *model.Snapshot, src proxy.Pod, dst netip.AddrPort, nested bool) (proxy.Destination, bool) {
	a, ok := s.Lookup(dst.Addr())
	if !ok {
		return proxy.Destination{}, false
	}
	switch a.Kind {
	case model.AddressWorkload:
		w := a.Workload
		if !w.Enrolled {
			return proxy.Destination{}, false
		}
		if wp := waypointOf(s, w.Waypoint, model.WaypointForWorkload); wp != nil {
			return toWaypoint(wp, dst, workloadOf(w), ""), true
		}
		return proxy.Destination{
			Target: dst, Via: netip.AddrPortFrom(dst.Addr(), proxy.PortTunnel),
			Identity: w.Identity, Workload: workloadOf(w),
		}, true
	case model.AddressService:
		svc := a.Service
		if !svc.VisibleTo(src.Namespace) {
			// Not exported to the client's namespace: the mesh does not
			// know it there (Istio's exportTo), as for any unknown address.
			return proxy.Destination{}, false
		}
		if wp := waypointOf(s, svc.Waypoint, model.WaypointForService); wp != nil {
			return toWaypoint(wp, dst, proxy.Workload{}, svc.Hostname()), true
		}
		return m.pickEndpoint(s, src, svc, dst, nested)
	}
	return proxy.Destination{}, false
}

// pickEndpoint chooses a ready endpoint of svc for dst's port by the
// service's load balancing (a DestinationRule's loadBalancer.simple, as
// meshd resolved it):
//   - LEAST_REQUEST, and the default (Istio's default too): of two
//     endpoints, the one with fewer open connections from this agent; the
//     first of the two is the round-robin cursor's, and wins ties, so
//     one-at-a-time connections still go round the endpoints in turn;
//   - ROUND_ROBIN: the endpoints in turn;
//   - RANDOM: any, at random;
//   - PASSTHROUGH: none: the connection goes to the address dialled.
//
// A service with a traffic distribution (PreferClose, PreferSameZone,
// PreferSameNode) first narrows the ready endpoints to the closest to the
// client that have any (model.TrafficDistribution.Closeness: same zone and
// subzone, then region, then any; or same node, then any), as ztunnel
// does; the algorithm picks among those. A service with internalTrafficPolicy
// Local (model.Service.NodeLocal) keeps only the endpoints on the client's
// node: none there is no endpoint, and the connection passes through to the
// VIP, where kube-proxy drops it as well. A service with session affinity
// (model.Service.SessionAffinity) sends a client back to the endpoint of
// its last connection to the same address while that one is among the
// ready endpoints left and its timeout has not run out (see affinities);
// otherwise the algorithm picks, and the pick is remembered.
//
// An endpoint that is an enrolled workload is reached through the tunnel. A
// ServiceEntry's endpoint address that is no workload of the mesh, or a
// workload outside it, is dialled directly (Destination.Target, not in the
// mesh). An endpoint known by hostname (a ServiceEntry with resolution DNS
// or DNS_ROUND_ROBIN) is resolved (Options.LookupHost, cached): with DNS
// every address of the answer is an endpoint of its own, as Envoy's strict
// DNS clusters have it; with DNS_ROUND_ROBIN the first one is, as its
// logical DNS clusters have it. A name that does not resolve is no
// endpoint.
func (m *Mesh) pickEndpoint(s *model.Snapshot, src proxy.Pod, svc *model.Service, dst netip.AddrPort, nested bool) (proxy.Destination, bool) {
	if svc.LoadBalancing == model.LBPassthrough {
		return proxy.Destination{}, false
	}
	type choice struct {
		target netip.AddrPort
		w      *model.Workload // nil: an address outside the model's workloads
		svc    bool            // the address is another service's VIP
		rank   int             // closeness to the client (traffic distribution)
	}
	var ready []choice
	for _, ep := range svc.Endpoints {
		if !ep.Ready {
			continue
		}
		var w *model.Workload
		if ep.WorkloadUID != "" {
			var ok bool
			if w, ok = s.Workload(ep.WorkloadUID); !ok {
				continue
			}
		}
		port := dst.Port()
		if tp, ok := ep.Ports[uint32(dst.Port())]; ok && tp != 0 && tp <= 65535 {
			port = uint16(tp)
		}
		addrs, every := ep.Addresses, false
		if len(addrs) == 0 && ep.Hostname != "" {
			if m.resolver == nil {
				continue
			}
			addrs, _ = m.resolver.addrs(ep.Hostname) // reported by the resolver
			every = svc.Resolution == "DNS"
		}
		for _, ip := range addrs {
			if ip.Is4() != dst.Addr().Is4() {
				continue
			}
			c := choice{target: netip.AddrPortFrom(ip, port), w: w}
			if w == nil {
				// A ServiceEntry endpoint: a workload of the mesh when
				// the model knows its address as one.
				if a, ok := s.Lookup(ip); ok && a.Kind == model.AddressWorkload {
					c.w = a.Workload
				} else if ok && a.Kind == model.AddressService && a.Service != svc {
					c.svc = true
				}
			}
			ready = append(ready, c)
			if !every {
				break
			}
		}
	}
	if svc.NodeLocal {
		// Only this node's endpoints; the client is a pod of this node,
		// known to the model (pods the model lacks wait for it above).
		from, ok := s.Workload(src.UID)
		ready = slices.DeleteFunc(ready, func(c choice) bool { return !ok || c.w == nil || c.w.Node != from.Node })
	}
	if len(ready) == 0 {
		return proxy.Destination{}, false
	}
	if svc.TrafficDistribution != "" && !svc.NodeLocal {
		if from, ok := s.Workload(src.UID); ok {
			best := 0
			for i := range ready {
				if w := ready[i].w; w != nil { // no place known: the farthest (0)
					ready[i].rank = svc.TrafficDistribution.Closeness(from.Node, from.Locality, w.Node, w.Locality)
				}
				best = max(best, ready[i].rank)
			}
			if best > 0 {
				ready = slices.DeleteFunc(ready, func(c choice) bool { return c.rank < best })
			}
		}
	}
	var c choice
	picked := false
	var sticky affinityKey
	var now time.Time
	if svc.SessionAffinity > 0 && src.UID != "" {
		sticky, now = affinityKey{client: src.UID, service: dst}, m.now()
		if ep, ok := m.sticky.get(sticky, now, svc.SessionAffinity); ok {
			if i := slices.IndexFunc(ready, func(c choice) bool { return c.target == ep }); i >= 0 {
				c, picked = ready[i], true
			}
		}
	}
	track := svc.LoadBalancing != model.LBRoundRobin && svc.LoadBalancing != model.LBRandom
	if !picked {
		switch svc.LoadBalancing {
		case model.LBRoundRobin:
			c = ready[int(m.next.Add(1)-1)%len(ready)]
		case model.LBRandom:
			c = ready[rand.IntN(len(ready))]
		default: // LEAST_REQUEST
			first := int(m.next.Add(1)-1) % len(ready)
			c = ready[first]
			if len(ready) > 1 {
				other := ready[(first+1+rand.IntN(len(ready)-1))%len(ready)]
				if m.conns.open(other.target) < m.conns.open(c.target) {
					c = other
				}
			}
		}
		if sticky.client != "" {
			m.sticky.put(sticky, c.target, now, svc.SessionAffinity)
		}
	}
	if c.svc && !nested {
		// That service picks the endpoint (its waypoint, its mesh
		// workloads through the tunnel), not kube-proxy in plaintext. The
		// metrics name the service the client asked for.
		d, inMesh := m.resolve(s, src, c.target, true)
		if !inMesh && !d.Target.IsValid() {
			d.Target = c.target // that service passes through: to its VIP
		}
		d.Service = svc.Hostname()
		return d, inMesh
	}
	var d proxy.Destination
	inMesh := c.w != nil && c.w.Enrolled
	if inMesh {
		d = proxy.Destination{
			Target: c.target, Via: netip.AddrPortFrom(c.target.Addr(), proxy.PortTunnel),
			Identity: c.w.Identity, Workload: workloadOf(c.w), Service: svc.Hostname(),
		}
	} else {
		// Outside the mesh: the pod's connection goes on to the chosen
		// endpoint without the tunnel.
		d = proxy.Destination{Target: c.target, Service: svc.Hostname()}
	}
	if track {
		m.conns.add(c.target)
		d.Release = sync.OnceFunc(func() { m.conns.done(c.target) })
	}
	return d, inMesh
}

// connCounts counts this agent's open connections per endpoint, for
// LEAST_REQUEST. An endpoint with none has no entry.
type connCounts struct {
	mu sync.Mutex
	n  map[netip.AddrPort]int
}

func (c *connCounts) open(ep netip.AddrPort) int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.n[ep]
}

func (c *connCounts) add(ep netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n == nil {
		c.n = map[netip.AddrPort]int{}
	}
	c.n[ep]++
}

func (c *connCounts) done(ep netip.AddrPort) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.n[ep] <= 1 {
		delete(c.n, ep)
		return
	}
	c.n[ep]--
}

func waypointOf(s *model.Snapshot, ref *model.WaypointRef, kind model.WaypointFor) *model.Waypoint {
	if ref == nil {
		return nil
	}
	wp, ok := s.Waypoint(ref.Waypoint)
	if !ok || len(wp.Addresses) == 0 {
		return nil
	}
	switch wp.For {
	case model.WaypointForAll, kind:
		return wp
	case "":
		if kind == model.WaypointForService { // Istio's default
			return wp
		}
	}
	return nil
}

func toWaypoint(wp *model.Waypoint, dst netip.AddrPort, w proxy.Workload, service string) proxy.Destination {
	return proxy.Destination{
		Target: dst, Via: netip.AddrPortFrom(wp.Addresses[0], proxy.PortTunnel),
		Identity: wp.Identity, Workload: w, Service: service,
	}
}

// workloadOf names a workload for metrics as the source agent names its own
// pods (enroll.WorkloadName): by its controller, so both reporters agree
// and the label's values are bounded by workloads, not pods.
func workloadOf(w *model.Workload) proxy.Workload {
	name := w.WorkloadName
	if name == "" {
		name = w.Name
	}
	return proxy.Workload{Namespace: w.Namespace, Name: name, Identity: w.Identity}
}

// PeerWorkload names the workload a tunnel stream came from: the model's
// workload at src when it has the peer's identity, or that identity in a
// trust domain alias (a waypoint forwarding for a client keeps the
// client's address but not its identity: then only the peer is known),
// else the namespace the identity names. The identity is the peer's as
// presented.
func (m *Mesh) PeerWorkload(src netip.Addr, peer string) proxy.Workload {
	if s := m.snapshot(); s != nil && src.IsValid() {
		if a, ok := s.Lookup(src); ok && a.Kind == model.AddressWorkload && sameIdentity(s, a.Workload.Identity, peer) {
			w := workloadOf(a.Workload)
			w.Identity = peer
			return w
		}
	}
	return proxy.Workload{Identity: peer, Namespace: namespaceOf(peer)}
}

// sameIdentity reports whether SPIFFE IDs a and b name one workload of s:
// they are equal, or they have one path in two trust domains that are s's
// or its aliases (spiffe://<alias>/ns/x/sa/y is spiffe://<trust
// domain>/ns/x/sa/y). IDs that do not parse are equal to themselves only.
func sameIdentity(s *model.Snapshot, a, b string) bool {
	if a == b {
		return true
	}
	aliases := s.TrustDomainAliases()
	if len(aliases) == 0 {
		return false
	}
	ia, err := spiffeid.FromString(a)
	if err != nil {
		return false
	}
	ib, err := spiffeid.FromString(b)
	if err != nil || ia.Path() != ib.Path() {
		return false
	}
	ours := func(td spiffeid.TrustDomain) bool {
		return td.Name() == s.TrustDomain() || slices.Contains(aliases, td.Name())
	}
	return ours(ia.TrustDomain()) && ours(ib.TrustDomain())
}

// PeerAuth returns the PeerAuthentication mode for a port of pod.
func (m *Mesh) PeerAuth(pod proxy.Pod, port uint16) proxy.Mode {
	s := m.snapshotFor(pod)
	if s == nil {
		return proxy.ModePermissive
	}
	w, ok := s.Workload(pod.UID)
	if !ok {
		return proxy.ModePermissive
	}
	switch w.PeerAuthentication.ModeFor(uint32(port)) {
	case model.MTLSStrict:
		return proxy.ModeStrict
	case model.MTLSDisable:
		return proxy.ModeDisable
	}
	return proxy.ModePermissive
}

// Authorize evaluates the pod's L4 AuthorizationPolicies.
func (m *Mesh) Authorize(_ context.Context, r proxy.AuthzRequest) proxy.Decision {
	s := m.snapshotFor(r.Pod)
	if s == nil {
		// Fail closed: a policy we have not received may deny this.
		return proxy.Decision{Allow: false, Reason: "no mesh config from meshd yet"}
	}
	w, ok := s.Workload(r.Pod.UID)
	if !ok {
		// Fail closed as well: the pod's policies are unknown until meshd
		// pushes it (ztunnel too refuses inbound for a workload it cannot
		// find once its wait ends).
		return proxy.Decision{Allow: false, Reason: "pod not in the mesh config from meshd yet"}
	}
	req := &policy.Request{
		SourcePrincipal: r.Principal, SourceNamespace: namespaceOf(r.Principal),
		SourceIP: r.Source, DestinationPort: uint32(r.Port),
	}
	switch {
	case r.Destination.IsValid():
		req.DestinationIP = r.Destination
	case len(r.Pod.IPs) > 0:
		req.DestinationIP = r.Pod.IPs[0]
	}
	d := policy.EvaluateL4(s.PoliciesFor(w), req)
	reason := d.Reason
	if d.Policy != "" {
		reason = d.Policy + ": " + reason
	}
	return proxy.Decision{Allow: d.Allow, Reason: reason, Policy: d.Policy}
}

// namespaceOf returns the namespace of spiffe://<td>/ns/<ns>/sa/<sa>.
func namespaceOf(id string) string {
	_, rest, ok := strings.Cut(strings.TrimPrefix(id, "spiffe://"), "/ns/")
	if !ok {
		return ""
	}
	ns, _, _ := strings.Cut(rest, "/")
	return ns
}

// Forget releases a departed pod's tunnel state.
func (m *Mesh) Forget(pod proxy.Pod) {
	m.sticky.forget(pod.UID)
	m.gaveUp.Delete(pod.UID)
	if m.opts.Forget != nil {
		m.opts.Forget(pod)
	}
}

// ErrNoTunnel is returned by DialTunnel when no tunnel client is configured.
var ErrNoTunnel = errors.New("mesh: no tunnel client configured (pkg/hbone)")

// DialTunnel opens a tunnel stream through Options.Dial.
func (m *Mesh) DialTunnel(ctx context.Context, src proxy.Pod, d proxy.Destination) (io.ReadWriteCloser, error) {
	if m.opts.Dial == nil {
		return nil, ErrNoTunnel
	}
	return m.opts.Dial(ctx, src, d)
}

// TunnelServer makes pod's HBONE server through Options.Server; without
// one it returns nil and 15008 stays closed.
func (m *Mesh) TunnelServer(pod proxy.Pod, h proxy.StreamHandler) (proxy.TunnelServer, error) {
	if m.opts.Server == nil {
		return nil, nil
	}
	return m.opts.Server(pod, h)
}
