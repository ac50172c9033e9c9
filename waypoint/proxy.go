package waypoint

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/pkg/logfilter"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/prometheus/client_golang/prometheus"
)

// Options configure a Proxy. Only Config is required.
type Options struct {
	// Config is the initial configuration; required. Replace it later with
	// Proxy.Update.
	Config *Config
	// DialContext opens upstream connections, e.g. through HBONE; the
	// context bounds the connect only. Nil means a plain net.Dialer.
	DialContext func(ctx context.Context, network, addr string) (net.Conn, error)
	// Peer describes the client of a request (identity from the HBONE peer
	// certificate, workload labels). Nil means: IP and port from the
	// connection, no identity. It reads the connection (ConnFromContext)
	// and addresses, never header fields, which the client controls: an
	// HTTP/1.1 request's Header is nil when it is called (see reqFields).
	Peer func(r *http.Request) Peer
	// Registerer receives the Istio metrics; nil means no metrics.
	Registerer prometheus.Registerer
	// Reporter is the reporter label of the Istio metrics: "waypoint" (the
	// default), or "source" for an ingress gateway, which Istio counts as
	// the client of the services it forwards to; then Self stands in the
	// source_* labels (the gateway's workload, namespace, identity and
	// labels), as Istio's gateways report themselves.
	Reporter string
	Self     *Peer
	// AccessLog receives one JSON line per request; nil means no access log.
	AccessLog io.Writer
	// JWKSClient fetches jwksUri; nil means a client with a 5s timeout.
	JWKSClient *http.Client
	// JWKSRefresh is how long fetched keys are used before a refresh; zero
	// means 20 minutes (Istio's default).
	JWKSRefresh time.Duration
	// MaxBufferedBody is the largest request body kept in memory so that it
	// can be retried and mirrored; larger or streamed bodies (unknown
	// length) are forwarded once and not mirrored. Zero means 1 MiB.
	MaxBufferedBody int64
	// MaxMirrorsInFlight bounds concurrent mirrored requests; more are
	// dropped. Zero means 64.
	MaxMirrorsInFlight int
	// ConnPeer describes the client of a non-HTTP connection forwarded as
	// TCP; nil means the connection's addresses and no identity.
	ConnPeer func(c net.Conn) Peer
	// TraceSampling is the percentage (0–100) of new traces (requests
	// without a valid traceparent) that are sampled; callers' sampling
	// decisions are kept. Zero samples none.
	TraceSampling float64
	// ExportSpan receives the span of each sampled request after it ends
	// when the config names no tracer (model.L7Telemetry.Tracer, which
	// the proxy exports to itself); nil means spans are only propagated
	// (traceparent), not exported.
	ExportSpan func(Span)
	// SpanServiceName and SpanResource are the service.name and further
	// resource attributes of the spans exported to a config's tracer;
	// empty SpanServiceName means "waypoint".
	SpanServiceName string
	SpanResource    map[string]string
	// Logf reports proxy errors that have no response to go to (mirror
	// failures, L4 forwarding errors); nil means they are dropped.
	Logf func(format string, args ...any)
	// NodeName is the node this proxy runs on: with the config's
	// ProxyLocalities, its place for locality load balancing. Empty: the
	// proxy's place is unknown, and locality rules prefer nothing.
	NodeName string
	// ClusterID is the source_cluster and destination_cluster of the mesh's
	// workloads in request metrics (Istio's CLUSTER_ID, "Kubernetes" by
	// default there); empty labels them "unknown".
	ClusterID string

	metrics *metrics
}

// Peer is the client side of a request.
type Peer struct {
	// Principal is the client's SPIFFE identity ("cluster.local/ns/x/sa/y"
	// or with "spiffe://"); empty for plaintext clients.
	Principal string
	// Namespace is the client workload's namespace.
	Namespace string
	// Workload is the client workload's name, for telemetry.
	Workload string
	// Labels are the client workload's labels, for sourceLabels matches.
	Labels map[string]string
	// IP is the client address.
	IP netip.Addr
	// DestinationIP and DestinationPort are the address the client dialled
	// (the HBONE target: a service VIP or a pod IP); unset means the local
	// address of the connection.
	DestinationIP   netip.Addr
	DestinationPort uint32
	// DestinationService is the hostname of the service whose address the
	// client dialled (the HBONE target, resolved by the node agent, never
	// the Host header); empty when it dialled a workload. Policies scoped
	// to services (policy.Policy.Services) apply by it.
	DestinationService string
}

// policiesFor returns the policies that apply to a request for service.
func (c *compiled) policiesFor(service string) []*policy.Policy {
	if !c.scopedPolicies {
		return c.policies
	}
	out := make([]*policy.Policy, 0, len(c.policies))
	for _, p := range c.policies {
		if p.AppliesTo(service) {
			out = append(out, p)
		}
	}
	return out
}

// Proxy is the waypoint's L7 proxy: an http.Handler that routes, authorizes
// and forwards each request.
type Proxy struct {
	opts    Options
	cfg     atomic.Pointer[compiled]
	tracers tracers // the config's tracers' exporters
	metrics *metrics
	log     *accessLogger
	mirrors chan struct{}
	logs    logLimiter
	taps    tapHub
}

// New builds a Proxy. It fails when the config is invalid or the metrics
// cannot be registered.
func New(opts Options) (*Proxy, error) {
	var self *Peer
	switch opts.Reporter {
	case "", "waypoint":
	case "source":
		self = opts.Self
	default:
		return nil, fmt.Errorf("reporter %q: want waypoint or source", opts.Reporter)
	}
	m, err := newMetrics(opts.Registerer, opts.Reporter, self, opts.ClusterID)
	if err != nil {
		return nil, fmt.Errorf("register waypoint metrics: %w", err)
	}
	m.logf = opts.Logf
	opts.metrics = m
	if opts.MaxBufferedBody == 0 {
		opts.MaxBufferedBody = 1 << 20
	}
	if opts.MaxMirrorsInFlight == 0 {
		opts.MaxMirrorsInFlight = 64
	}
	p := &Proxy{opts: opts, metrics: m, mirrors: make(chan struct{}, opts.MaxMirrorsInFlight)}
	if opts.AccessLog != nil {
		p.log = &accessLogger{w: opts.AccessLog}
	}
	if err := p.Update(opts.Config); err != nil {
		return nil, err
	}
	return p, nil
}

// Close releases the upstream connections the proxy keeps idle. Requests in
// flight are not interrupted; stop Serve first.
func (p *Proxy) Close() error {
	p.tracers.close() // their last exports go out before the connections close
	if c := p.cfg.Load(); c != nil {
		for _, cl := range c.clusters {
			cl.close()
		}
		c.closeWorkloadRoutes()
	}
	return nil
}

// Update validates cfg and swaps it in atomically: requests in flight finish
// on the config they started with. On error the old config stays.
func (p *Proxy) Update(cfg *Config) error {
	c, err := compile(cfg, p.cfg.Load(), &p.opts)
	if err != nil {
		return err
	}
	if err := p.metrics.apply(c.telemetry.Metrics); err != nil {
		return fmt.Errorf("waypoint config: telemetry: %w", err)
	}
	c.exportSpan = p.opts.ExportSpan
	if t := c.telemetry.Tracer; t != nil {
		c.exportSpan = p.tracers.use(p, t)
	}
	if old := p.cfg.Swap(c); old != nil {
		old.closeWorkloadRoutes()
	}
	p.tracers.keepOnly(c.telemetry.Tracer)
	return nil
}

// isInternalHeader reports the canonical names set only by the mesh; a
// client's values are removed.
func isInternalHeader(k string) bool {
	switch k {
	case "X-Forwarded-Client-Cert", "X-Envoy-Peer-Metadata", "X-Envoy-Peer-Metadata-Id",
		"X-Istio-Attributes", "X-Meshlet-Source-Principal", "X-Envoy-Original-Path":
		return true
	}
	return false
}

