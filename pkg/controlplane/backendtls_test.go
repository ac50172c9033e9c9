package controlplane

import (
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// reviewsTwoPorts replaces bookinfo's reviews Service with one serving
// plain HTTP on 9080 (port "http") and HTTPS on 9443 (port "https").
const reviewsTwoPorts = `{apiVersion: v1, kind: Service, metadata: {name: reviews, namespace: bookinfo}, spec: {clusterIP: 10.96.0.20, selector: {app: reviews},
  ports: [{name: http, port: 9080, targetPort: 8080}, {name: https, port: 9443, targetPort: 8443}]}}
`

// reviewsDR is the DestinationRule for reviews in bookinfo with the given
// YAML lines of its spec after the host.
func reviewsDR(spec string) string {
	return "apiVersion: networking.istio.io/v1\nkind: DestinationRule\nmetadata: {name: reviews, namespace: bookinfo}\nspec:\n  host: reviews\n" + spec
}

// backendTLSPolicy is a BackendTLSPolicy in bookinfo created at created,
// with targetRefs and validation as YAML flow values.
func backendTLSPolicy(name, created, targetRefs, validation string) string {
	return `apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: ` + name + `, namespace: bookinfo, creationTimestamp: "` + created + `"}
spec:
  targetRefs: ` + targetRefs + `
  validation: ` + validation + `
`
}

// configMap is a ConfigMap in bookinfo with one data entry.
func configMap(name, key, value string) string {
	return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: bookinfo}\ndata: {%s: %q}\n", name, key, value)
}

const (
	wholeReviews = `[{group: "", kind: Service, name: reviews}]`
	httpsReviews = `[{group: "", kind: Service, name: reviews, sectionName: https}]`
	reviewsSNI   = "reviews.bookinfo.example"
	systemRoots  = `{hostname: ` + reviewsSNI + `, wellKnownCACertificates: System}`
)

// reviewsClusters returns the bookinfo waypoint's reviews clusters by port.
func reviewsClusters(t *testing.T, snap *model.Snapshot) map[uint32]model.L7Cluster {
	t.Helper()
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	out := map[uint32]model.L7Cluster{}
	for _, port := range []uint32{9080, 9443} {
		for _, c := range cfg.Clusters {
			if c.Name == clusterName("reviews.bookinfo.svc.cluster.local", port) {
				out[port] = c
			}
		}
	}
	return out
}

