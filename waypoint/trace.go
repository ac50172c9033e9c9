package waypoint

import (
	"encoding/binary"
	"encoding/hex"
	"math/rand/v2"
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
// else from valid B3 headers (Zipkin's, whose headers are then rewritten
// for the waypoint's span), or starts a new one sampled at samplePercent,
// and sets the outgoing traceparent with the waypoint's own span as
// parent. tracestate is passed through unchanged. An invalid traceparent
// is replaced, as the W3C spec requires.
func startTrace(h *reqFields, samplePercent float64) traceContext {
	// The outgoing traceparent is built in one buffer, and the context's
	// IDs are slices of that one string. The IDs come from math/rand/v2
	// (as OpenTelemetry's SDKs take theirs from a non-cryptographic
	// generator): unique and unpredictable enough, at a fraction of
	// crypto/rand's cost per request.
	var rnd [24]byte // span ID, then a new trace ID if one is needed
	var tc traceContext
	v, parent, flags, ok := parseTraceparent(h.get("Traceparent"))
	binary.LittleEndian.PutUint64(rnd[:8], rand.Uint64())
	var b3 b3Context
	if !ok {
		// No W3C context: a caller propagating Zipkin's B3 (Istio's
		// Envoys did by default) continues its trace all the same.
		if b3, ok = parseB3(h); ok {
			v, parent, flags = b3.traceID32(), b3.spanID, 0
			sampled := b3.sampled
			if b3.deferred {
				sampled = chance(samplePercent)
			}
			if sampled {
				flags = 1
			}
		}
	}
	if ok {
		tc.parentID, tc.sampled = parent, flags&1 == 1
	} else {
		binary.LittleEndian.PutUint64(rnd[8:16], rand.Uint64())
		binary.LittleEndian.PutUint64(rnd[16:], rand.Uint64())
		tc.sampled = chance(samplePercent)
		h.del("Tracestate")
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
	h.set("Traceparent", tp)
	if b3.traceID != "" {
		b3.propagate(h, tc)
	}
	return tc
}

// b3Context is a caller's Zipkin B3 trace context: the multi-header form
// (X-B3-TraceId, X-B3-SpanId, X-B3-Sampled, X-B3-Flags) or the single
// "b3" header ("{trace}-{span}[-{sampled}[-{parent}]]").
type b3Context struct {
	traceID, spanID string // lower-case hex: 16 or 32, and 16 digits
	sampled         bool
	deferred        bool // no sampling decision: the receiver decides
	single          bool // it came as the single b3 header
}

// parseB3 reads a valid B3 context from h; ok is false without one, or
// with a malformed one (which is then left for the caller's next hop as
// it came).
func parseB3(h *reqFields) (b b3Context, ok bool) {
	if v := h.get("B3"); v != "" {
		parts := strings.Split(strings.ToLower(strings.TrimSpace(v)), "-")
		if len(parts) < 2 || len(parts) > 4 {
			return b, false
		}
		b.traceID, b.spanID, b.single, b.deferred = parts[0], parts[1], true, true
		if len(parts) > 2 {
			switch parts[2] {
			case "1", "d":
				b.sampled, b.deferred = true, false
			case "0":
				b.deferred = false
			default:
				return b, false
			}
		}
	} else {
		b.traceID, b.spanID = strings.ToLower(h.get("X-B3-Traceid")), strings.ToLower(h.get("X-B3-Spanid"))
		b.deferred = true
		if h.get("X-B3-Flags") == "1" {
			b.sampled, b.deferred = true, false
		} else if s := h.get("X-B3-Sampled"); s != "" {
			b.sampled, b.deferred = s == "1" || strings.EqualFold(s, "true"), false
		}
	}
	if (len(b.traceID) != 16 && len(b.traceID) != 32) || len(b.spanID) != 16 || !isLowerHex(b.traceID) || !isLowerHex(b.spanID) ||
		allZero(b.traceID) || allZero(b.spanID) {
		return b3Context{}, false
	}
	return b, true
}

// traceID32 is the B3 trace ID as W3C's 32 digits (a 64-bit one padded
// with zeros on the left, as Zipkin and OpenTelemetry map it).
func (b b3Context) traceID32() string {
	if len(b.traceID) == 32 {
		return b.traceID
	}
	return "0000000000000000" + b.traceID
}

// propagate rewrites the caller's B3 headers, in the form they came in,
// for the waypoint's own span (the caller's span its parent), so that an
// app propagating B3 only keeps the trace.
func (b b3Context) propagate(h *reqFields, tc traceContext) {
	sampled := "0"
	if tc.sampled {
		sampled = "1"
	}
	if b.single {
		h.set("B3", b.traceID+"-"+tc.spanID+"-"+sampled+"-"+b.spanID)
		return
	}
	h.set("X-B3-Traceid", b.traceID)
	h.set("X-B3-Spanid", tc.spanID)
	h.set("X-B3-Parentspanid", b.spanID)
	h.set("X-B3-Sampled", sampled)
	h.del("X-B3-Flags")
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
