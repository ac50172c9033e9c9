package model

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"regexp"
	"regexp/syntax"
	"slices"
	"strings"
	"time"

	prommodel "github.com/prometheus/common/model"
	"golang.org/x/net/http/httpguts"

	"github.com/meshlet/meshlet/pkg/accesslog"
)

// This file holds the L7 configuration a waypoint or an ingress gateway runs:
// listeners with virtual hosts and ordered routes, clusters with subsets and
// traffic policy, JWT providers and local rate limits. meshd translates
// VirtualService, DestinationRule, HTTPRoute/GRPCRoute and
// RequestAuthentication into these types; the waypoint compiles them once per
// config push. Every type is plain data; Validate reports the first problem
// with the path of the offending field.

// AppliesTo reports whether the provider checks requests for service (a
// hostname; empty when the destination is no service).
func (p *JWTProvider) AppliesTo(service string) bool {
	return len(p.Services) == 0 || slices.Contains(p.Services, service)
}

// MaxRegexProgramSize bounds a compiled RE2 program (number of instructions),
// like Envoy's regex max_program_size, so that a route cannot carry a regex
// whose matching cost is unbounded in practice.
const MaxRegexProgramSize = 1000

// maxRegexLen bounds a regex's source text before it is parsed.
const maxRegexLen = 4096

// L7Config is everything one waypoint or gateway serves.
type L7Config struct {
	// Listeners are the ports the proxy serves; at least one, unless
	// Workloads has some.
	Listeners []L7Listener
	// Workloads are the workloads a waypoint takes the traffic addressed
	// to themselves for (a waypoint for workloads or for all, Istio's
	// istio.io/waypoint-for): a connection to one of their addresses, not
	// to a service, is forwarded to that address and port after the
	// waypoint's policies; service routes do not apply. Any other address
	// is refused.
	Workloads []L7Workload `json:",omitempty"`
	// Clusters are the upstream services routes send to, by unique Name.
	Clusters []L7Cluster
	// JWTProviders are the RequestAuthentication JWT rules that apply to
	// every request on this proxy; empty means no JWT validation.
	JWTProviders []JWTProvider
	// Telemetry is what Istio's Telemetry API asks of this proxy; the zero
	// value keeps the proxy's own defaults.
	Telemetry L7Telemetry
	// ProxyLocalities maps the nodes the proxy's pods run on to their
	// locality ("region/zone/subzone"): each pod finds its own by its
	// node's name, for locality load balancing. Set only when a cluster
	// has LBPolicy.Locality.
	ProxyLocalities map[string]string `json:",omitempty"`
	// ExtAuthz are the external authorization providers CUSTOM
	// policies may name.
	ExtAuthz []ExtAuthz `json:",omitempty"`
	// PodPolicies are the AuthorizationPolicies that select an ingress
	// gateway's pods (mesh-wide, namespace-wide or by selector, as Istio
	// applies them to a gateway's Envoy); meshd sends them with the
	// config's policies. Not part of the proxy's config itself.
	PodPolicies []NamespacedName `json:"-"`
}

// L7Workload is a workload a waypoint serves by its own address.
type L7Workload struct {
	// Addresses are its IPs.
	Addresses []string
	// Name and Namespace name it in telemetry (Istio's destination_workload:
	// the owning controller's name).
	Name, Namespace string
	// Labels are its app and version labels, for telemetry.
	Labels map[string]string `json:",omitempty"`
	// Identity is its SPIFFE ID, for telemetry (destination_principal).
	Identity string `json:",omitempty"`
}

// L7Telemetry is the effective Telemetry API configuration of one proxy
// (mesh-wide, then namespace, then the proxy's own; the most specific
// setting of each kind wins). A nil field keeps the proxy's default.
type L7Telemetry struct {
	// AccessLog turns the JSON access log on or off.
	AccessLog *bool `json:",omitempty"`
	// AccessLogFilter is the CEL condition a request must meet to be
	// logged (the Telemetry's accessLogging filter.expression, see
	// pkg/logfilter); empty logs every request.
	AccessLogFilter string `json:",omitempty"`
	// AccessLogFormat is how each access log line is written; nil is
	// meshlet's JSON line with Istio's default fields.
	AccessLogFormat *AccessLogFormat `json:",omitempty"`
	// TraceSampling is the percentage (0–100) of new traces sampled.
	TraceSampling *float64 `json:",omitempty"`
	// RequestMetrics turns the Istio request metrics on or off.
	RequestMetrics *bool `json:",omitempty"`
	// Tracer is where sampled spans go; nil leaves the proxy's own
	// exporter (its --otlp-endpoint), if any.
	Tracer *Tracer `json:",omitempty"`
	// TraceTags are further attributes of the proxy's spans, by name (the
	// Telemetry's tracing customTags).
	TraceTags map[string]TraceTag `json:",omitempty"`
	// Metrics are the Telemetry's metrics overrides as they apply to this
	// proxy, by Istio's metric name (one of IstioMetrics); a metric not
	// named keeps its standard labels. RequestMetrics false still turns
	// them all off.
	Metrics map[string]MetricOverride `json:",omitempty"`
}

// AccessLogFormat is an access log format with Envoy's command operators
// (pkg/accesslog): Text, or Labels, a JSON object whose values are formats.
type AccessLogFormat struct {
	Text   string            `json:",omitempty"`
	Labels map[string]string `json:",omitempty"`
	// OmitEmpty leaves out of a JSON line the keys whose value is not
	// known (omitEmptyValues), rather than writing null.
	OmitEmpty bool `json:",omitempty"`
}

// Parse checks and compiles f.
func (f *AccessLogFormat) Parse() (*accesslog.Format, error) {
	if (f.Text == "") == (len(f.Labels) == 0) {
		return nil, errors.New("access log format: want text or labels, one of them")
	}
	if f.Text != "" {
		return accesslog.ParseText(f.Text)
	}
	out, err := accesslog.ParseLabels(f.Labels)
	if err == nil {
		out.OmitEmpty = f.OmitEmpty
	}
	return out, err
}

// IstioMetrics are the Telemetry API's names of the standard metrics a proxy
// exports (MetricSelector.IstioMetric, ALL_METRICS aside), the HTTP ones
// first. The gRPC message counts are Istio's too; meshlet's proxies do not
// export them, so overriding them changes nothing.
var IstioMetrics = []string{
	"REQUEST_COUNT", "REQUEST_DURATION", "REQUEST_SIZE", "RESPONSE_SIZE",
	"TCP_OPENED_CONNECTIONS", "TCP_CLOSED_CONNECTIONS", "TCP_SENT_BYTES", "TCP_RECEIVED_BYTES",
	"GRPC_REQUEST_MESSAGES", "GRPC_RESPONSE_MESSAGES",
}

// MetricOverride changes one metric: turns it off, or changes its labels
// (the Telemetry's tagOverrides).
type MetricOverride struct {
	Disabled bool `json:",omitempty"`
	// Tags are the label changes by label name: Remove drops a standard
	// label; otherwise Value, a CEL expression over the request's
	// attributes (pkg/logfilter), sets a standard label's value or adds a
	// label.
	Tags map[string]TagOverride `json:",omitempty"`
}

// TagOverride is one label's change.
type TagOverride struct {
	Remove bool   `json:",omitempty"`
	Value  string `json:",omitempty"`
}

// MaxMetricTags bounds the label changes of one metric.
const MaxMetricTags = 32

// ValidLabelName reports whether name can be a Prometheus label: letters,
// digits and underscores, not starting with a digit, and not the "__"
// prefix Prometheus reserves.
func ValidLabelName(name string) bool {
	return prommodel.LegacyValidation.IsValidLabelName(name) && !strings.HasPrefix(name, "__")
}

func validateMetricOverrides(m map[string]MetricOverride) error {
	for name, o := range m {
		if !slices.Contains(IstioMetrics, name) {
			return fmt.Errorf("telemetry: metric %q is not one of %s", name, strings.Join(IstioMetrics, ", "))
		}
		if len(o.Tags) > MaxMetricTags {
			return fmt.Errorf("telemetry: metric %s: %d tag overrides, more than %d", name, len(o.Tags), MaxMetricTags)
		}
		for tag, t := range o.Tags {
			if !ValidLabelName(tag) {
				return fmt.Errorf("telemetry: metric %s: tag %q is not a valid Prometheus label name (letters, digits and _)", name, tag)
			}
			if t.Remove == (t.Value != "") {
				return fmt.Errorf("telemetry: metric %s: tag %q: want either remove or a value expression", name, tag)
			}
		}
	}
	return nil
}

// TraceTag is a span attribute: a request header's value (Default when the
// request has none), or else Literal.
type TraceTag struct {
	Literal string `json:",omitempty"`
	Header  string `json:",omitempty"`
	Default string `json:",omitempty"`
}

// MaxTraceTags bounds the custom tags of one proxy's spans.
const MaxTraceTags = 64

// L7Listener is one port with its virtual hosts.
type L7Listener struct {
	// Name identifies the listener in logs and metrics.
	Name string
	// Port is the port the listener serves (for route port matches and
	// telemetry); zero means "any port" for a listener fed by HBONE.
	Port uint32
	// VirtualHosts are tried by Host/:authority; the first whose Domains
	// match wins, and a host with Domains ["*"] catches the rest.
	VirtualHosts []VirtualHost
	// TLS terminates TLS on an ingress listener (an Istio Gateway server
	// with tls.mode SIMPLE or MUTUAL); nil serves plaintext.
	TLS *ListenerTLS `json:",omitempty"`
	// SNI are further certificates on the port (more Gateway servers with
	// their own credentials): a client whose TLS SNI matches one of an
	// entry's SNIHosts gets that entry, an exact host before a wildcard;
	// TLS serves every other client. Requires TLS.
	SNI []ListenerTLS `json:",omitempty"`
	// Passthrough forwards whole TLS connections, not terminated, by the
	// server name of their ClientHello (an Istio Gateway server with
	// tls.mode PASSTHROUGH and a VirtualService's tls routes): the first
	// route whose SNIHosts match, an exact host before a wildcard. A
	// connection no route claims is terminated with TLS when the listener
	// has it, closed otherwise.
	Passthrough []PassthroughRoute `json:",omitempty"`
	// TCP forwards every connection of the listener whole, unread (an
	// Istio Gateway server with protocol TCP and a VirtualService's tcp
	// route); such a listener serves nothing else.
	TCP *TCPRoute `json:",omitempty"`
	// TCPMatched are the routes with match conditions that come before TCP,
	// tried in order: the first one whose Matches a connection meets takes
	// it, else TCP (nil: the connection is closed).
	TCPMatched []TCPRoute `json:",omitempty"`
}

