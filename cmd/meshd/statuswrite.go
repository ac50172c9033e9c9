package main

import (
	"context"
	"sync"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
)

// What the status writers (gatewayStatusWriter, serviceEntryStatusWriter)
// share: how a build's result reaches a writer, how many writes run at
// once, and which failures are retried.

// statusQueue hands each build's result to a writer goroutine: put never
// blocks and replaces a result the writer has not taken yet, so the writer
// works on the newest build and builds never wait on the API server.
type statusQueue[T any] chan T

func newStatusQueue[T any]() statusQueue[T] { return make(chan T, 1) }

// put queues v, replacing a value still waiting.
func (q statusQueue[T]) put(v T) {
	for {
		select {
		case q <- v:
			return
		default:
		}
		select {
		case <-q: // stale: the new build supersedes it
		default:
		}
	}
}

// run calls write with each value taken, until ctx ends.
func (q statusQueue[T]) run(ctx context.Context, write func(T)) {
	for {
		select {
		case <-ctx.Done():
			return
		case v := <-q:
			write(v)
		}
	}
}

// writeEach calls write for each item that changed reports as changed, on
// at most statusWorkers goroutines, and returns when they are done.
// changed runs on the caller's goroutine, so that the unchanged items, the
// usual case, cost no hand-over.
func writeEach[T any](ctx context.Context, items []T, changed func(T) bool, write func(T)) {
	jobs := make(chan T)
	var wg sync.WaitGroup
	for range statusWorkers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for it := range jobs {
				write(it)
			}
		}()
	}
	for _, it := range items {
		if !changed(it) {
			continue
		}
		select {
		case jobs <- it:
		case <-ctx.Done():
		}
	}
	close(jobs)
	wg.Wait()
}

// retriableStatusError reports whether a failed status write may succeed
// when tried again: a conflict (read again and merge anew) or an API server
// busy or restarting.
func retriableStatusError(err error) bool {
	return apierrors.IsConflict(err) || apierrors.IsServerTimeout(err) || apierrors.IsTooManyRequests(err) ||
		apierrors.IsServiceUnavailable(err) || apierrors.IsTimeout(err) || apierrors.IsInternalError(err)
}
