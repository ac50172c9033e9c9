package waypoint

import (
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/meshlet/meshlet/pkg/accesslog"
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
	flagStreamIdleTimeout       = "SI"   // a relayed connection's idle timeout
	flagDurationTimeout         = "DT"   // a connection's maximum duration
)

// record is one request's telemetry, filled in as the request flows.
type record struct {
	w             responseWriter // the request's (record and writer live and go together)
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
	principal                                        string // the endpoint's SPIFFE ID, when the config names it
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

// log writes rec's line: in format, or as the JSON line with Istio's
// default fields when it is nil. req and w are the request and its
// response and hdr the request's fields, for headers (nil for a connection
// relayed whole).
func (l *accessLogger) log(format *accesslog.Format, rec *record, req *http.Request, hdr *reqFields, w *responseWriter) {
	if l == nil || l.w == nil {
		return
	}
	if format != nil {
		v := logValues{rec: rec, req: req, hdr: hdr}
		if w != nil {
			v.resp = w.Header()
		}
		b := format.Append(nil, &v)
		l.mu.Lock()
		defer l.mu.Unlock()
		_, _ = l.w.Write(b)
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
	if req != nil && req.TLS != nil && req.TLS.ServerName != "" {
		line.RequestedServerName = req.TLS.ServerName
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

// logValues are a record's values for an access log format's operators.
type logValues struct {
	rec  *record
	req  *http.Request // nil for a connection relayed whole
	hdr  *reqFields    // req's fields
	resp http.Header
}

func (v *logValues) Field(name string) string {
	r := v.rec
	switch name {
	case "PROTOCOL":
		if r.protocol == "-" {
			return ""
		}
		return r.protocol
	case "RESPONSE_CODE":
		return strconv.Itoa(r.code)
	case "RESPONSE_FLAGS":
		return r.flagString()
	case "RESPONSE_CODE_DETAILS":
		return r.details
	case "GRPC_STATUS":
		return r.grpcStatus
	case "UPSTREAM_TRANSPORT_FAILURE_REASON":
		return r.transportFailure
	case "BYTES_RECEIVED":
		return strconv.FormatInt(r.bytesIn, 10)
	case "BYTES_SENT":
		return strconv.FormatInt(r.bytesOut, 10)
	case "DURATION", "REQUEST_DURATION", "RESPONSE_DURATION":
		return strconv.FormatInt(time.Since(r.start).Milliseconds(), 10)
	case "UPSTREAM_HOST":
		return r.upstreamHost
	case "UPSTREAM_CLUSTER", "UPSTREAM_CLUSTER_RAW":
		return r.upstreamClust
	case "DOWNSTREAM_LOCAL_ADDRESS":
		return addrString(r.downstreamLoc)
	case "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_LOCAL_PORT":
		return hostOrPort(addrString(r.downstreamLoc), name == "DOWNSTREAM_LOCAL_PORT")
	case "DOWNSTREAM_REMOTE_ADDRESS", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS":
		return r.downstreamRem
	case "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT", "DOWNSTREAM_REMOTE_PORT":
		return hostOrPort(r.downstreamRem, name == "DOWNSTREAM_REMOTE_PORT")
	case "DOWNSTREAM_PEER_URI_SAN":
		return spiffeURI(r.peer.Principal)
	case "REQUESTED_SERVER_NAME":
		if v.req != nil && v.req.TLS != nil {
			return v.req.TLS.ServerName
		}
	case "ROUTE_NAME":
		return r.routeName
	case "HOSTNAME":
		return hostname()
	case "TRACE_ID":
		if v.req != nil {
			if tp := v.hdr.get("Traceparent"); len(tp) >= 35 {
				return tp[3:35]
			}
		}
	}
	return ""
}

// hostname is the proxy's host name (%HOSTNAME%), asked once.
var hostname = sync.OnceValue(func() string {
	h, _ := os.Hostname()
	return h
})

func hostOrPort(hostport string, port bool) string {
	h, p, err := net.SplitHostPort(hostport)
	if err != nil {
		return ""
	}
	if port {
		return p
	}
	return h
}

func (v *logValues) Request(name string) string {
	if v.req == nil {
		return ""
	}
	switch name {
	case ":method":
		return v.rec.method
	case ":path":
		return v.rec.path
	case ":authority":
		return v.rec.authority
	case ":scheme":
		return scheme(v.req)
	case "x-request-id":
		if v.rec.requestID != "" {
			return v.rec.requestID
		}
	}
	return strings.Join(v.hdr.Values(name), ",")
}

func (v *logValues) Response(name string) string {
	if name == "x-envoy-upstream-service-time" && v.rec.upstreamTime > 0 {
		return strconv.FormatInt(v.rec.upstreamTime.Milliseconds(), 10)
	}
	return strings.Join(v.resp.Values(name), ",")
}

func (v *logValues) Start() time.Time { return v.rec.start }

// logAttributes are a request's attributes for a Telemetry access log
// filter (pkg/logfilter), built only when one is configured.
func logAttributes(rec *record, req *http.Request, hdr *reqFields, w *responseWriter) *logfilter.Attributes {
	h := hdr.header()
	a := &logfilter.Attributes{
		Method: rec.method, Path: rec.path, URLPath: req.URL.Path, Host: rec.authority, Protocol: rec.protocol,
		ID: rec.requestID, UserAgent: rec.userAgent, Referer: h.Get("Referer"),
		RequestHeaders: make(map[string]string, len(h)),
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
	for k, v := range h {
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