// TestWaypointL7BackendTLSPolicy: a BackendTLSPolicy targeting a Service
// bound to a waypoint gives the waypoint's clusters of that Service TLS
// origination (SNI and names from validation, roots from the ConfigMaps or
// the system's), for the port its sectionName names or for every port;
// a port's policy beats the whole Service's, and of two for the same
// target the oldest wins. A policy that cannot be set up is reported and
// leaves the ports it covers without endpoints, never in the clear; a
// DestinationRule's tls for the port takes precedence.
func TestWaypointL7BackendTLSPolicy(t *testing.T) {
	ca, _ := testutil.SelfSignedPEM(t, "reviews root")
	ca2, _ := testutil.SelfSignedPEM(t, "reviews second root")
	caCM := configMap("reviews-ca", caCertKey, string(ca))
	withCA := `{hostname: ` + reviewsSNI + `, caCertificateRefs: [{group: "", kind: ConfigMap, name: reviews-ca}]}`
	simple := func(sni, caPEM string, sans ...string) *model.UpstreamTLS {
		return &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: sni, CAPEM: caPEM, SubjectAltNames: sans}
	}
	const day1, day2 = "2026-01-01T00:00:00Z", "2026-01-02T00:00:00Z"
	tests := []struct {
		name               string
		docs               []string
		want9080, want9443 *model.UpstreamTLS
		// closed: both ports are left without endpoints.
		closed bool
		// warned is a warning the build must report; "" wants none.
		warned string
	}{
		{name: "whole Service, CA from a ConfigMap",
			docs:     []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, withCA), caCM},
			want9080: simple(reviewsSNI, string(ca)), want9443: simple(reviewsSNI, string(ca))},
		{name: "system roots and subjectAltNames",
			docs: []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, `{hostname: `+reviewsSNI+`, wellKnownCACertificates: System,
    subjectAltNames: [{type: Hostname, hostname: reviews.internal}, {type: URI, uri: "spiffe://cluster.local/ns/bookinfo/sa/reviews"}]}`)},
			want9080: simple(reviewsSNI, "", "reviews.internal", "spiffe://cluster.local/ns/bookinfo/sa/reviews"),
			want9443: simple(reviewsSNI, "", "reviews.internal", "spiffe://cluster.local/ns/bookinfo/sa/reviews")},
		{name: "two CA ConfigMaps are joined",
			docs: []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, `{hostname: `+reviewsSNI+`, caCertificateRefs: [{group: "", kind: ConfigMap, name: reviews-ca}, {group: "", kind: ConfigMap, name: reviews-ca2}]}`),
				caCM, configMap("reviews-ca2", caCertKey, string(ca2))},
			want9080: simple(reviewsSNI, string(ca)+string(ca2)), want9443: simple(reviewsSNI, string(ca)+string(ca2))},
		{name: "sectionName scopes the policy to that port",
			docs:     []string{backendTLSPolicy("reviews-tls", day1, httpsReviews, systemRoots)},
			want9443: simple(reviewsSNI, "")},
		{name: "a port's policy beats the whole Service's, even when newer",
			docs: []string{backendTLSPolicy("whole", day1, wholeReviews, `{hostname: whole.example, wellKnownCACertificates: System}`),
				backendTLSPolicy("https", day2, httpsReviews, `{hostname: https.example, wellKnownCACertificates: System}`)},
			want9080: simple("whole.example", ""), want9443: simple("https.example", "")},
		{name: "of two for the same target the oldest wins",
			docs: []string{backendTLSPolicy("a-newer", day2, wholeReviews, `{hostname: newer.example, wellKnownCACertificates: System}`),
				backendTLSPolicy("b-older", day1, wholeReviews, `{hostname: older.example, wellKnownCACertificates: System}`)},
			want9080: simple("older.example", ""), want9443: simple("older.example", ""),
			warned: "BackendTLSPolicy bookinfo/a-newer: targetRefs[0]: Service bookinfo/reviews already has TLS from the older BackendTLSPolicy bookinfo/b-older"},
		{name: "of two as old, the first by name wins",
			docs: []string{backendTLSPolicy("b", day1, httpsReviews, `{hostname: b.example, wellKnownCACertificates: System}`),
				backendTLSPolicy("a", day1, httpsReviews, `{hostname: a.example, wellKnownCACertificates: System}`)},
			want9443: simple("a.example", ""),
			warned:   "BackendTLSPolicy bookinfo/b: targetRefs[0]: Service bookinfo/reviews port https already has TLS from the older BackendTLSPolicy bookinfo/a"},
		{name: "missing ConfigMap fails closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, withCA)},
			closed: true,
			warned: "BackendTLSPolicy bookinfo/reviews-tls: validation.caCertificateRefs[0]: no ConfigMap bookinfo/reviews-ca: create it with the backend's CA certificates under ca.crt"},
		{name: "ConfigMap without ca.crt fails closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, withCA), configMap("reviews-ca", "root.pem", string(ca))},
			closed: true,
			warned: "BackendTLSPolicy bookinfo/reviews-tls: validation.caCertificateRefs[0]: ConfigMap bookinfo/reviews-ca has no ca.crt"},
		{name: "ca.crt without PEM fails closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, withCA), configMap("reviews-ca", caCertKey, "not a certificate")},
			closed: true,
			warned: "ConfigMap bookinfo/reviews-ca: ca.crt holds no PEM certificate"},
		{name: "a CA reference of another kind fails closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, `{hostname: `+reviewsSNI+`, caCertificateRefs: [{group: "", kind: Secret, name: reviews-ca}]}`)},
			closed: true,
			warned: `validation.caCertificateRefs[0]: Secret "reviews-ca" (group "") is not supported: name a ConfigMap`},
		{name: "both CA sources fail closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, `{hostname: `+reviewsSNI+`, wellKnownCACertificates: System, caCertificateRefs: [{group: "", kind: ConfigMap, name: reviews-ca}]}`), caCM},
			closed: true,
			warned: "validation: caCertificateRefs and wellKnownCACertificates are both set; keep one"},
		{name: "an unknown well-known set fails closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, `{hostname: `+reviewsSNI+`, wellKnownCACertificates: example.com/roots}`)},
			closed: true,
			warned: `validation.wellKnownCACertificates "example.com/roots" is not a set meshlet knows`},
		{name: "an invalid hostname fails closed",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, `{hostname: "*.example.com", wellKnownCACertificates: System}`)},
			closed: true,
			warned: `validation.hostname "*.example.com" is not a DNS name`},
		{name: "a target of another kind is ignored",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, `[{group: networking.istio.io, kind: ServiceEntry, name: reviews}]`, systemRoots)},
			warned: `targetRefs[0]: ServiceEntry "reviews" (group "networking.istio.io") is not a target meshlet supports`},
		{name: "a sectionName naming no port is ignored",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, `[{group: "", kind: Service, name: reviews, sectionName: grpc}]`, systemRoots)},
			warned: `targetRefs[0]: Service bookinfo/reviews has no port named "grpc"`},
		{name: "a DestinationRule's tls takes precedence",
			docs: []string{backendTLSPolicy("reviews-tls", day1, wholeReviews, systemRoots), reviewsDR(`  trafficPolicy:
    tls: {mode: SIMPLE, sni: dr.example}
    portLevelSettings: [{port: {number: 9443}, loadBalancer: {simple: ROUND_ROBIN}}]
`)},
			// Port 9443's settings have no tls: the policy applies there.
			want9080: simple("dr.example", ""), want9443: simple(reviewsSNI, ""),
			warned: "BackendTLSPolicy bookinfo/reviews-tls: targetRefs[0]: port 9080 of Service bookinfo/reviews: the DestinationRule bookinfo/reviews sets tls for it, which takes precedence"},
		{name: "a DestinationRule's tls DISABLE takes precedence too",
			docs:   []string{backendTLSPolicy("reviews-tls", day1, httpsReviews, systemRoots), reviewsDR("  trafficPolicy: {tls: {mode: DISABLE}}\n")},
			warned: "port 9443 of Service bookinfo/reviews: the DestinationRule bookinfo/reviews sets tls for it"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t, bookinfo(append([]string{reviewsTwoPorts}, tt.docs...)...)...))
			switch {
			case tt.warned == "" && len(rej) != 0:
				t.Errorf("rejections = %v; want none", rej)
			case tt.warned != "" && !hasRejection(rej, tt.warned, true):
				t.Errorf("rejections = %v; want a warning containing %q", rej, tt.warned)
			}
			clusters := reviewsClusters(t, snap)
			for port, want := range map[uint32]*model.UpstreamTLS{9080: tt.want9080, 9443: tt.want9443} {
				c, ok := clusters[port]
				if !ok {
					t.Fatalf("no cluster for reviews port %d", port)
				}
				if diff := cmp.Diff(want, c.Traffic.TLS); diff != "" {
					t.Errorf("port %d TLS origination (-want +got):\n%s", port, diff)
				}
				if got := len(c.Endpoints); tt.closed != (got == 0) {
					t.Errorf("port %d: %d endpoints; want them only when the policy is usable (closed = %t)", port, got, tt.closed)
				}
			}
		})
	}
}

