package mesh

import (
	"context"
	"errors"
	"net/netip"
	"sync"
	"time"
)

// Cached answers for ServiceEntry endpoints known by hostname (resolution
// DNS or DNS_ROUND_ROBIN). Go's resolver does not return TTLs, so answers
// are kept for a fixed time, as ztunnel keeps them for their TTL: an answer
// older than resolvedTTL is still used while a lookup in the background
// refreshes it (a connection never waits on a refresh), and a failed lookup
// is remembered for failedTTL so a dead name does not cost every connection
// a lookup.
const (
	resolvedTTL    = 30 * time.Second
	failedTTL      = 5 * time.Second
	resolveTimeout = 5 * time.Second
	// maxResolvedHosts bounds the cache (the names come from ServiceEntries,
	// i.e. from users); past it, expired answers are dropped first, and a
	// name that still does not fit is looked up uncached.
	maxResolvedHosts = 4096
	// maxResolvedAddrs bounds the addresses kept per name.
	maxResolvedAddrs = 32
)

type hostResolver struct {
	lookup func(ctx context.Context, host string) ([]netip.Addr, error)
	now    func() time.Time
	errorf func(format string, args ...any)

	mu      sync.Mutex
	entries map[string]*resolved
}

type resolved struct {
	done       chan struct{} // closed when the first lookup has ended
	addrs      []netip.Addr  // usable addresses (see usableResolved)
	err        error
	expires    time.Time
	refreshing bool
}

// addrs returns the usable addresses of host, looking it up when nothing is
// cached (waiting at most resolveTimeout), serving a stale answer while it is
// refreshed in the background.
func (r *hostResolver) addrs(host string) ([]netip.Addr, error) {
	r.mu.Lock()
	if r.entries == nil {
		r.entries = map[string]*resolved{}
	}
	e, ok := r.entries[host]
	if ok {
		select {
		case <-e.done:
		default:
			// Another connection's lookup is under way: wait for it.
			r.mu.Unlock()
			<-e.done
			r.mu.Lock()
			defer r.mu.Unlock()
			return e.addrs, e.err
		}
		if r.now().After(e.expires) && !e.refreshing {
			if e.err != nil {
				// A failure is not served stale: look it up again now.
				delete(r.entries, host)
				ok = false
			} else {
				e.refreshing = true
				go r.refresh(host)
			}
		}
		if ok {
			addrs, err := e.addrs, e.err
			r.mu.Unlock()
			return addrs, err
		}
	}
	if !r.makeRoom() {
		r.mu.Unlock()
		return r.resolve(host)
	}
	e = &resolved{done: make(chan struct{})}
	r.entries[host] = e
	r.mu.Unlock()
	addrs, err := r.resolve(host)
	r.mu.Lock()
	e.addrs, e.err, e.expires = addrs, err, r.expiry(err)
	r.mu.Unlock()
	close(e.done)
	return addrs, err
}

// refresh looks host up again and replaces its answer; a failed refresh
// keeps the old answer until the next try.
func (r *hostResolver) refresh(host string) {
	addrs, err := r.resolve(host)
	r.mu.Lock()
	defer r.mu.Unlock()
	e, ok := r.entries[host]
	if !ok {
		return
	}
	e.refreshing = false
	if err != nil {
		e.expires = r.now().Add(failedTTL)
		return
	}
	e.addrs, e.expires = addrs, r.expiry(nil)
}

func (r *hostResolver) expiry(err error) time.Time {
	if err != nil {
		return r.now().Add(failedTTL)
	}
	return r.now().Add(resolvedTTL)
}

// makeRoom reports whether one more name fits, dropping expired answers
// when the cache is full. r.mu is held.
func (r *hostResolver) makeRoom() bool {
	if len(r.entries) < maxResolvedHosts {
		return true
	}
	now := r.now()
	for h, e := range r.entries {
		select {
		case <-e.done:
			if now.After(e.expires) && !e.refreshing {
				delete(r.entries, h)
			}
		default:
		}
	}
	return len(r.entries) < maxResolvedHosts
}

func (r *hostResolver) resolve(host string) ([]netip.Addr, error) {
	ctx, cancel := context.WithTimeout(context.Background(), resolveTimeout)
	defer cancel()
	addrs, err := r.lookup(ctx, host)
	if err == nil {
		if addrs = usableResolved(addrs); len(addrs) == 0 {
			err = errors.New("no usable address (loopback, unspecified and multicast ones are not dialled)")
		}
	}
	if err != nil {
		// Failures are cached for failedTTL: at most one report per name
		// that often.
		r.errorf("ServiceEntry endpoint %q: resolving it: %v; its connections pass through to the address dialled", host, err)
		return nil, err
	}
	return addrs, nil
}

// usableResolved keeps the addresses a pod's connection may be sent to:
// not loopback, unspecified or multicast (a name resolving there would have
// the agent dial, with its mark, inside the pod's own netns or nowhere),
// unmapped, at most maxResolvedAddrs.
func usableResolved(addrs []netip.Addr) []netip.Addr {
	out := make([]netip.Addr, 0, min(len(addrs), maxResolvedAddrs))
	for _, a := range addrs {
		a = a.Unmap()
		if !a.IsValid() || a.IsLoopback() || a.IsUnspecified() || a.IsMulticast() {
			continue
		}
		out = append(out, a)
		if len(out) == maxResolvedAddrs {
			break
		}
	}
	return out
}
