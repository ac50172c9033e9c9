package waypoint

import (
	"bufio"
	"context"
	crand "crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/fnv"
	"io"
	"maps"
	"math"
	"math/rand/v2"
	"net"
	"net/http"
	"net/url"
	"reflect"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
)

// errOverflow is returned when a connection pool is full (response flag UO).
var errOverflow = errors.New("upstream connection pool overflow")

// errNoHealthy is returned when every endpoint is ejected or none exists (UH).
var errNoHealthy = errors.New("no healthy upstream")

// cluster is a compiled L7Cluster: one upstream for all endpoints and one per
// subset, each with its own pool and outlier state (as Istio makes one Envoy
// cluster per subset).
type cluster struct {
	spec    model.L7Cluster
	self    proxyPlace // the proxy's place when compiled
	all     *upstream
	subsets map[string]*upstream
}

func newCluster(spec *model.L7Cluster, prev *cluster, opts *Options, self proxyPlace) *cluster {
	if prev != nil && prev.self == self && reflect.DeepEqual(prev.spec, *spec) {
		return prev
	}
	c := &cluster{spec: *spec, subsets: map[string]*upstream{}, self: self}
	c.all = newUpstream(spec.Name, "", spec.Endpoints, spec.Traffic, opts, self)
	c.all.protocol = spec.Protocol
	joined := joinTimes(prev, time.Now())
	c.all.setJoined(joined)
	if prev != nil {
		c.all.keepRate(prev.all)
	}
	for _, s := range spec.Subsets {
		tp := spec.Traffic
		if s.Traffic != nil {
			tp = *s.Traffic
		}
		var eps []model.L7Endpoint
		for _, e := range spec.Endpoints {
			if model.SelectorMatches(s.Labels, e.Labels) {
				eps = append(eps, e)
			}
		}
		u := newUpstream(spec.Name, s.Name, eps, tp, opts, self)
		u.protocol = spec.Protocol
		u.setJoined(joined)
		if prev != nil {
			if p := prev.subsets[s.Name]; p != nil {
				u.keepRate(p)
			}
		}
		c.subsets[s.Name] = u
	}
	if prev != nil {
		prev.close()
	}
	return c
}

// joinTimes returns, for the endpoints of a cluster's new config, when each
// joined the cluster (for warmup): what prev recorded for an address it
// had, now for a new one. The endpoints of a cluster's first config have
// no time: the proxy cannot tell how long they have served.
func joinTimes(prev *cluster, now time.Time) func(addr string) time.Time {
	if prev == nil {
		return func(string) time.Time { return time.Time{} }
	}
	known := make(map[string]time.Time, len(prev.all.endpoints))
	for _, e := range prev.all.endpoints {
		known[e.addr] = e.joined
	}
	return func(addr string) time.Time {
		if t, ok := known[addr]; ok {
			return t
		}
		return now
	}
}

func (u *upstream) setJoined(joined func(addr string) time.Time) {
	for _, e := range u.endpoints {
		e.joined = joined(e.addr)
	}
}

// keepRate takes over prev's retry rate counts when the budget is the
// same: a cluster's new endpoints (or other settings) do not reset the
// retries it made, nor give it a new minimum.
func (u *upstream) keepRate(prev *upstream) {
	if prev.rate.sameBudget(u.policy.RetryBudget) {
		u.rate = prev.rate
	}
}

func (c *cluster) subset(name string) *upstream {
	if name == "" {
		return c.all
	}
	return c.subsets[name]
}

func (c *cluster) close() {
	c.all.close()
	for _, u := range c.subsets {
		u.close()
	}
}

// upstream is one set of endpoints with one traffic policy.
type upstream struct {
	cluster, subset string
	protocol        model.UpstreamProtocol
	endpoints       []*endpoint
	draining        []*endpoint // reached only by the sessions pinned to them
	weighted        bool        // some endpoint has a weight other than 1
	policy          model.TrafficPolicy
	h1              *h1Client
	h2              *h2Transport
	h1Pool          *connLimiter // HTTP/1.1 connections (nil: unbounded)
	dial            dialFunc     // to an endpoint, bytes as they are (keepalive, tunnel): relays use it
	retries         atomic.Int64 // retries outstanding, counted under maxRetries or a retry budget
	rate            *retryRate   // a retry budget with an interval (nil: none); may outlive u (newCluster)
	requests        *connLimiter // requests in flight (nil: unbounded)
	rr              atomic.Uint64
	locality        *localityPicker // nil: no locality load balancing
	minHealth       int             // outlier detection's minHealthPercent
	metrics         *metrics
	// dest is the telemetry destination of a request to this upstream
	// until an endpoint is picked (destOf).
	dest destInfo
}