// TestBackendTLSPolicyUnderDestinationRule: a DestinationRule without tls
// leaves a BackendTLSPolicy in force, for the cluster and for a subset
// with a traffic policy of its own; a subset that sets tls keeps its own.
func TestBackendTLSPolicyUnderDestinationRule(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(reviewsTwoPorts, pod("bookinfo", "reviews-v3", "10.0.0.3", "n1", "app=reviews,version=v3"), backendTLSPolicy("reviews-tls", "2026-01-01T00:00:00Z", httpsReviews, systemRoots), reviewsDR(`  trafficPolicy: {loadBalancer: {simple: ROUND_ROBIN}}
  subsets:
  - {name: v1, labels: {version: v1}}
  - {name: v2, labels: {version: v2}, trafficPolicy: {loadBalancer: {simple: RANDOM}}}
  - {name: v3, labels: {version: v3}, trafficPolicy: {tls: {mode: DISABLE}}}
`))...))
	if len(rej) != 0 {
		t.Errorf("rejections = %v; want none", rej)
	}
	c := reviewsClusters(t, snap)[9443]
	want := &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: reviewsSNI}
	if diff := cmp.Diff(want, c.Traffic.TLS); diff != "" {
		t.Errorf("cluster TLS origination (-want +got):\n%s", diff)
	}
	if c.Traffic.LB.Simple != model.LBRoundRobin {
		t.Errorf("cluster load balancing = %v; want the DestinationRule's ROUND_ROBIN kept", c.Traffic.LB.Simple)
	}
	subsets := map[string]model.Subset{}
	for _, s := range c.Subsets {
		subsets[s.Name] = s
	}
	if s := subsets["v1"]; s.Traffic != nil {
		t.Errorf("subset v1 traffic = %+v; want none of its own (the cluster's applies)", s.Traffic)
	}
	if s := subsets["v2"]; s.Traffic == nil || cmp.Diff(want, s.Traffic.TLS) != "" {
		t.Errorf("subset v2 traffic = %+v; want the policy's TLS %v", s.Traffic, want)
	}
	if s := subsets["v3"]; s.Traffic == nil || s.Traffic.TLS != nil {
		t.Errorf("subset v3 traffic = %+v; want its own tls DISABLE kept", s.Traffic)
	}
}

