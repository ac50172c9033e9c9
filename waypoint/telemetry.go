package waypoint

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/logfilter"
)

// Response flags, as Envoy and Istio print them in access logs and in the
// response_flags metric label.
const (
	flagNone                    = "-"
	flagNoRoute                 = "NR"   // no route matched
	flagNoHealthy               = "UH"   // no healthy upstream
	flagOverflow                = "UO"   // circuit breaker overflow
	flagConnFailure             = "UF"   // upstream connection failure
	flagUpstreamTimeout         = "UT"   // upstream request timeout
	flagRetryExhausted          = "URX"  // retries exhausted
	flagUpstreamReset           = "UC"   // upstream connection termination
	flagDownstreamClosed        = "DC"   // downstream connection termination
	flagDownstreamProtocolError = "DPE"  // malformed downstream request
	flagDelayInjected           = "DI"   // fault delay
	flagFaultInjected           = "FI"   // fault abort
	flagRateLimited             = "RL"   // local rate limit
	flagExtAuthzDenied          = "UAEX" // denied by an external authorizer
)

// istioLabels are the standard labels of Istio's HTTP metrics
// (https://istio.io/latest/docs/reference/config/metrics/).
var istioLabels = []string{
	"reporter",
	"source_workload", "source_workload_namespace", "source_principal", "source_app", "source_version",
	"source_canonical_service", "source_canonical_revision", "source_cluster",
	"destination_workload", "destination_workload_namespace", "destination_principal", "destination_app", "destination_version",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"destination_canonical_service", "destination_canonical_revision", "destination_cluster",
	"request_protocol", "response_code", "grpc_response_status", "response_flags", "connection_security_policy",
}

// tcpLabels are the labels of the waypoint's TCP metrics: a subset of
// Istio's, since an L4 connection has no request.
var tcpLabels = []string{
	"reporter", "source_workload", "source_workload_namespace", "source_principal",
	"destination_service", "destination_service_name", "destination_service_namespace",
	"response_flags", "connection_security_policy",
}

// tcpLabelValues are the TCP metric label values for one connection.
func (m *metrics) tcpLabelValues(p Peer, d destInfo, flags string) []string {
	security := "none"
	if p.Principal != "" {
		security = "mutual_tls"
	}
	return []string{"waypoint", orUnknown(p.Workload), orUnknown(p.Namespace), orUnknown(spiffeURI(p.Principal)),
		orUnknown(d.service), orUnknown(d.name), orUnknown(d.namespace), flags, security}
}

type metrics struct {
	requests   *prometheus.CounterVec
	duration   *prometheus.HistogramVec
	reqBytes   *prometheus.HistogramVec
	respBytes  *prometheus.HistogramVec
	ejections  *prometheus.CounterVec
	overflows  *prometheus.CounterVec
	tcpOpened  *prometheus.CounterVec
	tcpClosed  *prometheus.CounterVec
	tcpSent    *prometheus.CounterVec
	tcpRecv    *prometheus.CounterVec
	registered bool
	cache      atomic.Pointer[map[seriesKey]*series] // see seriesFor
	cacheMu    sync.Mutex                            // serializes cache writers
}

