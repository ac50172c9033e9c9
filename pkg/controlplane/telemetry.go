package controlplane

import (
	"fmt"

	telemetryapi "istio.io/api/telemetry/v1alpha1"

	"github.com/meshlet/meshlet/pkg/logfilter"
	"github.com/meshlet/meshlet/pkg/model"
)

// knownProviders are the telemetry providers meshlet's proxies implement:
// Istio's default names for the built-in access log and tracer. A
// Telemetry naming another provider is reported (the provider is not
// configured) but its enable/disable and sampling settings still apply.
var knownProviders = map[string]bool{"": true, "envoy": true, "otel": true, "opentelemetry": true, "stdout": true}

// applyTelemetry sets each proxy's effective Telemetry API configuration,
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
	for _, k := range keys {
		c := bd.in.telemetries[k]
		r := bd.rejecter(KindTelemetry, c.meta.Namespace, c.meta.Name)
		if err := checkAccessLogFilter(c.spec); err != nil {
			r.reject("%v", err)
		}
		for _, al := range c.spec.GetAccessLogging() {
			for _, p := range al.GetProviders() {
				if !knownProviders[p.GetName()] {
					r.warn("accessLogging provider %q is not configured in meshlet; the proxy's JSON access log is used", p.GetName())
				}
			}
		}
		for _, tr := range c.spec.GetTracing() {
			if v := tr.GetRandomSamplingPercentage(); v != nil && (v.GetValue() < 0 || v.GetValue() > 100) {
				r.reject("tracing randomSamplingPercentage %v is not between 0 and 100", v.GetValue())
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
		var t model.L7Telemetry
		for _, level := range levels {
			// Oldest first, so the first setting found at a level is the one kept.
			var log, sampling, metrics bool
			for _, c := range level {
				if v, ok := accessLogSetting(c.spec); ok && !log {
					t.AccessLog, log = &v, true
					t.AccessLogFilter = c.spec.GetAccessLogging()[0].GetFilter().GetExpression()
				}
				if v, ok := samplingSetting(c.spec); ok && !sampling {
					t.TraceSampling, sampling = &v, true
				}
				if v, ok := metricsSetting(c.spec); ok && !metrics {
					t.RequestMetrics, metrics = &v, true
				}
			}
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

// accessLogSetting is the Telemetry's access logging switch: logging is on
// unless its (first, Istio-wide) accessLogging entry says disabled.
func accessLogSetting(t *telemetryapi.Telemetry) (bool, bool) {
	als := t.GetAccessLogging()
	if len(als) == 0 {
		return false, false
	}
	if d := als[0].GetDisabled(); d != nil {
		return !d.GetValue(), true
	}
	return true, true
}

func samplingSetting(t *telemetryapi.Telemetry) (float64, bool) {
	for _, tr := range t.GetTracing() {
		if d := tr.GetDisableSpanReporting(); d != nil && d.GetValue() {
			return 0, true
		}
		if v := tr.GetRandomSamplingPercentage(); v != nil {
			return v.GetValue(), true
		}
	}
	return 0, false
}

// metricsSetting is the switch for Istio's request metrics: an override
// of ALL_METRICS (or with no match) with disabled set.
func metricsSetting(t *telemetryapi.Telemetry) (bool, bool) {
	for _, m := range t.GetMetrics() {
		for _, o := range m.GetOverrides() {
			if o.GetDisabled() == nil {
				continue
			}
			if mt := o.GetMatch(); mt != nil && mt.GetMetric() != telemetryapi.MetricSelector_ALL_METRICS {
				continue
			}
			return !o.GetDisabled().GetValue(), true
		}
	}
	return false, false
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
