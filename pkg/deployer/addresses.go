package deployer

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// A Gateway's spec.addresses and Istio's networking.istio.io/service-type
// annotation, read as Istio's gateway deployment controller reads them
// (pilot/pkg/config/kube/gatewaycommon: deploymentcontroller.go, IsManaged
// in gateway_utils.go; the Service of its kube-gateway and waypoint
// templates), with the Gateway API's conditions where Istio says nothing
// or less than the spec asks:
//
//   - The annotation sets the type of the Gateway's Service: ClusterIP,
//     NodePort or LoadBalancer; without it LoadBalancer for an ingress
//     gateway, ClusterIP for a waypoint (Istio's class defaults), and Istio
//     reads it on both. It is rendered before the overlays of the class
//     defaults and of the parametersRef ConfigMap, so a `service` key
//     setting spec.type wins, as in Istio, which renders its template with
//     the annotation and then merges the overlays. Istio passes any value
//     through and the API server refuses the Service at every reconcile;
//     meshlet rejects another value (Accepted False InvalidParameters,
//     naming the annotation and the values it takes) and leaves what runs
//     as it was.
//
//   - An ingress gateway's addresses of type IPAddress (the default type):
//     a LoadBalancer Service asks for the first with a value through
//     spec.loadBalancerIP (Istio's template; a Service of another type asks
//     for none). An empty value asks for any address. Programmed is True once every requested
//     address is among the Service's load balancer addresses
//     (status.loadBalancer.ingress), and until then False with reason
//     AddressNotAssigned, the message naming those missing; then readiness
//     decides as before. Istio says AddressNotAssigned while the load
//     balancer has no address at all, requested or not, and not when it
//     gave another; the Gateway API asks that a requested address that is
//     unavailable be said in the conditions (GatewaySpec.Addresses), which
//     one the load balancer did not honour is. A Gateway requesting none
//     is Programmed once ready, load balancer address or not, as before:
//     clusters without a load balancer controller serve through the
//     Service's node ports.
//
//   - Several IP addresses: Istio takes more than one address to mean a
//     gateway deployed by hand (IsManaged), deploys nothing and reports
//     the IP addresses unsupported (it binds only to Hostname addresses).
//     The spec allows up to 16 and asks that each be bound or said
//     unavailable, so meshlet deploys as for one: the Service asks for the
//     first (no field of a Service asks for more), and Programmed waits for
//     all of them, the message pointing at the load balancer's own
//     annotation, which spec.infrastructure.annotations can set (MetalLB's
//     metallb.universe.tf/loadBalancerIPs, say).
//
//   - An ingress gateway whose Service is ClusterIP or NodePort (the
//     annotation) gets no load balancer address: a requested address that
//     is not its cluster IP makes Programmed False AddressNotUsable. Istio
//     ignores the address there; the spec asks to say so.
//
//   - Waypoints: meshd hands node agents a waypoint's status.addresses,
//     its Service's cluster IPs, so a waypoint never asks for an address
//     (no loadBalancerIP, whatever the annotation makes its Service) and
//     keeps its cluster IPs as its addresses. A requested address that is
//     not one of them makes Programmed False AddressNotUsable, the
//     waypoint still deployed and serving. Istio ignores the address on a
//     ClusterIP waypoint.
//
//   - Hostname addresses are Istio's manual deployment: the Gateway is
//     bound to an existing Service of that name and Istio deploys nothing.
//     meshlet deploys every Gateway of its classes and does not do that:
//     Accepted False UnsupportedAddress. So are NamedAddress and
//     implementation-specific types, and an IPAddress value that is not an
//     IP address (the Gateway CRD checks the format; an old CRD does not).
//     As for parameters that cannot be used, what runs is left as it was.
//
//   - Changing the type is a server-side apply like any other. meshlet
//     never sets nodePorts, so going from LoadBalancer or NodePort to
//     ClusterIP the API server itself drops the node ports it allocated,
//     with externalTrafficPolicy, allocateLoadBalancerNodePorts and the
//     load balancer status, since the apply left them unchanged
//     (dropTypeDependentFields, k8s.io/kubernetes
//     pkg/registry/core/service/strategy.go); the loadBalancerIP meshlet
//     asked for goes as its field manager no longer applies it; and back
//     to LoadBalancer, node ports are allocated anew. Applies are forced,
//     so a field another manager took is taken back, not a conflict. A
//     `service` overlay that pins a nodePort makes a ClusterIP Service
//     invalid: the dry run rejects the parameters and what runs stays.
//     The lab's TestIngressGatewayAPI switches NodePort, ClusterIP and
//     LoadBalancer on a real API server.

