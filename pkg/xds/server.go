// Package xds distributes meshd's model to node agents and waypoints over the
// xDS delta protocol (DeltaAggregatedResources, served by go-control-plane's
// delta server over a per-client snapshot cache), carrying meshlet's own
// resources from pkg/api/mesh/v1alpha1. Apply takes a model.Snapshot;
// the Set*/Delete* methods set single resources.
//
// Every stream is authenticated (TLS plus a service account token judged by
// an Authenticator hook) and sees only its own view: a node agent its node's
// workloads with their peer authentication and L4 authorizations, a waypoint
// the workloads it serves and its own WaypointConfig; both the address index
// and trust bundles. Changes are debounced into one push; each resource
// carries a content hash as its version, so a client that reconnects with
// initial_resource_versions (to this replica or another) is sent only what
// changed. ACKs and NACKs are tracked per stream, the last NACK's error kept
// for proxy-status and counted.
//
// Decisions: no stream is served before MarkSynced, so a restarting meshd
// never pushes a half-built state that would make clients drop config;
// WaypointConfig carries pkg/model's L7Config as JSON (the waypoint's own
// config-file schema) until typed L7 protobufs exist; L7 attributes in L4
// authorizations are dropped or trimmed as Istio ambient does (see
// translateAuthorization).
//
// This package must not compute policy: it receives workloads and policies
// already resolved (pkg/model, pkg/controlplane) and only translates and
// filters them per client. It serves no state-of-the-world xDS.
package xds

import (
	"context"
	"errors"
	"fmt"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
	"log/slog"
	"slices"
	"sort"
	"strconv"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/envoyproxy/go-control-plane/pkg/log"
	"github.com/envoyproxy/go-control-plane/pkg/resource/v3"
	delta "github.com/envoyproxy/go-control-plane/pkg/server/delta/v3"
	"github.com/prometheus/client_golang/prometheus"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
)

// Options configures a Server.
type Options struct {
	// Authenticate decides each stream's principal from its token. Required.
	Authenticate Authenticator
	// Debounce is the quiet period after a change before the push: changes
	// closer together than this become one push. Zero means 100ms; negative
	// means push at once.
	Debounce time.Duration
	// MaxDebounce bounds how long a steady stream of changes can delay a
	// push. Zero means 10 × Debounce.
	MaxDebounce time.Duration
	// Registry receives the server's metrics. Nil registers none.
	Registry prometheus.Registerer
	// Logger is for connection and NACK events. Nil means slog.Default().
	Logger *slog.Logger
}

// Server is the xDS server. Feed it with the Set*/Delete* methods; register
// it on a gRPC server with Register.
type Server struct {
	opts    Options
	log     *slog.Logger
	metrics *metrics
	cache   cache.SnapshotCache
	delta   delta.Server
	ctx     context.Context
	cancel  context.CancelFunc
	kick    chan struct{}
	done    chan struct{}

	applyMu sync.Mutex  // serializes Apply
	applied *applyCache // guarded by applyMu

	mu          sync.Mutex
	store       *store
	current     *frozen
	gen         uint64
	synced      bool                 // MarkSynced was called: pushes may start
	dirtySince  time.Time            // first unflushed change; zero when clean
	genStart    map[uint64]time.Time // generation → first change it carries
	streams     map[int64]*streamState
	nodeStreams map[string]int // node id → open streams
}

// streamState is what the server knows about one open stream.
type streamState struct {
	principal xdsnode.Principal
	opened    time.Time
	sent      map[string]sentResponse // nonce → what it carried
	acked     map[string]string       // type URL → acked version
	lastNACK  *NACK
	counted   bool               // counted in nodeStreams and the connected gauge
	certs     []xdsnode.NodeCert // what the client reported holding (node metadata)
}

type sentResponse struct {
	typeURL string
	version string
	at      time.Time
}

// maxUnacked bounds the responses remembered per stream while awaiting an ACK.
const maxUnacked = 256

// NACK is a client's rejection of a response.
type NACK struct {
	// TypeURL is the rejected type.
	TypeURL string
	// Version is the server's version of the rejected response.
	Version string
	// Message is the client's error detail.
	Message string
	// At is when the NACK arrived.
	At time.Time
}

