package controlplane

import (
	"fmt"
	"net/url"
	"strings"

	securityapi "istio.io/api/security/v1beta1"
	typeapi "istio.io/api/type/v1beta1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
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

// translateAuthorizationPolicies validates AuthorizationPolicies and
// translates them into pkg/policy's types with their scope.
func (bd *build) translateAuthorizationPolicies() {
	for _, k := range sortedKeys(bd.in.authzs) {
		c := bd.in.authzs[k]
		r := bd.rejecter(KindAuthorizationPolicy, c.meta.Namespace, c.meta.Name)
		if a := translateAuthorizationPolicy(c, bd.opts.RootNamespace, bd.trustDomains(), r); a != nil {
			bd.authz = append(bd.authz, a)
		}
	}
}

var actions = map[securityapi.AuthorizationPolicy_Action]policy.Action{
	securityapi.AuthorizationPolicy_ALLOW:  policy.Allow,
	securityapi.AuthorizationPolicy_DENY:   policy.Deny,
	securityapi.AuthorizationPolicy_AUDIT:  policy.Audit,
	securityapi.AuthorizationPolicy_CUSTOM: policy.Custom,
}

// translateAuthorizationPolicy checks one policy and returns it with its
// scope, or nil when it is rejected. Its principals (from.source and the
// source.principal condition) naming one of tds or "cluster.local" match
// the identity in each of tds (trustdomain.go).
func translateAuthorizationPolicy(c config[securityapi.AuthorizationPolicy], rootNS string, tds []string, r *rejections) *model.AuthorizationPolicy {
	foreign := func(p string) {
		r.warn("principal %q names trust domain %q, neither the mesh's %q nor one of its trustDomainAliases: it matches only peers of that trust domain",
			p, p[:strings.IndexByte(p, '/')], tds[0])
	}
	principals := func(ps []string) []string { return principalsInTrustDomains(ps, tds, foreign) }
	spec := c.spec
	targeted := spec.GetTargetRef() != nil || len(spec.GetTargetRefs()) > 0
	if spec.GetSelector() != nil && targeted {
		r.reject("only one of selector and targetRef(s) may be set")
		return nil
	}
	action, ok := actions[spec.GetAction()]
	if !ok {
		r.reject("action %d is not ALLOW, DENY, AUDIT or CUSTOM", spec.GetAction())
		return nil
	}
	a := &model.AuthorizationPolicy{Policy: &policy.Policy{
		Name:      c.meta.Name,
		Namespace: c.meta.Namespace,
		Action:    action,
		DryRun:    c.meta.Annotations["istio.io/dry-run"] == "true",
	}}
	if action == policy.Custom {
		a.Policy.Provider = spec.GetProvider().GetName()
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
			return nil
		}
		if tr.GetName() == "" {
			r.reject("targetRef of kind %s has no name", tr.GetKind())
			return nil
		}
		if tr.GetNamespace() != "" && tr.GetNamespace() != c.meta.Namespace {
			r.reject("targetRef %s/%s: a policy may only target objects of its own namespace", tr.GetNamespace(), tr.GetName())
			return nil
		}
		a.Targets = append(a.Targets, model.PolicyTarget{Kind: tr.GetKind(), Namespace: c.meta.Namespace, Name: tr.GetName()})
	}
	for i, rule := range spec.GetRules() {
		if rule == nil {
			a.Policy.Rules = append(a.Policy.Rules, policy.Rule{})
			continue
		}
		var pr policy.Rule
		for _, f := range rule.GetFrom() {
			src := f.GetSource()
			if len(src.GetTrustDomains())+len(src.GetNotTrustDomains()) > 0 {
				r.reject("rules[%d].from: trustDomains is not supported; match principals instead", i)
				return nil
			}
			ps := policy.Source{
				Principals: principals(src.GetPrincipals()), NotPrincipals: principals(src.GetNotPrincipals()),
				RequestPrincipals: src.GetRequestPrincipals(), NotRequestPrincipals: src.GetNotRequestPrincipals(),
				Namespaces: src.GetNamespaces(), NotNamespaces: src.GetNotNamespaces(),
				IPBlocks: src.GetIpBlocks(), NotIPBlocks: src.GetNotIpBlocks(),
				RemoteIPBlocks: src.GetRemoteIpBlocks(), NotRemoteIPBlocks: src.GetNotRemoteIpBlocks(),
			}
			// Istio: serviceAccounts ("ns/sa") cannot be combined with principals
			// or namespaces; it names an identity in any trust domain.
			if len(src.GetServiceAccounts())+len(src.GetNotServiceAccounts()) > 0 {
				if len(ps.Principals)+len(ps.NotPrincipals)+len(ps.Namespaces)+len(ps.NotNamespaces) > 0 {
					r.reject("rules[%d].from: serviceAccounts cannot be set with principals or namespaces", i)
					return nil
				}
				var err error
				if ps.Principals, err = serviceAccountPrincipals(src.GetServiceAccounts()); err == nil {
					ps.NotPrincipals, err = serviceAccountPrincipals(src.GetNotServiceAccounts())
				}
				if err != nil {
					r.reject("rules[%d].from: %v", i, err)
					return nil
				}
			}
			pr.From = append(pr.From, ps)
		}
		for _, t := range rule.GetTo() {
			op := t.GetOperation()
			pr.To = append(pr.To, policy.Operation{
				Hosts: op.GetHosts(), NotHosts: op.GetNotHosts(),
				Ports: op.GetPorts(), NotPorts: op.GetNotPorts(),
				Methods: op.GetMethods(), NotMethods: op.GetNotMethods(),
				Paths: op.GetPaths(), NotPaths: op.GetNotPaths(),
			})
		}
		for _, w := range rule.GetWhen() {
			cond := policy.Condition{Key: w.GetKey(), Values: w.GetValues(), NotValues: w.GetNotValues()}
			if cond.Key == "source.principal" {
				cond.Values, cond.NotValues = principals(cond.Values), principals(cond.NotValues)
			}
			pr.When = append(pr.When, cond)
		}
		a.Policy.Rules = append(a.Policy.Rules, pr)
	}
	if err := a.Policy.Validate(); err != nil {
		r.reject("%v", err)
		return nil
	}
	switch {
	case targeted:
	case spec.GetSelector() != nil && len(spec.GetSelector().GetMatchLabels()) > 0:
		a.Selector = spec.GetSelector().GetMatchLabels()
	case c.meta.Namespace == rootNS:
		a.Mesh = true
	}
	return a
}