// deleteHeaders removes from h the fields whose canonical name match
// reports: one pass over h (a handful of fields, usually) instead of a hash
// and lookup per listed name, every request.
func deleteHeaders(h http.Header, match func(string) bool) {
	for k := range h {
		if match(k) {
			delete(h, k)
		}
	}
}

// ServeHTTP is the flow of one request, top to bottom: normalize,
// authenticate (JWT), route, authorize, answer locally (direct response, redirect,
// CORS preflight), rate limit, inject faults, forward with retries through
// the cluster's load balancer and circuit breaker, mirror, edit the response,
// record telemetry.
func (p *Proxy) ServeHTTP(rw http.ResponseWriter, req *http.Request) {
	p.serve(rw, req, mapFields(req))
}

// serve is ServeHTTP for a request whose header fields are hdr (the h1
// server's list; see reqFields): nothing below reads req.Header but
// through hdr, or after hdr.header().
func (p *Proxy) serve(rw http.ResponseWriter, req *http.Request, hdr *reqFields) {
	cfg := p.cfg.Load()
	peer := p.peer(req)
	rec := newRecord(req, hdr, peer)
	w := &rec.w // the record's, reused with it
	w.ResponseWriter = rw
	defer func() {
		rec.code, rec.bytesOut = w.status, w.written
		if rec.code == 0 && !w.aborted {
			rec.code = http.StatusOK
		}
		// The Telemetry API (cfg.telemetry) switches what the options enable.
		var attrs *logfilter.Attributes // built once, for the metrics' tag values or the log filter
		if tm := cfg.telemetry.RequestMetrics; tm == nil || *tm {
			attrs = p.metrics.observe(rec, req, hdr, w)
		}
		if al := cfg.telemetry.AccessLog; (al == nil || *al) && p.log != nil {
			if cfg.logFilter != nil && attrs == nil {
				attrs = logAttributes(rec, req, hdr, w)
			}
			if cfg.logFilter == nil || cfg.logFilter.Match(attrs) {
				p.log.log(cfg.logFormat, rec, req, hdr, w)
			}
		}
		p.publishTap(rec)
		freeRecord(rec)
	}()
	grpc := isGRPCContent(hdr.get("Content-Type"))
	sampling := p.opts.TraceSampling
	if s := cfg.telemetry.TraceSampling; s != nil {
		sampling = *s
	}
	tc := startTrace(hdr, sampling)
	if cfg.exportSpan != nil && tc.sampled {
		// Custom tags read the client's headers as they came.
		defer exportSpan(cfg.exportSpan, tc, rec, w, traceTags(cfg.telemetry.TraceTags, hdr))
	}

	// 1. One view of the path for routing, policy and the upstream.
	path, err := normalizePath(req.URL.EscapedPath())
	if err != nil {
		p.localReply(w, rec, grpc, http.StatusBadRequest, "", "path_normalization_failed", "invalid path")
		return
	}
	rec.path = path
	if req.URL.RawQuery != "" {
		rec.path += "?" + req.URL.RawQuery
	}
	hdr.deleteIf(isInternalHeader)
	if misdirected(req) {
		p.localReply(w, rec, grpc, http.StatusMisdirectedRequest, "", "misdirected_request", "")
		return
	}

	// 2. Authenticate: an invalid token is 401, a missing one is anonymous.
	// This runs before routing, as Envoy's jwt_authn filter does, so that
	// claim headers it sets (and removes when spoofed) are what routes see.
	var auth *policy.Auth
	if cfg.jwt != nil {
		hdr.header()
		auth, err = cfg.jwt.forService(peer.DestinationService).authenticate(req.Context(), req)
		if err != nil {
			w.Header().Set("WWW-Authenticate", `Bearer realm="meshlet", error="invalid_token"`)
			p.localReply(w, rec, grpc, http.StatusUnauthorized, "", "jwt_authn_access_denied", "Jwt verification fails")
			return
		}
	}

	// 3. Route: first match in Istio order; a request addressed to a
	// workload the waypoint serves by its own address goes there.
	rt := cfg.workloadRoute(&peer)
	if lis := cfg.selectListener(peer.DestinationPort); rt == nil && lis != nil {
		_, rt = lis.findRoute(&routeInput{
			path: path, method: req.Method, authority: req.Host, header: hdr,
			url: req.URL, port: peer.DestinationPort, peer: peer,
		})
	}
	if rt != nil {
		rec.routeName = rt.name
	}

	// 4. Authorize: CUSTOM, DENY, then ALLOW, per Istio.
	var authzResponse http.Header // an authorizer's headers for the response
	if pols := cfg.policiesFor(peer.DestinationService); len(pols) > 0 {
		d := policy.Evaluate(pols, &policy.Request{
			SourcePrincipal: peer.Principal, SourceNamespace: peer.Namespace,
			SourceIP: peer.IP, DestinationIP: peer.DestinationIP, DestinationPort: peer.DestinationPort,
			Host: req.Host, Method: req.Method, Path: path, Headers: hdr, Auth: auth,
		})
		if d.Shadow != nil && d.Shadow.Allow != d.Allow {
			p.logf("waypoint: dry-run: %s %s would be %s by %s (%s)", req.Method, path, verdict(d.Shadow.Allow), d.Shadow.Policy, d.Shadow.Reason)
		}
		// A CUSTOM policy's authorizer first, as Envoy's ext_authz
		// filter runs before RBAC.
		if d.Check != "" {
			hdr.header()
			var done bool
			if authzResponse, done = p.authorize(w, rec, grpc, cfg.extAuthz[d.Check], d.CheckPolicy, req, peer); done {
				return
			}
		}
		if !d.Allow {
			p.localReply(w, rec, grpc, http.StatusForbidden, "", "rbac_access_denied_matched_policy["+d.Policy+"]", "RBAC: access denied")
			return
		}
	}
	if rt == nil {
		p.localReply(w, rec, grpc, http.StatusNotFound, flagNoRoute, "route_not_found", "")
		return
	}
	spec := rt.spec
	if rt.extAuthz != nil {
		// The route's ExternalAuth filter, once its policies allowed.
		hdr.header()
		h, done := p.authorize(w, rec, grpc, rt.extAuthz, rt.name, req, peer)
		if done {
			return
		}
		if authzResponse == nil {
			authzResponse = h
		} else {
			for k, vv := range h {
				authzResponse[k] = append(authzResponse[k], vv...)
			}
		}
	}

	// 5. Local answers.
	if rt.cors != nil && p.cors(w, req, hdr, rt.cors) {
		return
	}
	if dr := spec.DirectResponse; dr != nil {
		directReply(w, rec, dr, spec.ResponseHeaders)
		return
	}
	if rd := spec.Redirect; rd != nil {
		applyHeaderOps(w.Header(), spec.ResponseHeaders)
		http.Redirect(w, req, redirectURL(req, path, rd), cmp(rd.Code, http.StatusMovedPermanently))
		rec.details = "direct_response"
		return
	}

	// 6. Rate limit.
	if rt.limiter != nil && !rt.limiter.allow(rt.limiter.key(peer.Principal, hdr.Get), time.Now()) {
		w.Header().Set("X-Ratelimit-Limited", "true")
		p.localReply(w, rec, grpc, http.StatusTooManyRequests, flagRateLimited, "local_rate_limited", "local_rate_limited")
		return
	}

	// 7. Faults.
	if f := spec.Fault; f != nil {
		if f.Delay != nil && chance(f.Delay.Percent) {
			rec.flag(flagDelayInjected)
			select {
			case <-time.After(f.Delay.Duration):
			case <-req.Context().Done():
				rec.flag(flagDownstreamClosed)
				w.aborted = true
				return
			}
		}
		if a := f.Abort; a != nil && chance(a.Percent) {
			if a.GRPCStatus != "" && grpc {
				p.grpcReply(w, rec, flagFaultInjected, "fault_filter_abort", grpcCode(a.GRPCStatus), "fault filter abort")
				return
			}
			p.localReply(w, rec, grpc, cmp(a.HTTPStatus, http.StatusServiceUnavailable), flagFaultInjected, "fault_filter_abort", "fault filter abort")
			return
		}
	}

	// 8. Build the upstream request. A session's token, when it names one
	// of the route's endpoints, wins over the weights (GEP-1619).
	d := rt.pickDest(rand.Uint64N)
	var pin *endpoint
	if rt.session != nil {
		hdr.header()
		if sd, ep := rt.session.target(rt, req, time.Now()); sd != nil {
			d, pin = sd, ep
		}
	}
	if dr := d.spec.DirectResponse; dr != nil {
		// A backend that does not resolve: its share of the requests is
		// answered here (Gateway API: 500), never forwarded or mirrored.
		directReply(w, rec, dr, spec.ResponseHeaders, d.spec.ResponseHeaders)
		return
	}
	up := d.up
	rec.upstreamClust = up.name()
	rec.dest = destFor(up)
	ctx := req.Context()
	if spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, spec.Timeout)
		defer cancel()
	}
	// The upstream request shares the client request's header map, which
	// the handler owns and nothing below reads for the client's values
	// once it is edited for upstream, and copies its URL: two allocations
	// instead of Clone's deep copy of every field on every request.
	te := hdr.get("Te")
	upgrade := upgradeType(hdr)
	out := req.WithContext(ctx)
	hdr.bind(out)
	u := *req.URL
	out.URL = &u
	out.RequestURI = ""
	out.Close = false
	hdr.removeHop(upgrade != "")
	if upgrade != "" {
		hdr.set("Connection", "Upgrade")
		hdr.set("Upgrade", upgrade)
	}
	if te == "trailers" || grpc {
		hdr.setValues("Te", teTrailers[:1:1])
	}
	setPath(out.URL, rewritePath(path, rt), req.URL.RawQuery)
	out.Host = req.Host
	if rw := spec.Rewrite; rw != nil && rw.Authority != "" {
		out.Host = rw.Authority
	}
	if peer.IP.IsValid() {
		if prior := hdr.values("X-Forwarded-For"); len(prior) > 0 {
			hdr.set("X-Forwarded-For", strings.Join(prior, ", ")+", "+peer.IP.String())
		} else {
			hdr.set("X-Forwarded-For", peer.IP.String())
		}
	}
	if req.TLS != nil {
		hdr.setValues("X-Forwarded-Proto", xfpHTTPS[:1:1])
	} else {
		hdr.setValues("X-Forwarded-Proto", xfpHTTP[:1:1])
	}
	if hdr.get("X-Request-Id") == "" {
		hdr.set("X-Request-Id", rec.requestID)
	}
	applyHeaderOps(hdr, spec.RequestHeaders)
	applyHeaderOps(hdr, d.spec.RequestHeaders)
	body, replayable, err := p.bufferBody(req, grpc, upgrade != "")
	if err != nil {
		p.localReply(w, rec, grpc, http.StatusBadRequest, flagDownstreamClosed, "downstream_remote_disconnect", "")
		return
	}
	var replay func() (io.ReadCloser, bool)
	switch {
	case replayable && out.ContentLength == 0:
		// The common case, without closures to allocate.
		out.Body, out.GetBody, replay = http.NoBody, getNoBody, replayNoBody
	case replayable:
		out.Body, out.GetBody = body(), func() (io.ReadCloser, error) { return body(), nil }
		replay = func() (io.ReadCloser, bool) { return body(), true }
	case upgrade == "":
		tee := &teeBody{src: req.Body, limit: p.opts.MaxBufferedBody}
		out.Body, replay = tee, tee.replay
	}

	if upgrade != "" {
		// Read below as a map: the upgrade's transport choice and
		// hijack.
		hdr.header()
	}

	// 9. Mirror: fire and forget, never waits for or slows the primary.
	if replayable && upgrade == "" {
		for _, m := range rt.mirrors {
			if chance(m.percent) {
				p.mirror(out, hdr, m.up, body, spec.Timeout)
			}
		}
	}

	// 10. Forward, retrying per policy.
	// A client without the consistent-hash cookie is given one (its value
	// picks the endpoint), set on the response after the upstream's fields.
	sticky := stickyCookie(up.policy.LB, hdr)
	var hashKey string
	if sticky != nil {
		hashKey = sticky.Value
	} else {
		hashKey = up.hashKey(hdr, out.URL.RawQuery, peer)
	}
	resp, held, ok := p.forward(w, rec, out, hdr, up, peer, spec, replay, grpc, hashKey, pin)
	if !ok {
		return
	}
	defer held.release()
	if upgrade != "" && resp.StatusCode == http.StatusSwitchingProtocols {
		p.handleUpgrade(w, rec, resp)
		return
	}
	defer resp.Body.Close()

	// 11. Response.
	rec.grpcStatus = answerGet(resp, "Grpc-Status")
	flush := streaming(resp, grpc)
	var h http.Header
	raw := answerRaw(resp)
	edited := len(resp.Trailer) > 0 || sticky != nil || (rt.session != nil && held.ep != pin) || len(authzResponse) > 0 ||
		!spec.ResponseHeaders.IsZero() || !d.spec.ResponseHeaders.IsZero()
	if a, ok := w.ResponseWriter.(rawAdopter); !ok || raw == nil || edited || !a.adoptRaw(raw) {
		h = w.Header()
		if a, ok := w.ResponseWriter.(headerAdopter); ok && len(h) == 0 {
			// The answer's header map becomes the response's: no copy of
			// every field, and it is edited below as the copy would be.
			h = answerHeader(resp)
			a.adoptHeader(h)
		} else {
			copyHeader(h, answerHeader(resp))
		}
		removeHopHeaders(h, false)
		applyHeaderOps(h, spec.ResponseHeaders)
		if sticky != nil {
			h.Add("Set-Cookie", sticky.String())
		}
		if rt.session != nil && held.ep != pin {
			rt.session.give(h, req, d, held.ep, time.Now())
		}
		applyHeaderOps(h, d.spec.ResponseHeaders)
		for k, vv := range authzResponse {
			h[k] = vv
		}
	}
	// else the answer's fields go to the client as they came (an HTTP/1.1
	// client, nothing to edit): no header map is built for them.
	announced := make([]string, 0, len(resp.Trailer))
	for k := range resp.Trailer {
		announced = append(announced, k)
	}
	if len(announced) > 0 {
		h.Add("Trailer", strings.Join(announced, ", "))
	}
	w.WriteHeader(resp.StatusCode)
	if err := copyBody(w, resp.Body, flush); err != nil {
		rec.flag(flagUpstreamReset)
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			rec.flag(flagUpstreamTimeout)
		}
		w.abort()
		return
	}
	for k, vv := range resp.Trailer {
		if contains(announced, k) {
			h[k] = vv
		} else {
			h[http.TrailerPrefix+k] = vv
		}
		if http.CanonicalHeaderKey(k) == "Grpc-Status" && len(vv) > 0 {
			rec.grpcStatus = vv[0]
		}
	}
}

