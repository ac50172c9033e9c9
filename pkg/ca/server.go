package ca

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

// ServerOptions configure the gRPC certificate service.
type ServerOptions struct {
	// CA signs the certificates. Required.
	CA *CA
	// Authenticate turns the caller's bearer token into a Caller, e.g.
	// (*TokenReviewer).Authenticate. Required.
	Authenticate func(ctx context.Context, token string) (Caller, error)
	// Logger receives one line per refusal with the reason; nil means slog.Default().
	Logger *slog.Logger
	// Observe, if set, is called after every request with its outcome (nil
	// error when signed), e.g. to count CSRs signed and refused.
	Observe func(err error)
	// Issued, if set, is called with every certificate signed and its
	// caller, e.g. for the status report of who holds which certificate
	// until when.
	Issued func(caller Caller, leaf *x509.Certificate)
}

// Server implements Istio's IstioCertificateService (istio.v1.auth), so
// istio-agent and meshlet's node agent use the same API.
type Server struct {
	securityv1alpha1.UnimplementedIstioCertificateServiceServer
	opts ServerOptions
}

// NewServer checks opts and returns a Server; register it with
// securityv1alpha1.RegisterIstioCertificateServiceServer.
func NewServer(opts ServerOptions) (*Server, error) {
	if opts.CA == nil || opts.Authenticate == nil {
		return nil, errors.New("new CA server: CA and Authenticate are required")
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	return &Server{opts: opts}, nil
}

// CreateCertificate authenticates the caller from its "authorization: Bearer"
// metadata, signs the PEM CSR and returns the chain as PEM strings, leaf first
// and root last, as Istio does.
func (s *Server) CreateCertificate(ctx context.Context, req *securityv1alpha1.IstioCertificateRequest) (*securityv1alpha1.IstioCertificateResponse, error) {
	resp, err := s.create(ctx, req)
	if s.opts.Observe != nil {
		s.opts.Observe(err)
	}
	return resp, err
}

func (s *Server) create(ctx context.Context, req *securityv1alpha1.IstioCertificateRequest) (*securityv1alpha1.IstioCertificateResponse, error) {
	caller, err := s.opts.Authenticate(ctx, bearerToken(ctx))
	if err != nil {
		s.opts.Logger.Warn("CSR refused", "reason", err)
		return nil, status.Error(codes.Unauthenticated, fmt.Sprintf("authenticate caller: %v", err))
	}
	blk, _ := pem.Decode([]byte(req.GetCsr()))
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		s.opts.Logger.Warn("CSR refused", "caller", caller.Username, "reason", "csr is not a PEM CERTIFICATE REQUEST")
		return nil, status.Error(codes.InvalidArgument, "csr is not a PEM CERTIFICATE REQUEST block")
	}
	chain, err := s.opts.CA.Sign(ctx, caller, blk.Bytes, time.Duration(req.GetValidityDuration())*time.Second)
	if err != nil {
		s.opts.Logger.Warn("CSR refused", "caller", caller.Username, "reason", err)
		code := codes.Internal
		switch {
		case errors.Is(err, ErrBadCSR):
			code = codes.InvalidArgument
		case errors.Is(err, ErrNotAuthorized):
			code = codes.PermissionDenied
		}
		return nil, status.Error(code, err.Error())
	}
	if s.opts.Issued != nil && len(chain) > 0 {
		s.opts.Issued(caller, chain[0])
	}
	out := make([]string, 0, len(chain)+len(s.opts.CA.Roots()))
	for _, c := range chain {
		out = append(out, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})))
	}
	for _, r := range s.opts.CA.Roots() {
		out = append(out, string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})))
	}
	return &securityv1alpha1.IstioCertificateResponse{CertChain: out}, nil
}

func bearerToken(ctx context.Context) string {
	md, ok := metadata.FromIncomingContext(ctx)
	if !ok {
		return ""
	}
	for _, v := range md.Get("authorization") {
		if tok, ok := strings.CutPrefix(v, "Bearer "); ok {
			return strings.TrimSpace(tok)
		}
	}
	return ""
}