// TCPRoute sends a listener's connections to its destinations by weight.
type TCPRoute struct {
	// Name identifies the route in logs (its VirtualService and index).
	Name string
	// Destinations are clusters by weight, subsets allowed.
	Destinations []WeightedDestination
	// Matches, set on the routes of a TCPMatched list, limit the route to
	// the connections one of them matches.
	Matches []TCPMatch `json:",omitempty"`
}

// TCPMatch is a VirtualService tcp route's match condition on a connection:
// every field set must hold.
type TCPMatch struct {
	// SourceLabels must be a subset of the client workload's labels (known
	// from the identity its HBONE connection proved).
	SourceLabels map[string]string `json:",omitempty"`
	// SourceNamespace is the client workload's namespace.
	SourceNamespace string `json:",omitempty"`
	// DestinationSubnets: the address the client dialled is in one of them
	// (CIDRs, or single addresses).
	DestinationSubnets []string `json:",omitempty"`
}

// Matches reports whether m holds for a client in namespace ns with
// labels, that dialled dst.
func (m *TCPMatch) Matches(ns string, labels map[string]string, dst netip.Addr) bool {
	if m.SourceNamespace != "" && m.SourceNamespace != ns {
		return false
	}
	if !SelectorMatches(m.SourceLabels, labels) {
		return false
	}
	if len(m.DestinationSubnets) == 0 {
		return true
	}
	for _, s := range m.DestinationSubnets {
		if p, err := ParseSubnet(s); err == nil && dst.IsValid() && p.Contains(dst.Unmap()) {
			return true
		}
	}
	return false
}

