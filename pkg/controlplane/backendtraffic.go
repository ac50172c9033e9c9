package controlplane

import (
	"fmt"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	"github.com/meshlet/meshlet/pkg/model"
)

// This file reads Gateway API XBackendTrafficPolicies (experimental
// channel, gateway.networking.x-k8s.io/v1alpha1): a retry budget and
// session persistence for the backends of the Services they target.
//
// Decisions:
//   - Targets are core Services (group "", kind Service) in the policy's
//     namespace, as for BackendTLSPolicy; other kinds are warned about and
//     ignored. Two policies for one Service: the older wins it whole
//     (creationTimestamp, then namespace/name), the other is Conflicted
//     there, as Gateway API resolves policy conflicts.
//   - retryConstraint is a rate, as Gateway API defines it and meshlet's
//     proxies implement it (model.RetryBudget with an Interval): the
//     retries to the Service over budget.interval (10s by default) may be
//     budget.percent (20 by default) of the requests sent to it then, and
//     minRetryRate (10 per 1s by default) are always allowed; a retry over
//     the budget is answered 503. Istio maps it to Envoy's budget of
//     concurrent retries instead, ignoring the interval. A
//     DestinationRule's trafficPolicy.retryBudget for the Service takes
//     precedence (warned), as its tls does over a BackendTLSPolicy; a
//     subset with a traffic policy of its own and no retryBudget gets the
//     policy's.
//   - sessionPersistence applies to every route to the Service whose rule
//     has none of its own (GEP-1619: a rule's wins over its backends'),
//     with a session name of its own per policy when it gives none; it
//     takes precedence over the Service's istio.io/persistent-session
//     labels (warned). Istio does not implement it.
//   - Status: one ancestor per Service target (the Service), as for
//     BackendTLSPolicy; a field that cannot be used makes the policy
//     Accepted False Invalid, the rest applied.

// backendTraffic is one XBackendTrafficPolicy made ready for clusters.
type backendTraffic struct {
	namespace, name string
	budget          *model.RetryBudget
	session         *model.SessionPersistence
	// invalid holds the faults of its fields (warned too).
	invalid []string
	targets []policyTarget
}

// policyTarget is the outcome of one of a policy's targetRefs: reason ""
// when the policy is in force for it, else PolicyReasonTargetNotFound or
// PolicyReasonConflicted.
type policyTarget struct {
	ref     gatewayv1.LocalPolicyTargetReference
	reason  gatewayv1.PolicyConditionReason
	message string
}

// translateBackendTrafficPolicies validates every XBackendTrafficPolicy
// and files each under the Services it targets (trafficFor), oldest
// first. It runs after the DestinationRules are chosen and the Services'
// session labels read.
func (bd *build) translateBackendTrafficPolicies() {
	pols := make([]*gatewayxv1alpha1.XBackendTrafficPolicy, 0, len(bd.in.backendTraffic))
	for _, k := range sortedKeys(bd.in.backendTraffic) {
		pols = append(pols, bd.in.backendTraffic[k])
	}
	for _, p := range oldestFirst(pols) {
		r := bd.rejecter(KindXBackendTrafficPolicy, p.Namespace, p.Name)
		bt := &backendTraffic{namespace: p.Namespace, name: p.Name}
		bt.budget = bd.trafficRetryBudget(p, r, bt)
		if sp := p.Spec.SessionPersistence; sp != nil {
			lb := &l7Builder{bd: bd}
			if bt.session = lb.ruleSession(KindXBackendTrafficPolicy, p.Namespace, p.Name, "spec", sp); bt.session == nil {
				bt.invalid = append(bt.invalid, "spec.sessionPersistence cannot be used (see the policy's events)")
			}
		}
		bd.trafficPolicies = append(bd.trafficPolicies, bt)
		for i, ref := range p.Spec.TargetRefs {
			field := fmt.Sprintf("targetRefs[%d]", i)
			svc, supported, missing := bd.policyService(r, field, p.Namespace, ref)
			if !supported {
				continue
			}
			if svc == nil {
				bt.targets = append(bt.targets, policyTarget{ref, gatewayv1.PolicyReasonTargetNotFound, missing})
				continue
			}
			svcKey := p.Namespace + "/" + string(ref.Name)
			if prev := bd.trafficFor[svcKey]; prev != nil {
				msg := fmt.Sprintf("Service %s already has the older XBackendTrafficPolicy %s/%s, which takes precedence (the oldest wins)", svcKey, prev.namespace, prev.name)
				r.warn("%s: %s; ignored for it", field, msg)
				bt.targets = append(bt.targets, policyTarget{ref, gatewayv1.PolicyReasonConflicted, msg})
				continue
			}
			if bd.trafficFor == nil {
				bd.trafficFor = map[string]*backendTraffic{}
			}
			bd.trafficFor[svcKey] = bt
			bt.targets = append(bt.targets, policyTarget{ref: ref})
			if dr, ok := bd.drFor[svcKey]; ok && bt.budget != nil && dr.spec.GetTrafficPolicy().GetRetryBudget() != nil {
				r.warn("%s: the DestinationRule %s/%s sets trafficPolicy.retryBudget for Service %s, which takes precedence over retryConstraint; remove one of the two", field, dr.meta.Namespace, dr.meta.Name, svcKey)
			}
			if bt.session != nil {
				if _, labelled := bd.svcSessions[svcKey]; labelled {
					bd.rejecter(KindService, svc.Namespace, svc.Name).warn("the session persistence of XBackendTrafficPolicy %s/%s takes precedence over the Service's %s labels", p.Namespace, p.Name, labelPersistentSession)
				}
				bd.svcSessions[svcKey] = bt.session
			}
		}
	}
}

