package model

import "sort"

// MTLSMode is a peer authentication mode, as Istio's PeerAuthentication.MutualTLS.Mode.
type MTLSMode string

// Mutual TLS modes.
const (
	// MTLSUnset inherits from the level above; at the top it means PERMISSIVE.
	MTLSUnset MTLSMode = "UNSET"
	// MTLSDisable accepts plaintext only (the mesh does not terminate mTLS).
	MTLSDisable MTLSMode = "DISABLE"
	// MTLSPermissive accepts both mTLS (HBONE) and plaintext.
	MTLSPermissive MTLSMode = "PERMISSIVE"
	// MTLSStrict accepts only mTLS (HBONE).
	MTLSStrict MTLSMode = "STRICT"
)

// PeerAuthentication is one translated PeerAuthentication object.
type PeerAuthentication struct {
	// Meta names the object and carries its creation time for "oldest wins".
	Meta ObjectMeta
	// Selector is the workload selector's matchLabels; nil means namespace-wide
	// (or mesh-wide in the root namespace). An empty non-nil map also means
	// namespace-wide, as in Istio.
	Selector map[string]string
	// Mode is the policy's mode; MTLSUnset inherits.
	Mode MTLSMode
	// PortModes holds port-level overrides, keyed by the workload's (target) port.
	// Istio applies them only for policies with a selector; the translator drops
	// them elsewhere.
	PortModes map[uint32]MTLSMode
}

// PeerAuthResult is the resolved peer authentication for one workload.
type PeerAuthResult struct {
	// Mode applies to every port not in PortModes. Never MTLSUnset.
	Mode MTLSMode
	// PortModes overrides Mode for specific target ports. Never holds MTLSUnset.
	PortModes map[uint32]MTLSMode
	// Policies names the policies that contributed, most specific first.
	Policies []NamespacedName
}

// ModeFor returns the effective mode for a target port.
func (r PeerAuthResult) ModeFor(port uint32) MTLSMode {
	if m, ok := r.PortModes[port]; ok {
		return m
	}
	if r.Mode == "" || r.Mode == MTLSUnset {
		return MTLSPermissive
	}
	return r.Mode
}

// ResolvePeerAuthentication applies Istio's peer authentication precedence for
// a workload in namespace ns with the given labels.
//
// Istio documents (security concepts, "Peer authentication" and the
// PeerAuthentication reference):
//   - a policy in the root namespace without a selector is mesh-wide; a policy
//     in another namespace without a selector is namespace-wide; a policy with
//     a selector applies to matching workloads of its namespace only;
//   - the narrowest wins: workload > namespace > mesh;
//   - "If there are more than one mesh-wide / namespace-wide / workload-specific
//     policies ... Istio applies the oldest one";
//   - a mode of UNSET inherits from the parent level; with nothing set the
//     mode is PERMISSIVE;
//   - portLevelMtls applies only with a selector, overrides the workload's
//     mode for that port, and UNSET there inherits the workload's mode.
func ResolvePeerAuthentication(policies []*PeerAuthentication, rootNamespace, ns string, labels map[string]string) PeerAuthResult {
	var mesh, nsWide, wl *PeerAuthentication
	pick := func(cur, p *PeerAuthentication) *PeerAuthentication {
		if cur == nil || p.Meta.Older(cur.Meta) {
			return p
		}
		return cur
	}
	for _, p := range policies {
		switch {
		case len(p.Selector) == 0 && p.Meta.Namespace == rootNamespace:
			mesh = pick(mesh, p)
		case len(p.Selector) == 0 && p.Meta.Namespace == ns:
			nsWide = pick(nsWide, p)
		case len(p.Selector) > 0 && p.Meta.Namespace == ns && SelectorMatches(p.Selector, labels):
			wl = pick(wl, p)
		}
	}
	res := PeerAuthResult{Mode: MTLSPermissive}
	// Walk from the widest level to the narrowest so narrower non-UNSET modes win.
	for _, p := range []*PeerAuthentication{mesh, nsWide, wl} {
		if p == nil {
			continue
		}
		res.Policies = append([]NamespacedName{p.Meta.Key()}, res.Policies...)
		if p.Mode != MTLSUnset && p.Mode != "" {
			res.Mode = p.Mode
		}
	}
	if wl != nil && len(wl.PortModes) > 0 {
		res.PortModes = make(map[uint32]MTLSMode, len(wl.PortModes))
		for port, m := range wl.PortModes {
			if m == MTLSUnset || m == "" {
				m = res.Mode
			}
			res.PortModes[port] = m
		}
	}
	return res
}

// SelectorMatches reports whether labels satisfy every key=value of sel.
// An empty selector matches everything.
func SelectorMatches(sel, labels map[string]string) bool {
	for k, v := range sel {
		if got, ok := labels[k]; !ok || got != v {
			return false
		}
	}
	return true
}

// sortNames sorts names by namespace then name.
func sortNames(names []NamespacedName) {
	sort.Slice(names, func(i, j int) bool {
		if names[i].Namespace != names[j].Namespace {
			return names[i].Namespace < names[j].Namespace
		}
		return names[i].Name < names[j].Name
	})
}
