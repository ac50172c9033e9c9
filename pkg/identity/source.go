package identity

import (
	"errors"
	"fmt"
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
// memory. It implements x509bundle.Source; SetBundle replaces one trust
// domain's bundle atomically.
type BundleSource struct {
	mu      sync.RWMutex
	bundles map[spiffeid.TrustDomain]*x509bundle.Bundle
}

// NewBundleSource returns a source holding the given bundles.
func NewBundleSource(bundles ...*x509bundle.Bundle) *BundleSource {
	s := &BundleSource{bundles: make(map[spiffeid.TrustDomain]*x509bundle.Bundle)}
	for _, b := range bundles {
		s.bundles[b.TrustDomain()] = b.Clone()
	}
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
	return nil
}

// GetX509BundleForTrustDomain returns td's bundle, for go-spiffe.
func (s *BundleSource) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	b, ok := s.bundles[td]
	if !ok {
		return nil, fmt.Errorf("no trust bundle for trust domain %q", td)
	}
	return b, nil
}