// inFlight is a try's hold on its endpoint and connection pool slot, and
// the cancel of its own context (per-try timeout), if any.
type inFlight struct {
	ep       *endpoint
	pool     *connLimiter
	requests *connLimiter
	cancel   context.CancelFunc
}

func (f inFlight) release() {
	f.ep.active.Add(-1)
	f.pool.release()
	f.requests.release()
	if f.cancel != nil {
		f.cancel()
	}
}

func getNoBody() (io.ReadCloser, error)   { return http.NoBody, nil }
func replayNoBody() (io.ReadCloser, bool) { return http.NoBody, true }

// Header values set on every request, shared: a field's slice has room for
// no more values (an Add copies it), and nothing writes into one.
var (
	teTrailers = []string{"trailers"}
	xfpHTTP    = []string{"http"}
	xfpHTTPS   = []string{"https"}
)

// forward sends out to up, retrying per the route's policy while replay can
// produce the request body again (nil: never). On success it returns the
// response and what it holds, to release once the response is done; on
// failure it has written the local reply. hashKey is the request's
// consistent-hash key (the cookie the client is being given, or up's
// hashKey); pin, when set, is the endpoint of the client's session, tried
// first unless ejected.
func (p *Proxy) forward(w *responseWriter, rec *record, out *http.Request, hdr *reqFields, up *upstream, peer Peer, spec *model.L7Route, replay func() (io.ReadCloser, bool), grpc bool, hashKey string, pin *endpoint) (*http.Response, inFlight, bool) {
	h2 := up.useH2(grpc, out)
	if h2 {
		hdr.header() // the HTTP/2 transport reads a map (before out is copied below)
	}
	if up.policy.ProxyProtocol != 0 {
		// The connection's PROXY header names this request's client.
		src, _ := netip.ParseAddrPort(rec.downstreamRem)
		out = out.WithContext(withProxyAddrs(out.Context(), proxyAddrs{src: src, dst: addrPortOf(rec.downstreamLoc)}))
	}
	ctx := out.Context()
	rp := retryPolicyFor(spec)
	attempts := 1 + rp.Attempts
	if replay == nil {
		attempts = 1
	}
	var next io.ReadCloser
	var transport http.RoundTripper = up.h1
	pool := up.h1Pool
	if h2 {
		transport, pool = up.h2, nil
	}
	// The HTTP/1.1 transport writes the fields from the list while they
	// are one (else from out.Header).
	fields, listed := hdr.listed()
	var triedBuf [4]*endpoint
	tried := triedBuf[:0]
	retrying := false // holds one of up's retry slots
	defer up.releaseRetry(&retrying)
	for try := 0; ; try++ {
		avoid, leave := tried, []*endpoint(nil)
		if rp.SameHosts {
			avoid = nil
		}
		if rp.RemoteLocalities {
			leave = tried
		}
		var ep *endpoint
		var err error
		if try == 0 && pin != nil && !pin.ejected(time.Now()) {
			ep = pin
		} else {
			ep, err = up.pickFrom(avoid, leave, hashKey)
		}
		if err != nil {
			p.localReply(w, rec, grpc, http.StatusServiceUnavailable, flagNoHealthy, "no_healthy_upstream", "no healthy upstream")
			return nil, inFlight{}, false
		}
		tried = append(tried, ep)
		rec.dest.setEndpoint(ep)
		err = up.requests.acquire(ctx)
		if err == nil {
			if err = pool.acquire(ctx); err != nil {
				up.requests.release()
			}
		}
		if err != nil {
			if errors.Is(err, errOverflow) {
				if p.metrics != nil {
					p.metrics.overflows.WithLabelValues(up.name()).Inc()
				}
				w.Header().Set("X-Envoy-Overloaded", "true")
				p.localReply(w, rec, grpc, http.StatusServiceUnavailable, flagOverflow, "upstream_reset_before_response_started{overflow}", "upstream connect error or disconnect/reset before headers. reset reason: overflow")
			} else {
				p.timeoutOrClosed(w, rec, grpc, ctx)
			}
			return nil, inFlight{}, false
		}
		ep.active.Add(1)
		held := inFlight{ep: ep, pool: pool, requests: up.requests}
		rec.upstreamHost = ep.addr

		// A try gets its own context only when a per-try timeout can end
		// it: a cancelable context costs allocations and a registration
		// with the request's context on every request.
		attempt, cancelTry := out, func() {}
		var perTryFired *atomic.Bool // nil: no per-try timeout
		var timer *time.Timer
		if rp.PerTryTimeout > 0 {
			var tryCtx context.Context
			tryCtx, cancelTry = context.WithCancel(ctx)
			fired := new(atomic.Bool)
			perTryFired = fired
			timer = time.AfterFunc(rp.PerTryTimeout, func() { fired.Store(true); cancelTry() })
			attempt = out.WithContext(tryCtx)
		} else if try > 0 {
			// A new Request per retry: the transport may still hold the
			// previous one while it finishes writing its body.
			attempt = out.WithContext(ctx)
		}
		attempt.URL.Host = ep.addr
		attempt.URL.Scheme = "http"
		if try > 0 {
			attempt.Body = next
		}
		if up.rate != nil {
			// The one place a try goes upstream, whatever the protocol:
			// a request in the rate budget's window, first try or retry.
			up.rate.sent()
		}
		start := time.Now()
		var resp *http.Response
		if listed {
			resp, err = up.h1.roundTrip(attempt, fields)
		} else {
			resp, err = transport.RoundTrip(attempt)
		}
		if timer != nil {
			timer.Stop()
		}
		rec.upstreamTime = time.Since(start)

		kind, status, gstatus := failNone, 0, ""
		switch {
		case err == nil:
			status, gstatus = resp.StatusCode, answerGet(resp, "Grpc-Status")
		case perTryFired != nil && perTryFired.Load():
			kind = failPerTryTimeout
		case ctx.Err() != nil:
			cancelTry()
			held.release()
			up.report(ep, 0)
			p.timeoutOrClosed(w, rec, grpc, ctx)
			return nil, inFlight{}, false
		case errors.As(err, new(*malformedBodyError)):
			// The client's body, not the upstream, failed: no retry, no
			// outlier report; the upstream connection was cut before the
			// request could end (see h1Conn.sendRequest).
			cancelTry()
			held.release()
			rec.transportFailure = boundedReason(err.Error())
			p.localReply(w, rec, grpc, http.StatusBadRequest, flagDownstreamProtocolError, "downstream_protocol_error", "malformed request body")
			return nil, inFlight{}, false
		case isDialError(err):
			kind = failConnect
		default:
			kind = failReset
		}
		if err != nil {
			rec.transportFailure = boundedReason(err.Error())
		}
		outlierStatus := status
		if kind == failPerTryTimeout {
			outlierStatus = statusTryTimeout
		}
		up.report(ep, outlierStatus)

		retry := try+1 < attempts && shouldRetryOn(rp, status, gstatus, kind)
		overflow := false
		if retry {
			// The retry this one was has ended; the next needs a slot of
			// the cluster's maxRetries or concurrent retry budget (Envoy's
			// retry circuit breaker: over it, the answer stands, flagged
			// UO). A rate budget is checked below, once the retry is sure.
			up.releaseRetry(&retrying)
			if !up.acquireRetry(&retrying) {
				retry, overflow = false, true
				rec.flag(flagOverflow)
				if p.metrics != nil {
					p.metrics.overflows.WithLabelValues(up.name()).Inc()
				}
			}
		}
		if retry {
			next, retry = replay()
		}
		if !retry {
			if err == nil {
				if try > 0 && !overflow && shouldRetryOn(rp, status, gstatus, kind) {
					rec.flag(flagRetryExhausted)
				}
				held.cancel = cancelTry
				return resp, held, true
			}
			cancelTry()
			held.release()
			if try > 0 {
				rec.flag(flagRetryExhausted)
			}
			switch kind {
			case failPerTryTimeout:
				p.localReply(w, rec, grpc, http.StatusGatewayTimeout, flagUpstreamTimeout, "upstream_per_try_timeout", "upstream request timeout")
			case failConnect:
				p.localReply(w, rec, grpc, http.StatusServiceUnavailable, flagConnFailure, "upstream_reset_before_response_started{connection_failure}", "upstream connect error or disconnect/reset before headers. reset reason: connection failure")
			default:
				p.localReply(w, rec, grpc, http.StatusServiceUnavailable, flagUpstreamReset, "upstream_reset_before_response_started{connection_termination}", "upstream connect error or disconnect/reset before headers. reset reason: connection termination")
			}
			return nil, inFlight{}, false
		}
		if resp != nil {
			io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
		}
		cancelTry()
		held.release()
		if up.rate != nil && !up.rate.allowRetry() {
			// Over the cluster's rate budget (Gateway API's retryConstraint):
			// the retry is not made and the client is answered 503, UO.
			next.Close()
			if p.metrics != nil {
				p.metrics.overflows.WithLabelValues(up.name()).Inc()
			}
			w.Header().Set("X-Envoy-Overloaded", "true")
			p.localReply(w, rec, grpc, http.StatusServiceUnavailable, flagOverflow, "retry_budget_exceeded", "retry budget exceeded")
			return nil, inFlight{}, false
		}
		select {
		case <-time.After(retryBackoff(rp.Backoff, try)):
		case <-ctx.Done():
			p.timeoutOrClosed(w, rec, grpc, ctx)
			return nil, inFlight{}, false
		}
	}
}