// serviceAccountPrincipals turns Istio's "ns/sa" service accounts into
// principals that match that identity in any trust domain.
func serviceAccountPrincipals(sas []string) ([]string, error) {
	var out []string
	for _, sa := range sas {
		ns, name, ok := strings.Cut(sa, "/")
		if !ok || ns == "" || name == "" || strings.ContainsAny(name, "/*") || strings.Contains(ns, "*") {
			return nil, fmt.Errorf("serviceAccount %q: want namespace/name", sa)
		}
		out = append(out, "*/ns/"+ns+"/sa/"+name)
	}
	return out, nil
}

// authzFor returns the L4 policies bound to a workload: mesh-wide ones from
// the root namespace, namespace-wide ones, and selector matches in its
// namespace or in the root namespace (a root-namespace policy applies to
// every namespace; its selector narrows it). Policies with targetRefs are
// for waypoints and are not bound here.
func (bd *build) authzFor(ns string, labels map[string]string) []model.NamespacedName {
	var out []model.NamespacedName
	for _, a := range bd.authz {
		switch {
		case len(a.Targets) > 0:
			continue
		case a.Mesh:
		case a.Policy.Namespace != ns && (a.Selector == nil || a.Policy.Namespace != bd.opts.RootNamespace):
			continue
		case a.Selector != nil && !model.SelectorMatches(a.Selector, labels):
			continue
		}
		out = append(out, a.Key())
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

// warnPeerAuthenticationConflicts reports policies that lose Istio's "oldest
// wins" rule: a second mesh-wide or namespace-wide policy in one namespace,
// or a second selector policy matching the same workload.
func (bd *build) warnPeerAuthenticationConflicts() {
	warned := map[model.NamespacedName]bool{}
	warn := func(loser, winner *model.PeerAuthentication, scope string) {
		if warned[loser.Meta.Key()] {
			return
		}
		warned[loser.Meta.Key()] = true
		bd.rejecter(KindPeerAuthentication, loser.Meta.Namespace, loser.Meta.Name).warn("conflicts with the older %s policy %s, which wins; this one is ignored", scope, winner.Meta.Key())
	}
	wide := map[string]*model.PeerAuthentication{}
	for _, p := range bd.peerAuths {
		if len(p.Selector) > 0 {
			continue
		}
		if cur, ok := wide[p.Meta.Namespace]; ok {
			older, newer := cur, p
			if p.Meta.Older(cur.Meta) {
				older, newer = p, cur
			}
			wide[p.Meta.Namespace] = older
			scope := "namespace-wide"
			if p.Meta.Namespace == bd.opts.RootNamespace {
				scope = "mesh-wide"
			}
			warn(newer, older, scope)
			continue
		}
		wide[p.Meta.Namespace] = p
	}
	for _, w := range bd.workloads {
		var winner *model.PeerAuthentication
		var matched []*model.PeerAuthentication
		for _, p := range bd.peerAuths {
			if len(p.Selector) > 0 && p.Meta.Namespace == w.Namespace && model.SelectorMatches(p.Selector, w.Labels) {
				matched = append(matched, p)
				if winner == nil || p.Meta.Older(winner.Meta) {
					winner = p
				}
			}
		}
		for _, p := range matched {
			if p != winner {
				warn(p, winner, "workload")
			}
		}
	}
}
