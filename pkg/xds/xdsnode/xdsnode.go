// Package xdsnode is what an xDS client of meshd says about itself: its
// principal, encoded as the xDS node id, and the certificates it holds, as
// node metadata. Clients (node agents, waypoints) import it instead of
// pkg/xds, which would link meshd's xDS server and every Envoy resource type
// into them.
package xdsnode

import (
	"errors"
	"fmt"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/structpb"
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

// A client reports the certificates it holds in its xDS node metadata, so a
// meshd replica that did not sign them (it restarted, or another replica
// did) still knows when they expire.
const (
	// MetadataCertificates is the node metadata key: a list of
	// {"identity": <SPIFFE ID>, "notAfter": <RFC 3339>}.
	MetadataCertificates = "MESHLET_CERTIFICATES"
	// maxReportedCerts bounds the entries read from one client, and
	// maxReportedIdentity one identity's length: the metadata comes from the
	// network.
	maxReportedCerts    = 512
	maxReportedIdentity = 2048
)

// NodeCert is one certificate a client holds.
type NodeCert struct {
	Identity string
	NotAfter time.Time
}

// CertsMetadata encodes certs as node metadata.
func CertsMetadata(certs []NodeCert) *structpb.Struct {
	list := make([]*structpb.Value, 0, len(certs))
	for _, c := range certs {
		list = append(list, structpb.NewStructValue(&structpb.Struct{Fields: map[string]*structpb.Value{
			"identity": structpb.NewStringValue(c.Identity),
			"notAfter": structpb.NewStringValue(c.NotAfter.UTC().Format(time.RFC3339)),
		}}))
	}
	return &structpb.Struct{Fields: map[string]*structpb.Value{
		MetadataCertificates: structpb.NewListValue(&structpb.ListValue{Values: list}),
	}}
}

// CertsFromMetadata decodes what CertsMetadata encoded, skipping malformed
// entries and keeping at most maxReportedCerts.
func CertsFromMetadata(md *structpb.Struct) []NodeCert {
	var out []NodeCert
	for _, v := range md.GetFields()[MetadataCertificates].GetListValue().GetValues() {
		if len(out) == maxReportedCerts {
			break
		}
		f := v.GetStructValue().GetFields()
		id := f["identity"].GetStringValue()
		na, err := time.Parse(time.RFC3339, f["notAfter"].GetStringValue())
		if id == "" || len(id) > maxReportedIdentity || err != nil {
			continue
		}
		out = append(out, NodeCert{Identity: id, NotAfter: na})
	}
	return out
}