// ClientStatus is one connected stream, for `meshctl proxy-status`.
type ClientStatus struct {
	// NodeID is the client's xDS node id.
	NodeID string
	// Principal is who the stream authenticated as.
	Principal xdsnode.Principal
	// Connected is when the stream opened.
	Connected time.Time
	// Acked maps each type URL to the last version the client ACKed.
	Acked map[string]string
	// LastNACK is the most recent rejection, nil if none.
	LastNACK *NACK
	// Certs are the certificates the client reported holding when it
	// opened the stream (xdsnode.MetadataCertificates).
	Certs []xdsnode.NodeCert
}

// New returns a Server with an empty state. Close stops its push loop.
func New(opts Options) (*Server, error) {
	if opts.Authenticate == nil {
		return nil, errors.New("new xds server: Options.Authenticate is required")
	}
	if opts.Debounce == 0 {
		opts.Debounce = 100 * time.Millisecond
	}
	if opts.MaxDebounce == 0 {
		opts.MaxDebounce = 10 * opts.Debounce
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	m, err := newMetrics(opts.Registry)
	if err != nil {
		return nil, fmt.Errorf("new xds server: %w", err)
	}
	s := &Server{
		opts:        opts,
		log:         opts.Logger,
		metrics:     m,
		kick:        make(chan struct{}, 1),
		done:        make(chan struct{}),
		store:       newStore(),
		genStart:    map[uint64]time.Time{},
		streams:     map[int64]*streamState{},
		nodeStreams: map[string]int{},
	}
	s.current = s.store.freeze()
	s.applied = &applyCache{}
	s.ctx, s.cancel = context.WithCancel(context.Background())
	s.cache = cache.NewSnapshotCache(true, cache.IDHash{}, cacheLogger{s.log})
	s.delta = delta.NewServer(s.ctx, s.cache, callbacks{s})
	go s.pushLoop()
	return s, nil
}

// Close stops the push loop and ends every stream.
func (s *Server) Close() error {
	s.cancel()
	<-s.done
	return nil
}

// Register serves the ADS delta stream on g. State-of-the-world streams are
// refused with Unimplemented.
func (s *Server) Register(g *grpc.Server) {
	discovery.RegisterAggregatedDiscoveryServiceServer(g, adsService{s: s})
}

type adsService struct {
	discovery.UnimplementedAggregatedDiscoveryServiceServer
	s *Server
}

func (a adsService) DeltaAggregatedResources(str discovery.AggregatedDiscoveryService_DeltaAggregatedResourcesServer) error {
	return a.s.delta.DeltaStreamHandler(str, resource.AnyType)
}

// SetWorkload adds or replaces a workload (keyed by uid) and its address entry.
func (s *Server) SetWorkload(w *meshv1.Workload) error {
	if err := validateWorkload(w); err != nil {
		return fmt.Errorf("set workload: %w", err)
	}
	we, err := newEntry(w)
	if err != nil {
		return fmt.Errorf("set workload: %w", err)
	}
	ae, err := newEntry(workloadAddress(w))
	if err != nil {
		return fmt.Errorf("set workload: %w", err)
	}
	s.change(func(st *store) {
		st.workloads[w.GetUid()] = we
		st.addresses[w.GetUid()] = ae
	})
	return nil
}

// DeleteWorkload removes the workload uid, its address entry and its peer authentication.
func (s *Server) DeleteWorkload(uid string) {
	s.change(func(st *store) {
		delete(st.workloads, uid)
		delete(st.addresses, uid)
		delete(st.peerAuthn, uid)
	})
}

// SetService adds or replaces a service in the address index (keyed by ServiceKey).
func (s *Server) SetService(svc *meshv1.Service) error {
	if err := validateService(svc); err != nil {
		return fmt.Errorf("set service: %w", err)
	}
	e, err := newEntry(&meshv1.Address{Type: &meshv1.Address_Service{Service: svc}})
	if err != nil {
		return fmt.Errorf("set service: %w", err)
	}
	s.change(func(st *store) { st.addresses[ServiceKey(svc)] = e })
	return nil
}

// DeleteService removes the service namespace/hostname.
func (s *Server) DeleteService(namespace, hostname string) {
	s.change(func(st *store) { delete(st.addresses, namespace+"/"+hostname) })
}

// SetAuthorization adds or replaces an L4 authorization (keyed by namespace/name).
func (s *Server) SetAuthorization(a *meshv1.Authorization) error {
	if err := validateAuthorization(a); err != nil {
		return fmt.Errorf("set authorization: %w", err)
	}
	e, err := newEntry(a)
	if err != nil {
		return fmt.Errorf("set authorization: %w", err)
	}
	s.change(func(st *store) { st.authz[a.GetNamespace()+"/"+a.GetName()] = e })
	return nil
}

// DeleteAuthorization removes the authorization namespace/name.
func (s *Server) DeleteAuthorization(namespace, name string) {
	s.change(func(st *store) { delete(st.authz, namespace+"/"+name) })
}

// SetPeerAuthentication sets a workload's resolved mTLS mode (keyed by workload uid).
func (s *Server) SetPeerAuthentication(p *meshv1.PeerAuthentication) error {
	if p.GetWorkloadUid() == "" {
		return errors.New("set peer authentication: workload_uid is empty")
	}
	e, err := newEntry(p)
	if err != nil {
		return fmt.Errorf("set peer authentication: %w", err)
	}
	s.change(func(st *store) { st.peerAuthn[p.GetWorkloadUid()] = e })
	return nil
}

// DeletePeerAuthentication removes the workload uid's resolved mode.
func (s *Server) DeletePeerAuthentication(uid string) {
	s.change(func(st *store) { delete(st.peerAuthn, uid) })
}

// SetTrustBundle adds or replaces the roots of one trust domain. Once a
// snapshot of that trust domain was applied, the bundle is served with the
// snapshot's trust domain aliases instead of its own.
func (s *Server) SetTrustBundle(b *meshv1.TrustBundle) error {
	_, err := s.PushTrustBundle(b)
	return err
}

// PushTrustBundle is SetTrustBundle, and returns the generation whose push
// carries b: a client holds b (or what replaced it) once it has ACKed the
// trust bundle type at that generation or a later one (ClientStatus.Acked,
// AckedAtLeast). A client that ACKed a newer bundle version than it had
// before does not necessarily hold b: that version may be an earlier
// change's (the trust domain aliases').
func (s *Server) PushTrustBundle(b *meshv1.TrustBundle) (uint64, error) {
	if err := validateTrustBundle(b); err != nil {
		return 0, fmt.Errorf("set trust bundle: %w", err)
	}
	b = proto.CloneOf(b)
	var err error
	gen := s.change(func(st *store) {
		st.roots[b.GetTrustDomain()] = b
		err = st.putBundle(b.GetTrustDomain())
	})
	if err != nil {
		return 0, fmt.Errorf("set trust bundle: %w", err)
	}
	return gen, nil
}

// AckedAtLeast reports whether c has ACKed typeURL at generation gen or a
// later one.
func (c ClientStatus) AckedAtLeast(typeURL string, gen uint64) bool {
	v, err := strconv.ParseUint(c.Acked[typeURL], 10, 64)
	return err == nil && v >= gen
}

// SetWaypointConfig adds or replaces a waypoint's L7 config (keyed by namespace/name).
func (s *Server) SetWaypointConfig(c *meshv1.WaypointConfig) error {
	if c.GetNamespace() == "" || c.GetName() == "" {
		return errors.New("set waypoint config: namespace and name are required")
	}
	e, err := newEntry(c)
	if err != nil {
		return fmt.Errorf("set waypoint config: %w", err)
	}
	s.change(func(st *store) { st.waypoints[c.GetNamespace()+"/"+c.GetName()] = e })
	return nil
}

// DeleteTrustBundle removes a trust domain's roots.
func (s *Server) DeleteTrustBundle(trustDomain string) {
	s.change(func(st *store) {
		delete(st.roots, trustDomain)
		delete(st.bundles, trustDomain)
	})
}

// MarkSynced tells the server that its state now reflects the cluster (meshd
// calls it once its informers have synced and the initial Set calls are
// done). Until the first push after it, streams are refused with
// Unavailable so that no client mistakes an empty start-up state for the
// truth and drops its config; clients retry with backoff.
func (s *Server) MarkSynced() {
	s.change(func(*store) { s.synced = true })
}

// change applies f to the store and schedules a debounced push.
// change applies f to the store and returns the generation whose push
// will carry it (the next flush freezes the store as f left it, or later).
func (s *Server) change(f func(*store)) uint64 {
	s.mu.Lock()
	f(s.store)
	if s.dirtySince.IsZero() {
		s.dirtySince = time.Now()
	}
	gen := s.gen + 1
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return gen
}

// pushLoop turns bursts of changes into single pushes.
func (s *Server) pushLoop() {
	defer close(s.done)
	var timer *time.Timer
	var timerC <-chan time.Time
	for {
		select {
		case <-s.ctx.Done():
			if timer != nil {
				timer.Stop()
			}
			return
		case <-s.kick:
			if s.opts.Debounce < 0 {
				s.flush()
				continue
			}
			s.mu.Lock()
			since := s.dirtySince
			s.mu.Unlock()
			wait := s.opts.Debounce
			if left := s.opts.MaxDebounce - time.Since(since); left < wait {
				wait = max(left, 0)
			}
			if timer == nil {
				timer = time.NewTimer(wait)
			} else {
				timer.Reset(wait)
			}
			timerC = timer.C
		case <-timerC:
			timerC = nil
			s.flush()
		}
	}
}

// flush freezes the store into a new generation and updates the views of
// every connected client.
func (s *Server) flush() {
	s.mu.Lock()
	if s.dirtySince.IsZero() || !s.synced {
		s.mu.Unlock()
		return
	}
	s.gen++
	gen := s.gen
	s.genStart[gen] = s.dirtySince
	delete(s.genStart, gen-64)
	s.dirtySince = time.Time{}
	s.current = s.store.freeze()
	cur := s.current
	nodes := make([]string, 0, len(s.nodeStreams))
	for id := range s.nodeStreams {
		nodes = append(nodes, id)
	}
	s.mu.Unlock()

	s.metrics.debouncedPushes.Inc()
	version := strconv.FormatUint(gen, 10)
	sort.Strings(nodes)
	for _, id := range nodes {
		p, err := xdsnode.ParseNodeID(id)
		if err != nil {
			continue
		}
		if err := s.cache.SetSnapshot(s.ctx, id, buildView(cur, p, version)); err != nil {
			s.log.Warn("xds: push failed", "node", id, "err", err)
		}
	}
}

// Generation is the version of the latest state pushed to clients ("0"
// before the first push). A client whose ACKs carry an older version may
// still be current: a push that changes nothing it holds is not sent to it.
func (s *Server) Generation() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return strconv.FormatUint(s.gen, 10)
}

