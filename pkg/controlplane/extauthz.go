package controlplane

import (
	"fmt"
	"slices"
	"strconv"
	"strings"

	meshconfig "istio.io/api/mesh/v1alpha1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// extAuthzProviders are the external authorization providers of the mesh
// config, by name.
func (bd *build) extAuthzProviders() map[string]*meshconfig.MeshConfig_ExtensionProvider {
	return bd.extensionProviders(func(p *meshconfig.MeshConfig_ExtensionProvider) bool {
		return p.GetEnvoyExtAuthzHttp() != nil || p.GetEnvoyExtAuthzGrpc() != nil
	})
}

// warnCustomPolicies tells what CUSTOM policies will do where it is not what
// their author may expect: one naming a provider the mesh config lacks
// denies what it matches; one with a selector (no targetRefs) is enforced
// by the node agents, which cannot ask an authorizer and deny what it
// matches (fail closed both times, as a policy that cannot be enforced
// must not let requests by).
func (bd *build) warnCustomPolicies(providers map[string]*meshconfig.MeshConfig_ExtensionProvider, l7 map[model.NamespacedName]*model.L7Config) {
	atGateway := map[model.NamespacedName]bool{}
	for _, cfg := range l7 {
		for _, n := range cfg.PodPolicies {
			atGateway[n] = true
		}
	}
	for _, a := range bd.authz {
		if a.Policy.Action != policy.Custom {
			continue
		}
		r := bd.rejecter(KindAuthorizationPolicy, a.Policy.Namespace, a.Policy.Name)
		if _, ok := providers[a.Policy.Provider]; !ok {
			r.warn("provider %q is not an envoyExtAuthzHttp or envoyExtAuthzGrpc extension provider of the mesh config (ConfigMap %s/%s, key %s): the requests its rules match are denied until it is",
				a.Policy.Provider, bd.opts.RootNamespace, meshConfigName, meshConfigKey)
		}
		if len(a.Targets) == 0 && !atGateway[a.Key()] {
			r.warn("CUSTOM policies are enforced by waypoints (targetRefs) and ingress gateways; with a selector or none, node agents deny the connections its rules match: attach it to a waypoint")
		}
	}
}

// applyExtAuthz gives every L7 config the providers that CUSTOM policies
// name, with a cluster for each provider's service and port, as Istio adds
// the provider's cluster to every proxy that may call it.
func (bd *build) applyExtAuthz(l7 map[model.NamespacedName]*model.L7Config) {
	providers := bd.extAuthzProviders()
	bd.warnCustomPolicies(providers, l7)
	var used []string
	for _, a := range bd.authz {
		if a.Policy.Action == policy.Custom && providers[a.Policy.Provider] != nil && !slices.Contains(used, a.Policy.Provider) {
			used = append(used, a.Policy.Provider)
		}
	}
	if len(used) == 0 {
		return
	}
	slices.Sort(used)
	r := bd.rejecter(KindMeshConfig, bd.opts.RootNamespace, meshConfigName)
	specs := make([]model.ExtAuthz, 0, len(used))
	hosts := make([]string, 0, len(used))
	for _, name := range used {
		e, host := bd.extAuthz(providers[name], r)
		specs = append(specs, e)
		hosts = append(hosts, host)
	}
	for key, cfg := range l7 {
		bd.addClusters(key, cfg, func(lb *l7Builder) {
			for i, e := range specs {
				if hosts[i] != "" {
					e.Cluster = lb.cluster(hosts[i], extAuthzPort(providers[e.Name]))
				}
				cfg.ExtAuthz = append(cfg.ExtAuthz, e)
			}
		})
	}
}

func extAuthzPort(p *meshconfig.MeshConfig_ExtensionProvider) uint32 {
	if h := p.GetEnvoyExtAuthzHttp(); h != nil {
		return h.GetPort()
	}
	return p.GetEnvoyExtAuthzGrpc().GetPort()
}

// extAuthz translates one provider; host is the service's hostname, "" when
// the mesh has no such service (reported: checks then fail).
func (bd *build) extAuthz(p *meshconfig.MeshConfig_ExtensionProvider, r *rejections) (e model.ExtAuthz, host string) {
	e.Name = p.GetName()
	var service, status string
	var port uint32
	var body *meshconfig.MeshConfig_ExtensionProvider_EnvoyExternalAuthorizationRequestBody
	if h := p.GetEnvoyExtAuthzHttp(); h != nil {
		service, port, status, body = h.GetService(), h.GetPort(), h.GetStatusOnError(), h.GetIncludeRequestBodyInCheck()
		e.Timeout, e.FailOpen, e.PathPrefix = h.GetTimeout().AsDuration(), h.GetFailOpen(), h.GetPathPrefix()
		//lint:ignore SA1019 the deprecated includeHeadersInCheck is still read, as Istio reads it.
		e.IncludeRequestHeaders = append(slices.Clone(h.GetIncludeRequestHeadersInCheck()), h.GetIncludeHeadersInCheck()...)
		e.AdditionalHeaders = h.GetIncludeAdditionalHeadersInCheck()
		e.HeadersToUpstreamOnAllow = h.GetHeadersToUpstreamOnAllow()
		e.HeadersToDownstreamOnAllow = h.GetHeadersToDownstreamOnAllow()
		e.HeadersToDownstreamOnDeny = h.GetHeadersToDownstreamOnDeny()
	} else {
		g := p.GetEnvoyExtAuthzGrpc()
		e.GRPC = true
		service, port, status, body = g.GetService(), g.GetPort(), g.GetStatusOnError(), g.GetIncludeRequestBodyInCheck()
		e.Timeout, e.FailOpen = g.GetTimeout().AsDuration(), g.GetFailOpen()
	}
	if body != nil {
		e.IncludeBody = &model.ExtAuthzBody{MaxBytes: int64(body.GetMaxRequestBytes()), AllowPartial: body.GetAllowPartialMessage()}
	}
	if status != "" {
		n, err := strconv.Atoi(status)
		if err != nil || n < 200 || n > 599 {
			r.warn("extensionProviders %q: statusOnError %q is not an HTTP status; 403 is used", e.Name, status)
		} else {
			e.StatusOnError = n
		}
	}
	if err := e.Validate(); err != nil {
		r.warn("extensionProviders %q: %v; checks with it fail", e.Name, err)
		return model.ExtAuthz{Name: e.Name, StatusOnError: e.StatusOnError}, ""
	}
	host = service[strings.IndexByte(service, '/')+1:] // "[namespace/]hostname"
	e.Authority = host + ":" + strconv.FormatUint(uint64(port), 10)
	if _, ok := bd.hostOwners[host]; !ok || port == 0 || port > 65535 {
		r.warn("extensionProviders %q: service %q port %d is no service of the mesh: checks with it fail (the requests are denied unless failOpen)", e.Name, service, port)
		return e, ""
	}
	return e, host
}

// externalAuth translates an HTTPRoute rule's ExternalAuth filter (Gateway
// API, experimental channel) to the route's own authorizer: its backendRef
// is the provider's Service and port (another namespace's needs a
// ReferenceGrant), asked over HTTP or Envoy's gRPC ext_authz as the
// protocol says. As the filter asks, an HTTP check always carries Host,
// method, path, Content-Length and Authorization besides the allowed
// headers, and the answer's headers go upstream (all of them without a
// list, but its own framing and representation); a gRPC check carries
// every header unless allowedHeaders names some; forwardBody.maxSize
// bytes of the body go with the check (truncated: the filter's rule). A
// provider that cannot be reached denies (403), as Istio's CUSTOM
// policies do: the filter has no failOpen.
func (lb *l7Builder) externalAuth(rt routeRef, f *gatewayv1.HTTPExternalAuthFilter, name string, defaultPort uint32) (*model.ExtAuthz, error) {
	if f == nil {
		return nil, fmt.Errorf("externalAuth is missing")
	}
	d, ok := lb.backend(rt.kind, rt.namespace, rt.name, gatewayv1.BackendRef{BackendObjectReference: f.BackendRef}, defaultPort)
	if !ok {
		return nil, fmt.Errorf("externalAuth backend %s does not resolve (a Service, of this namespace or one whose ReferenceGrant allows it)", f.BackendRef.Name)
	}
	port := defaultPort
	if f.BackendRef.Port != nil {
		port = uint32(*f.BackendRef.Port)
	}
	ns := rt.namespace
	if f.BackendRef.Namespace != nil {
		ns = string(*f.BackendRef.Namespace)
	}
	x := &model.ExtAuthz{Name: name, Cluster: d.Cluster,
		Authority: string(f.BackendRef.Name) + "." + ns + ".svc." + lb.bd.opts.ClusterDomain + ":" + strconv.FormatUint(uint64(port), 10)}
	switch f.ExternalAuthProtocol {
	case gatewayv1.HTTPRouteExternalAuthGRPCProtocol:
		x.GRPC = true
		if c := f.GRPCAuthConfig; c != nil {
			x.IncludeRequestHeaders = slices.Clone(c.AllowedRequestHeaders)
		}
	case gatewayv1.HTTPRouteExternalAuthHTTPProtocol:
		x.IncludeRequestHeaders = []string{"Authorization"}
		x.HeadersToUpstreamOnAllow = []string{"*"}
		if c := f.HTTPAuthConfig; c != nil {
			x.PathPrefix = c.Path
			x.IncludeRequestHeaders = append(x.IncludeRequestHeaders, c.AllowedRequestHeaders...)
			if len(c.AllowedResponseHeaders) > 0 {
				x.HeadersToUpstreamOnAllow = slices.Clone(c.AllowedResponseHeaders)
			}
		}
		if x.PathPrefix != "" && !strings.HasPrefix(x.PathPrefix, "/") {
			x.PathPrefix = "/" + x.PathPrefix
		}
	default:
		return nil, fmt.Errorf("externalAuth protocol %q is not HTTP or GRPC", f.ExternalAuthProtocol)
	}
	if b := f.ForwardBody; b != nil && b.MaxSize > 0 {
		x.IncludeBody = &model.ExtAuthzBody{MaxBytes: int64(b.MaxSize), AllowPartial: true}
	}
	if err := x.Validate(); err != nil {
		return nil, fmt.Errorf("externalAuth: %w", err)
	}
	return x, nil
}
