package controlplane

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/model"
)

// TestTelemetryPrecedence follows Istio's Telemetry API documentation: a
// mesh-wide default in the root namespace, a namespace override, and a
// policy targeting the waypoint itself, each kind of setting overridden on
// its own; conflicts at one level go to the oldest.
func TestTelemetryPrecedence(t *testing.T) {
	on, off := true, false
	pct := func(v float64) *float64 { return &v }
	mesh := `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  accessLogging: [{providers: [{name: envoy}]}]
  tracing: [{randomSamplingPercentage: 1}]
`
	tests := []struct {
		name     string
		docs     []string
		want     model.L7Telemetry
		rejected string
	}{{
		name: "no Telemetry keeps the proxy's defaults",
	}, {
		name: "mesh-wide default",
		docs: []string{mesh},
		want: model.L7Telemetry{AccessLog: &on, TraceSampling: pct(1)},
	}, {
		name: "namespace turns the access log off, mesh sampling stays",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1alpha1
kind: Telemetry
metadata: {name: quiet, namespace: bookinfo}
spec:
  accessLogging: [{disabled: true}]
`},
		want: model.L7Telemetry{AccessLog: &off, TraceSampling: pct(1)},
	}, {
		name: "a policy targeting the waypoint wins over its namespace",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: quiet, namespace: bookinfo}
spec:
  accessLogging: [{disabled: true}]
  tracing: [{randomSamplingPercentage: 5}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: waypoint-debug, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  tracing: [{randomSamplingPercentage: 100}]
  metrics: [{overrides: [{match: {metric: ALL_METRICS}, disabled: true}]}]
`},
		want: model.L7Telemetry{AccessLog: &off, TraceSampling: pct(100), RequestMetrics: &off},
	}, {
		name: "a policy for another workload does not apply",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: reviews-only, namespace: bookinfo}
spec:
  selector: {matchLabels: {app: reviews}}
  accessLogging: [{disabled: true}]
`},
	}, {
		name: "an out-of-range sampling is rejected and ignored",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: bad, namespace: bookinfo}
spec:
  tracing: [{randomSamplingPercentage: 150}]
`},
		rejected: "randomSamplingPercentage 150 is not between 0 and 100",
	}, {
		name: "a namespace's access log filter (Istio's example) goes with its access log setting",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: errors-only, namespace: bookinfo}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
`},
		want: model.L7Telemetry{AccessLog: &on, AccessLogFilter: "response.code >= 400", TraceSampling: pct(1)},
	}, {
		name: "a filter that does not compile is rejected and the Telemetry ignored",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: broken, namespace: bookinfo}
spec:
  accessLogging:
  - filter: {expression: "response.code >="}
`},
		want:     model.L7Telemetry{AccessLog: &on, TraceSampling: pct(1)},
		rejected: "accessLogging[0].filter: filter expression",
	}, {
		name: "an entry disabling a provider meshlet does not serve leaves the log on",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: two-sinks, namespace: bookinfo}
spec:
  accessLogging:
  - providers: [{name: envoy}]
  - providers: [{name: custom-als}]
    disabled: true
`},
		want:     model.L7Telemetry{AccessLog: &on},
		rejected: `provider "custom-als" is not configured in meshlet`,
	}, {
		name: "an entry with only a provider meshlet does not serve falls through to the mesh",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-quiet, namespace: istio-system}
spec:
  accessLogging: [{disabled: true}]
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: als, namespace: bookinfo}
spec:
  accessLogging: [{providers: [{name: custom-als}], filter: {expression: "response.code >= 500"}}]
`},
		want:     model.L7Telemetry{AccessLog: &off},
		rejected: `provider "custom-als" is not configured in meshlet`,
	}, {
		name: "an entry with no providers after one naming another provider inherits it",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: als, namespace: bookinfo}
spec:
  accessLogging:
  - providers: [{name: envoy}]
  - providers: [{name: custom-als}]
  - disabled: true
`},
		want:     model.L7Telemetry{AccessLog: &on},
		rejected: `provider "custom-als" is not configured in meshlet`,
	}, {
		name: "a CLIENT entry does not apply to a waypoint (Istio builds it as SERVER)",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-outbound-logs, namespace: bookinfo}
spec:
  accessLogging: [{match: {mode: CLIENT}, disabled: true}]
  tracing: [{match: {mode: CLIENT}, randomSamplingPercentage: 50}]
  metrics: [{overrides: [{match: {metric: ALL_METRICS, mode: CLIENT}, disabled: true}]}]
`},
		want: model.L7Telemetry{AccessLog: &on, TraceSampling: pct(1)},
	}, {
		name: "SERVER entries apply to a waypoint",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-inbound-logs, namespace: bookinfo}
