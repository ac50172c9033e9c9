package controlplane

import (
	"slices"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/pkg/policy"
)

// TestAuthorizationPolicyTrustDomains: on a mesh whose trust domain is not
// cluster.local, policies written as Istio's documentation writes them
// ("cluster.local/ns/...") match the mesh's identities, and with the mesh
// config's trustDomainAliases those of the old trust domain too (Istio's
// trust domain migration), in from.source principals, notPrincipals and the
// source.principal condition; a principal of another trust domain matches
// only that one and is warned about, as are an alias that is no trust
// domain and a mesh config trustDomain that is not meshd's.
func TestAuthorizationPolicyTrustDomains(t *testing.T) {
	in := inputs(t, `apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    trustDomain: corp.example
    trustDomainAliases: [old.example, "not/a-domain", example.org]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: allow, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  rules:
  - from: [{source: {principals: ["cluster.local/ns/default/sa/sleep", "old.example/ns/ops/sa/admin", "partner.example/ns/p/sa/q", "*/ns/any/sa/one"]}}]
  - when: [{key: source.principal, values: ["cluster.local/ns/default/sa/curl"]}]
  - from: [{source: {namespaces: [team], notPrincipals: ["cluster.local/ns/team/sa/intern"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: foo}
spec:
  selector: {matchLabels: {app: httpbin}}
  action: DENY
  rules:
  - from: [{source: {principals: ["example.org/ns/ops/sa/admin-bot"]}}]
`, pod("foo", "httpbin", "10.0.0.1", "n1", "app=httpbin"))
	snap, rej := NewBuilder(BuilderOptions{TrustDomain: "example.org"}).Build(in)
	policies := snap.PoliciesFor(workloadByName(t, snap, "foo", "httpbin"))
	if len(policies) != 2 {
		t.Fatalf("PoliciesFor(httpbin) = %v; want allow and deny (rejections %v)", policies, rej)
	}
	tests := []struct {
		peer string
		want bool
	}{
		{"spiffe://example.org/ns/default/sa/sleep", true},    // cluster.local stands for the mesh's trust domain
		{"spiffe://old.example/ns/default/sa/sleep", true},    // and for its aliases
		{"spiffe://cluster.local/ns/default/sa/sleep", false}, // not one of them
		{"spiffe://example.org/ns/ops/sa/admin", true},        // an alias's principal matches the mesh's identity
		{"spiffe://old.example/ns/ops/sa/admin", true},
		{"spiffe://partner.example/ns/p/sa/q", true}, // another trust domain: only itself
		{"spiffe://example.org/ns/p/sa/q", false},
		{"spiffe://elsewhere.example/ns/any/sa/one", true}, // "*": any trust domain
		{"spiffe://example.org/ns/default/sa/curl", true},  // the source.principal condition
		{"spiffe://old.example/ns/default/sa/curl", true},
		{"spiffe://example.org/ns/team/sa/dev", true},
		{"spiffe://example.org/ns/team/sa/intern", false}, // notPrincipals in every trust domain
		{"spiffe://old.example/ns/team/sa/intern", false},
		{"spiffe://old.example/ns/ops/sa/admin-bot", false}, // the DENY's principal, through the alias
	}
	for _, tt := range tests {
		d := policy.EvaluateL4(policies, &policy.Request{SourcePrincipal: tt.peer, SourceNamespace: strings.Split(tt.peer, "/")[4],
			DestinationIP: mustAddr("10.0.0.1"), DestinationPort: 8080})
		if d.Allow != tt.want {
			t.Errorf("EvaluateL4(%s) = %v (%s); want %v", tt.peer, d.Allow, d.Reason, tt.want)
		}
	}
	var warned []string
	for _, r := range rej {
		if !r.Warning {
			t.Errorf("rejection %v; want warnings only", r)
		}
		warned = append(warned, r.String())
	}
	for _, want := range []string{
		`warning MeshConfig istio-system/istio: trustDomain "corp.example" differs from meshd's --trust-domain "example.org"`,
		`warning MeshConfig istio-system/istio: trustDomainAliases: "not/a-domain" is not a trust domain name`,
		`warning AuthorizationPolicy foo/allow: principal "partner.example/ns/p/sa/q" names trust domain "partner.example", neither the mesh's "example.org"`,
	} {
		if !slices.ContainsFunc(warned, func(w string) bool { return strings.HasPrefix(w, want) }) {
			t.Errorf("warnings %q; want one starting %q", warned, want)
		}
	}
	if len(warned) != 3 {
		t.Errorf("warnings %q; want those three only (the alias equal to the trust domain is no fault)", warned)
	}
}

