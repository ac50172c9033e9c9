package admin

import (
	"context"
	"sync/atomic"
	"testing"
	"time"
)

// KeepLean waits for ready before anything is released, and a process
// that stops while it waits (for ready, or for start-up to settle) is
// not held up by it.
func TestKeepLeanStopsWhileWaiting(t *testing.T) {
	for _, becomesReady := range []bool{false, true} {
		var asked atomic.Int32
		ready := func() bool { return asked.Add(1) > 1 && becomesReady }
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() {
			defer close(done)
			KeepLean(ctx, ready, func(format string, args ...any) {
				t.Errorf("KeepLean logged before start-up settled: "+format, args...)
			})
		}()
		time.Sleep(1500 * time.Millisecond) // ready is asked again every second
		if n := asked.Load(); n < 2 {
			t.Errorf("ready asked %d times in 1.5 s; want it asked again until it holds", n)
		}
		cancel()
		select {
		case <-done:
		case <-time.After(time.Second):
			t.Fatalf("KeepLean (ready %t) did not return within 1 s of its context ending", becomesReady)
		}
		if !becomesReady && asked.Load() > 3 {
			t.Errorf("ready asked %d times in 1.5 s; want once a second", asked.Load())
		}
	}
}
