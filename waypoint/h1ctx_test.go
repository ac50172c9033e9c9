package waypoint

import (
	"context"
	"errors"
	"io"
	"net/http"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

type ctxKey struct{}

// TestReqContext: the request context behaves as context.WithCancel's for
// everything derived from it: values from the connection, Done and Err, a
// WithTimeout child and a context.AfterFunc ended by cancel, a stopped
// AfterFunc never run.
func TestReqContext(t *testing.T) {
	rc := newReqContext(context.WithValue(context.Background(), ctxKey{}, "conn"))
	if got := rc.Value(ctxKey{}); got != "conn" {
		t.Errorf("Value = %v; want the connection's value", got)
	}
	if rc.Err() != nil {
		t.Fatalf("Err before cancel = %v", rc.Err())
	}
	done := rc.Done()
	child, cancelChild := context.WithTimeout(rc, time.Hour)
	defer cancelChild()
	ran := make(chan struct{})
	context.AfterFunc(rc, func() { close(ran) })
	stoppedRan := make(chan struct{}, 1)
	stop := context.AfterFunc(rc, func() { stoppedRan <- struct{}{} })
	if !stop() {
		t.Error("stop before cancel = false; want true")
	}
	select {
	case <-done:
		t.Fatal("Done closed before cancel")
	default:
	}

	rc.cancel(context.Canceled)
	rc.cancel(errors.New("second cancel")) // no effect
	for name, ch := range map[string]<-chan struct{}{"Done": done, "child's Done": child.Done(), "AfterFunc": ran} {
		select {
		case <-ch:
		case <-time.After(2 * time.Second):
			t.Errorf("%s not ended by cancel", name)
		}
	}
	if !errors.Is(rc.Err(), context.Canceled) || !errors.Is(child.Err(), context.Canceled) {
		t.Errorf("Err = %v, child's = %v; want Canceled", rc.Err(), child.Err())
	}
	select {
	case <-rc.Done(): // a Done asked after cancel is closed too
	default:
		t.Error("Done after cancel not closed")
	}
	select {
	case <-stoppedRan:
		t.Error("a stopped AfterFunc ran")
	case <-time.After(50 * time.Millisecond):
	}
	// Registered after the end: runs at once, stop reports false.
	late := make(chan struct{})
	if context.AfterFunc(rc, func() { close(late) })() {
		t.Error("stop of an AfterFunc registered after cancel = true")
	}
	select {
	case <-late:
	case <-time.After(2 * time.Second):
		t.Error("AfterFunc registered after cancel never ran")
	}
}

// TestH1ClientRequestContext: h1Client watches a request context's slots
// instead of context.AfterFunc: the request's end cuts an upstream
// exchange still running, and never a connection a finished exchange gave
// back to the pool.
func TestH1ClientRequestContext(t *testing.T) {
	release := make(chan struct{})
	addr, ln := countedBackend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/slow" {
			select {
			case <-release:
			case <-r.Context().Done():
			}
		}
		io.WriteString(w, "ok")
	}))
	t.Cleanup(func() { close(release) })
	c := newH1Client(&model.ConnectionPool{}, nil)
	t.Cleanup(c.closeIdle)
	get := func(ctx context.Context, path string) error {
		req, _ := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+path, nil)
		resp, err := c.RoundTrip(req)
		if err != nil {
			return err
		}
		_, err = io.ReadAll(resp.Body)
		resp.Body.Close()
		return err
	}

	// Two finished requests, each ending its context after: one
	// connection, kept.
	for range 2 {
		rc := newReqContext(context.Background())
		if err := get(rc, "/"); err != nil {
			t.Fatalf("GET / = %v", err)
		}
		rc.cancel(context.Canceled)
	}
	if got := ln.n.Load(); got != 1 {
		t.Fatalf("opened %d connections for two finished requests; want 1 (ending their contexts must not cut it)", got)
	}

	// A request whose context ends while it waits for the answer.
	rc := newReqContext(context.Background())
	errc := make(chan error, 1)
	go func() { errc <- get(rc, "/slow") }()
	time.Sleep(100 * time.Millisecond)
	rc.cancel(context.Canceled)
	select {
	case err := <-errc:
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("GET /slow = %v; want Canceled", err)
		}
	case <-time.After(3 * time.Second):
		t.Fatal("GET /slow still waits after its context ended")
	}
	if err := get(newReqContext(context.Background()), "/"); err != nil {
		t.Fatalf("GET / after the cut = %v", err)
	}
	if got := ln.n.Load(); got != 2 {
		t.Errorf("opened %d connections; want 2 (the cut one is not reused)", got)
	}
}
