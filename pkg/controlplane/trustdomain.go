package controlplane

import (
	"slices"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// Trust domains in AuthorizationPolicy principals, as Istio reads them
// (its trust domain bundle): a principal is "<trust domain>/ns/<ns>/sa/<sa>",
// and one naming the mesh's trust domain, one of the mesh config's
// trustDomainAliases, or "cluster.local" (Istio's name for the local trust
// domain, which its documentation and most policies use whatever the
// mesh's is) matches that identity in each of them. So a policy written
// for "cluster.local/ns/default/sa/sleep" keeps working on a mesh
// installed with another trust domain, and a mesh moving to a new one
// keeps its policies through the move (Istio's trust domain migration).
// A principal naming another trust domain matches only that one, and is
// warned about (a typo, most often); "*" as trust domain matches any.
//
// The data plane reads the aliases too, as Istio's does: the snapshot
// carries them (model.SnapshotInput.TrustDomainAliases), pkg/xds pushes
// them with the mesh's trust bundle, and node agents and waypoints accept a
// peer of an alias as one of the mesh's trust domain — its SVID verified
// against the mesh's roots (one CA signs both names), and
// spiffe://<alias>/ns/x/sa/y taken for spiffe://<trust domain>/ns/x/sa/y
// where an identity is expected. So workloads still holding certificates
// of the old trust domain keep being served while they renew, and since a
// peer is evaluated by its principal as presented, the expansion above
// lets the same policies admit them. An invalid alias is warned about and
// left out everywhere.

// clusterLocal is the trust domain Istio takes a principal's "cluster.local"
// to stand for the mesh's own.
const clusterLocal = "cluster.local"

// trustDomains returns the mesh's trust domain, then the mesh config's
// trustDomainAliases that are valid trust domain names (others reported and
// left out), once each.
func (bd *build) trustDomains() []string {
	if bd.tds != nil {
		return bd.tds
	}
	bd.tds = []string{bd.opts.TrustDomain}
	mc := bd.meshConfig()
	if mc == nil {
		return bd.tds
	}
	r := bd.rejecter(KindMeshConfig, bd.opts.RootNamespace, meshConfigName)
	if td := mc.GetTrustDomain(); td != "" && td != bd.opts.TrustDomain {
		r.warn("trustDomain %q differs from meshd's --trust-domain %q (the chart's trustDomain value), which is the one used: set them alike", td, bd.opts.TrustDomain)
	}
	for _, a := range mc.GetTrustDomainAliases() {
		if _, err := spiffeid.TrustDomainFromString(a); err != nil || strings.Contains(a, "/") {
			r.warn("trustDomainAliases: %q is not a trust domain name (lowercase letters, digits, '.', '-', '_'): left out", a)
			continue
		}
		if !slices.Contains(bd.tds, a) {
			bd.tds = append(bd.tds, a)
		}
	}
	return bd.tds
}

// trustDomainAliases returns the valid aliases of trustDomains, nil for none.
func (bd *build) trustDomainAliases() []string {
	if tds := bd.trustDomains(); len(tds) > 1 {
		return slices.Clone(tds[1:])
	}
	return nil
}

// principalsInTrustDomains returns principals with each one that names one
// of tds (the mesh's trust domain first, then its aliases) or
// "cluster.local" replaced by the same identity in each of tds (a
// principal whose trust domain is a pattern, "*-td", kept as it is for the
// trust domains it matches). foreign is called for a principal naming a
// trust domain outside them.
func principalsInTrustDomains(principals, tds []string, foreign func(principal string)) []string {
	if len(principals) == 0 {
		return principals
	}
	out := make([]string, 0, len(principals))
	for _, p := range principals {
		parts := strings.Split(p, "/")
		if len(parts) != 5 || parts[0] == "*" {
			// Not a principal of the trust domain form (a pattern, or
			// "spiffe://..."): matched as written.
			out = append(out, p)
			continue
		}
		td := parts[0]
		if td != clusterLocal && !slices.ContainsFunc(tds, func(t string) bool { return trustDomainMatch(td, t) }) {
			foreign(p)
			out = append(out, p)
			continue
		}
		for _, t := range tds {
			q := p
			if !patternSuffix(td, t) {
				q = t + p[len(td):]
			}
			if !slices.Contains(out, q) {
				out = append(out, q)
			}
		}
	}
	return out
}

// trustDomainMatch reports whether trust domains a and b match, either
// being a pattern with a leading or trailing "*".
func trustDomainMatch(a, b string) bool {
	return a == b || a == "*" || b == "*" ||
		patternPrefix(a, b) || patternPrefix(b, a) || patternSuffix(a, b) || patternSuffix(b, a)
}

// patternPrefix reports whether pattern ends in "*" and s starts with the
// rest.
func patternPrefix(pattern, s string) bool {
	rest, ok := strings.CutSuffix(pattern, "*")
	return ok && strings.HasPrefix(s, rest)
}

// patternSuffix reports whether pattern starts with "*" and s ends with the
// rest.
func patternSuffix(pattern, s string) bool {
	rest, ok := strings.CutPrefix(pattern, "*")
	return ok && strings.HasSuffix(s, rest)
}