type endpoint struct {
	addr     string
	labels   map[string]string
	workload string
	identity string // the SPIFFE ID it presents, for destination_principal
	weight   uint64
	node     string
	loc      model.Locality
	active   atomic.Int64
	joined   time.Time // when it joined the cluster; zero: before the proxy's first config of it
	key      uint64    // names it in session tokens (endpointKey)

	mu           sync.Mutex
	consec5xx    int
	consecGw     int
	consecLocal  int // failures of the proxy's own making (SplitLocalOrigin)
	ejections    int
	ejectedUntil time.Time
}

func newUpstream(cluster, subset string, eps []model.L7Endpoint, tp model.TrafficPolicy, opts *Options, self proxyPlace) *upstream {
	u := &upstream{cluster: cluster, subset: subset, policy: tp, metrics: opts.metrics, rate: newRetryRate(tp.RetryBudget, nil)}
	for _, e := range eps {
		w := uint64(e.Weight)
		if w == 0 {
			w = 1
		}
		ep := &endpoint{addr: e.Address, labels: e.Labels, workload: e.Workload, identity: e.Identity, weight: w,
			node: e.Node, loc: model.ParseLocality(e.Locality), key: endpointKey(e.Address, e.Workload, e.Identity)}
		if e.Draining {
			u.draining = append(u.draining, ep)
			continue
		}
		u.weighted = u.weighted || w != 1
		u.endpoints = append(u.endpoints, ep)
	}
	u.locality = newLocalityPicker(tp.LB.Locality, u.endpoints, self)
	if tp.Outlier != nil {
		u.minHealth = tp.Outlier.MinHealthPercent
	}
	u.dest = destOf(u)
	dial := dialFunc(opts.DialContext)
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	if k := tp.Pool.TCPKeepalive; k != nil {
		plain := dial
		dial = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := plain(ctx, network, addr)
			if err == nil {
				setKeepalive(c, k)
			}
			return c, err
		}
	}
	if tn := tp.Tunnel; tn != nil {
		dial = tunnelDial(dial, tn)
	}
	if v := tp.ProxyProtocol; v != 0 {
		dial = proxyProtocolDial(dial, v)
		// A connection carries one client's requests only: one each.
		tp.Pool.MaxRequestsPerConnection = 1
	}
	u.dial = dial
	h1dial, h2dial := dial, dial
	if tp.TLS != nil {
		cfg, err := upstreamTLSConfig(tp.TLS)
		if err == nil {
			h1dial, h2dial = originateTLS(dial, cfg, false), originateTLS(dial, cfg, true)
		} else {
			// Validated with the config; should it still fail, no request
			// goes out in the clear: every connection fails (UF) with why.
			failed := func(context.Context, string, string) (net.Conn, error) {
				return nil, &net.OpError{Op: "dial", Net: "tls", Err: err}
			}
			h1dial, h2dial = failed, failed
		}
	}
	u.h1 = newH1Client(&tp.Pool, h1dial)
	u.h2 = newH2Transport(&tp.Pool, h2dial)
	// Envoy's circuit breakers: requests in flight are bounded by
	// http2MaxRequests whatever the protocol (overflow at once); for
	// HTTP/1.1 each connection carries one request at a time, so
	// maxConnections bounds them too, with http1MaxPendingRequests waiting
	// for a connection. HTTP/2 multiplexes on its connections.
	u.requests = newRequestLimiter(tp.Pool.HTTP2MaxRequests)
	u.h1Pool = newConnLimiter(tp.Pool.MaxConnections, tp.Pool.HTTP1MaxPendingRequests)
	return u
}

