package controlplane

import (
	"fmt"
	"sort"

	networkingapi "istio.io/api/networking/v1alpha3"
	securityapi "istio.io/api/security/v1beta1"
	telemetryapi "istio.io/api/telemetry/v1alpha1"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	networkingv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"
	telemetryv1alpha1 "istio.io/client-go/pkg/apis/telemetry/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"

	policyv1alpha1 "github.com/meshlet/meshlet/pkg/api/policy/v1alpha1"
)

// decodeErrorAnnotation carries, on a placeholder object, why a stored
// object could not be decoded; the builder reports it.
const decodeErrorAnnotation = "meshlet.dev/decode-error"

// Kind names of the objects the builder reads, as in Rejection.Kind.
const (
	KindNamespace             = "Namespace"
	KindPod                   = "Pod"
	KindService               = "Service"
	KindEndpointSlice         = "EndpointSlice"
	KindNode                  = "Node"
	KindServiceAccount        = "ServiceAccount"
	KindPeerAuthentication    = "PeerAuthentication"
	KindAuthorizationPolicy   = "AuthorizationPolicy"
	KindRequestAuthentication = "RequestAuthentication"
	KindServiceEntry          = "ServiceEntry"
	KindWorkloadEntry         = "WorkloadEntry"
	KindVirtualService        = "VirtualService"
	KindDestinationRule       = "DestinationRule"
	KindIstioGateway          = "Gateway.networking.istio.io"
	KindGateway               = "Gateway"
	KindGatewayClass          = "GatewayClass"
	KindHTTPRoute             = "HTTPRoute"
	KindGRPCRoute             = "GRPCRoute"
	KindTLSRoute              = "TLSRoute"
	KindTCPRoute              = "TCPRoute"
	KindListenerSet           = "ListenerSet"
	KindReferenceGrant        = "ReferenceGrant"
	KindTelemetry             = "Telemetry"
	KindLocalRateLimitPolicy  = "LocalRateLimitPolicy"
	KindSecret                = "Secret"
	KindConfigMap             = "ConfigMap"
	KindBackendTLSPolicy      = "BackendTLSPolicy"
	KindXBackendTrafficPolicy = "XBackendTrafficPolicy"
)

// caCertKey is the entry of a credential Secret holding the roots client
// certificates must chain to (Istio's key for MUTUAL ingress TLS), and of a
// ConfigMap a BackendTLSPolicy names in caCertificateRefs (Gateway API's).
const caCertKey = "ca.crt"

// config is one Istio object reduced to what translation needs: its metadata
// and its spec, whatever API version it was read through. Spec is never nil.
type config[S any] struct {
	meta metav1.ObjectMeta
	spec *S
}

// Inputs is the set of objects one build reads. Fill it with Add; the zero
// value is empty and ready. Objects are shared, not copied: callers must not
// modify them afterwards (informer caches already guarantee that).
type Inputs struct {
	namespaces      map[string]*corev1.Namespace
	pods            map[string]*corev1.Pod
	services        map[string]*corev1.Service
	endpointSlices  map[string]*discoveryv1.EndpointSlice
	nodes           map[string]*corev1.Node
	serviceAccounts map[string]*corev1.ServiceAccount
	tlsSecrets      map[string]*corev1.Secret
	configMaps      map[string]*corev1.ConfigMap // for BackendTLSPolicy's caCertificateRefs

	peerAuths    map[string]config[securityapi.PeerAuthentication]
	authzs       map[string]config[securityapi.AuthorizationPolicy]
	requestAuths map[string]config[securityapi.RequestAuthentication]
	serviceEnts  map[string]config[networkingapi.ServiceEntry]
	seObjects    map[string]*networkingv1.ServiceEntry // as read, for their status (ServiceEntryObject)
	workloadEnts map[string]config[networkingapi.WorkloadEntry]
	virtualSvcs  map[string]config[networkingapi.VirtualService]
	destRules    map[string]config[networkingapi.DestinationRule]
	istioGws     map[string]config[networkingapi.Gateway]
	telemetries  map[string]config[telemetryapi.Telemetry]

	gateways        map[string]*gatewayv1.Gateway
	gatewayClasses  map[string]*gatewayv1.GatewayClass
	httpRoutes      map[string]*gatewayv1.HTTPRoute
	grpcRoutes      map[string]*gatewayv1.GRPCRoute
	tlsRoutes       map[string]*gatewayv1.TLSRoute
	tcpRoutes       map[string]*gatewayv1.TCPRoute
	listenerSets    map[string]*gatewayv1.ListenerSet
	referenceGrants map[string]*gatewayv1.ReferenceGrant
	backendTLS      map[string]*gatewayv1.BackendTLSPolicy
	backendTraffic  map[string]*gatewayxv1alpha1.XBackendTrafficPolicy

	rateLimits map[string]*policyv1alpha1.LocalRateLimitPolicy
}

func key(m metav1.Object) string { return m.GetNamespace() + "/" + m.GetName() }