// ParseSubnet reads a CIDR, or a single address as its own /32 or /128.
func ParseSubnet(s string) (netip.Prefix, error) {
	if p, err := netip.ParsePrefix(s); err == nil {
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("%q is neither a CIDR nor an address", s)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

// validateMatched checks a TCPMatched list: each route with a match, its
// subnets well formed, its destinations defined.
func validateMatched(routes []TCPRoute, clusters map[string]*L7Cluster) error {
	for i, r := range routes {
		if len(r.Matches) == 0 {
			return fmt.Errorf("tcpMatched[%d] %q: no match (an unconditional route is TCP)", i, r.Name)
		}
		for _, m := range r.Matches {
			for _, s := range m.DestinationSubnets {
				if _, err := ParseSubnet(s); err != nil {
					return fmt.Errorf("tcpMatched[%d] %q: destinationSubnets: %w", i, r.Name, err)
				}
			}
		}
		if err := validDestinations(r.Destinations, clusters); err != nil {
			return fmt.Errorf("tcpMatched[%d] %q: %w", i, r.Name, err)
		}
	}
	return nil
}

// PassthroughRoute sends the TLS connections whose server name matches
// SNIHosts to its destinations, by weight, as they come (the backend
// terminates TLS).
type PassthroughRoute struct {
	// Name identifies the route in logs (its VirtualService and index).
	Name string
	// SNIHosts are exact hosts, "*.suffix" or "*".
	SNIHosts []string
	// Destinations are clusters by weight; subsets allowed, no direct
	// responses or header edits (the stream is not read).
	Destinations []WeightedDestination
}

// validDestinations checks the destinations of a route that forwards
// whole connections: some, each a defined cluster (no direct responses).
func validDestinations(ds []WeightedDestination, clusters map[string]*L7Cluster) error {
	if len(ds) == 0 {
		return errors.New("no destinations")
	}
	for _, d := range ds {
		if d.DirectResponse != nil || clusters[d.Cluster] == nil {
			return fmt.Errorf("destination cluster %q is not defined", d.Cluster)
		}
	}
	return nil
}

// MatchSNI reports how well host matches the route's SNIHosts: 0 not at
// all, 1 for "*", 2+len(suffix) for a wildcard, and the most for an exact
// host, so that the best route wins.
func (r *PassthroughRoute) MatchSNI(host string) int {
	host = strings.ToLower(strings.TrimSuffix(host, "."))
	best := 0
	for _, h := range r.SNIHosts {
		h = strings.ToLower(h)
		switch {
		case h == "*":
			best = max(best, 1)
		case strings.HasPrefix(h, "*."):
			if strings.HasSuffix(host, h[1:]) {
				best = max(best, 2+len(h))
			}
		case h == host && host != "":
			return 1 << 20
		}
	}
	return best
}

// TLS modes of an ingress listener, as Istio's ServerTLSSettings names them.
const (
	TLSModeSimple = "SIMPLE"
	TLSModeMutual = "MUTUAL"
	// TLSModeOptionalMutual verifies a client certificate when the client
	// gives one and lets a client without one in (Istio's OPTIONAL_MUTUAL,
	// Gateway API's AllowInsecureFallback); listeners only.
	TLSModeOptionalMutual = "OPTIONAL_MUTUAL"
)

// ListenerTLS is the server certificate of an ingress listener and, for
// MUTUAL, the roots client certificates must chain to.
type ListenerTLS struct {
	// Mode is TLSModeSimple, TLSModeMutual or TLSModeOptionalMutual.
	Mode string
	// CertPEM is the certificate chain, leaf first.
	CertPEM string
	// KeyPEM is the private key. It travels only over meshd's mutual-TLS
	// xDS stream to the gateway that serves it and is never logged.
	KeyPEM string
	// ClientCAPEM holds the roots for client certificates (MUTUAL and
	// OPTIONAL_MUTUAL).
	ClientCAPEM string `json:",omitempty"`
	// SNIHosts are the server's hosts (exact, "*.suffix" or "*"): an
	// L7Listener.SNI entry is chosen by them; the listener's TLS serves any
	// SNI no entry claims.
	SNIHosts []string `json:",omitempty"`
}

// String never prints the key.
func (t *ListenerTLS) String() string {
	if t == nil {
		return "<plaintext>"
	}
	return fmt.Sprintf("tls(mode=%s, hosts=%v)", t.Mode, t.SNIHosts)
}

func (t *ListenerTLS) validate() error {
	switch t.Mode {
	case TLSModeSimple, TLSModeMutual, TLSModeOptionalMutual:
	default:
		return fmt.Errorf("tls mode %q: want %s, %s or %s", t.Mode, TLSModeSimple, TLSModeMutual, TLSModeOptionalMutual)
	}
	if t.CertPEM == "" || t.KeyPEM == "" {
		return errors.New("tls: a certificate and a key are required")
	}
	if t.Mode != TLSModeSimple && t.ClientCAPEM == "" {
		return fmt.Errorf("tls mode %s: no client CA: add ca.crt to the credential Secret", t.Mode)
	}
	return nil
}

// VirtualHost is a set of domains sharing one ordered route table.
type VirtualHost struct {
	// Name identifies the virtual host (usually the service hostname).
	Name string
	// Domains are exact hostnames, "*.suffix" wildcards or "*". A port in
	// the request's Host is ignored when matching.
	Domains []string
	// Routes are tried in order; the first that matches wins (Istio order).
	Routes []L7Route
	// CORS applies to every route without its own CORS policy; nil means none.
	CORS *CORSPolicy
	// TCP forwards the connections to this virtual host's service that are
	// not HTTP (a database, TLS the client originates, a server-first
	// protocol) whole, by weight: a waypoint's L4 path for the service (a
	// TCPRoute bound to it, a VirtualService's tcp route, else the service
	// itself). Nil: such connections are closed.
	TCP *TCPRoute `json:",omitempty"`
	// TCPMatched are the tcp routes with match conditions that come before
	// TCP, tried in order on such a connection.
	TCPMatched []TCPRoute `json:",omitempty"`
	// Passthrough are the TLSRoutes bound to the service (GAMMA): a
	// connection that starts with a TLS ClientHello whose server name one
	// of them claims is relayed whole to its destinations, before the tcp
	// routes.
	Passthrough []PassthroughRoute `json:",omitempty"`
	// Opaque is set when the service's port is declared a protocol that is
	// not HTTP (appProtocol, or Istio's port name prefix: tcp, tls, https,
	// mongo, mysql, redis): its connections go to TCP at once, never read
	// for HTTP, so a server-first protocol does not wait out the sniffing.
	Opaque bool `json:",omitempty"`
}

// L7Route is one VirtualService http[] entry or HTTPRoute rule. Exactly one
// of Destinations, Redirect or DirectResponse is set.
type L7Route struct {
	// Name identifies the route in logs and metrics.
	Name string
	// Origin is the object the route was translated from, "<Kind>/<ns>/<name>"
	// (a VirtualService, HTTPRoute or GRPCRoute); empty for routes meshd
	// makes itself. Names are unique only within their object (two
	// HTTPRoutes may both name a rule "api"), so what belongs to one
	// object's rule (a policy's targetRef, a shared rate-limit bucket) is
	// found by Origin and Name together.
	Origin string `json:",omitempty"`
	// Matches are alternatives (OR); empty matches every request.
	Matches []RouteMatch
	// Destinations split traffic by Weight; weights need not sum to 100 but
	// must not all be zero.
	Destinations []WeightedDestination
	// Redirect answers with a 3xx instead of forwarding; nil means no redirect.
	Redirect *Redirect
	// DirectResponse answers with a fixed status and body; nil means none.
	DirectResponse *DirectResponse
	// Rewrite changes the path or authority before forwarding; nil means none.
	Rewrite *Rewrite
	// Timeout bounds the whole request including retries; zero means none
	// (Istio's default for HTTP routes).
	Timeout time.Duration
	// Retries is the retry policy; nil means DefaultRetry (Istio's 2
	// retries on "connect-failure,refused-stream,unavailable,cancelled,
	// retriable-status-codes" (503)); Attempts 0 disables retries.
	Retries *RetryPolicy
	// Fault injects delays or aborts; nil means none.
	Fault *FaultInjection
	// Mirrors receive a copy of the request, fire and forget.
	Mirrors []Mirror
	// RequestHeaders are applied to the request before forwarding.
	RequestHeaders HeaderOps
	// ResponseHeaders are applied to the response before returning it.
	ResponseHeaders HeaderOps
	// CORS overrides the virtual host's CORS policy; nil inherits it.
	CORS *CORSPolicy
	// RateLimit is a local token bucket for this route; nil means none.
	// Routes of one virtual host with the same Origin and Name and an equal
	// RateLimit share the bucket (meshd gives the routes it splits from one
	// rule the rule's origin and name).
	RateLimit *RateLimit
	// ExtAuthz is the route's own external authorizer (Gateway API's
	// ExternalAuth filter): every request the route matches is checked with
	// it, after the AuthorizationPolicies; nil means none.
	ExtAuthz *ExtAuthz `json:",omitempty"`
	// Session keeps a client on the endpoint it was first sent to (strong
	// session affinity: Gateway API's sessionPersistence, Istio's
	// istio.io/persistent-session Service labels); nil means none.
	Session *SessionPersistence `json:",omitempty"`
}

// SessionPersistence pins a client's requests to one endpoint of a route's
// destinations: the proxy gives the client a token naming the destination
// and endpoint that answered it, in a cookie or a response header, and sends
// the requests that carry it back there while that endpoint is in the route
// and not ejected, whatever the weights say; otherwise (no token, expired,
// endpoint gone) it balances as usual and gives a new token. The token
// names the endpoint by a hash, never by its address. Exactly one of Cookie
// and Header is set.
type SessionPersistence struct {
	// Cookie is the name of the cookie that carries the token.
	Cookie string `json:",omitempty"`
	// Header is the name of the request and response header that carries it.
	Header string `json:",omitempty"`
	// CookiePath is the cookie's Path attribute; empty means "/".
	CookiePath string `json:",omitempty"`
	// Timeout is a session's absolute lifetime from when its token was given,
	// kept in the token; zero means none.
	Timeout time.Duration `json:",omitempty"`
	// Permanent makes the cookie last Timeout in the client (Max-Age) rather
	// than until the browser session ends.
	Permanent bool `json:",omitempty"`
}

// Validate checks the names and the lifetime.
func (s *SessionPersistence) Validate() error {
	switch {
	case (s.Cookie == "") == (s.Header == ""):
		return errors.New("session: set cookie or header, one of them")
	case s.Cookie != "" && !validCookieName(s.Cookie):
		return fmt.Errorf("session: cookie name %q is not a token (RFC 6265: letters, digits and !#$%%&'*+-.^_`|~)", s.Cookie)
	case s.Header != "" && !httpguts.ValidHeaderFieldName(s.Header):
		return fmt.Errorf("session: header name %q is not a valid field name", s.Header)
	case s.CookiePath != "" && (s.Cookie == "" || !strings.HasPrefix(s.CookiePath, "/") || strings.ContainsAny(s.CookiePath, ";\x00\r\n")):
		return fmt.Errorf("session: cookie path %q: want a path starting with / (cookies only), without ';' or control characters", s.CookiePath)
	case s.Timeout < 0:
		return fmt.Errorf("session: timeout %v is negative", s.Timeout)
	case s.Permanent && (s.Cookie == "" || s.Timeout <= 0):
		return errors.New("session: a permanent session needs a cookie and a timeout (its Max-Age)")
	}
	return nil
}

// validCookieName reports whether name is an RFC 6265 cookie-name (a token)
// of at most 128 bytes.
func validCookieName(name string) bool {
	return len(name) <= 128 && httpguts.ValidHeaderFieldName(name)
}

// StringMatch is Istio's StringMatch: exactly one of Exact, Prefix or Regex,
// or Gateway API's PathPrefix.
type StringMatch struct {
	// Exact matches the whole value.
	Exact string
	// Prefix matches the start of the value.
	Prefix string
	// Regex is an RE2 expression that must match the whole value.
	Regex string
	// PathPrefix matches whole path segments, as Gateway API's PathPrefix
	// (see HasPathPrefix): "/api" matches /api, /api/ and /api/x, not
	// /apiv2; a trailing slash in it is ignored. It must start with "/".
	PathPrefix string `json:",omitempty"`
	// IgnoreCase makes Exact, Prefix and PathPrefix case-insensitive.
	IgnoreCase bool
}

// IsZero reports whether no match kind is set.
func (m StringMatch) IsZero() bool {
	return m.Exact == "" && m.Prefix == "" && m.Regex == "" && m.PathPrefix == ""
}

// HasPathPrefix reports whether path starts with prefix on a segment
// boundary (Gateway API's PathPrefix): after prefix, less its trailing
// slash, path ends or goes on with "/". The prefix "/" matches every path
// that starts with "/".
func HasPathPrefix(path, prefix string) bool {
	p := strings.TrimSuffix(prefix, "/")
	return strings.HasPrefix(path, p) && (len(path) == len(p) || path[len(p)] == '/')
}

// HeaderMatch matches one request header (or, in QueryParams, one parameter).
type HeaderMatch struct {
	// Name is the header name (case-insensitive) or query parameter name.
	Name string
	// Value is how the value must match; zero with Present unset means the
	// header must be present with any value.
	Value StringMatch
	// Absent inverts presence: the header must not be present.
	Absent bool
	// Invert negates the value match (Istio's withoutHeaders).
	Invert bool
}

// RouteMatch is one set of conditions that must all hold (AND).
type RouteMatch struct {
	// URI matches the normalized path (query string excluded); nil matches all.
	URI *StringMatch
	// Method matches the HTTP method; nil matches all.
	Method *StringMatch
	// Authority matches Host/:authority; nil matches all.
	Authority *StringMatch
	// Headers must all match.
	Headers []HeaderMatch
	// QueryParams must all match.
	QueryParams []HeaderMatch
	// Port is the listener port the request arrived on; zero matches all.
	Port uint32
	// SourceLabels must be a subset of the client workload's labels.
	SourceLabels map[string]string
	// SourceNamespace is the client workload's namespace; empty matches all.
	SourceNamespace string
}

// WeightedDestination is one backend of a route.
type WeightedDestination struct {
	// Cluster names an L7Cluster; empty when DirectResponse is set.
	Cluster string
	// Subset names a subset of that cluster; empty means all its endpoints.
	Subset string
	// DirectResponse, when set, answers the requests this destination is
	// chosen for instead of forwarding them: a Gateway API backendRef that
	// does not resolve keeps its weight and its share of requests gets 500.
	// Cluster and Subset are then empty. Nil forwards to Cluster.
	DirectResponse *DirectResponse `json:",omitempty"`
	// Weight is the relative share of traffic.
	Weight uint32
	// RequestHeaders are applied when this destination is chosen.
	RequestHeaders HeaderOps
	// ResponseHeaders are applied to responses from this destination.
	ResponseHeaders HeaderOps
}

// RetryPolicy is Istio's HTTPRetry.
type RetryPolicy struct {
	// Attempts is the number of retries after the first try; zero disables.
	Attempts int
	// PerTryTimeout bounds each try; zero means only the route timeout.
	PerTryTimeout time.Duration
	// RetryOn lists Envoy retry conditions: 5xx, gateway-error, reset,
	// connect-failure, refused-stream, retriable-status-codes, unavailable,
	// cancelled, deadline-exceeded, resource-exhausted, internal, or a
	// status code; empty means Istio's default "connect-failure,
	// refused-stream,unavailable,cancelled,retriable-status-codes" (with
	// 503 when RetriableStatusCodes is empty).
	RetryOn []string
	// RetriableStatusCodes are the codes retried under retriable-status-codes.
	RetriableStatusCodes []int
	// Backoff is the base interval between tries: before retry n (0 for
	// the first) the proxy waits a random time in [Backoff,
	// min(Backoff<<n, 10*Backoff)], never less than Backoff. Zero means
	// Envoy's default: full jitter over min(25ms<<n, 250ms).
	Backoff time.Duration `json:",omitempty"`
	// SameHosts lets a retry go to an endpoint already tried (Istio's
	// retryIgnorePreviousHosts: false); by default a retry picks among the
	// others while there are any.
	SameHosts bool `json:",omitempty"`
	// RemoteLocalities sends a retry, under locality load balancing, to
	// the next locality level rather than the one already tried (Istio's
	// retryRemoteLocalities, Envoy's previous_priorities).
	RemoteLocalities bool `json:",omitempty"`
}

// DefaultRetry is the policy of a route without one: Istio's default of 2
// retries on connect-failure, refused-stream, unavailable, cancelled and
// retriable-status-codes (503). It is shared: copy it, and its slices,
// before changing anything.
var DefaultRetry = RetryPolicy{
	Attempts:             2,
	RetryOn:              []string{"connect-failure", "refused-stream", "unavailable", "cancelled", "retriable-status-codes"},
	RetriableStatusCodes: []int{503},
}

// KnownRetryOn are the retry conditions the waypoint implements.
var KnownRetryOn = map[string]bool{
	"5xx": true, "gateway-error": true, "reset": true, "connect-failure": true,
	"refused-stream": true, "retriable-status-codes": true, "unavailable": true,
	"cancelled": true, "deadline-exceeded": true, "resource-exhausted": true,
	"internal": true, "retriable-4xx": true,
}

// FaultInjection is Istio's HTTPFaultInjection.
type FaultInjection struct {
	// Delay, if set, holds the request before forwarding.
	Delay *FaultDelay
	// Abort, if set, answers without forwarding.
	Abort *FaultAbort
}

// FaultDelay delays a share of requests.
type FaultDelay struct {
	// Duration is the fixed delay.
	Duration time.Duration
	// Percent of requests (0–100) to delay; translate an absent
	// percentage as 100 (Istio's default).
	Percent float64
}

// FaultAbort aborts a share of requests.
type FaultAbort struct {
	// HTTPStatus is the status to return (200–599); zero with GRPCStatus set
	// answers a gRPC status instead.
	HTTPStatus int
	// GRPCStatus is a gRPC status code name or number ("UNAVAILABLE", "14").
	GRPCStatus string
	// Percent of requests (0–100) to abort; translate an absent
	// percentage as 100 (Istio's default).
	Percent float64
}

// Mirror sends a copy of requests to another destination.
type Mirror struct {
	// Cluster names an L7Cluster.
	Cluster string
	// Subset names a subset of that cluster; empty means all endpoints.
	Subset string
	// Percent of requests (0–100) to mirror; zero mirrors nothing, so
	// translate an absent mirrorPercentage as 100 (Istio's default).
	Percent float64
}

// HeaderOps edits headers: Remove, then Set (replace), then Add (append).
type HeaderOps struct {
	// Set replaces the header's values.
	Set map[string]string
	// Add appends a value.
	Add map[string]string
	// Remove deletes the header.
	Remove []string
}

// IsZero reports whether no operation is set.
func (h HeaderOps) IsZero() bool { return len(h.Set) == 0 && len(h.Add) == 0 && len(h.Remove) == 0 }

// Redirect is Istio's HTTPRedirect.
type Redirect struct {
	// Scheme replaces the scheme; empty keeps it.
	Scheme string
	// Authority replaces the host; empty keeps it.
	Authority string
	// Port replaces the port; zero keeps it.
	Port uint32
	// DerivePort, when Port is zero, is Istio's derivePort:
	// "FROM_PROTOCOL_DEFAULT" (no port: the scheme's default) or
	// "FROM_REQUEST_PORT" (the request's port, even to another scheme).
	// Empty keeps the request's port unless the scheme changes.
	DerivePort string `json:",omitempty"`
	// URI replaces the path; empty keeps it.
	URI string
	// Code is the 3xx status; zero means 301.
	Code int
}

// Rewrite is Istio's HTTPRewrite.
type Rewrite struct {
	// URIPrefix replaces the part of the path matched by the route's URI
	// prefix match (the whole path for other matches); empty keeps it.
	URIPrefix string
	// URIRegex rewrites the path with a regex substitution; nil means none.
	URIRegex *RegexRewrite
	// Authority replaces Host/:authority; empty keeps it.
	Authority string
}

// RegexRewrite is a regex with a substitution (RE2, $1-style groups).
type RegexRewrite struct {
	// Pattern is the RE2 expression.
	Pattern string
	// Substitution replaces every match.
	Substitution string
}

// DirectResponse answers without forwarding.
type DirectResponse struct {
	// Status is the HTTP status (200–599).
	Status int
	// Body is the response body; empty means none.
	Body string
}

// CORSPolicy is Istio's CorsPolicy.
type CORSPolicy struct {
	// AllowOrigins match the Origin header.
	AllowOrigins []StringMatch
	// AllowMethods are returned in Access-Control-Allow-Methods.
	AllowMethods []string
	// AllowHeaders are returned in Access-Control-Allow-Headers.
	AllowHeaders []string
	// ExposeHeaders are returned in Access-Control-Expose-Headers.
	ExposeHeaders []string
	// MaxAge is returned in Access-Control-Max-Age; zero omits it.
	MaxAge time.Duration
	// AllowCredentials sets Access-Control-Allow-Credentials: true.
	AllowCredentials bool
}

// L7Cluster is a destination service: its endpoints, subsets and traffic
// policy (DestinationRule).
type L7Cluster struct {
	// Name is unique within the config (e.g. "outbound|80||reviews.ns.svc").
	Name string
	// Endpoints are the upstream addresses with their labels.
	Endpoints []L7Endpoint
	// Subsets select endpoints by labels.
	Subsets []Subset
	// Traffic is the cluster-wide traffic policy.
	Traffic TrafficPolicy
	// Protocol is the upstream protocol, from the service port's
	// appProtocol or name: UpstreamAuto (HTTP/2 for gRPC requests, else
	// HTTP/1.1), UpstreamHTTP1 or UpstreamHTTP2 (h2c, also for "grpc").
	// The traffic policy's ConnectionPool.H2Upgrade and UseClientProtocol
	// change it.
	Protocol UpstreamProtocol
}

// UpstreamProtocol is how the proxy speaks to a cluster's endpoints.
type UpstreamProtocol string

// Upstream protocols.
const (
	// UpstreamAuto uses HTTP/2 for gRPC requests and HTTP/1.1 otherwise.
	UpstreamAuto UpstreamProtocol = ""
	// UpstreamHTTP1 always uses HTTP/1.1 (gRPC requests still use HTTP/2,
	// which gRPC requires).
	UpstreamHTTP1 UpstreamProtocol = "HTTP"
	// UpstreamHTTP2 always uses HTTP/2 with prior knowledge (h2c).
	UpstreamHTTP2 UpstreamProtocol = "HTTP2"
)

// L7Endpoint is one upstream address.
type L7Endpoint struct {
	// Address is "ip:port" (or "host:port" for DNS endpoints), dialled
	// through the proxy's DialContext hook.
	Address string
	// Labels are the endpoint workload's labels, for subsets.
	Labels map[string]string
	// Workload names the endpoint's workload (Istio's canonical name), for
	// the destination_workload of request metrics; empty when unknown.
	Workload string `json:",omitempty"`
	// Weight is the endpoint's relative weight; zero means 1.
	Weight uint32
	// Identity is the SPIFFE ID of the workload of the mesh at Address: the
	// proxy reaches it over HBONE and requires its server to present that
	// ID. Empty for an endpoint outside the mesh. It travels in the config
	// itself, not only in the workload resources pushed beside it, so that
	// a config that arrives first never has a mesh endpoint dialled in
	// plaintext.
	Identity string `json:",omitempty"`
	// Via is set when Address is a service VIP reached through the
	// service's waypoint (an ingress gateway's route to a service labelled
	// istio.io/ingress-use-waypoint): the proxy opens HBONE to the waypoint
	// and CONNECTs to Address, never dials Address itself.
	Via *L7Via `json:",omitempty"`
	// Node and Locality ("region/zone/subzone") place the endpoint's
	// workload, for locality load balancing (LBPolicy.Locality); empty
	// when unknown.
	Node     string `json:",omitempty"`
	Locality string `json:",omitempty"`
	// Draining marks the endpoint of a pod that is terminating while it
	// still serves: no request is balanced to it, but those of a session
	// pinned to it still go there until it leaves (as Istio sends draining
	// endpoints to persistent-session clusters).
	Draining bool `json:",omitempty"`
}

// L7Via is the waypoint an endpoint is reached through.
type L7Via struct {
	// Waypoint names the waypoint's Gateway, for errors and logs.
	Waypoint NamespacedName
	// Address is the waypoint's HBONE "ip:port".
	Address string
	// Identity is the SPIFFE ID the waypoint must present.
	Identity string
}

// Subset is a DestinationRule subset.
type Subset struct {
	// Name is referenced by WeightedDestination.Subset.
	Name string
	// Labels must be a subset of an endpoint's labels.
	Labels map[string]string
	// Traffic overrides the cluster's traffic policy; nil inherits it.
	Traffic *TrafficPolicy
}

// TrafficPolicy is a DestinationRule trafficPolicy.
type TrafficPolicy struct {
	// LB is the endpoint selection policy.
	LB LBPolicy
	// Pool limits connections and requests (circuit breaking).
	Pool ConnectionPool
	// Outlier ejects failing endpoints; nil means none.
	Outlier *OutlierDetection
	// Tunnel, when set, reaches the target through each endpoint, an HTTP
	// proxy, with a CONNECT to TargetHost:TargetPort on every connection
	// (Istio's trafficPolicy.tunnel, for egress through a proxy); TLS
	// origination then runs inside the tunnel.
	Tunnel *Tunnel `json:",omitempty"`
	// ProxyProtocol, 1 or 2, sends a PROXY protocol header of that version
	// first on every connection to an endpoint, with the client's address
	// and the one it dialled (Istio's trafficPolicy.proxyProtocol); an
	// HTTP connection then carries one request. Zero sends none.
	ProxyProtocol int `json:",omitempty"`
	// RetryBudget, when set, bounds the retries outstanding to the cluster
	// by the requests in flight, instead of Pool.MaxRetries (Envoy's retry
	// budget, Istio's trafficPolicy.retryBudget); with an Interval it
	// bounds the rate of retries instead, and Pool.MaxRetries still
	// applies.
	RetryBudget *RetryBudget `json:",omitempty"`
	// TLS originates TLS to the endpoints (a DestinationRule's
	// trafficPolicy.tls with mode SIMPLE or MUTUAL): the proxy speaks
	// TLS to the app behind the endpoint, inside HBONE for a mesh
	// endpoint and over plain TCP for one outside the mesh. Nil sends the
	// request as it is.
	TLS *UpstreamTLS `json:",omitempty"`
}

// UpstreamTLS is TLS origination to a cluster's endpoints.
type UpstreamTLS struct {
	// Mode is TLSModeSimple (verify the server) or TLSModeMutual (also
	// present ClientCertPEM/ClientKeyPEM).
	Mode string
	// SNI is the server name sent and, without SubjectAltNames, the name
	// the server's certificate must carry; empty means the cluster's host.
	SNI string `json:",omitempty"`
	// SubjectAltNames, when set, are the names (DNS or URI SANs) one of
	// which the server's certificate must carry, instead of SNI.
	SubjectAltNames []string `json:",omitempty"`
	// CAPEM holds the roots the server's chain must lead to; empty means
	// the proxy's system roots.
	CAPEM string `json:",omitempty"`
	// InsecureSkipVerify accepts any server certificate (Istio's
	// insecureSkipVerify).
	InsecureSkipVerify bool `json:",omitempty"`
	// ClientCertPEM and ClientKeyPEM are the client certificate chain and
	// key (MUTUAL only). The key travels only over meshd's mutual-TLS xDS
	// stream to the proxy that uses it and is never logged.
	ClientCertPEM string `json:",omitempty"`
	ClientKeyPEM  string `json:",omitempty"`
}

// String never prints the key.
func (t *UpstreamTLS) String() string {
	if t == nil {
		return "<none>"
	}
	return fmt.Sprintf("tls(mode=%s, sni=%q, sans=%v, custom CA=%t, insecure=%t)", t.Mode, t.SNI, t.SubjectAltNames, t.CAPEM != "", t.InsecureSkipVerify)
}

func (t *UpstreamTLS) validate() error {
	switch t.Mode {
	case TLSModeSimple:
		if t.ClientCertPEM != "" || t.ClientKeyPEM != "" {
			return errors.New("tls mode SIMPLE carries no client certificate")
		}
	case TLSModeMutual:
		if t.ClientCertPEM == "" || t.ClientKeyPEM == "" {
			return errors.New("tls mode MUTUAL: a client certificate and key are required")
		}
	default:
		return fmt.Errorf("tls mode %q: want %s or %s", t.Mode, TLSModeSimple, TLSModeMutual)
	}
	if t.SNI == "" && len(t.SubjectAltNames) == 0 && !t.InsecureSkipVerify {
		return errors.New("tls: no name to verify the server by: set sni or subjectAltNames")
	}
	if t.CAPEM != "" && !x509.NewCertPool().AppendCertsFromPEM([]byte(t.CAPEM)) {
		return errors.New("tls: the CA certificates hold no PEM certificate")
	}
	if t.Mode == TLSModeMutual {
		if _, err := tls.X509KeyPair([]byte(t.ClientCertPEM), []byte(t.ClientKeyPEM)); err != nil {
			return fmt.Errorf("tls: the client certificate and key do not form a usable pair: %w", err)
		}
	}
	return nil
}

// LBPolicy picks an endpoint: Simple, or ConsistentHash when set.
type LBPolicy struct {
	// Simple is the algorithm; LBDefault means LEAST_REQUEST (Istio's default).
	Simple LoadBalancing
	// ConsistentHash, when set, overrides Simple.
	ConsistentHash *ConsistentHash
	// Locality, when set, narrows each pick to the endpoints its locality
	// rules prefer for the proxy's own place; the algorithm picks among
	// them.
	Locality *LocalityLB `json:",omitempty"`
	// Warmup, when set, ramps up the share of an endpoint that joined the
	// cluster recently (Envoy's slow start, Istio's loadBalancer.warmup),
	// for ROUND_ROBIN and LEAST_REQUEST.
	Warmup *Warmup `json:",omitempty"`
}

// Warmup is Envoy's slow start: an endpoint younger than Duration gets its
// weight times max(MinPercent/100, (age/Duration)^(1/Aggression)).
type Warmup struct {
	Duration time.Duration
	// MinPercent is the least share of its weight a new endpoint gets
	// (Istio's default 10).
	MinPercent float64
	// Aggression shapes the ramp: 1 is linear (Istio's default), more
	// is faster at first.
	Aggression float64
}

// ConsistentHash hashes one request property: exactly one field set.
type ConsistentHash struct {
	// Header hashes the named header's value.
	Header string
	// Cookie hashes the named cookie's value.
	Cookie string
	// CookieTTL, when set, makes the proxy give a client without the
	// cookie a new one (Set-Cookie, Max-Age this long), so its next
	// requests stick to the same endpoint (Istio's httpCookie ttl).
	CookieTTL time.Duration `json:",omitempty"`
	// CookiePath is the generated cookie's Path; empty means "/".
	CookiePath string `json:",omitempty"`
	// QueryParam hashes the named query parameter's value.
	QueryParam string `json:",omitempty"`
	// SourceIP hashes the client address.
	SourceIP bool
}

// ConnectionPool is DestinationRule connectionPool. Zero fields mean
// unlimited, except where said.
type ConnectionPool struct {
	// MaxConnections bounds concurrent upstream connections to the cluster
	// (and, for HTTP/1.1, concurrent requests in flight).
	MaxConnections int
	// HTTP1MaxPendingRequests bounds requests waiting for a connection;
	// zero means unlimited (Istio's 2^32-1).
	HTTP1MaxPendingRequests int
	// HTTP2MaxRequests bounds concurrent requests to the cluster.
	HTTP2MaxRequests int
	// MaxRequestsPerConnection closes a connection after that many requests.
	MaxRequestsPerConnection int
	// IdleTimeout closes idle upstream connections; zero means 1h (Istio's).
	IdleTimeout time.Duration
	// ConnectTimeout bounds a TCP connect; zero means 10s (Istio's).
	ConnectTimeout time.Duration
	// MaxRetries bounds the retries outstanding to the cluster at once
	// (Envoy's max_retries circuit breaker): a retry beyond it is not
	// made, the last answer stands. Zero means unlimited (Istio's 2^32-1).
	MaxRetries int `json:",omitempty"`
	// MaxConnectionDuration retires a connection that old: an upstream
	// HTTP connection takes no new request after it, and a relayed TCP
	// connection is closed (Istio's tcp.maxConnectionDuration). Zero means
	// no limit.
	MaxConnectionDuration time.Duration `json:",omitempty"`
	// TCPIdleTimeout closes a relayed TCP connection once no byte went
	// either way for that long (Istio's tcp.idleTimeout); zero means 1h,
	// Istio's default, and NoTimeout never.
	TCPIdleTimeout time.Duration `json:",omitempty"`
	// TCPKeepalive, if set, sends TCP keepalive probes on the connections
	// the proxy dials itself (to endpoints outside the mesh; HBONE
	// tunnels are the node agent's and keep their own).
	TCPKeepalive *TCPKeepalive `json:",omitempty"`
	// H2PingInterval, if set, pings an upstream HTTP/2 connection that has
	// been quiet that long, and closes it when no answer comes within
	// H2PingTimeout (Istio's http2KeepAlive).
	H2PingInterval time.Duration `json:",omitempty"`
	H2PingTimeout  time.Duration `json:",omitempty"`
	// H2Upgrade sends HTTP/1.1 requests upstream over HTTP/2 (h2c)
	// (Istio's h2UpgradePolicy UPGRADE, of the DestinationRule or, for an
	// HTTP port, of the mesh config).
	H2Upgrade bool `json:",omitempty"`
	// UseClientProtocol sends each request upstream in the HTTP version
	// the client used (Istio's useClientProtocol); it wins over H2Upgrade.
	UseClientProtocol bool `json:",omitempty"`
}

// Tunnel is an HTTP CONNECT tunnel to TargetHost:TargetPort.
type Tunnel struct {
	TargetHost string
	TargetPort uint32
}

// Validate checks that t names a host (or address) and a port.
func (t *Tunnel) Validate() error {
	if t.TargetHost == "" || t.TargetPort == 0 || t.TargetPort > 65535 || strings.ContainsAny(t.TargetHost, " \t\r\n/@?#") {
		return fmt.Errorf("tunnel to %q port %d: want a host name or address and a port", t.TargetHost, t.TargetPort)
	}
	return nil
}

// RetryBudget allows as many retries at once as Percent of the requests in
// flight to the cluster, and at least MinConcurrency (Envoy's retry
// budget). With an Interval it is a rate instead, as Gateway API's
// XBackendTrafficPolicy retryConstraint defines it: the retries sent to
// the cluster over the last Interval may be up to Percent of all the
// requests sent to it then (retries included), and MinRetries per
// MinRetryInterval are always allowed; MinConcurrency is then unused. A
// retry over the budget is not made: the client is answered 503.
type RetryBudget struct {
	Percent        float64
	MinConcurrency int
	// Interval, 1s to 1h, makes the budget a rate over that window.
	Interval time.Duration `json:",omitempty"`
	// MinRetries per MinRetryInterval (up to 1h) are allowed whatever
	// the budget, with an Interval.
	MinRetries       int           `json:",omitempty"`
	MinRetryInterval time.Duration `json:",omitempty"`
}

// Validate checks the budget's ranges.
func (b *RetryBudget) Validate() error {
	if b.Percent < 0 || b.Percent > 100 || b.MinConcurrency < 0 || b.MinRetries < 0 {
		return fmt.Errorf("retryBudget %+v: want a percent of 0-100 and non-negative minimums", *b)
	}
	if b.Interval == 0 && (b.MinRetries != 0 || b.MinRetryInterval != 0) {
		return fmt.Errorf("retryBudget %+v: a minimum retry rate needs an interval", *b)
	}
	if b.Interval != 0 && (b.Interval < time.Second || b.Interval > time.Hour || (b.MinRetries > 0 && (b.MinRetryInterval <= 0 || b.MinRetryInterval > time.Hour))) {
		return fmt.Errorf("retryBudget %+v: want an interval of 1s to 1h and a minimum retry interval above 0 up to 1h", *b)
	}
	return nil
}

// NoTimeout disables a timeout whose zero value means a default.
const NoTimeout time.Duration = -1

// TCPKeepalive is Istio's connectionPool.tcp.tcpKeepalive; a zero field
// keeps the system's value.
type TCPKeepalive struct {
	// Time is how long a connection is idle before the first probe.
	Time time.Duration `json:",omitempty"`
	// Interval is the time between probes.
	Interval time.Duration `json:",omitempty"`
	// Probes is how many unanswered probes close the connection.
	Probes int `json:",omitempty"`
}

// OutlierDetection is DestinationRule outlierDetection.
type OutlierDetection struct {
	// Consecutive5xxErrors ejects after that many 5xx in a row (502, 503,
	// 504 and connection errors included); zero disables.
	Consecutive5xxErrors int
	// ConsecutiveGatewayErrors ejects after that many 502/503/504 or
	// connection errors in a row; zero disables.
	ConsecutiveGatewayErrors int
	// Interval is how often ejections are reconsidered; zero means 10s.
	Interval time.Duration
	// BaseEjectionTime is the minimum ejection; it grows with each
	// ejection of the same endpoint. Zero means 30s.
	BaseEjectionTime time.Duration
	// MaxEjectionPercent caps the share of ejected endpoints; zero means 10.
	MaxEjectionPercent int
	// MinHealthPercent: while fewer than this percent of the endpoints are
	// not ejected, ejections are ignored and every endpoint takes traffic
	// (Envoy's panic threshold); zero disables.
	MinHealthPercent int `json:",omitempty"`
	// ErrorCodes, when set, are the only HTTP statuses counted as errors
	// (outlierDetectionHttpErrorCodes); otherwise every 5xx is. Connection
	// failures always count.
	ErrorCodes []int `json:",omitempty"`
	// SplitLocalOrigin counts the failures of the proxy's own making
	// (connect failures, resets, timeouts) apart from the answers of the
	// endpoint: they eject after ConsecutiveLocalOriginFailures in a row
	// and no longer count as 5xx or gateway errors (Istio's
	// splitExternalLocalOriginErrors).
	SplitLocalOrigin               bool `json:",omitempty"`
	ConsecutiveLocalOriginFailures int  `json:",omitempty"`
}

// JWTProvider is one RequestAuthentication jwtRules entry.
type JWTProvider struct {
	// Name identifies the provider in logs.
	Name string
	// Services, when set, limits the provider to requests for these service
	// hostnames (a RequestAuthentication whose targetRefs name a Service);
	// empty means every request of the proxy.
	Services []string `json:",omitempty"`
	// Issuer must equal the token's iss claim.
	Issuer string
	// Audiences, if any, must intersect the token's aud claim.
	Audiences []string
	// JWKS is an inline JSON Web Key Set; it wins over JWKSURI.
	JWKS string
	// JWKSURI is fetched, cached and refreshed.
	JWKSURI string
	// FromHeaders are where to look for the token; empty with empty
	// FromParams and FromCookies means "Authorization: Bearer" and the
	// access_token param.
	FromHeaders []JWTHeader
	// FromParams are query parameter names to look for the token.
	FromParams []string
	// FromCookies are cookie names to look for the token.
	FromCookies []string `json:",omitempty"`
	// ForwardOriginalToken keeps the token in the forwarded request.
	ForwardOriginalToken bool
	// OutputPayloadToHeader, if set, receives the base64url payload.
	OutputPayloadToHeader string
	// OutputClaimToHeaders copy claims to headers.
	OutputClaimToHeaders []ClaimToHeader
}

// JWTHeader is a header that carries a token, with an optional prefix.
type JWTHeader struct {
	// Name is the header name.
	Name string
	// Prefix is stripped from the value, e.g. "Bearer ".
	Prefix string
}

// ClaimToHeader copies one claim to one header.
type ClaimToHeader struct {
	// Header is the header name.
	Header string
	// Claim is the claim name; nested claims use dots ("a.b").
	Claim string
}

// RateLimit is a local token bucket.
type RateLimit struct {
	// MaxTokens is the bucket size (burst); must be positive.
	MaxTokens int
	// TokensPerFill is added every FillInterval; zero means 1.
	TokensPerFill int
	// FillInterval is the refill period; must be positive.
	FillInterval time.Duration
	// Key splits the bucket: "" for one bucket per route (see
	// L7Route.RateLimit for routes that share one), "principal" for
	// one per client identity, or "header:<name>" for one per header value.
	Key string
	// MaxKeys bounds the number of buckets kept for keyed limits; zero means 10000.
	MaxKeys int
}

// Validate checks the whole config and returns the first problem found.
func (c *L7Config) Validate() error {
	if len(c.Listeners) == 0 && len(c.Workloads) == 0 {
		return errors.New("l7 config: no listeners: add at least one listener")
	}
	for i, w := range c.Workloads {
		if len(w.Addresses) == 0 {
			return fmt.Errorf("workloads[%d] %s/%s: no addresses", i, w.Namespace, w.Name)
		}
		for _, a := range w.Addresses {
			if _, err := netip.ParseAddr(a); err != nil {
				return fmt.Errorf("workloads[%d] %s/%s: address %q is not an IP", i, w.Namespace, w.Name, a)
			}
		}
	}
	if p := c.Telemetry.TraceSampling; p != nil && (*p < 0 || *p > 100) {
		return fmt.Errorf("l7 config: trace sampling %v%% is not between 0 and 100", *p)
	}
	if f := c.Telemetry.AccessLogFormat; f != nil {
		if _, err := f.Parse(); err != nil {
			return fmt.Errorf("telemetry: %w", err)
		}
	}
	clusters := map[string]*L7Cluster{}
	for i := range c.Clusters {
		cl := &c.Clusters[i]
		if err := cl.Validate(); err != nil {
			return fmt.Errorf("clusters[%d]: %w", i, err)
		}
		if clusters[cl.Name] != nil {
			return fmt.Errorf("clusters[%d]: duplicate cluster name %q", i, cl.Name)
		}
		clusters[cl.Name] = cl
	}
	ports := map[uint32]string{}
	for i := range c.Listeners {
		l := &c.Listeners[i]
		if err := l.validate(clusters); err != nil {
			return fmt.Errorf("listeners[%d] %q: %w", i, l.Name, err)
		}
		// A proxy serves one listener per port (it picks by port): a
		// second one would never be reached. Port 0 is "any" (HBONE).
		if other, dup := ports[l.Port]; dup && l.Port != 0 {
			return fmt.Errorf("listeners[%d] %q: port %d is listener %q's already: merge their virtual hosts into one listener", i, l.Name, l.Port, other)
		}
		ports[l.Port] = l.Name
	}
	for i := range c.JWTProviders {
		if err := c.JWTProviders[i].Validate(); err != nil {
			return fmt.Errorf("jwtProviders[%d]: %w", i, err)
		}
	}
	names := map[string]bool{}
	for i := range c.ExtAuthz {
		e := &c.ExtAuthz[i]
		if err := e.Validate(); err != nil {
			return fmt.Errorf("extAuthz[%d]: %w", i, err)
		}
		if names[e.Name] {
			return fmt.Errorf("extAuthz[%d]: duplicate provider %q", i, e.Name)
		}
		names[e.Name] = true
		if e.Cluster != "" && clusters[e.Cluster] == nil {
			return fmt.Errorf("extAuthz[%d] %q: cluster %q is not defined", i, e.Name, e.Cluster)
		}
	}
	if len(c.Telemetry.TraceTags) > MaxTraceTags {
		return fmt.Errorf("telemetry: %d trace tags, more than %d", len(c.Telemetry.TraceTags), MaxTraceTags)
	}
	for name, tag := range c.Telemetry.TraceTags {
		if name == "" || (tag.Header != "" && !httpguts.ValidHeaderFieldName(tag.Header)) {
			return fmt.Errorf("telemetry: trace tag %q: want a name, and a valid header name to read", name)
		}
	}
	if err := validateMetricOverrides(c.Telemetry.Metrics); err != nil {
		return err
	}
	if tr := c.Telemetry.Tracer; tr != nil {
		if err := tr.Validate(); err != nil {
			return fmt.Errorf("telemetry: %w", err)
		}
		if tr.Cluster != "" && clusters[tr.Cluster] == nil {
			return fmt.Errorf("telemetry: tracer %q: cluster %q is not defined", tr.Provider, tr.Cluster)
		}
	}
	return nil
}

func (l *L7Listener) validate(clusters map[string]*L7Cluster) error {
	if l.Name == "" {
		return errors.New("listener has no name")
	}
	if l.TCP != nil || len(l.TCPMatched) > 0 {
		if len(l.VirtualHosts) > 0 || len(l.Passthrough) > 0 || l.TLS != nil {
			return errors.New("a tcp route takes the whole port: no virtual hosts, passthrough routes or tls beside it")
		}
		if l.TCP != nil {
			if err := validDestinations(l.TCP.Destinations, clusters); err != nil {
				return fmt.Errorf("tcp %q: %w", l.TCP.Name, err)
			}
		}
		return validateMatched(l.TCPMatched, clusters)
	}
	if len(l.VirtualHosts) == 0 && len(l.Passthrough) == 0 {
		return errors.New("no virtual hosts and no passthrough routes")
	}
	if len(l.Passthrough) > 0 && len(l.VirtualHosts) > 0 && l.TLS == nil {
		return errors.New("passthrough routes beside plaintext virtual hosts: a port serves HTTP or TLS")
	}
	for i := range l.Passthrough {
		r := &l.Passthrough[i]
		if len(r.SNIHosts) == 0 {
			return fmt.Errorf("passthrough[%d] %q: no SNI hosts: use [\"*\"] to match every server name", i, r.Name)
		}
		if err := validDestinations(r.Destinations, clusters); err != nil {
			return fmt.Errorf("passthrough[%d] %q: %w", i, r.Name, err)
		}
	}
	if l.TLS != nil {
		if err := l.TLS.validate(); err != nil {
			return err
		}
	}
	if len(l.SNI) > 0 && l.TLS == nil {
		return errors.New("sni certificates on a plaintext listener: set tls as well")
	}
	for i := range l.SNI {
		if err := l.SNI[i].validate(); err != nil {
			return fmt.Errorf("sni[%d]: %w", i, err)
		}
		if len(l.SNI[i].SNIHosts) == 0 {
			return fmt.Errorf("sni[%d]: no hosts to choose it by", i)
		}
	}
	for i := range l.VirtualHosts {
		vh := &l.VirtualHosts[i]
		if len(vh.Domains) == 0 {
			return fmt.Errorf("virtualHosts[%d] %q: no domains: use [\"*\"] to match every host", i, vh.Name)
		}
		for _, d := range vh.Domains {
			if d == "" || (strings.Contains(d, "*") && d != "*" && !strings.HasPrefix(d, "*.")) || strings.Count(d, "*") > 1 {
				return fmt.Errorf("virtualHosts[%d] %q: domain %q: want an exact host, \"*.suffix\" or \"*\"", i, vh.Name, d)
			}
		}
		if vh.CORS != nil {
			if err := vh.CORS.validate(); err != nil {
				return fmt.Errorf("virtualHosts[%d] %q: cors: %w", i, vh.Name, err)
			}
		}
		if vh.TCP != nil {
			if err := validDestinations(vh.TCP.Destinations, clusters); err != nil {
				return fmt.Errorf("virtualHosts[%d] %q: tcp %q: %w", i, vh.Name, vh.TCP.Name, err)
			}
		}
		if err := validateMatched(vh.TCPMatched, clusters); err != nil {
			return fmt.Errorf("virtualHosts[%d] %q: %w", i, vh.Name, err)
		}
		for j, r := range vh.Passthrough {
			if len(r.SNIHosts) == 0 {
				return fmt.Errorf("virtualHosts[%d] %q: passthrough[%d] %q: no server names", i, vh.Name, j, r.Name)
			}
			if err := validDestinations(r.Destinations, clusters); err != nil {
				return fmt.Errorf("virtualHosts[%d] %q: passthrough[%d] %q: %w", i, vh.Name, j, r.Name, err)
			}
		}
		for j := range vh.Routes {
			if err := vh.Routes[j].validate(clusters); err != nil {
				return fmt.Errorf("virtualHosts[%d] %q: routes[%d] %q: %w", i, vh.Name, j, vh.Routes[j].Name, err)
			}
		}
	}
	return nil
}

func (r *L7Route) validate(clusters map[string]*L7Cluster) error {
	kinds := 0
	if len(r.Destinations) > 0 {
		kinds++
	}
	if r.Redirect != nil {
		kinds++
	}
	if r.DirectResponse != nil {
		kinds++
	}
	if kinds != 1 {
		return errors.New("route needs exactly one of destinations, redirect or directResponse")
	}
	for i, m := range r.Matches {
		if err := m.validate(); err != nil {
			return fmt.Errorf("matches[%d]: %w", i, err)
		}
	}
	var total uint64
	for i, d := range r.Destinations {
		total += uint64(d.Weight)
		if dr := d.DirectResponse; dr != nil {
			if d.Cluster != "" || d.Subset != "" {
				return fmt.Errorf("destinations[%d]: set cluster or directResponse, not both", i)
			}
			if dr.Status < 200 || dr.Status > 599 {
				return fmt.Errorf("destinations[%d]: directResponse: status %d out of range 200-599", i, dr.Status)
			}
			if err := validateHeaderOps(d.ResponseHeaders); err != nil {
				return fmt.Errorf("destinations[%d]: responseHeaders: %w", i, err)
			}
			continue
		}
		cl := clusters[d.Cluster]
		if cl == nil {
			return fmt.Errorf("destinations[%d]: unknown cluster %q", i, d.Cluster)
		}
		if d.Subset != "" && cl.subset(d.Subset) == nil {
			return fmt.Errorf("destinations[%d]: cluster %q has no subset %q", i, d.Cluster, d.Subset)
		}
		if err := validateHeaderOps(d.RequestHeaders); err != nil {
			return fmt.Errorf("destinations[%d]: requestHeaders: %w", i, err)
		}
		if err := validateHeaderOps(d.ResponseHeaders); err != nil {
			return fmt.Errorf("destinations[%d]: responseHeaders: %w", i, err)
		}
	}
	if len(r.Destinations) > 1 && total == 0 {
		return errors.New("destinations: all weights are zero: give at least one a positive weight")
	}
	if rd := r.Redirect; rd != nil {
		if rd.Code != 0 && (rd.Code < 300 || rd.Code > 399) {
			return fmt.Errorf("redirect: code %d is not a 3xx status", rd.Code)
		}
		if rd.Scheme != "" && rd.Scheme != "http" && rd.Scheme != "https" {
			return fmt.Errorf("redirect: scheme %q: want http or https", rd.Scheme)
		}
		if rd.URI != "" && !strings.HasPrefix(rd.URI, "/") {
			return fmt.Errorf("redirect: uri %q must start with /", rd.URI)
		}
	}
	if dr := r.DirectResponse; dr != nil && (dr.Status < 200 || dr.Status > 599) {
		return fmt.Errorf("directResponse: status %d out of range 200-599", dr.Status)
	}
	if rw := r.Rewrite; rw != nil {
		if rw.URIPrefix != "" && rw.URIRegex != nil {
			return errors.New("rewrite: set uri or uriRegex, not both")
		}
		if rw.URIRegex != nil {
			if _, err := CompileRegex(rw.URIRegex.Pattern); err != nil {
				return fmt.Errorf("rewrite: uriRegex: %w", err)
			}
		}
	}
	if r.Timeout < 0 {
		return fmt.Errorf("timeout %v is negative", r.Timeout)
	}
	if x := r.ExtAuthz; x != nil {
		if err := x.Validate(); err != nil {
			return fmt.Errorf("extAuthz: %w", err)
		}
		if x.Cluster != "" && clusters[x.Cluster] == nil {
			return fmt.Errorf("extAuthz: cluster %q is not defined", x.Cluster)
		}
	}
	if r.Session != nil {
		if len(r.Destinations) == 0 {
			return errors.New("session: a route without destinations has no endpoint to keep")
		}
		if err := r.Session.Validate(); err != nil {
			return err
		}
	}
	if rp := r.Retries; rp != nil {
		if rp.Attempts < 0 || rp.PerTryTimeout < 0 || rp.Backoff < 0 {
			return errors.New("retries: attempts, perTryTimeout and backoff must not be negative")
		}
		for _, on := range rp.RetryOn {
			if !KnownRetryOn[on] {
				if _, err := parseStatus(on); err != nil {
					return fmt.Errorf("retries: retryOn %q is not a known condition or a status code", on)
				}
			}
		}
		for _, c := range rp.RetriableStatusCodes {
			if c < 100 || c > 599 {
				return fmt.Errorf("retries: retriable status code %d out of range", c)
			}
		}
	}
	if f := r.Fault; f != nil {
		if f.Delay != nil {
			if f.Delay.Duration <= 0 {
				return errors.New("fault: delay duration must be positive")
			}
			if err := validPercent(f.Delay.Percent); err != nil {
				return fmt.Errorf("fault: delay: %w", err)
			}
		}
		if a := f.Abort; a != nil {
			if err := validPercent(a.Percent); err != nil {
				return fmt.Errorf("fault: abort: %w", err)
			}
			if a.GRPCStatus == "" && (a.HTTPStatus < 200 || a.HTTPStatus > 599) {
				return fmt.Errorf("fault: abort: httpStatus %d out of range 200-599", a.HTTPStatus)
			}
		}
	}
	for i, m := range r.Mirrors {
		cl := clusters[m.Cluster]
		if cl == nil {
			return fmt.Errorf("mirrors[%d]: unknown cluster %q", i, m.Cluster)
		}
		if m.Subset != "" && cl.subset(m.Subset) == nil {
			return fmt.Errorf("mirrors[%d]: cluster %q has no subset %q", i, m.Cluster, m.Subset)
		}
		if err := validPercent(m.Percent); err != nil {
			return fmt.Errorf("mirrors[%d]: %w", i, err)
		}
	}
	if err := validateHeaderOps(r.RequestHeaders); err != nil {
		return fmt.Errorf("requestHeaders: %w", err)
	}
	if err := validateHeaderOps(r.ResponseHeaders); err != nil {
		return fmt.Errorf("responseHeaders: %w", err)
	}
	if r.CORS != nil {
		if err := r.CORS.validate(); err != nil {
			return fmt.Errorf("cors: %w", err)
		}
	}
	if r.RateLimit != nil {
		if err := r.RateLimit.Validate(); err != nil {
			return fmt.Errorf("rateLimit: %w", err)
		}
	}
	return nil
}

func parseStatus(s string) (int, error) {
	var n int
	if _, err := fmt.Sscanf(s, "%d", &n); err != nil || n < 100 || n > 599 || fmt.Sprint(n) != s {
		return 0, fmt.Errorf("not a status code: %q", s)
	}
	return n, nil
}

func validPercent(p float64) error {
	if p < 0 || p > 100 || p != p {
		return fmt.Errorf("percent %v out of range 0-100", p)
	}
	return nil
}

func (m *RouteMatch) validate() error {
	for name, sm := range map[string]*StringMatch{"uri": m.URI, "method": m.Method, "authority": m.Authority} {
		if sm != nil {
			if err := sm.Validate(); err != nil {
				return fmt.Errorf("%s: %w", name, err)
			}
		}
	}
	for i, h := range m.Headers {
		if h.Name == "" {
			return fmt.Errorf("headers[%d]: empty name", i)
		}
		if err := h.Value.validateOptional(); err != nil {
			return fmt.Errorf("headers[%d] %q: %w", i, h.Name, err)
		}
	}
	for i, q := range m.QueryParams {
		if q.Name == "" {
			return fmt.Errorf("queryParams[%d]: empty name", i)
		}
		if err := q.Value.validateOptional(); err != nil {
			return fmt.Errorf("queryParams[%d] %q: %w", i, q.Name, err)
		}
	}
	return nil
}

// Validate checks that exactly one kind is set, that a path prefix starts
// with "/" and that a regex compiles within the size bound.
func (m StringMatch) Validate() error {
	if m.kinds() != 1 {
		return errors.New("string match needs exactly one of exact, prefix or regex (or a pathPrefix)")
	}
	return m.validateOptional()
}

// kinds counts the match kinds set.
func (m StringMatch) kinds() int {
	n := 0
	for _, s := range []string{m.Exact, m.Prefix, m.Regex, m.PathPrefix} {
		if s != "" {
			n++
		}
	}
	return n
}

func (m StringMatch) validateOptional() error {
	if m.kinds() > 1 {
		return errors.New("string match sets more than one of exact, prefix, regex or pathPrefix")
	}
	if m.PathPrefix != "" && !strings.HasPrefix(m.PathPrefix, "/") {
		return fmt.Errorf("pathPrefix %q does not start with /", m.PathPrefix)
	}
	if m.Regex != "" {
		if _, err := CompileRegex(m.Regex); err != nil {
			return err
		}
	}
	return nil
}

// CompileRegex compiles an RE2 expression anchored to the whole input, and
// refuses one whose program exceeds MaxRegexProgramSize instructions.
func CompileRegex(expr string) (*regexp.Regexp, error) {
	if len(expr) > maxRegexLen {
		return nil, fmt.Errorf("regex is %d bytes, over the %d byte limit", len(expr), maxRegexLen)
	}
	anchored := `^(?:` + expr + `)$`
	re, err := syntax.Parse(anchored, syntax.Perl)
	if err != nil {
		return nil, fmt.Errorf("compile regex %q: %w", expr, err)
	}
	prog, err := syntax.Compile(re.Simplify())
	if err != nil {
		return nil, fmt.Errorf("compile regex %q: %w", expr, err)
	}
	if len(prog.Inst) > MaxRegexProgramSize {
		return nil, fmt.Errorf("regex %q compiles to %d instructions, over the limit of %d: simplify it", expr, len(prog.Inst), MaxRegexProgramSize)
	}
	return regexp.Compile(anchored)
}

func validateHeaderOps(h HeaderOps) error {
	check := func(name string) error {
		if name == "" || strings.ContainsAny(name, " \t\r\n:") {
			return fmt.Errorf("invalid header name %q", name)
		}
		lower := strings.ToLower(name)
		if lower == "host" || strings.HasPrefix(name, ":") {
			return fmt.Errorf("header %q cannot be edited here: use rewrite.authority", name)
		}
		return nil
	}
	for k, v := range h.Set {
		if err := check(k); err != nil {
			return err
		}
		if strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("header %q value contains a line break", k)
		}
	}
	for k, v := range h.Add {
		if err := check(k); err != nil {
			return err
		}
		if strings.ContainsAny(v, "\r\n") {
			return fmt.Errorf("header %q value contains a line break", k)
		}
	}
	for _, k := range h.Remove {
		if err := check(k); err != nil {
			return err
		}
	}
	return nil
}

func (c *CORSPolicy) validate() error {
	for i, o := range c.AllowOrigins {
		if err := o.Validate(); err != nil {
			return fmt.Errorf("allowOrigins[%d]: %w", i, err)
		}
	}
	if c.MaxAge < 0 {
		return errors.New("maxAge is negative")
	}
	return nil
}

func (c *L7Cluster) subset(name string) *Subset {
	for i := range c.Subsets {
		if c.Subsets[i].Name == name {
			return &c.Subsets[i]
		}
	}
	return nil
}

// Validate checks a cluster's endpoints, subsets and traffic policy.
func (c *L7Cluster) Validate() error {
	if c.Name == "" {
		return errors.New("cluster has no name")
	}
	for i, e := range c.Endpoints {
		host, port, err := net.SplitHostPort(e.Address)
		if err != nil || host == "" || port == "" {
			return fmt.Errorf("cluster %q: endpoints[%d]: address %q: want host:port", c.Name, i, e.Address)
		}
		if e.Identity != "" && !strings.HasPrefix(e.Identity, "spiffe://") {
			return fmt.Errorf("cluster %q: endpoints[%d] %s: identity %q: want a spiffe:// ID", c.Name, i, e.Address, e.Identity)
		}
		if v := e.Via; v != nil {
			if _, err := netip.ParseAddrPort(v.Address); err != nil {
				return fmt.Errorf("cluster %q: endpoints[%d] %s: waypoint %s address %q: want ip:port", c.Name, i, e.Address, v.Waypoint, v.Address)
			}
			if !strings.HasPrefix(v.Identity, "spiffe://") {
				return fmt.Errorf("cluster %q: endpoints[%d] %s: waypoint %s identity %q: want a spiffe:// ID", c.Name, i, e.Address, v.Waypoint, v.Identity)
			}
		}
	}
	switch c.Protocol {
	case UpstreamAuto, UpstreamHTTP1, UpstreamHTTP2:
	default:
		return fmt.Errorf("cluster %q: protocol %q: want \"\", HTTP or HTTP2", c.Name, c.Protocol)
	}
	seen := map[string]bool{}
	for i, s := range c.Subsets {
		if s.Name == "" || seen[s.Name] {
			return fmt.Errorf("cluster %q: subsets[%d]: empty or duplicate name %q", c.Name, i, s.Name)
		}
		seen[s.Name] = true
		if s.Traffic != nil {
			if err := s.Traffic.Validate(); err != nil {
				return fmt.Errorf("cluster %q: subsets[%d] %q: %w", c.Name, i, s.Name, err)
			}
		}
	}
	if err := c.Traffic.Validate(); err != nil {
		return fmt.Errorf("cluster %q: %w", c.Name, err)
	}
	return nil
}

// Validate checks a traffic policy.
func (t *TrafficPolicy) Validate() error {
	if t.TLS != nil {
		if err := t.TLS.validate(); err != nil {
			return err
		}
	}
	switch t.LB.Simple {
	case LBDefault, LBRoundRobin, LBLeastRequest, LBRandom:
	case LBPassthrough:
		return errors.New("loadBalancer: PASSTHROUGH is not supported by the waypoint")
	default:
		return fmt.Errorf("loadBalancer: unknown simple policy %q: want ROUND_ROBIN, LEAST_REQUEST or RANDOM", t.LB.Simple)
	}
	if h := t.LB.ConsistentHash; h != nil {
		n := 0
		if h.Header != "" {
			n++
		}
		if h.Cookie != "" {
			n++
		}
		if h.SourceIP {
			n++
		}
		if h.QueryParam != "" {
			n++
		}
		if n != 1 {
			return errors.New("loadBalancer: consistentHash needs exactly one of httpHeaderName, httpCookie, httpQueryParameterName or useSourceIp")
		}
		if h.CookieTTL < 0 || (h.CookieTTL > 0 || h.CookiePath != "") && h.Cookie == "" {
			return errors.New("loadBalancer: consistentHash cookie ttl and path need an httpCookie name, and the ttl cannot be negative")
		}
	}
	if l := t.LB.Locality; l != nil {
		if err := l.Validate(); err != nil {
			return err
		}
	}
	if tn := t.Tunnel; tn != nil {
		if err := tn.Validate(); err != nil {
			return err
		}
	}
	if t.ProxyProtocol < 0 || t.ProxyProtocol > 2 {
		return fmt.Errorf("proxyProtocol version %d: want 1 or 2", t.ProxyProtocol)
	}
	if b := t.RetryBudget; b != nil {
		if err := b.Validate(); err != nil {
			return err
		}
	}
	if w := t.LB.Warmup; w != nil && (w.Duration <= 0 || w.MinPercent < 0 || w.MinPercent > 100 || w.Aggression <= 0) {
		return fmt.Errorf("loadBalancer: warmup %+v: want a positive duration and aggression, and a minimum percent of 0-100", *w)
	}
	p := t.Pool
	if p.MaxConnections < 0 || p.HTTP1MaxPendingRequests < 0 || p.HTTP2MaxRequests < 0 || p.MaxRequestsPerConnection < 0 || p.IdleTimeout < 0 || p.ConnectTimeout < 0 ||
		p.MaxRetries < 0 || p.MaxConnectionDuration < 0 || (p.TCPIdleTimeout < 0 && p.TCPIdleTimeout != NoTimeout) || p.H2PingInterval < 0 || p.H2PingTimeout < 0 {
		return errors.New("connectionPool: values must not be negative")
	}
	if k := p.TCPKeepalive; k != nil && (k.Time < 0 || k.Interval < 0 || k.Probes < 0) {
		return errors.New("connectionPool: tcpKeepalive values must not be negative")
	}
	if o := t.Outlier; o != nil {
		if o.Consecutive5xxErrors < 0 || o.ConsecutiveGatewayErrors < 0 || o.Interval < 0 || o.BaseEjectionTime < 0 {
			return errors.New("outlierDetection: values must not be negative")
		}
		if o.MaxEjectionPercent < 0 || o.MaxEjectionPercent > 100 {
			return fmt.Errorf("outlierDetection: maxEjectionPercent %d out of range 0-100", o.MaxEjectionPercent)
		}
		if o.MinHealthPercent < 0 || o.MinHealthPercent > 100 {
			return fmt.Errorf("outlierDetection: minHealthPercent %d out of range 0-100", o.MinHealthPercent)
		}
		for _, c := range o.ErrorCodes {
			if c < 100 || c > 599 {
				return fmt.Errorf("outlierDetection: outlierDetectionHttpErrorCodes: %d is not an HTTP status (100-599)", c)
			}
		}
	}
	return nil
}

// Validate checks a JWT provider.
func (p *JWTProvider) Validate() error {
	if p.Issuer == "" {
		return fmt.Errorf("jwt provider %q: issuer is required", p.Name)
	}
	if p.JWKS == "" && p.JWKSURI == "" {
		return fmt.Errorf("jwt provider %q: set jwks or jwksUri", p.Name)
	}
	if p.JWKS == "" {
		u, err := url.Parse(p.JWKSURI)
		if err != nil || (u.Scheme != "https" && u.Scheme != "http") || u.Host == "" {
			return fmt.Errorf("jwt provider %q: jwksUri %q: want an http(s) URL", p.Name, p.JWKSURI)
		}
	}
	for i, h := range p.FromHeaders {
		if h.Name == "" {
			return fmt.Errorf("jwt provider %q: fromHeaders[%d]: empty name", p.Name, i)
		}
	}
	for i, c := range p.FromCookies {
		if c == "" {
			return fmt.Errorf("jwt provider %q: fromCookies[%d]: empty name", p.Name, i)
		}
	}
	for i, c := range p.OutputClaimToHeaders {
		if c.Header == "" || c.Claim == "" {
			return fmt.Errorf("jwt provider %q: outputClaimToHeaders[%d]: header and claim are required", p.Name, i)
		}
	}
	return nil
}

// Validate checks a rate limit.
func (r *RateLimit) Validate() error {
	if r.MaxTokens <= 0 {
		return fmt.Errorf("maxTokens %d must be positive", r.MaxTokens)
	}
	if r.FillInterval <= 0 {
		return fmt.Errorf("fillInterval %v must be positive", r.FillInterval)
	}
	if r.TokensPerFill < 0 || r.MaxKeys < 0 {
		return errors.New("tokensPerFill and maxKeys must not be negative")
	}
	switch {
	case r.Key == "", r.Key == "principal":
	case strings.HasPrefix(r.Key, "header:") && len(r.Key) > len("header:"):
	default:
		return fmt.Errorf("key %q: want \"\", \"principal\" or \"header:<name>\"", r.Key)
	}
	return nil
}