// tunnelDial dials through an HTTP proxy: a connection to the endpoint
// (the proxy), then a CONNECT to the tunnel's target, within the dial's
// context; what the proxy sends after its 2xx answer is the target's.
func tunnelDial(dial dialFunc, t *model.Tunnel) dialFunc {
	target := net.JoinHostPort(t.TargetHost, strconv.FormatUint(uint64(t.TargetPort), 10))
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		if d, ok := ctx.Deadline(); ok {
			_ = c.SetDeadline(d)
		}
		stop := context.AfterFunc(ctx, func() { _ = c.SetDeadline(time.Unix(1, 0)) })
		defer stop()
		fail := func(err error) (net.Conn, error) {
			c.Close()
			return nil, &net.OpError{Op: "dial", Net: "tunnel", Addr: c.RemoteAddr(), Err: err}
		}
		if _, err := io.WriteString(c, "CONNECT "+target+" HTTP/1.1\r\nHost: "+target+"\r\n\r\n"); err != nil {
			return fail(err)
		}
		br := bufio.NewReader(c)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil {
			return fail(fmt.Errorf("CONNECT %s: %w", target, err))
		}
		resp.Body.Close()
		if resp.StatusCode/100 != 2 {
			return fail(fmt.Errorf("CONNECT %s: the proxy answered %s", target, resp.Status))
		}
		_ = c.SetDeadline(time.Time{})
		if br.Buffered() > 0 {
			return &peekedConn{Conn: c, r: br}, nil
		}
		return c, nil
	}
}

// statusTryTimeout is reported (upstream.report) for a try that timed out:
// a 504 of the proxy's own making.
const statusTryTimeout = -1

// acquireRetry takes one of the cluster's retry slots for a retry about
// to be made, recording it in held; false when they are all taken. The
// slots are the retry budget's share of the requests in flight when the
// policy has one without an interval, else maxRetries; without either it
// always succeeds and counts nothing. A budget with an interval is a rate
// (u.rate, checked besides): maxRetries still bounds the retries
// outstanding then.
func (u *upstream) acquireRetry(held *bool) bool {
	max := int64(u.policy.Pool.MaxRetries)
	if b := u.policy.RetryBudget; b != nil && b.Interval <= 0 {
		var active int64
		for _, e := range u.endpoints {
			active += e.active.Load()
		}
		max = int64(float64(active) * b.Percent / 100)
		if m := int64(b.MinConcurrency); max < m {
			max = m
		}
		if max <= 0 {
			return false
		}
	}
	if max <= 0 {
		return true
	}
	if u.retries.Add(1) > max {
		u.retries.Add(-1)
		return false
	}
	*held = true
	return true
}

// releaseRetry gives back the slot held records, if any.
func (u *upstream) releaseRetry(held *bool) {
	if *held {
		*held = false
		u.retries.Add(-1)
	}
}

// name is Istio's cluster naming: "cluster" or "cluster|subset".
func (u *upstream) name() string {
	if u.subset == "" {
		return u.cluster
	}
	return u.cluster + "|" + u.subset
}

// useH2 reports whether request r goes upstream over HTTP/2: gRPC (grpc),
// to an HTTP2 cluster, one that came over HTTP/2 to a cluster that keeps
// the client's version, or any to one upgraded by its pool settings. An
// Upgrade (WebSocket) request goes over HTTP/1.1.
func (u *upstream) useH2(grpc bool, r *http.Request) bool {
	switch {
	case grpc || u.protocol == model.UpstreamHTTP2:
		return true
	case r.Header["Upgrade"] != nil:
		return false
	case u.policy.Pool.UseClientProtocol:
		return r.ProtoMajor == 2
	}
	return u.policy.Pool.H2Upgrade
}

// transport carries request r to u, over HTTP/2 or HTTP/1.1 (useH2).
func (u *upstream) transport(grpc bool, r *http.Request) http.RoundTripper {
	if u.useH2(grpc, r) {
		return u.h2
	}
	return u.h1
}

func (u *upstream) close() {
	u.h1.closeIdle()
	u.h2.CloseIdleConnections()
}

// connLimiter is a circuit breaker: up to max requests in flight, up to
// maxPending waiting; the rest overflow at once. Zero means unlimited.
type connLimiter struct {
	sem        chan struct{}
	pending    atomic.Int64
	maxPending int64
	noWait     bool // full means overflow at once (a request limit)
}

func newConnLimiter(max, maxPending int) *connLimiter {
	if max <= 0 {
		return nil
	}
	return &connLimiter{sem: make(chan struct{}, max), maxPending: int64(maxPending)}
}