func newMetrics(reg prometheus.Registerer) (*metrics, error) {
	durBuckets := []float64{0.5, 1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000, 10000, 30000, 60000, 300000, 600000, 1800000, 3600000}
	byteBuckets := prometheus.ExponentialBuckets(1, 10, 9)
	m := &metrics{
		requests: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "istio_requests_total", Help: "Requests handled by the waypoint.",
		}, istioLabels),
		duration: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_duration_milliseconds", Help: "Request duration in milliseconds.", Buckets: durBuckets,
		}, istioLabels),
		reqBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_request_bytes", Help: "Request size (headers and body) in bytes.", Buckets: byteBuckets,
		}, istioLabels),
		respBytes: prometheus.NewHistogramVec(prometheus.HistogramOpts{
			Name: "istio_response_bytes", Help: "Response size (headers and body) in bytes.", Buckets: byteBuckets,
		}, istioLabels),
		ejections: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_waypoint_outlier_ejections_total", Help: "Endpoints ejected by outlier detection.",
		}, []string{"cluster"}),
		overflows: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshlet_waypoint_upstream_overflow_total", Help: "Requests refused by a full connection pool (UO).",
		}, []string{"cluster"}),
	}
	m.tcpOpened = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_tcp_connections_opened_total", Help: "TCP connections forwarded by the waypoint (L4 fallback).",
	}, tcpLabels)
	m.tcpClosed = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_tcp_connections_closed_total", Help: "TCP connections closed by the waypoint (L4 fallback).",
	}, tcpLabels)
	m.tcpSent = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_tcp_sent_bytes_total", Help: "Bytes sent to the client on forwarded TCP connections.",
	}, tcpLabels)
	m.tcpRecv = prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "istio_tcp_received_bytes_total", Help: "Bytes received from the client on forwarded TCP connections.",
	}, tcpLabels)
	if reg == nil {
		return m, nil
	}
	for _, c := range []prometheus.Collector{m.requests, m.duration, m.reqBytes, m.respBytes, m.ejections, m.overflows, m.tcpOpened, m.tcpClosed, m.tcpSent, m.tcpRecv} {
		if err := reg.Register(c); err != nil {
			return nil, err
		}
	}
	m.registered = true
	return m, nil
}

// record is one request's telemetry, filled in as the request flows.
type record struct {
	start         time.Time
	method        string
	path          string
	protocol      string
	authority     string
	userAgent     string
	requestID     string
	xff           string
	downstreamRem string
	downstreamLoc net.Addr
	routeName     string
	code          int
	grpcStatus    string
	flags         []string
	details       string
	// transportFailure is why the upstream connection failed or ended, for
	// the access log's upstream_transport_failure_reason.
	transportFailure string
	bytesIn          int64
	bytesOut         int64
	upstreamHost     string
	upstreamClust    string
	upstreamTime     time.Duration
	peer             Peer
	dest             destInfo
}

type destInfo struct {
	service, name, namespace, workload, app, version string
}

func (r *record) flag(f string) {
	for _, x := range r.flags {
		if x == f {
			return
		}
	}
	r.flags = append(r.flags, f)
}

func (r *record) flagString() string {
	if len(r.flags) == 0 {
		return flagNone
	}
	return strings.Join(r.flags, ",")
}

func addrString(a net.Addr) string {
	if a == nil {
		return ""
	}
	return a.String()
}

func orUnknown(s string) string {
	if s == "" {
		return "unknown"
	}
	return s
}

func (m *metrics) observe(rec *record) {
	if m == nil || !m.registered {
		return
	}
	p := &rec.peer
	k := seriesKey{
		srcWorkload: p.Workload, srcNamespace: p.Namespace, srcPrincipal: p.Principal,
		dest: rec.dest, grpc: rec.grpcStatus != "",
		code: rec.code, grpcStatus: rec.grpcStatus, flags: rec.flagString(),
	}
	if p.Labels != nil {
		k.srcApp, k.srcVersion = p.Labels["app"], p.Labels["version"]
		k.srcCanonName, k.srcCanonRev = p.Labels["service.istio.io/canonical-name"], p.Labels["service.istio.io/canonical-revision"]
	}
	s := m.seriesFor(&k)
	s.requests.Inc()
	s.duration.Observe(float64(time.Since(rec.start).Microseconds()) / 1000)
	s.reqBytes.Observe(float64(rec.bytesIn))
	s.respBytes.Observe(float64(rec.bytesOut))
}

// seriesKey is what a request's Istio label values are made of: the same
// key always yields the same values, so it stands for them in the cache
// without building the 25 strings per request.
type seriesKey struct {
	srcWorkload, srcNamespace, srcPrincipal       string
	srcApp, srcVersion, srcCanonName, srcCanonRev string
	dest                                          destInfo
	grpc                                          bool
	code                                          int
	grpcStatus, flags                             string
}