// trafficRetryBudget translates a policy's retryConstraint, with Gateway
// API's defaults; nil without one or when it cannot be used (reported).
func (bd *build) trafficRetryBudget(p *gatewayxv1alpha1.XBackendTrafficPolicy, r *rejections, bt *backendTraffic) *model.RetryBudget {
	rc := p.Spec.RetryConstraint
	if rc == nil {
		return nil
	}
	out := &model.RetryBudget{Percent: 20, Interval: 10 * time.Second, MinRetries: 10, MinRetryInterval: time.Second}
	fault := func(format string, args ...any) *model.RetryBudget {
		msg := fmt.Sprintf("spec.retryConstraint."+format, args...)
		r.warn("%s; the Service's retries are not budgeted by this policy", msg)
		bt.invalid = append(bt.invalid, msg)
		return nil
	}
	duration := func(field string, d *gatewayv1.Duration, into *time.Duration) bool {
		if d == nil {
			return true
		}
		v, err := time.ParseDuration(string(*d))
		if err != nil || v <= 0 {
			fault("%s %q is not a positive duration (such as \"10s\")", field, *d)
			return false
		}
		*into = v
		return true
	}
	if b := rc.Budget; b != nil {
		if b.Percent != nil {
			if *b.Percent < 0 || *b.Percent > 100 {
				return fault("budget.percent %d: want 0 to 100", *b.Percent)
			}
			out.Percent = float64(*b.Percent)
		}
		if !duration("budget.interval", b.Interval, &out.Interval) {
			return nil
		}
	}
	if m := rc.MinRetryRate; m != nil {
		if m.Count != nil {
			if *m.Count < 1 || *m.Count > 1000000 {
				return fault("minRetryRate.count %d: want 1 to 1000000", *m.Count)
			}
			out.MinRetries = *m.Count
		}
		if !duration("minRetryRate.interval", m.Interval, &out.MinRetryInterval) {
			return nil
		}
	}
	if err := out.Validate(); err != nil {
		return fault("%v", err)
	}
	return out
}

// applyTrafficBudget gives cluster c of Service svcKey the retry budget of
// the XBackendTrafficPolicy in force for it, where its DestinationRule
// sets none: the cluster and each subset with a traffic policy of its own.
func (bd *build) applyTrafficBudget(c *model.L7Cluster, svcKey string) {
	bt := bd.trafficFor[svcKey]
	if bt == nil || bt.budget == nil {
		return
	}
	if dr, ok := bd.drFor[svcKey]; ok && dr.spec.GetTrafficPolicy().GetRetryBudget() != nil {
		return
	}
	if c.Traffic.RetryBudget == nil {
		c.Traffic.RetryBudget = bt.budget
	}
	for i := range c.Subsets {
		if t := c.Subsets[i].Traffic; t != nil && t.RetryBudget == nil {
			t.RetryBudget = bt.budget
		}
	}
}

// backendTrafficStatus computes every XBackendTrafficPolicy's ancestors.
func (bd *build) backendTrafficStatus() []ObjectStatus {
	var out []ObjectStatus
	for _, bt := range bd.trafficPolicies {
		p := bd.in.backendTraffic[bt.namespace+"/"+bt.name]
		gen := p.Generation
		st := ObjectStatus{Kind: KindXBackendTrafficPolicy, Namespace: p.Namespace, Name: p.Name, Generation: gen}
		for _, t := range bt.targets {
			ok, reason, msg := true, string(gatewayv1.PolicyReasonAccepted), "applied to the Service's backends by the mesh's waypoints and gateways"
			switch {
			case t.reason != "":
				ok, reason, msg = false, string(t.reason), t.message
			case len(bt.invalid) > 0:
				ok, reason, msg = false, string(gatewayv1.PolicyReasonInvalid), strings.Join(bt.invalid, "; ")+"; the policy's other fields are applied"
			}
			st.Ancestors = append(st.Ancestors, serviceAncestor(t.ref.Name, nil, condition(string(gatewayv1.PolicyConditionAccepted), ok, reason, msg, gen)))
		}
		out = append(out, st)
	}
	return out
}