spec:
  accessLogging: [{match: {mode: SERVER}, disabled: true}]
  tracing: [{match: {mode: SERVER}, randomSamplingPercentage: 50}]
  metrics: [{overrides: [{match: {mode: SERVER}, disabled: true}]}]
`},
		want: model.L7Telemetry{AccessLog: &off, TraceSampling: pct(50), RequestMetrics: &off},
	}, {
		name: "the filter of the last applying entry is carried",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: filters, namespace: bookinfo}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 500"}
  - match: {mode: SERVER}
    providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
  - match: {mode: CLIENT}
    providers: [{name: envoy}]
    filter: {expression: "response.code >= 300"}
  - providers: [{name: custom-als}]
    filter: {expression: "response.code >= 200"}
`},
		want:     model.L7Telemetry{AccessLog: &on, AccessLogFilter: "response.code >= 400"},
		rejected: `provider "custom-als" is not configured in meshlet`,
	}, {
		name: "a later entry that disables the log wins, and takes the filter with it",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: off-after-all, namespace: bookinfo}
spec:
  accessLogging:
  - providers: [{name: envoy}]
    filter: {expression: "response.code >= 400"}
  - providers: [{name: envoy}]
    disabled: true
`},
		want: model.L7Telemetry{AccessLog: &off},
	}, {
		name: "a later entry that enables the log again wins",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: on-again, namespace: bookinfo}
spec:
  accessLogging:
  - disabled: true
  - match: {mode: CLIENT_AND_SERVER}
    filter: {expression: "response.code >= 400"}
`},
		want: model.L7Telemetry{AccessLog: &on, AccessLogFilter: "response.code >= 400"},
	}, {
		name: "later tracing and metrics entries override earlier ones",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: layered, namespace: bookinfo}
spec:
  tracing:
  - randomSamplingPercentage: 10
  - match: {mode: SERVER}
    randomSamplingPercentage: 20
  - match: {mode: CLIENT}
    disableSpanReporting: true
  metrics:
  - overrides: [{match: {metric: ALL_METRICS}, disabled: true}]
  - overrides:
    - match: {customMetric: my_metric}
      disabled: true
    - match: {metric: ALL_METRICS, mode: SERVER}
      disabled: false
`},
		want:     model.L7Telemetry{TraceSampling: pct(20), RequestMetrics: &on},
		rejected: `custom metric "my_metric" is not one meshlet's proxies export`,
	}, {
		name: "span reporting disabled for the waypoint's mode means no sampling",
		docs: []string{mesh, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: no-spans, namespace: bookinfo}
spec:
  tracing:
  - match: {mode: SERVER}
    disableSpanReporting: true
  - randomSamplingPercentage: 30
`},
		want: model.L7Telemetry{AccessLog: &on, TraceSampling: pct(0)},
	}, {
		name: "a custom metric's override is not the request metrics switch",
		docs: []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: custom, namespace: bookinfo}
spec:
  metrics: [{overrides: [{match: {customMetric: my_metric}, disabled: true}]}]
`},
		rejected: `custom metric "my_metric" is not one meshlet's proxies export`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t, bookinfo(tt.docs...)...))
			var faults []string
			for _, r := range rej {
				if r.Kind == KindTelemetry {
					faults = append(faults, r.String())
				}
			}
			if got := strings.Join(faults, "; "); (tt.rejected == "") != (got == "") || !strings.Contains(got, tt.rejected) {
				t.Errorf("reported %q; want %q", got, tt.rejected)
			}
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config")
			}
			if d := cmp.Diff(tt.want, cfg.Telemetry); d != "" {
				t.Errorf("telemetry (-want +got):\n%s", d)
			}
		})
	}
}

