package controlplane

import (
	"fmt"
	"slices"

	"golang.org/x/net/http/httpguts"
	telemetryapi "istio.io/api/telemetry/v1alpha1"

	"github.com/meshlet/meshlet/pkg/logfilter"
	"github.com/meshlet/meshlet/pkg/model"
)

// knownProviders are the telemetry providers meshlet's proxies implement:
// Istio's default names for the built-in access log and tracer. A
// Telemetry naming another provider is reported (the provider is not
// configured); its accessLogging entries for that provider alone leave the
// access log as it is, its tracing settings still apply.
var knownProviders = map[string]bool{"": true, "envoy": true, "otel": true, "opentelemetry": true, "stdout": true}

// applyTelemetry sets each proxy's effective Telemetry API configuration
// (its tracer by provider name, the mesh's default tracing provider below
// every level),
// with Istio's precedence: a Telemetry in the root namespace with no
// selector applies mesh-wide; one in the proxy's namespace with no selector
// overrides it; one that targets the proxy (targetRefs to its Gateway, or a
// selector matching its pods) overrides both. At each level the oldest
// object wins a conflict, and each kind of setting (access logging,
// tracing, metrics) is overridden on its own.
func (bd *build) applyTelemetry(l7 map[model.NamespacedName]*model.L7Config) {
	keys := sortedKeys(bd.in.telemetries)
	sortByAge(keys, func(k string) model.ObjectMeta {
		c := bd.in.telemetries[k]
		return model.ObjectMeta{Namespace: c.meta.Namespace, Name: c.meta.Name, Created: c.meta.CreationTimestamp.Time}
	})
	otel := bd.tracingProviders()
	for _, k := range keys {
		c := bd.in.telemetries[k]
		r := bd.rejecter(KindTelemetry, c.meta.Namespace, c.meta.Name)
		bd.warnTracingProviders(r, c.spec, otel)
		if err := checkAccessLogFilter(c.spec); err != nil {
			r.reject("%v", err)
		}
		bd.checkMetrics(r, c.spec)
		for _, al := range c.spec.GetAccessLogging() {
			for _, p := range al.GetProviders() {
				if _, ok := bd.accessLogFormats()[p.GetName()]; !ok {
					r.warn("accessLogging provider %q is not configured in meshlet (the built-in envoy provider, or an envoyFileAccessLog extension provider of the mesh config); entries naming only it leave the proxy's access log as it is", p.GetName())
				}
			}
		}
		for _, tr := range c.spec.GetTracing() {
			if v := tr.GetRandomSamplingPercentage(); v != nil && (v.GetValue() < 0 || v.GetValue() > 100) {
				r.reject("tracing randomSamplingPercentage %v is not between 0 and 100", v.GetValue())
			}
			for _, name := range sortedKeys(tr.GetCustomTags()) {
				ct := tr.GetCustomTags()[name]
				switch {
				case ct.GetLiteral() != nil:
				case ct.GetHeader() != nil:
					if !httpguts.ValidHeaderFieldName(ct.GetHeader().GetName()) {
						r.warn("tracing customTags %q: header %q is not a valid header name; the tag is not set", name, ct.GetHeader().GetName())
					}
				default:
					r.warn("tracing customTags %q: only literal and header tags are set by meshlet's proxies (not environment or formatter); the tag is not set", name)
				}
			}
		}
	}
	for name, cfg := range l7 {
		if cfg == nil {
			continue
		}
		var levels [3][]config[telemetryapi.Telemetry] // mesh, namespace, proxy
		for _, k := range keys {
			c := bd.in.telemetries[k]
			if !validTelemetry(c.spec) {
				continue
			}
			switch {
			case bd.telemetryTargets(c, name):
				levels[2] = append(levels[2], c)
			case hasTarget(c.spec):
				// targets something else
			case c.meta.Namespace == name.Namespace:
				levels[1] = append(levels[1], c)
			case c.meta.Namespace == bd.opts.RootNamespace:
				levels[0] = append(levels[0], c)
			}
		}
		mode := bd.proxyMode(name)
		formats := bd.accessLogFormats()
		t := model.L7Telemetry{AccessLogFormat: formats[""]}
		var metricEntries []*telemetryapi.Metrics // the oldest Telemetry's of each level with any
		tracer := bd.defaultTracer()
		for _, level := range levels {
			// Oldest first, so the first setting found at a level is the one kept.
			var log, sampling, metrics, traced bool
			levelTags := map[string]model.TraceTag{}
			for _, c := range level {
				if len(c.spec.GetMetrics()) > 0 && !metrics {
					metricEntries, metrics = append(metricEntries, c.spec.GetMetrics()...), true
				}
				for name, tag := range tagsSetting(c.spec, mode) {
					if _, set := levelTags[name]; !set {
						levelTags[name] = tag
					}
				}
				if v, ok := tracerSetting(c.spec, mode); ok && !traced {
					tracer, traced = v, true
				}
				if v, filter, format, ok := accessLogSetting(c.spec, mode, formats); ok && !log {
					t.AccessLog, t.AccessLogFilter, log = &v, filter, true
					if v {
						t.AccessLogFormat = format
					}
				}
				if v, ok := samplingSetting(c.spec, mode); ok && !sampling {
					t.TraceSampling, sampling = &v, true
				}
			}
			// A more specific level's tag replaces a broader one's of
			// the same name; the others add up.
			for name, tag := range levelTags {
				if t.TraceTags == nil {
					t.TraceTags = map[string]model.TraceTag{}
				}
				t.TraceTags[name] = tag
			}
		}
		if on, ok, overrides := bd.metricsOverrides(metricEntries, mode); ok || overrides != nil {
			if ok {
				t.RequestMetrics = &on
			}
			t.Metrics = overrides
		}
		if otel[tracer] != nil {
			t.Tracer = &model.Tracer{Provider: tracer} // completed by applyTracers
		}
		cfg.Telemetry = t
	}
}

