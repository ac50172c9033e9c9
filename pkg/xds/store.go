package xds

import (
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"strings"

	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/protobuf/proto"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
)

// store is the server's current desired state. It is guarded by Server.mu.
type store struct {
	workloads typeSet // uid → *Workload
	services  typeSet // namespace/hostname → *Service
	addresses typeSet // uid or namespace/hostname → *Address
	authz     typeSet // namespace/name → *Authorization
	peerAuthn typeSet // uid → *PeerAuthentication
	bundles   typeSet // trust domain → *TrustBundle, as served (putBundle)
	waypoints typeSet // namespace/name → *WaypointConfig

	roots     map[string]*meshv1.TrustBundle // trust domain → the bundle SetTrustBundle was given
	tdAliases map[string][]string            // trust domain → its aliases, from the last Apply of a snapshot of it
}

func newStore() *store {
	return &store{workloads: typeSet{}, services: typeSet{}, addresses: typeSet{}, authz: typeSet{}, peerAuthn: typeSet{}, bundles: typeSet{}, waypoints: typeSet{},
		roots: map[string]*meshv1.TrustBundle{}, tdAliases: map[string][]string{}}
}

// putBundle makes the served bundle of trust domain td its roots with the
// aliases Apply's snapshots name for it (the bundle's own before any
// Apply of that trust domain).
func (s *store) putBundle(td string) error {
	b, ok := s.roots[td]
	if !ok {
		delete(s.bundles, td)
		return nil
	}
	if aliases, ok := s.tdAliases[td]; ok {
		b = proto.CloneOf(b)
		b.Aliases = aliases
	}
	e, err := newEntry(b)
	if err != nil {
		return err
	}
	s.bundles[td] = e
	return nil
}

// frozen is an immutable copy of a store plus the indexes views need.
type frozen struct {
	workloads, addresses, authz, peerAuthn, bundles, waypoints typeSet
	byNode, byWaypoint                                         map[string]map[string]struct{}
}

func (s *store) freeze() *frozen {
	f := &frozen{
		workloads:  maps.Clone(s.workloads),
		addresses:  maps.Clone(s.addresses),
		authz:      maps.Clone(s.authz),
		peerAuthn:  maps.Clone(s.peerAuthn),
		bundles:    maps.Clone(s.bundles),
		waypoints:  maps.Clone(s.waypoints),
		byNode:     map[string]map[string]struct{}{},
		byWaypoint: map[string]map[string]struct{}{},
	}
	add := func(idx map[string]map[string]struct{}, key, uid string) {
		if idx[key] == nil {
			idx[key] = map[string]struct{}{}
		}
		idx[key][uid] = struct{}{}
	}
	// A service's waypoint forwards to the workloads behind it, so it needs
	// them (their identities, to verify each upstream) as much as the
	// workloads whose own waypoint it is.
	svcWaypoint := map[string]string{}
	for key, e := range f.addresses {
		if svc := e.msg.(*meshv1.Address).GetService(); svc != nil {
			if wp := svc.GetWaypoint(); wp != nil {
				svcWaypoint[key] = wp.GetNamespace() + "/" + wp.GetName()
			}
		}
	}
	for uid, e := range f.workloads {
		w := e.msg.(*meshv1.Workload)
		if w.GetNode() != "" {
			add(f.byNode, w.GetNode(), uid)
		}
		if wp := w.GetWaypoint(); wp != nil {
			add(f.byWaypoint, wp.GetNamespace()+"/"+wp.GetName(), uid)
		}
		for svc := range w.GetServices() {
			if wp, ok := svcWaypoint[svc]; ok {
				add(f.byWaypoint, wp, uid)
			}
		}
	}
	return f
}

// newEntry clones msg (the caller keeps ownership of its copy) and hashes it.
func newEntry(msg proto.Message) (entry, error) {
	c := proto.Clone(msg)
	b, err := cache.MarshalResource(c)
	if err != nil {
		return entry{}, fmt.Errorf("marshal %T: %w", msg, err)
	}
	return entry{msg: types.Resource(c), version: cache.HashResource(b)}, nil
}

// ServiceKey is the resource name of a service in the address index.
func ServiceKey(s *meshv1.Service) string { return s.GetNamespace() + "/" + s.GetHostname() }