// TestTelemetryModeByProxy: a waypoint takes the SERVER entries of a
// Telemetry and an ingress gateway the CLIENT ones, as Istio builds their
// listeners (inbound and gateway listeners).
func TestTelemetryModeByProxy(t *testing.T) {
	off := false
	pct := func(v float64) *float64 { return &v }
	snap, _ := mustBuild(t, inputs(t, bookinfo(bookinfoIngress, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: by-mode, namespace: bookinfo}
spec:
  accessLogging: [{match: {mode: CLIENT}, disabled: true}]
  tracing: [{match: {mode: SERVER}, randomSamplingPercentage: 50}]
  metrics: [{overrides: [{match: {mode: CLIENT}, disabled: true}]}]
`)...))
	tests := []struct {
		proxy string
		want  model.L7Telemetry
	}{
		{"waypoint", model.L7Telemetry{TraceSampling: pct(50)}},
		{"bookinfo-gateway", model.L7Telemetry{AccessLog: &off, RequestMetrics: &off}},
	}
	for _, tt := range tests {
		cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: tt.proxy})
		if !ok {
			t.Fatalf("no L7 config for %s", tt.proxy)
		}
		if d := cmp.Diff(tt.want, cfg.Telemetry); d != "" {
			t.Errorf("%s telemetry (-want +got):\n%s", tt.proxy, d)
		}
	}
}

// TestMetricsOverrides: Istio's metrics overrides folded for a waypoint as
// Istio's mergeMetrics folds them: mesh, namespace and proxy entries in
// that order, each override applying to the metrics it matches, a later
// one's disabled and tags replacing an earlier one's; entries for another
// provider, and tags the proxies cannot serve, left out with a warning.
func TestMetricsOverrides(t *testing.T) {
	on := true
	docs := []string{`apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: mesh-default, namespace: istio-system}
spec:
  metrics:
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: ALL_METRICS}
      tagOverrides:
        request_protocol: {operation: REMOVE}
        source_principal: {operation: REMOVE}
    - match: {metric: RESPONSE_SIZE}
      disabled: true
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ns, namespace: bookinfo}
spec:
  metrics:
  - providers: [{name: stackdriver}]
    overrides: [{match: {metric: REQUEST_COUNT}, disabled: true}]
  - overrides: [{match: {metric: REQUEST_DURATION}, disabled: true}] # stackdriver's too
  - providers: [{name: prometheus}]
    overrides:
    - match: {metric: REQUEST_COUNT, mode: SERVER}
      tagOverrides:
        request_host: {value: request.host}
        source_principal: {value: "'hidden'"}
        bad-name: {value: request.host}
        broken: {value: "request.host +"}
    - match: {metric: REQUEST_COUNT, mode: CLIENT}
      tagOverrides: {client_only: {value: "'x'"}}
---
apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: waypoint, namespace: bookinfo}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  metrics:
  - overrides:
    - match: {metric: TCP_SENT_BYTES}
      disabled: true
    - match: {metric: ALL_METRICS}
      disabled: false
    - match: {metric: REQUEST_SIZE}
      disabled: true
`}
	snap, rej := mustBuild(t, inputs(t, bookinfo(docs...)...))
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config")
	}
	removed := map[string]model.TagOverride{"request_protocol": {Remove: true}, "source_principal": {Remove: true}}
	want := model.L7Telemetry{
		RequestMetrics: &on, // the waypoint's ALL_METRICS disabled: false
		Metrics: map[string]model.MetricOverride{
			"REQUEST_COUNT": {Tags: map[string]model.TagOverride{
				"request_protocol": {Remove: true}, "source_principal": {Value: "'hidden'"}, "request_host": {Value: "request.host"},
			}},
			"REQUEST_DURATION": {Tags: removed},
			"REQUEST_SIZE":     {Disabled: true, Tags: removed},
			// disabled by the mesh, enabled again by the waypoint's ALL_METRICS
			"RESPONSE_SIZE":          {Tags: removed},
			"TCP_OPENED_CONNECTIONS": {Tags: removed},
			"TCP_CLOSED_CONNECTIONS": {Tags: removed},
			"TCP_SENT_BYTES":         {Tags: removed},
			"TCP_RECEIVED_BYTES":     {Tags: removed},
			"GRPC_REQUEST_MESSAGES":  {Tags: removed},
			"GRPC_RESPONSE_MESSAGES": {Tags: removed},
		},
	}
	if d := cmp.Diff(want, cfg.Telemetry); d != "" {
		t.Errorf("telemetry (-want +got):\n%s", d)
	}
	for _, w := range []string{
		`tag "bad-name" is not a valid Prometheus label name`,
		`tag "broken": value expression "request.host +"`,
	} {
		if !hasRejection(rej, "Telemetry bookinfo/ns: metrics[2].overrides[0].tagOverrides: "+w, true) {
			t.Errorf("no warning on bookinfo/ns containing %q in %v", w, rej)
		}
	}
	if err := cfg.Validate(); err != nil {
		t.Errorf("the waypoint's config does not validate: %v", err)
	}

	// The gateway (CLIENT) takes the CLIENT override and not the SERVER one.
	snap, _ = mustBuild(t, inputs(t, bookinfo(append(docs, bookinfoIngress)...)...))
	gw, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "bookinfo-gateway"})
	if !ok {
		t.Fatal("no gateway config")
	}
	if got := gw.Telemetry.Metrics["REQUEST_COUNT"].Tags; got["client_only"] != (model.TagOverride{Value: "'x'"}) || got["request_host"] != (model.TagOverride{}) {
		t.Errorf("gateway REQUEST_COUNT tags = %v; want client_only and no request_host", got)
	}
	if !gw.Telemetry.Metrics["RESPONSE_SIZE"].Disabled {
		t.Errorf("gateway RESPONSE_SIZE = %+v; want the mesh's disabled", gw.Telemetry.Metrics["RESPONSE_SIZE"])
	}
}

// TestAccessLogFormats: the access log format a proxy writes comes from
// the mesh config as Istio's does: accessLogFormat (text, or a JSON object
// with accessLogEncoding JSON) for the built-in provider, and each
// envoyFileAccessLog extension provider's logFormat (text, labels, or
// Istio's default text format without one) for the Telemetry entries that
// name it; a provider whose format does not parse is reported, and
// entries naming it leave the log as it is.
func TestAccessLogFormats(t *testing.T) {
	mesh := func(body string) string {
		return "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: istio, namespace: istio-system}\ndata:\n  mesh: |\n" + body
	}
	telemetry := func(provider string) string {
		return `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: logs, namespace: bookinfo}
