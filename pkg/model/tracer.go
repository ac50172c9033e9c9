package model

import (
	"errors"
	"fmt"
	"strings"
	"time"
)

// Tracer is the collector a proxy sends the spans of the requests it
// samples to: an opentelemetry (or zipkin) extension provider of Istio's
// mesh config (meshConfig.extensionProviders), the one the Telemetry API
// names for the proxy (tracing.providers) or the mesh's default
// (meshConfig.defaultProviders.tracing). Spans go to the provider's
// cluster like any request: its endpoints, HBONE to endpoints in the mesh.
type Tracer struct {
	// Provider is the extension provider's name.
	Provider string
	// Cluster is the L7 cluster of the collector's service and port; empty
	// when the mesh has no such service: spans are dropped (and counted).
	Cluster string `json:",omitempty"`
	// Authority is the collector's "host:port", the exports' :authority.
	Authority string
	// HTTPPath sends OTLP/HTTP (JSON) to this path, e.g. /v1/traces, as the
	// provider's http block asks; empty sends OTLP/gRPC
	// (opentelemetry.proto.collector.trace.v1.TraceService/Export),
	// Istio's default. With Zipkin, the path spans are posted to.
	HTTPPath string `json:",omitempty"`
	// Zipkin sends Zipkin's v2 JSON to HTTPPath (a zipkin extension
	// provider: Zipkin, Jaeger's Zipkin port) in place of OTLP.
	Zipkin bool `json:",omitempty"`
	// Headers are sent with every export (http.headers, or
	// grpc.initialMetadata); they may carry the collector's credentials.
	Headers map[string]string `json:",omitempty"`
	// Timeout bounds one export; zero means TracerDefaultTimeout.
	Timeout time.Duration `json:",omitempty"`
	// ServiceName is the spans' service.name; empty means the proxy's
	// "<name>.<namespace>", as Istio names a waypoint's spans.
	ServiceName string `json:",omitempty"`
}

// TracerDefaultTimeout bounds an export without a timeout of its own.
const TracerDefaultTimeout = 10 * time.Second

// Validate checks a tracer.
func (t *Tracer) Validate() error {
	if t.Provider == "" {
		return errors.New("tracer has no provider name")
	}
	if t.Timeout < 0 {
		return fmt.Errorf("tracer %q: negative timeout", t.Provider)
	}
	if t.Zipkin && t.HTTPPath == "" {
		return fmt.Errorf("tracer %q: a zipkin tracer needs the path spans are posted to", t.Provider)
	}
	if t.HTTPPath != "" && !strings.HasPrefix(t.HTTPPath, "/") {
		return fmt.Errorf("tracer %q: http path %q must start with /", t.Provider, t.HTTPPath)
	}
	if k := invalidHeader(t.Headers); k != "" {
		return fmt.Errorf("tracer %q: header %q: not a valid header", t.Provider, k)
	}
	return nil
}
