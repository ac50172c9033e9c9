package admin

import (
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"testing"
	"time"
)

func TestGCPercentFor(t *testing.T) {
	const mib = 1 << 20
	for _, tc := range []struct {
		name        string
		floor       uint64
		base        int
		live, roots uint64
		want        int
	}{
		// 16 MiB: GOGC 400 at most, else the runtime's 4 MiB floor scaled
		// by GOGC would put the goal above 16 MiB.
		{"tiny heap: the ceiling", 16 * mib, 100, 1 * mib, mib / 2, 400},
		{"goal at the floor", 16 * mib, 100, 6 * mib, 2 * mib, 125}, // 6 + 8*1.25 = 16
		{"half the floor: GOGC's own goal", 16 * mib, 100, 8 * mib, mib, 100},
		{"above the floor", 16 * mib, 100, 40 * mib, mib, 100},
		{"a higher base is kept", 16 * mib, 300, 6 * mib, 2 * mib, 300},
		{"floor at the runtime's minimum", 4 * mib, 100, 1 * mib, 0, 100},
		{"empty heap", 16 * mib, 100, 0, 0, 400},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := gcPercentFor(tc.floor, tc.base, tc.live, tc.roots); got != tc.want {
				t.Errorf("gcPercentFor(floor %d MiB, base %d, live %.1f MiB) = %d, want %d",
					tc.floor/mib, tc.base, float64(tc.live)/mib, got, tc.want)
			}
		})
	}
}

var sink []byte

// TestMinHeapGoal runs the tuner on this test process's own collector: with
// a small live heap the goal rises to the floor (so collections come that
// much less often), with a live heap above the floor GOGC is back to what it
// was, and stop restores it.
func TestMinHeapGoal(t *testing.T) {
	if debug.SetGCPercent(100) != 100 {
		t.Skip("GOGC is set for this test run")
	}
	const floor = 48 << 20
	samples := []metrics.Sample{{Name: "/gc/heap/goal:bytes"}, {Name: "/gc/gogc:percent"}, {Name: "/gc/heap/live:bytes"}}
	read := func() (goal, gogc, live uint64) {
		metrics.Read(samples)
		return samples[0].Value.Uint64(), samples[1].Value.Uint64(), samples[2].Value.Uint64()
	}
	// waitFor collects and churns until cond holds for the goal, GOGC and
	// live heap the tuner last saw (it runs just after each collection).
	waitFor := func(what string, cond func(goal, gogc, live uint64) bool) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for {
			runtime.GC()
			for range 200 {
				sink = make([]byte, 4<<10)
			}
			time.Sleep(10 * time.Millisecond)
			goal, gogc, live := read()
			if cond(goal, gogc, live) {
				return
			}
			if time.Now().After(deadline) {
				t.Fatalf("%s: heap goal %d MiB, GOGC %d, live heap %d MiB", what, goal>>20, gogc, live>>20)
			}
		}
	}

	_, _, live := read()
	if live > floor/4 {
		t.Skipf("this test process's live heap (%d MiB) is too large for the floor", live>>20)
	}
	stop := MinHeapGoal(floor)
	defer stop()
	waitFor("small live heap", func(goal, gogc, _ uint64) bool { return gogc > 100 && goal >= floor*9/10 })

	big := make([][]byte, 0, 64)
	for range 64 { // 64 MiB live, above the floor
		b := make([]byte, 1<<20)
		for i := range b {
			b[i] = 1
		}
		big = append(big, b)
	}
	waitFor("live heap above the floor", func(goal, gogc, live uint64) bool {
		return gogc == 100 && live >= 64<<20 && goal < 2*live+16<<20
	})
	runtime.KeepAlive(big)

	stop()
	if _, gogc, _ := read(); gogc != 100 {
		t.Errorf("after stop: GOGC %d, want 100 (the value in force when tuning started)", gogc)
	}
}

func TestApplyMinHeapGoal(t *testing.T) {
	t.Setenv("GOGC", "")
	if _, _, err := ApplyMinHeapGoal("lots"); err == nil {
		t.Error(`--gc-min-heap "lots" accepted`)
	}
	stop, from, err := ApplyMinHeapGoal("none")
	if err != nil || from != "none" {
		t.Errorf("none: %q, %v", from, err)
	}
	stop()
	t.Setenv("GOGC", "200")
	stop, from, err = ApplyMinHeapGoal("16MiB")
	if err != nil || from != "$GOGC" {
		t.Errorf("with $GOGC set: %q, %v; want $GOGC to win", from, err)
	}
	stop()
}