// timeoutOrClosed answers a request whose context ended: 504 UT when the
// route timeout fired, nothing (DC) when the client went away.
func (p *Proxy) timeoutOrClosed(w *responseWriter, rec *record, grpc bool, ctx context.Context) {
	if errors.Is(ctx.Err(), context.DeadlineExceeded) {
		p.localReply(w, rec, grpc, http.StatusGatewayTimeout, flagUpstreamTimeout, "upstream_response_timeout", "upstream request timeout")
		return
	}
	rec.flag(flagDownstreamClosed)
	rec.details = "downstream_remote_disconnect"
	w.aborted = true
}

type failKind int

const (
	failNone failKind = iota
	failConnect
	failReset
	failPerTryTimeout
)

// retryPolicyFor is the route's retry policy, or Istio's default.
func retryPolicyFor(spec *model.L7Route) *model.RetryPolicy {
	if spec.Retries != nil {
		return spec.Retries
	}
	return defaultRetry
}

var defaultRetry = &model.DefaultRetry

// retryBackoff is how long to wait before retry n (0 for the first retry)
// of a policy whose Backoff is base. Zero base is Envoy's default: full
// jitter over min(25ms<<n, 250ms). Otherwise a random time in [base,
// min(base<<n, 10*base)]: never under base, which Gateway API calls the
// minimum between tries, growing like Envoy's exponential backoff up to its
// 10x cap. n is capped where both ceilings are already reached (2^4 > 10),
// so that a policy with many attempts cannot overflow the shift.
func retryBackoff(base time.Duration, n int) time.Duration {
	n = min(n, 4)
	if base <= 0 {
		return time.Duration(rand.Int64N(int64(min(25*time.Millisecond<<n, 250*time.Millisecond)) + 1))
	}
	mult := time.Duration(min(1<<n, 10))
	ceil := base * mult
	if ceil/mult != base { // overflow: only for a base of centuries
		ceil = math.MaxInt64
	}
	return base + time.Duration(rand.Int64N(int64(ceil-base)+1))
}

