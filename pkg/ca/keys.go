package ca

import (
	"bytes"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net/url"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Istio's cacerts file and Secret key names.
const (
	CACertFile    = "ca-cert.pem"
	CAKeyFile     = "ca-key.pem"
	CertChainFile = "cert-chain.pem"
	RootCertFile  = "root-cert.pem"
)

// DefaultRootTTL is the lifetime of a generated root.
const DefaultRootTTL = 10 * 365 * 24 * time.Hour

// KeyMaterial is the CA's signing material in Istio's cacerts layout, all PEM.
type KeyMaterial struct {
	// CACert is the signing certificate (ca-cert.pem).
	CACert []byte
	// CAKey is the signing certificate's private key (ca-key.pem), PKCS#8, PKCS#1 or SEC 1.
	CAKey []byte
	// CertChain is the chain from CACert up to the root (cert-chain.pem); it
	// may be empty when CACert is the root.
	CertChain []byte
	// RootCert holds the root certificate(s) clients trust (root-cert.pem).
	RootCert []byte
}

// FromSecretData reads key material from a Secret's (or a directory's) data
// keyed by Istio's file names. ca-cert.pem, ca-key.pem and root-cert.pem are
// required.
func FromSecretData(data map[string][]byte) (*KeyMaterial, error) {
	k := &KeyMaterial{CACert: data[CACertFile], CAKey: data[CAKeyFile], CertChain: data[CertChainFile], RootCert: data[RootCertFile]}
	for name, v := range map[string][]byte{CACertFile: k.CACert, CAKeyFile: k.CAKey, RootCertFile: k.RootCert} {
		if len(v) == 0 {
			return nil, fmt.Errorf("read cacerts: %s is missing or empty", name)
		}
	}
	if _, err := k.parse(); err != nil {
		return nil, err
	}
	return k, nil
}

// SecretData returns the material keyed by Istio's file names.
func (k *KeyMaterial) SecretData() map[string][]byte {
	return map[string][]byte{CACertFile: k.CACert, CAKeyFile: k.CAKey, CertChainFile: k.CertChain, RootCertFile: k.RootCert}
}

// GenerateRoot creates a self-signed ECDSA P-256 root for td, valid for ttl
// (zero means 10 years).
func GenerateRoot(td spiffeid.TrustDomain, ttl time.Duration) (*KeyMaterial, error) {
	if td.IsZero() {
		return nil, errors.New("generate root: empty trust domain")
	}
	if ttl <= 0 {
		ttl = DefaultRootTTL
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate root key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("draw serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{Organization: []string{td.Name()}, CommonName: "meshlet root CA"},
		NotBefore:             now.Add(-backdate),
		NotAfter:              now.Add(ttl),
		URIs:                  []*url.URL{td.ID().URL()},
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, key.Public(), key)
	if err != nil {
		return nil, fmt.Errorf("create root certificate: %w", err)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal root key: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	return &KeyMaterial{
		CACert:   certPEM,
		CAKey:    pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		RootCert: certPEM,
	}, nil
}

type parsed struct {
	key   crypto.Signer
	cert  *x509.Certificate
	chain []*x509.Certificate // between cert and root, exclusive
	roots []*x509.Certificate
}

func (k *KeyMaterial) parse() (*parsed, error) {
	certs, err := parsePEMCerts(k.CACert)
	if err != nil || len(certs) == 0 {
		return nil, fmt.Errorf("parse %s: %w", CACertFile, orNone(err))
	}
	cert := certs[0]
	if !cert.IsCA || cert.KeyUsage&x509.KeyUsageCertSign == 0 {
		return nil, fmt.Errorf("parse %s: certificate %q is not a CA (needs CA:true and keyCertSign)", CACertFile, cert.Subject)
	}
	key, err := parsePEMKey(k.CAKey)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", CAKeyFile, err)
	}
	pub, ok := key.Public().(interface{ Equal(crypto.PublicKey) bool })
	if !ok || !pub.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("parse %s: key does not match %s", CAKeyFile, CACertFile)
	}
	roots, err := parsePEMCerts(k.RootCert)
	if err != nil || len(roots) == 0 {
		return nil, fmt.Errorf("parse %s: %w", RootCertFile, orNone(err))
	}
	chainCerts, err := parsePEMCerts(k.CertChain)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", CertChainFile, err)
	}
	var chain []*x509.Certificate
	for _, c := range chainCerts {
		if c.Equal(cert) || isSelfSigned(c) {
			continue
		}
		chain = append(chain, c)
	}
	rootPool, inter := x509.NewCertPool(), x509.NewCertPool()
	for _, r := range roots {
		rootPool.AddCert(r)
	}
	for _, c := range chain {
		inter.AddCert(c)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("verify %s against %s and %s: %w", CACertFile, CertChainFile, RootCertFile, err)
	}
	return &parsed{key: key, cert: cert, chain: chain, roots: roots}, nil
}

// ServingCertificate signs a TLS serving certificate for meshd's own gRPC
// endpoints with the DNS names given, valid for ttl (zero means the CA's
// default TTL), and returns it with its chain for tls.Config.
func (c *CA) ServingCertificate(dnsNames []string, ttl time.Duration) (*tls.Certificate, error) {
	if len(dnsNames) == 0 {
		return nil, errors.New("serving certificate: no DNS names")
	}
	if ttl <= 0 {
		ttl = c.opts.DefaultTTL
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate serving key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("draw serial: %w", err)
	}
	now := c.opts.Now()
	notAfter := now.Add(ttl)
	m := c.mat.Load()
	if notAfter.After(m.cert.NotAfter) {
		notAfter = m.cert.NotAfter
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: dnsNames[0]},
		NotBefore:    now.Add(-backdate),
		NotAfter:     notAfter,
		DNSNames:     dnsNames,
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, m.cert, key.Public(), m.signer)
	if err != nil {
		return nil, fmt.Errorf("sign serving certificate: %w", err)
	}
	leaf, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse serving certificate: %w", err)
	}
	out := &tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key, Leaf: leaf}
	if !m.signerIsRoot {
		out.Certificate = append(out.Certificate, m.cert.Raw)
	}
	for _, ch := range m.chain {
		out.Certificate = append(out.Certificate, ch.Raw)
	}
	return out, nil
}

// EncodePEM returns certs as concatenated PEM blocks.
func EncodePEM(certs []*x509.Certificate) []byte {
	var b bytes.Buffer
	for _, c := range certs {
		_ = pem.Encode(&b, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	return b.Bytes()
}

func parsePEMCerts(b []byte) ([]*x509.Certificate, error) {
	var out []*x509.Certificate
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse certificate: %w", err)
		}
		out = append(out, c)
	}
	return out, nil
}

func parsePEMKey(b []byte) (crypto.Signer, error) {
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, errors.New("no PEM block")
	}
	var k any
	var err error
	switch blk.Type {
	case "EC PRIVATE KEY":
		k, err = x509.ParseECPrivateKey(blk.Bytes)
	case "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(blk.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(blk.Bytes)
	}
	if err != nil {
		return nil, fmt.Errorf("parse private key: %w", err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("private key of type %T cannot sign", k)
	}
	return s, nil
}

func orNone(err error) error {
	if err != nil {
		return err
	}
	return errors.New("no certificate found")
}