func put[V any](m *map[string]V, k string, v V) {
	if *m == nil {
		*m = make(map[string]V)
	}
	(*m)[k] = v
}

func putConfig[S any](m *map[string]config[S], meta metav1.ObjectMeta, spec *S) {
	put(m, meta.Namespace+"/"+meta.Name, config[S]{meta: meta, spec: spec})
}

// Add records one object. It accepts the typed objects of k8s.io/api core/v1
// (Namespace, Pod, Service, Node, ServiceAccount, Secret of type kubernetes.io/tls, ConfigMap) and discovery/v1
// (EndpointSlice); istio.io/client-go networking v1, v1beta1 and v1alpha3
// (ServiceEntry, WorkloadEntry, VirtualService, DestinationRule, Gateway) and
// security v1 and v1beta1 (PeerAuthentication, AuthorizationPolicy,
// RequestAuthentication), telemetry v1 and v1alpha1 (Telemetry); and sigs.k8s.io/gateway-api v1 (Gateway,
// GatewayClass, HTTPRoute, GRPCRoute, TLSRoute, TCPRoute, ListenerSet, ReferenceGrant, BackendTLSPolicy) and apisx
// v1alpha1 (XBackendTrafficPolicy). Adding an object with
// the namespace/name of one already added replaces it. Any other type is an error.
func (in *Inputs) Add(obj runtime.Object) error {
	switch o := obj.(type) {
	case *corev1.Namespace:
		put(&in.namespaces, o.Name, o)
	case *corev1.Pod:
		put(&in.pods, key(o), o)
	case *corev1.Service:
		put(&in.services, key(o), o)
	case *discoveryv1.EndpointSlice:
		put(&in.endpointSlices, key(o), o)
	case *corev1.Node:
		put(&in.nodes, o.Name, o)
	case *corev1.ServiceAccount:
		put(&in.serviceAccounts, key(o), o)
	case *corev1.Secret:
		if o.Type != corev1.SecretTypeTLS {
			return fmt.Errorf("add object: Secret %s is of type %s; only %s Secrets are read", key(o), o.Type, corev1.SecretTypeTLS)
		}
		put(&in.tlsSecrets, key(o), o)
	case *corev1.ConfigMap:
		put(&in.configMaps, key(o), o)

	case *securityv1.PeerAuthentication:
		putConfig(&in.peerAuths, o.ObjectMeta, &o.Spec)
	case *securityv1beta1.PeerAuthentication:
		putConfig(&in.peerAuths, o.ObjectMeta, &o.Spec)
	case *securityv1.AuthorizationPolicy:
		putConfig(&in.authzs, o.ObjectMeta, &o.Spec)
	case *securityv1beta1.AuthorizationPolicy:
		putConfig(&in.authzs, o.ObjectMeta, &o.Spec)
	case *telemetryv1.Telemetry:
		putConfig(&in.telemetries, o.ObjectMeta, &o.Spec)
	case *telemetryv1alpha1.Telemetry:
		putConfig(&in.telemetries, o.ObjectMeta, &o.Spec)
	case *securityv1.RequestAuthentication:
		putConfig(&in.requestAuths, o.ObjectMeta, &o.Spec)
	case *securityv1beta1.RequestAuthentication:
		putConfig(&in.requestAuths, o.ObjectMeta, &o.Spec)

	case *networkingv1.ServiceEntry:
		putConfig(&in.serviceEnts, o.ObjectMeta, &o.Spec)
		put(&in.seObjects, key(o), o)
	case *networkingv1beta1.ServiceEntry:
		putConfig(&in.serviceEnts, o.ObjectMeta, &o.Spec)
		delete(in.seObjects, key(o)) // replaced
	case *networkingv1alpha3.ServiceEntry:
		putConfig(&in.serviceEnts, o.ObjectMeta, &o.Spec)
		delete(in.seObjects, key(o)) // replaced
	case *networkingv1.WorkloadEntry:
		putConfig(&in.workloadEnts, o.ObjectMeta, &o.Spec)
	case *networkingv1beta1.WorkloadEntry:
		putConfig(&in.workloadEnts, o.ObjectMeta, &o.Spec)
	case *networkingv1alpha3.WorkloadEntry:
		putConfig(&in.workloadEnts, o.ObjectMeta, &o.Spec)
	case *networkingv1.VirtualService:
		putConfig(&in.virtualSvcs, o.ObjectMeta, &o.Spec)
	case *networkingv1beta1.VirtualService:
		putConfig(&in.virtualSvcs, o.ObjectMeta, &o.Spec)
	case *networkingv1alpha3.VirtualService:
		putConfig(&in.virtualSvcs, o.ObjectMeta, &o.Spec)
	case *networkingv1.DestinationRule:
		putConfig(&in.destRules, o.ObjectMeta, &o.Spec)
	case *networkingv1beta1.DestinationRule:
		putConfig(&in.destRules, o.ObjectMeta, &o.Spec)
	case *networkingv1alpha3.DestinationRule:
		putConfig(&in.destRules, o.ObjectMeta, &o.Spec)
	case *networkingv1.Gateway:
		putConfig(&in.istioGws, o.ObjectMeta, &o.Spec)
	case *networkingv1beta1.Gateway:
		putConfig(&in.istioGws, o.ObjectMeta, &o.Spec)
	case *networkingv1alpha3.Gateway:
		putConfig(&in.istioGws, o.ObjectMeta, &o.Spec)

	case *gatewayv1.Gateway:
		put(&in.gateways, key(o), o)
	case *gatewayv1.GatewayClass:
		put(&in.gatewayClasses, o.Name, o)
	case *gatewayv1.HTTPRoute:
		put(&in.httpRoutes, key(o), o)
	case *gatewayv1.GRPCRoute:
		put(&in.grpcRoutes, key(o), o)
	case *gatewayv1.TLSRoute:
		put(&in.tlsRoutes, key(o), o)
	case *gatewayv1.TCPRoute:
		put(&in.tcpRoutes, key(o), o)
	case *gatewayv1.ListenerSet:
		put(&in.listenerSets, key(o), o)
	case *gatewayv1.ReferenceGrant:
		put(&in.referenceGrants, key(o), o)
	case *gatewayv1.BackendTLSPolicy:
		put(&in.backendTLS, key(o), o)
	case *gatewayxv1alpha1.XBackendTrafficPolicy:
		put(&in.backendTraffic, key(o), o)
	case *policyv1alpha1.LocalRateLimitPolicy:
		put(&in.rateLimits, key(o), o)
	case *unstructured.Unstructured:
		// meshlet's own CRDs come through a dynamic informer.
		if o.GroupVersionKind() != policyv1alpha1.GroupVersion.WithKind(KindLocalRateLimitPolicy) {
			return fmt.Errorf("add object: unsupported kind %s", o.GroupVersionKind())
		}
		p := &policyv1alpha1.LocalRateLimitPolicy{}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, p); err != nil {
			// Stored but unreadable: kept so the builder reports it.
			p = &policyv1alpha1.LocalRateLimitPolicy{ObjectMeta: metav1.ObjectMeta{Namespace: o.GetNamespace(), Name: o.GetName(),
				CreationTimestamp: o.GetCreationTimestamp(), Annotations: map[string]string{decodeErrorAnnotation: err.Error()}}}
		}
		put(&in.rateLimits, key(p), p)
	case nil:
		return fmt.Errorf("add object: nil")
	default:
		return fmt.Errorf("add object: unsupported type %T", obj)
	}
	return nil
}

