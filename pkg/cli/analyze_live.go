package cli

import (
	"context"
	"fmt"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
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
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "BackendTLSPolicy"},
	// Read by meshd when their CRDs are installed (skipped otherwise, as
	// every kind here).
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "TLSRoute"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "TCPRoute"},
	{Group: "gateway.networking.k8s.io", Version: "v1", Kind: "ListenerSet"},
	{Group: "gateway.networking.x-k8s.io", Version: "v1alpha1", Kind: "XBackendTrafficPolicy"},
	// What TLS credentialNames refer to: read when the user may
	// (liveOptional). The ConfigMaps of BackendTLSPolicies are read one by
	// one (policyConfigMaps): all of a cluster's would be a lot.
	{Version: "v1", Kind: "Secret"},
	// Their topology labels place workloads (traffic distribution).
	{Version: "v1", Kind: "Node"},
}

// liveOptional are the kinds analysis goes on without when the user may
// not list them (Secrets often are off limits): the checks of references
// to them are then skipped, and a finding says so.
var liveOptional = map[string]metav1.ListOptions{
	// Only TLS Secrets are ever referred to: others are not read.
	"Secret": {FieldSelector: "type=kubernetes.io/tls"},
	"Node":   {},
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
	objs, unreadable, err := listLive(ctx, c, ns)
	if err != nil {
		return nil, err
	}
	findings, err := analyze(objs, AnalyzeOptions{DefaultNamespace: o.namespace, AssumeProfile: "live", MeshNamespace: g.meshNamespace, Unreadable: unreadable})
	for _, kind := range unreadable {
		effect := "references to them (TLS credentialName, caCertificateRefs) were not checked"
		if kind == "Node" {
			effect = "workloads' zones (for traffic distribution) are not known"
		}
		findings = append(findings, Finding{Severity: SeverityWarning, Check: "access", Kind: kind, Namespace: ns,
			Message: fmt.Sprintf("not allowed to list %ss: %s; run analyze with read access to them to check those", kind, effect)})
	}
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
// cluster-scoped kinds always cluster-wide). unreadable are the
// liveOptional kinds the user may not list.
func listLive(ctx context.Context, c *clients, ns string) (objs []sourced, unreadable []string, err error) {
	for _, gvk := range liveKinds {
		m, err := c.mapper.RESTMapping(gvk.GroupKind(), gvk.Version)
		if meta.IsNoMatchError(err) {
			continue // CRD not installed: there are none of these.
		}
		if err != nil {
			return nil, nil, fmt.Errorf("find the API resource of %s: %w (is the cluster reachable? check --context)", gvk, err)
		}
		listNS := ns
		if gvk.Kind == "Pod" || m.Scope.Name() != meta.RESTScopeNameNamespace {
			listNS = ""
		}
		opts, optional := liveOptional[gvk.Kind]
		l, err := c.dynamic.Resource(m.Resource).Namespace(listNS).List(ctx, opts)
		if apierrors.IsForbidden(err) && optional {
			unreadable = append(unreadable, gvk.Kind)
			continue
		}
		if apierrors.IsForbidden(err) {
			return nil, nil, fmt.Errorf("list %s: %w (analyze needs read access to it: ask your cluster admin, or analyze files with -f)", m.Resource.Resource, err)
		}
		if err != nil {
			return nil, nil, fmt.Errorf("list %s: %w", m.Resource.Resource, err)
		}
		for i := range l.Items {
			u := &l.Items[i]
			u.SetAPIVersion(gvk.GroupVersion().String())
			u.SetKind(gvk.Kind)
			objs = append(objs, sourced{obj: u})
		}
	}
	cms, forbidden, err := policyConfigMaps(ctx, c, objs)
	if err != nil {
		return nil, nil, err
	}
	if forbidden {
		unreadable = append(unreadable, "ConfigMap")
	}
	return append(objs, cms...), unreadable, nil
}

// policyConfigMaps reads the ConfigMaps the BackendTLSPolicies among objs
// name in caCertificateRefs, each once. A missing one is left for the
// analysis to report; forbidden says the user may not read them.
func policyConfigMaps(ctx context.Context, c *clients, objs []sourced) (cms []sourced, forbidden bool, err error) {
	seen := map[string]bool{}
	for _, so := range objs {
		u := so.obj
		if u.GetKind() != "BackendTLSPolicy" {
			continue
		}
		refs, _, _ := unstructured.NestedSlice(u.Object, "spec", "validation", "caCertificateRefs")
		for _, r := range refs {
			ref, _ := r.(map[string]any)
			if ref["kind"] != "ConfigMap" || (ref["group"] != nil && ref["group"] != "") {
				continue
			}
			name, _ := ref["name"].(string)
			key := u.GetNamespace() + "/" + name
			if name == "" || seen[key] {
				continue
			}
			seen[key] = true
			cm, err := c.kube.CoreV1().ConfigMaps(u.GetNamespace()).Get(ctx, name, metav1.GetOptions{})
			switch {
			case apierrors.IsNotFound(err):
				continue
			case apierrors.IsForbidden(err):
				return nil, true, nil
			case err != nil:
				return nil, false, fmt.Errorf("read ConfigMap %s (a BackendTLSPolicy's caCertificateRefs): %w", key, err)
			}
			obj, err := runtime.DefaultUnstructuredConverter.ToUnstructured(cm)
			if err != nil {
				return nil, false, fmt.Errorf("convert ConfigMap %s: %w", key, err)
			}
			cu := &unstructured.Unstructured{Object: obj}
			cu.SetAPIVersion("v1")
			cu.SetKind("ConfigMap")
			cms = append(cms, sourced{obj: cu})
		}
	}
	return cms, false, nil
}