var grpcRetryCodes = map[string]string{
	"cancelled": "1", "deadline-exceeded": "4", "resource-exhausted": "8", "internal": "13", "unavailable": "14",
}

func retryOnFor(rp *model.RetryPolicy) []string {
	if len(rp.RetryOn) == 0 {
		return defaultRetry.RetryOn
	}
	return rp.RetryOn
}

// shouldRetryOn applies Envoy's retry_on conditions to one try's outcome.
func shouldRetryOn(rp *model.RetryPolicy, status int, grpcStatus string, kind failKind) bool {
	codes := rp.RetriableStatusCodes
	if len(rp.RetryOn) == 0 && len(codes) == 0 {
		codes = []int{503}
	}
	for _, on := range retryOnFor(rp) {
		switch on {
		case "5xx":
			if status >= 500 || kind != failNone {
				return true
			}
		case "gateway-error":
			if status == 502 || status == 503 || status == 504 || kind == failPerTryTimeout {
				return true
			}
		case "reset":
			if kind == failReset || kind == failPerTryTimeout {
				return true
			}
		case "connect-failure":
			if kind == failConnect {
				return true
			}
		case "refused-stream":
			// The Go transport retries REFUSED_STREAM itself on a new connection.
		case "retriable-status-codes":
			if contains(codes, status) {
				return true
			}
		case "retriable-4xx":
			if status == 409 {
				return true
			}
		default:
			if c, ok := grpcRetryCodes[on]; ok && grpcStatus == c {
				return true
			}
			// A status code; the digit check spares building an error
			// for each named condition on every answer.
			if on != "" && on[0] >= '0' && on[0] <= '9' {
				if n, err := strconv.Atoi(on); err == nil && n == status {
					return true
				}
			}
		}
	}
	return false
}

func contains[T comparable](list []T, v T) bool {
	for _, x := range list {
		if x == v {
			return true
		}
	}
	return false
}

// boundedReason keeps an upstream error readable in one access log field.
func boundedReason(s string) string {
	const limit = 256
	if len(s) > limit {
		s = s[:limit] + "…"
	}
	return s
}

func isDialError(err error) bool {
	var op *net.OpError
	return errors.As(err, &op) && op.Op == "dial"
}

// bufferBody reads a request body of known length up to MaxBufferedBody so
// that it can be replayed by retries and mirrors. gRPC, upgrades and bodies of
// unknown or larger length are streamed (see teeBody).
func (p *Proxy) bufferBody(req *http.Request, grpc, upgrade bool) (func() io.ReadCloser, bool, error) {
	if req.Body == nil || req.Body == http.NoBody || req.ContentLength == 0 {
		return func() io.ReadCloser { return http.NoBody }, true, nil
	}
	if grpc || upgrade || req.ContentLength < 0 || req.ContentLength > p.opts.MaxBufferedBody {
		return nil, false, nil
	}
	b, err := io.ReadAll(io.LimitReader(req.Body, req.ContentLength))
	if err != nil {
		return nil, false, fmt.Errorf("read request body: %w", err)
	}
	return func() io.ReadCloser { return io.NopCloser(bytes.NewReader(b)) }, true, nil
}

// teeBody streams a request body upstream while keeping a copy of up to
// limit bytes, so that a failed try can be retried once the body has been
// read to its end within the limit (as Envoy buffers for retries). This is
// what lets a unary gRPC call be retried on UNAVAILABLE while a long stream
// is forwarded without waiting for it to end.
type teeBody struct {
	src   io.ReadCloser
	limit int64
	mu    sync.Mutex
	buf   []byte
	eof   bool
	over  bool
}

func (t *teeBody) Read(p []byte) (int, error) {
	n, err := t.src.Read(p)
	t.mu.Lock()
	if n > 0 && !t.over {
		if int64(len(t.buf)+n) > t.limit {
			t.over, t.buf = true, nil
		} else {
			t.buf = append(t.buf, p[:n]...)
		}
	}
	if err == io.EOF {
		t.eof = true
	}
	t.mu.Unlock()
	return n, err
}

// Close leaves the client's body to net/http, which closes it when the
// handler returns.
func (t *teeBody) Close() error { return nil }

// replay returns the whole body again, if it was read to its end within the
// limit.
func (t *teeBody) replay() (io.ReadCloser, bool) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if !t.eof || t.over {
		return nil, false
	}
	return io.NopCloser(bytes.NewReader(t.buf)), true
}