// ServiceEntryObject returns the ServiceEntry named namespace/name as
// added, nil when the inputs hold none or hold it in another API version
// than networking.istio.io/v1 (the one meshd watches). It is shared: do
// not modify it.
func (in *Inputs) ServiceEntryObject(namespace, name string) *networkingv1.ServiceEntry {
	return in.seObjects[namespace+"/"+name]
}

// sortedKeys returns a map's keys in order, so builds are deterministic.
func sortedKeys[V any](m map[string]V) []string {
	out := make([]string, 0, len(m))
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// GatewayAPIObject returns the HTTPRoute, GRPCRoute, TLSRoute, TCPRoute,
// BackendTLSPolicy, XBackendTrafficPolicy, Gateway, ListenerSet or GatewayClass (kind KindHTTPRoute, KindGRPCRoute, KindTLSRoute, KindTCPRoute,
// KindBackendTLSPolicy, KindXBackendTrafficPolicy, KindGateway, KindListenerSet or KindGatewayClass; namespace "" for
// a GatewayClass) named namespace/name, nil when the inputs hold none. It is shared: do not
// modify it.
func (in *Inputs) GatewayAPIObject(kind, namespace, name string) runtime.Object {
	k := namespace + "/" + name
	switch kind {
	case KindHTTPRoute:
		if o, ok := in.httpRoutes[k]; ok {
			return o
		}
	case KindGRPCRoute:
		if o, ok := in.grpcRoutes[k]; ok {
			return o
		}
	case KindTLSRoute:
		if o, ok := in.tlsRoutes[k]; ok {
			return o
		}
	case KindTCPRoute:
		if o, ok := in.tcpRoutes[k]; ok {
			return o
		}
	case KindBackendTLSPolicy:
		if o, ok := in.backendTLS[k]; ok {
			return o
		}
	case KindXBackendTrafficPolicy:
		if o, ok := in.backendTraffic[k]; ok {
			return o
		}
	case KindGateway:
		if o, ok := in.gateways[k]; ok {
			return o
		}
	case KindListenerSet:
		if o, ok := in.listenerSets[k]; ok {
			return o
		}
	case KindGatewayClass:
		if o, ok := in.gatewayClasses[name]; ok {
			return o
		}
	}
	return nil
}