func validTelemetry(t *telemetryapi.Telemetry) bool {
	if checkAccessLogFilter(t) != nil {
		return false
	}
	for _, tr := range t.GetTracing() {
		if v := tr.GetRandomSamplingPercentage(); v != nil && (v.GetValue() < 0 || v.GetValue() > 100) {
			return false
		}
	}
	return true
}

func hasTarget(t *telemetryapi.Telemetry) bool {
	return len(t.GetSelector().GetMatchLabels()) > 0 || t.GetTargetRef() != nil || len(t.GetTargetRefs()) > 0
}

// telemetryTargets reports whether c names the proxy: a targetRef to its
// Gateway (Gateway API or Istio), or a selector its pods match — a
// waypoint's pods carry gateway.networking.k8s.io/gateway-name, an Istio
// ingress gateway's pods the labels its Gateway selects.
func (bd *build) telemetryTargets(c config[telemetryapi.Telemetry], name model.NamespacedName) bool {
	if c.meta.Namespace != name.Namespace && c.meta.Namespace != bd.opts.RootNamespace {
		return false
	}
	refs := c.spec.GetTargetRefs()
	if r := c.spec.GetTargetRef(); r != nil {
		refs = append(refs, r)
	}
	for _, r := range refs {
		if r.GetKind() == "Gateway" && r.GetName() == name.Name && c.meta.Namespace == name.Namespace {
			return true
		}
	}
	sel := c.spec.GetSelector().GetMatchLabels()
	if len(sel) == 0 {
		return false
	}
	podLabels := map[string]string{"gateway.networking.k8s.io/gateway-name": name.Name}
	if gw, ok := bd.in.istioGws[name.Namespace+"/"+name.Name]; ok {
		podLabels = gw.spec.GetSelector()
	}
	for k, v := range sel {
		if podLabels[k] != v {
			return false
		}
	}
	return true
}

