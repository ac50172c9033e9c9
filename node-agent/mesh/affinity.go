package mesh

import (
	"net/netip"
	"sync"
	"time"
)

// maxAffinities bounds the remembered client/service pairs. A node runs at
// most a few hundred pods, each talking to some services: far fewer. When
// full of live entries, a new client's pick is not remembered (it is still
// load balanced) until entries expire.
const maxAffinities = 1 << 16

// affinities remembers, for services with ClientIP session affinity
// (model.Service.SessionAffinity), the endpoint each client's last
// connection to a service address went to, as kube-proxy's "recent" match
// does per client IP: a connection within the timeout of the last one goes
// to the same endpoint if it is still ready, and renews the timeout.
//
// The client is the pod (its UID): kube-proxy keys by source IP, and a pod
// has one per family; the node agent knows the pod before the address.
type affinities struct {
	mu    sync.Mutex
	m     map[affinityKey]affinity
	swept time.Time // when expired entries were last dropped
}

// sweepEvery is how often put drops expired entries, so that a client
// that stopped calling costs nothing after its timeout.
const sweepEvery = time.Minute

type affinityKey struct {
	client  string         // the client pod's UID
	service netip.AddrPort // the service address dialled (VIP and port)
}

type affinity struct {
	endpoint netip.AddrPort
	expires  time.Time
}

// get returns k's endpoint while its entry is fresh, renewing it.
func (a *affinities) get(k affinityKey, now time.Time, timeout time.Duration) (netip.AddrPort, bool) {
	a.mu.Lock()
	defer a.mu.Unlock()
	e, ok := a.m[k]
	if !ok || !now.Before(e.expires) {
		return netip.AddrPort{}, false
	}
	e.expires = now.Add(timeout)
	a.m[k] = e
	return e.endpoint, true
}

// put remembers k's endpoint for timeout from now. Expired entries are
// dropped at most every sweepEvery, and at the bound; if the bound is
// still reached, k is not remembered.
func (a *affinities) put(k affinityKey, ep netip.AddrPort, now time.Time, timeout time.Duration) {
	a.mu.Lock()
	defer a.mu.Unlock()
	if a.m == nil {
		a.m = map[affinityKey]affinity{}
	}
	_, known := a.m[k]
	full := !known && len(a.m) >= maxAffinities
	if full || now.Sub(a.swept) >= sweepEvery {
		a.swept = now
		for key, e := range a.m {
			if !now.Before(e.expires) {
				delete(a.m, key)
			}
		}
		if full && len(a.m) >= maxAffinities {
			return
		}
	}
	a.m[k] = affinity{endpoint: ep, expires: now.Add(timeout)}
}

// forget drops every entry of client (a pod that left the mesh).
func (a *affinities) forget(client string) {
	a.mu.Lock()
	defer a.mu.Unlock()
	for k := range a.m {
		if k.client == client {
			delete(a.m, k)
		}
	}
}