// authorize asks authorizer x (of the CUSTOM policy or the route named by
// by) about req. It answers the client itself when the request is denied
// (or x is nil, the provider not configured: fail closed) and reports done;
// when allowed, it edits req's headers as the authorizer says and returns
// the headers it wants on the response.
func (p *Proxy) authorize(w *responseWriter, rec *record, grpc bool, x *extAuthz, by string, req *http.Request, peer Peer) (http.Header, bool) {
	if x == nil {
		rec.flag(flagExtAuthzDenied)
		p.localReply(w, rec, grpc, http.StatusForbidden, "", "ext_authz_provider_missing["+by+"]", "RBAC: access denied")
		return nil, true
	}
	id := get(req.Header, "X-Request-Id")
	if id == "" {
		id = rec.requestID
	}
	ar := &authzRequest{req: req, path: rec.path, peer: peer, id: id}
	if b := x.spec.IncludeBody; b != nil {
		body, ok, err := authzBody(req, b)
		switch {
		case err != nil:
			p.localReply(w, rec, grpc, http.StatusBadRequest, flagDownstreamClosed, "downstream_remote_disconnect", "")
			return nil, true
		case !ok:
			p.localReply(w, rec, grpc, http.StatusRequestEntityTooLarge, "", "ext_authz_request_too_large", "Payload Too Large")
			return nil, true
		}
		ar.body = body
	}
	v := x.check(req.Context(), ar)
	if !v.allow {
		rec.flag(flagExtAuthzDenied)
		rec.details = v.details
		h := w.Header()
		for k, vv := range v.downstream {
			h[k] = vv
		}
		w.WriteHeader(v.status)
		w.Write(v.body)
		return nil, true
	}
	for _, k := range v.remove {
		req.Header.Del(k)
	}
	for k, vv := range v.upstream {
		req.Header[k] = vv
	}
	return v.downstream, false
}

// mirror sends a shadow copy of out (its fields hdr) to up, with "-shadow" appended to the
// host as Envoy does. It never blocks: when MaxMirrorsInFlight are already
// running, the copy is dropped.
func (p *Proxy) mirror(out *http.Request, hdr *reqFields, up *upstream, body func() io.ReadCloser, timeout time.Duration) {
	select {
	case p.mirrors <- struct{}{}:
	default:
		return
	}
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	ctx, cancel := context.WithTimeout(context.WithoutCancel(out.Context()), timeout)
	m := out.Clone(ctx) // a copy of out's Header too, once the fields are a map
	if m.Header == nil {
		m.Header = hdr.cloneHeader() // out's fields, still a list
	}
	m.Body = body()
	m.GetBody = nil
	host := m.Host
	if h, port, ok := splitHostPort(host); ok && port != "" {
		host = net.JoinHostPort(h+"-shadow", port)
	} else {
		host += "-shadow"
	}
	m.Host = host
	go p.sendMirror(m, up, cancel)
}

// sendMirror runs in its own goroutine: one shadow request, response
// discarded.
func (p *Proxy) sendMirror(m *http.Request, up *upstream, cancel context.CancelFunc) {
	defer func() { <-p.mirrors }()
	defer cancel()
	ep, err := up.pick(nil, up.hashKey(mapFields(m), m.URL.RawQuery, Peer{}))
	if err != nil {
		return
	}
	m.URL.Host, m.URL.Scheme = ep.addr, "http"
	resp, err := up.transport(isGRPC(m), m).RoundTrip(m)
	if err != nil {
		p.logf("waypoint: mirror to %s: %v", up.name(), err)
		return
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	resp.Body.Close()
}

// localReply answers without an upstream response, in gRPC form for gRPC
// requests (Envoy's HTTP-to-gRPC status mapping).
func (p *Proxy) localReply(w *responseWriter, rec *record, grpc bool, code int, flag, details, body string) {
	if flag != "" {
		rec.flag(flag)
	}
	rec.details = details
	if grpc {
		g := "2" // UNKNOWN
		switch code {
		case 400:
			g = "13"
		case 401:
			g = "16"
		case 403:
			g = "7"
		case 404:
			g = "12"
		case 429, 502, 503, 504:
			g = "14"
		}
		p.grpcReply(w, rec, flag, details, g, body)
		return
	}
	if body == "" {
		body = http.StatusText(code)
	}
	w.Header().Set("Content-Type", "text/plain")
	w.Header().Set("Content-Length", strconv.Itoa(len(body)))
	w.WriteHeader(code)
	io.WriteString(w, body)
}

func (p *Proxy) grpcReply(w *responseWriter, rec *record, flag, details, status, msg string) {
	if flag != "" {
		rec.flag(flag)
	}
	rec.details = details
	rec.grpcStatus = status
	h := w.Header()
	h.Set("Content-Type", "application/grpc")
	h.Set("Grpc-Status", status)
	h.Set("Grpc-Message", url.PathEscape(msg))
	w.WriteHeader(http.StatusOK)
}

func grpcCode(s string) string {
	names := map[string]string{
		"OK": "0", "CANCELLED": "1", "UNKNOWN": "2", "INVALID_ARGUMENT": "3", "DEADLINE_EXCEEDED": "4",
		"NOT_FOUND": "5", "ALREADY_EXISTS": "6", "PERMISSION_DENIED": "7", "RESOURCE_EXHAUSTED": "8",
		"FAILED_PRECONDITION": "9", "ABORTED": "10", "OUT_OF_RANGE": "11", "UNIMPLEMENTED": "12",
		"INTERNAL": "13", "UNAVAILABLE": "14", "DATA_LOSS": "15", "UNAUTHENTICATED": "16",
	}
	if n, ok := names[strings.ToUpper(s)]; ok {
		return n
	}
	return s
}

// cors answers a preflight (true) or adds CORS headers to the response.
func (p *Proxy) cors(w *responseWriter, req *http.Request, hdr *reqFields, cp *corsPolicy) bool {
	c := cp.spec
	origin := hdr.get("Origin")
	if origin == "" {
		return false
	}
	allowed := false
	for _, sm := range cp.origins {
		if sm.match(origin) {
			allowed = true
			break
		}
	}
	if !allowed {
		return false
	}
	h := w.Header()
	h.Set("Access-Control-Allow-Origin", origin)
	h.Add("Vary", "Origin")
	if c.AllowCredentials {
		h.Set("Access-Control-Allow-Credentials", "true")
	}
	if req.Method == http.MethodOptions && hdr.get("Access-Control-Request-Method") != "" {
		if len(c.AllowMethods) > 0 {
			h.Set("Access-Control-Allow-Methods", strings.Join(c.AllowMethods, ","))
		}
		if len(c.AllowHeaders) > 0 {
			h.Set("Access-Control-Allow-Headers", strings.Join(c.AllowHeaders, ","))
		}
		if c.MaxAge > 0 {
			h.Set("Access-Control-Max-Age", strconv.Itoa(int(c.MaxAge.Seconds())))
		}
		w.WriteHeader(http.StatusOK)
		return true
	}
	if len(c.ExposeHeaders) > 0 {
		h.Set("Access-Control-Expose-Headers", strings.Join(c.ExposeHeaders, ","))
	}
	return false
}

// defaultDestination fills the destination the peer does not name from the
// connection's local address.
func (pr *Peer) defaultDestination(local net.Addr) {
	if pr.DestinationPort != 0 && pr.DestinationIP.IsValid() {
		return
	}
	var ap netip.AddrPort
	if tcp, ok := local.(*net.TCPAddr); ok {
		ap = tcp.AddrPort() // no string built and parsed per request
	} else {
		var err error
		if ap, err = netip.ParseAddrPort(local.String()); err != nil {
			return
		}
	}
	if !ap.IsValid() {
		return
	}
	if pr.DestinationPort == 0 {
		pr.DestinationPort = uint32(ap.Port())
	}
	if !pr.DestinationIP.IsValid() {
		pr.DestinationIP = ap.Addr().Unmap()
	}
}

// RemoteIP is c's remote address, unmapped; the zero Addr when it is not
// an IP address.
func RemoteIP(c net.Conn) netip.Addr {
	ra := c.RemoteAddr()
	if ta, ok := ra.(*net.TCPAddr); ok {
		return ta.AddrPort().Addr().Unmap() // no string built and parsed
	}
	if ap, err := netip.ParseAddrPort(ra.String()); err == nil {
		return ap.Addr().Unmap()
	}
	return netip.Addr{}
}

func (p *Proxy) peer(req *http.Request) Peer {
	var pr Peer
	if p.opts.Peer != nil {
		pr = p.opts.Peer(req)
	}
	if !pr.IP.IsValid() {
		if ap, err := netip.ParseAddrPort(req.RemoteAddr); err == nil {
			pr.IP = ap.Addr().Unmap()
		}
	}
	if a, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		pr.defaultDestination(a)
	}
	if pr.Namespace == "" && pr.Principal != "" {
		// "td/ns/<ns>/sa/<sa>"
		parts := strings.Split(strings.TrimPrefix(pr.Principal, "spiffe://"), "/")
		if len(parts) == 5 && parts[1] == "ns" {
			pr.Namespace = parts[2]
		}
	}
	return pr
}

