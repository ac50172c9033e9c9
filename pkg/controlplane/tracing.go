package controlplane

import (
	"strconv"
	"strings"

	meshconfig "istio.io/api/mesh/v1alpha1"
	telemetryapi "istio.io/api/telemetry/v1alpha1"

	"github.com/meshlet/meshlet/pkg/model"
)

// Tracing providers: a Telemetry's tracing entries name an extension
// provider of the mesh config (or inherit the mesh's defaultProviders
// tracing), and the proxy sends its sampled spans there, as Istio's
// Envoys do. meshlet's proxies speak OpenTelemetry (OTLP over gRPC, or
// over HTTP with the provider's http block) and Zipkin (v2 JSON); a
// datadog, lightstep, skywalking, stackdriver or opencensus provider is
// reported and its spans not sent.

// tracingProviders are the mesh config's opentelemetry and zipkin
// providers, by name.
func (bd *build) tracingProviders() map[string]*meshconfig.MeshConfig_ExtensionProvider {
	return bd.extensionProviders(func(p *meshconfig.MeshConfig_ExtensionProvider) bool {
		return p.GetOpentelemetry() != nil || p.GetZipkin() != nil
	})
}

// otherTracer reports whether p is a tracing provider of a kind meshlet's
// proxies do not speak.
func otherTracer(p *meshconfig.MeshConfig_ExtensionProvider) bool {
	switch p.GetProvider().(type) {
	case *meshconfig.MeshConfig_ExtensionProvider_Datadog,
		*meshconfig.MeshConfig_ExtensionProvider_Lightstep, *meshconfig.MeshConfig_ExtensionProvider_Skywalking,
		*meshconfig.MeshConfig_ExtensionProvider_Stackdriver, *meshconfig.MeshConfig_ExtensionProvider_Opencensus:
		return true
	}
	return false
}

// tracerSetting is the tracing provider a Telemetry names for a proxy of
// the given mode, and whether it names one: the first provider of the last
// entry whose match mode applies and that names any (Istio keeps one
// tracer per mode; entries without providers keep the one before).
func tracerSetting(t *telemetryapi.Telemetry, mode telemetryapi.WorkloadMode) (string, bool) {
	name, ok := "", false
	for _, tr := range t.GetTracing() {
		if !modeApplies(tr.GetMatch().GetMode(), mode) || len(tr.GetProviders()) == 0 {
			continue
		}
		name, ok = tr.GetProviders()[0].GetName(), true
	}
	return name, ok
}

// warnTracingProviders reports tracing providers a Telemetry names that
// no proxy will send spans to: not in the mesh config, or of a kind
// meshlet does not speak. Istio's built-in names (see knownProviders)
// stand for the proxies' own exporter and are not reported.
func (bd *build) warnTracingProviders(r *rejections, t *telemetryapi.Telemetry, otel map[string]*meshconfig.MeshConfig_ExtensionProvider) {
	for _, tr := range t.GetTracing() {
		for _, p := range tr.GetProviders() {
			name := p.GetName()
			if otel[name] != nil || knownProviders[name] {
				continue
			}
			if bd.isOtherTracer(name) {
				r.warn("tracing provider %q is neither an opentelemetry nor a zipkin provider: meshlet's proxies export spans over OTLP or to Zipkin only; its spans are not sent", name)
			} else {
				r.warn("tracing provider %q is not an extension provider of the mesh config (ConfigMap %s/%s, key %s); its spans are not sent", name, bd.opts.RootNamespace, meshConfigName, meshConfigKey)
			}
		}
	}
}

func (bd *build) isOtherTracer(name string) bool {
	for _, p := range bd.meshConfig().GetExtensionProviders() {
		if p.GetName() == name && otherTracer(p) {
			return true
		}
	}
	return false
}

// defaultTracer is the mesh's default tracing provider
// (defaultProviders.tracing, the first), "" for none.
func (bd *build) defaultTracer() string {
	if d := bd.meshConfig().GetDefaultProviders().GetTracing(); len(d) > 0 {
		return d[0]
	}
	return ""
}