// TestPrincipalsInTrustDomains: the expansion itself, as Istio's trust
// domain bundle does it: patterns in the principal's trust domain are kept
// for the trust domains they match, and nothing is listed twice.
func TestPrincipalsInTrustDomains(t *testing.T) {
	tds := []string{"new-td", "old-td"}
	tests := []struct {
		in, want []string
	}{
		{[]string{"cluster.local/ns/a/sa/b"}, []string{"new-td/ns/a/sa/b", "old-td/ns/a/sa/b"}},
		{[]string{"old-td/ns/a/sa/b", "new-td/ns/a/sa/b"}, []string{"new-td/ns/a/sa/b", "old-td/ns/a/sa/b"}},
		{[]string{"*-td/ns/a/sa/b"}, []string{"*-td/ns/a/sa/b"}},
		{[]string{"new-*/ns/a/sa/b"}, []string{"new-td/ns/a/sa/b", "old-td/ns/a/sa/b"}},
		{[]string{"*/ns/a/sa/b", "ns/a/sa/b", "spiffe://new-td/ns/a/sa/b"}, []string{"*/ns/a/sa/b", "ns/a/sa/b", "spiffe://new-td/ns/a/sa/b"}},
		{[]string{"other/ns/a/sa/b"}, []string{"other/ns/a/sa/b"}},
	}
	for _, tt := range tests {
		var foreign []string
		got := principalsInTrustDomains(tt.in, tds, func(p string) { foreign = append(foreign, p) })
		if !slices.Equal(got, tt.want) {
			t.Errorf("principalsInTrustDomains(%q) = %q; want %q", tt.in, got, tt.want)
		}
		if wantForeign := tt.in[0] == "other/ns/a/sa/b"; (len(foreign) > 0) != wantForeign {
			t.Errorf("principalsInTrustDomains(%q) called foreign for %q", tt.in, foreign)
		}
	}
}

// TestTrustDomainAliasesInSnapshot: the mesh config's valid
// trustDomainAliases reach the snapshot that meshd pushes (pkg/xds sends
// them with the trust bundle to node agents and waypoints), whether or not
// any policy reads them; one that is no trust domain name is warned about
// and left out, and so are the mesh's own trust domain and repeats.
func TestTrustDomainAliasesInSnapshot(t *testing.T) {
	tests := []struct {
		name, mesh string
		want       []string
		warnings   int
	}{
		{"no mesh config", "", nil, 0},
		{"no aliases", "trustDomain: example.org", nil, 0},
		{"aliases", `trustDomainAliases: [old.example, "not/a-domain", example.org, old.example, Upper.Example, other-td]`, []string{"old.example", "other-td"}, 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var docs []string
			if tt.mesh != "" {
				docs = append(docs, "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n    "+tt.mesh+"\n")
			}
			snap, rej := NewBuilder(BuilderOptions{TrustDomain: "example.org"}).Build(inputs(t, docs...))
			if got := snap.TrustDomainAliases(); !slices.Equal(got, tt.want) {
				t.Errorf("TrustDomainAliases() = %q; want %q", got, tt.want)
			}
			if snap.TrustDomain() != "example.org" {
				t.Errorf("TrustDomain() = %q; want example.org", snap.TrustDomain())
			}
			if len(rej) != tt.warnings {
				t.Errorf("rejections %v; want %d warnings about aliases that are no trust domain", rej, tt.warnings)
			}
			for _, r := range rej {
				if !r.Warning || !strings.Contains(r.Reason, "is not a trust domain name") {
					t.Errorf("rejection %v; want a warning that an alias is not a trust domain name", r)
				}
			}
		})
	}
}
