package cli

import (
	"encoding/json"
	"os"
	"slices"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
)

// TestNodeAgentMatchesDeployManifests keeps the chart's node agent equal to
// deploy/node-agent/ (the plain manifests) until those are generated from the
// chart: a change to one without the other fails here.
func TestNodeAgentMatchesDeployManifests(t *testing.T) {
	r, err := Render(RenderOptions{Profile: "minimal", SkipCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	plain := map[string]*unstructured.Unstructured{}
	for _, f := range []string{"../../deploy/node-agent/daemonset.yaml", "../../deploy/node-agent/rbac.yaml"} {
		data, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		objs, err := decodeObjects(data, f)
		if err != nil {
			t.Fatal(err)
		}
		for _, o := range objs {
			plain[o.GetKind()+"/"+o.GetName()] = o
		}
	}
	chart := map[string]*unstructured.Unstructured{}
	for _, o := range r.Objects {
		chart[o.GetKind()+"/"+o.GetName()] = o
	}
	decode := func(u *unstructured.Unstructured, into any) {
		t.Helper()
		data, err := json.Marshal(u.Object)
		if err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(data, into); err != nil {
			t.Fatal(err)
		}
	}
	var want, got appsv1.DaemonSet
	decode(plain["DaemonSet/meshlet-node-agent"], &want)
	decode(chart["DaemonSet/meshlet-node-agent"], &got)
	if d := cmp.Diff(want.Spec, got.Spec); d != "" {
		t.Errorf("chart's node-agent DaemonSet spec differs from deploy/node-agent/daemonset.yaml (-plain +chart):\n%s", d)
	}
	var wantRole, gotRole rbacv1.ClusterRole
	decode(plain["ClusterRole/meshlet-node-agent"], &wantRole)
	decode(chart["ClusterRole/meshlet-node-agent"], &gotRole)
	if d := cmp.Diff(wantRole.Rules, gotRole.Rules); d != "" {
		t.Errorf("chart's node-agent ClusterRole differs from deploy/node-agent/rbac.yaml (-plain +chart):\n%s", d)
	}
}

// TestCAModeRBAC checks least privilege on the CA Secret: meshd may create
// Secrets only when it generates the root itself.
func TestCAModeRBAC(t *testing.T) {
	tests := []struct {
		mode       string
		wantCreate bool
	}{
		{"selfSigned", true},
		{"pluggedIn", false},
	}
	for _, tc := range tests {
		t.Run(tc.mode, func(t *testing.T) {
			r, err := Render(RenderOptions{Profile: "minimal", SkipCRDs: true, Set: []string{"ca.mode=" + tc.mode}})
			if err != nil {
				t.Fatal(err)
			}
			var role rbacv1.Role
			for _, o := range r.Objects {
				if o.GetKind() == "Role" && o.GetName() == "meshd-ca" {
					data, _ := json.Marshal(o.Object)
					if err := json.Unmarshal(data, &role); err != nil {
						t.Fatal(err)
					}
				}
			}
			create := false
			for _, rule := range role.Rules {
				if !slices.Contains(rule.Resources, "secrets") {
					continue // the status ConfigMaps, the deployer's Lease
				}
				for _, v := range rule.Verbs {
					if v == "create" {
						create = true
					}
				}
				if len(rule.ResourceNames) == 1 && rule.ResourceNames[0] != "cacerts" {
					t.Errorf("meshd may read Secret %q, want only cacerts", rule.ResourceNames[0])
				}
			}
			if create != tc.wantCreate {
				t.Errorf("ca.mode=%s: meshd may create Secrets = %t, want %t", tc.mode, create, tc.wantCreate)
			}
		})
	}
}
