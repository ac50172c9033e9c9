// Package deployer is the controller meshd runs to deploy waypoints and
// ingress gateways: for every Gateway API Gateway of a meshlet class it
// server-side applies a ServiceAccount, a Deployment of the waypoint binary
// and a Service, all owned by the Gateway (deleting the Gateway removes
// them), and reports the Gateway's Accepted and Programmed conditions and
// addresses. An ingress Gateway's Service opens the ports of its listeners
// and of those of the ListenerSets (GEP-1713) it admits (listenersets.go);
// its type and the address it asks for follow Istio's service-type
// annotation and the Gateway's spec.addresses (addresses.go). Rendering is
// pure (Render) so that it is tested without a cluster. It must not touch
// Gateways of other classes, nor write anything but these three objects
// and the Gateway's status.
package deployer

import (
	"errors"
	"fmt"
	"sort"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/resource"
	"k8s.io/apimachinery/pkg/util/intstr"
	appsv1ac "k8s.io/client-go/applyconfigurations/apps/v1"
	autoscalingv2ac "k8s.io/client-go/applyconfigurations/autoscaling/v2"
	corev1ac "k8s.io/client-go/applyconfigurations/core/v1"
	metav1ac "k8s.io/client-go/applyconfigurations/meta/v1"
	policyv1ac "k8s.io/client-go/applyconfigurations/policy/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// Well-known names.
const (
	// GatewayNameLabel is the pod label meshd recognises a waypoint by.
	GatewayNameLabel = "gateway.networking.k8s.io/gateway-name"
	// DefaultImage is the waypoint binary's image.
	DefaultImage = "meshlet.dev/waypoint"
	// FieldManager is the server-side apply field manager.
	FieldManager = "meshlet-deployer"
	// RootCertConfigMap is the ConfigMap meshd publishes the mesh root in,
	// in every namespace.
	RootCertConfigMap = "istio-ca-root-cert"

	portHBONE   = 15008
	portMetrics = 15020
	portReady   = 15021
)

// Kind says what a Gateway class deploys.
type Kind int

const (
	// KindNone: not a meshlet class; the Gateway is left alone.
	KindNone Kind = iota
	// KindWaypoint: an in-mesh L7 proxy reached over HBONE only.
	KindWaypoint
	// KindIngress: an ingress gateway, also serving its listener ports.
	KindIngress
)

// ClassKind maps a gatewayClassName to what meshlet deploys for it.
func ClassKind(class gatewayv1.ObjectName) Kind {
	switch class {
	case "istio-waypoint", "meshlet-waypoint":
		return KindWaypoint
	case "istio", "meshlet":
		return KindIngress
	}
	return KindNone
}

// RenderOptions configure the rendered objects.
type RenderOptions struct {
	// Image is the waypoint image; empty means DefaultImage.
	Image string
	// ImagePullSecrets name the Secrets the kubelet pulls Image with
	// (the chart's global.imagePullSecrets). They are read in the
	// Gateway's namespace: each must be there, as for any pod.
	ImagePullSecrets []string
	// MeshdAddress is meshd's host:15012 as pods reach it. Required.
	MeshdAddress string
	// TrustDomain is the mesh's trust domain. Required.
	TrustDomain string
}

// Objects are what one Gateway deploys, as server-side apply configurations.
type Objects struct {
	ServiceAccount *corev1ac.ServiceAccountApplyConfiguration
	Deployment     *appsv1ac.DeploymentApplyConfiguration
	Service        *corev1ac.ServiceApplyConfiguration
	// HorizontalPodAutoscaler and PodDisruptionBudget are made only when
	// the Gateway's parameters or its class defaults have their keys (infrastructure.go); nil
	// otherwise, and the deployer removes the ones it made before.
	HorizontalPodAutoscaler *autoscalingv2ac.HorizontalPodAutoscalerApplyConfiguration `json:",omitempty"`
	PodDisruptionBudget     *policyv1ac.PodDisruptionBudgetApplyConfiguration          `json:",omitempty"`
}

// Render returns the objects for gw, with its spec.infrastructure applied
// (infrastructure.go): its labels and annotations, and the overlays of
// params: those of its class defaults, then those of the ConfigMap its
// parametersRef names (either nil when there is none). It fails for a Gateway that is not of a meshlet class, has no UID (ownership
// needs it) or misses options, with a *ParamsError for parameters that
// cannot be used (the service-type annotation among them) and with an
// *AddressError for spec.addresses meshlet cannot serve (addresses.go).
// An ingress gateway's LoadBalancer Service asks for the first requested
// IP address in spec.loadBalancerIP.
//
// sets are the ListenerSets attached to gw, in merge order
// (SortListenerSets). Render does not check that gw admits them: the caller
// passes only those whose parentRef names gw (ListenerSetParent) and which
// gw's allowedListeners admits (ListenerSetAllowed). An ingress Gateway's
// Service opens, after the mesh port 15008, one port per distinct port of
// gw's listeners and the sets' listeners, sorted by port; a port several
// listeners share is named after the first of them in merge order (gw's
// listeners, then each set's in the order given). A waypoint ignores sets.
func Render(gw *gatewayv1.Gateway, opts RenderOptions, params Params, sets ...*gatewayv1.ListenerSet) (*Objects, error) {
	kind := ClassKind(gw.Spec.GatewayClassName)
	switch {
	case kind == KindNone:
		return nil, fmt.Errorf("render gateway %s/%s: class %q is not a meshlet class (istio-waypoint, meshlet-waypoint, istio, meshlet)", gw.Namespace, gw.Name, gw.Spec.GatewayClassName)
	case gw.UID == "":
		return nil, fmt.Errorf("render gateway %s/%s: no UID: render a Gateway read from the API server", gw.Namespace, gw.Name)
	case opts.MeshdAddress == "" || opts.TrustDomain == "":
		return nil, errors.New("render gateway: MeshdAddress and TrustDomain are required")
	}
	svcType, err := serviceType(gw, kind)
	if err != nil {
		return nil, err
	}
	reqs, err := requestedAddresses(gw)
	if err != nil {
		return nil, err
	}
	if opts.Image == "" {
		opts.Image = DefaultImage
	}
	name, ns := gw.Name, gw.Namespace
	labels := map[string]string{
		GatewayNameLabel:               name,
		"app.kubernetes.io/managed-by": "meshlet",
		"app.kubernetes.io/component":  map[Kind]string{KindWaypoint: "waypoint", KindIngress: "ingress-gateway"}[kind],
	}
	owner := metav1ac.OwnerReference().
		WithAPIVersion(gatewayv1.GroupVersion.String()).WithKind("Gateway").
		WithName(name).WithUID(gw.UID).WithController(true)

	infraLabels, infraAnnotations := infraMetadata(gw)
	objLabels := under(infraLabels, labels)
	sa := corev1ac.ServiceAccount(name, ns).WithLabels(objLabels).WithAnnotations(infraAnnotations).WithOwnerReferences(owner)

	// The waypoint's own traffic must not be redirected again by the node
	// agent: it speaks HBONE itself.
	podLabels := map[string]string{"istio.io/dataplane-mode": "none"}
	for k, v := range objLabels {
		podLabels[k] = v
	}
	fieldEnv := func(env, path string) *corev1ac.EnvVarApplyConfiguration {
		return corev1ac.EnvVar().WithName(env).WithValueFrom(corev1ac.EnvVarSource().
			WithFieldRef(corev1ac.ObjectFieldSelector().WithFieldPath(path)))
	}
	args := []string{"--meshd-address=" + opts.MeshdAddress, "--root-cert=/var/run/secrets/istio/root-cert.pem"}
	if kind == KindIngress {
		args = append(args, "--serve-listeners") // clients outside the mesh connect to its listener ports
	}
	container := corev1ac.Container().
		WithName("waypoint").WithImage(opts.Image).WithImagePullPolicy(corev1.PullIfNotPresent).
		WithArgs(args...).
		WithEnv(
			fieldEnv("POD_NAME", "metadata.name"),
			fieldEnv("POD_NAMESPACE", "metadata.namespace"),
			fieldEnv("SERVICE_ACCOUNT", "spec.serviceAccountName"),
			fieldEnv("NODE_NAME", "spec.nodeName"),
			fieldEnv("GATEWAY_NAME", "metadata.labels['"+GatewayNameLabel+"']"),
			corev1ac.EnvVar().WithName("TRUST_DOMAIN").WithValue(opts.TrustDomain),
		).
		WithPorts(
			corev1ac.ContainerPort().WithName("hbone").WithContainerPort(portHBONE).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("metrics").WithContainerPort(portMetrics).WithProtocol(corev1.ProtocolTCP),
			corev1ac.ContainerPort().WithName("status-port").WithContainerPort(portReady).WithProtocol(corev1.ProtocolTCP),
		).
		// Requests make the pod Burstable, not BestEffort (first evicted
		// when the node runs short); the memory limit bounds a leak and is
		// what --memory-limit=auto derives the Go runtime's soft limit
		// from. No CPU limit: throttling a proxy adds latency to every
		// request it carries. Istio's waypoint asks 100m/128Mi with a 1Gi
		// limit; meshlet's waypoint runs in ~25 MB.
		WithResources(corev1ac.ResourceRequirements().
			WithRequests(corev1.ResourceList{corev1.ResourceCPU: resource.MustParse("100m"), corev1.ResourceMemory: resource.MustParse("64Mi")}).
			WithLimits(corev1.ResourceList{corev1.ResourceMemory: resource.MustParse("1Gi")})).
		WithReadinessProbe(corev1ac.Probe().WithHTTPGet(corev1ac.HTTPGetAction().
			WithPath("/healthz/ready").WithPort(intstr.FromInt32(portReady))).
			WithPeriodSeconds(2).WithFailureThreshold(3)).
		WithVolumeMounts(corev1ac.VolumeMount().WithName("istio-ca-root-cert").WithMountPath("/var/run/secrets/istio").WithReadOnly(true)).
		WithSecurityContext(corev1ac.SecurityContext().
			WithRunAsNonRoot(true).WithRunAsUser(1337).WithRunAsGroup(1337).
			WithReadOnlyRootFilesystem(true).WithAllowPrivilegeEscalation(false).
			WithCapabilities(corev1ac.Capabilities().WithDrop("ALL")))
	dep := appsv1ac.Deployment(name, ns).WithLabels(objLabels).WithAnnotations(infraAnnotations).WithOwnerReferences(owner).
		WithSpec(appsv1ac.DeploymentSpec().
			WithSelector(metav1ac.LabelSelector().WithMatchLabels(map[string]string{GatewayNameLabel: name})).
			WithTemplate(corev1ac.PodTemplateSpec().
				WithLabels(podLabels).
				// Istio's request metrics on 15020, for the annotation-driven
				// scrape (meshd's /sd/prometheus and kubernetes_sd alike).
				WithAnnotations(under(infraAnnotations, map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15020", "prometheus.io/path": "/metrics"})).
				WithSpec(corev1ac.PodSpec().
					WithServiceAccountName(name).
					WithTerminationGracePeriodSeconds(30).
					// Listeners on ports below 1024 (a Gateway on 80 or 443)
					// without running as root or any capability, as Istio's
					// gateways do: a namespaced sysctl in Kubernetes' safe set.
					WithSecurityContext(corev1ac.PodSecurityContext().WithSysctls(
						corev1ac.Sysctl().WithName("net.ipv4.ip_unprivileged_port_start").WithValue("0"))).
					WithImagePullSecrets(pullSecrets(opts.ImagePullSecrets)...).
					WithContainers(container).
					WithVolumes(corev1ac.Volume().WithName("istio-ca-root-cert").
						WithConfigMap(corev1ac.ConfigMapVolumeSource().WithName(RootCertConfigMap))))))

	svcPorts := []*corev1ac.ServicePortApplyConfiguration{
		corev1ac.ServicePort().WithName("mesh").WithPort(portHBONE).WithTargetPort(intstr.FromInt32(portHBONE)).
			WithProtocol(corev1.ProtocolTCP).WithAppProtocol("all"),
	}
	if kind == KindIngress {
		seen := map[int32]bool{portHBONE: true}
		// The listeners in merge order; the stable sort keeps it among
		// those of one port, the first of which names it.
		type listenerPort struct {
			port     gatewayv1.PortNumber
			protocol gatewayv1.ProtocolType
		}
		var ls []listenerPort
		for _, l := range gw.Spec.Listeners {
			ls = append(ls, listenerPort{l.Port, l.Protocol})
		}
		for _, set := range sets {
			for _, l := range set.Spec.Listeners {
				ls = append(ls, listenerPort{l.Port, l.Protocol})
			}
		}
		sort.SliceStable(ls, func(i, j int) bool { return ls[i].port < ls[j].port })
		for _, l := range ls {
			p := int32(l.port)
			if seen[p] {
				continue
			}
			seen[p] = true
			proto := corev1.ProtocolTCP
			if l.protocol == gatewayv1.UDPProtocolType {
				proto = corev1.ProtocolUDP
			}
			svcPorts = append(svcPorts, corev1ac.ServicePort().
				WithName(fmt.Sprintf("%s-%d", listenerProtocol(l.protocol), p)).
				WithPort(p).WithTargetPort(intstr.FromInt32(p)).WithProtocol(proto))
		}
	}
	svcSpec := corev1ac.ServiceSpec().
		WithType(svcType).
		WithSelector(map[string]string{GatewayNameLabel: name}).
		WithPorts(svcPorts...)
	// Only an ingress gateway asks for an address (addresses.go): meshd
	// reaches a waypoint at its cluster IPs.
	lbIP := ""
	if kind == KindIngress && svcType == corev1.ServiceTypeLoadBalancer {
		lbIP = loadBalancerIP(reqs)
	}
	if lbIP != "" {
		svcSpec.WithLoadBalancerIP(lbIP)
	}
	svc := corev1ac.Service(name, ns).WithLabels(objLabels).WithAnnotations(infraAnnotations).WithOwnerReferences(owner).
		WithSpec(svcSpec)
	objs := &Objects{ServiceAccount: sa, Deployment: dep, Service: svc}
	if err := applyParams(gw, objs, params); err != nil {
		return nil, err
	}
	// A `service` overlay that makes the Service another type than
	// LoadBalancer drops the address asked for it: Istio's template sets
	// loadBalancerIP only for that type, though it decides before its
	// overlays and so would keep it on a ClusterIP Service, where
	// Kubernetes ignores it and a reader is misled. A loadBalancerIP the
	// overlay sets itself stays.
	if s := objs.Service.Spec; lbIP != "" && s != nil && s.Type != nil && *s.Type != corev1.ServiceTypeLoadBalancer &&
		s.LoadBalancerIP != nil && *s.LoadBalancerIP == lbIP {
		s.LoadBalancerIP = nil
	}
	return objs, nil
}

// listenerProtocol is a DNS-label-safe port name prefix.
func listenerProtocol(p gatewayv1.ProtocolType) string {
	switch p {
	case gatewayv1.HTTPProtocolType:
		return "http"
	case gatewayv1.HTTPSProtocolType:
		return "https"
	case gatewayv1.TLSProtocolType:
		return "tls"
	case gatewayv1.UDPProtocolType:
		return "udp"
	}
	return "tcp"
}

// pullSecrets are the pod's references to the Secrets of names.
func pullSecrets(names []string) []*corev1ac.LocalObjectReferenceApplyConfiguration {
	refs := make([]*corev1ac.LocalObjectReferenceApplyConfiguration, 0, len(names))
	for _, n := range names {
		refs = append(refs, corev1ac.LocalObjectReference().WithName(n))
	}
	return refs
}