// labelValues are the key's values in istioLabels order.
func (k *seriesKey) labelValues() []string {
	d := k.dest
	security := "none"
	if k.srcPrincipal != "" {
		security = "mutual_tls"
	}
	protocol := "http"
	if k.grpc {
		protocol = "grpc"
	}
	return []string{
		"waypoint",
		orUnknown(k.srcWorkload), orUnknown(k.srcNamespace), orUnknown(spiffeURI(k.srcPrincipal)),
		orUnknown(k.srcApp), orUnknown(k.srcVersion),
		orUnknown(k.srcCanonName), orUnknown(k.srcCanonRev), "unknown",
		orUnknown(d.workload), orUnknown(d.namespace), "unknown", orUnknown(d.app), orUnknown(d.version),
		orUnknown(d.service), orUnknown(d.name), orUnknown(d.namespace),
		orUnknown(d.app), orUnknown(d.version), "unknown",
		protocol, strconv.Itoa(k.code), k.grpcStatus, k.flags, security,
	}
}

// series are one label combination's metrics, cached so that a request
// costs one map lookup instead of four label hashings.
type series struct {
	requests                      prometheus.Counter
	duration, reqBytes, respBytes prometheus.Observer
}

// seriesFor returns the cached series of k. Reads take no lock: the cache
// is an immutable map replaced (copied) when a new label combination
// appears, which is rare after warm-up since label values are bounded.
func (m *metrics) seriesFor(k *seriesKey) *series {
	if c := m.cache.Load(); c != nil {
		if s, ok := (*c)[*k]; ok {
			return s
		}
	}
	m.cacheMu.Lock()
	defer m.cacheMu.Unlock()
	old := m.cache.Load()
	if old != nil {
		if s, ok := (*old)[*k]; ok {
			return s
		}
	}
	values := k.labelValues()
	s := &series{
		requests:  m.requests.WithLabelValues(values...),
		duration:  m.duration.WithLabelValues(values...),
		reqBytes:  m.reqBytes.WithLabelValues(values...),
		respBytes: m.respBytes.WithLabelValues(values...),
	}
	next := make(map[seriesKey]*series, 1+len(mapOrNil(old)))
	for k, v := range mapOrNil(old) {
		next[k] = v
	}
	next[*k] = s
	m.cache.Store(&next)
	return s
}

func mapOrNil(m *map[seriesKey]*series) map[seriesKey]*series {
	if m == nil {
		return nil
	}
	return *m
}

func spiffeURI(p string) string {
	if p == "" || strings.HasPrefix(p, "spiffe://") {
		return p
	}
	return "spiffe://" + p
}

// accessLogger writes Istio's default JSON access log format, one line per
// request, to w.
type accessLogger struct {
	mu sync.Mutex
	w  io.Writer
}

type accessLogLine struct {
	StartTime                string `json:"start_time"`
	Method                   string `json:"method"`
	Path                     string `json:"path"`
	Protocol                 string `json:"protocol"`
	ResponseCode             int    `json:"response_code"`
	ResponseFlags            string `json:"response_flags"`
	ResponseCodeDetails      string `json:"response_code_details"`
	ConnectionTermination    string `json:"connection_termination_details"`
	UpstreamTransportFailure string `json:"upstream_transport_failure_reason"`
	BytesReceived            int64  `json:"bytes_received"`
	BytesSent                int64  `json:"bytes_sent"`
	Duration                 int64  `json:"duration"`
	UpstreamServiceTime      string `json:"upstream_service_time"`
	XForwardedFor            string `json:"x_forwarded_for"`
	UserAgent                string `json:"user_agent"`
	RequestID                string `json:"request_id"`
	Authority                string `json:"authority"`
	UpstreamHost             string `json:"upstream_host"`
	UpstreamCluster          string `json:"upstream_cluster"`
	UpstreamLocalAddress     string `json:"upstream_local_address"`
	DownstreamLocalAddress   string `json:"downstream_local_address"`
	DownstreamRemoteAddress  string `json:"downstream_remote_address"`
	RequestedServerName      string `json:"requested_server_name"`
	RouteName                string `json:"route_name"`
}

