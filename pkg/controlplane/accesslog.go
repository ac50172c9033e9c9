package controlplane

import (
	"encoding/json"
	"strconv"

	meshconfig "istio.io/api/mesh/v1alpha1"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/model"
)

// The access log a proxy writes is the one of the providers its Telemetry
// names (Istio's accessLogging): the built-in "envoy" provider, and the
// mesh config's envoyFileAccessLog extension providers, each with its
// format. All of them go to the proxy's standard output.

// builtinLogProviders are Istio's default provider names for the proxy's
// own access log.
var builtinLogProviders = map[string]bool{"": true, "envoy": true, "otel": true, "opentelemetry": true, "stdout": true}

// accessLogFormats are the formats by provider name: the built-in
// providers' from the mesh config's accessLogFormat and accessLogEncoding
// (nil, meshlet's JSON line with Istio's default fields, when it sets no
// format), and each envoyFileAccessLog provider's logFormat (Istio's
// default text format when it has none); under "" the format of entries
// that name no provider (the first default provider's). A provider whose format does not
// parse is reported and left out: entries naming it leave the log as it is.
func (bd *build) accessLogFormats() map[string]*model.AccessLogFormat {
	if bd.logFormats != nil {
		return bd.logFormats
	}
	out := map[string]*model.AccessLogFormat{}
	r := bd.rejecter(KindMeshConfig, bd.opts.RootNamespace, meshConfigName)
	mc := bd.meshConfig()
	var builtin *model.AccessLogFormat
	if f := mc.GetAccessLogFormat(); f != "" {
		builtin = &model.AccessLogFormat{Text: f}
		if mc.GetAccessLogEncoding() == meshconfig.MeshConfig_JSON {
			var labels map[string]any
			if err := json.Unmarshal([]byte(f), &labels); err != nil {
				r.warn("accessLogFormat with accessLogEncoding JSON is not a JSON object (%v); the default access log format is used", err)
				builtin = nil
			} else {
				builtin = &model.AccessLogFormat{Labels: labelFormats(r, "accessLogFormat", labels)}
			}
		}
		if builtin != nil {
			if _, err := builtin.Parse(); err != nil {
				r.warn("accessLogFormat: %v; the default access log format is used", err)
				builtin = nil
			}
		}
	}
	for name := range builtinLogProviders {
		out[name] = builtin
	}
	files := bd.extensionProviders(func(p *meshconfig.MeshConfig_ExtensionProvider) bool { return p.GetEnvoyFileAccessLog() != nil })
	for _, name := range sortedKeys(files) {
		fp := files[name].GetEnvoyFileAccessLog()
		if p := fp.GetPath(); p != "" && p != "/dev/stdout" {
			r.warn("extensionProviders %q: envoyFileAccessLog path %q: meshlet's proxies write their access log to standard output", name, p)
		}
		f := &model.AccessLogFormat{Text: accesslog.IstioText}
		switch {
		case fp.GetLogFormat().GetText() != "":
			f = &model.AccessLogFormat{Text: fp.GetLogFormat().GetText()}
		case fp.GetLogFormat().GetLabels() != nil:
			f = &model.AccessLogFormat{Labels: labelFormats(r, "extensionProviders "+strconv.Quote(name)+" logFormat.labels", fp.GetLogFormat().GetLabels().AsMap())}
			f.OmitEmpty = fp.GetOmitEmptyValues()
		}
		if _, err := f.Parse(); err != nil {
			r.warn("extensionProviders %q: %v; Telemetry entries naming it leave the access log as it is", name, err)
			continue
		}
		out[name] = f
	}
	// Entries that name no provider take the mesh config's default ones
	// (defaultProviders.accessLogging): the first meshlet serves.
	for _, name := range mc.GetDefaultProviders().GetAccessLogging() {
		if f, ok := out[name]; ok && name != "" {
			out[""] = f
			break
		}
	}
	bd.logFormats = out
	return out
}

// labelFormats are a JSON format's values as formats: strings as they
// are, numbers and booleans as their literal text; a nested object is
// reported and left out.
func labelFormats(r *rejections, where string, labels map[string]any) map[string]string {
	out := map[string]string{}
	for _, k := range sortedKeys(labels) {
		switch v := labels[k].(type) {
		case string:
			out[k] = v
		case float64:
			out[k] = strconv.FormatFloat(v, 'f', -1, 64)
		case bool:
			out[k] = strconv.FormatBool(v)
		default:
			r.warn("%s: key %q is not a string; left out", where, k)
		}
	}
	return out
}
