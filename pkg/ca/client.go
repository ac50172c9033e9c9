package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// IssuerOptions configure the client side of CreateCertificate.
type IssuerOptions struct {
	// Conn is a gRPC connection to meshd's CA (TLS, trusting meshd's root). Required.
	Conn grpc.ClientConnInterface
	// Token returns the caller's service account token for each call, so a
	// rotated projected token is picked up. Required.
	Token func() (string, error)
	// TTL is the lifetime asked for; zero lets the CA choose (24h by default).
	TTL time.Duration
}

// NewIssuer returns a function that sends a CSR (DER) to meshd and returns the
// issued chain, leaf first, without the root — what identity.RenewerOptions.Issue
// expects.
func NewIssuer(opts IssuerOptions) (func(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error), error) {
	if opts.Conn == nil || opts.Token == nil {
		return nil, errors.New("new CA issuer: Conn and Token are required")
	}
	client := securityv1alpha1.NewIstioCertificateServiceClient(opts.Conn)
	return func(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error) {
		tok, err := opts.Token()
		if err != nil {
			return nil, fmt.Errorf("read service account token: %w", err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		resp, err := client.CreateCertificate(ctx, &securityv1alpha1.IstioCertificateRequest{
			Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
			ValidityDuration: int64(opts.TTL / time.Second),
		})
		if err != nil {
			return nil, fmt.Errorf("create certificate: %w", err)
		}
		var chain []*x509.Certificate
		for _, s := range resp.GetCertChain() {
			certs, err := parsePEMCerts([]byte(s))
			if err != nil {
				return nil, fmt.Errorf("parse issued chain: %w", err)
			}
			chain = append(chain, certs...)
		}
		// Istio puts the root last; the SVID chain stops below it.
		if n := len(chain); n > 1 && isSelfSigned(chain[n-1]) {
			chain = chain[:n-1]
		}
		if len(chain) == 0 {
			return nil, errors.New("create certificate: empty chain in response")
		}
		return chain, nil
	}, nil
}