func workloadAddress(w *meshv1.Workload) *meshv1.Address {
	return &meshv1.Address{Type: &meshv1.Address_Workload{Workload: &meshv1.WorkloadAddress{
		Uid:           w.GetUid(),
		Name:          w.GetName(),
		Namespace:     w.GetNamespace(),
		Addresses:     w.GetAddresses(),
		Node:          w.GetNode(),
		Identity:      w.GetIdentity(),
		Waypoint:      w.GetWaypoint(),
		Enrolled:      w.GetEnrolled(),
		Services:      w.GetServices(),
		Network:       w.GetNetwork(),
		Status:        w.GetStatus(),
		CanonicalName: w.GetCanonicalName(),
		WorkloadName:  w.GetWorkloadName(),
		Locality:      w.GetLocality(),
		// What a waypoint reports of the workload as a client (its
		// labels: translateWorkloadEntries).
		CanonicalRevision: w.GetCanonicalRevision(),
	}}}
}

func validateIPs(what string, ips []string) error {
	for _, ip := range ips {
		if _, err := netip.ParseAddr(ip); err != nil {
			return fmt.Errorf("%s: address %q is not an IP: %w", what, ip, err)
		}
	}
	return nil
}

func validateBlocks(what string, blocks []string) error {
	for _, b := range blocks {
		if _, err := netip.ParsePrefix(b); err == nil {
			continue
		}
		if _, err := netip.ParseAddr(b); err != nil {
			return fmt.Errorf("%s: ipBlock %q is neither a CIDR nor an IP", what, b)
		}
	}
	return nil
}

func validateWorkload(w *meshv1.Workload) error {
	if w.GetUid() == "" {
		return fmt.Errorf("workload %s/%s has no uid", w.GetNamespace(), w.GetName())
	}
	what := "workload " + w.GetUid()
	if err := validateIPs(what, w.GetAddresses()); err != nil {
		return err
	}
	if id := w.GetIdentity(); id != "" && !strings.HasPrefix(id, "spiffe://") {
		return fmt.Errorf("%s: identity %q is not a spiffe:// URI", what, id)
	}
	if wp := w.GetWaypoint(); wp != nil && (wp.GetNamespace() == "" || wp.GetName() == "") {
		return fmt.Errorf("%s: waypoint needs a namespace and a name", what)
	}
	return nil
}

func validateService(s *meshv1.Service) error {
	if s.GetNamespace() == "" || s.GetHostname() == "" {
		return fmt.Errorf("service %q needs a namespace and a hostname", s.GetName())
	}
	return validateIPs("service "+ServiceKey(s), s.GetVips())
}

func validateAuthorization(a *meshv1.Authorization) error {
	if a.GetNamespace() == "" || a.GetName() == "" {
		return errors.New("authorization needs a namespace and a name")
	}
	what := "authorization " + a.GetNamespace() + "/" + a.GetName()
	for _, r := range a.GetRules() {
		for _, f := range r.GetFrom() {
			if err := validateBlocks(what, append(f.GetIpBlocks(), f.GetNotIpBlocks()...)); err != nil {
				return err
			}
		}
		for _, t := range r.GetTo() {
			if err := validateBlocks(what, append(t.GetIpBlocks(), t.GetNotIpBlocks()...)); err != nil {
				return err
			}
			for _, p := range append(t.GetPorts(), t.GetNotPorts()...) {
				if p == 0 || p > 65535 {
					return fmt.Errorf("%s: port %d is out of range 1-65535", what, p)
				}
			}
		}
	}
	return nil
}

func validateTrustBundle(b *meshv1.TrustBundle) error {
	if b.GetTrustDomain() == "" {
		return errors.New("trust bundle has no trust domain")
	}
	if err := validateTrustDomainAliases(b.GetAliases()); err != nil {
		return fmt.Errorf("trust bundle %s: %w", b.GetTrustDomain(), err)
	}
	for i, p := range b.GetRootsPem() {
		blk, rest := pem.Decode([]byte(p))
		if blk == nil || blk.Type != "CERTIFICATE" {
			return fmt.Errorf("trust bundle %s: root %d is not a PEM CERTIFICATE", b.GetTrustDomain(), i)
		}
		if len(strings.TrimSpace(string(rest))) > 0 {
			return fmt.Errorf("trust bundle %s: root %d holds more than one PEM block: give one root per entry", b.GetTrustDomain(), i)
		}
		if _, err := x509.ParseCertificate(blk.Bytes); err != nil {
			return fmt.Errorf("trust bundle %s: parse root %d: %w", b.GetTrustDomain(), i, err)
		}
	}
	return nil
}

// validateTrustDomainAliases refuses an alias that is no trust domain name
// (meshd's builder leaves those out, warning).
func validateTrustDomainAliases(aliases []string) error {
	for _, a := range aliases {
		if _, err := spiffeid.TrustDomainFromString(a); err != nil {
			return fmt.Errorf("alias %q: %w", a, err)
		}
	}
	return nil
}
