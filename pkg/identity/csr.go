package identity

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"fmt"
	"net/url"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// NewCSR creates a fresh ECDSA P-256 key and a PKCS#10 certificate signing
// request (DER) for id, with id as its one and only URI SAN and no other SAN.
// The key stays in memory; the caller pairs it with the issued chain.
func NewCSR(id spiffeid.ID) (csrDER []byte, key crypto.Signer, err error) {
	if id.IsZero() {
		return nil, nil, fmt.Errorf("create CSR: empty SPIFFE ID")
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate key: %w", err)
	}
	u := id.URL()
	tmpl := &x509.CertificateRequest{
		URIs:               []*url.URL{u},
		SignatureAlgorithm: x509.ECDSAWithSHA256,
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, tmpl, k)
	if err != nil {
		return nil, nil, fmt.Errorf("create CSR: %w", err)
	}
	return der, k, nil
}
