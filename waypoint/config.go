package waypoint

import (
	"fmt"
	"net/http"
	"net/netip"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"sync"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/logfilter"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// Config is what one waypoint serves: L7 routing and the authorization
// policies that apply to it. It is swapped atomically with Proxy.Update.
type Config struct {
	// L7 is the routing, cluster and JWT configuration; required.
	L7 *model.L7Config
	// Policies are the AuthorizationPolicies bound to this waypoint.
	Policies []*policy.Policy
	// TCPCluster names the cluster that non-HTTP connections are forwarded
	// to (L4 fallback); empty means such connections are closed.
	TCPCluster string
}

// compiled is an immutable, validated, ready-to-match form of a Config.
type compiled struct {
	listeners []*listener
	clusters  map[string]*cluster
	policies  []*policy.Policy
	// scopedPolicies is set when some policy applies to some services only.
	scopedPolicies bool
	jwt            *jwtAuthenticator
	tcpCluster     *upstream
	// opaque is set when some virtual host is: connections then have their
	// service looked up before they are read (Proxy.detect).
	opaque bool
	// workloads are the workloads served by their own addresses
	// (model.L7Config.Workloads), by address; workloadRoutes their routes
	// by address and port, made as connections come (workloadRoute).
	workloads      map[netip.Addr]*model.L7Workload
	workloadMu     sync.Mutex
	workloadRoutes map[netip.AddrPort]*route
	opts           *Options
	self           proxyPlace
	// limiters by listener/vhost/route name, shared by the routes of a
	// virtual host with that name, and kept by a config push for unchanged
	// rate limits.
	limiters map[string]*rateLimiter
	// telemetry is the Telemetry API's say over access log, metrics and
	// trace sampling; nil fields keep Options' defaults.
	telemetry model.L7Telemetry
	// logFilter is telemetry.AccessLogFilter compiled; nil logs every
	// request.
	logFilter *logfilter.Filter
	// logFormat is telemetry.AccessLogFormat compiled; nil writes the JSON
	// line with Istio's default fields.
	logFormat *accesslog.Format
	// extAuthz are the external authorizers CUSTOM policies name.
	extAuthz map[string]*extAuthz
	// passthrough are the listeners' TLS passthrough routes, by port.
	passthrough map[uint32][]model.PassthroughRoute
	// tcpRoutes are the listeners with tcp routes, by port.
	tcpRoutes map[uint32]*model.L7Listener
	// exportSpan receives sampled spans: the config tracer's exporter,
	// else Options.ExportSpan; nil exports none.
	exportSpan func(Span)
}

func limiterKey(listener, vhost string, r *model.L7Route) string {
	return listener + "\x00" + vhost + "\x00" + r.Origin + "\x00" + r.Name
}

type listener struct {
	name   string
	port   uint32
	vhosts []*vhost
}

type vhost struct {
	name     string
	exact    map[string]bool
	suffixes []string // "*.foo.com" stored as ".foo.com"
	any      bool
	routes   []*route
	cors     *corsPolicy
	tcp      *model.TCPRoute          // where its service's non-HTTP connections go
	matched  []model.TCPRoute         // tried before tcp, by their matches
	pass     []model.PassthroughRoute // TLS connections by server name, before those
	opaque   bool                     // its connections all go to tcp, unread
}

// pickTCP is the route of a connection forwarded whole: the first of
// matched whose matches the client (peer) meets, else fallback (nil: none).
func pickTCP(matched []model.TCPRoute, fallback *model.TCPRoute, peer *Peer) *model.TCPRoute {
	for i := range matched {
		for j := range matched[i].Matches {
			if matched[i].Matches[j].Matches(peer.Namespace, peer.Labels, peer.DestinationIP) {
				return &matched[i]
			}
		}
	}
	return fallback
}

// corsPolicy is a CORSPolicy with its origin matches compiled.
type corsPolicy struct {
	spec    *model.CORSPolicy
	origins []*strMatch
}

func compileCORS(c *model.CORSPolicy) (*corsPolicy, error) {
	if c == nil {
		return nil, nil
	}
	cp := &corsPolicy{spec: c}
	for i := range c.AllowOrigins {
		sm, err := compileStr(&c.AllowOrigins[i])
		if err != nil {
			return nil, fmt.Errorf("cors origin: %w", err)
		}
		if sm != nil {
			cp.origins = append(cp.origins, sm)
		}
	}
	return cp, nil
}

type route struct {
	name      string
	spec      *model.L7Route
	matches   []match
	dests     []dest
	total     uint64
	mirrors   []mirrorDest
	limiter   *rateLimiter
	rewriteRe *regexp.Regexp
	cors      *corsPolicy
	session   *routeSession // nil: no session persistence
	extAuthz  *extAuthz     // the route's own authorizer; nil: none
}

type dest struct {
	up     *upstream // nil when spec.DirectResponse answers instead
	weight uint64
	spec   *model.WeightedDestination
	key    uint64 // names it in session tokens (upstreamKey)
}

type mirrorDest struct {
	up      *upstream
	percent float64
}

type match struct {
	uri, method, authority *strMatch
	headers                []headerMatch
	query                  []headerMatch
	port                   uint32
	srcLabels              map[string]string
	srcNamespace           string
}

type strMatch struct {
	exact, prefix string
	// pathPrefix is a segment-aware prefix (model.HasPathPrefix).
	pathPrefix string
	re         *regexp.Regexp
	ignoreCase bool
}

type headerMatch struct {
	name   string
	value  *strMatch // nil: presence only
	absent bool
	invert bool
}

// compile validates cfg and builds the runtime form. Upstream state
// (connection pools, outlier detection) is carried over from old for clusters
// whose definition did not change, so a config push does not reset it.
func compile(cfg *Config, old *compiled, opts *Options) (*compiled, error) {
	if cfg == nil || cfg.L7 == nil {
		return nil, fmt.Errorf("compile waypoint config: no L7 config")
	}
	if err := cfg.L7.Validate(); err != nil {
		return nil, fmt.Errorf("compile waypoint config: %w", err)
	}
	for _, p := range cfg.Policies {
		if err := p.Validate(); err != nil {
			return nil, fmt.Errorf("compile waypoint config: %w", err)
		}
	}
	c := &compiled{clusters: map[string]*cluster{}, policies: cfg.Policies, limiters: map[string]*rateLimiter{}, telemetry: cfg.L7.Telemetry}
	if expr := cfg.L7.Telemetry.AccessLogFilter; expr != "" {
		f, err := logfilter.Compile(expr)
		if err != nil {
			return nil, fmt.Errorf("compile waypoint config: telemetry: %w", err)
		}
		c.logFilter = f
	}
	if lf := cfg.L7.Telemetry.AccessLogFormat; lf != nil {
		f, err := lf.Parse()
		if err != nil {
			return nil, fmt.Errorf("compile waypoint config: telemetry: %w", err)
		}
		c.logFormat = f
	}
	for _, p := range cfg.Policies {
		c.scopedPolicies = c.scopedPolicies || len(p.Services) > 0
	}
	var oldLimiters map[string]*rateLimiter
	if old != nil {
		oldLimiters = old.limiters
	}
	self := proxyPlace{node: opts.NodeName}
	if loc, ok := cfg.L7.ProxyLocalities[opts.NodeName]; ok && opts.NodeName != "" {
		self.loc = model.ParseLocality(loc)
	}
	c.opts, c.self = opts, self
	for i := range cfg.L7.Workloads {
		w := &cfg.L7.Workloads[i]
		for _, a := range w.Addresses {
			ip, _ := netip.ParseAddr(a) // validated
			if c.workloads == nil {
				c.workloads = map[netip.Addr]*model.L7Workload{}
			}
			c.workloads[ip.Unmap()] = w
		}
	}
	for i := range cfg.L7.Clusters {
		spec := &cfg.L7.Clusters[i]
		var prev *cluster
		if old != nil {
			prev = old.clusters[spec.Name]
		}
		c.clusters[spec.Name] = newCluster(spec, prev, opts, self)
	}
	for _, e := range cfg.L7.ExtAuthz {
		if c.extAuthz == nil {
			c.extAuthz = map[string]*extAuthz{}
		}
		c.extAuthz[e.Name] = newExtAuthz(e, c.clusters)
	}
	if cfg.TCPCluster != "" {
		cl := c.clusters[cfg.TCPCluster]
		if cl == nil {
			return nil, fmt.Errorf("compile waypoint config: tcp cluster %q is not defined", cfg.TCPCluster)
		}
		c.tcpCluster = cl.all
	}
	for i := range cfg.L7.Listeners {
		ls := &cfg.L7.Listeners[i]
		if len(ls.Passthrough) > 0 {
			if c.passthrough == nil {
				c.passthrough = map[uint32][]model.PassthroughRoute{}
			}
			c.passthrough[ls.Port] = ls.Passthrough
		}
		if ls.TCP != nil || len(ls.TCPMatched) > 0 {
			if c.tcpRoutes == nil {
				c.tcpRoutes = map[uint32]*model.L7Listener{}
			}
			c.tcpRoutes[ls.Port] = ls
		}
		l := &listener{name: ls.Name, port: ls.Port}
		for j := range ls.VirtualHosts {
			vs := &ls.VirtualHosts[j]
			vhCORS, err := compileCORS(vs.CORS)
			if err != nil {
				return nil, fmt.Errorf("compile waypoint config: listener %q: virtual host %q: %w", ls.Name, vs.Name, err)
			}
			vh := &vhost{name: vs.Name, exact: map[string]bool{}, cors: vhCORS, tcp: vs.TCP, matched: vs.TCPMatched, pass: vs.Passthrough, opaque: vs.Opaque}
			c.opaque = c.opaque || vs.Opaque
			for _, d := range vs.Domains {
				switch {
				case d == "*":
					vh.any = true
				case strings.HasPrefix(d, "*."):
					vh.suffixes = append(vh.suffixes, strings.ToLower(d[1:]))
				default:
					vh.exact[strings.ToLower(d)] = true
				}
			}
			for k := range vs.Routes {
				// Routes of a virtual host that share an origin and a name
				// share one token bucket: meshd splits a Gateway API rule
				// with several matches into one route per match (for
				// precedence), all with the rule's origin and name, and the
				// rule's limit must not be multiplied by its matches. Rules
				// of two objects with one name (two HTTPRoutes' "api") keep
				// apart by their origins. The key is also what keeps a
				// bucket across config pushes. A limit that differs gets its
				// own bucket.
				key := limiterKey(ls.Name, vs.Name, &vs.Routes[k])
				prev := c.limiters[key]
				if prev == nil {
					prev = oldLimiters[key]
				}
				r, err := compileRoute(&vs.Routes[k], c.clusters, prev)
				if err != nil {
					return nil, fmt.Errorf("compile waypoint config: listener %q: virtual host %q: route %d: %w", ls.Name, vs.Name, k, err)
				}
				if r.cors == nil {
					r.cors = vhCORS
				}
				vh.routes = append(vh.routes, r)
				if r.limiter != nil && c.limiters[key] == nil {
					c.limiters[key] = r.limiter
				}
			}
			l.vhosts = append(l.vhosts, vh)
		}
		c.listeners = append(c.listeners, l)
	}
	var oldJWT *jwtAuthenticator
	if old != nil {
		oldJWT = old.jwt
	}
	c.jwt = newJWTAuthenticator(cfg.L7.JWTProviders, oldJWT, opts)
	return c, nil
}

// compileRoute builds one route; its rate limit uses shared (the bucket of
// a route of the same name, in this config or the last) when the limits are
// equal, else a new bucket.
func compileRoute(spec *model.L7Route, clusters map[string]*cluster, shared *rateLimiter) (*route, error) {
	cors, err := compileCORS(spec.CORS)
	if err != nil {
		return nil, err
	}
	r := &route{name: spec.Name, spec: spec, cors: cors}
	if spec.Session != nil {
		r.session = newRouteSession(spec.Session)
	}
	if x := spec.ExtAuthz; x != nil {
		r.extAuthz = newExtAuthz(*x, clusters)
	}
	for _, m := range spec.Matches {
		cm := match{port: m.Port, srcLabels: m.SourceLabels, srcNamespace: m.SourceNamespace}
		if cm.uri, err = compileStr(m.URI); err != nil {
			return nil, err
		}
		if cm.method, err = compileStr(m.Method); err != nil {
			return nil, err
		}
		if cm.authority, err = compileStr(m.Authority); err != nil {
			return nil, err
		}
		if cm.headers, err = compileHeaders(m.Headers, true); err != nil {
			return nil, err
		}
		if cm.query, err = compileHeaders(m.QueryParams, false); err != nil {
			return nil, err
		}
		r.matches = append(r.matches, cm)
	}
	for i := range spec.Destinations {
		d := &spec.Destinations[i]
		w := uint64(d.Weight)
		if len(spec.Destinations) == 1 && w == 0 {
			w = 1
		}
		var up *upstream // nil for a direct response
		if d.DirectResponse == nil {
			up = clusters[d.Cluster].subset(d.Subset)
		}
		r.dests = append(r.dests, dest{up: up, weight: w, spec: d, key: upstreamKey(d.Cluster, d.Subset)})
		r.total += w
	}
	for _, m := range spec.Mirrors {
		r.mirrors = append(r.mirrors, mirrorDest{up: clusters[m.Cluster].subset(m.Subset), percent: m.Percent})
	}
	if spec.RateLimit != nil {
		if shared != nil && shared.spec == *spec.RateLimit {
			r.limiter = shared
		} else {
			r.limiter = newRateLimiter(spec.RateLimit)
		}
	}
	if spec.Rewrite != nil && spec.Rewrite.URIRegex != nil {
		re, err := regexp.Compile(spec.Rewrite.URIRegex.Pattern)
		if err != nil {
			return nil, fmt.Errorf("rewrite regex: %w", err)
		}
		r.rewriteRe = re
	}
	return r, nil
}

func compileStr(m *model.StringMatch) (*strMatch, error) {
	if m == nil || m.IsZero() {
		return nil, nil
	}
	s := &strMatch{exact: m.Exact, prefix: m.Prefix, pathPrefix: m.PathPrefix, ignoreCase: m.IgnoreCase}
	if m.IgnoreCase {
		s.exact, s.prefix, s.pathPrefix = strings.ToLower(s.exact), strings.ToLower(s.prefix), strings.ToLower(s.pathPrefix)
	}
	if m.Regex != "" {
		re, err := model.CompileRegex(m.Regex)
		if err != nil {
			return nil, err
		}
		s.re = re
	}
	return s, nil
}

func compileHeaders(hs []model.HeaderMatch, canonical bool) ([]headerMatch, error) {
	var out []headerMatch
	for _, h := range hs {
		v, err := compileStr(&h.Value)
		if err != nil {
			return nil, err
		}
		name := h.Name
		if canonical {
			name = http.CanonicalHeaderKey(name)
		}
		out = append(out, headerMatch{name: name, value: v, absent: h.Absent, invert: h.Invert})
	}
	return out, nil
}

func (s *strMatch) match(v string) bool {
	switch {
	case s.re != nil:
		return s.re.MatchString(v)
	case s.ignoreCase:
		v = strings.ToLower(v)
	}
	switch {
	case s.exact != "":
		return v == s.exact
	case s.pathPrefix != "":
		return model.HasPathPrefix(v, s.pathPrefix)
	}
	return strings.HasPrefix(v, s.prefix)
}

// routeInput is what route matching looks at.
type routeInput struct {
	path      string // normalized, no query
	method    string
	authority string
	header    *reqFields
	url       *url.URL // its query is parsed only if a route matches on it
	port      uint32
	peer      Peer
}

// serviceVhost is the virtual host of the service a connection's client
// dialled (a waypoint's), nil when none.
func (c *compiled) serviceVhost(peer *Peer) *vhost {
	if l := c.selectListener(peer.DestinationPort); l != nil {
		return l.vhostNamed(peer.DestinationService)
	}
	return nil
}

// maxWorkloadRoutes bounds the routes made for workloads' addresses and
// ports; past it, a route is made per connection and not kept.
const maxWorkloadRoutes = 4096

// workloadRoute is the route of a connection addressed to a workload this
// waypoint serves by its own address (not to a service): to that address
// and port, as Istio's waypoints forward workload traffic; nil for any
// other connection.
func (c *compiled) workloadRoute(peer *Peer) *route {
	if c.workloads == nil || peer.DestinationService != "" || !peer.DestinationIP.IsValid() {
		return nil
	}
	w := c.workloads[peer.DestinationIP.Unmap()]
	if w == nil {
		return nil
	}
	target := netip.AddrPortFrom(peer.DestinationIP.Unmap(), uint16(peer.DestinationPort))
	c.workloadMu.Lock()
	defer c.workloadMu.Unlock()
	if r := c.workloadRoutes[target]; r != nil {
		return r
	}
	name := "inbound-pod|" + strconv.Itoa(int(target.Port())) + "||" + target.Addr().String()
	cl := newCluster(&model.L7Cluster{Name: name, Endpoints: []model.L7Endpoint{{Address: target.String(), Labels: w.Labels, Workload: w.Name, Identity: w.Identity}}}, nil, c.opts, c.self)
	cl.all.dest = destInfo{workload: w.Name, namespace: w.Namespace, app: w.Labels["app"], version: w.Labels["version"], principal: w.Identity}
	r, err := compileRoute(&model.L7Route{Name: "inbound-pod", Destinations: []model.WeightedDestination{{Cluster: name, Weight: 1}}}, map[string]*cluster{name: cl}, nil)
	if err != nil {
		return nil // a plain route to one cluster: not reached
	}
	if len(c.workloadRoutes) < maxWorkloadRoutes {
		if c.workloadRoutes == nil {
			c.workloadRoutes = map[netip.AddrPort]*route{}
		}
		c.workloadRoutes[target] = r
	}
	return r
}

// closeWorkloadRoutes closes the idle upstream connections of the routes
// workloadRoute made, when a new config replaces c (or the proxy closes).
func (c *compiled) closeWorkloadRoutes() {
	c.workloadMu.Lock()
	defer c.workloadMu.Unlock()
	for _, r := range c.workloadRoutes {
		r.dests[0].up.close()
	}
}

// selectListener picks the listener for a destination port: an exact port,
// else a port-0 listener, else the first; nil when there is none (a
// waypoint serving workloads only).
func (c *compiled) selectListener(port uint32) *listener {
	var wildcard *listener
	for _, l := range c.listeners {
		if l.port == port && port != 0 {
			return l
		}
		if l.port == 0 && wildcard == nil {
			wildcard = l
		}
	}
	if wildcard != nil {
		return wildcard
	}
	if len(c.listeners) == 0 {
		return nil
	}
	return c.listeners[0]
}

// findRoute returns the first route that matches, Istio order: the virtual
// host of the service the client dialled (a waypoint's HBONE target, as
// Istio's waypoints choose by destination, so that a request from an
// ingress gateway carrying its external Host, or any client's Host naming
// another service, gets the routes of the service it was sent to), else by
// authority (exact, then longest wildcard suffix, then "*"), then its
// routes in order.
func (l *listener) findRoute(in *routeInput) (*vhost, *route) {
	vh := l.vhostNamed(in.peer.DestinationService)
	if vh == nil {
		vh = l.vhostByAuthority(in.authority)
	}
	if vh == nil {
		return nil, nil
	}
	for _, r := range vh.routes {
		if len(r.matches) == 0 {
			return vh, r
		}
		for i := range r.matches {
			if r.matches[i].match(in) {
				return vh, r
			}
		}
	}
	return vh, nil
}

// vhostNamed is the virtual host of service (meshd names a waypoint's by
// the service hostname); nil for "" or none.
func (l *listener) vhostNamed(service string) *vhost {
	if service == "" {
		return nil
	}
	for _, v := range l.vhosts {
		if v.name == service {
			return v
		}
	}
	return nil
}

// vhostByAuthority is the virtual host for a Host/:authority: exact, then
// the longest wildcard suffix, then "*".
func (l *listener) vhostByAuthority(authority string) *vhost {
	host := strings.ToLower(authority)
	if h, _, ok := splitHostPort(host); ok {
		host = h
	}
	host = strings.TrimSuffix(host, ".")
	var vh *vhost
	best := -1
	for _, v := range l.vhosts {
		if v.exact[host] {
			return v
		}
		for _, s := range v.suffixes {
			if strings.HasSuffix(host, s) && len(s) > best {
				vh, best = v, len(s)
			}
		}
	}
	if vh != nil {
		return vh
	}
	for _, v := range l.vhosts {
		if v.any {
			return v
		}
	}
	return nil
}

func (m *match) match(in *routeInput) bool {
	if m.port != 0 && m.port != in.port {
		return false
	}
	if m.uri != nil && !m.uri.match(in.path) {
		return false
	}
	if m.method != nil && !m.method.match(in.method) {
		return false
	}
	if m.authority != nil && !m.authority.match(in.authority) {
		return false
	}
	if m.srcNamespace != "" && m.srcNamespace != in.peer.Namespace {
		return false
	}
	for k, v := range m.srcLabels {
		if in.peer.Labels[k] != v {
			return false
		}
	}
	var buf [2]string
	for _, h := range m.headers {
		vals, present := in.header.appendValues(buf[:0], h.name)
		if !h.matches(vals, present) {
			return false
		}
	}
	if len(m.query) > 0 {
		var q url.Values
		if in.url != nil {
			q = in.url.Query()
		}
		for _, h := range m.query {
			vals, ok := q[h.name]
			if !h.matches(vals, ok) {
				return false
			}
		}
	}
	return true
}

func (h *headerMatch) matches(vals []string, present bool) bool {
	if h.absent {
		return !present
	}
	if !present {
		return h.invert
	}
	if h.value == nil {
		return !h.invert
	}
	ok := false
	for _, v := range vals {
		if h.value.match(v) {
			ok = true
			break
		}
	}
	return ok != h.invert
}

// pickDest chooses a weighted destination at random, as Envoy does.
func (r *route) pickDest(rnd func(uint64) uint64) *dest {
	if len(r.dests) == 1 {
		return &r.dests[0]
	}
	n := rnd(r.total)
	for i := range r.dests {
		if n < r.dests[i].weight {
			return &r.dests[i]
		}
		n -= r.dests[i].weight
	}
	return &r.dests[len(r.dests)-1]
}

func splitHostPort(hostport string) (host, port string, ok bool) {
	if strings.HasPrefix(hostport, "[") {
		end := strings.IndexByte(hostport, ']')
		if end < 0 {
			return "", "", false
		}
		host = hostport[1:end]
		rest := hostport[end+1:]
		if strings.HasPrefix(rest, ":") {
			return host, rest[1:], true
		}
		return host, "", true
	}
	i := strings.LastIndexByte(hostport, ':')
	if i < 0 || strings.Count(hostport, ":") > 1 {
		return hostport, "", false
	}
	return hostport[:i], hostport[i+1:], true
}
