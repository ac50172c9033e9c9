package ca

import (
	"context"
	"crypto"
	"crypto/rand"
	"crypto/x509"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"slices"
	"sync/atomic"
	"time"

	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

const (
	// DefaultTTL is the lifetime of an SVID when the caller asks for none.
	DefaultTTL = 24 * time.Hour
	// DefaultMaxTTL bounds what a caller may ask for when no MaxTTL is set.
	DefaultMaxTTL = 7 * 24 * time.Hour
	// backdate keeps a fresh certificate valid on peers whose clock is a little behind.
	backdate = time.Minute
)

// ErrBadCSR is wrapped by every refusal caused by the CSR itself.
var ErrBadCSR = errors.New("bad CSR")

// ErrNotAuthorized is wrapped when the Authorizer refuses the identity.
var ErrNotAuthorized = errors.New("not authorized")

// Caller is who asked for a certificate, as authenticated from its service
// account token.
type Caller struct {
	// Username is the authenticated user, e.g.
	// system:serviceaccount:meshlet-system:node-agent.
	Username string
	// UID is the authenticated user's UID.
	UID string
	// Groups are the authenticated user's groups.
	Groups []string
	// Namespace and ServiceAccount name the caller's service account; empty
	// when the caller is not a service account.
	Namespace, ServiceAccount string
	// PodName and NodeName come from a bound token's claims
	// (authentication.kubernetes.io/pod-name, node-name); empty when absent.
	PodName, NodeName string
}

// Authorizer decides whether caller may get a certificate for id; a non-nil
// error refuses, and its text is logged and returned to the caller.
type Authorizer func(ctx context.Context, caller Caller, id spiffeid.ID) error

// Options configure a CA.
type Options struct {
	// TrustDomain is the only trust domain the CA signs for. Required.
	TrustDomain spiffeid.TrustDomain
	// Keys is the signing material (see GenerateRoot, ParseKeyMaterial). Required.
	Keys *KeyMaterial
	// Authorizer decides who may hold which identity. Required: a CA that
	// signs anything for anyone is never what is wanted.
	Authorizer Authorizer
	// DefaultTTL is used when a request asks for no TTL; zero means 24h.
	DefaultTTL time.Duration
	// MaxTTL caps requested TTLs; zero means 7 days. Requests above it are
	// shortened, not refused, as Istio does.
	MaxTTL time.Duration
	// Now returns the current time; nil means time.Now.
	Now func() time.Time
}

// CA signs workload SVIDs.
type CA struct {
	opts Options
	mat  atomic.Pointer[signing] // replaced whole by Rotate
}

// signing is one generation of the CA's material; never modified once stored.
type signing struct {
	signer crypto.Signer
	cert   *x509.Certificate   // signing certificate
	chain  []*x509.Certificate // intermediates above cert, up to but excluding the root
	roots  []*x509.Certificate // trusted roots: the signing root first, then roots kept from before a rotation
	// signerIsRoot is computed once: checking it costs a signature verification.
	signerIsRoot bool
}

// New checks opts and returns a CA.
func New(opts Options) (*CA, error) {
	if opts.TrustDomain.IsZero() {
		return nil, errors.New("new CA: empty trust domain")
	}
	if opts.Keys == nil {
		return nil, errors.New("new CA: no key material: generate a root or load cacerts")
	}
	if opts.Authorizer == nil {
		return nil, errors.New("new CA: no Authorizer")
	}
	if opts.DefaultTTL <= 0 {
		opts.DefaultTTL = DefaultTTL
	}
	if opts.MaxTTL <= 0 {
		opts.MaxTTL = DefaultMaxTTL
	}
	if opts.DefaultTTL > opts.MaxTTL {
		opts.DefaultTTL = opts.MaxTTL
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	p, err := opts.Keys.parse()
	if err != nil {
		return nil, fmt.Errorf("new CA: %w", err)
	}
	c := &CA{opts: opts}
	c.mat.Store(&signing{signer: p.key, cert: p.cert, chain: p.chain, roots: p.roots, signerIsRoot: isSelfSigned(p.cert)})
	return c, nil
}

// Rotate makes keys the CA's signing material: from its return on, every
// certificate chains to the new root. trusted are roots to keep trusting
// beside the new ones — the old roots, until what they signed has expired.
// A root must reach every client before it signs anything they will be
// shown, so callers distribute RotationRoots first and rotate after.
func (c *CA) Rotate(keys *KeyMaterial, trusted []*x509.Certificate) error {
	p, err := keys.parse()
	if err != nil {
		return fmt.Errorf("rotate CA: %w", err)
	}
	c.mat.Store(&signing{signer: p.key, cert: p.cert, chain: p.chain, roots: unionCerts(p.roots, trusted), signerIsRoot: isSelfSigned(p.cert)})
	return nil
}

// RotationRoots checks keys and returns what clients must trust across a
// rotation to them: their roots followed by the CA's current roots, without
// duplicates. Keys that do not parse are refused here, before anything is
// distributed.
func (c *CA) RotationRoots(keys *KeyMaterial) ([]*x509.Certificate, error) {
	p, err := keys.parse()
	if err != nil {
		return nil, fmt.Errorf("check new CA material: %w", err)
	}
	return unionCerts(p.roots, c.Roots()), nil
}

// SignsWith reports whether keys are the material the CA signs with now.
func (c *CA) SignsWith(keys *KeyMaterial) bool {
	p, err := keys.parse()
	return err == nil && p.cert.Equal(c.mat.Load().cert)
}

func unionCerts(lists ...[]*x509.Certificate) []*x509.Certificate {
	var out []*x509.Certificate
	for _, l := range lists {
		for _, c := range l {
			if !slices.ContainsFunc(out, c.Equal) {
				out = append(out, c)
			}
		}
	}
	return out
}

// Roots returns the root certificates clients must trust.
func (c *CA) Roots() []*x509.Certificate { return c.mat.Load().roots }

// Bundle returns the trust bundle of the CA's trust domain.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.opts.TrustDomain, c.Roots())
}

// TrustDomain returns the trust domain the CA signs for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.opts.TrustDomain }

// Sign checks csrDER, asks the Authorizer whether caller may hold the identity
// it names, and returns the signed chain, leaf first, without the root. ttl of
// zero means the default; above MaxTTL it is capped, and the leaf never
// outlives the signing certificate.
func (c *CA) Sign(ctx context.Context, caller Caller, csrDER []byte, ttl time.Duration) ([]*x509.Certificate, error) {
	csr, id, err := c.checkCSR(csrDER)
	if err != nil {
		return nil, err
	}
	if err := c.opts.Authorizer(ctx, caller, id); err != nil {
		return nil, fmt.Errorf("%w: %s may not have %s: %w", ErrNotAuthorized, callerName(caller), id, err)
	}
	if ttl < 0 {
		return nil, fmt.Errorf("%w: negative TTL %s", ErrBadCSR, ttl)
	}
	if ttl == 0 {
		ttl = c.opts.DefaultTTL
	}
	ttl = min(ttl, c.opts.MaxTTL)
	m := c.mat.Load()
	now := c.opts.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(m.cert.NotAfter) {
		notAfter = m.cert.NotAfter
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("draw serial: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		NotBefore:             now.Add(-backdate),
		NotAfter:              notAfter,
		URIs:                  []*url.URL{id.URL()},
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment | x509.KeyUsageKeyAgreement,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		BasicConstraintsValid: true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.cert, csr.PublicKey, m.signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	out := make([]*x509.Certificate, 0, 2+len(m.chain))
	out = append(out, leaf)
	if !m.signerIsRoot {
		out = append(out, m.cert)
	}
	return append(out, m.chain...), nil
}

// checkCSR parses a CSR and returns its one SPIFFE ID, refusing anything but
// exactly one URI SAN that is a workload identity in the CA's trust domain.
func (c *CA) checkCSR(der []byte) (*x509.CertificateRequest, spiffeid.ID, error) {
	csr, err := x509.ParseCertificateRequest(der)
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: parse: %w", ErrBadCSR, err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: signature: %w", ErrBadCSR, err)
	}
	if len(csr.DNSNames) > 0 || len(csr.IPAddresses) > 0 || len(csr.EmailAddresses) > 0 {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: has DNS, IP or email SANs; a workload CSR carries exactly one SPIFFE URI SAN", ErrBadCSR)
	}
	if len(csr.URIs) != 1 {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: has %d URI SANs; want exactly one SPIFFE ID", ErrBadCSR, len(csr.URIs))
	}
	id, err := spiffeid.FromURI(csr.URIs[0])
	if err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: URI SAN %q: %w", ErrBadCSR, csr.URIs[0], err)
	}
	if !id.MemberOf(c.opts.TrustDomain) {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %s is outside trust domain %s", ErrBadCSR, id, c.opts.TrustDomain)
	}
	if _, err := identity.FromID(id); err != nil {
		return nil, spiffeid.ID{}, fmt.Errorf("%w: %s: %w", ErrBadCSR, id, err)
	}
	return csr, id, nil
}

func callerName(c Caller) string {
	if c.Username != "" {
		return c.Username
	}
	return "anonymous caller"
}

func isSelfSigned(c *x509.Certificate) bool {
	return c.CheckSignatureFrom(c) == nil
}
