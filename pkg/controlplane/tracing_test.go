package controlplane

import (
	"fmt"
	"slices"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
)

const meshConfigTracing = `apiVersion: v1
kind: ConfigMap
metadata: {name: istio, namespace: istio-system}
data:
  mesh: |
    extensionProviders:
    - name: otel-grpc
      opentelemetry:
        service: opentelemetry-collector.observability.svc.cluster.local
        port: 4317
        grpc: {timeout: 3s, initialMetadata: [{name: x-tenant, value: shop}]}
    - name: otel-http
      opentelemetry:
        service: observability/opentelemetry-collector.observability.svc.cluster.local
        port: 4318
        http:
          path: v1/traces
          timeout: 5s
          headers: [{name: api-key, value: s3cret}, {name: x-from-env, envName: TOKEN}]
    - name: otel-nowhere
      opentelemetry: {service: gone.observability.svc.cluster.local, port: 4317}
    - name: zipkin
      zipkin: {service: zipkin.istio-system.svc.cluster.local, port: 9411}
    - name: datadog
      datadog: {service: datadog-agent.datadog.svc.cluster.local, port: 8126}
%s`

const collectorService = `apiVersion: v1
kind: Service
metadata: {name: opentelemetry-collector, namespace: observability}
spec:
  clusterIP: 10.96.0.50
  selector: {app: collector}
  ports: [{name: otlp-grpc, port: 4317}, {name: otlp-http, port: 4318}]
`

func telemetryDoc(ns, name, tracing string) string {
	return `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: ` + name + `, namespace: ` + ns + `}
spec:
  tracing: [` + tracing + `]
`
}