// TestBackendTLSPolicyDeleted: once the policy is gone, the next build of
// the same Builder reaches the Service in the clear again, and a policy
// fixed after failing closed gives the endpoints back.
func TestBackendTLSPolicyDeleted(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	build := func(docs ...string) map[uint32]model.L7Cluster {
		t.Helper()
		snap, _ := b.Build(inputs(t, bookinfo(append([]string{reviewsTwoPorts}, docs...)...)...))
		return reviewsClusters(t, snap)
	}
	policy := backendTLSPolicy("reviews-tls", "2026-01-01T00:00:00Z", wholeReviews,
		`{hostname: `+reviewsSNI+`, caCertificateRefs: [{group: "", kind: ConfigMap, name: reviews-ca}]}`)
	if c := build(policy)[9080]; len(c.Endpoints) != 0 {
		t.Fatalf("with its CA ConfigMap missing: %d endpoints; want none", len(c.Endpoints))
	}
	ca, _ := testutil.SelfSignedPEM(t, "reviews root")
	if c := build(policy, configMap("reviews-ca", caCertKey, string(ca)))[9080]; c.Traffic.TLS == nil || len(c.Endpoints) == 0 {
		t.Fatalf("with its CA ConfigMap: TLS %v, %d endpoints; want TLS and endpoints", c.Traffic.TLS, len(c.Endpoints))
	}
	c := build()[9080]
	if c.Traffic.TLS != nil || len(c.Endpoints) == 0 {
		t.Errorf("after the policy is deleted: TLS %v, %d endpoints; want plaintext to the endpoints", c.Traffic.TLS, len(c.Endpoints))
	}
}

// TestIngressBackendTLSPolicy: an ingress gateway that reaches a Service's
// pods itself originates the TLS its BackendTLSPolicy asks for.
func TestIngressBackendTLSPolicy(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfoIngress, pod("bookinfo", "productpage-v1", "10.0.0.30", "n1", "app=productpage"),
		backendTLSPolicy("productpage-tls", "2026-01-01T00:00:00Z", `[{group: "", kind: Service, name: productpage, sectionName: http}]`,
			`{hostname: productpage.example, wellKnownCACertificates: System}`)))
	for _, r := range rej {
		if strings.Contains(r.Kind, KindBackendTLSPolicy) {
			t.Errorf("rejection %v; want none on the BackendTLSPolicy", r)
		}
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/bookinfo-gateway")
	}
	want := &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "productpage.example"}
	for _, c := range cfg.Clusters {
		if c.Name != "outbound|9080||productpage.bookinfo.svc.cluster.local" {
			continue
		}
		if diff := cmp.Diff(want, c.Traffic.TLS); diff != "" {
			t.Errorf("productpage TLS origination (-want +got):\n%s", diff)
		}
		return
	}
	t.Errorf("clusters %+v; want outbound|9080||productpage.bookinfo.svc.cluster.local", cfg.Clusters)
}
