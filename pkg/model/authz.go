package model

import "github.com/meshlet/meshlet/pkg/policy"

// AuthorizationPolicy is a translated Istio AuthorizationPolicy with the
// scope it applies to. Node agents enforce the ones without Targets on the
// workloads that name them in Workload.AuthorizationPolicies (policy.EvaluateL4);
// waypoints and gateways enforce the ones whose Targets name them (policy.Evaluate).
type AuthorizationPolicy struct {
	// Policy is the rule set, in pkg/policy's vocabulary.
	Policy *policy.Policy
	// Mesh is true for a policy in the root namespace without selector or
	// targets: it applies to every workload of the mesh.
	Mesh bool
	// Selector is the workload selector's matchLabels; nil (and not Mesh,
	// and no Targets) means every workload of the policy's namespace.
	Selector map[string]string
	// Targets are the targetRef(s): the waypoint Gateway, Service or
	// ServiceEntry whose proxy enforces the policy.
	Targets []PolicyTarget
}

// Key returns the policy's namespace/name.
func (a *AuthorizationPolicy) Key() NamespacedName {
	return NamespacedName{Namespace: a.Policy.Namespace, Name: a.Policy.Name}
}

// PolicyTarget is one targetRef of a policy.
type PolicyTarget struct {
	// Kind is "Gateway", "Service", "ServiceEntry" or "GatewayClass".
	Kind string
	// Namespace and Name of the target; Namespace is the policy's own.
	Namespace string
	Name      string
}
