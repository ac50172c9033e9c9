package controlplane

import (
	"encoding/base64"
	"fmt"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestGatewayFrontendValidation: Gateway spec.tls.frontend (GEP-91) makes
// its HTTPS listeners ask clients for a certificate from the CA of its
// ConfigMap: MUTUAL by default, OPTIONAL_MUTUAL for a port with
// AllowInsecureFallback (warned), the port's own entry winning over the
// default; a port whose CA references all fail is not served (Accepted
// False NoValidCACertificate, ResolvedRefs False with why), never served
// without the validation; a ConfigMap of another namespace needs a
// ReferenceGrant, another kind is InvalidCACertificateKind.
func TestGatewayFrontendValidation(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "shop.example.com")
	ca, _ := testutil.SelfSignedPEM(t, "client-ca")
	other, _ := testutil.SelfSignedPEM(t, "other-ca")
	secret := fmt.Sprintf(`apiVersion: v1
kind: Secret
metadata: {name: shop-cert, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s}
`, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key))
	configMap := func(ns, name, pem string) string {
		return fmt.Sprintf("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: %s, namespace: %s}\ndata:\n  ca.crt: |\n    %s\n", name, ns,
			strings.ReplaceAll(strings.TrimSpace(pem), "\n", "\n    "))
	}
	listener := func(name string, port int) string {
		return fmt.Sprintf("  - {name: %s, port: %d, protocol: HTTPS, tls: {certificateRefs: [{name: shop-cert}]}}\n", name, port)
	}
	b := NewBuilder(BuilderOptions{})
	snap, rej := b.Build(inputs(t, ns("shop", ""), ns("pki", ""), secret,
		configMap("shop", "client-ca", string(ca)), configMap("pki", "other-ca", string(other)), configMap("shop", "empty", ""),
		`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge, namespace: shop}
spec:
  gatewayClassName: meshlet
  tls:
    frontend:
      default: {validation: {caCertificateRefs: [{group: "", kind: ConfigMap, name: client-ca}]}}
      perPort:
      - {port: 8443, tls: {validation: {mode: AllowInsecureFallback, caCertificateRefs: [{group: "", kind: ConfigMap, name: client-ca}]}}}
      - {port: 9443, tls: {validation: {caCertificateRefs: [{group: "", kind: ConfigMap, name: other-ca, namespace: pki}, {group: "", kind: Secret, name: shop-cert}]}}}
      - {port: 10443, tls: {validation: {caCertificateRefs: [{group: "", kind: ConfigMap, name: missing}, {group: "", kind: ConfigMap, name: empty}, {group: "", kind: ConfigMap, name: client-ca}]}}}
  listeners:
  - {name: http, port: 80, protocol: HTTP}
`+listener("https", 443)+listener("fallback", 8443)+listener("nogrant", 9443)+listener("partly", 10443),
		`apiVersion: v1
kind: Service
metadata: {name: web, namespace: shop}
spec: {clusterIP: 10.96.0.71, selector: {app: web}, ports: [{name: http, port: 80}]}
`, `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: web, namespace: shop}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: web, port: 80}]}]
`))
	if !hasRejection(rej, `listener "fallback": spec.tls.frontend mode AllowInsecureFallback lets clients without a valid certificate in`, true) ||
		!hasRejection(rej, `listener "nogrant": spec.tls.frontend caCertificateRefs[0]: ConfigMap pki/other-ca: no ReferenceGrant in pki`, true) ||
		!hasRejection(rej, `not served: no usable client CA certificate`, true) ||
		!hasRejection(rej, `listener "partly": spec.tls.frontend caCertificateRefs[0]: no ConfigMap shop/missing`, true) {
		t.Errorf("rejections = %v; want the fallback, the refused references and the unserved port named", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "shop", Name: "edge"})
	if !ok {
		t.Fatalf("no L7 config for shop/edge (rejections %v)", rej)
	}
	byPort := map[uint32]*model.ListenerTLS{}
	for _, l := range cfg.Listeners {
		byPort[l.Port] = l.TLS
	}
	if len(byPort) != 4 || byPort[80] != nil {
		t.Fatalf("listeners on %v; want 80 (plaintext), 443, 8443, 10443 and not 9443", byPort)
	}
	for port, want := range map[uint32]string{443: model.TLSModeMutual, 8443: model.TLSModeOptionalMutual, 10443: model.TLSModeMutual} {
		if got := byPort[port]; got == nil || got.Mode != want || strings.TrimSpace(got.ClientCAPEM) != strings.TrimSpace(string(ca)) {
			t.Errorf("port %d TLS = %v; want %s with the client CA", port, got, want)
		}
	}

	st := statusOf(t, b, KindGateway, "shop", "edge")
	cond := func(listener string, typ gatewayv1.ListenerConditionType) (bool, string, string) {
		for _, l := range st.Listeners {
			if string(l.Name) == listener {
				c := meta.FindStatusCondition(l.Conditions, string(typ))
				return c.Status == "True", c.Reason, c.Message
			}
		}
		t.Fatalf("no status for listener %s", listener)
		return false, "", ""
	}
	if ok, reason, msg := cond("nogrant", gatewayv1.ListenerConditionAccepted); ok || reason != string(gatewayv1.ListenerReasonNoValidCACertificate) || !strings.Contains(msg, "ReferenceGrant") {
		t.Errorf("nogrant Accepted = %v %s %q; want False NoValidCACertificate", ok, reason, msg)
	}
	if ok, reason, msg := cond("nogrant", gatewayv1.ListenerConditionResolvedRefs); ok || reason != string(gatewayv1.ListenerReasonRefNotPermitted) || !strings.Contains(msg, "kind ConfigMap") {
		t.Errorf("nogrant ResolvedRefs = %v %s %q; want False RefNotPermitted, then the Secret's kind", ok, reason, msg)
	}
	if ok, reason, _ := cond("partly", gatewayv1.ListenerConditionResolvedRefs); ok || reason != string(gatewayv1.ListenerReasonInvalidCACertificateRef) {
		t.Errorf("partly ResolvedRefs = %v %s; want False InvalidCACertificateRef", ok, reason)
	}
	if ok, _, _ := cond("partly", gatewayv1.ListenerConditionAccepted); !ok {
		t.Error("partly not Accepted; want it served with its usable CA")
	}
	if ok, _, _ := cond("https", gatewayv1.ListenerConditionResolvedRefs); !ok {
		t.Error("https ResolvedRefs False; want True")
	}
}