// ServiceTypeAnnotation is Istio's Gateway annotation choosing the type of
// the Gateway's Service.
const ServiceTypeAnnotation = "networking.istio.io/service-type"

// serviceTypes are the values ServiceTypeAnnotation takes.
var serviceTypes = []corev1.ServiceType{corev1.ServiceTypeClusterIP, corev1.ServiceTypeNodePort, corev1.ServiceTypeLoadBalancer}

// AddressError is a spec.addresses entry meshlet cannot serve: the Gateway
// is not accepted (UnsupportedAddress) and what runs is left as it was.
type AddressError struct{ msg string }

func (e *AddressError) Error() string { return e.msg }

// serviceType returns the type of the Service of gw, of kind: its
// ServiceTypeAnnotation, else the kind's default; a *ParamsError for a
// value that is not a type meshlet deploys.
func serviceType(gw *gatewayv1.Gateway, kind Kind) (corev1.ServiceType, error) {
	def := corev1.ServiceTypeClusterIP
	if kind == KindIngress {
		def = corev1.ServiceTypeLoadBalancer
	}
	v, ok := gw.Annotations[ServiceTypeAnnotation]
	if !ok {
		return def, nil
	}
	if t := corev1.ServiceType(v); slices.Contains(serviceTypes, t) {
		return t, nil
	}
	return "", &ParamsError{msg: fmt.Sprintf("gateway %s/%s: annotation %s: %q is not a Service type meshlet deploys: want ClusterIP, NodePort or LoadBalancer (spelt so), or remove the annotation for %s",
		gw.Namespace, gw.Name, ServiceTypeAnnotation, v, def)}
}

// requestedAddresses returns the IP addresses gw's spec.addresses asks
// for, in order, an invalid netip.Addr for an entry with an empty value
// (any address); an *AddressError for the first entry meshlet cannot
// serve.
func requestedAddresses(gw *gatewayv1.Gateway) ([]netip.Addr, error) {
	var out []netip.Addr
	for i, a := range gw.Spec.Addresses {
		typ := gatewayv1.IPAddressType
		if a.Type != nil {
			typ = *a.Type
		}
		errorf := func(format string, args ...any) error {
			return &AddressError{msg: fmt.Sprintf("gateway %s/%s: spec.addresses[%d]: ", gw.Namespace, gw.Name, i) + fmt.Sprintf(format, args...)}
		}
		switch typ {
		case gatewayv1.IPAddressType:
			if a.Value == "" {
				out = append(out, netip.Addr{})
				continue
			}
			ip, err := netip.ParseAddr(a.Value)
			if err != nil || ip.Zone() != "" {
				return nil, errorf("IPAddress %q is not an IP address: write an IPv4 or IPv6 address without a zone (198.51.100.7, 2001:db8::7), or leave the value empty for any address", a.Value)
			}
			out = append(out, ip)
		case gatewayv1.HostnameAddressType:
			return nil, errorf("Hostname %q is not supported: it would bind the Gateway to an existing Service of that name (Istio's manual deployment), and meshlet deploys its own proxy and Service for every Gateway of its classes: remove the address, or request an IP address (type IPAddress)", a.Value)
		default:
			return nil, errorf("type %s (value %q) is not supported: meshlet asks the Gateway's load balancer for IP addresses only (type IPAddress); an address the load balancer names otherwise is asked through its own annotation in spec.infrastructure.annotations: remove the address", typ, a.Value)
		}
	}
	return out, nil
}

