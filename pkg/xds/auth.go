package xds

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"
)

// Role is what kind of client a stream belongs to; it decides the view.
type Role string

const (
	// RoleNodeAgent is a node agent: it reads its own node's workloads.
	RoleNodeAgent Role = "node-agent"
	// RoleWaypoint is a waypoint: it reads the workloads it serves.
	RoleWaypoint Role = "waypoint"
)

// Principal is who an authenticated client is and so what it may read.
type Principal struct {
	// Role selects the view.
	Role Role
	// Node is the node agent's Kubernetes node name (RoleNodeAgent only).
	Node string
	// Namespace and Name name the waypoint's Gateway (RoleWaypoint only),
	// as istio.io/use-waypoint names it.
	Namespace, Name string
}

// NodeID is the xDS node id a client with this principal must send:
// "node-agent~<node>" or "waypoint~<namespace>/<name>".
func (p Principal) NodeID() string {
	switch p.Role {
	case RoleNodeAgent:
		return string(RoleNodeAgent) + "~" + p.Node
	case RoleWaypoint:
		return string(RoleWaypoint) + "~" + p.Namespace + "/" + p.Name
	}
	return ""
}

// Validate reports what is missing from p.
func (p Principal) Validate() error {
	switch p.Role {
	case RoleNodeAgent:
		if p.Node == "" {
			return errors.New("node agent principal has no node name")
		}
	case RoleWaypoint:
		if p.Namespace == "" || p.Name == "" {
			return errors.New("waypoint principal needs a namespace and a name")
		}
	default:
		return fmt.Errorf("unknown role %q (want %q or %q)", p.Role, RoleNodeAgent, RoleWaypoint)
	}
	return nil
}

// ParseNodeID is the inverse of Principal.NodeID.
func ParseNodeID(id string) (Principal, error) {
	role, rest, ok := strings.Cut(id, "~")
	if !ok {
		return Principal{}, fmt.Errorf("parse node id %q: want <role>~<name>", id)
	}
	p := Principal{Role: Role(role)}
	switch p.Role {
	case RoleNodeAgent:
		p.Node = rest
	case RoleWaypoint:
		p.Namespace, p.Name, _ = strings.Cut(rest, "/")
	}
	if err := p.Validate(); err != nil {
		return Principal{}, fmt.Errorf("parse node id %q: %w", id, err)
	}
	return p, nil
}

// Authenticator decides who presented token (a Kubernetes service account
// token, without the "Bearer " prefix). meshd backs it with a TokenReview and
// a pod lookup; it returns an error for anything it cannot vouch for.
type Authenticator func(ctx context.Context, token string) (Principal, error)

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
