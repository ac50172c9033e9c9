package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// Authenticator decides who presented token (a Kubernetes service account
// token, without the "Bearer " prefix). meshd backs it with a TokenReview and
// a pod lookup; it returns an error for anything it cannot vouch for.
type Authenticator func(ctx context.Context, token string) (xdsnode.Principal, error)

// bearerToken takes the token from the stream's "authorization" metadata and
// refuses streams that did not arrive over TLS.
func bearerToken(ctx context.Context) (string, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return "", status.Error(codes.Unauthenticated, "no peer information on the stream")
	}
	if _, ok := p.AuthInfo.(credentials.TLSInfo); !ok {
		return "", status.Error(codes.Unauthenticated, "meshd serves xDS only over TLS")
	}
	md, _ := metadata.FromIncomingContext(ctx)
	vals := md.Get("authorization")
	if len(vals) != 1 {
		return "", status.Error(codes.Unauthenticated, "missing authorization metadata: send the service account token as \"Bearer <token>\"")
	}
	tok, ok := strings.CutPrefix(vals[0], "Bearer ")
	if !ok || tok == "" {
		return "", status.Error(codes.Unauthenticated, "authorization metadata is not \"Bearer <token>\"")
	}
	return tok, nil
}

// NewGRPCServer returns a gRPC server that serves only over TLS with cfg
// (use cfg.GetCertificate to serve a certificate that the CA renews), with
// keepalives that notice vanished peers; opts are appended.
func NewGRPCServer(cfg *tls.Config, opts ...grpc.ServerOption) (*grpc.Server, error) {
	if cfg == nil || (len(cfg.Certificates) == 0 && cfg.GetCertificate == nil && cfg.GetConfigForClient == nil) {
		return nil, errors.New("new xds grpc server: a TLS config with a serving certificate is required")
	}
	cfg = cfg.Clone()
	if cfg.MinVersion < tls.VersionTLS12 {
		cfg.MinVersion = tls.VersionTLS12
	}
	return grpc.NewServer(append([]grpc.ServerOption{
		grpc.Creds(credentials.NewTLS(cfg)),
		// Find dead clients (a node gone without a FIN) within a minute,
		// and let clients ping as often as client.keepaliveTime.
		grpc.KeepaliveParams(keepalive.ServerParameters{Time: 30 * time.Second, Timeout: 10 * time.Second}),
		grpc.KeepaliveEnforcementPolicy(keepalive.EnforcementPolicy{MinTime: 15 * time.Second, PermitWithoutStream: true}),
	}, opts...)...), nil
}
