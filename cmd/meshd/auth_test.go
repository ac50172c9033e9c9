package main

import (
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

func pod(ns, name, sa, node string, labels map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec:       corev1.PodSpec{ServiceAccountName: sa, NodeName: node},
	}
}

func TestPrincipalFor(t *testing.T) {
	const agentSA = "meshlet-system/meshlet-node-agent"
	agent := ca.Caller{Username: "system:serviceaccount:meshlet-system:meshlet-node-agent", Namespace: "meshlet-system", ServiceAccount: "meshlet-node-agent"}
	withNode := agent
	withNode.NodeName = "node-a"
	wp := ca.Caller{Username: "system:serviceaccount:ns1:waypoint", Namespace: "ns1", ServiceAccount: "waypoint", PodName: "waypoint-x"}
	app := ca.Caller{Username: "system:serviceaccount:ns1:web", Namespace: "ns1", ServiceAccount: "web", PodName: "web-1"}
	tests := []struct {
		name    string
		caller  ca.Caller
		pod     *corev1.Pod
		want    xdsnode.Principal
		wantErr string
	}{
		{"node agent, node from the token", withNode, nil, xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: "node-a"}, ""},
		{"node agent, node from its pod", agent, pod("meshlet-system", "agent-1", "meshlet-node-agent", "node-b", nil), xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: "node-b"}, ""},
		{"node agent not scheduled yet", agent, pod("meshlet-system", "agent-1", "meshlet-node-agent", "", nil), xdsnode.Principal{}, "has no node"},
		{"waypoint", wp, pod("ns1", "waypoint-x", "waypoint", "node-a", map[string]string{gatewayNameLabel: "waypoint"}), xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: "ns1", Name: "waypoint"}, ""},
		{"application pod", app, pod("ns1", "web-1", "web", "node-a", nil), xdsnode.Principal{}, "neither the node agent's"},
		{"pod of another service account", app, pod("ns1", "web-1", "other", "node-a", map[string]string{gatewayNameLabel: "waypoint"}), xdsnode.Principal{}, "does not run as"},
		{"not a service account", ca.Caller{Username: "alice"}, nil, xdsnode.Principal{}, "not a service account"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := principalFor(tt.caller, tt.pod, agentSA)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("principalFor() error = %v; want one containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("principalFor() = %+v, %v; want %+v", got, err, tt.want)
			}
		})
	}
}

func TestParseIdentityPath(t *testing.T) {
	tests := []struct {
		id      string
		ns, sa  string
		wantErr bool
	}{
		{"spiffe://cluster.local/ns/ns1/sa/web", "ns1", "web", false},
		{"spiffe://cluster.local/ns/ns1", "", "", true},
		{"spiffe://cluster.local/ns/ns1/sa/web/extra", "", "", true},
		{"spiffe://cluster.local/foo/ns1/sa/web", "", "", true},
	}
	for _, tt := range tests {
		id := spiffeid.RequireFromString(tt.id)
		ns, sa, err := parseIdentityPath(id)
		if (err != nil) != tt.wantErr || ns != tt.ns || sa != tt.sa {
			t.Errorf("parseIdentityPath(%q) = %q, %q, %v; want %q, %q, error %v", tt.id, ns, sa, err, tt.ns, tt.sa, tt.wantErr)
		}
	}
}

func TestParseFlags(t *testing.T) {
	tests := []struct {
		args    []string
		wantDNS string
		wantErr string
	}{
		{[]string{"--namespace", "mesh"}, "meshd.mesh.svc,meshd.mesh.svc.cluster.local", ""},
		{[]string{"--node-agent-service-account", "agent"}, "", "want namespace/name"},
		{[]string{"--namespace", "mesh", "--cluster-domain", "Corp.Example."}, "meshd.mesh.svc,meshd.mesh.svc.corp.example", ""},
		{[]string{"--cluster-domain", "cluster_local"}, "", `--cluster-domain "cluster_local" is not a DNS name`},
		{[]string{"--namespace", "mesh", "--image-pull-secrets", "regcred, mirror-creds"}, "meshd.mesh.svc,meshd.mesh.svc.cluster.local", ""},
		{[]string{"--image-pull-secrets", "regcred,Bad_Name"}, "", `--image-pull-secrets: "Bad_Name" is not a Secret name`},
	}
	for _, tt := range tests {
		c, err := parseFlags(tt.args)
		if tt.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Errorf("parseFlags(%q) error = %v; want %q", tt.args, err, tt.wantErr)
			}
			continue
		}
		if err != nil || c.servingDNS != tt.wantDNS {
			t.Errorf("parseFlags(%q) = servingDNS %q, %v; want %q", tt.args, c.servingDNS, err, tt.wantDNS)
		}
	}
}
