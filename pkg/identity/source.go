package identity

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ErrNoSVID is returned by an SVIDSource that has not been given an SVID yet.
var ErrNoSVID = errors.New("no SVID yet: the certificate has not been issued")

// SVIDSource holds one workload's current X.509 SVID (chain and private key)
// in memory. It implements x509svid.Source, so it plugs into go-spiffe's
// tlsconfig; Set swaps the SVID atomically and new handshakes use the new one
// while established connections keep theirs.
type SVIDSource struct {
	svid atomic.Pointer[x509svid.SVID]
}

// NewSVIDSource returns a source holding svid; svid may be nil, in which case
// GetX509SVID returns ErrNoSVID until Set is called.
func NewSVIDSource(svid *x509svid.SVID) *SVIDSource {
	s := &SVIDSource{}
	if svid != nil {
		s.svid.Store(svid)
	}
	return s
}

// Set replaces the SVID. It refuses an SVID without certificates or key, or one
// whose SPIFFE ID differs from the one already held (an identity never changes
// under a source).
func (s *SVIDSource) Set(svid *x509svid.SVID) error {
	if svid == nil || len(svid.Certificates) == 0 || svid.PrivateKey == nil {
		return errors.New("set SVID: empty certificate chain or key")
	}
	if old := s.svid.Load(); old != nil && old.ID != svid.ID {
		return fmt.Errorf("set SVID: identity %s differs from the source's %s", svid.ID, old.ID)
	}
	s.svid.Store(svid)
	return nil
}

// GetX509SVID returns the current SVID, for go-spiffe's tlsconfig.
func (s *SVIDSource) GetX509SVID() (*x509svid.SVID, error) {
	svid := s.svid.Load()
	if svid == nil {
		return nil, ErrNoSVID
	}
	return svid, nil
}

// Expiry returns the NotAfter of the current leaf certificate, or the zero
// time when there is none.
func (s *SVIDSource) Expiry() time.Time {
	svid := s.svid.Load()
	if svid == nil {
		return time.Time{}
	}
	return svid.Certificates[0].NotAfter
}

// BundleSource holds the trust bundles (root certificates per trust domain) in
// memory, and the aliases of a trust domain. It implements
// x509bundle.Source; SetBundle replaces one trust domain's bundle
// atomically, SetAliases its aliases.
//
// An alias is Istio's trust domain alias (the mesh config's
// trustDomainAliases): a mesh moving from trust domain A to B runs as B
// with alias A, its one CA signing both names, so that workloads whose
// certificates still name A are served until they renew. An alias's SVIDs
// are verified against the roots of the trust domain it is an alias of,
// and follow that one's SetBundle; a trust domain with a bundle of its own
// is verified against that bundle even when it is named an alias too.
// Whether a peer of an alias is accepted is the TLS authorizer's decision
// (Aliases tells it which trust domains stand for one another).
//
// A handshake reads the trust of its moment; Changed and Watch tell those
// that hold established connections (pkg/hbone's Reverify) when it changed.
type BundleSource struct {
	mu      sync.Mutex // serializes writers
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
	aliases map[spiffeid.TrustDomain][]spiffeid.TrustDomain // trust domain → its aliases
	changed chan struct{}                                   // closed when a writer publishes a different view
	// view is what lookups read: bundles, plus each alias's with the roots
	// of the trust domain it is an alias of. Rebuilt whole on each change
	// (rare), so that handshakes read it without a lock.
	view atomic.Pointer[bundleView]
}

// bundleView is one immutable state of a BundleSource.
type bundleView struct {
	set     *x509bundle.Set
	aliases map[spiffeid.TrustDomain][]spiffeid.TrustDomain
}

// NewBundleSource returns a source holding the given bundles.
func NewBundleSource(bundles ...*x509bundle.Bundle) *BundleSource {
	s := &BundleSource{bundles: make(map[spiffeid.TrustDomain]*x509bundle.Bundle), aliases: make(map[spiffeid.TrustDomain][]spiffeid.TrustDomain),
		changed: make(chan struct{})}
	for _, b := range bundles {
		s.bundles[b.TrustDomain()] = b.Clone()
	}
	s.publishLocked()
	return s
}

// SetBundle replaces the bundle of b's trust domain. An empty bundle is refused:
// it would make every peer of that trust domain fail verification.
func (s *BundleSource) SetBundle(b *x509bundle.Bundle) error {
	if b == nil || b.Empty() {
		return errors.New("set trust bundle: bundle has no X.509 authorities")
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.bundles[b.TrustDomain()] = b.Clone()
	s.publishLocked()
	return nil
}

// SetAliases makes aliases the aliases of td, replacing those set before
// (none: td has no aliases). An alias stands for one trust domain: zero
// values, td itself, repeats, and trust domains that are already another's
// alias or have aliases of their own are left out, and a td that is
// another's alias gets none.
func (s *BundleSource) SetAliases(td spiffeid.TrustDomain, aliases []spiffeid.TrustDomain) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.aliases, td)
	var keep []spiffeid.TrustDomain
	for _, a := range aliases {
		if a.IsZero() || a == td || slices.Contains(keep, a) || len(s.aliases[a]) > 0 || s.aliasOfLocked(a) || s.aliasOfLocked(td) {
			continue
		}
		keep = append(keep, a)
	}
	if len(keep) > 0 {
		s.aliases[td] = keep
	}
	s.publishLocked()
}

