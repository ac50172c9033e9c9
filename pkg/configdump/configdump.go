// Package configdump is the /config_dump document of meshlet's data plane:
// what a node agent or a waypoint holds right now (the mesh model meshd
// pushed, the policies in force, the certificates it serves with), as
// Istio's ztunnel and Envoy dump theirs on their admin port. It is served on
// the loopback admin address only (pkg/admin) and read by `meshctl
// agent-config` and `meshctl proxy-config` through a port-forward.
//
// The document's own fields are lowerCamelCase; the model objects inside it
// (pkg/model) keep the encoding they have everywhere else in meshlet, that
// of the waypoint's --config-file. Keys never appear: a Certificate carries
// the chain's public facts only.
package configdump

import (
	"crypto/sha256"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"net/http"
	"slices"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// Path is where the admin server serves the document.
const Path = "/config_dump"

// AdminPort is the admin port of the node agent and the waypoint, loopback
// only (Envoy's and ztunnel's admin port).
const AdminPort = 15000

// Agent is a node agent's document.
type Agent struct {
	// Node is the node the agent runs on.
	Node string `json:"node"`
	// ConfigVersion counts the agent's model builds, one per change meshd
	// pushed (0: no config from meshd yet).
	ConfigVersion uint64 `json:"configVersion"`
	// TrustDomain is the mesh's SPIFFE trust domain.
	TrustDomain string `json:"trustDomain"`
	// TrustDomainAliases are the trust domain's aliases, whose peers the
	// agent accepts as the trust domain's; omitted when there are none.
	TrustDomainAliases []string `json:"trustDomainAliases,omitempty"`
	// RootNamespace is the namespace of mesh-wide policies.
	RootNamespace string `json:"rootNamespace"`
	// Enrolled are the UIDs of the pods on this node whose traffic the agent
	// carries, sorted.
	Enrolled []string `json:"enrolled"`
	// Workloads, Services and Waypoints are the whole mesh model the agent
	// holds (every node's workloads: it resolves destinations with them).
	Workloads []*model.Workload `json:"workloads"`
	Services  []*model.Service  `json:"services"`
	Waypoints []*model.Waypoint `json:"waypoints"`
	// AuthorizationPolicies and PeerAuthentications are the policies in
	// the model, sorted by namespace and name.
	AuthorizationPolicies []*model.AuthorizationPolicy `json:"authorizationPolicies"`
	PeerAuthentications   []*model.PeerAuthentication  `json:"peerAuthentications"`
	// Certificates are the SVIDs the agent holds, one per identity with
	// pods on the node.
	Certificates []Certificate `json:"certificates"`
}

// SetModel fills d's model fields from the snapshot s (nil: no config yet).
func (d *Agent) SetModel(s *model.Snapshot) {
	if s == nil {
		return
	}
	d.ConfigVersion, d.TrustDomain, d.RootNamespace = s.Version(), s.TrustDomain(), s.RootNamespace()
	d.TrustDomainAliases = s.TrustDomainAliases()
	d.Workloads, d.Services, d.Waypoints = s.Workloads(), s.Services(), s.Waypoints()
	d.AuthorizationPolicies = s.AuthorizationPolicies()
	d.PeerAuthentications = s.PeerAuthentications()
}

// Waypoint is a waypoint's (or ingress gateway's) document.
type Waypoint struct {
	// Gateway is the waypoint's Gateway, namespace/name.
	Gateway string `json:"gateway"`
	// Applied is when the config below was applied; zero when none was.
	Applied time.Time `json:"applied"`
	// L7 is the routing configuration in force: listeners with their
	// virtual hosts and routes, clusters with their endpoints; private keys
	// redacted (RedactL7).
	L7 *model.L7Config `json:"l7"`
	// Policies are the AuthorizationPolicies bound to the waypoint.
	Policies []*policy.Policy `json:"policies"`
	// Endpoints are the endpoints of every cluster and subset as the
	// proxy sees them now: requests in flight, outlier ejection.
	Endpoints []Endpoint `json:"endpoints"`
	// Certificates is the waypoint's own SVID.
	Certificates []Certificate `json:"certificates"`
}

// Redacted is what a dump shows in place of a private key.
const Redacted = "[redacted]"

// RedactL7 returns l7 with every private key replaced by Redacted: the
// ingress listeners' server keys (from their credential Secrets) and the
// client keys of upstream mutual TLS. The rest is shared with l7, which is
// left as it is (the proxy serves from it).
func RedactL7(l7 *model.L7Config) *model.L7Config {
	if l7 == nil {
		return nil
	}
	out := *l7
	out.Listeners = slices.Clone(l7.Listeners)
	for i := range out.Listeners {
		l := &out.Listeners[i]
		l.TLS = redactListenerTLS(l.TLS)
		l.SNI = slices.Clone(l.SNI)
		for j := range l.SNI {
			l.SNI[j] = *redactListenerTLS(&l.SNI[j])
		}
	}
	out.Clusters = slices.Clone(l7.Clusters)
	for i := range out.Clusters {
		c := &out.Clusters[i]
		c.Traffic.TLS = redactUpstreamTLS(c.Traffic.TLS)
		c.Subsets = slices.Clone(c.Subsets)
		for j := range c.Subsets {
			if t := c.Subsets[j].Traffic; t != nil {
				tc := *t
				tc.TLS = redactUpstreamTLS(t.TLS)
				c.Subsets[j].Traffic = &tc
			}
		}
	}
	// Fixed headers sent to an external authorizer may carry its
	// credentials (an Authorization header): their names only.
	out.ExtAuthz = slices.Clone(l7.ExtAuthz)
	for i := range out.ExtAuthz {
		e := &out.ExtAuthz[i]
		if len(e.AdditionalHeaders) == 0 {
			continue
		}
		h := make(map[string]string, len(e.AdditionalHeaders))
		for k := range e.AdditionalHeaders {
			h[k] = Redacted
		}
		e.AdditionalHeaders = h
	}
	// So may a tracer's headers (a collector's API key).
	if tr := l7.Telemetry.Tracer; tr != nil && len(tr.Headers) > 0 {
		t := *tr
		t.Headers = make(map[string]string, len(tr.Headers))
		for k := range tr.Headers {
			t.Headers[k] = Redacted
		}
		out.Telemetry.Tracer = &t
	}
	return &out
}

func redactListenerTLS(t *model.ListenerTLS) *model.ListenerTLS {
	if t == nil {
		return nil
	}
	c := *t
	if c.KeyPEM != "" {
		c.KeyPEM = Redacted
	}
	return &c
}

func redactUpstreamTLS(t *model.UpstreamTLS) *model.UpstreamTLS {
	if t == nil {
		return nil
	}
	c := *t
	if c.ClientKeyPEM != "" {
		c.ClientKeyPEM = Redacted
	}
	return &c
}

// Endpoint is one endpoint of a waypoint's cluster (or of one of its
// subsets, each of which keeps its own outlier state, as Istio makes one
// Envoy cluster per subset).
type Endpoint struct {
	Cluster string `json:"cluster"`
	Subset  string `json:"subset,omitempty"`
	Address string `json:"address"`
	// Active is the requests in flight to it.
	Active int64 `json:"active"`
	// EjectedUntil is set while outlier detection keeps it out.
	EjectedUntil time.Time `json:"ejectedUntil,omitzero"`
	// Ejections counts its ejections (each lasts longer).
	Ejections int `json:"ejections"`
	// Locality is its "region/zone/subzone", when the cluster balances by
	// locality.
	Locality string `json:"locality,omitempty"`
	// Priority is its place in this proxy's locality load balancing: the
	// failover level ("0" the proxy's own locality, higher when those
	// fail), a locality's weight ("weight 80"), or "none" for a locality
	// that takes no traffic; empty without locality load balancing.
	Priority string `json:"priority,omitempty"`
	// Draining is set for the endpoint of a terminating pod that only the
	// sessions pinned to it reach.
	Draining bool `json:"draining,omitempty"`
}

// Certificate is the public part of an SVID the process holds.
type Certificate struct {
	// Identity is the SPIFFE ID.
	Identity string `json:"identity"`
	// SerialNumber is the leaf's serial, in hex.
	SerialNumber string    `json:"serialNumber"`
	NotBefore    time.Time `json:"notBefore"`
	NotAfter     time.Time `json:"notAfter"`
	// Issuer is the subject of the certificate that signed the leaf.
	Issuer string `json:"issuer"`
	// Chain is the number of certificates sent in handshakes (leaf and
	// intermediates).
	Chain int `json:"chain"`
	// Fingerprint is the SHA-256 of the leaf, in hex.
	Fingerprint string `json:"fingerprint"`
}

// CertificateOf describes the SVID of identity whose chain (leaf first) is
// certs; ok is false when there is no leaf.
func CertificateOf(identity string, certs []*x509.Certificate) (c Certificate, ok bool) {
	if len(certs) == 0 || certs[0] == nil {
		return Certificate{}, false
	}
	leaf := certs[0]
	sum := sha256.Sum256(leaf.Raw)
	return Certificate{
		Identity:     identity,
		SerialNumber: leaf.SerialNumber.Text(16),
		NotBefore:    leaf.NotBefore.UTC(),
		NotAfter:     leaf.NotAfter.UTC(),
		Issuer:       leaf.Issuer.String(),
		Chain:        len(certs),
		Fingerprint:  hex.EncodeToString(sum[:]),
	}, true
}

// State says how a certificate stands at now: "expired", "not yet valid",
// "expiring" (less than a tenth of its lifetime left: renewal at half-life
// has failed for a while) or "valid".
func (c Certificate) State(now time.Time) string {
	switch {
	case !now.Before(c.NotAfter):
		return "expired"
	case now.Before(c.NotBefore):
		return "not yet valid"
	case c.NotAfter.Sub(now) < c.NotAfter.Sub(c.NotBefore)/10:
		return "expiring"
	}
	return "valid"
}

// Handler serves the document doc returns, as JSON, to GET requests.
func Handler(doc func() any) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet && r.Method != http.MethodHead {
			w.Header().Set("Allow", "GET, HEAD")
			http.Error(w, "config_dump: only GET", http.StatusMethodNotAllowed)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		w.Header().Set("Cache-Control", "no-store")
		enc := json.NewEncoder(w)
		enc.SetIndent("", "  ")
		_ = enc.Encode(doc())
	})
}
