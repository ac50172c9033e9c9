package admin

import (
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"sync"
)

// runtimeHeapMinimum is the Go runtime's smallest heap goal at GOGC=100
// (defaultHeapMinimum in runtime/mgcpacer.go); the runtime scales it with
// GOGC, so a GOGC of g never lets the goal fall below 4 MiB * g / 100.
const runtimeHeapMinimum = 4 << 20

// MinHeapGoalUsage is the help text of a --gc-min-heap flag.
const MinHeapGoalUsage = "keep the garbage collector's heap goal at least this size while the live heap is small " +
	"(a size such as 16MiB, or none for Go's default pacing): a proxy whose live heap is a few MB otherwise " +
	"collects every few MB it allocates, i.e. many times a second under load; above half this size the " +
	"runtime's proportional pacing (GOGC) is left alone. $GOGC, when set, wins"

// ApplyMinHeapGoal starts a MinHeapGoal per a --gc-min-heap flag's value
// (see MinHeapGoalUsage) unless $GOGC is set, and says what is in force.
// The returned stop ends the tuning (it is a no-op when none started).
func ApplyMinHeapGoal(v string) (stop func(), from string, err error) {
	none := func() {}
	if os.Getenv("GOGC") != "" {
		return none, "$GOGC", nil
	}
	if v == "none" || v == "0" {
		return none, "none", nil
	}
	n, err := parseSize(v)
	if err != nil {
		return none, "", fmt.Errorf("--gc-min-heap %q: %w", v, err)
	}
	return MinHeapGoal(uint64(n)), "--gc-min-heap " + v, nil
}

// MinHeapGoal keeps the garbage collector's heap goal at least floor bytes
// while the live heap is small, by raising GOGC after each collection for
// the heap that collection found live; from a live heap of about half the
// floor on, GOGC is the one in force when it started. The returned stop
// ends the tuning and restores that GOGC.
//
// Why: a waypoint with a 2 MB live heap allocates a few KiB per request
// (headers, the request's record), so at Go's default the runtime collects
// every ~4 MB, some fifteen times a second at 15k requests/s, and the
// marking, the write barriers it turns on and the sweeping that follows
// cost it ~7% of its CPU per request (fortio at full load against the
// bench-waypoint setup, 9 interleaved rounds: 36.8 us at GOGC 100, 34.7
// with a 16 MiB floor, 34.1 at GOGC 400). A
// fixed floor buys that back for a bounded amount of memory, where a
// higher GOGC alone would also multiply a large heap: at a 100 MB live heap
// this leaves the goal at 200 MB, not 500. A soft memory limit
// (ApplyMemoryLimit) still wins over the goal when memory runs short.
//
// The hook is a cleanup on an unreachable object, re-armed at each run:
// it runs once per collection, after it, on the runtime's cleanup
// goroutine; setting GOGC takes the heap lock briefly and no
// stop-the-world.
func MinHeapGoal(floor uint64) (stop func()) {
	base := debug.SetGCPercent(100)
	debug.SetGCPercent(base)
	t := &heapTuner{
		floor: floor, base: base, cur: base,
		samples: []metrics.Sample{
			{Name: "/gc/heap/live:bytes"},
			{Name: "/gc/scan/stack:bytes"},
			{Name: "/gc/scan/globals:bytes"},
		},
	}
	if base < 0 { // GC off: nothing to pace
		return func() {}
	}
	t.arm()
	return func() {
		t.mu.Lock()
		defer t.mu.Unlock()
		if !t.stopped {
			t.stopped = true
			debug.SetGCPercent(t.base)
		}
	}
}

// heapTuner is MinHeapGoal's state.
type heapTuner struct {
	floor   uint64
	base    int              // GOGC in force when tuning started
	samples []metrics.Sample // the cleanup goroutine's

	mu      sync.Mutex
	cur     int // GOGC this tuner last set
	stopped bool
}

// gcSentinel is the object whose collection marks the end of a cycle. It
// holds a pointer so that it is never a tiny allocation (whose cleanups
// may never run).
type gcSentinel struct{ _ *int }

func (t *heapTuner) arm() {
	runtime.AddCleanup(new(gcSentinel), func(t *heapTuner) { t.afterGC() }, t)
}

func (t *heapTuner) afterGC() {
	metrics.Read(t.samples)
	g := gcPercentFor(t.floor, t.base, t.samples[0].Value.Uint64(), t.samples[1].Value.Uint64()+t.samples[2].Value.Uint64())
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.stopped {
		return
	}
	if g != t.cur {
		debug.SetGCPercent(g)
		t.cur = g
	}
	t.arm()
}

// gcPercentFor is the GOGC that puts the heap goal at floor for a live
// heap and the stacks and globals the collector scans (the runtime's goal
// is live + (live + roots) * GOGC / 100), never below base and never so
// high that the runtime's own floor (runtimeHeapMinimum scaled by GOGC)
// lifts the goal above floor.
func gcPercentFor(floor uint64, base int, live, roots uint64) int {
	ceiling := int(floor * 100 / runtimeHeapMinimum)
	if live >= floor || ceiling <= base {
		return base
	}
	g := int((floor - live) * 100 / max(live+roots, 1))
	return max(base, min(g, ceiling))
}