// TestGatewayBackendClientCertificate: an ingress Gateway's
// spec.tls.backend.clientCertificateRef (GEP-3155) is the client
// certificate of the TLS its BackendTLSPolicies originate (MUTUAL), its
// ResolvedRefs True; a reference that does not resolve leaves the
// origination without one, reported (ResolvedRefs False, why); the
// Gateway's InsecureFrontendValidationMode condition is there while a
// frontend validation allows insecure fallback.
func TestGatewayBackendClientCertificate(t *testing.T) {
	cert, key := testutil.SelfSignedPEM(t, "gateway-client")
	ca, _ := testutil.SelfSignedPEM(t, "ca")
	secret := fmt.Sprintf("apiVersion: v1\nkind: Secret\nmetadata: {name: gw-client, namespace: bookinfo}\ntype: kubernetes.io/tls\ndata: {tls.crt: %s, tls.key: %s}\n",
		base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key))
	build := func(tlsSpec string) (*model.L7Config, []Rejection, ObjectStatus) {
		t.Helper()
		gw := strings.Replace(bookinfoIngress, "  gatewayClassName: istio\n", "  gatewayClassName: istio\n  tls: "+tlsSpec+"\n", 1)
		gw = strings.Replace(gw, "  - {name: https, port: 443, protocol: HTTPS}\n", "", 1)
		b := NewBuilder(BuilderOptions{})
		snap, rej := b.Build(inputs(t, gw, secret, configMap("client-ca", "ca.crt", string(ca)), pod("bookinfo", "productpage-v1", "10.0.0.30", "n1", "app=productpage"),
			backendTLSPolicy("productpage-tls", "2026-01-01T00:00:00Z", `[{group: "", kind: Service, name: productpage, sectionName: http}]`,
				`{hostname: productpage.example, wellKnownCACertificates: System}`)))
		cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
		if !ok {
			t.Fatalf("no L7 config (rejections %v)", rej)
		}
		return cfg, rej, statusOf(t, b, KindGateway, "bookinfo", "bookinfo-gateway")
	}
	origination := func(cfg *model.L7Config) *model.UpstreamTLS {
		for _, c := range cfg.Clusters {
			if c.Name == "outbound|9080||productpage.bookinfo.svc.cluster.local" {
				return c.Traffic.TLS
			}
		}
		t.Fatalf("no productpage cluster in %+v", cfg.Clusters)
		return nil
	}
	conds := func(st ObjectStatus) map[string]string {
		out := map[string]string{}
		for _, c := range st.Conditions {
			out[c.Type] = string(c.Status) + " " + c.Reason
		}
		return out
	}

	cfg, _, st := build(`{backend: {clientCertificateRef: {name: gw-client}}, frontend: {default: {validation: {mode: AllowInsecureFallback, caCertificateRefs: [{group: "", kind: ConfigMap, name: client-ca}]}}}}`)
	want := &model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "productpage.example", ClientCertPEM: string(cert), ClientKeyPEM: string(key)}
	if diff := cmp.Diff(want, origination(cfg)); diff != "" {
		t.Errorf("productpage TLS origination (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]string{"ResolvedRefs": "True ResolvedRefs", "InsecureFrontendValidationMode": "True ConfigurationChanged"}, conds(st)); diff != "" {
		t.Errorf("Gateway conditions (-want +got):\n%s", diff)
	}

	cfg, rej, st := build(`{backend: {clientCertificateRef: {name: missing}}}`)
	if got := origination(cfg); got == nil || got.Mode != model.TLSModeSimple || got.ClientCertPEM != "" {
		t.Errorf("origination with an unresolved client certificate = %v; want SIMPLE", got)
	}
	if !hasRejection(rej, "spec.tls.backend.clientCertificateRef: no Secret of type kubernetes.io/tls named missing", true) {
		t.Errorf("rejections = %v; want the missing client certificate named", rej)
	}
	if diff := cmp.Diff(map[string]string{"ResolvedRefs": "False InvalidClientCertificateRef"}, conds(st)); diff != "" {
		t.Errorf("Gateway conditions (-want +got):\n%s", diff)
	}
	if _, _, st := build(`{}`); len(st.Conditions) != 0 {
		t.Errorf("Gateway without spec.tls backend or fallback: conditions %v; want none of meshd's", st.Conditions)
	}
}

// TestGatewayUnservedFieldsWarned: an ingress Gateway allowing ListenerSets
// and claiming the default scope All is served (listenersets_test.go,
// TestDefaultGateways), not warned about.
func TestGatewayUnservedFieldsWarned(t *testing.T) {
	gw := strings.Replace(bookinfoIngress, "  gatewayClassName: istio\n", "  gatewayClassName: istio\n  allowedListeners: {namespaces: {from: Same}}\n  defaultScope: All\n", 1)
	snap, rej := mustBuild(t, inputs(t, gw, pod("bookinfo", "productpage-v1", "10.0.0.30", "n1", "app=productpage")))
	if hasRejection(rej, "allowedListeners", true) || hasRejection(rej, "defaultScope", true) {
		t.Errorf("rejections = %v; want neither allowedListeners nor defaultScope named", rej)
	}
	if _, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"}); !ok {
		t.Error("the Gateway's own listeners are not served")
	}
}
