package admin

import (
	"context"
	"time"
)

// Timings of KeepLean.
const (
	// startupSettle is how long after ready start-up is taken to be over
	// (certificates, the first config push, a burst of enrollments).
	startupSettle = 20 * time.Second
	// binaryTrimCheck is how often the binary's mapped pages are checked,
	// and binaryTrimGrowth how much growth since the last release makes
	// them released again (TrimBinaryPages).
	binaryTrimCheck  = 30 * time.Second
	binaryTrimGrowth = 1 << 20
	// burstCheck is how often the heap is checked for what a burst left
	// behind (ReleaseAfterBursts).
	burstCheck = 15 * time.Second
)

// KeepLean is the memory upkeep of a long-running proxy process. It waits
// until ready reports true (checked every second) and then startupSettle
// more, lets go of the binary's start-up pages (ReleaseStartupPages), and
// from then on releases the binary's pages that rare code maps
// (TrimBinaryPages) and the heap bursts leave (ReleaseAfterBursts, whose
// first check releases start-up's) until ctx ends. logf hears the first
// release and errors; an error stops only the part it comes from.
func KeepLean(ctx context.Context, ready func() bool, logf func(format string, args ...any)) {
	tick := time.NewTicker(time.Second)
	for !ready() {
		select {
		case <-ctx.Done():
			tick.Stop()
			return
		case <-tick.C:
		}
	}
	tick.Stop()
	select {
	case <-ctx.Done():
		return
	case <-time.After(startupSettle):
	}
	if n, err := ReleaseStartupPages(); err != nil {
		logf("%v", err)
	} else {
		logf("start-up done: released %d MiB of the binary's mapped pages", n>>20)
	}
	go TrimBinaryPages(ctx, binaryTrimCheck, binaryTrimGrowth, logf)
	ReleaseAfterBursts(ctx, burstCheck)
}
