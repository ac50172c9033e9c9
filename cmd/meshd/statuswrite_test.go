package main

import (
	"context"
	"slices"
	"sync"
	"testing"
)

// TestStatusQueue: a result not yet taken is replaced by the newer one, and
// put never blocks.
func TestStatusQueue(t *testing.T) {
	q := newStatusQueue[int]()
	for i := 1; i <= 3; i++ {
		q.put(i) // no reader: must not block
	}
	ctx, cancel := context.WithCancel(context.Background())
	var got []int
	q.run(ctx, func(v int) { got = append(got, v); cancel() })
	if !slices.Equal(got, []int{3}) {
		t.Errorf("run took %v; want [3], the newest only", got)
	}
}

// TestWriteEach: only the changed items are written, each once.
func TestWriteEach(t *testing.T) {
	var mu sync.Mutex
	var written []int
	writeEach(context.Background(), []int{1, 2, 3, 4, 5, 6}, func(v int) bool { return v%2 == 0 }, func(v int) {
		mu.Lock()
		defer mu.Unlock()
		written = append(written, v)
	})
	slices.Sort(written)
	if !slices.Equal(written, []int{2, 4, 6}) {
		t.Errorf("writeEach wrote %v; want [2 4 6]", written)
	}
}
