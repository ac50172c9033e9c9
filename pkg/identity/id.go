package identity

import (
	"errors"
	"fmt"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"k8s.io/apimachinery/pkg/util/validation"
)

// DefaultTrustDomain is the trust domain used when none is configured, as in Istio.
const DefaultTrustDomain = "cluster.local"

// ErrNotWorkload is returned for a SPIFFE ID whose path is not /ns/<ns>/sa/<sa>.
var ErrNotWorkload = errors.New("not a workload identity: want spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>")

// Workload is a Kubernetes workload identity: a service account in a namespace,
// in a trust domain.
type Workload struct {
	// TrustDomain is the SPIFFE trust domain, e.g. cluster.local.
	TrustDomain spiffeid.TrustDomain
	// Namespace is the Kubernetes namespace of the service account.
	Namespace string
	// ServiceAccount is the Kubernetes service account name.
	ServiceAccount string
}

// NewID returns spiffe://<td>/ns/<ns>/sa/<sa>, checking that ns and sa are
// valid Kubernetes names.
func NewID(td spiffeid.TrustDomain, ns, sa string) (spiffeid.ID, error) {
	return Workload{TrustDomain: td, Namespace: ns, ServiceAccount: sa}.ID()
}

// ID returns the SPIFFE ID of w.
func (w Workload) ID() (spiffeid.ID, error) {
	if w.TrustDomain.IsZero() {
		return spiffeid.ID{}, errors.New("build workload identity: empty trust domain")
	}
	if errs := validation.IsDNS1123Label(w.Namespace); len(errs) > 0 {
		return spiffeid.ID{}, fmt.Errorf("build workload identity: namespace %q: %s", w.Namespace, strings.Join(errs, "; "))
	}
	if errs := validation.IsDNS1123Subdomain(w.ServiceAccount); len(errs) > 0 {
		return spiffeid.ID{}, fmt.Errorf("build workload identity: service account %q: %s", w.ServiceAccount, strings.Join(errs, "; "))
	}
	id, err := spiffeid.FromSegments(w.TrustDomain, "ns", w.Namespace, "sa", w.ServiceAccount)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("build workload identity: %w", err)
	}
	return id, nil
}

// String returns the SPIFFE ID as a string, or "" when w is not valid.
func (w Workload) String() string {
	id, err := w.ID()
	if err != nil {
		return ""
	}
	return id.String()
}

// Parse parses a workload SPIFFE ID such as
// spiffe://cluster.local/ns/default/sa/bookinfo.
func Parse(s string) (Workload, error) {
	id, err := spiffeid.FromString(s)
	if err != nil {
		return Workload{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, err)
	}
	w, err := FromID(id)
	if err != nil {
		return Workload{}, fmt.Errorf("parse SPIFFE ID %q: %w", s, err)
	}
	return w, nil
}

// FromID returns the workload named by id, or ErrNotWorkload when its path is
// not /ns/<ns>/sa/<sa> with valid Kubernetes names.
func FromID(id spiffeid.ID) (Workload, error) {
	if id.IsZero() {
		return Workload{}, errors.New("empty SPIFFE ID")
	}
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" {
		return Workload{}, fmt.Errorf("path %q: %w", id.Path(), ErrNotWorkload)
	}
	w := Workload{TrustDomain: id.TrustDomain(), Namespace: parts[1], ServiceAccount: parts[3]}
	if _, err := w.ID(); err != nil {
		return Workload{}, err
	}
	return w, nil
}

// ParseTrustDomains parses trust domain names (the trust domain aliases
// meshd pushes), leaving out those that do not parse; the error joins
// theirs.
func ParseTrustDomains(names []string) ([]spiffeid.TrustDomain, error) {
	var out []spiffeid.TrustDomain
	var errs []error
	for _, n := range names {
		td, err := spiffeid.TrustDomainFromString(n)
		if err != nil {
			errs = append(errs, fmt.Errorf("trust domain %q: %w", n, err))
			continue
		}
		out = append(out, td)
	}
	return out, errors.Join(errs...)
}