// proxyMode is the workload mode whose Telemetry entries the proxy name
// takes. Istio builds a waypoint's listeners, their access logs, tracing
// and metrics as ListenerClassSidecarInbound (pilot/pkg/networking/core/
// listener_waypoint.go), which its workloadMode (pilot/pkg/model/
// telemetry.go) makes SERVER: tracing takes the ServerSpec and metrics
// the ServerMetrics. An ingress gateway's are ListenerClassGateway
// (core/gateway.go, listener.go), which is CLIENT. A waypoint thus
// follows entries whose match.mode is SERVER or CLIENT_AND_SERVER (the
// default) and ignores CLIENT ones; an ingress gateway the reverse.
func (bd *build) proxyMode(name model.NamespacedName) telemetryapi.WorkloadMode {
	if _, ok := bd.waypoints[name]; ok {
		return telemetryapi.WorkloadMode_SERVER
	}
	return telemetryapi.WorkloadMode_CLIENT
}

// modeApplies reports whether an entry's match.mode m selects a proxy of
// workload mode proxy.
func modeApplies(m, proxy telemetryapi.WorkloadMode) bool {
	return m == telemetryapi.WorkloadMode_CLIENT_AND_SERVER || m == proxy
}

// accessLogSetting is the Telemetry's switch and filter for the proxy's
// JSON access log, which stands for Istio's default envoy file provider,
// and whether the Telemetry has one. As Istio's mergeLogs decides for one
// provider: of the entries that name the log's provider (or name none and
// inherit the providers of the entry before them, the first the mesh's
// default, which is the log) and whose match mode applies to the proxy,
// the last one wins, disabled or not; an entry whose providers are all
// ones meshlet does not serve leaves the log alone. The winning entry's
// filter goes with it (an off log has none).
//
// Two things Istio does that meshlet does not: it takes the filter only
// from entries that name their providers (a filter on an entry with no
// providers is dropped there; here it is kept, as the entry asks), and a
// Telemetry whose entries name only other providers takes the log out of
// scope below it, turning it off (here such a Telemetry changes nothing).
//
// The winning entry's format is its first provider's that meshlet serves
// (formats, by provider name: accessLogFormats), the built-in one's when
// it names none.
func accessLogSetting(t *telemetryapi.Telemetry, mode telemetryapi.WorkloadMode, formats map[string]*model.AccessLogFormat) (on bool, filter string, format *model.AccessLogFormat, ok bool) {
	var parent []*telemetryapi.ProviderRef
	for _, al := range t.GetAccessLogging() {
		providers := al.GetProviders()
		if len(providers) == 0 {
			providers = parent
		}
		parent = providers
		if !modeApplies(al.GetMatch().GetMode(), mode) {
			continue
		}
		f, served := logFormatOf(providers, formats)
		if !served {
			continue
		}
		on, filter, format, ok = !al.GetDisabled().GetValue(), "", f, true
		if on {
			filter = al.GetFilter().GetExpression()
		}
	}
	return on, filter, format, ok
}

// logFormatOf is the format of the first of providers meshlet serves (the
// built-in one's when there are none), and whether there is one.
func logFormatOf(providers []*telemetryapi.ProviderRef, formats map[string]*model.AccessLogFormat) (*model.AccessLogFormat, bool) {
	if len(providers) == 0 {
		return formats[""], true
	}
	for _, p := range providers {
		if f, ok := formats[p.GetName()]; ok {
			return f, true
		}
	}
	return nil, false
}

// samplingSetting is the Telemetry's trace sampling for a proxy of the
// given mode, and whether it has one. As Istio's Tracing merges them, each
// tracing entry whose match mode applies overrides the settings it sets,
// later entries over earlier ones, whatever their providers (Istio keeps
// one tracer per mode); disableSpanReporting true means no sampling.
func samplingSetting(t *telemetryapi.Telemetry, mode telemetryapi.WorkloadMode) (float64, bool) {
	var disabled, set bool
	var pct float64
	for _, tr := range t.GetTracing() {
		if !modeApplies(tr.GetMatch().GetMode(), mode) {
			continue
		}
		if d := tr.GetDisableSpanReporting(); d != nil {
			disabled = d.GetValue()
		}
		if v := tr.GetRandomSamplingPercentage(); v != nil {
			pct, set = v.GetValue(), true
		}
	}
	switch {
	case disabled:
		return 0, true
	case set:
		return pct, true
	}
	return 0, false
}

