package modelview

import (
	"bytes"
	"encoding/json"
	"fmt"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// DecodeWaypointConfig returns the L7 configuration and targeting policies a
// WaypointConfig carries. Unknown fields are an error, so a meshd newer than
// the waypoint is noticed (the client NACKs) rather than half understood.
// The L7 config is validated.
func DecodeWaypointConfig(c *meshv1.WaypointConfig) (*model.L7Config, []*policy.Policy, error) {
	var l7 model.L7Config
	if err := strictJSON(c.GetL7Json(), &l7); err != nil {
		return nil, nil, fmt.Errorf("decode L7 config of waypoint %s/%s: %w", c.GetNamespace(), c.GetName(), err)
	}
	if err := l7.Validate(); err != nil {
		return nil, nil, fmt.Errorf("waypoint %s/%s: %w", c.GetNamespace(), c.GetName(), err)
	}
	var policies []*policy.Policy
	if len(c.GetPoliciesJson()) > 0 {
		if err := strictJSON(c.GetPoliciesJson(), &policies); err != nil {
			return nil, nil, fmt.Errorf("decode policies of waypoint %s/%s: %w", c.GetNamespace(), c.GetName(), err)
		}
	}
	return &l7, policies, nil
}

func strictJSON(b []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	return dec.Decode(v)
}
