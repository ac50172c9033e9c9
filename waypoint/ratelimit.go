package waypoint

import (
	"strings"
	"sync"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// rateLimiter is a local token bucket (Envoy's local_ratelimit), one bucket
// per key. Keyed buckets are bounded by MaxKeys; when full, the oldest-used
// bucket is forgotten (a forgotten key starts full again, the same as a
// restart of the proxy).
type rateLimiter struct {
	spec    model.RateLimit
	header  string
	perFill int
	maxKeys int

	mu      sync.Mutex
	buckets map[string]*bucket
}

type bucket struct {
	tokens int
	last   time.Time
}

func newRateLimiter(spec *model.RateLimit) *rateLimiter {
	l := &rateLimiter{spec: *spec, perFill: spec.TokensPerFill, maxKeys: spec.MaxKeys, buckets: map[string]*bucket{}}
	if l.perFill == 0 {
		l.perFill = 1
	}
	if l.maxKeys == 0 {
		l.maxKeys = 10000
	}
	if h, ok := strings.CutPrefix(spec.Key, "header:"); ok {
		l.header = h
	}
	return l
}

// key is the bucket key for a request.
func (l *rateLimiter) key(principal string, header func(string) string) string {
	switch {
	case l.spec.Key == "principal":
		return principal
	case l.header != "":
		return header(l.header)
	}
	return ""
}

// allow takes one token from key's bucket.
func (l *rateLimiter) allow(key string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.buckets[key]
	if b == nil {
		if len(l.buckets) >= l.maxKeys {
			var oldestKey string
			var oldest time.Time
			for k, v := range l.buckets {
				if oldest.IsZero() || v.last.Before(oldest) {
					oldestKey, oldest = k, v.last
				}
			}
			delete(l.buckets, oldestKey)
		}
		b = &bucket{tokens: l.spec.MaxTokens, last: now}
		l.buckets[key] = b
	}
	if fills := int(now.Sub(b.last) / l.spec.FillInterval); fills > 0 {
		b.tokens = min(l.spec.MaxTokens, b.tokens+fills*l.perFill)
		b.last = b.last.Add(time.Duration(fills) * l.spec.FillInterval)
	}
	if b.tokens <= 0 {
		return false
	}
	b.tokens--
	return true
}
