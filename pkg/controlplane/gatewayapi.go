package controlplane

import (
	"regexp"
	"sort"

	networkingapi "istio.io/api/networking/v1alpha3"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// validateGateway checks a Gateway API Gateway that is not a waypoint.
func (bd *build) validateGateway(gw *gatewayv1.Gateway) bool {
	r := bd.rejecter(KindGateway, gw.Namespace, gw.Name)
	if gw.Spec.GatewayClassName == "" {
		r.reject("gatewayClassName is empty")
		return false
	}
	names := map[gatewayv1.SectionName]bool{}
	for _, l := range gw.Spec.Listeners {
		if names[l.Name] {
			r.reject("listener name %q used twice", l.Name)
			return false
		}
		names[l.Name] = true
		if l.Port <= 0 || l.Port > 65535 {
			r.reject("listener %q port %d out of range 1-65535", l.Name, l.Port)
			return false
		}
	}
	return true
}

// validateRoutes checks HTTPRoutes and GRPCRoutes: regular expressions (RE2)
// and backend references.
func (bd *build) validateRoutes() {
	for _, k := range sortedKeys(bd.in.httpRoutes) {
		rt := bd.in.httpRoutes[k]
		if validateHTTPRoute(rt, bd.rejecter(KindHTTPRoute, rt.Namespace, rt.Name)) {
			bd.validRoutes = append(bd.validRoutes, rt)
		}
	}
	for _, k := range sortedKeys(bd.in.grpcRoutes) {
		rt := bd.in.grpcRoutes[k]
		if validateGRPCRoute(rt, bd.rejecter(KindGRPCRoute, rt.Namespace, rt.Name)) {
			bd.validGRPC = append(bd.validGRPC, rt)
		}
	}
}

func validateHTTPRoute(rt *gatewayv1.HTTPRoute, r *rejections) bool {
	if len(rt.Spec.ParentRefs) == 0 && rt.Spec.UseDefaultGateways != gatewayv1.GatewayDefaultScopeAll {
		r.warn("no parentRefs: the route is attached to nothing")
	}
	for i, rule := range rt.Spec.Rules {
		for j, m := range rule.Matches {
			if m.Path != nil && m.Path.Type != nil && *m.Path.Type == gatewayv1.PathMatchRegularExpression && m.Path.Value != nil {
				if _, err := regexp.Compile(*m.Path.Value); err != nil {
					r.reject("rules[%d].matches[%d].path regex %q: %v", i, j, *m.Path.Value, err)
					return false
				}
			}
			for _, h := range m.Headers {
				if h.Type != nil && *h.Type == gatewayv1.HeaderMatchRegularExpression {
					if _, err := regexp.Compile(h.Value); err != nil {
						r.reject("rules[%d].matches[%d].headers[%s] regex %q: %v", i, j, h.Name, h.Value, err)
						return false
					}
				}
			}
			for _, q := range m.QueryParams {
				if q.Type != nil && *q.Type == gatewayv1.QueryParamMatchRegularExpression {
					if _, err := regexp.Compile(q.Value); err != nil {
						r.reject("rules[%d].matches[%d].queryParams[%s] regex %q: %v", i, j, q.Name, q.Value, err)
						return false
					}
				}
			}
		}
		for j, b := range rule.BackendRefs {
			if b.Name == "" {
				r.reject("rules[%d].backendRefs[%d] has no name", i, j)
				return false
			}
			if (b.Kind == nil || *b.Kind == "Service") && b.Port == nil {
				r.reject("rules[%d].backendRefs[%d] to Service %s has no port", i, j, b.Name)
				return false
			}
		}
	}
	return true
}

func validateGRPCRoute(rt *gatewayv1.GRPCRoute, r *rejections) bool {
	if len(rt.Spec.ParentRefs) == 0 && rt.Spec.UseDefaultGateways != gatewayv1.GatewayDefaultScopeAll {
		r.warn("no parentRefs: the route is attached to nothing")
	}
	for i, rule := range rt.Spec.Rules {
		for j, m := range rule.Matches {
			for _, h := range m.Headers {
				if h.Type != nil && *h.Type == gatewayv1.GRPCHeaderMatchRegularExpression {
					if _, err := regexp.Compile(h.Value); err != nil {
						r.reject("rules[%d].matches[%d].headers[%s] regex %q: %v", i, j, h.Name, h.Value, err)
						return false
					}
				}
			}
			if m.Method != nil && m.Method.Type != nil && *m.Method.Type == gatewayv1.GRPCMethodMatchRegularExpression {
				for _, v := range []*string{m.Method.Service, m.Method.Method} {
					if v == nil {
						continue
					}
					if _, err := regexp.Compile(*v); err != nil {
						r.reject("rules[%d].matches[%d].method regex %q: %v", i, j, *v, err)
						return false
					}
				}
			}
		}
		for j, b := range rule.BackendRefs {
			if b.Name == "" {
				r.reject("rules[%d].backendRefs[%d] has no name", i, j)
				return false
			}
		}
	}
	return true
}

// warnUnmatchedSelectors reports policies whose selector matches no workload.
// They stay in force (a matching pod may come later), so these are warnings.
func (bd *build) warnUnmatchedSelectors() {
	// matches looks in namespace ns, or in every namespace when ns is "".
	matches := func(ns string, sel map[string]string) bool {
		for _, w := range bd.workloads {
			if (ns == "" || w.Namespace == ns) && model.SelectorMatches(sel, w.Labels) {
				return true
			}
		}
		return false
	}
	for _, p := range bd.peerAuths {
		if len(p.Selector) > 0 && !matches(p.Meta.Namespace, p.Selector) {
			bd.rejecter(KindPeerAuthentication, p.Meta.Namespace, p.Meta.Name).warn("selector %v matches no workload", p.Selector)
		}
	}
	for _, a := range bd.authz {
		if a.Selector == nil {
			continue
		}
		ns, where := a.Policy.Namespace, ""
		if ns == bd.opts.RootNamespace {
			// A root-namespace policy selects in every namespace (authzFor).
			ns, where = "", " in any namespace"
		}
		if !matches(ns, a.Selector) {
			bd.rejecter(KindAuthorizationPolicy, a.Policy.Namespace, a.Policy.Name).warn("selector %v matches no workload%s", a.Selector, where)
		}
	}
}

func sortStable(keys []string, less func(a, b string) bool) {
	sort.SliceStable(keys, func(i, j int) bool { return less(keys[i], keys[j]) })
}

// warnDanglingReferences reports references that resolve to nothing, as
// istioctl analyze does: VirtualService destinations to unknown hosts or
// undefined subsets, and DestinationRule subsets that select no endpoint.
// They are warnings: the objects stay in force.
func (bd *build) warnDanglingReferences() {
	for _, c := range bd.validVS {
		r := bd.rejecter(KindVirtualService, c.meta.Namespace, c.meta.Name)
		seen := map[string]bool{}
		check := func(d interface {
			GetHost() string
			GetSubset() string
		}) {
			host := bd.resolveHost(d.GetHost(), c.meta.Namespace)
			if seen[host+"|"+d.GetSubset()] {
				return
			}
			seen[host+"|"+d.GetSubset()] = true
			owner, ok := bd.hostOwners[host]
			if !ok {
				r.warn("destination host %s matches no service or ServiceEntry", host)
				return
			}
			if d.GetSubset() == "" {
				return
			}
			dr, ok := bd.drFor[owner]
			if !ok || !hasSubset(dr.spec.GetSubsets(), d.GetSubset()) {
				r.warn("destination %s subset %q is not defined by a DestinationRule", host, d.GetSubset())
			}
		}
		for _, hr := range c.spec.GetHttp() {
			for _, d := range hr.GetRoute() {
				if d.GetDestination() != nil {
					check(d.GetDestination())
				}
			}
		}
		for _, tr := range c.spec.GetTcp() {
			for _, d := range tr.GetRoute() {
				if d.GetDestination() != nil {
					check(d.GetDestination())
				}
			}
		}
	}
	for _, owner := range sortedKeys(bd.drFor) {
		dr := bd.drFor[owner]
		ms := bd.svcByKey[owner]
		for _, ss := range dr.spec.GetSubsets() {
			found := false
			for _, ep := range ms.Endpoints {
				if w, ok := bd.workloadByUID(ep.WorkloadUID); ok && model.SelectorMatches(ss.GetLabels(), w.Labels) {
					found = true
					break
				}
			}
			if !found {
				bd.rejecter(KindDestinationRule, dr.meta.Namespace, dr.meta.Name).warn("subset %q (labels %v) selects no endpoint of %s", ss.GetName(), ss.GetLabels(), ms.Hostname())
			}
		}
	}
}

func hasSubset(subsets []*networkingapi.Subset, name string) bool {
	for _, s := range subsets {
		if s.GetName() == name {
			return true
		}
	}
	return false
}
