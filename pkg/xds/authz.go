package xds

import (
	"fmt"
	"strconv"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// l4Keys are the when keys a node agent can check on a connection
// (Istio's "Use Layer 4 security policy", allowed attributes).
var l4Keys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

var actions = map[policy.Action]meshv1.Authorization_Action{
	"":           meshv1.Authorization_ALLOW,
	policy.Allow: meshv1.Authorization_ALLOW,
	policy.Deny:  meshv1.Authorization_DENY,
	policy.Audit: meshv1.Authorization_AUDIT,
	// A node agent cannot ask an external authorizer: it denies what a
	// CUSTOM policy would have asked about (fail closed), as a DENY.
	policy.Custom: meshv1.Authorization_DENY,
}

// translateAuthorization turns a policy a node agent enforces (one without
// targetRefs) into its L4 form; uids are the workloads that bind it. It
// returns nil for policies that are not the node agent's: waypoint-targeted
// ones. A CUSTOM policy becomes a DENY (fail closed: see actions).
//
// A node agent sees connections, not requests, so L7 attributes are handled
// as Istio ambient (and pkg/policy's EvaluateL4) does: an ALLOW or AUDIT rule
// that uses one matches nothing and is dropped; a DENY rule keeps only its L4
// attributes, so it denies every connection those match. Each such rule is
// named in L4Adjusted.
func translateAuthorization(ap *model.AuthorizationPolicy, uids []string) (*meshv1.Authorization, error) {
	p := ap.Policy
	if p == nil || len(ap.Targets) > 0 {
		return nil, nil
	}
	action, ok := actions[p.Action]
	if !ok {
		return nil, nil
	}
	a := &meshv1.Authorization{Name: p.Name, Namespace: p.Namespace, Action: action, DryRun: p.DryRun}
	switch {
	case ap.Mesh:
		a.Scope = meshv1.Authorization_MESH
	case ap.Selector == nil:
		a.Scope = meshv1.Authorization_NAMESPACE
	default:
		a.Scope = meshv1.Authorization_WORKLOAD
		a.WorkloadUids = uids
	}
	for i, r := range p.Rules {
		rule, usesL7, err := l4Rule(r)
		if err != nil {
			return nil, fmt.Errorf("authorization %s rules[%d]: %w", p.ID(), i, err)
		}
		if usesL7 {
			a.L4Adjusted = append(a.L4Adjusted, fmt.Sprintf("rules[%d]", i))
			if action != meshv1.Authorization_DENY {
				continue
			}
		}
		a.Rules = append(a.Rules, rule)
	}
	return a, nil
}

// l4Rule keeps the L4 attributes of r and reports whether it had others.
func l4Rule(r policy.Rule) (*meshv1.Rule, bool, error) {
	out := &meshv1.Rule{}
	usesL7 := false
	for _, s := range r.From {
		if len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks) > 0 {
			usesL7 = true
		}
		out.From = append(out.From, &meshv1.SourceMatch{
			Principals: s.Principals, NotPrincipals: s.NotPrincipals,
			Namespaces: s.Namespaces, NotNamespaces: s.NotNamespaces,
			IpBlocks: s.IPBlocks, NotIpBlocks: s.NotIPBlocks,
		})
	}
	for _, o := range r.To {
		if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
			usesL7 = true
		}
		d := &meshv1.DestinationMatch{}
		var err error
		if d.Ports, err = ports(o.Ports); err != nil {
			return nil, false, err
		}
		if d.NotPorts, err = ports(o.NotPorts); err != nil {
			return nil, false, err
		}
		out.To = append(out.To, d)
	}
	for _, c := range r.When {
		if !l4Keys[c.Key] {
			usesL7 = true
			continue
		}
		out.When = append(out.When, &meshv1.Condition{Key: c.Key, Values: c.Values, NotValues: c.NotValues})
	}
	return out, usesL7, nil
}

func ports(in []string) ([]uint32, error) {
	var out []uint32
	for _, p := range in {
		n, err := strconv.ParseUint(p, 10, 16)
		if err != nil || n == 0 {
			return nil, fmt.Errorf("port %q: want a number 1-65535", p)
		}
		out = append(out, uint32(n))
	}
	return out, nil
}
