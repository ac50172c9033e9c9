package controlplane

import (
	"sort"
	"strings"

	policyv1alpha1 "github.com/meshlet/meshlet/pkg/api/policy/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
)

// applyRateLimits attaches LocalRateLimitPolicies to the routes of the
// waypoints and gateways they target. A route gets at most one limit: the
// most specific target wins (an HTTPRoute over a Service over a Gateway),
// and between policies of the same specificity the oldest, as Gateway API
// resolves policy conflicts. An invalid policy is reported and skipped; a
// policy whose targets match nothing is reported as a warning.
func (bd *build) applyRateLimits(l7 map[model.NamespacedName]*model.L7Config) {
	all := sortedKeys(bd.in.rateLimits)
	sortByAge(all, func(k string) model.ObjectMeta {
		p := bd.in.rateLimits[k]
		return model.ObjectMeta{Namespace: p.Namespace, Name: p.Name, Created: p.CreationTimestamp.Time}
	})
	var keys []string // the valid ones, oldest first
	for _, k := range all {
		if bd.validRateLimit(bd.in.rateLimits[k]) {
			keys = append(keys, k)
		}
	}
	type attached struct {
		limit       *model.RateLimit
		specificity int
	}
	for _, name := range sortedL7Keys(l7) {
		cfg := l7[name]
		// route index → the limit chosen so far
		chosen := map[[3]int]attached{}
		for _, k := range keys {
			p := bd.in.rateLimits[k]
			limit := rateLimitOf(p)
			for li := range cfg.Listeners {
				for vi := range cfg.Listeners[li].VirtualHosts {
					vh := &cfg.Listeners[li].VirtualHosts[vi]
					for ri := range vh.Routes {
						spec := bd.rateLimitTargets(p, name, vh, &vh.Routes[ri])
						if spec == 0 {
							continue
						}
						at := [3]int{li, vi, ri}
						if prev, ok := chosen[at]; ok && prev.specificity >= spec {
							continue // more specific, or as specific and older
						}
						chosen[at] = attached{limit, spec}
					}
				}
			}
		}
		for at, a := range chosen {
			cfg.Listeners[at[0]].VirtualHosts[at[1]].Routes[at[2]].RateLimit = a.limit
		}
	}
	for _, k := range keys {
		p := bd.in.rateLimits[k]
		if !bd.rateLimitHitsAnything(p, l7) {
			bd.rejecter(KindLocalRateLimitPolicy, p.Namespace, p.Name).warn("its targetRefs match no route of any waypoint or gateway yet (is the Service bound to a waypoint with istio.io/use-waypoint?)")
		}
	}
}

func sortedL7Keys(l7 map[model.NamespacedName]*model.L7Config) []model.NamespacedName {
	out := make([]model.NamespacedName, 0, len(l7))
	for k, c := range l7 {
		if c != nil {
			out = append(out, k)
		}
	}
	sortNamespacedNames(out)
	return out
}

func sortNamespacedNames(ns []model.NamespacedName) {
	sort.Slice(ns, func(i, j int) bool { return ns[i].String() < ns[j].String() })
}

// validRateLimit reports (once per build) and skips an invalid policy.
func (bd *build) validRateLimit(p *policyv1alpha1.LocalRateLimitPolicy) bool {
	if msg := p.Annotations[decodeErrorAnnotation]; msg != "" {
		bd.rejecter(KindLocalRateLimitPolicy, p.Namespace, p.Name).reject("cannot be read: %s", msg)
		return false
	}
	if err := p.Spec.Validate(); err != nil {
		bd.rejecter(KindLocalRateLimitPolicy, p.Namespace, p.Name).reject("%v", err)
		return false
	}
	return true
}

func rateLimitOf(p *policyv1alpha1.LocalRateLimitPolicy) *model.RateLimit {
	l := p.Spec.Limit
	rl := &model.RateLimit{MaxTokens: int(l.Requests), TokensPerFill: int(l.Requests), FillInterval: l.Interval.Duration}
	if l.Burst != nil {
		rl.MaxTokens = int(*l.Burst)
	}
	if k := p.Spec.Key; k != nil {
		switch k.Type {
		case policyv1alpha1.KeyPrincipal:
			rl.Key = "principal"
		case policyv1alpha1.KeyHeader:
			rl.Key = "header:" + strings.ToLower(k.Header)
		}
		if k.MaxKeys != nil {
			rl.MaxKeys = int(*k.MaxKeys)
		}
	}
	return rl
}

// Specificity of a match: 0 is none.
const (
	specGateway   = 1
	specService   = 2
	specHTTPRoute = 3
)

// rateLimitTargets returns how specifically p targets a route of the proxy
// name, in virtual host vh (0: not at all). Targets are in p's namespace.
func (bd *build) rateLimitTargets(p *policyv1alpha1.LocalRateLimitPolicy, name model.NamespacedName, vh *model.VirtualHost, r *model.L7Route) int {
	best := 0
	for _, t := range p.Spec.TargetRefs {
		s := 0
		switch t.Kind {
		case "Gateway":
			if p.Namespace == name.Namespace && t.Name == name.Name {
				s = specGateway
			}
		case "Service":
			if ms, ok := bd.svcByKey[p.Namespace+"/"+t.Name]; ok && vh.Name == ms.Hostname() {
				s = specService
			}
		case "HTTPRoute":
			if routeFromHTTPRoute(p.Namespace, t.Name, r) {
				s = specHTTPRoute
			}
		}
		best = max(best, s)
	}
	return best
}

// routeFromHTTPRoute reports whether route was translated from the
// HTTPRoute ns/name (by its Origin: a rule name is unique only within its
// HTTPRoute, so another route's rule of the same name, or a VirtualService
// route of that name, is not targeted).
func routeFromHTTPRoute(ns, name string, route *model.L7Route) bool {
	return route.Origin == "HTTPRoute/"+ns+"/"+name
}

func (bd *build) rateLimitHitsAnything(p *policyv1alpha1.LocalRateLimitPolicy, l7 map[model.NamespacedName]*model.L7Config) bool {
	for name, cfg := range l7 {
		if cfg == nil {
			continue
		}
		for li := range cfg.Listeners {
			for vi := range cfg.Listeners[li].VirtualHosts {
				vh := &cfg.Listeners[li].VirtualHosts[vi]
				for ri := range vh.Routes {
					if bd.rateLimitTargets(p, name, vh, &vh.Routes[ri]) > 0 {
						return true
					}
				}
			}
		}
	}
	return false
}
