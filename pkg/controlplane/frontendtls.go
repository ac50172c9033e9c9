package controlplane

import (
	"crypto/x509"
	"fmt"
	"strconv"
	"strings"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// Client certificate validation at a Gateway API ingress (GEP-91, Core):
// Gateway spec.tls.frontend gives the CA certificates the clients of its
// HTTPS listeners must present a certificate from, by default and per
// port. Without it an HTTPS listener is served SIMPLE; with it MUTUAL
// (mode AllowValidOnly, the default), or OPTIONAL_MUTUAL with
// AllowInsecureFallback (a certificate, when given, must chain to the CAs;
// none is let through, as the Gateway's author asked). A listener whose CA
// references all fail is not served at all: never served without the
// validation its Gateway asks for.

// frontendTLS is the client validation in force for one HTTPS listener.
type frontendTLS struct {
	mode  string // model.TLSModeMutual or model.TLSModeOptionalMutual
	caPEM string // the usable CA certificates; "" when none is
	// reason and msg, when a reference fails: the listener's ResolvedRefs.
	reason gatewayv1.ListenerConditionReason
	msg    string
}

// frontendValidation returns the client validation gw asks of its
// listeners on port (spec.tls.frontend: the port's own entry, else the
// default); nil when none. Computed once per build.
func (bd *build) frontendValidation(gw *gatewayv1.Gateway, port gatewayv1.PortNumber) *frontendTLS {
	if gw.Spec.TLS == nil || gw.Spec.TLS.Frontend == nil {
		return nil
	}
	key := gw.Namespace + "/" + gw.Name + ":" + strconv.Itoa(int(port))
	if fv, ok := bd.frontend[key]; ok {
		return fv
	}
	fv := bd.resolveFrontend(gw, port)
	if bd.frontend == nil {
		bd.frontend = map[string]*frontendTLS{}
	}
	bd.frontend[key] = fv
	return fv
}

// resolveFrontend is frontendValidation, uncached.
func (bd *build) resolveFrontend(gw *gatewayv1.Gateway, port gatewayv1.PortNumber) *frontendTLS {
	f := gw.Spec.TLS.Frontend
	v := f.Default.Validation
	for _, pp := range f.PerPort {
		if pp.Port == port {
			v = pp.TLS.Validation
		}
	}
	if v == nil {
		return nil
	}
	out := &frontendTLS{mode: model.TLSModeMutual}
	if v.Mode == gatewayv1.AllowInsecureFallback {
		out.mode = model.TLSModeOptionalMutual
	}
	var pem strings.Builder
	var msgs []string
	fault := func(r gatewayv1.ListenerConditionReason, format string, args ...any) {
		if out.reason == "" {
			out.reason = r
		}
		msgs = append(msgs, fmt.Sprintf(format, args...))
	}
	for i, ref := range v.CACertificateRefs {
		field := fmt.Sprintf("spec.tls.frontend caCertificateRefs[%d]", i)
		ns := gw.Namespace
		if ref.Namespace != nil && *ref.Namespace != "" {
			ns = string(*ref.Namespace)
		}
		if ref.Group != "" || ref.Kind != "ConfigMap" {
			fault(gatewayv1.ListenerReasonInvalidCACertificateKind, "%s: %s %q (group %q) is not supported: name a ConfigMap (group \"\", kind ConfigMap) with the client CA certificates under %s", field, ref.Kind, ref.Name, ref.Group, caCertKey)
			continue
		}
		if ns != gw.Namespace && !bd.granted(KindGateway, gw.Namespace, "ConfigMap", ns, string(ref.Name)) {
			fault(gatewayv1.ListenerReasonRefNotPermitted, "%s: ConfigMap %s/%s: no ReferenceGrant in %s lets Gateways of %s refer to it: create one (from: group %s, kind Gateway, namespace %s; to: group \"\", kind ConfigMap), or put the ConfigMap in %s",
				field, ns, ref.Name, ns, gw.Namespace, gatewayv1.GroupName, gw.Namespace, gw.Namespace)
			continue
		}
		cm := bd.in.configMaps[ns+"/"+string(ref.Name)]
		if cm == nil {
			fault(gatewayv1.ListenerReasonInvalidCACertificateRef, "%s: no ConfigMap %s/%s: create it with the client CA certificates under %s", field, ns, ref.Name, caCertKey)
			continue
		}
		ca := caBundle(cm)
		if ca == "" || !x509.NewCertPool().AppendCertsFromPEM([]byte(ca)) {
			fault(gatewayv1.ListenerReasonInvalidCACertificateRef, "%s: ConfigMap %s/%s has no PEM certificate under %s: put the client CA certificates there", field, ns, ref.Name, caCertKey)
			continue
		}
		pem.WriteString(ca)
		if !strings.HasSuffix(ca, "\n") {
			pem.WriteByte('\n')
		}
	}
	if len(v.CACertificateRefs) == 0 {
		fault(gatewayv1.ListenerReasonInvalidCACertificateRef, "spec.tls.frontend: validation names no caCertificateRefs: name a ConfigMap with the client CA certificates under %s", caCertKey)
	}
	out.caPEM, out.msg = pem.String(), strings.Join(msgs, "; ")
	return out
}

// frontendFault is the client validation of HTTPS listener l of an
// ingress Gateway when one of its CA references fails; nil otherwise.
func (bd *build) frontendFault(gw *gatewayv1.Gateway, l gatewayv1.Listener) *frontendTLS {
	if l.Protocol != gatewayv1.HTTPSProtocolType {
		return nil
	}
	if fv := bd.frontendValidation(gw, l.Port); fv != nil && fv.reason != "" {
		return fv
	}
	return nil
}

// frontendFaultText is fv's fault as told about listener l of gw: in full
// for the Gateway's own listeners; for a ListenerSet's, without the names
// of the Gateway's ConfigMaps, which are not the set owner's to fix.
func frontendFaultText(gw *gatewayv1.Gateway, l ingressListener, fv *frontendTLS) string {
	if l.set == nil {
		return fv.msg
	}
	return fmt.Sprintf("a CA certificate reference of the client certificate validation Gateway %s/%s asks for on port %d (spec.tls.frontend) does not resolve: its owner must fix it (see the Gateway's events)", gw.Namespace, gw.Name, l.Port)
}

// backendClientCert is the client certificate gw's spec.tls.backend names
// for its TLS connections to backends (Core: a kubernetes.io/tls Secret of
// its namespace, or of another whose ReferenceGrant allows it): the
// certificate chain and key; nil without one. reason and msg say why a
// reference does not resolve (the Gateway's ResolvedRefs); the gateway
// then originates TLS without a client certificate.
func (bd *build) backendClientCert(gw *gatewayv1.Gateway) (cert *model.UpstreamTLS, reason gatewayv1.GatewayConditionReason, msg string) {
	if gw.Spec.TLS == nil || gw.Spec.TLS.Backend == nil || gw.Spec.TLS.Backend.ClientCertificateRef == nil {
		return nil, "", ""
	}
	ref := gw.Spec.TLS.Backend.ClientCertificateRef
	ns := gw.Namespace
	if ref.Namespace != nil && *ref.Namespace != "" {
		ns = string(*ref.Namespace)
	}
	const field = "spec.tls.backend.clientCertificateRef"
	switch {
	case (ref.Group != nil && *ref.Group != "") || (ref.Kind != nil && *ref.Kind != "Secret"):
		return nil, gatewayv1.GatewayReasonInvalidClientCertificateRef, fmt.Sprintf("%s %s: meshlet reads client certificates from Secrets only (group \"\", kind Secret)", field, ref.Name)
	case ns != gw.Namespace && !bd.granted(KindGateway, gw.Namespace, "Secret", ns, string(ref.Name)):
		return nil, gatewayv1.GatewayReasonRefNotPermitted, fmt.Sprintf("%s Secret %s/%s: no ReferenceGrant in %s lets Gateways of %s refer to it: create one (from: group %s, kind Gateway, namespace %s; to: group \"\", kind Secret), or put the Secret in %s",
			field, ns, ref.Name, ns, gw.Namespace, gatewayv1.GroupName, gw.Namespace, gw.Namespace)
	}
	sec := bd.in.tlsSecrets[ns+"/"+string(ref.Name)]
	if sec == nil {
		return nil, gatewayv1.GatewayReasonInvalidClientCertificateRef, fmt.Sprintf("%s: no Secret of type kubernetes.io/tls named %s in namespace %s: create it with kubectl create secret tls %s -n %s --cert=<file> --key=<file>", field, ref.Name, ns, ref.Name, ns)
	}
	if err := bd.credentialCheck(sec).keyPair(); err != nil {
		return nil, gatewayv1.GatewayReasonInvalidClientCertificateRef, fmt.Sprintf("%s Secret %s/%s: tls.crt and tls.key do not form a usable key pair: %v", field, ns, ref.Name, err)
	}
	return &model.UpstreamTLS{Mode: model.TLSModeMutual, ClientCertPEM: string(sec.Data[corev1.TLSCertKey]), ClientKeyPEM: string(sec.Data[corev1.TLSPrivateKeyKey])}, "", ""
}

// withClientCert makes the TLS origination BackendTLSPolicies set on lb's
// clusters (and their subsets) present cert's client certificate.
func withClientCert(lb *l7Builder, cert *model.UpstreamTLS) {
	put := func(t *model.UpstreamTLS) {
		if t != nil && t.Mode == model.TLSModeSimple {
			t.Mode, t.ClientCertPEM, t.ClientKeyPEM = model.TLSModeMutual, cert.ClientCertPEM, cert.ClientKeyPEM
		}
	}
	for name := range lb.backendTLS {
		c := lb.clusters[name]
		put(c.Traffic.TLS)
		for i := range c.Subsets {
			if s := c.Subsets[i].Traffic; s != nil {
				put(s.TLS)
			}
		}
	}
}

// GatewayOwnedConditions are the Gateway condition types meshd writes
// (from the build), beside pkg/deployer's Accepted and Programmed: a type
// that no longer applies is removed.
var GatewayOwnedConditions = []string{
	string(gatewayv1.GatewayConditionResolvedRefs),
	string(gatewayv1.GatewayConditionInsecureFrontendValidationMode),
}

// gatewayTLSConditions are an ingress Gateway's ResolvedRefs, when its
// spec.tls.backend names a client certificate, and
// InsecureFrontendValidationMode, while a frontend validation allows
// insecure fallback (GEP-91, GEP-3155).
func (bd *build) gatewayTLSConditions(gw *gatewayv1.Gateway) []metav1.Condition {
	var out []metav1.Condition
	gen := gw.Generation
	if t := gw.Spec.TLS; t != nil && t.Backend != nil && t.Backend.ClientCertificateRef != nil {
		c := condition(string(gatewayv1.GatewayConditionResolvedRefs), true, string(gatewayv1.GatewayReasonResolvedRefs), "spec.tls.backend.clientCertificateRef resolved", gen)
		if _, reason, msg := bd.backendClientCert(gw); reason != "" {
			c = condition(string(gatewayv1.GatewayConditionResolvedRefs), false, string(reason), msg, gen)
		}
		out = append(out, c)
	}
	if t := gw.Spec.TLS; t != nil && t.Frontend != nil {
		insecure := t.Frontend.Default.Validation != nil && t.Frontend.Default.Validation.Mode == gatewayv1.AllowInsecureFallback
		for _, pp := range t.Frontend.PerPort {
			insecure = insecure || (pp.TLS.Validation != nil && pp.TLS.Validation.Mode == gatewayv1.AllowInsecureFallback)
		}
		if insecure {
			out = append(out, condition(string(gatewayv1.GatewayConditionInsecureFrontendValidationMode), true, string(gatewayv1.GatewayReasonConfigurationChanged),
				"spec.tls.frontend: AllowInsecureFallback lets clients without a valid certificate in", gen))
		}
	}
	return out
}