// TestTracingProviders: the opentelemetry extension provider a proxy's
// Telemetry names (or the mesh's default tracing provider) reaches the
// waypoint as its tracer, with a cluster for the collector's service;
// providers the proxies cannot send to are reported and leave no tracer.
func TestTracingProviders(t *testing.T) {
	grpcTracer := &model.Tracer{Provider: "otel-grpc", Cluster: "outbound|4317||opentelemetry-collector.observability.svc.cluster.local",
		Authority: "opentelemetry-collector.observability.svc.cluster.local:4317", Timeout: 3 * time.Second, Headers: map[string]string{"x-tenant": "shop"}}
	httpTracer := &model.Tracer{Provider: "otel-http", Cluster: "outbound|4318||opentelemetry-collector.observability.svc.cluster.local",
		Authority: "opentelemetry-collector.observability.svc.cluster.local:4318", HTTPPath: "/v1/traces", Timeout: 5 * time.Second,
		Headers: map[string]string{"api-key": "s3cret"}}
	for _, tt := range []struct {
		name     string
		defaults string // the mesh config's defaultProviders
		docs     []string
		want     *model.Tracer
		warned   []string
	}{
		{name: "no provider named: none", want: nil},
		{name: "mesh-wide Telemetry names the gRPC provider",
			docs: []string{telemetryDoc("istio-system", "mesh-default", "{providers: [{name: otel-grpc}], randomSamplingPercentage: 10}")},
			want: grpcTracer},
		{name: "the mesh's default tracing provider", defaults: "    defaultProviders: {tracing: [otel-grpc]}\n", want: grpcTracer},
		{name: "the namespace's Telemetry overrides the default, the HTTP provider",
			defaults: "    defaultProviders: {tracing: [otel-grpc]}\n",
			docs:     []string{telemetryDoc("bookinfo", "traces", "{providers: [{name: otel-http}]}")},
			want:     httpTracer, warned: []string{`header "x-from-env"`}},
		{name: "an entry for clients only does not apply to a waypoint",
			docs: []string{telemetryDoc("bookinfo", "traces", "{match: {mode: CLIENT}, providers: [{name: otel-grpc}]}")}, want: nil},
		{name: "a zipkin provider: Zipkin's v2 JSON to its default path",
			docs: []string{telemetryDoc("bookinfo", "traces", "{providers: [{name: zipkin}]}"), `apiVersion: v1
kind: Service
metadata: {name: zipkin, namespace: istio-system}
spec: {clusterIP: 10.96.0.51, selector: {app: zipkin}, ports: [{name: http, port: 9411}]}
`},
			want: &model.Tracer{Provider: "zipkin", Cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local",
				Authority: "zipkin.istio-system.svc.cluster.local:9411", HTTPPath: "/api/v2/spans", Zipkin: true}},
		{name: "a datadog provider is reported, no tracer",
			docs: []string{telemetryDoc("bookinfo", "traces", "{providers: [{name: datadog}]}")}, want: nil,
			warned: []string{`"datadog" is neither an opentelemetry nor a zipkin provider`}},
		{name: "an unknown provider is reported, no tracer",
			docs: []string{telemetryDoc("bookinfo", "traces", "{providers: [{name: jaeger}]}")}, want: nil,
			warned: []string{`"jaeger" is not an extension provider of the mesh config`}},
		{name: "a collector that is no service of the mesh: a tracer without a cluster, reported",
			docs:   []string{telemetryDoc("bookinfo", "traces", "{providers: [{name: otel-nowhere}]}")},
			want:   &model.Tracer{Provider: "otel-nowhere", Authority: "gone.observability.svc.cluster.local:4317"},
			warned: []string{`"otel-nowhere": service "gone.observability.svc.cluster.local" port 4317 is no service of the mesh`}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			docs := bookinfo(append([]string{fmt.Sprintf(meshConfigTracing, tt.defaults), collectorService, ns("observability", "")}, tt.docs...)...)
			snap, rej := mustBuild(t, inputs(t, docs...))
			for _, w := range tt.warned {
				if !hasRejection(rej, w, true) {
					t.Errorf("rejections = %v; want a warning %q", rej, w)
				}
			}
			if len(rej) != len(tt.warned) {
				t.Errorf("rejections = %v; want %d", rej, len(tt.warned))
			}
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok {
				t.Fatal("no L7 config for bookinfo/waypoint")
			}
			if d := cmp.Diff(tt.want, cfg.Telemetry.Tracer); d != "" {
				t.Errorf("tracer (-want +got):\n%s", d)
			}
			if tt.want != nil && tt.want.Cluster != "" {
				i := slices.IndexFunc(cfg.Clusters, func(c model.L7Cluster) bool { return c.Name == tt.want.Cluster })
				if i < 0 {
					t.Fatalf("clusters %v; want %s for the collector", cfg.Clusters, tt.want.Cluster)
				}
				if err := cfg.Validate(); err != nil {
					t.Errorf("config does not validate: %v", err)
				}
			}
		})
	}
}

// TestTraceCustomTags: Telemetry tracing customTags reach the waypoint as
// span tags: literal and header ones, a namespace's tag replacing the
// mesh-wide one of the same name, the others kept; an environment tag is
// reported and not set.
func TestTraceCustomTags(t *testing.T) {
	snap, rej := mustBuild(t, inputs(t, bookinfo(
		telemetryDoc("istio-system", "mesh-default", `{customTags: {cluster: {literal: {value: east}}, user: {header: {name: x-user, defaultValue: anon}}, pod: {environment: {name: POD_NAME}}}}`),
		telemetryDoc("bookinfo", "traces", `{customTags: {cluster: {literal: {value: west}}}}`),
	)...))
	if len(rej) != 1 || !hasRejection(rej, `tracing customTags "pod": only literal and header tags`, true) {
		t.Errorf("rejections = %v; want the environment tag reported", rej)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	want := map[string]model.TraceTag{"cluster": {Literal: "west"}, "user": {Header: "x-user", Default: "anon"}}
	if d := cmp.Diff(want, cfg.Telemetry.TraceTags); d != "" {
		t.Errorf("trace tags (-want +got):\n%s", d)
	}
}
