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
	opts   Options
	signer crypto.Signer
	cert   *x509.Certificate   // signing certificate
	chain  []*x509.Certificate // intermediates above cert, up to but excluding the root
	roots  []*x509.Certificate
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
	return &CA{opts: opts, signer: p.key, cert: p.cert, chain: p.chain, roots: p.roots, signerIsRoot: isSelfSigned(p.cert)}, nil
}

// Roots returns the root certificates clients must trust.
func (c *CA) Roots() []*x509.Certificate { return c.roots }

// Bundle returns the trust bundle of the CA's trust domain.
func (c *CA) Bundle() *x509bundle.Bundle {
	return x509bundle.FromX509Authorities(c.opts.TrustDomain, c.roots)
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
	now := c.opts.Now()
	notAfter := now.Add(ttl)
	if notAfter.After(c.cert.NotAfter) {
		notAfter = c.cert.NotAfter
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
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, csr.PublicKey, c.signer)
	if err != nil {
		return nil, fmt.Errorf("sign certificate for %s: %w", id, err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse signed certificate: %w", err)
	}
	out := make([]*x509.Certificate, 0, 2+len(c.chain))
	out = append(out, leaf)
	if !c.signerIsRoot {
		out = append(out, c.cert)
	}
	return append(out, c.chain...), nil
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