spec:
  accessLogging: [{providers: [{name: ` + provider + `}]}]
`
	}
	providers := mesh(`    extensionProviders:
    - name: json-log
      envoyFileAccessLog:
        path: /dev/stdout
        omitEmptyValues: true
        logFormat: {labels: {code: "%RESPONSE_CODE%", path: "%REQ(:PATH)%", count: 1}}
    - name: plain
      envoyFileAccessLog: {path: /dev/stdout}
    - name: custom
      envoyFileAccessLog: {path: /var/log/x, logFormat: {text: "%REQ(:METHOD)% %RESPONSE_CODE%"}}
    - name: broken
      envoyFileAccessLog: {logFormat: {text: "%NOT_AN_OPERATOR%"}}
`)
	for _, tt := range []struct {
		name  string
		docs  []string
		want  *model.AccessLogFormat
		warns []string
	}{
		{"no mesh config", nil, nil, nil},
		{"mesh text format", []string{mesh("    accessLogFormat: \"%REQ(:METHOD)% %RESPONSE_CODE%\\n\"\n")}, &model.AccessLogFormat{Text: "%REQ(:METHOD)% %RESPONSE_CODE%\n"}, nil},
		{"mesh JSON format", []string{mesh("    accessLogEncoding: JSON\n    accessLogFormat: '{\"code\": \"%RESPONSE_CODE%\"}'\n")}, &model.AccessLogFormat{Labels: map[string]string{"code": "%RESPONSE_CODE%"}}, nil},
		{"mesh format that does not parse", []string{mesh("    accessLogFormat: \"%NOPE%\"\n")}, nil, []string{"accessLogFormat: operator %NOPE%"}},
		{"labels provider", []string{providers, telemetry("json-log")}, &model.AccessLogFormat{Labels: map[string]string{"code": "%RESPONSE_CODE%", "path": "%REQ(:PATH)%", "count": "1"}, OmitEmpty: true},
			[]string{`extensionProviders "custom": envoyFileAccessLog path "/var/log/x"`}},
		{"provider without format", []string{providers, telemetry("plain")}, &model.AccessLogFormat{Text: accesslog.IstioText}, nil},
		{"text provider", []string{providers, telemetry("custom")}, &model.AccessLogFormat{Text: "%REQ(:METHOD)% %RESPONSE_CODE%"}, nil},
		{"default provider, without a Telemetry", []string{strings.Replace(providers, "    extensionProviders:", "    defaultProviders: {accessLogging: [custom]}\n    extensionProviders:", 1)},
			&model.AccessLogFormat{Text: "%REQ(:METHOD)% %RESPONSE_CODE%"}, nil},
		{"broken provider", []string{providers, telemetry("broken")}, nil,
			[]string{`extensionProviders "broken": operator %NOT_AN_OPERATOR%`, `accessLogging provider "broken" is not configured`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			snap, rej := mustBuild(t, inputs(t, bookinfo(tt.docs...)...))
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config for the waypoint")
			}
			if d := cmp.Diff(tt.want, cfg.Telemetry.AccessLogFormat); d != "" {
				t.Errorf("format (-want +got):\n%s", d)
			}
			for _, w := range tt.warns {
				if !hasRejection(rej, w, true) {
					t.Errorf("rejections %v; want a warning %q", rej, w)
				}
			}
		})
	}
}
