package xds

import (
	"encoding/json"
	"fmt"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// waypointConfig builds wp's WaypointConfig from snap, or nil when the model
// has no L7 configuration for it.
func waypointConfig(snap *model.Snapshot, wp *model.Waypoint) (*meshv1.WaypointConfig, error) {
	l7, ok := snap.L7Config(wp.Key())
	if !ok || l7 == nil {
		return nil, nil
	}
	l7JSON, err := json.Marshal(l7)
	if err != nil {
		return nil, fmt.Errorf("encode L7 config of waypoint %s: %w", wp.Key(), err)
	}
	polJSON, err := json.Marshal(targetingPolicies(snap, wp))
	if err != nil {
		return nil, fmt.Errorf("encode policies of waypoint %s: %w", wp.Key(), err)
	}
	return &meshv1.WaypointConfig{Namespace: wp.Namespace, Name: wp.Name, L7Json: l7JSON, PoliciesJson: polJSON}, nil
}

// targetingPolicies are the policies whose targetRefs name wp itself, or a
// Service or ServiceEntry that wp serves (Istio's targetRefs for waypoints).
func targetingPolicies(snap *model.Snapshot, wp *model.Waypoint) []*policy.Policy {
	served := map[string]bool{}
	for _, svc := range snap.WaypointBindings(wp.Key()).Services {
		served[string(svc.Source)+"/"+svc.Namespace+"/"+svc.Name] = true
	}
	out := []*policy.Policy{}
	for _, ap := range snap.AuthorizationPolicies() {
		for _, t := range ap.Targets {
			var hit bool
			switch t.Kind {
			case "Gateway":
				hit = t.Namespace == wp.Namespace && t.Name == wp.Name
			case "Service":
				hit = served[string(model.SourceKubernetes)+"/"+t.Namespace+"/"+t.Name]
			case "ServiceEntry":
				hit = served[string(model.SourceServiceEntry)+"/"+t.Namespace+"/"+t.Name]
			}
			if hit {
				out = append(out, ap.Policy)
				break
			}
		}
	}
	return out
}
