package admin

import (
	"context"
	"runtime/debug"
	"runtime/metrics"
	"time"
)

// ReleaseAfterBursts returns to the operating system, once traffic has
// calmed down, the heap a burst left behind, checking every interval until
// ctx ends.
//
// Why: a burst (a bulk transfer filling HBONE receive windows, many pods
// enrolled at once) grows the heap, and the buffers it used go back to
// sync.Pools. A quiet process then allocates too little to reach its next
// GC, pooled buffers outlive one GC, and the runtime returns freed pages
// slowly: in the lab the agent held ~6 MB more after an iperf3 run for
// minutes. Two forced collections and a release (debug.FreeOSMemory) when
// allocation is quiet cost a few milliseconds once per burst.
func ReleaseAfterBursts(ctx context.Context, interval time.Duration) {
	r := newBurstReleaser()
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		r.tick()
	}
}

// Thresholds of a burstReleaser.
const (
	// quietAlloc: allocating less than this between two checks is quiet
	// (traffic allocates megabytes a second; an idle agent with 50 pods
	// ~15 KiB/s).
	quietAlloc = 4 << 20
	// burstSlack: holding this much more heap than after the last release
	// is what a burst left.
	burstSlack = 4 << 20
)

// burstReleaser decides, check by check, when to release.
type burstReleaser struct {
	samples    []metrics.Sample
	lastAllocs uint64
	released   bool   // there was a release: baseline is set
	baseline   uint64 // heap held right after the last release
	release    func()
}

func newBurstReleaser() *burstReleaser {
	r := &burstReleaser{
		samples: []metrics.Sample{
			{Name: "/gc/heap/allocs:bytes"},
			{Name: "/memory/classes/heap/objects:bytes"},
			{Name: "/memory/classes/heap/unused:bytes"},
			{Name: "/memory/classes/heap/free:bytes"},
		},
		release: func() {
			// The first collection moves sync.Pools' contents to their
			// victim caches, the second frees them; FreeOSMemory returns
			// the freed pages.
			debug.FreeOSMemory()
			debug.FreeOSMemory()
		},
	}
	r.lastAllocs, _ = r.read()
	return r
}

// read returns the bytes allocated so far and the heap held now (objects,
// unused parts of spans in use, free pages not yet returned).
func (r *burstReleaser) read() (allocs, held uint64) {
	metrics.Read(r.samples)
	for i, s := range r.samples {
		if s.Value.Kind() != metrics.KindUint64 {
			continue // not in this Go version: counts as 0
		}
		if i == 0 {
			allocs = s.Value.Uint64()
		} else {
			held += s.Value.Uint64()
		}
	}
	return allocs, held
}

// tick checks once, and releases when allocation since the last check was
// quiet and the heap holds a burst's worth more than after the last release
// (or there was none yet). It reports the heap held before and after.
func (r *burstReleaser) tick() (before, after uint64, released bool) {
	allocs, held := r.read()
	quiet := allocs-r.lastAllocs < quietAlloc
	r.lastAllocs = allocs
	if !quiet || (r.released && held < r.baseline+burstSlack) {
		return held, held, false
	}
	r.release()
	r.lastAllocs, after = r.read()
	r.released, r.baseline = true, after
	return held, after, true
}
