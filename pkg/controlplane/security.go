package controlplane

import (
	"net/netip"
	"net/url"
	"strconv"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"

	"github.com/meshlet/meshlet/pkg/model"
)

// translatePeerAuthentications validates and translates PeerAuthentications.
func (bd *build) translatePeerAuthentications() {
	for _, k := range sortedKeys(bd.in.peerAuths) {
		c := bd.in.peerAuths[k]
		if p := translatePeerAuthentication(c, bd.rejecter(KindPeerAuthentication, c.meta.Namespace, c.meta.Name)); p != nil {
			bd.peerAuths = append(bd.peerAuths, p)
		}
	}
}

func mtlsMode(m securityapi.PeerAuthentication_MutualTLS_Mode) (model.MTLSMode, bool) {
	switch m {
	case securityapi.PeerAuthentication_MutualTLS_UNSET:
		return model.MTLSUnset, true
	case securityapi.PeerAuthentication_MutualTLS_DISABLE:
		return model.MTLSDisable, true
	case securityapi.PeerAuthentication_MutualTLS_PERMISSIVE:
		return model.MTLSPermissive, true
	case securityapi.PeerAuthentication_MutualTLS_STRICT:
		return model.MTLSStrict, true
	}
	return "", false
}

func translatePeerAuthentication(c config[securityapi.PeerAuthentication], r *rejections) *model.PeerAuthentication {
	spec := c.spec
	p := &model.PeerAuthentication{
		Meta: model.ObjectMeta{Namespace: c.meta.Namespace, Name: c.meta.Name, Created: c.meta.CreationTimestamp.Time},
		Mode: model.MTLSUnset,
	}
	if sel := spec.GetSelector(); sel != nil {
		p.Selector = sel.GetMatchLabels()
	}
	if m := spec.GetMtls(); m != nil {
		mode, ok := mtlsMode(m.GetMode())
		if !ok {
			r.reject("mtls.mode %d is not UNSET, DISABLE, PERMISSIVE or STRICT", m.GetMode())
			return nil
		}
		p.Mode = mode
	}
	if len(spec.GetPortLevelMtls()) > 0 && len(p.Selector) == 0 {
		// Istio: "portLevelMtls ... only applies when a workload selector is set".
		r.warn("portLevelMtls is ignored without a selector")
	}
	if len(p.Selector) > 0 {
		for port, m := range spec.GetPortLevelMtls() {
			if port == 0 || port > 65535 {
				r.reject("portLevelMtls port %d out of range 1-65535", port)
				return nil
			}
			if m == nil {
				continue
			}
			mode, ok := mtlsMode(m.GetMode())
			if !ok {
				r.reject("portLevelMtls[%d].mode %d is not UNSET, DISABLE, PERMISSIVE or STRICT", port, m.GetMode())
				return nil
			}
			if p.PortModes == nil {
				p.PortModes = make(map[uint32]model.MTLSMode)
			}
			p.PortModes[port] = mode
		}
	}
	return p
}

// authzBinding is a validated AuthorizationPolicy's scope for L4 binding.
type authzBinding struct {
	name     model.NamespacedName
	mesh     bool              // root namespace, no selector: every workload
	selector map[string]string // nil: namespace-wide
}

// translateAuthorizationPolicies validates AuthorizationPolicies and records
// the ones enforced by node agents (those not bound to a waypoint by targetRefs).
func (bd *build) translateAuthorizationPolicies() {
	for _, k := range sortedKeys(bd.in.authzs) {
		c := bd.in.authzs[k]
		r := bd.rejecter(KindAuthorizationPolicy, c.meta.Namespace, c.meta.Name)
		b, ok := validateAuthorizationPolicy(c, bd.opts.RootNamespace, r)
		if ok && b != nil {
			bd.authz = append(bd.authz, *b)
		}
	}
}