// Clients reports every open stream that passed its first request's checks,
// sorted by node id.
func (s *Server) Clients() []ClientStatus {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make([]ClientStatus, 0, len(s.streams))
	for _, st := range s.streams {
		if !st.counted {
			continue // not past its first request's checks yet
		}
		cs := ClientStatus{NodeID: st.principal.NodeID(), Principal: st.principal, Connected: st.opened, Acked: map[string]string{}}
		for k, v := range st.acked {
			cs.Acked[k] = v
		}
		if st.lastNACK != nil {
			n := *st.lastNACK
			cs.LastNACK = &n
		}
		cs.Certs = slices.Clone(st.certs)
		out = append(out, cs)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].NodeID < out[j].NodeID })
	return out
}

// callbacks hooks the delta server: authentication on open, node id and
// type checks and ACK/NACK bookkeeping on each request, and metrics.
type callbacks struct{ s *Server }

func (c callbacks) OnDeltaStreamOpen(ctx context.Context, id int64, _ string) error {
	s := c.s
	tok, err := bearerToken(ctx)
	if err != nil {
		s.metrics.refused.Inc()
		return err
	}
	p, err := s.opts.Authenticate(ctx, tok)
	if err == nil {
		err = p.Validate()
	}
	if err != nil {
		s.metrics.refused.Inc()
		s.log.Warn("xds: refused stream", "err", err)
		return status.Errorf(codes.Unauthenticated, "authenticate xds client: %v", err)
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.gen == 0 {
		return status.Error(codes.Unavailable, "meshd has not synced its configuration yet; retry")
	}
	s.streams[id] = &streamState{principal: p, opened: time.Now(), sent: map[string]sentResponse{}, acked: map[string]string{}}
	return nil
}

func (c callbacks) OnDeltaStreamClosed(id int64, _ *core.Node) {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return
	}
	delete(s.streams, id)
	nid := st.principal.NodeID()
	if n, ok := s.nodeStreams[nid]; ok {
		s.metrics.connected.Dec()
		if n <= 1 {
			delete(s.nodeStreams, nid)
			s.cache.ClearSnapshot(nid)
		} else {
			s.nodeStreams[nid] = n - 1
		}
	}
}