// applyTracers completes each proxy's tracer, which applyTelemetry chose
// by provider name: the collector's address, protocol and headers, and a
// cluster for its service in the proxy's config (as Istio adds the
// provider's cluster to every proxy that sends to it).
func (bd *build) applyTracers(l7 map[model.NamespacedName]*model.L7Config) {
	providers := bd.tracingProviders()
	r := bd.rejecter(KindMeshConfig, bd.opts.RootNamespace, meshConfigName)
	specs := map[string]*model.Tracer{}
	hosts := map[string]string{}
	for key, cfg := range l7 {
		tr := cfg.Telemetry.Tracer
		if tr == nil {
			continue
		}
		p := providers[tr.Provider]
		if p == nil { // applyTelemetry names only providers it found
			cfg.Telemetry.Tracer = nil
			continue
		}
		if _, done := specs[tr.Provider]; !done {
			specs[tr.Provider], hosts[tr.Provider] = bd.tracer(p, r)
		}
		spec, host := *specs[tr.Provider], hosts[tr.Provider]
		port := p.GetOpentelemetry().GetPort()
		if z := p.GetZipkin(); z != nil {
			port = z.GetPort()
		}
		bd.addClusters(key, cfg, func(lb *l7Builder) {
			if host != "" {
				spec.Cluster = lb.cluster(host, port)
			}
		})
		cfg.Telemetry.Tracer = &spec
	}
}

// tracer translates one opentelemetry provider; host is the collector
// service's hostname, "" when the mesh has no such service (reported:
// spans are then dropped).
func (bd *build) tracer(p *meshconfig.MeshConfig_ExtensionProvider, r *rejections) (*model.Tracer, string) {
	t := &model.Tracer{Provider: p.GetName()}
	var service string
	var port uint32
	var headers []*meshconfig.MeshConfig_ExtensionProvider_HttpHeader
	if z := p.GetZipkin(); z != nil {
		service, port, headers = z.GetService(), z.GetPort(), z.GetHeaders()
		t.Zipkin, t.HTTPPath, t.Timeout = true, z.GetPath(), z.GetTimeout().AsDuration()
		if t.HTTPPath == "" {
			t.HTTPPath = "/api/v2/spans" // Istio's default
		}
	} else {
		o := p.GetOpentelemetry()
		service, port, headers = o.GetService(), o.GetPort(), o.GetGrpc().GetInitialMetadata()
		t.Timeout = o.GetGrpc().GetTimeout().AsDuration()
		if h := o.GetHttp(); h != nil {
			t.HTTPPath, t.Timeout, headers = h.GetPath(), h.GetTimeout().AsDuration(), h.GetHeaders()
			if t.HTTPPath == "" {
				t.HTTPPath = "/v1/traces"
			}
		}
	}
	if t.HTTPPath != "" && !strings.HasPrefix(t.HTTPPath, "/") {
		t.HTTPPath = "/" + t.HTTPPath // Istio's examples write "v1/traces"
	}
	for _, h := range headers {
		if h.GetEnvName() != "" {
			r.warn("extensionProviders %q: header %q from the proxy's environment (envName) is not supported; it is not sent", t.Provider, h.GetName())
			continue
		}
		if t.Headers == nil {
			t.Headers = map[string]string{}
		}
		t.Headers[h.GetName()] = h.GetValue()
	}
	if err := t.Validate(); err != nil {
		r.warn("extensionProviders %q: %v; spans are not sent", t.Provider, err)
		return &model.Tracer{Provider: t.Provider}, ""
	}
	host := service[strings.IndexByte(service, '/')+1:] // "[namespace/]hostname"
	t.Authority = host + ":" + strconv.FormatUint(uint64(port), 10)
	if _, ok := bd.hostOwners[host]; !ok || port == 0 || port > 65535 {
		r.warn("extensionProviders %q: service %q port %d is no service of the mesh: spans are not sent", t.Provider, service, port)
		return t, ""
	}
	return t, host
}
