package cli

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// liveKinds are what live analysis reads: pods (running, with their real
// addresses) rather than their controllers, and the mesh configuration.
var liveKinds = []schema.GroupVersionKind{
	{Version: "v1", Kind: "Namespace"},
	{Version: "v1", Kind: "Pod"},
	{Version: "v1", Kind: "Service"},
	{Version: "v1", Kind: "ServiceAccount"},
	{Group: "networking.istio.io", Version: "v1", Kind: "VirtualService"},
	{Group: "networking.istio.io", Version: "v1", Kind: "DestinationRule"},
	{Group: "networking.istio.io", Version: "v1", Kind: "Gateway"},
	{Group: "networking.istio.io", Version: "v1", Kind: "ServiceEntry"},
	{Group: "networking.istio.io", Version: "v1", Kind: "WorkloadEntry"},
	{Group: "security.istio.io", Version: "v1", Kind: "PeerAuthentication"},
	{Group: "security.istio.io", Version: "v1", Kind: "AuthorizationPolicy"},
	{Group: "security.istio.io", Version: "v1", Kind: "RequestAuthentication"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "Gateway"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "GatewayClass"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "HTTPRoute"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "GRPCRoute"},
	{Group: "gateway.networking.k8s.io", Version: "v1beta1", Kind: "ReferenceGrant"},
}

// analyzeLive reads the cluster's objects and analyzes them. Gateways are
// matched against pods of every namespace, so pods are always listed cluster-wide.
func analyzeLive(ctx context.Context, g *globalOptions, o *analyzeOptions) ([]Finding, error) {
	c, err := g.clients()
	if err != nil {
		return nil, err
	}
	ns := o.namespace
	if o.allNamespaces {
		ns = ""
	}
	objs, err := listLive(ctx, c, ns)
	if err != nil {
		return nil, err
	}
	findings, err := analyze(objs, AnalyzeOptions{DefaultNamespace: o.namespace, AssumeProfile: "live", MeshNamespace: g.meshNamespace})
	if err != nil || ns == "" {
		return findings, err
	}
	var inNS []Finding
	for _, f := range findings {
		if f.Namespace == ns || f.Namespace == "" {
			inNS = append(inNS, f)
		}
	}
	return inNS, nil
}

// listLive reads the objects of liveKinds in ns ("" for all; pods and
// cluster-scoped kinds always cluster-wide).
func listLive(ctx context.Context, c *clients, ns string) ([]sourced, error) {
	var objs []sourced
	for _, gvk := range liveKinds {
		m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			continue // CRD not installed: there are none of these.
		}
		if err != nil {
			return nil, fmt.Errorf("find the API resource of %s: %w (is the cluster reachable? check --context)", gvk, err)
		}
		listNS := ns
		if gvk.Kind == "Pod" || m.Scope.Name() != meta.RESTScopeNameNamespace {
			listNS = ""
		}
		l, err := c.dynamic.Resource(m.Resource).Namespace(listNS).List(ctx, metav1.ListOptions{})
		if apierrors.IsForbidden(err) {
			return nil, fmt.Errorf("list %s: %w (analyze needs read access to it: ask your cluster admin, or analyze files with -f)", m.Resource.Resource, err)
		}
		if err != nil {
			return nil, fmt.Errorf("list %s: %w", m.Resource.Resource, err)
		}
		for i := range l.Items {
			u := &l.Items[i]
			u.SetAPIVersion(gvk.GroupVersion().String())
			u.SetKind(gvk.Kind)
			objs = append(objs, sourced{obj: u})
		}
	}
	return objs, nil
}
