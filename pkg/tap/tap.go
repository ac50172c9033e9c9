// Package tap is the live event stream a data-plane proxy serves on its
// loopback admin port for `meshctl tap`: the waypoint's finished requests,
// the node agent's connection events. It holds what both share — the hub
// that fans events out to the open taps, its bounds, and the HTTP stream of
// newline-delimited JSON Lines that ends with an End line — so that the two
// proxies bound taps and speak the stream one way.
//
// A tap must never cost the traffic it watches: while nobody taps, a
// publisher pays one atomic load (Hub.Active) and builds no event; while
// someone does, an event a tap cannot take at once is dropped and counted,
// never waited for. Taps are bounded: at most MaxTaps at once, each at most
// MaxEvents events and MaxDuration. The package knows no event type: what an
// event carries, and must not carry (payloads, headers, query strings), is
// its publisher's business.
package tap

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// The bounds of a hub's taps.
const (
	// MaxTaps is how many taps a hub serves at once.
	MaxTaps = 4
	// MaxEvents and DefaultEvents bound one tap's events (query "max").
	MaxEvents     = 10000
	DefaultEvents = 100
	// MaxDuration and DefaultDuration bound one tap's time (query
	// "seconds").
	MaxDuration     = 10 * time.Minute
	DefaultDuration = 30 * time.Second
	// buffer is how many events a tap holds for a slow reader before it
	// drops them.
	buffer = 256
)

// Line is one line of a tap stream: an event, or the end.
type Line[E any] struct {
	Event *E   `json:"event,omitempty"`
	End   *End `json:"end,omitempty"`
}

// End closes a tap stream: why, how many events it carried, and how many it
// lost because its reader was too slow.
type End struct {
	// Reason is "max events" or "time".
	Reason  string `json:"reason"`
	Events  int    `json:"events"`
	Dropped int64  `json:"dropped"`
}

// Hub fans events of type E out to the open taps. The zero Hub is ready.
type Hub[E any] struct {
	active atomic.Int32 // taps open: Active's one load
	mu     sync.Mutex
	subs   map[*sub[E]]struct{}
}

type sub[E any] struct {
	match   func(*E) bool // nil: every event
	ch      chan E
	dropped atomic.Int64
}

// Active says whether any tap is open. A publisher asks it before building
// an event: while nobody taps, this one atomic load is all a tap costs.
func (h *Hub[E]) Active() bool { return h.active.Load() != 0 }

// Taps is how many taps are open.
func (h *Hub[E]) Taps() int { return int(h.active.Load()) }

// subscribe opens a tap of the events match selects (nil: all); false
// when MaxTaps are open already.
func (h *Hub[E]) subscribe(match func(*E) bool) (*sub[E], bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= MaxTaps {
		return nil, false
	}
	if h.subs == nil {
		h.subs = map[*sub[E]]struct{}{}
	}
	s := &sub[E]{match: match, ch: make(chan E, buffer)}
	h.subs[s] = struct{}{}
	h.active.Store(int32(len(h.subs)))
	return s, true
}

func (h *Hub[E]) unsubscribe(s *sub[E]) {
	h.mu.Lock()
	defer h.mu.Unlock()
	delete(h.subs, s)
	h.active.Store(int32(len(h.subs)))
}

// Publish hands e to every tap whose filter selects it; a tap whose buffer
// is full loses it (counted). It never blocks on a reader.
func (h *Hub[E]) Publish(e E) {
	if h.Active() {
		h.publish(e)
	}
}

// publish is Publish's fan-out, apart so that e is copied to the heap (for
// the filters) only while someone taps.
func (h *Hub[E]) publish(e E) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for s := range h.subs {
		if s.match != nil && !s.match(&e) {
			continue
		}
		select {
		case s.ch <- e:
		default:
			s.dropped.Add(1)
		}
	}
}

// Filter makes a tap's event filter from its request's query; nil selects
// every event. An error is the client's (400), and names the parameter.
type Filter[E any] func(q url.Values) (func(*E) bool, error)

// Handler serves the hub's tap stream: on GET, newline-delimited JSON
// Line[E]s of the events published from now on, until "max" events (query,
// DefaultEvents by default, at most MaxEvents) or "seconds" (DefaultDuration
// by default, at most MaxDuration) pass, or the client leaves; then a Line
// with End. filter (nil: none) reads the rest of the query. 429 when MaxTaps
// taps are open already.
func (h *Hub[E]) Handler(filter Filter[E]) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet {
			http.Error(w, "tap: GET only", http.StatusMethodNotAllowed)
			return
		}
		q := r.URL.Query()
		limit, err := bound(q.Get("max"), DefaultEvents, MaxEvents)
		if err != nil {
			http.Error(w, "tap: max: "+err.Error(), http.StatusBadRequest)
			return
		}
		secs, err := bound(q.Get("seconds"), int(DefaultDuration/time.Second), int(MaxDuration/time.Second))
		if err != nil {
			http.Error(w, "tap: seconds: "+err.Error(), http.StatusBadRequest)
			return
		}
		var match func(*E) bool
		if filter != nil {
			if match, err = filter(q); err != nil {
				http.Error(w, "tap: "+err.Error(), http.StatusBadRequest)
				return
			}
		}
		s, ok := h.subscribe(match)
		if !ok {
			http.Error(w, fmt.Sprintf("tap: %d taps are open already; try again when one ends", MaxTaps), http.StatusTooManyRequests)
			return
		}
		defer h.unsubscribe(s)
		w.Header().Set("Content-Type", "application/x-ndjson")
		w.WriteHeader(http.StatusOK)
		rc := http.NewResponseController(w)
		// The bound holds for a client that stops reading too: its writes
		// fail then, and its tap slot is freed.
		_ = rc.SetWriteDeadline(time.Now().Add(time.Duration(secs)*time.Second + 10*time.Second))
		_ = rc.Flush()
		enc := json.NewEncoder(w)
		timer := time.NewTimer(time.Duration(secs) * time.Second)
		defer timer.Stop()
		end := End{Reason: "max events"}
		for end.Events < limit {
			select {
			case e := <-s.ch:
				if err := enc.Encode(Line[E]{Event: &e}); err != nil {
					return
				}
				_ = rc.Flush()
				end.Events++
				continue
			case <-timer.C:
				end.Reason = "time"
			case <-r.Context().Done():
				return
			}
			break
		}
		end.Dropped = s.dropped.Load()
		_ = enc.Encode(Line[E]{End: &end})
	})
}

// bound reads a positive count up to most; def when empty.
func bound(v string, def, most int) (int, error) {
	if v == "" {
		return def, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n <= 0 || n > most {
		return 0, fmt.Errorf("%q: want a whole number from 1 to %d", v, most)
	}
	return n, nil
}
