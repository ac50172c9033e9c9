package waypoint

import (
	"encoding/json"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
)

// Tap: the requests a waypoint finishes, streamed live to whoever asks its
// loopback admin port (`meshctl tap`, as Linkerd's tap). A request costs
// one atomic load while nobody taps. What a tap carries is what the access
// log carries, less: no header, no query string (tokens travel there), no
// request ID. Taps are bounded: at most maxTaps at once, each at most
// maxTapEvents events and maxTapDuration; a tap that reads slower than
// requests finish loses events (counted, never blocking a request).

const (
	maxTaps            = 4
	maxTapEvents       = 10000
	defaultTapEvents   = 100
	maxTapDuration     = 10 * time.Minute
	defaultTapDuration = 30 * time.Second
	tapBuffer          = 256
)

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

type tapSub struct {
	filter  tapFilter
	ch      chan configdump.TapEvent
	dropped atomic.Int64
}

// tapHub fans finished requests out to the taps.
type tapHub struct {
	active atomic.Int32 // taps open: publish returns at once without any
	mu     sync.Mutex
	subs   map[*tapSub]struct{}
}

func (h *tapHub) subscribe(f tapFilter) (*tapSub, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= maxTaps {
		return nil, false
	}
	if h.subs == nil {
		h.subs = map[*tapSub]struct{}{}
	}
	s := &tapSub{filter: f, ch: make(chan configdump.TapEvent, tapBuffer)}
	h.subs[s] = struct{}{}
	h.active.Store(int32(len(h.subs)))
	return s, true
}

func (h *tapHub) unsubscribe(s *tapSub) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	h.active.Store(int32(len(h.subs)))
}

// publish hands rec's request to the taps whose filter it matches.
func (h *tapHub) publish(rec *record) {
	if h.active.Load() == 0 {
		return
	}
	e := tapEvent(rec, time.Now())
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if !s.filter.match(&e) {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.dropped.Add(1)
		}
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

// TapHandler serves configdump.TapPath: newline-delimited JSON configdump.TapLines of the
// requests that finish from now on, until max events (query "max", 100 by
// default, at most 10000) or "seconds" (30 by default, at most 600) pass,
// or the client leaves; then a configdump.TapLine with End. Query "method",
// "authority" (the Host, or the destination service), "path" (a prefix of
// the normalized path) and "source" (as configdump.TapEvent.Source) filter the
// requests. 429 when maxTaps taps are open already.
func (p *Proxy) TapHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "tap: GET only", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		limit, err := tapBound(q.Get("max"), defaultTapEvents, maxTapEvents)
		if err != nil {
			http.Error(w, "tap: max: "+err.Error(), http.StatusBadRequest)
			return
		}
		secs, err := tapBound(q.Get("seconds"), int(defaultTapDuration/time.Second), int(maxTapDuration/time.Second))
		if err != nil {
			http.Error(w, "tap: seconds: "+err.Error(), http.StatusBadRequest)
			return
		}
		f := tapFilter{method: q.Get("method"), authority: q.Get("authority"), pathPrefix: q.Get("path"), source: q.Get("source")}
		sub, ok := p.taps.subscribe(f)
		if !ok {
			http.Error(w, fmt.Sprintf("tap: %d taps are open already; try again when one ends", maxTaps), http.StatusTooManyRequests)
			return
		}
		defer p.taps.unsubscribe(sub)
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		// The bound holds for a client that stops reading too: its writes
		// fail then, and its tap slot is freed.
		rc.SetWriteDeadline(time.Now().Add(time.Duration(secs)*time.Second + 10*time.Second))
		rc.Flush()
		enc := json.NewEncoder(w)
		timer := time.NewTimer(time.Duration(secs) * time.Second)
		defer timer.Stop()
		end := configdump.TapEnd{Reason: "max events"}
		for end.Events < limit {
			select {
			case e := <-sub.ch:
				if err := enc.Encode(configdump.TapLine{Event: &e}); err != nil {
					return
				}
				rc.Flush()
				end.Events++
				continue
			case <-timer.C:
				end.Reason = "time"
			case <-r.Context().Done():
				return
			}
			break
		}
		end.Dropped = sub.dropped.Load()
		enc.Encode(configdump.TapLine{End: &end})
	})
}

// tapBound reads a positive count up to most; def when empty.
func tapBound(v string, def, most int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > most {
		return 0, fmt.Errorf("%q: want a whole number from 1 to %d", v, most)
	}
	return n, nil
}