// unbound says which of the IP addresses gw requests are not bound to its
// Service svc (none when svc is nil or gw requests none): the reason of
// Programmed False and its message, or "" when all are. An ingress
// gateway's LoadBalancer Service binds its load balancer's addresses, any
// other Service its cluster IPs.
func unbound(gw *gatewayv1.Gateway, svc *corev1.Service) (gatewayv1.GatewayConditionReason, string) {
	reqs, err := requestedAddresses(gw)
	if err != nil || len(reqs) == 0 || svc == nil {
		return "", ""
	}
	kind := ClassKind(gw.Spec.GatewayClassName)
	lb := kind == KindIngress && svc.Spec.Type == corev1.ServiceTypeLoadBalancer
	var have []string
	if lb {
		for _, in := range svc.Status.LoadBalancer.Ingress {
			if in.IP != "" {
				have = append(have, in.IP)
			}
		}
	} else {
		have = svc.Spec.ClusterIPs
		if len(have) == 0 && svc.Spec.ClusterIP != "" {
			have = []string{svc.Spec.ClusterIP}
		}
	}
	var bound []netip.Addr
	for _, s := range have {
		if ip, err := netip.ParseAddr(s); err == nil {
			bound = append(bound, ip.Unmap())
		}
	}
	var missing []string
	for _, r := range reqs {
		switch {
		case !r.IsValid() && len(bound) == 0:
			missing = append(missing, "an IP address (empty value: any)")
		case r.IsValid() && !slices.Contains(bound, r.Unmap()):
			missing = append(missing, r.String())
		}
	}
	if len(missing) == 0 {
		return "", ""
	}
	what := "requested address " + missing[0]
	if len(missing) > 1 {
		what = "requested addresses " + strings.Join(missing, ", ")
	}
	gotten := "none yet"
	if len(have) > 0 {
		gotten = strings.Join(have, ", ")
	}
	switch {
	case lb:
		msg := fmt.Sprintf("%s not (yet) among the load balancer addresses of Service %s/%s (%s): the Service asks for %s through spec.loadBalancerIP, which the cluster's load balancer controller assigns",
			what, svc.Namespace, svc.Name, gotten, firstRequested(reqs))
		if len(reqs) > 1 {
			msg += "; a Service asks for one address only: request the others through your load balancer's annotation in spec.infrastructure.annotations"
		}
		return gatewayv1.GatewayReasonAddressNotAssigned, msg
	case kind == KindIngress:
		return gatewayv1.GatewayReasonAddressNotUsable, fmt.Sprintf("%s: Service %s/%s is of type %s, which gets no load balancer address (its cluster IPs: %s): set annotation %s: LoadBalancer, or remove the address",
			what, svc.Namespace, svc.Name, svc.Spec.Type, gotten, ServiceTypeAnnotation)
	default:
		return gatewayv1.GatewayReasonAddressNotUsable, fmt.Sprintf("%s: a waypoint is reached at its Service's cluster IPs (%s), which meshd gives the node agents, and takes no other address: remove spec.addresses",
			what, gotten)
	}
}

// firstRequested is the address a LoadBalancer Service asks for, as a
// message names it.
func firstRequested(reqs []netip.Addr) string {
	if ip := loadBalancerIP(reqs); ip != "" {
		return ip
	}
	return "no particular one"
}

// loadBalancerIP is what an ingress gateway's LoadBalancer Service asks
// for in spec.loadBalancerIP: the first requested address with a value
// ("" for none). Istio's template takes the first entry even when its
// value is empty, asking then for nothing; asking for a later one serves
// the request better.
func loadBalancerIP(reqs []netip.Addr) string {
	for _, r := range reqs {
		if r.IsValid() {
			return r.String()
		}
	}
	return ""
}
