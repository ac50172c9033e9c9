package configdump

import "time"

// The tap stream a waypoint serves on its admin port (`meshctl tap`): the
// requests it finishes, live, one JSON TapLine per line.

// TapPath is the admin path of the tap stream.
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

// TapLine is one line of the tap stream: an event, or the end.
type TapLine struct {
	Event *TapEvent `json:"event,omitempty"`
	End   *TapEnd   `json:"end,omitempty"`
}

// TapEnd closes a tap stream: why, and how many events it lost.
type TapEnd struct {
	Reason  string `json:"reason"`
	Events  int    `json:"events"`
	Dropped int64  `json:"dropped"`
}