// validateAuthorizationPolicy checks one policy; it returns the L4 binding,
// or nil with ok true for a valid policy that targets a waypoint instead.
func validateAuthorizationPolicy(c config[securityapi.AuthorizationPolicy], rootNS string, r *rejections) (*authzBinding, bool) {
	spec := c.spec
	targeted := spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0
	if spec.GetSelector() != nil && targeted {
		r.reject("only one of selector and targetRef(s) may be set")
		return nil, false
	}
	switch spec.GetAction() {
	case securityapi.AuthorizationPolicy_ALLOW, securityapi.AuthorizationPolicy_DENY, securityapi.AuthorizationPolicy_AUDIT:
	case securityapi.AuthorizationPolicy_CUSTOM:
		r.reject("action CUSTOM (external authorization) is not supported by meshlet")
		return nil, false
	default:
		r.reject("action %d is not ALLOW, DENY, AUDIT or CUSTOM", spec.GetAction())
		return nil, false
	}
	refs := append([]*typeapi.PolicyTargetReference{spec.GetTargetRef()}, spec.GetTargetRefs()...)
	for _, tr := range refs {
		if tr == nil {
			continue
		}
		switch tr.GetKind() {
		case "Gateway", "Service", "ServiceEntry", "GatewayClass":
		default:
			r.reject("targetRef kind %q: want Gateway, Service, ServiceEntry or GatewayClass", tr.GetKind())
			return nil, false
		}
		if tr.GetName() == "" {
			r.reject("targetRef of kind %s has no name", tr.GetKind())
			return nil, false
		}
	}
	for i, rule := range spec.GetRules() {
		if rule == nil {
			continue
		}
		for _, f := range rule.GetFrom() {
			src := f.GetSource()
			for _, blocks := range [][]string{src.GetIpBlocks(), src.GetNotIpBlocks(), src.GetRemoteIpBlocks(), src.GetNotRemoteIpBlocks()} {
				for _, b := range blocks {
					if !validIPBlock(b) {
						r.reject("rules[%d].from ipBlock %q is not an IP address or CIDR", i, b)
						return nil, false
					}
				}
			}
		}
		for _, t := range rule.GetTo() {
			op := t.GetOperation()
			for _, ports := range [][]string{op.GetPorts(), op.GetNotPorts()} {
				for _, p := range ports {
					if n, err := strconv.ParseUint(p, 10, 16); err != nil || n == 0 {
						r.reject("rules[%d].to port %q is not a port number 1-65535", i, p)
						return nil, false
					}
				}
			}
		}
		for _, w := range rule.GetWhen() {
			if w.GetKey() == "" {
				r.reject("rules[%d].when has a condition without key", i)
				return nil, false
			}
		}
	}
	if targeted {
		return nil, true
	}
	b := &authzBinding{name: model.NamespacedName{Namespace: c.meta.Namespace, Name: c.meta.Name}}
	if sel := spec.GetSelector(); sel != nil && len(sel.GetMatchLabels()) > 0 {
		b.selector = sel.GetMatchLabels()
	} else if c.meta.Namespace == rootNS {
		b.mesh = true
	}
	return b, true
}

func validIPBlock(s string) bool {
	if strings.Contains(s, "/") {
		_, err := netip.ParsePrefix(s)
		return err == nil
	}
	_, err := netip.ParseAddr(s)
	return err == nil
}

// authzFor returns the L4 policies bound to a workload: mesh-wide ones from
// the root namespace, namespace-wide ones, and selector matches in its namespace.
func (bd *build) authzFor(ns string, labels map[string]string) []model.NamespacedName {
	var out []model.NamespacedName
	for _, b := range bd.authz {
		switch {
		case b.mesh:
		case b.name.Namespace != ns:
			continue
		case b.selector != nil && !model.SelectorMatches(b.selector, labels):
			continue
		}
		out = append(out, b.name)
	}
	return out // bd.authz is sorted by key, so out is too
}

// validateRequestAuthentications checks JWT rules: an issuer and a usable key source.
func (bd *build) validateRequestAuthentications() {
	for _, k := range sortedKeys(bd.in.requestAuths) {
		c := bd.in.requestAuths[k]
		r := bd.rejecter(KindRequestAuthentication, c.meta.Namespace, c.meta.Name)
		if c.spec.GetSelector() != nil && (c.spec.GetTargetRef() != nil || len(c.spec.GetTargetRefs()) > 0) {
			r.reject("only one of selector and targetRef(s) may be set")
			continue
		}
		for i, rule := range c.spec.GetJwtRules() {
			if rule.GetIssuer() == "" {
				r.reject("jwtRules[%d] has no issuer", i)
				break
			}
			if u := rule.GetJwksUri(); u != "" {
				pu, err := url.Parse(u)
				if err != nil || (pu.Scheme != "https" && pu.Scheme != "http") || pu.Host == "" {
					r.reject("jwtRules[%d].jwksUri %q is not an http(s) URL", i, u)
					break
				}
			}
		}
	}
}