func exportSpan(export func(Span), tc traceContext, rec *record, w *responseWriter, tags map[string]string) {
	name := rec.routeName
	if name == "" {
		name = rec.authority
	}
	code := w.status
	if code == 0 && !w.aborted {
		code = http.StatusOK
	}
	attrs := map[string]string{
		"http.request.method":       rec.method,
		"url.path":                  rec.path,
		"server.address":            rec.authority,
		"http.response.status_code": strconv.Itoa(code),
		"istio.response_flags":      rec.flagString(),
		"istio.upstream_cluster":    rec.upstreamClust,
		"network.peer.address":      rec.upstreamHost,
	}
	for k, v := range tags {
		if _, builtin := attrs[k]; !builtin {
			attrs[k] = v
		}
	}
	export(Span{
		TraceID: tc.traceID, SpanID: tc.spanID, ParentSpanID: tc.parentID, Name: name,
		Start: rec.start, End: time.Now(), Attributes: attrs,
	})
}

// maxTagValue bounds a custom tag's value taken from a request header.
const maxTagValue = 256

// traceTags are the values of a config's custom span tags for a request:
// a literal, or the request header's value (bounded; its default when the
// request has none). Nil without tags.
func traceTags(tags map[string]model.TraceTag, h *reqFields) map[string]string {
	if len(tags) == 0 {
		return nil
	}
	out := make(map[string]string, len(tags))
	for name, t := range tags {
		v := t.Literal
		if t.Header != "" {
			if v = h.Get(t.Header); v == "" {
				v = t.Default
			}
			if len(v) > maxTagValue {
				v = v[:maxTagValue]
			}
		}
		out[name] = v
	}
	return out
}

// logf logs through Options.Logf. What clients cause (a connection with
// no route, one the policies deny, a failing upstream) is logged at most
// logBurst times a second per message, the rest counted in the next one,
// so that a client cannot flood the proxy's log.
func (p *Proxy) logf(format string, args ...any) {
	if p.opts.Logf == nil {
		return
	}
	ok, dropped := p.logs.allow(format, time.Now())
	if !ok {
		return
	}
	if dropped > 0 {
		format += " (and %d more like it in the last second, not logged)"
		args = append(args, dropped)
	}
	p.opts.Logf(format, args...)
}

// logBurst is how many messages of one kind logf writes a second.
const logBurst = 10

// logLimiter counts messages by format over one-second windows.
type logLimiter struct {
	mu      sync.Mutex
	windows map[string]*logWindow // by format: a constant of the code, so bounded
}

type logWindow struct {
	start           time.Time
	logged, dropped int
}

// allow reports whether a message of format may be logged at now, and how
// many of its kind were dropped since the last one that was.
func (l *logLimiter) allow(format string, now time.Time) (bool, int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.windows == nil {
		l.windows = map[string]*logWindow{}
	}
	w := l.windows[format]
	if w == nil {
		w = &logWindow{start: now}
		l.windows[format] = w
	}
	if now.Sub(w.start) >= time.Second {
		w.start, w.logged = now, 0
	}
	if w.logged >= logBurst {
		w.dropped++
		return false, 0
	}
	w.logged++
	dropped := w.dropped
	w.dropped = 0
	return true, dropped
}

// records are reused across requests: a record is some 600 bytes, and
// every request has one.
var records = sync.Pool{New: func() any { return new(record) }}

// newRecord starts a request's record; freeRecord gives it back once the
// request's telemetry is written, and nothing may hold it after.
func newRecord(req *http.Request, hdr *reqFields, peer Peer) *record {
	rec := records.Get().(*record)
	*rec = record{
		start:     time.Now(),
		method:    req.Method,
		path:      req.URL.RequestURI(),
		protocol:  req.Proto,
		authority: req.Host,
		userAgent: hdr.get("User-Agent"),
		requestID: hdr.get("X-Request-Id"),
		xff:       hdr.get("X-Forwarded-For"),
		peer:      peer,
		bytesIn:   max(req.ContentLength, 0),
	}
	rec.downstreamRem = req.RemoteAddr
	if a, ok := req.Context().Value(http.LocalAddrContextKey).(net.Addr); ok {
		rec.downstreamLoc = a // formatted only if the access log is written
	}
	if rec.requestID == "" {
		// A random ID to correlate logs and traces, not a secret:
		// math/rand/v2's generator costs a fraction of crypto/rand's.
		var b [16]byte
		binary.LittleEndian.PutUint64(b[:8], rand.Uint64())
		binary.LittleEndian.PutUint64(b[8:], rand.Uint64())
		rec.requestID = hex.EncodeToString(b[:])
	}
	return rec
}

func freeRecord(rec *record) {
	*rec = record{}
	records.Put(rec)
}

// destFor fills telemetry's destination labels from the cluster name
// (Istio's "outbound|port|subset|host" when used) and endpoint labels.
// setEndpoint describes the endpoint actually picked: its workload, app
// and version (the cluster's first endpoint stands in until one is picked).
func (d *destInfo) setEndpoint(ep *endpoint) {
	if ep.workload != "" {
		d.workload = ep.workload
	}
	if ep.identity != "" {
		d.principal = ep.identity
	}
	if a := ep.labels["app"]; a != "" {
		d.app = a
	}
	if v := ep.labels["version"]; v != "" {
		d.version = v
	}
}

// destFor is up's destination labels before an endpoint is picked; they
// are worked out once, when the upstream is built (see newUpstream).
func destFor(up *upstream) destInfo { return up.dest }

func destOf(up *upstream) destInfo {
	d := destInfo{service: up.cluster, version: up.subset}
	if parts := strings.Split(up.cluster, "|"); len(parts) == 4 {
		d.service = parts[3]
		if d.version == "" {
			d.version = parts[2]
		}
	}
	labels := strings.Split(d.service, ".")
	d.name = labels[0]
	if len(labels) > 1 {
		d.namespace = labels[1]
	}
	if len(up.endpoints) > 0 {
		l := up.endpoints[0].labels
		d.app = l["app"]
		if v := l["version"]; v != "" {
			d.version = v
		}
		d.workload = up.endpoints[0].workload
		d.principal = up.endpoints[0].identity
	}
	return d
}

func verdict(allow bool) string {
	if allow {
		return "allowed"
	}
	return "denied"
}

func chance(percent float64) bool {
	return percent >= 100 || (percent > 0 && rand.Float64()*100 < percent)
}

func cmp(v, def int) int {
	if v == 0 {
		return def
	}
	return v
}

// get is h.Get for a key in canonical form, without canonicalizing it again
// (the header maps the waypoint reads are keyed canonically: net/http's and
// h1wire's).
func get(h http.Header, k string) string {
	if v := h[k]; len(v) > 0 {
		return v[0]
	}
	return ""
}

func isGRPC(r *http.Request) bool { return isGRPCContent(get(r.Header, "Content-Type")) }

func isGRPCContent(contentType string) bool {
	return strings.HasPrefix(contentType, "application/grpc")
}

func scheme(r *http.Request) string {
	if r.TLS != nil {
		return "https"
	}
	return "http"
}