func (s *BundleSource) aliasOfLocked(a spiffeid.TrustDomain) bool {
	for _, as := range s.aliases {
		if slices.Contains(as, a) {
			return true
		}
	}
	return false
}

// publishLocked rebuilds the view lookups read and, when it differs from
// the one before, wakes Changed's waiters. meshd pushes the whole trust
// bundle on every change of any part of it, so most calls change nothing;
// comparing here keeps those from re-verifying every connection.
func (s *BundleSource) publishLocked() {
	v := &bundleView{set: x509bundle.NewSet(), aliases: make(map[spiffeid.TrustDomain][]spiffeid.TrustDomain, len(s.aliases))}
	for _, b := range s.bundles {
		v.set.Add(b)
	}
	for td, as := range s.aliases {
		v.aliases[td] = slices.Clone(as)
		b, ok := s.bundles[td]
		if !ok {
			continue
		}
		for _, a := range as {
			if !v.set.Has(a) {
				v.set.Add(x509bundle.FromX509Authorities(a, b.X509Authorities()))
			}
		}
	}
	if old := s.view.Swap(v); old != nil && !v.equal(old) {
		close(s.changed)
		s.changed = make(chan struct{})
	}
}

// equal reports whether v and o trust the same roots for the same trust
// domains, with the same aliases.
func (v *bundleView) equal(o *bundleView) bool {
	if v.set.Len() != o.set.Len() || len(v.aliases) != len(o.aliases) {
		return false
	}
	for _, b := range v.set.Bundles() {
		if ob, ok := o.set.Get(b.TrustDomain()); !ok || !b.Equal(ob) {
			return false
		}
	}
	for td, as := range v.aliases {
		if !slices.Equal(as, o.aliases[td]) {
			return false
		}
	}
	return true
}

// Changed returns a channel closed at the next SetBundle or SetAliases
// that changes the trust: the roots of a trust domain or an alias. A call
// that leaves both as they were closes nothing.
func (s *BundleSource) Changed() <-chan struct{} {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.changed
}

// Watch calls f once at once and again after each change of the trust
// (Changed), on the calling goroutine, until ctx ends. Changes that come
// while f runs make one more call, not one each. The first call covers
// whatever changed before Watch began, so a caller need not start it
// before its first connection. f runs without s's lock: it may read s.
func (s *BundleSource) Watch(ctx context.Context, f func()) {
	for {
		ch := s.Changed()
		f()
		select {
		case <-ctx.Done():
			return
		case <-ch:
		}
	}
}

// GetX509BundleForTrustDomain returns td's bundle, for go-spiffe: for an
// alias, the roots of the trust domain it is an alias of.
func (s *BundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	b, ok := s.view.Load().set.Get(td)
	if !ok {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td)
	}
	return b, nil
}

// Aliases returns the trust domains that name the same workloads as td:
// td's aliases, or, when td is an alias, the trust domain it is an alias
// of and that one's other aliases. Nil when there are none. The caller may
// keep the slice.
func (s *BundleSource) Aliases(td spiffeid.TrustDomain) []spiffeid.TrustDomain {
	v := s.view.Load()
	if as, ok := v.aliases[td]; ok {
		return slices.Clone(as)
	}
	for own, as := range v.aliases {
		if slices.Contains(as, td) {
			out := append(make([]spiffeid.TrustDomain, 0, len(as)), own)
			return append(out, slices.DeleteFunc(slices.Clone(as), func(a spiffeid.TrustDomain) bool { return a == td })...)
		}
	}
	return nil
}

// SameWorkload reports whether a and b name one workload: they are equal,
// or they have one path and their trust domains stand for one another
// (Aliases).
func (s *BundleSource) SameWorkload(a, b spiffeid.ID) bool {
	if a == b {
		return true
	}
	if a.Path() != b.Path() || a.IsZero() || b.IsZero() {
		return false
	}
	v := s.view.Load()
	ta, tb := a.TrustDomain(), b.TrustDomain()
	if slices.Contains(v.aliases[ta], tb) || slices.Contains(v.aliases[tb], ta) {
		return true
	}
	for _, as := range v.aliases {
		if slices.Contains(as, ta) && slices.Contains(as, tb) {
			return true
		}
	}
	return false
}
