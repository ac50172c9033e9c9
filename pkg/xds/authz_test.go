package xds

import (
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/testing/protocmp"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

func TestTranslateAuthorization(t *testing.T) {
	l4Source := policy.Source{Principals: []string{"cluster.local/ns/ns1/sa/web"}, IPBlocks: []string{"198.18.0.0/16"}}
	l7Rule := policy.Rule{
		From: []policy.Source{{Namespaces: []string{"ns2"}, RequestPrincipals: []string{"iss/sub"}}},
		To:   []policy.Operation{{Ports: []string{"8080"}, Methods: []string{"GET"}}},
		When: []policy.Condition{{Key: "source.ip", Values: []string{"198.18.0.1"}}, {Key: "request.headers[x]", Values: []string{"y"}}},
	}
	tests := []struct {
		name string
		in   *model.AuthorizationPolicy
		uids []string
		want *meshv1.Authorization
	}{
		{
			name: "allow: the L7 rule can match no connection and is dropped",
			in: &model.AuthorizationPolicy{Selector: map[string]string{"app": "db"}, Policy: &policy.Policy{
				Name: "p", Namespace: "ns1", Action: policy.Allow,
				Rules: []policy.Rule{{From: []policy.Source{l4Source}, To: []policy.Operation{{Ports: []string{"5432"}}}}, l7Rule},
			}},
			uids: []string{"u1", "u2"},
			want: &meshv1.Authorization{
				Name: "p", Namespace: "ns1", Scope: meshv1.Authorization_WORKLOAD, WorkloadUids: []string{"u1", "u2"},
				Action: meshv1.Authorization_ALLOW, L4Adjusted: []string{"rules[1]"},
				Rules: []*meshv1.Rule{{
					From: []*meshv1.SourceMatch{{Principals: []string{"cluster.local/ns/ns1/sa/web"}, IpBlocks: []string{"198.18.0.0/16"}}},
					To:   []*meshv1.DestinationMatch{{Ports: []uint32{5432}}},
				}},
			},
		},
		{
			name: "deny: the L7 attributes are removed, the L4 ones kept",
			in:   &model.AuthorizationPolicy{Policy: &policy.Policy{Name: "d", Namespace: "ns1", Action: policy.Deny, Rules: []policy.Rule{l7Rule}}},
			want: &meshv1.Authorization{
				Name: "d", Namespace: "ns1", Scope: meshv1.Authorization_NAMESPACE, Action: meshv1.Authorization_DENY, L4Adjusted: []string{"rules[0]"},
				Rules: []*meshv1.Rule{{
					From: []*meshv1.SourceMatch{{Namespaces: []string{"ns2"}}},
					To:   []*meshv1.DestinationMatch{{Ports: []uint32{8080}}},
					When: []*meshv1.Condition{{Key: "source.ip", Values: []string{"198.18.0.1"}}},
				}},
			},
		},
		{
			name: "custom with a selector: a deny of what it matches (fail closed)",
			in: &model.AuthorizationPolicy{Selector: map[string]string{"app": "db"}, Policy: &policy.Policy{Name: "c", Namespace: "ns1", Action: policy.Custom, Provider: "authz",
				Rules: []policy.Rule{{To: []policy.Operation{{Ports: []string{"8080"}, Paths: []string{"/admin*"}}}}}}},
			uids: []string{"u1"},
			want: &meshv1.Authorization{
				Name: "c", Namespace: "ns1", Scope: meshv1.Authorization_WORKLOAD, WorkloadUids: []string{"u1"}, Action: meshv1.Authorization_DENY, L4Adjusted: []string{"rules[0]"},
				Rules: []*meshv1.Rule{{To: []*meshv1.DestinationMatch{{Ports: []uint32{8080}}}}},
			},
		},
		{
			name: "mesh-wide allow-nothing keeps its empty rules",
			in:   &model.AuthorizationPolicy{Mesh: true, Policy: &policy.Policy{Name: "allow-nothing", Namespace: "istio-system", DryRun: true}},
			want: &meshv1.Authorization{Name: "allow-nothing", Namespace: "istio-system", Scope: meshv1.Authorization_MESH, Action: meshv1.Authorization_ALLOW, DryRun: true},
		},
		{
			name: "waypoint-targeted policies are not the node agent's",
			in:   &model.AuthorizationPolicy{Targets: []model.PolicyTarget{{Kind: "Gateway", Namespace: "ns1", Name: "waypoint"}}, Policy: &policy.Policy{Name: "t", Namespace: "ns1"}},
			want: nil,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := translateAuthorization(tt.in, tt.uids)
			if err != nil {
				t.Fatal(err)
			}
			if d := cmp.Diff(tt.want, got, protocmp.Transform()); d != "" {
				t.Errorf("translateAuthorization (-want +got):\n%s", d)
			}
		})
	}
}