// tagsSetting are the custom span tags of a Telemetry's tracing entries
// whose match mode applies to the proxy, a later entry's tag replacing an
// earlier one of the same name: literal and header tags (others are
// warned about and left out), at most model.MaxTraceTags.
func tagsSetting(t *telemetryapi.Telemetry, mode telemetryapi.WorkloadMode) map[string]model.TraceTag {
	var out map[string]model.TraceTag
	for _, tr := range t.GetTracing() {
		if !modeApplies(tr.GetMatch().GetMode(), mode) {
			continue
		}
		for _, name := range sortedKeys(tr.GetCustomTags()) {
			ct := tr.GetCustomTags()[name]
			var tag model.TraceTag
			switch {
			case ct.GetLiteral() != nil:
				tag.Literal = ct.GetLiteral().GetValue()
			case ct.GetHeader() != nil && httpguts.ValidHeaderFieldName(ct.GetHeader().GetName()):
				tag.Header, tag.Default = ct.GetHeader().GetName(), ct.GetHeader().GetDefaultValue()
			default:
				continue
			}
			if out == nil {
				out = map[string]model.TraceTag{}
			}
			if _, set := out[name]; set || len(out) < model.MaxTraceTags {
				out[name] = tag
			}
		}
	}
	return out
}

// prometheusProvider reports whether a metrics provider name is meshlet's
// Prometheus export: Istio's built-in "prometheus", or a mesh config
// extension provider of the prometheus kind.
func (bd *build) prometheusProvider(name string) bool {
	if name == "prometheus" {
		return true
	}
	for _, p := range bd.meshConfig().GetExtensionProviders() {
		if p.GetName() == name {
			return p.GetPrometheus() != nil
		}
	}
	return false
}

// metricsOverrides folds the metrics entries of the Telemetries that apply
// to a proxy, broadest level first, as Istio's mergeMetrics does for one
// provider (pilot/pkg/model/telemetry.go): an entry without providers
// takes the previous entry's (the first, the mesh config's
// defaultProviders.metrics, else Prometheus), and only entries for
// Prometheus count; their overrides are an ordered list, each applying, for
// the proxy's mode, to the metric it matches (ALL_METRICS or no metric: to
// every one), a later one's disabled and tags replacing an earlier one's.
// on is the switch for all of them, set by the last ALL_METRICS override
// that has disabled (ok false: none). Overrides that cannot be served were
// warned about by checkMetrics and are left out here.
func (bd *build) metricsOverrides(entries []*telemetryapi.Metrics, mode telemetryapi.WorkloadMode) (on, ok bool, out map[string]model.MetricOverride) {
	providers := bd.meshConfig().GetDefaultProviders().GetMetrics()
	if len(providers) == 0 {
		providers = []string{"prometheus"}
	}
	folded := map[string]*model.MetricOverride{}
	for _, m := range entries {
		if len(m.GetProviders()) > 0 {
			providers = nil
			for _, p := range m.GetProviders() {
				providers = append(providers, p.GetName())
			}
		}
		if !slices.ContainsFunc(providers, bd.prometheusProvider) {
			continue
		}
		for _, o := range m.GetOverrides() {
			if !modeApplies(o.GetMatch().GetMode(), mode) {
				continue
			}
			names, all := overrideMetrics(o.GetMatch())
			if all && o.GetDisabled() != nil {
				on, ok = !o.GetDisabled().GetValue(), true
				if !on {
					continue // as Istio: the switch, not each metric's
				}
			}
			for _, name := range names {
				f := folded[name]
				if f == nil {
					f = &model.MetricOverride{}
					folded[name] = f
				}
				if o.GetDisabled() != nil {
					f.Disabled = o.GetDisabled().GetValue()
				}
				for _, tag := range sortedKeys(o.GetTagOverrides()) { // the bound keeps the same ones each build
					to := o.GetTagOverrides()[tag]
					if bd.checkTagOverride(tag, to) != nil {
						continue
					}
					if f.Tags == nil {
						f.Tags = map[string]model.TagOverride{}
					}
					if _, set := f.Tags[tag]; !set && len(f.Tags) >= model.MaxMetricTags {
						continue
					}
					if to.GetOperation() == telemetryapi.MetricsOverrides_TagOverride_REMOVE {
						f.Tags[tag] = model.TagOverride{Remove: true}
					} else {
						f.Tags[tag] = model.TagOverride{Value: to.GetValue()}
					}
				}
			}
		}
	}
	for name, f := range folded {
		if f.Disabled || len(f.Tags) > 0 {
			if out == nil {
				out = map[string]model.MetricOverride{}
			}
			out[name] = *f
		}
	}
	return on, ok, out
}