func (c callbacks) OnStreamDeltaRequest(id int64, req *discovery.DeltaDiscoveryRequest) error {
	s := c.s
	s.mu.Lock()
	defer s.mu.Unlock()
	st, ok := s.streams[id]
	if !ok {
		return status.Error(codes.Unauthenticated, "stream was not authenticated")
	}
	want := st.principal.NodeID()
	if n := req.GetNode(); n != nil && n.GetId() != want {
		return status.Errorf(codes.PermissionDenied, "stream authenticated as %q may not read node %q", want, n.GetId())
	}
	if !allowedType(st.principal.Role, req.GetTypeUrl()) {
		return status.Errorf(codes.InvalidArgument, "type %q is not served to %s clients", req.GetTypeUrl(), st.principal.Role)
	}
	if req.Node == nil {
		req.Node = &core.Node{Id: want}
	} else if md := req.Node.GetMetadata(); md != nil && st.certs == nil {
		st.certs = xdsnode.CertsFromMetadata(md)
	}
	if nonce := req.GetResponseNonce(); nonce != "" {
		sent, ok := st.sent[nonce]
		delete(st.sent, nonce)
		if d := req.GetErrorDetail(); d != nil {
			st.lastNACK = &NACK{TypeURL: req.GetTypeUrl(), Version: sent.version, Message: d.GetMessage(), At: time.Now()}
			s.metrics.nacks.WithLabelValues(req.GetTypeUrl()).Inc()
			s.log.Warn("xds: client rejected config", "node", want, "type", req.GetTypeUrl(), "version", sent.version, "err", d.GetMessage())
		} else if ok {
			st.acked[req.GetTypeUrl()] = sent.version
			if g, err := strconv.ParseUint(sent.version, 10, 64); err == nil {
				if start, ok := s.genStart[g]; ok && start.After(st.opened) {
					s.metrics.pushLatency.Observe(time.Since(start).Seconds())
				}
			}
		}
		return nil
	}
	if !st.counted {
		// The node's first stream: give it a view of the current state
		// before the delta server opens its watch. (A view left in the
		// cache from an earlier connection may be stale: flushes skip
		// nodes without streams.)
		if s.nodeStreams[want] == 0 {
			if err := s.cache.SetSnapshot(s.ctx, want, buildView(s.current, st.principal, strconv.FormatUint(s.gen, 10))); err != nil {
				return status.Errorf(codes.Internal, "build view: %v", err)
			}
		}
		st.counted = true
		s.nodeStreams[want]++
		s.metrics.connected.Inc()
	}
	return nil
}

