package waypoint

import (
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/tap"
)

// Tap: the requests a waypoint finishes, streamed live to whoever asks its
// loopback admin port (`meshctl tap`, as Linkerd's tap). A request costs
// one atomic load while nobody taps. What a tap carries is what the access
// log carries, less: no header, no query string (tokens travel there), no
// request ID. Taps are bounded as pkg/tap bounds every tap: at most 4 at
// once, each at most 10000 events and 10 minutes; a tap that reads slower
// than requests finish loses events (counted, never blocking a request).

// tapFilter selects events; empty fields select all.
type tapFilter struct {
	method, authority, pathPrefix, source string
}

func (f *tapFilter) match(e *configdump.TapEvent) bool {
	return (f.method == "" || strings.EqualFold(f.method, e.Method)) &&
		(f.authority == "" || strings.EqualFold(f.authority, e.Authority) || strings.EqualFold(f.authority, e.Destination)) &&
		(f.pathPrefix == "" || strings.HasPrefix(e.Path, f.pathPrefix)) &&
		(f.source == "" || f.source == e.Source)
}

// tapHub fans finished requests out to the taps (pkg/tap: bounds, drops).
type tapHub = tap.Hub[configdump.TapEvent]

// publishTap hands rec's request to the taps; one atomic load while nobody
// taps.
func (p *Proxy) publishTap(rec *record) {
	if p.taps.Active() {
		p.taps.Publish(tapEvent(rec, time.Now()))
	}
}

func tapEvent(rec *record, now time.Time) configdump.TapEvent {
	path, _, _ := strings.Cut(rec.path, "?")
	e := configdump.TapEvent{
		Time: rec.start.UTC(), Method: rec.method, Authority: rec.authority, Path: path, Protocol: rec.protocol,
		Status: rec.code, GRPCStatus: rec.grpcStatus, DurationMS: float64(now.Sub(rec.start).Microseconds()) / 1000,
		Flags: rec.flagString(), Route: rec.routeName, SourceIdentity: rec.peer.Principal,
		Destination: rec.dest.service, Upstream: rec.upstreamHost, RequestBytes: rec.bytesIn, ResponseBytes: rec.bytesOut,
	}
	switch {
	case rec.peer.Workload != "":
		e.Source = rec.peer.Namespace + "/" + rec.peer.Workload
	case rec.peer.Principal != "":
		e.Source = rec.peer.Principal
	case rec.peer.IP.IsValid():
		e.Source = rec.peer.IP.String()
	default:
		e.Source = rec.downstreamRem
	}
	return e
}

// TapHandler serves configdump.TapPath (pkg/tap's stream): newline-delimited
// JSON configdump.TapLines of the requests that finish from now on, until
// max events (query "max", 100 by default, at most 10000) or "seconds" (30
// by default, at most 600) pass, or the client leaves; then a
// configdump.TapLine with End. Query "method", "authority" (the Host, or the
// destination service), "path" (a prefix of the normalized path) and
// "source" (as configdump.TapEvent.Source) filter the requests. 429 when
// tap.MaxTaps taps are open already.
func (p *Proxy) TapHandler() http.Handler {
	return p.taps.Handler(func(q url.Values) (func(*configdump.TapEvent) bool, error) {
		f := tapFilter{method: q.Get("method"), authority: q.Get("authority"), pathPrefix: q.Get("path"), source: q.Get("source")}
		return f.match, nil
	})
}
