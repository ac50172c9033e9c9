package controlplane

import (
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"

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
