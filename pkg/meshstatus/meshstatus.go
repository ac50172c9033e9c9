// Package meshstatus is the status report each meshd replica publishes in a
// ConfigMap of its namespace (meshd-status-<pod>, label
// meshlet.dev/meshd-status=true, key status.json) and `meshctl status` and
// `proxy-status` read: the node agents and waypoints connected to it, what
// they acknowledged or rejected, and the certificates it signed. A ConfigMap
// rather than an HTTP endpoint, because meshd's debug endpoints stay on
// loopback and meshctl reads the cluster through the API server with the
// user's own RBAC. The package holds only the wire shape: no logic.
package meshstatus

import (
	"strings"
	"time"
)

// Where a report lives.
const (
	// Label marks a status ConfigMap (value "true").
	Label = "meshlet.dev/meshd-status"
	// Key is the ConfigMap data key holding the JSON Report.
	Key = "status.json"
	// NamePrefix starts a status ConfigMap's name; the replica's pod name follows.
	NamePrefix = "meshd-status-"
	// Interval is how often a replica rewrites its report; a report much
	// older than this is stale (its replica is stuck or gone).
	Interval = 5 * time.Second
	// LeaderLease is the Lease (coordination.k8s.io) in meshd's namespace
	// held by the replica that deploys waypoints and gateways and writes
	// the status of Gateway API objects and ServiceEntries; its
	// holderIdentity is LeaderIdentity's.
	LeaderLease = "meshd-leader"
)

// LeaderIdentity is a replica's holderIdentity in the leader Lease: its pod
// name, then a nonce telling a restarted container from the one before.
func LeaderIdentity(pod, nonce string) string { return pod + "_" + nonce }

// LeaderPod is the pod name in a LeaderIdentity.
func LeaderPod(identity string) string {
	pod, _, _ := strings.Cut(identity, "_")
	return pod
}

// Report is the JSON in a status ConfigMap.
type Report struct {
	Meshd      string    `json:"meshd"`
	Updated    time.Time `json:"updated"`
	Generation string    `json:"generation"`
	Clients    []Client  `json:"clients"`
	Certs      []Cert    `json:"certificates"`
}

// Client is one connected node agent or waypoint/gateway.
type Client struct {
	NodeID    string            `json:"nodeID"`
	Role      string            `json:"role"`
	Node      string            `json:"node,omitempty"`
	Namespace string            `json:"namespace,omitempty"`
	Name      string            `json:"name,omitempty"`
	Connected time.Time         `json:"connected"`
	Acked     map[string]string `json:"acked"`
	NACK      *NACK             `json:"nack,omitempty"`
	// Certs are the certificates the client reported holding when it
	// connected (identity and expiry only), whoever signed them.
	Certs []Cert `json:"certificates,omitempty"`
}

// NACK is a client's latest rejection of a push.
type NACK struct {
	TypeURL string    `json:"typeURL"`
	Version string    `json:"version"`
	Error   string    `json:"error"`
	At      time.Time `json:"at"`
}

// Cert is the latest certificate this replica signed for one
// identity on one caller (a node's agent or a pod).
type Cert struct {
	Node     string    `json:"node,omitempty"`
	Pod      string    `json:"pod,omitempty"` // namespace/name
	Identity string    `json:"identity"`
	NotAfter time.Time `json:"notAfter"`
}
