package controlplane

import (
	"slices"
	"strconv"
	"strings"

	meshconfig "istio.io/api/mesh/v1alpha1"

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
