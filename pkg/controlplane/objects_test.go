package controlplane

import (
	"strings"
	"testing"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	networkingv1alpha3 "istio.io/client-go/pkg/apis/networking/v1alpha3"
	networkingv1beta1 "istio.io/client-go/pkg/apis/networking/v1beta1"
	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	telemetryv1 "istio.io/client-go/pkg/apis/telemetry/v1"

	policyv1alpha1 "github.com/meshlet/meshlet/pkg/api/policy/v1alpha1"
	securityv1beta1 "istio.io/client-go/pkg/apis/security/v1beta1"
	telemetryv1alpha1 "istio.io/client-go/pkg/apis/telemetry/v1alpha1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	"k8s.io/apimachinery/pkg/runtime"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	"sigs.k8s.io/yaml"
)

// newObject returns an empty typed object for apiVersion and kind, or nil.
func newObject(apiVersion, kind string) runtime.Object {
	switch apiVersion + "/" + kind {
	case "v1/Namespace":
		return &corev1.Namespace{}
	case "v1/Pod":
		return &corev1.Pod{}
	case "v1/Service":
		return &corev1.Service{}
	case "v1/Node":
		return &corev1.Node{}
	case "v1/Secret":
		return &corev1.Secret{}
	case "v1/ConfigMap":
		return &corev1.ConfigMap{}
	case "v1/ServiceAccount":
		return &corev1.ServiceAccount{}
	case "discovery.k8s.io/v1/EndpointSlice":
		return &discoveryv1.EndpointSlice{}
	case "security.istio.io/v1/PeerAuthentication":
		return &securityv1.PeerAuthentication{}
	case "security.istio.io/v1beta1/PeerAuthentication":
		return &securityv1beta1.PeerAuthentication{}
	case "security.istio.io/v1/AuthorizationPolicy":
		return &securityv1.AuthorizationPolicy{}
	case "security.istio.io/v1beta1/AuthorizationPolicy":
		return &securityv1beta1.AuthorizationPolicy{}
	case "security.istio.io/v1/RequestAuthentication":
		return &securityv1.RequestAuthentication{}
	case "policy.meshlet.dev/v1alpha1/LocalRateLimitPolicy":
		return &policyv1alpha1.LocalRateLimitPolicy{}
	case "telemetry.istio.io/v1/Telemetry":
		return &telemetryv1.Telemetry{}
	case "telemetry.istio.io/v1alpha1/Telemetry":
		return &telemetryv1alpha1.Telemetry{}
	case "security.istio.io/v1beta1/RequestAuthentication":
		return &securityv1beta1.RequestAuthentication{}
	case "networking.istio.io/v1/ServiceEntry":
		return &networkingv1.ServiceEntry{}
	case "networking.istio.io/v1beta1/ServiceEntry":
		return &networkingv1beta1.ServiceEntry{}
	case "networking.istio.io/v1alpha3/ServiceEntry":
		return &networkingv1alpha3.ServiceEntry{}
	case "networking.istio.io/v1/WorkloadEntry":
		return &networkingv1.WorkloadEntry{}
	case "networking.istio.io/v1beta1/WorkloadEntry":
		return &networkingv1beta1.WorkloadEntry{}
	case "networking.istio.io/v1alpha3/WorkloadEntry":
		return &networkingv1alpha3.WorkloadEntry{}
	case "networking.istio.io/v1/VirtualService":
		return &networkingv1.VirtualService{}
	case "networking.istio.io/v1beta1/VirtualService":
		return &networkingv1beta1.VirtualService{}
	case "networking.istio.io/v1alpha3/VirtualService":
		return &networkingv1alpha3.VirtualService{}
	case "networking.istio.io/v1/DestinationRule":
		return &networkingv1.DestinationRule{}
	case "networking.istio.io/v1beta1/DestinationRule":
		return &networkingv1beta1.DestinationRule{}
	case "networking.istio.io/v1alpha3/DestinationRule":
		return &networkingv1alpha3.DestinationRule{}
	case "networking.istio.io/v1/Gateway":
		return &networkingv1.Gateway{}
	case "networking.istio.io/v1alpha3/Gateway":
		return &networkingv1alpha3.Gateway{}
	case "gateway.networking.k8s.io/v1/Gateway":
		return &gatewayv1.Gateway{}
	case "gateway.networking.k8s.io/v1/GatewayClass":
		return &gatewayv1.GatewayClass{}
	case "gateway.networking.k8s.io/v1/HTTPRoute":
		return &gatewayv1.HTTPRoute{}
	case "gateway.networking.k8s.io/v1/GRPCRoute":
		return &gatewayv1.GRPCRoute{}
	case "gateway.networking.k8s.io/v1/TLSRoute":
		return &gatewayv1.TLSRoute{}
	case "gateway.networking.k8s.io/v1/TCPRoute":
		return &gatewayv1.TCPRoute{}
	case "gateway.networking.k8s.io/v1/ListenerSet":
		return &gatewayv1.ListenerSet{}
	case "gateway.networking.x-k8s.io/v1alpha1/XBackendTrafficPolicy":
		return &gatewayxv1alpha1.XBackendTrafficPolicy{}
	case "gateway.networking.k8s.io/v1/ReferenceGrant":
		return &gatewayv1.ReferenceGrant{}
	case "gateway.networking.k8s.io/v1/BackendTLSPolicy":
		return &gatewayv1.BackendTLSPolicy{}
	}
	return nil
}

// inputs decodes a multi-document YAML stream of objects into Inputs.
func inputs(t testing.TB, docs ...string) *Inputs {
	t.Helper()
	in := &Inputs{}
	for _, d := range docs {
		for _, doc := range strings.Split(d, "\n---\n") {
			if strings.TrimSpace(doc) == "" {
				continue
			}
			var tm struct {
				APIVersion string `json:"apiVersion"`
				Kind       string `json:"kind"`
			}
			if err := yaml.Unmarshal([]byte(doc), &tm); err != nil {
				t.Fatalf("decode type of %q: %v", doc, err)
			}
			obj := newObject(tm.APIVersion, tm.Kind)
			if obj == nil {
				t.Fatalf("no Go type for %s %s", tm.APIVersion, tm.Kind)
			}
			if err := yaml.Unmarshal([]byte(doc), obj); err != nil {
				t.Fatalf("decode %s %s: %v\n%s", tm.APIVersion, tm.Kind, err, doc)
			}
			if err := in.Add(obj); err != nil {
				t.Fatalf("Add(%T): %v", obj, err)
			}
		}
	}
	return in
}
