package xds

import (
	"encoding/json"
	"fmt"
	"slices"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// waypointConfig builds wp's WaypointConfig from snap, or nil when the model
// has no L7 configuration for it.
// waypointConfig is the L7 configuration of one waypoint or ingress gateway
// (both are in Snapshot.L7Names; only waypoints are in Snapshot.Waypoints).
func waypointConfig(snap *model.Snapshot, key model.NamespacedName) (*meshv1.WaypointConfig, error) {
	l7, ok := snap.L7Config(key)
	if !ok || l7 == nil {
		return nil, nil
	}
	l7JSON, err := json.Marshal(l7)
	if err != nil {
		return nil, fmt.Errorf("encode L7 config of %s: %w", key, err)
	}
	polJSON, err := json.Marshal(targetingPolicies(snap, key))
	if err != nil {
		return nil, fmt.Errorf("encode policies of %s: %w", key, err)
	}
	return &meshv1.WaypointConfig{Namespace: key.Namespace, Name: key.Name, L7Json: l7JSON, PoliciesJson: polJSON}, nil
}

// targetingPolicies are the policies whose targetRefs name the gateway
// itself, or a Service or ServiceEntry that it serves as a waypoint (Istio's
// targetRefs for waypoints and gateways), and for an ingress gateway those
// that select its pods (L7Config.PodPolicies).
func targetingPolicies(snap *model.Snapshot, key model.NamespacedName) []*policy.Policy {
	wp := &model.Waypoint{Namespace: key.Namespace, Name: key.Name}
	served := map[string][]string{} // source/namespace/name -> hostnames
	if _, ok := snap.Waypoint(key); ok {
		for _, svc := range snap.WaypointBindings(key).Services {
			served[string(svc.Source)+"/"+svc.Namespace+"/"+svc.Name] = svc.Hostnames
		}
	}
	l7, _ := snap.L7Config(key)
	out := []*policy.Policy{}
	for _, ap := range snap.AuthorizationPolicies() {
		whole := false
		var services []string
		for _, t := range ap.Targets {
			switch t.Kind {
			case "Gateway":
				whole = whole || t.Namespace == wp.Namespace && t.Name == wp.Name
			case "Service":
				services = append(services, served[string(model.SourceKubernetes)+"/"+t.Namespace+"/"+t.Name]...)
			case "ServiceEntry":
				services = append(services, served[string(model.SourceServiceEntry)+"/"+t.Namespace+"/"+t.Name]...)
			}
		}
		if l7 != nil && slices.Contains(l7.PodPolicies, ap.Key()) {
			whole = true
		}
		switch {
		case whole:
			out = append(out, ap.Policy)
		case len(services) > 0:
			// Targeting a Service scopes the policy to that service's
			// requests, not to everything the waypoint serves.
			scoped := *ap.Policy
			scoped.Services = services
			out = append(out, &scoped)
		}
	}
	return out
}
