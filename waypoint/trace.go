package waypoint

import (
	crand "crypto/rand"
	"encoding/hex"
	"net/http"
	"strings"
	"time"
)

// Span is one request as the waypoint saw it, in W3C trace context terms.
// It is handed to Options.ExportSpan for sampled requests; an OTLP exporter
// plugs in there.
type Span struct {
	// TraceID is 32 lowercase hex digits.
	TraceID string
	// SpanID is the waypoint's span, 16 hex digits.
	SpanID string
	// ParentSpanID is the caller's span from traceparent; empty for a new
	// trace.
	ParentSpanID string
	// Name is "<route name>" or the authority.
	Name string
	// Start and End bound the request.
	Start, End time.Time
	// Attributes follow OpenTelemetry's HTTP conventions.
	Attributes map[string]string
}

// traceContext is the parsed or started W3C trace context of a request.
type traceContext struct {
	traceID, parentID, spanID string
	sampled                   bool
}

// startTrace continues the caller's trace from a valid traceparent header,
// or starts a new one sampled at samplePercent, and sets the outgoing
// traceparent with the waypoint's own span as parent. tracestate is passed
// through unchanged. An invalid traceparent is replaced, as the W3C spec
// requires.
func startTrace(h http.Header, samplePercent float64) traceContext {
	tc := traceContext{spanID: randomHex(8)}
	if v, p, flags, ok := parseTraceparent(h.Get("Traceparent")); ok {
		tc.traceID, tc.parentID, tc.sampled = v, p, flags&1 == 1
	} else {
		tc.traceID, tc.sampled = randomHex(16), chance(samplePercent)
		h.Del("Tracestate")
	}
	flags := "00"
	if tc.sampled {
		flags = "01"
	}
	h.Set("Traceparent", "00-"+tc.traceID+"-"+tc.spanID+"-"+flags)
	return tc
}

func parseTraceparent(v string) (traceID, parentID string, flags byte, ok bool) {
	parts := strings.Split(strings.TrimSpace(v), "-")
	if len(parts) < 4 || len(parts[0]) != 2 || parts[0] == "ff" || len(parts[1]) != 32 || len(parts[2]) != 16 || len(parts[3]) != 2 {
		return "", "", 0, false
	}
	if parts[0] == "00" && len(parts) != 4 {
		return "", "", 0, false
	}
	for _, p := range parts[:4] {
		if !isLowerHex(p) {
			return "", "", 0, false
		}
	}
	if parts[1] == strings.Repeat("0", 32) || parts[2] == strings.Repeat("0", 16) {
		return "", "", 0, false
	}
	f, _ := hex.DecodeString(parts[3])
	return parts[1], parts[2], f[0], true
}

func isLowerHex(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !('0' <= c && c <= '9' || 'a' <= c && c <= 'f') {
			return false
		}
	}
	return true
}

func randomHex(n int) string {
	b := make([]byte, n)
	crand.Read(b)
	return hex.EncodeToString(b)
}
