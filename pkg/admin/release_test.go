package admin

import (
	"sync"
	"testing"
)

// burst allocates n bytes of buffers into a sync.Pool and drops them, as a
// transfer's buffers end up.
func burst(p *sync.Pool, n int) {
	var held []*[]byte
	for range n / (64 << 10) {
		b := make([]byte, 64<<10)
		held = append(held, &b)
	}
	for _, b := range held {
		p.Put(b)
	}
}

// After a burst, the heap goes back to the OS once allocation is quiet, not
// while the burst is on, and not again until another burst.
func TestReleaseAfterBursts(t *testing.T) {
	var pool sync.Pool
	r := newBurstReleaser()

	burst(&pool, 32<<20)
	if before, _, released := r.tick(); released {
		t.Fatalf("released while 32 MiB were being allocated (held %d MiB); want to wait for quiet", before>>20)
	}
	before, after, released := r.tick()
	if !released {
		t.Fatalf("quiet after a 32 MiB burst, holding %d MiB: not released", before>>20)
	}
	if before-after < 16<<20 {
		t.Errorf("release after a 32 MiB burst: held %d -> %d MiB; want at least 16 MiB back", before>>20, after>>20)
	}
	if _, _, released := r.tick(); released {
		t.Error("released again with no burst since the last release")
	}

	// Decisions only from here: count releases.
	releases := 0
	r.release = func() { releases++ }
	burst(&pool, 16<<20)
	r.tick() // the burst's own allocation: not quiet
	r.tick() // quiet, and a burst's worth more than the baseline
	if releases != 1 {
		t.Errorf("after a second 16 MiB burst: %d releases; want 1", releases)
	}
}
