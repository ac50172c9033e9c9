package controlplane

import (
	"crypto/x509"
	"fmt"
	"strings"

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
// default); nil when none.
func (bd *build) frontendValidation(gw *gatewayv1.Gateway, port gatewayv1.PortNumber) *frontendTLS {
	if gw.Spec.TLS == nil || gw.Spec.TLS.Frontend == nil {
		return nil
	}
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
