// Package caclient is the client side of meshd's CA (Istio's
// IstioCertificateService): it sends a CSR with the caller's service account
// token and returns the issued chain. It is apart from package ca, which
// holds meshd's side and its Kubernetes dependencies, so that node agents
// and waypoints link none of those (the waypoint's RSS fell by about 19 MB).
package caclient

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// DefaultTimeout bounds one issuance, retries included, when the caller's
// context has no deadline.
const DefaultTimeout = 30 * time.Second

// Options configure an issuer.
type Options struct {
	// Conn is a gRPC connection to meshd's CA (TLS, trusting meshd's root). Required.
	Conn grpc.ClientConnInterface
	// Token returns the caller's service account token for each call, so a
	// rotated projected token is picked up. Required.
	Token func(ctx context.Context) (string, error)
	// TTL is the lifetime asked for; zero lets the CA choose (24h by default).
	TTL time.Duration
}

// New returns a function that sends a CSR (DER) to meshd and returns the
// issued chain, leaf first, without the root — what identity.RenewerOptions.Issue
// expects.
func New(opts Options) (func(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error), error) {
	if opts.Conn == nil || opts.Token == nil {
		return nil, errors.New("new CA issuer: Conn and Token are required")
	}
	client := securityv1alpha1.NewIstioCertificateServiceClient(opts.Conn)
	return func(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error) {
		tok, err := opts.Token(ctx)
		if err != nil {
			return nil, fmt.Errorf("read service account token: %w", err)
		}
		ctx = metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+tok)
		if _, ok := ctx.Deadline(); !ok {
			var cancel context.CancelFunc
			ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
			defer cancel()
		}
		req := &securityv1alpha1.IstioCertificateRequest{
			Csr:              string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csrDER})),
			ValidityDuration: int64(opts.TTL / time.Second),
		}
		// While meshd rolls, its old replica stops and the connection
		// moves to the new one: the call waits for a ready connection
		// (WaitForReady) and is sent again when a stopping server dropped
		// it (Unavailable), within ctx, so that no issuance fails for it.
		var resp *securityv1alpha1.IstioCertificateResponse
		for wait := 50 * time.Millisecond; ; wait = min(2*wait, time.Second) {
			resp, err = client.CreateCertificate(ctx, req, grpc.WaitForReady(true))
			if status.Code(err) != codes.Unavailable {
				break
			}
			t := time.NewTimer(wait)
			select {
			case <-ctx.Done():
				t.Stop()
				return nil, fmt.Errorf("create certificate: %w", err)
			case <-t.C:
			}
		}
		if err != nil {
			return nil, fmt.Errorf("create certificate: %w", err)
		}
		var chain []*x509.Certificate
		for _, s := range resp.GetCertChain() {
			rest := []byte(s)
			for {
				var blk *pem.Block
				if blk, rest = pem.Decode(rest); blk == nil {
					break
				}
				if blk.Type != "CERTIFICATE" {
					continue
				}
				c, err := x509.ParseCertificate(blk.Bytes)
				if err != nil {
					return nil, fmt.Errorf("parse issued chain: %w", err)
				}
				chain = append(chain, c)
			}
		}
		// Istio puts the root last; the SVID chain stops below it.
		if n := len(chain); n > 1 && chain[n-1].CheckSignatureFrom(chain[n-1]) == nil {
			chain = chain[:n-1]
		}
		if len(chain) == 0 {
			return nil, errors.New("create certificate: empty chain in response")
		}
		return chain, nil
	}, nil
}
