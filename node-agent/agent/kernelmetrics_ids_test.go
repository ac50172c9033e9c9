package agent

import "testing"

// A restarted agent must give a workload the number its predecessor gave
// it, so the pinned counters keep their names; distinct workloads get
// distinct numbers, never 0.
func TestStableWorkloadID(t *testing.T) {
	none := func(uint32) bool { return false }
	a := stableWorkloadID("shop/echo/default", none)
	if b := stableWorkloadID("shop/echo/default", none); a != b || a == 0 {
		t.Errorf("IDs of one workload across agents: %d, %d; want equal and non-zero", a, b)
	}
	if c := stableWorkloadID("shop/web/default", none); c == a {
		t.Errorf("two workloads share ID %d", a)
	}
	if d := stableWorkloadID("shop/echo/default", func(id uint32) bool { return id == a }); d == a {
		t.Errorf("a taken ID %d was reused", a)
	}
}
