package controlplane

import (
	"slices"
	"strings"

	"github.com/meshlet/meshlet/pkg/model"
)

// selectGatewayPolicies binds to each ingress gateway the AuthorizationPolicies
// and RequestAuthentications that select its pods, as Istio applies
// selector, namespace-wide and mesh-wide policies to a gateway's Envoy (an
// edge allow list by remoteIpBlocks, a JWT requirement, an external
// authorizer), and the RequestAuthentications that target it by name.
// Waypoints take policies by targetRefs only, as in Istio ambient.
func (bd *build) selectGatewayPolicies(l7 map[model.NamespacedName]*model.L7Config) {
	for key, cfg := range l7 {
		if _, waypoint := bd.waypoints[key]; waypoint {
			continue
		}
		var pods []map[string]string
		for _, w := range bd.proxyPods(key) {
			pods = append(pods, w.Labels)
			for _, n := range w.AuthorizationPolicies {
				if !slices.Contains(cfg.PodPolicies, n) {
					cfg.PodPolicies = append(cfg.PodPolicies, n)
				}
			}
		}
		slices.SortFunc(cfg.PodPolicies, func(a, b model.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
		cfg.JWTProviders = append(bd.jwtProviders(key), bd.podJWTProviders(key.Namespace, pods)...)
	}
}

// podJWTProviders are the jwtRules of the RequestAuthentications that select
// any of pods (labels) in namespace ns: by selector in ns or the root
// namespace, or without one in ns (namespace-wide) or the root namespace
// (mesh-wide). Ones with targetRefs are not selector policies.
func (bd *build) podJWTProviders(ns string, pods []map[string]string) []model.JWTProvider {
	var out []model.JWTProvider
	for _, k := range sortedKeys(bd.in.requestAuths) {
		c := bd.in.requestAuths[k]
		if c.spec.GetTargetRef() != nil || len(c.spec.GetTargetRefs()) > 0 {
			continue
		}
		if c.meta.Namespace != ns && c.meta.Namespace != bd.opts.RootNamespace {
			continue
		}
		sel := c.spec.GetSelector().GetMatchLabels()
		if len(sel) > 0 && !slices.ContainsFunc(pods, func(l map[string]string) bool { return model.SelectorMatches(sel, l) }) {
			continue
		}
		out = append(out, bd.jwtRules(k, nil)...)
	}
	return out
}

// proxyPods are the pods of the waypoint or gateway key: its namespace's
// workloads with the gateway-name label naming it (as the deployer labels
// them, and as Istio ingress gateways are keyed).
func (bd *build) proxyPods(key model.NamespacedName) []*model.Workload {
	if bd.podsByProxy == nil {
		bd.podsByProxy = map[model.NamespacedName][]*model.Workload{}
		for _, w := range bd.workloads {
			if name := w.Labels[gatewayNameLabel]; name != "" {
				k := model.NamespacedName{Namespace: w.Namespace, Name: name}
				bd.podsByProxy[k] = append(bd.podsByProxy[k], w)
			}
		}
	}
	return bd.podsByProxy[key]
}
