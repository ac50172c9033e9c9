package waypoint

import (
	"sync"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// rateBuckets is how many buckets a window of a rate budget is cut into:
// a count is forgotten between one and 1.1 windows after it was made (the
// buckets of a whole window are kept, and the one filling), never before.
const rateBuckets = 10

// window counts events over a sliding window: rateBuckets buckets of
// width, and the one now filling. Not safe for concurrent use (retryRate
// guards its windows); no allocation, bounded memory.
type window struct {
	width  time.Duration
	head   int64 // the bucket filling: its number since the budget started
	total  int64 // the sum of counts
	counts [rateBuckets + 1]int64
}

func newWindow(span time.Duration) window {
	return window{width: max(span/rateBuckets, 1)}
}

// advance moves the window to now (time since the budget started),
// forgetting the buckets that fell out of it. A now behind the window's
// (callers race to the lock) counts in the bucket filling.
func (w *window) advance(now time.Duration) {
	idx := int64(now / w.width)
	if idx <= w.head {
		return
	}
	n := int64(len(w.counts))
	if idx-w.head >= n {
		w.counts = [rateBuckets + 1]int64{}
		w.total = 0
	} else {
		for i := w.head + 1; i <= idx; i++ {
			w.total -= w.counts[i%n]
			w.counts[i%n] = 0
		}
	}
	w.head = idx
}

func (w *window) add(now time.Duration) {
	w.advance(now)
	w.counts[w.head%int64(len(w.counts))]++
	w.total++
}

func (w *window) count(now time.Duration) int64 {
	w.advance(now)
	return w.total
}

// retryRate is a retry budget with an Interval, per upstream cluster
// (Gateway API's XBackendTrafficPolicy retryConstraint): it counts the
// tries sent to the cluster over the last Interval (sent: first tries and
// retries, at the one place a try goes out, Proxy.forward) and the
// retries admitted (allowRetry). A retry is allowed when, counting it,
// the retries are at most Percent of the requests:
//
//	(retries + 1) * 100 <= Percent * (requests + 1)
//
// the +1s being the retry about to be made, which is a request too; so at
// 20% the fifth try in a window may be the first retry (1 of 5). Else it
// is allowed when fewer than MinRetries retries (any, not only those the
// minimum let through) were admitted over the last MinRetryInterval: the
// minimum rate at low traffic. A retry is counted when admitted, before
// its backoff (concurrent admissions cannot overshoot the budget), and
// its try again when sent; one admitted but never sent (the client went
// away during the backoff) still counts as a retry, erring on the side of
// fewer retries.
type retryRate struct {
	spec    model.RetryBudget
	now     func() time.Time // the clock: time.Now but in tests
	start   time.Time
	percent float64
	min     int64

	mu                        sync.Mutex
	requests, retries, recent window // recent: retries over MinRetryInterval
}

// newRetryRate is b's rate budget, nil when b is none (no Interval).
func newRetryRate(b *model.RetryBudget, now func() time.Time) *retryRate {
	if b == nil || b.Interval <= 0 {
		return nil
	}
	if now == nil {
		now = time.Now
	}
	r := &retryRate{spec: *b, now: now, start: now(), percent: b.Percent,
		requests: newWindow(b.Interval), retries: newWindow(b.Interval)}
	if b.MinRetries > 0 && b.MinRetryInterval > 0 {
		r.min = int64(b.MinRetries)
		r.recent = newWindow(b.MinRetryInterval)
	}
	return r
}

// sameBudget reports whether r counts for budget b, so that a cluster
// whose config changed but not its budget keeps its counts.
func (r *retryRate) sameBudget(b *model.RetryBudget) bool {
	return r != nil && b != nil && r.spec == *b
}

// sent counts a try sent to the cluster.
func (r *retryRate) sent() {
	t := r.now().Sub(r.start)
	r.mu.Lock()
	r.requests.add(t)
	r.mu.Unlock()
}

// allowRetry admits a retry about to be made, counting it, or refuses it.
func (r *retryRate) allowRetry() bool {
	t := r.now().Sub(r.start)
	r.mu.Lock()
	defer r.mu.Unlock()
	ok := float64(r.retries.count(t)+1)*100 <= r.percent*float64(r.requests.count(t)+1)
	if !ok && r.min > 0 {
		ok = r.recent.count(t) < r.min
	}
	if ok {
		r.retries.add(t)
		if r.min > 0 {
			r.recent.add(t)
		}
	}
	return ok
}
