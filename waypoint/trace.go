package waypoint

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
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
	// The outgoing traceparent is built in one buffer, and the context's
	// IDs are slices of that one string. The IDs come from math/rand/v2
	// (as OpenTelemetry's SDKs take theirs from a non-cryptographic
	// generator): unique and unpredictable enough, at a fraction of
	// crypto/rand's cost per request.
	var rnd [24]byte // span ID, then a new trace ID if one is needed
	var tc traceContext
	v, parent, flags, ok := parseTraceparent(get(h, "Traceparent"))
	binary.LittleEndian.PutUint64(rnd[:8], rand.Uint64())
	if ok {
		tc.parentID, tc.sampled = parent, flags&1 == 1
	} else {
		binary.LittleEndian.PutUint64(rnd[8:16], rand.Uint64())
		binary.LittleEndian.PutUint64(rnd[16:], rand.Uint64())
		tc.sampled = chance(samplePercent)
		delete(h, "Tracestate")
	}
	var b [traceparentLen]byte
	copy(b[:], "00-")
	if ok {
		copy(b[3:35], v)
	} else {
		hex.Encode(b[3:35], rnd[8:24])
	}
	b[35] = '-'
	hex.Encode(b[36:52], rnd[:8])
	copy(b[52:], "-00")
	if tc.sampled {
		b[54] = '1'
	}
	tp := string(b[:])
	tc.traceID, tc.spanID = tp[3:35], tp[36:52]
	h["Traceparent"] = []string{tp}
	return tc
}

// traceparentLen is the length of a version 00 traceparent:
// "00-" trace ID (32) "-" parent ID (16) "-" flags (2).
const traceparentLen = 55

// parseTraceparent checks a traceparent by its fixed layout, without
// allocating: version 00 is exactly traceparentLen long; later versions may
// append "-" and more fields.
func parseTraceparent(v string) (traceID, parentID string, flags byte, ok bool) {
	v = strings.TrimSpace(v)
	if len(v) < traceparentLen || v[2] != '-' || v[35] != '-' || v[52] != '-' {
		return "", "", 0, false
	}
	version := v[:2]
	if version == "ff" || (version == "00" && len(v) != traceparentLen) || (len(v) > traceparentLen && v[traceparentLen] != '-') {
		return "", "", 0, false
	}
	traceID, parentID, fl := v[3:35], v[36:52], v[53:55]
	for _, p := range [...]string{version, traceID, parentID, fl} {
		if !isLowerHex(p) {
			return "", "", 0, false
		}
	}
	if allZero(traceID) || allZero(parentID) {
		return "", "", 0, false
	}
	var f [1]byte
	hex.Decode(f[:], []byte(fl))
	return traceID, parentID, f[0], true
}

func allZero(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] != '0' {
			return false
		}
	}
	return true
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
