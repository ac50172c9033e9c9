package configdump

import (
	"time"

	"github.com/meshlet/meshlet/pkg/tap"
)

// The tap streams the data plane serves on its admin port at TapPath
// (`meshctl tap`), one JSON line each (pkg/tap): a waypoint's finished
// requests (TapLine), a node agent's connection events (ConnTapLine).

// TapPath is the admin path of the tap stream, on waypoints and node agents.
const TapPath = "/debug/tap"

// TapEvent is one finished request.
type TapEvent struct {
	Time      time.Time `json:"time"`
	Method    string    `json:"method"`
	Authority string    `json:"authority"`
	Path      string    `json:"path"` // normalized, without the query
	Protocol  string    `json:"protocol"`
	Status    int       `json:"status"`
	// GRPCStatus is the gRPC status of a gRPC request.
	GRPCStatus string `json:"grpcStatus,omitempty"`
	// DurationMS is from the request's first byte to its answer's last.
	DurationMS float64 `json:"durationMs"`
	Flags      string  `json:"flags"`
	Route      string  `json:"route,omitempty"`
	// Source is the client: its workload "namespace/name" when the mesh
	// knows it, else its identity, else its address.
	Source string `json:"source"`
	// SourceIdentity is the client's SPIFFE ID (mutual TLS), if any.
	SourceIdentity string `json:"sourceIdentity,omitempty"`
	// Destination is the service the request was for; Upstream the
	// endpoint that answered.
	Destination   string `json:"destination,omitempty"`
	Upstream      string `json:"upstream,omitempty"`
	RequestBytes  int64  `json:"requestBytes"`
	ResponseBytes int64  `json:"responseBytes"`
}

// TapLine is one line of a waypoint's tap stream: an event, or the end.
type TapLine = tap.Line[TapEvent]

// TapEnd closes a tap stream: why, and how many events it lost.
type TapEnd = tap.End

// The kinds of ConnEvent.
const (
	ConnOpened  = "opened"
	ConnClosed  = "closed"
	ConnRefused = "refused"
)

// ConnEvent is one L4 connection event of a node agent: a connection it
// opened or closed, or refused, as one end reports it. Never any payload.
type ConnEvent struct {
	Time time.Time `json:"time"`
	// Kind is ConnOpened, ConnClosed or ConnRefused.
	Kind string `json:"kind"`
	// Reporter is "source" (the client's agent, outbound capture) or
	// "destination" (the server's agent, inbound or HBONE), as Istio's
	// reporter label.
	Reporter string `json:"reporter"`
	// Source is the client: its workload "namespace/name" when the mesh
	// knows it, else its IP.
	Source string `json:"source"`
	// SourceAddr is the client's address, ip:port.
	SourceAddr string `json:"sourceAddr,omitempty"`
	// SourceIdentity is the client's SPIFFE ID when proven (mutual TLS, or
	// the agent's own pod on the source side).
	SourceIdentity string `json:"sourceIdentity,omitempty"`
	// Destination is the server's workload "namespace/name" when known.
	Destination string `json:"destination,omitempty"`
	// DestinationAddr is the address connected to, ip:port: the endpoint
	// (pod) when known, else what the client dialled.
	DestinationAddr string `json:"destinationAddr,omitempty"`
	// DestinationService is the service's host name when a service was
	// dialled.
	DestinationService string `json:"destinationService,omitempty"`
	// ConnectionSecurityPolicy is "mutual_tls" or "none", as Istio's label.
	ConnectionSecurityPolicy string `json:"connectionSecurityPolicy"`
	// Policy is the AuthorizationPolicy ("namespace/name") that decided,
	// when one did: the one that refused, or the ALLOW that let it in.
	Policy string `json:"policy,omitempty"`
	// Reason is a refusal's reason, the value of the reason label of
	// meshlet_tcp_connections_refused_total (policy_denied,
	// strict_mtls_plaintext, …); Detail says it in words.
	Reason string `json:"reason,omitempty"`
	Detail string `json:"detail,omitempty"`
	// ReceivedBytes (from the client) and SentBytes (to the client) of a
	// closed connection, as Istio's istio_tcp_received/sent_bytes_total.
	ReceivedBytes int64 `json:"receivedBytes,omitempty"`
	SentBytes     int64 `json:"sentBytes,omitempty"`
	// DurationMS is a closed connection's life, when the tap saw it open
	// (0 for one opened before the tap began: measuring every connection
	// would cost while nobody taps).
	DurationMS float64 `json:"durationMs,omitempty"`
}

// ConnTapLine is one line of a node agent's tap stream.
type ConnTapLine = tap.Line[ConnEvent]