// newRequestLimiter bounds requests in flight with no waiting: Envoy's
// max_requests circuit breaker (Istio's http2MaxRequests, which holds for
// HTTP/1.1 and HTTP/2 alike).
func newRequestLimiter(max int) *connLimiter {
	l := newConnLimiter(max, 0)
	if l != nil {
		l.noWait = true
	}
	return l
}

// acquire takes a slot, waiting as a pending request if allowed.
func (l *connLimiter) acquire(ctx context.Context) error {
	if l == nil {
		return nil
	}
	select {
	case l.sem <- struct{}{}:
		return nil
	default:
	}
	if l.noWait {
		return errOverflow
	}
	n := l.pending.Add(1)
	defer l.pending.Add(-1)
	if l.maxPending > 0 && n > l.maxPending {
		return errOverflow
	}
	select {
	case l.sem <- struct{}{}:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

func (l *connLimiter) release() {
	if l != nil {
		<-l.sem
	}
}

// pick chooses an endpoint by the load balancing policy, skipping ejected
// endpoints and, when others are available, those already tried (Istio's
// default retry host predicate).
//
// key is the request's consistent-hash key (hashKey), when the policy
// hashes and the request has one; without one a hashing policy picks at
// random.
func (u *upstream) pick(tried []*endpoint, key string) (*endpoint, error) {
	return u.pickFrom(tried, nil, key)
}

// pickFrom is pick for a retry: it avoids the endpoints of avoid while
// others are left and, under locality load balancing, the levels of the
// endpoints of leave while another level can take the request.
func (u *upstream) pickFrom(avoid, leave []*endpoint, key string) (*endpoint, error) {
	now := time.Now()
	var avail []*endpoint
	if u.locality != nil {
		avail = u.locality.choose(now, avoid, leave, u.minHealth)
	} else {
		avail = usable(u.endpoints, now, avoid, u.minHealth)
	}
	if len(avail) == 0 {
		return nil, errNoHealthy
	}
	if len(avail) == 1 {
		return avail[0], nil
	}
	lb := u.policy.LB
	if w := lb.Warmup; w != nil && lb.ConsistentHash == nil {
		if e := pickWarming(avail, now, w); e != nil {
			return e, nil
		}
	}
	if u.weighted && lb.ConsistentHash == nil {
		// Endpoint weights (e.g. from locality or ServiceEntry weights):
		// weighted random, which Envoy's algorithms converge to.
		var total uint64
		for _, e := range avail {
			total += e.weight
		}
		n := rand.Uint64N(total)
		for _, e := range avail {
			if n < e.weight {
				return e, nil
			}
			n -= e.weight
		}
	}
	if lb.ConsistentHash != nil {
		if key != "" {
			return rendezvous(avail, key), nil
		}
		return avail[rand.IntN(len(avail))], nil
	}
	switch lb.Simple {
	case model.LBRoundRobin:
		return avail[int(u.rr.Add(1)-1)%len(avail)], nil
	case model.LBRandom:
		return avail[rand.IntN(len(avail))], nil
	default: // LEAST_REQUEST, Istio's default: power of two choices
		a, b := avail[rand.IntN(len(avail))], avail[rand.IntN(len(avail))]
		if b.active.Load() < a.active.Load() {
			return b, nil
		}
		return a, nil
	}
}

// pickWarming picks one of avail by weighted random when some of them are
// still warming up (joined less than w.Duration ago), each endpoint's
// weight scaled as Envoy's slow start scales it; nil when none is warming,
// for the cluster's own algorithm to pick.
func pickWarming(avail []*endpoint, now time.Time, w *model.Warmup) *endpoint {
	warming := false
	for _, e := range avail {
		if !e.joined.IsZero() && now.Sub(e.joined) < w.Duration {
			warming = true
			break
		}
	}
	if !warming {
		return nil
	}
	var buf [16]float64
	weights := buf[:0]
	total := 0.0
	for _, e := range avail {
		f := 1.0
		if age := now.Sub(e.joined); !e.joined.IsZero() && age < w.Duration {
			f = max(w.MinPercent/100, math.Pow(float64(age)/float64(w.Duration), 1/w.Aggression))
		}
		weights = append(weights, float64(e.weight)*f)
		total += float64(e.weight) * f
	}
	n := rand.Float64() * total
	for i, e := range avail {
		if n < weights[i] {
			return e
		}
		n -= weights[i]
	}
	return avail[len(avail)-1]
}

// usable are the endpoints of eps not ejected and, when others are left,
// not tried already. While fewer than minHealth percent of eps are not
// ejected, ejections are ignored (Envoy's panic mode: minHealthPercent).
func usable(eps []*endpoint, now time.Time, tried []*endpoint, minHealth int) []*endpoint {
	if len(tried) == 0 && !slices.ContainsFunc(eps, func(e *endpoint) bool { return e.ejected(now) }) {
		return eps // the common case, without a copy: callers only read it
	}
	var avail []*endpoint
	for _, e := range eps {
		if !e.ejected(now) {
			avail = append(avail, e)
		}
	}
	if minHealth > 0 && len(avail)*100 < len(eps)*minHealth {
		avail = eps
	}
	if len(tried) > 0 && len(avail) > 1 {
		fresh := avail[:0:0]
		for _, e := range avail {
			if !containsEndpoint(tried, e) {
				fresh = append(fresh, e)
			}
		}
		if len(fresh) > 0 {
			avail = fresh
		}
	}
	return avail
}

func containsEndpoint(list []*endpoint, e *endpoint) bool {
	for _, x := range list {
		if x == e {
			return true
		}
	}
	return false
}

// hashKey is the consistent-hash key of a request to u ("" when u does
// not hash or the request has none): a field of hdr, a cookie, a query
// parameter of rawQuery, or the client's address. It reads the fields as
// they are (a list or a map), so hashing builds no header map. hdr may be
// nil (a TCP connection: only the address hashes).
func (u *upstream) hashKey(hdr *reqFields, rawQuery string, peer Peer) string {
	h := u.policy.LB.ConsistentHash
	switch {
	case h == nil:
		return ""
	case h.SourceIP:
		if peer.IP.IsValid() {
			return peer.IP.String()
		}
		return ""
	case hdr == nil:
		return ""
	case h.Header != "":
		return hdr.Get(h.Header)
	case h.Cookie != "":
		if c, ok := cookie(hdr, h.Cookie); ok {
			return c.Value
		}
		return ""
	case h.QueryParam != "":
		q, _ := url.ParseQuery(rawQuery)
		return q.Get(h.QueryParam)
	}
	return ""
}

// cookie returns the request's cookie named name, as http.Request.Cookie
// reads it (every Cookie field, invalid pairs skipped).
func cookie(hdr *reqFields, name string) (*http.Cookie, bool) {
	lines := hdr.values("Cookie")
	if len(lines) == 0 {
		return nil, false
	}
	c, err := (&http.Request{Header: http.Header{"Cookie": lines}}).Cookie(name)
	return c, err == nil
}

// stickyCookie returns the cookie to give a client that came without the
// hash cookie, when the policy says to (a TTL): a random value, so that the
// client's next requests, carrying it, hash to the same endpoint. Nil when
// there is nothing to give.
func stickyCookie(lb model.LBPolicy, hdr *reqFields) *http.Cookie {
	h := lb.ConsistentHash
	if h == nil || h.Cookie == "" || h.CookieTTL <= 0 {
		return nil
	}
	if _, ok := cookie(hdr, h.Cookie); ok {
		return nil
	}
	var b [16]byte
	crand.Read(b[:])
	path := h.CookiePath
	if path == "" {
		path = "/"
	}
	return &http.Cookie{Name: h.Cookie, Value: hex.EncodeToString(b[:]), Path: path, MaxAge: int(h.CookieTTL.Seconds()), HttpOnly: true}
}

// rendezvous is highest-random-weight hashing: stable per key, and only the
// keys of a removed endpoint move.
func rendezvous(eps []*endpoint, key string) *endpoint {
	var best *endpoint
	var bestScore uint64
	for _, e := range eps {
		h := fnv.New64a()
		h.Write([]byte(key))
		h.Write([]byte{0})
		h.Write([]byte(e.addr))
		if s := h.Sum64(); best == nil || s > bestScore {
			best, bestScore = e, s
		}
	}
	return best
}

// EndpointStates describes every endpoint of every cluster and subset of
// the config in force, sorted by cluster, subset and address, for the
// config dump.
func (p *Proxy) EndpointStates(now time.Time) []configdump.Endpoint {
	c := p.cfg.Load()
	if c == nil {
		return nil
	}
	var out []configdump.Endpoint
	add := func(u *upstream) {
		for i, e := range slices.Concat(u.endpoints, u.draining) {
			e.mu.Lock()
			d := configdump.Endpoint{Cluster: u.cluster, Subset: u.subset, Address: e.addr, Active: e.active.Load(), Ejections: e.ejections,
				Locality: e.loc.String(), Priority: u.locality.describe(e), Draining: i >= len(u.endpoints)}
			if now.Before(e.ejectedUntil) {
				d.EjectedUntil = e.ejectedUntil.UTC()
			}
			e.mu.Unlock()
			out = append(out, d)
		}
	}
	for _, name := range slices.Sorted(maps.Keys(c.clusters)) {
		cl := c.clusters[name]
		add(cl.all)
		for _, s := range slices.Sorted(maps.Keys(cl.subsets)) {
			add(cl.subsets[s])
		}
	}
	return out
}

func (e *endpoint) ejected(now time.Time) bool {
	e.mu.Lock()
	defer e.mu.Unlock()
	return now.Before(e.ejectedUntil)
}

// report feeds outlier detection with one result: the status code, or 0 for
// a connection failure or reset.
func (u *upstream) report(e *endpoint, status int) {
	od := u.policy.Outlier
	if od == nil {
		return
	}
	if od.SplitLocalOrigin {
		// The proxy's own failures (status 0, or a try's timeout) have
		// their own count; an answer, whatever its code, proves the
		// connection and resets it.
		e.mu.Lock()
		if status > 0 {
			e.consecLocal = 0
			e.mu.Unlock()
		} else {
			e.consecLocal++
			trip := od.ConsecutiveLocalOriginFailures > 0 && e.consecLocal >= od.ConsecutiveLocalOriginFailures
			e.mu.Unlock()
			if trip {
				u.eject(e, od, time.Now())
			}
			return
		}
	}
	if status == statusTryTimeout {
		status = http.StatusGatewayTimeout
	}
	fail := status == 0 || status >= 500
	if len(od.ErrorCodes) > 0 && status != 0 {
		fail = slices.Contains(od.ErrorCodes, status)
	}
	gw := status == 0 || fail && (status == 502 || status == 503 || status == 504)
	e.mu.Lock()
	if !fail {
		e.consec5xx, e.consecGw = 0, 0
		e.mu.Unlock()
		return
	}
	e.consec5xx++
	if gw {
		e.consecGw++
	} else {
		e.consecGw = 0
	}
	trip := (od.Consecutive5xxErrors > 0 && e.consec5xx >= od.Consecutive5xxErrors) ||
		(od.ConsecutiveGatewayErrors > 0 && e.consecGw >= od.ConsecutiveGatewayErrors)
	e.mu.Unlock()
	if trip {
		u.eject(e, od, time.Now())
	}
}

// eject removes e from load balancing for baseEjectionTime times the number
// of times it was ejected (capped at 300s, Envoy's max_ejection_time), unless
// maxEjectionPercent is reached; at least one endpoint may always be ejected,
// as in Envoy. As in Envoy, that count goes down by one for every interval
// the endpoint has spent back in load balancing since its last ejection, so
// an endpoint that failed once long ago is not ejected for longer and longer.
func (u *upstream) eject(e *endpoint, od *model.OutlierDetection, now time.Time) {
	ejected := 0
	for _, x := range u.endpoints {
		if x != e && x.ejected(now) {
			ejected++
		}
	}
	pct := od.MaxEjectionPercent
	if pct == 0 {
		pct = 10
	}
	allowed := max(1, len(u.endpoints)*pct/100)
	if ejected >= allowed {
		return
	}
	base := od.BaseEjectionTime
	if base == 0 {
		base = 30 * time.Second
	}
	interval := od.Interval
	if interval <= 0 {
		interval = 10 * time.Second
	}
	e.mu.Lock()
	if now.Before(e.ejectedUntil) {
		e.mu.Unlock()
		return
	}
	if e.ejections > 0 {
		healthy := int(now.Sub(e.ejectedUntil) / interval)
		e.ejections = max(0, e.ejections-healthy)
	}
	e.ejections++
	d := min(base*time.Duration(e.ejections), max(base, 300*time.Second))
	e.ejectedUntil = now.Add(d)
	e.consec5xx, e.consecGw = 0, 0
	e.mu.Unlock()
	if u.metrics != nil {
		u.metrics.ejections.WithLabelValues(u.name()).Inc()
	}
}
