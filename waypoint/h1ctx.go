package waypoint

import (
	"context"
	"sync"
	"time"
)

// reqContext is the context of one request served by h1ServerConn: it ends
// when the handler returns or the client goes away, and carries the
// connection's values. It stands in for context.WithCancel(conn context)
// because of what that costs on every request once the upstream client
// watches it (context.AfterFunc): the cancelCtx and its cancel closure, a
// done channel, the AfterFunc's context and closures, and a children map
// grown in the parent, about six allocations and a map insert and delete.
// Here the request context is one allocation, and h1Client registers the
// upstream connection it must cut (watchConn) in a slot of it.
//
// Everything else derives from it as from any context: the context
// package uses its AfterFunc method (afterFuncer) to propagate
// cancellation to a WithTimeout, WithCancel or AfterFunc child without a
// goroutine, and Done and Err behave as a cancelCtx's.
type reqContext struct {
	parent context.Context // the connection's values; never done

	mu    sync.Mutex
	done  chan struct{} // made on first Done, closed by cancel
	err   error
	hooks []*reqHook // AfterFunc registrations, run once at cancel
	conns [2]*h1Conn // upstream connections cut at cancel (watchConn)
}

// reqHook is one AfterFunc registration.
type reqHook struct {
	f       func()
	stopped bool // removed by its stop function, or already run
}

func newReqContext(parent context.Context) *reqContext {
	return &reqContext{parent: parent}
}

func (r *reqContext) Deadline() (time.Time, bool) { return time.Time{}, false }

func (r *reqContext) Value(key any) any { return r.parent.Value(key) }

func (r *reqContext) Done() <-chan struct{} {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.done == nil {
		r.done = make(chan struct{})
		if r.err != nil {
			close(r.done)
		}
	}
	return r.done
}

func (r *reqContext) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.err
}

// AfterFunc arranges for f to run in its own goroutine once r is done, as
// context.AfterFunc specifies; stop reports whether it kept f from running.
func (r *reqContext) AfterFunc(f func()) (stop func() bool) {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		go f()
		return func() bool { return false }
	}
	h := &reqHook{f: f}
	r.hooks = append(r.hooks, h)
	r.mu.Unlock()
	return func() bool {
		r.mu.Lock()
		defer r.mu.Unlock()
		if h.stopped {
			return false
		}
		h.stopped = true
		return true
	}
}

// cancel ends r with err (context.Canceled): Done is closed, every
// registered function started and every watched connection cut. Later
// calls do nothing.
func (r *reqContext) cancel(err error) {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		return
	}
	r.err = err
	if r.done != nil {
		close(r.done)
	}
	hooks, conns := r.hooks, r.conns
	r.hooks, r.conns = nil, [2]*h1Conn{}
	for _, h := range hooks {
		if !h.stopped {
			h.stopped = true
			go h.f()
		}
	}
	r.mu.Unlock()
	for _, pc := range conns {
		if pc != nil {
			pc.cut()
		}
	}
}

// watchConn arranges for pc to be cut when r ends, as context.AfterFunc
// would, without allocating. It reports false when it has no free slot
// (the caller registers with context.AfterFunc instead) and cuts pc at once
// when r has already ended.
func (r *reqContext) watchConn(pc *h1Conn) bool {
	r.mu.Lock()
	if r.err != nil {
		r.mu.Unlock()
		pc.cut()
		return true
	}
	for i, c := range r.conns {
		if c == nil {
			r.conns[i] = pc
			r.mu.Unlock()
			return true
		}
	}
	r.mu.Unlock()
	return false
}

// unwatchConn undoes watchConn; it reports false when r ended first (and so
// cut the connection), as a stop function from context.AfterFunc does.
func (r *reqContext) unwatchConn(pc *h1Conn) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for i, c := range r.conns {
		if c == pc {
			r.conns[i] = nil
			return true
		}
	}
	return false
}

// ctxWatch is what h1Client.send registered to cut its connection when the
// request's context ends: a slot of a reqContext, or context.AfterFunc's
// stop function for any other context.
type ctxWatch struct {
	rc   *reqContext
	pc   *h1Conn
	stop func() bool
}

// watchCtx arranges for pc to be cut when ctx ends.
func watchCtx(ctx context.Context, pc *h1Conn) ctxWatch {
	if rc, ok := ctx.(*reqContext); ok && rc.watchConn(pc) {
		return ctxWatch{rc: rc, pc: pc}
	}
	return ctxWatch{stop: context.AfterFunc(ctx, pc.cut)}
}

// end stops the watch; it reports false when the context ended first and
// cut the connection.
func (w ctxWatch) end() bool {
	if w.rc != nil {
		return w.rc.unwatchConn(w.pc)
	}
	return w.stop()
}