func rewritePath(path string, rt *route) string {
	rw := rt.spec.Rewrite
	if rw == nil {
		return path
	}
	if rt.rewriteRe != nil {
		return rt.rewriteRe.ReplaceAllString(path, rw.URIRegex.Substitution)
	}
	if rw.URIPrefix == "" {
		return path
	}
	// Istio's rewrite.uri: a prefix match that the path satisfies has its
	// prefix replaced; an exact or regex match has the whole path replaced;
	// a route that does not match on the URI at all matches the prefix "/"
	// (Envoy's route), so "/" is what is replaced: "/foo" with "/v2/" is
	// "/v2/foo".
	whole := false
	for _, m := range rt.matches {
		u := m.uri
		switch {
		case u == nil:
		case u.re != nil || u.exact != "":
			whole = whole || u.match(path)
		case u.prefix != "" && u.match(path):
			return rw.URIPrefix + path[len(u.prefix):]
		case u.pathPrefix != "" && u.match(path):
			// The segments matched are replaced, one slash kept between
			// the replacement and the rest: with "/v2", "/api/x" is
			// "/v2/x"; with "/", "/api/x" is "/x" and "/api" is "/".
			rest := path[len(strings.TrimSuffix(u.pathPrefix, "/")):]
			if strings.HasSuffix(rw.URIPrefix, "/") {
				rest = strings.TrimPrefix(rest, "/")
			}
			return rw.URIPrefix + rest
		}
	}
	if whole {
		return rw.URIPrefix
	}
	return rw.URIPrefix + strings.TrimPrefix(path, "/")
}

// setPath sets u's path from a normalized (escaped) path.
func setPath(u *url.URL, escaped, rawQuery string) {
	if p, err := url.PathUnescape(escaped); err == nil {
		u.Path = p
	} else {
		u.Path = escaped
	}
	u.RawPath = escaped
	u.RawQuery = rawQuery
}

func redirectURL(req *http.Request, path string, rd *model.Redirect) string {
	u := url.URL{Scheme: scheme(req), Host: req.Host, RawQuery: req.URL.RawQuery}
	setPath(&u, path, req.URL.RawQuery)
	_, reqPort, _ := splitHostPort(req.Host)
	hostOnly := func(host string) string {
		h, _, ok := splitHostPort(host)
		if !ok {
			return host
		}
		if strings.Contains(h, ":") {
			return "[" + h + "]"
		}
		return h
	}
	if rd.Scheme != "" && rd.Scheme != u.Scheme {
		u.Scheme = rd.Scheme
		// The request's port belongs to the old scheme (an HTTPS redirect
		// from port 80 must not send the client to https://host:80),
		// unless derivePort says to keep it.
		if rd.Port == 0 && rd.DerivePort != "FROM_REQUEST_PORT" {
			u.Host = hostOnly(u.Host)
		}
	}
	if rd.Authority != "" {
		u.Host = rd.Authority
	}
	port := ""
	switch {
	case rd.Port != 0:
		port = strconv.Itoa(int(rd.Port))
	case rd.DerivePort == "FROM_PROTOCOL_DEFAULT":
		u.Host = hostOnly(u.Host)
	case rd.DerivePort == "FROM_REQUEST_PORT":
		port = reqPort
	}
	if port != "" {
		h, _, _ := splitHostPort(u.Host)
		u.Host = net.JoinHostPort(h, port)
	}
	if rd.URI != "" {
		setPath(&u, rd.URI, req.URL.RawQuery)
	}
	return u.String()
}

// directReply answers with a configured direct response, after the
// response header operations in ops (route's, then destination's).
func directReply(w http.ResponseWriter, rec *record, dr *model.DirectResponse, ops ...model.HeaderOps) {
	for _, o := range ops {
		applyHeaderOps(w.Header(), o)
	}
	w.WriteHeader(dr.Status)
	io.WriteString(w, dr.Body)
	rec.details = "direct_response"
}

func applyHeaderOps(h headerEditor, ops model.HeaderOps) {
	for _, k := range ops.Remove {
		h.Del(k)
	}
	for k, v := range ops.Set {
		h.Set(k, v)
	}
	for k, v := range ops.Add {
		h.Add(k, v)
	}
}

// isHopHeader reports the canonical names of hop-by-hop fields (RFC 9110
// section 7.6.1, and the ones net/http's reverse proxy also drops).
func isHopHeader(k string) bool {
	switch k {
	case "Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
		"Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return false
}

// removeHopHeaders drops the hop-by-hop fields and those the Connection
// field names, in one pass over h: a listed name is matched against each
// field's name without case (the names are canonical), so neither the
// list is split nor a listed name canonicalized (both allocated, per
// request: most answers carry "Connection: keep-alive").
func removeHopHeaders(h http.Header, keepUpgrade bool) {
	listed := h["Connection"]
	for k := range h {
		switch {
		case isHopHeader(k):
			if !keepUpgrade || k != "Upgrade" {
				delete(h, k)
			}
		case len(listed) > 0 && hasToken(listed, k):
			delete(h, k)
		}
	}
}

// upgradeType returns "websocket" for a WebSocket upgrade request and ""
// otherwise. Only WebSocket is passed through (Istio enables only Envoy's
// websocket upgrade): forwarding "Upgrade: h2c" would let a client open an
// HTTP/2 tunnel to the backend whose later requests bypass routing and
// policy (h2c smuggling), so other upgrades are dropped with the other
// hop-by-hop headers and the request is proxied as a plain request.
func upgradeType(h *reqFields) string {
	if h.hasToken("Connection", "upgrade") && strings.EqualFold(h.get("Upgrade"), "websocket") {
		return "websocket"
	}
	return ""
}

// headerAdopter is a ResponseWriter that can take a header map as its own
// (h1Response), so that an upstream answer's fields need no copy.
type headerAdopter interface{ adoptHeader(h http.Header) }

// copyHeader sets dst's fields from src's. The value slices are shared, not
// copied (one allocation less per field and request): src must not change
// afterwards, as an upstream answer's header, dropped once copied, does not;
// and dst's edits (Set, Add, Del) replace or extend a slice, never write
// into the part src sees.
func copyHeader(dst, src http.Header) {
	for k, vv := range src {
		dst[k] = vv
	}
}

func streaming(resp *http.Response, grpc bool) bool {
	return grpc || resp.ContentLength < 0 || strings.HasPrefix(answerGet(resp, "Content-Type"), "text/event-stream")
}

// rawAdopter is a ResponseWriter that can write an upstream answer's
// fields as the h1 client read them (h1Response).
type rawAdopter interface{ adoptRaw(r *rawHeader) bool }

// answerRaw returns the fields of an answer whose header the h1 client left
// as read (resp.Header nil), or nil.
func answerRaw(resp *http.Response) *rawHeader {
	if resp.Header == nil {
		if b, ok := resp.Body.(*h1Body); ok && b.raw.head != "" {
			return &b.raw
		}
	}
	return nil
}

// answerHeader returns resp's header map, built from the fields as read
// when the h1 client left them so.
func answerHeader(resp *http.Response) http.Header {
	if resp.Header == nil {
		if raw := answerRaw(resp); raw != nil {
			resp.Header = raw.header()
		} else {
			resp.Header = http.Header{}
		}
	}
	return resp.Header
}

// answerGet returns the first value of resp's field k (canonical).
func answerGet(resp *http.Response, k string) string {
	if raw := answerRaw(resp); raw != nil {
		return raw.get(k)
	}
	return get(resp.Header, k)
}

// copyBody copies the upstream body, flushing after each write when
// streaming so that gRPC and server-sent events are not held back.
func copyBody(w *responseWriter, body io.Reader, flush bool) error {
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	rc := http.NewResponseController(w)
	for {
		n, rerr := body.Read(*buf)
		if n > 0 {
			if _, werr := w.Write((*buf)[:n]); werr != nil {
				return werr
			}
			if flush {
				if err := rc.Flush(); err != nil {
					return err
				}
			}
		}
		if rerr == io.EOF {
			return nil
		}
		if rerr != nil {
			return rerr
		}
	}
}