// overrideMetrics are the metrics an override's match names: all of them
// for ALL_METRICS or no match (all true), none for a custom metric.
func overrideMetrics(sel *telemetryapi.MetricSelector) (names []string, all bool) {
	switch mm := sel.GetMetricMatch().(type) {
	case nil:
		return model.IstioMetrics, true
	case *telemetryapi.MetricSelector_Metric:
		if mm.Metric == telemetryapi.MetricSelector_ALL_METRICS {
			return model.IstioMetrics, true
		}
		return []string{mm.Metric.String()}, false
	}
	return nil, false
}

// checkTagOverride is why a tagOverrides entry cannot be served: its name
// is no Prometheus label, or its value no expression the proxies evaluate.
// An expression is compiled once per build, whatever the proxies it
// applies to.
func (bd *build) checkTagOverride(tag string, to *telemetryapi.MetricsOverrides_TagOverride) error {
	if !model.ValidLabelName(tag) {
		return fmt.Errorf("tag %q is not a valid Prometheus label name (letters, digits and _, not starting with __)", tag)
	}
	if to.GetOperation() == telemetryapi.MetricsOverrides_TagOverride_REMOVE {
		return nil
	}
	if to.GetValue() == "" {
		return fmt.Errorf("tag %q: an UPSERT needs a value expression, e.g. request.host", tag)
	}
	err, done := bd.tagValues[to.GetValue()]
	if !done {
		_, err = logfilter.CompileValue(to.GetValue())
		if bd.tagValues == nil {
			bd.tagValues = map[string]error{}
		}
		bd.tagValues[to.GetValue()] = err
	}
	if err != nil {
		return fmt.Errorf("tag %q: %w", tag, err)
	}
	return nil
}

// checkMetrics warns about the metrics overrides of t that the proxies
// leave out: custom metrics, tags that cannot be served, and tags beyond
// the bound of one metric.
func (bd *build) checkMetrics(r *rejections, t *telemetryapi.Telemetry) {
	for i, m := range t.GetMetrics() {
		for j, o := range m.GetOverrides() {
			if cm := o.GetMatch().GetCustomMetric(); cm != "" {
				r.warn("metrics[%d].overrides[%d]: custom metric %q is not one meshlet's proxies export; the override is ignored", i, j, cm)
			}
			if len(o.GetTagOverrides()) > model.MaxMetricTags {
				r.warn("metrics[%d].overrides[%d]: %d tagOverrides, more than %d; the ones past the bound are ignored", i, j, len(o.GetTagOverrides()), model.MaxMetricTags)
			}
			for _, tag := range sortedKeys(o.GetTagOverrides()) {
				if err := bd.checkTagOverride(tag, o.GetTagOverrides()[tag]); err != nil {
					r.warn("metrics[%d].overrides[%d].tagOverrides: %v; the tag is left as it is", i, j, err)
				}
			}
		}
	}
}

// checkAccessLogFilter compiles the filters of t's access logging, as the
// proxies will: a Telemetry whose filter they could not run is refused.
func checkAccessLogFilter(t *telemetryapi.Telemetry) error {
	for i, al := range t.GetAccessLogging() {
		if expr := al.GetFilter().GetExpression(); expr != "" {
			if _, err := logfilter.Compile(expr); err != nil {
				return fmt.Errorf("accessLogging[%d].filter: %w", i, err)
			}
		}
	}
	return nil
}