func (c callbacks) OnStreamDeltaResponse(id int64, req *discovery.DeltaDiscoveryRequest, resp *discovery.DeltaDiscoveryResponse) {
	s := c.s
	s.metrics.pushes.WithLabelValues(resp.GetTypeUrl()).Inc()
	s.mu.Lock()
	defer s.mu.Unlock()
	if st, ok := s.streams[id]; ok {
		if len(st.sent) >= maxUnacked {
			// A client that does not ACK: forget what it was sent rather
			// than grow without bound (its later ACKs just go unmatched).
			clear(st.sent)
		}
		st.sent[resp.GetNonce()] = sentResponse{typeURL: resp.GetTypeUrl(), version: resp.GetSystemVersionInfo(), at: time.Now()}
	}
}

// cacheLogger sends go-control-plane's cache logs to slog at debug level.
type cacheLogger struct{ l *slog.Logger }

var _ log.Logger = cacheLogger{}

func (c cacheLogger) Debugf(f string, a ...any) { c.l.Debug(fmt.Sprintf(f, a...)) }
func (c cacheLogger) Infof(f string, a ...any)  { c.l.Debug(fmt.Sprintf(f, a...)) }
func (c cacheLogger) Warnf(f string, a ...any)  { c.l.Warn(fmt.Sprintf(f, a...)) }
func (c cacheLogger) Errorf(f string, a ...any) { c.l.Error(fmt.Sprintf(f, a...)) }