func (l *accessLogger) log(rec *record) {
	if l == nil || l.w == nil {
		return
	}
	dash := func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	}
	line := accessLogLine{
		StartTime:                rec.start.UTC().Format("2006-01-02T15:04:05.000Z"),
		Method:                   rec.method,
		Path:                     rec.path,
		Protocol:                 rec.protocol,
		ResponseCode:             rec.code,
		ResponseFlags:            rec.flagString(),
		ResponseCodeDetails:      dash(rec.details),
		BytesReceived:            rec.bytesIn,
		BytesSent:                rec.bytesOut,
		Duration:                 time.Since(rec.start).Milliseconds(),
		XForwardedFor:            dash(rec.xff),
		UserAgent:                dash(rec.userAgent),
		RequestID:                dash(rec.requestID),
		Authority:                dash(rec.authority),
		UpstreamHost:             dash(rec.upstreamHost),
		UpstreamCluster:          dash(rec.upstreamClust),
		DownstreamLocalAddress:   dash(addrString(rec.downstreamLoc)),
		DownstreamRemoteAddress:  dash(rec.downstreamRem),
		RouteName:                dash(rec.routeName),
		ConnectionTermination:    "-",
		UpstreamTransportFailure: dash(rec.transportFailure),
		UpstreamLocalAddress:     "-",
		RequestedServerName:      "-",
		UpstreamServiceTime:      "-",
	}
	if rec.upstreamTime > 0 {
		line.UpstreamServiceTime = strconv.FormatInt(rec.upstreamTime.Milliseconds(), 10)
	}
	b, err := json.Marshal(line)
	if err != nil {
		return
	}
	b = append(b, '\n')
	l.mu.Lock()
	defer l.mu.Unlock()
	_, _ = l.w.Write(b)
}

// logAttributes are a request's attributes for a Telemetry access log
// filter (pkg/logfilter), built only when one is configured.
func logAttributes(rec *record, req *http.Request, w *responseWriter) *logfilter.Attributes {
	a := &logfilter.Attributes{
		Method: rec.method, Path: rec.path, URLPath: req.URL.Path, Host: rec.authority, Protocol: rec.protocol,
		ID: rec.requestID, UserAgent: rec.userAgent, Referer: req.Header.Get("Referer"),
		RequestHeaders: make(map[string]string, len(req.Header)),
		Time:           rec.start, Duration: time.Since(rec.start), RequestSize: rec.bytesIn,
		Code: rec.code, CodeDetails: rec.details, GRPCStatus: rec.grpcStatus, ResponseSize: rec.bytesOut,
		ResponseFlags:   rec.flagString(),
		SourcePrincipal: spiffeURI(rec.peer.Principal), MutualTLS: rec.peer.Principal != "",
		UpstreamAddress: rec.upstreamHost,
	}
	a.Scheme = "http"
	if req.TLS != nil {
		a.Scheme = "https"
		a.RequestedServerName = req.TLS.ServerName
	}
	for k, v := range req.Header {
		a.RequestHeaders[strings.ToLower(k)] = strings.Join(v, ",")
	}
	if ap, err := netip.ParseAddrPort(rec.downstreamRem); err == nil {
		a.SourceAddress, a.SourcePort = ap.Addr().String(), int(ap.Port())
	}
	if rec.peer.DestinationIP.IsValid() {
		a.DestinationAddress, a.DestinationPort = rec.peer.DestinationIP.String(), int(rec.peer.DestinationPort)
	} else if ap, err := netip.ParseAddrPort(addrString(rec.downstreamLoc)); err == nil {
		a.DestinationAddress, a.DestinationPort = ap.Addr().String(), int(ap.Port())
	}
	return a
}
