package controlplane

import (
	"crypto/x509"
	"fmt"
	"net/url"
	"slices"
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/util/validation"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// This file reads Gateway API BackendTLSPolicies: TLS origination from a
// waypoint or ingress gateway to the backends of the Services they target.
//
// Decisions:
//   - Targets are core Services (group "", kind Service) in the policy's
//     namespace; sectionName names one of the Service's ports, and without
//     it the policy covers every port. A policy for the port beats one for
//     the whole Service; of two for the same target and sectionName the
//     older wins (creationTimestamp, then namespace/name), as the spec
//     says, and the other is warned about.
//   - The policy is SIMPLE TLS: validation.hostname is the SNI and, without
//     subjectAltNames, the name the backend's certificate must carry; the
//     roots are the ca.crt of the ConfigMaps in caCertificateRefs, joined,
//     or the proxy's system roots for wellKnownCACertificates: System.
//   - A DestinationRule that sets tls for the same host and port takes
//     precedence, whatever its mode (Istio merges a user's DestinationRule
//     over the one it makes of a BackendTLSPolicy, the user's fields
//     winning); one that leaves tls out leaves the policy in force, for
//     the cluster and for each of its subsets without tls of their own.
//   - A policy that cannot be turned into TLS settings (a CA reference
//     that does not resolve, no PEM in it, an unknown well-known set, an
//     invalid hostname) fails closed: the Service's clusters it covers get
//     no endpoints (503) rather than requests in the clear, as the spec
//     asks for an invalid CA reference. It is reported as a warning on the
//     policy, which stays in force.
//   - Like a DestinationRule's TLS, it applies where meshlet's L7 proxies
//     dial the Service's endpoints: waypoints, and ingress gateways that
//     reach the pods directly (one that sends requests through the
//     Service's waypoint leaves origination to the waypoint).
//   - Status: one ancestor per Service target (see backendTLSStatus in
//     gatewaystatus.go).

// backendTLS is one BackendTLSPolicy made ready for clusters.
type backendTLS struct {
	namespace, name string
	// tls is nil when the policy is unusable: its targets fail closed.
	tls *model.UpstreamTLS
	// What status reports (all also warned on the policy): invalid
	// holds the faults of the policy's own fields; caKind and caRef those
	// of its caCertificateRefs (unsupported kind; missing or malformed).
	invalid, caKind, caRef []string
	// targets says, per targetRefs entry, what became of it.
	targets []backendTLSTarget
}

// backendTLSTarget is the outcome of one of a policy's targetRefs.
type backendTLSTarget struct {
	ref gatewayv1.LocalPolicyTargetReferenceWithSectionName
	// reason is "" when the policy is in force for the target, else
	// PolicyReasonTargetNotFound or PolicyReasonConflicted; unsupported
	// (not a core Service) targets are not recorded.
	reason  gatewayv1.PolicyConditionReason
	message string
}

// backendTLSTargets are the policies in force for one Service.
type backendTLSTargets struct {
	whole  *backendTLS
	byPort map[string]*backendTLS // by port name (sectionName)
}

// translateBackendTLSPolicies validates every BackendTLSPolicy and files
// each under the Services it targets, oldest first. It runs after the
// DestinationRules are chosen, to warn when one of them takes precedence.
func (bd *build) translateBackendTLSPolicies() {
	pols := make([]*gatewayv1.BackendTLSPolicy, 0, len(bd.in.backendTLS))
	for _, k := range sortedKeys(bd.in.backendTLS) {
		pols = append(pols, bd.in.backendTLS[k])
	}
	for _, p := range oldestFirst(pols) {
		r := bd.rejecter(KindBackendTLSPolicy, p.Namespace, p.Name)
		bt := &backendTLS{namespace: p.Namespace, name: p.Name}
		bt.tls = bd.backendTLSSettings(p, r, bt)
		bd.btlsPolicies = append(bd.btlsPolicies, bt)
		target := func(ref gatewayv1.LocalPolicyTargetReferenceWithSectionName, reason gatewayv1.PolicyConditionReason, format string, args ...any) {
			bt.targets = append(bt.targets, backendTLSTarget{ref: ref, reason: reason, message: fmt.Sprintf(format, args...)})
		}
		for i, ref := range p.Spec.TargetRefs {
			field := fmt.Sprintf("targetRefs[%d]", i)
			svc, supported, missing := bd.policyService(r, field, p.Namespace, ref.LocalPolicyTargetReference)
			if !supported {
				continue
			}
			if svc == nil {
				target(ref, gatewayv1.PolicyReasonTargetNotFound, "%s", missing)
				continue
			}
			svcKey := p.Namespace + "/" + string(ref.Name)
			section := ""
			if ref.SectionName != nil {
				section = string(*ref.SectionName)
			}
			if section != "" && !slices.ContainsFunc(svc.Spec.Ports, func(sp corev1.ServicePort) bool { return sp.Name == section }) {
				r.warn("%s: Service %s has no port named %q (sectionName names a port of the Service); ignored", field, svcKey, section)
				target(ref, gatewayv1.PolicyReasonTargetNotFound, "Service %s has no port named %q (sectionName names a port of the Service)", svcKey, section)
				continue
			}
			t := bd.btlsFor[svcKey]
			if t == nil {
				t = &backendTLSTargets{byPort: map[string]*backendTLS{}}
				bd.btlsFor[svcKey] = t
			}
			prev, what := t.whole, "Service "+svcKey
			if section != "" {
				prev, what = t.byPort[section], what+" port "+section
			}
			if prev != nil {
				r.warn("%s: %s already has TLS from the older BackendTLSPolicy %s/%s, which takes precedence (Gateway API: the oldest wins); ignored for it", field, what, prev.namespace, prev.name)
				target(ref, gatewayv1.PolicyReasonConflicted, "%s already has TLS from the older BackendTLSPolicy %s/%s, which takes precedence (the oldest wins)", what, prev.namespace, prev.name)
				continue
			}
			target(ref, "", "")
			if section != "" {
				t.byPort[section] = bt
			} else {
				t.whole = bt
			}
			bd.warnBackendTLSShadowed(r, field, svc, section)
		}
	}
}

// policyService resolves a policy's targetRef to a core Service of ns, the
// one kind of target meshlet's backend policies take: supported is false
// for another kind (warned; no status ancestor); svc is nil, warned, when
// the Service does not exist (yet), missing saying so for the ancestor's
// TargetNotFound.
func (bd *build) policyService(r *rejections, field, ns string, ref gatewayv1.LocalPolicyTargetReference) (svc *corev1.Service, supported bool, missing string) {
	if ref.Group != "" || ref.Kind != "Service" {
		r.warn("%s: %s %q (group %q) is not a target meshlet supports: name a Service (group \"\", kind Service); ignored", field, ref.Kind, ref.Name, ref.Group)
		return nil, false, ""
	}
	key := ns + "/" + string(ref.Name)
	if svc, ok := bd.kubeSvcs[key]; ok {
		return svc, true, ""
	}
	missing = fmt.Sprintf("no Service %s; the policy applies to it once it exists", key)
	r.warn("%s: %s", field, missing)
	return nil, true, missing
}

// serviceAncestor is a policy's status.ancestors entry, meshd's, for its
// target Service name (port section, when given).
func serviceAncestor(name gatewayv1.ObjectName, section *gatewayv1.SectionName, conds ...metav1.Condition) gatewayv1.PolicyAncestorStatus {
	return gatewayv1.PolicyAncestorStatus{
		AncestorRef:    gatewayv1.ParentReference{Group: ptrTo(gatewayv1.Group("")), Kind: ptrTo(gatewayv1.Kind("Service")), Name: name, SectionName: section},
		ControllerName: ControllerName,
		Conditions:     conds,
	}
}

// warnBackendTLSShadowed reports the ports of svc (those named section,
// all when it is "") whose DestinationRule sets tls, which takes
// precedence over the policy.
func (bd *build) warnBackendTLSShadowed(r *rejections, field string, svc *corev1.Service, section string) {
	dr, ok := bd.drFor[svc.Namespace+"/"+svc.Name]
	if !ok {
		return
	}
	for _, sp := range svc.Spec.Ports {
		if (section == "" || sp.Name == section) && drSetsTLS(dr, uint32(sp.Port)) {
			r.warn("%s: port %d of Service %s/%s: the DestinationRule %s/%s sets tls for it, which takes precedence over a BackendTLSPolicy (as in Istio); remove one of the two",
				field, sp.Port, svc.Namespace, svc.Name, dr.meta.Namespace, dr.meta.Name)
		}
	}
}

// drSetsTLS reports whether a DestinationRule's traffic policy for port
// (its portLevelSettings entry, else the top level) has a tls stanza.
func drSetsTLS(dr config[networkingapi.DestinationRule], port uint32) bool {
	return forPort(dr.spec.GetTrafficPolicy(), port).GetTls() != nil
}

// backendTLSFor returns the BackendTLSPolicy in force for port of ms: the
// one for the port's name, else the one for the whole Service; nil when
// none targets it.
func (bd *build) backendTLSFor(ms *model.Service, port uint32) *backendTLS {
	if ms.Source != model.SourceKubernetes {
		return nil
	}
	t := bd.btlsFor[ms.Key()]
	if t == nil {
		return nil
	}
	for _, sp := range ms.Ports {
		if sp.Port == port && sp.Name != "" {
			if bt := t.byPort[sp.Name]; bt != nil {
				return bt
			}
		}
	}
	return t.whole
}

// backendTLSSettings turns a policy's validation into TLS origination;
// nil when it cannot be (each fault reported on r, naming the field).
func (bd *build) backendTLSSettings(p *gatewayv1.BackendTLSPolicy, r *rejections, bt *backendTLS) *model.UpstreamTLS {
	const failed = "requests to the Services it targets get 503 until it is fixed"
	v := p.Spec.Validation
	ok := true
	// invalid reports a fault of the policy's own fields, on r and in bt.
	invalid := func(format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		r.warn("%s; %s", msg, failed)
		bt.invalid = append(bt.invalid, msg)
		ok = false
	}
	host := string(v.Hostname)
	if len(validation.IsDNS1123Subdomain(host)) > 0 {
		invalid("validation.hostname %q is not a DNS name (lowercase letters, digits, '-' and '.'; no wildcard): set the name the backend serves TLS for, such as api.example.com", host)
	}
	out := &model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: host}
	for i, san := range v.SubjectAltNames {
		field := fmt.Sprintf("validation.subjectAltNames[%d]", i)
		switch san.Type {
		case gatewayv1.HostnameSubjectAltNameType:
			if san.Hostname == "" {
				invalid("%s: type Hostname needs hostname", field)
				continue
			}
			out.SubjectAltNames = append(out.SubjectAltNames, string(san.Hostname))
		case gatewayv1.URISubjectAltNameType:
			if u, err := url.Parse(string(san.URI)); err != nil || u.Scheme == "" || (u.Host == "" && u.Opaque == "") {
				invalid("%s: uri %q is not an absolute URI such as spiffe://cluster.local/ns/app/sa/api", field, san.URI)
				continue
			}
			out.SubjectAltNames = append(out.SubjectAltNames, string(san.URI))
		default:
			invalid("%s: type %q: want Hostname or URI", field, san.Type)
		}
	}
	wellKnown := ""
	if v.WellKnownCACertificates != nil {
		wellKnown = string(*v.WellKnownCACertificates)
	}
	switch {
	case len(v.CACertificateRefs) > 0 && wellKnown != "":
		invalid("validation: caCertificateRefs and wellKnownCACertificates are both set; keep one")
	case len(v.CACertificateRefs) > 0:
		var caOK bool
		out.CAPEM, caOK = bd.backendTLSCA(p, r, bt, failed)
		ok = ok && caOK
	case wellKnown == string(gatewayv1.WellKnownCACertificatesSystem):
		// The proxy's system roots: CAPEM stays empty.
	case wellKnown != "":
		invalid("validation.wellKnownCACertificates %q is not a set meshlet knows: use System, or caCertificateRefs to a ConfigMap with ca.crt", wellKnown)
	default:
		invalid("validation: neither caCertificateRefs nor wellKnownCACertificates is set: name a ConfigMap with ca.crt, or System for the system roots")
	}
	if len(p.Spec.Options) > 0 {
		r.warn("options are not read by meshlet; ignored")
	}
	if !ok {
		return nil
	}
	return out
}

// backendTLSCA joins the ca.crt of the ConfigMaps a policy's
// caCertificateRefs name. ok is false when any of them does not resolve
// to PEM certificates (the spec: connections using an invalid reference
// must fail).
func (bd *build) backendTLSCA(p *gatewayv1.BackendTLSPolicy, r *rejections, bt *backendTLS, failed string) (string, bool) {
	var pem strings.Builder
	ok := true
	// bad reports a fault of one reference, on r and in list (bt.caKind or bt.caRef).
	bad := func(list *[]string, format string, args ...any) {
		msg := fmt.Sprintf(format, args...)
		r.warn("%s; %s", msg, failed)
		*list = append(*list, msg)
		ok = false
	}
	for i, ref := range p.Spec.Validation.CACertificateRefs {
		field := fmt.Sprintf("validation.caCertificateRefs[%d]", i)
		if ref.Group != "" || ref.Kind != "ConfigMap" {
			bad(&bt.caKind, "%s: %s %q (group %q) is not supported: name a ConfigMap (group \"\", kind ConfigMap) holding the CA certificates under %s", field, ref.Kind, ref.Name, ref.Group, caCertKey)
			continue
		}
		cmKey := p.Namespace + "/" + string(ref.Name)
		cm := bd.in.configMaps[cmKey]
		if cm == nil {
			bad(&bt.caRef, "%s: no ConfigMap %s: create it with the backend's CA certificates under %s", field, cmKey, caCertKey)
			continue
		}
		ca := caBundle(cm)
		if ca == "" {
			bad(&bt.caRef, "%s: ConfigMap %s has no %s: put the backend's PEM CA certificates under that key", field, cmKey, caCertKey)
			continue
		}
		if !x509.NewCertPool().AppendCertsFromPEM([]byte(ca)) {
			bad(&bt.caRef, "%s: ConfigMap %s: %s holds no PEM certificate", field, cmKey, caCertKey)
			continue
		}
		pem.WriteString(ca)
		if !strings.HasSuffix(ca, "\n") {
			pem.WriteByte('\n')
		}
	}
	return pem.String(), ok
}

// applyBackendTLS puts bt's TLS origination on c, a cluster of a port
// bt covers whose DestinationRule (if any) sets no tls for the port:
// on the cluster and on each subset with a traffic policy of its own
// but no tls in it (subsetTLS[i] says whether subset i sets one). An
// unusable policy leaves c without endpoints.
func applyBackendTLS(c *model.L7Cluster, bt *backendTLS, subsetTLS []bool) {
	if bt.tls == nil {
		c.Endpoints = nil
		return
	}
	clone := func() *model.UpstreamTLS {
		t := *bt.tls
		t.SubjectAltNames = slices.Clone(t.SubjectAltNames)
		return &t
	}
	c.Traffic.TLS = clone()
	for i := range c.Subsets {
		if s := c.Subsets[i].Traffic; s != nil && !subsetTLS[i] {
			s.TLS = clone()
		}
	}
}
