package waypoint

import (
	"encoding/hex"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"

	"github.com/meshlet/meshlet/pkg/model"
)

// rawCodec hands a gRPC server's messages over as bytes.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *v.(*[]byte), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*v.(*[]byte) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

// pbSpan is a span as an OTLP collector decodes it.
type pbSpan struct {
	traceID, spanID, parentID string
	name                      string
	kind, status              uint64
	attrs                     map[string]string
}

// pbExport is an ExportTraceServiceRequest as a collector decodes it.
type pbExport struct {
	resource map[string]string
	scope    string
	spans    []pbSpan
}

// fields walks one protobuf message: each field's number, and its value as
// bytes (length-delimited) or a number.
func fields(t *testing.T, b []byte, each func(num protowire.Number, raw []byte, n uint64)) {
	t.Helper()
	for len(b) > 0 {
		num, typ, l := protowire.ConsumeTag(b)
		if l < 0 {
			t.Fatalf("bad tag: %v", protowire.ParseError(l))
		}
		b = b[l:]
		switch typ {
		case protowire.BytesType:
			v, m := protowire.ConsumeBytes(b)
			if m < 0 {
				t.Fatalf("field %d: %v", num, protowire.ParseError(m))
			}
			each(num, v, 0)
			b = b[m:]
		case protowire.VarintType:
			v, m := protowire.ConsumeVarint(b)
			if m < 0 {
				t.Fatalf("field %d: %v", num, protowire.ParseError(m))
			}
			each(num, nil, v)
			b = b[m:]
		case protowire.Fixed64Type:
			v, m := protowire.ConsumeFixed64(b)
			if m < 0 {
				t.Fatalf("field %d: %v", num, protowire.ParseError(m))
			}
			each(num, nil, v)
			b = b[m:]
		default:
			t.Fatalf("field %d: unexpected wire type %d", num, typ)
		}
	}
}

// keyValues decodes a KeyValue with a string value.
func decodeKeyValue(t *testing.T, b []byte, into map[string]string) {
	var k, v string
	fields(t, b, func(num protowire.Number, raw []byte, _ uint64) {
		switch num {
		case 1:
			k = string(raw)
		case 2:
			fields(t, raw, func(n protowire.Number, s []byte, _ uint64) {
				if n == 1 {
					v = string(s)
				}
			})
		}
	})
	into[k] = v
}

// decodeExport reads an ExportTraceServiceRequest by the OTLP field
// numbers (opentelemetry/proto/trace/v1/trace.proto).
func decodeExport(t *testing.T, b []byte) pbExport {
	out := pbExport{resource: map[string]string{}}
	fields(t, b, func(num protowire.Number, rs []byte, _ uint64) {
		if num != 1 {
			t.Fatalf("ExportTraceServiceRequest field %d; want resource_spans (1) only", num)
		}
		fields(t, rs, func(num protowire.Number, raw []byte, _ uint64) {
			switch num {
			case 1: // resource
				fields(t, raw, func(n protowire.Number, kv []byte, _ uint64) {
					if n == 1 {
						decodeKeyValue(t, kv, out.resource)
					}
				})
			case 2: // scope_spans
				fields(t, raw, func(n protowire.Number, v []byte, _ uint64) {
					switch n {
					case 1:
						fields(t, v, func(n protowire.Number, s []byte, _ uint64) {
							if n == 1 {
								out.scope = string(s)
							}
						})
					case 2:
						s := pbSpan{attrs: map[string]string{}}
						fields(t, v, func(n protowire.Number, f []byte, x uint64) {
							switch n {
							case 1:
								s.traceID = hex.EncodeToString(f)
							case 2:
								s.spanID = hex.EncodeToString(f)
							case 4:
								s.parentID = hex.EncodeToString(f)
							case 5:
								s.name = string(f)
							case 6:
								s.kind = x
							case 9:
								decodeKeyValue(t, f, s.attrs)
							case 15:
								fields(t, f, func(n protowire.Number, _ []byte, c uint64) {
									if n == 3 {
										s.status = c
									}
								})
							}
						})
						out.spans = append(out.spans, s)
					}
				})
			}
		})
	})
	return out
}

// grpcCollector is an OTLP/gRPC collector (grpc-go) on loopback keeping
// the exports and the metadata they came with.
type grpcCollector struct {
	mu      sync.Mutex
	methods []string
	exports [][]byte
	md      []metadata.MD
}

func (c *grpcCollector) handle(_ any, stream grpc.ServerStream) error {
	method, _ := grpc.MethodFromServerStream(stream)
	var req []byte
	if err := stream.RecvMsg(&req); err != nil {
		return err
	}
	md, _ := metadata.FromIncomingContext(stream.Context())
	c.mu.Lock()
	c.methods, c.exports, c.md = append(c.methods, method), append(c.exports, req), append(c.md, md)
	c.mu.Unlock()
	empty := []byte{} // ExportTraceServiceResponse without partial_success
	return stream.SendMsg(&empty)
}

func (c *grpcCollector) got() ([]string, [][]byte, []metadata.MD) {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]string(nil), c.methods...), append([][]byte(nil), c.exports...), append([]metadata.MD(nil), c.md...)
}

func startGRPCCollector(t *testing.T) (*grpcCollector, string) {
	c := &grpcCollector{}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer(grpc.ForceServerCodec(rawCodec{}), grpc.UnknownServiceHandler(c.handle))
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	return c, l.Addr().String()
}

// waitFor polls cond for up to 5s.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(5 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestTracerFromConfig: a config's tracer (a Telemetry's opentelemetry
// provider) gets the sampled requests' spans through the collector's
// cluster, over OTLP/gRPC with the provider's metadata, or OTLP/HTTP to its
// path with its headers; a push that changes the tracer flushes the old
// one's spans and sends the next to the new one; without a tracer the
// proxy's own exporter (Options.ExportSpan) gets them again.
func TestTracerFromConfig(t *testing.T) {
	gc, grpcAddr := startGRPCCollector(t)
	var httpMu sync.Mutex
	var httpBodies []otlpExport
	var httpKeys []string
	httpCol := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		httpMu.Lock()
		defer httpMu.Unlock()
		httpKeys = append(httpKeys, r.URL.Path+" "+r.Header.Get("Api-Key")+" "+r.Host)
		c := &collector{}
		c.ServeHTTP(w, r)
		httpBodies = append(httpBodies, c.bodies...)
	}))
	t.Cleanup(httpCol.Close)

	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	grpcTracer := &model.Tracer{Provider: "otel", Cluster: "outbound|4317||collector.observability.svc.cluster.local",
		Authority: "collector.observability.svc.cluster.local:4317", Headers: map[string]string{"x-tenant": "shop"}}
	httpTracer := &model.Tracer{Provider: "otel-http", Cluster: "outbound|4318||collector.observability.svc.cluster.local",
		Authority: "collector.observability.svc.cluster.local:4318", HTTPPath: "/v1/traces", Headers: map[string]string{"api-key": "s3cret"}}
	config := func(tr *model.Tracer) *Config {
		cfg := oneRoute([]model.L7Cluster{clusterOf("app", app), clusterOf(grpcTracer.Cluster, grpcAddr), clusterOf(httpTracer.Cluster, httpCol.Listener.Addr().String())},
			model.L7Route{Name: "reviews", Destinations: to("app")})
		cfg.L7.Telemetry.Tracer = tr
		return cfg
	}
	var ownMu sync.Mutex
	var own []Span
	h := start(t, config(grpcTracer), func(o *Options) {
		o.ExportSpan = func(s Span) { ownMu.Lock(); own = append(own, s); ownMu.Unlock() }
		o.SpanServiceName, o.SpanResource = "waypoint.shop", map[string]string{"k8s.namespace.name": "shop"}
	})
	client := newClient(t)
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	tp := map[string]string{"traceparent": "00-" + trace + "-" + parent + "-01"}
	h.get(t, client, "/ok", tp)
	h.get(t, client, "/fail", tp)
	h.get(t, client, "/unsampled", map[string]string{"traceparent": "00-" + trace + "-" + parent + "-00"})

	// The push to the HTTP tracer flushes the gRPC one's queue.
	if err := h.proxy.Update(config(httpTracer)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the gRPC collector's export", func() bool { _, e, _ := gc.got(); return len(e) > 0 })
	methods, exports, md := gc.got()
	if len(exports) != 1 || methods[0] != "/opentelemetry.proto.collector.trace.v1.TraceService/Export" {
		t.Fatalf("gRPC collector got %d exports by %v; want 1 TraceService/Export", len(exports), methods)
	}
	if got := md[0].Get("x-tenant"); len(got) != 1 || got[0] != "shop" {
		t.Errorf("export metadata x-tenant = %v; want the provider's [shop]", got)
	}
	if got := md[0].Get(":authority"); len(got) != 1 || got[0] != grpcTracer.Authority {
		t.Errorf("export :authority = %v; want %s", got, grpcTracer.Authority)
	}
	e := decodeExport(t, exports[0])
	if e.resource["service.name"] != "waypoint.shop" || e.resource["k8s.namespace.name"] != "shop" || e.scope != otlpScope {
		t.Errorf("resource %v scope %q; want service.name waypoint.shop, k8s.namespace.name shop, scope %s", e.resource, e.scope, otlpScope)
	}
	if len(e.spans) != 2 {
		t.Fatalf("exported %d spans; want the 2 sampled requests", len(e.spans))
	}
	for _, s := range e.spans {
		failed := s.attrs["url.path"] == "/fail"
		if s.traceID != trace || s.parentID != parent || len(s.spanID) != 16 || s.kind != otlpSpanKindServer || s.name != "reviews" ||
			(s.status == otlpStatusError) != failed || s.attrs["http.response.status_code"] != map[bool]string{true: "502", false: "200"}[failed] {
			t.Errorf("span %+v: want trace %s, parent %s, an 8-byte span id, kind SERVER, name reviews, error status only for /fail's 502", s, trace, parent)
		}
	}

	// On the HTTP tracer: one span, then a push without a tracer flushes it.
	h.get(t, client, "/ok", tp)
	if err := h.proxy.Update(config(nil)); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the HTTP collector's export", func() bool { httpMu.Lock(); defer httpMu.Unlock(); return len(httpBodies) > 0 })
	httpMu.Lock()
	if len(httpBodies) != 1 || len(httpBodies[0].ResourceSpans[0].ScopeSpans[0].Spans) != 1 || httpKeys[0] != "/v1/traces s3cret "+httpTracer.Authority {
		t.Errorf("HTTP collector got %d exports (%v); want 1 with 1 span to /v1/traces, api-key s3cret, Host %s", len(httpBodies), httpKeys, httpTracer.Authority)
	}
	httpMu.Unlock()
	ownMu.Lock()
	if len(own) != 0 {
		t.Errorf("the proxy's own exporter got %d spans while the config named a tracer; want none", len(own))
	}
	ownMu.Unlock()
	h.get(t, client, "/ok", tp)
	ownMu.Lock()
	defer ownMu.Unlock()
	if len(own) != 1 {
		t.Errorf("without a tracer in the config the proxy's own exporter got %d spans; want 1", len(own))
	}
	if _, e, _ := gc.got(); len(e) != 1 {
		t.Errorf("gRPC collector got %d exports after its tracer was dropped; want still 1", len(e))
	}
}

// TestZipkinTracer: a config's zipkin tracer posts the sampled requests'
// spans as Zipkin's v2 JSON to the collector's path, through its cluster:
// server spans of the caller's B3 trace, named by the proxy's service name,
// with the HTTP attributes as tags and "error" on a 5xx.
func TestZipkinTracer(t *testing.T) {
	type zspan struct {
		TraceID, ID, ParentID, Name, Kind string
		Timestamp, Duration               int64
		LocalEndpoint                     struct{ ServiceName string }
		Tags                              map[string]string
	}
	var mu sync.Mutex
	var got []zspan
	var paths []string
	zipkin := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		var spans []zspan
		if err := json.NewDecoder(r.Body).Decode(&spans); err != nil || r.Header.Get("Content-Type") != "application/json" {
			http.Error(w, "want a JSON array of spans", http.StatusBadRequest)
			return
		}
		mu.Lock()
		got, paths = append(got, spans...), append(paths, r.Method+" "+r.URL.Path+" "+r.Host)
		mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(zipkin.Close)
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	tr := &model.Tracer{Provider: "zipkin", Cluster: "outbound|9411||zipkin.istio-system.svc.cluster.local",
		Authority: "zipkin.istio-system.svc.cluster.local:9411", HTTPPath: "/api/v2/spans", Zipkin: true}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", app), clusterOf(tr.Cluster, zipkin.Listener.Addr().String())},
		model.L7Route{Name: "reviews", Destinations: to("app")})
	cfg.L7.Telemetry.Tracer = tr
	h := start(t, cfg, func(o *Options) { o.SpanServiceName = "waypoint.shop" })
	client := newClient(t)
	const trace, caller = "463ac35c9f6413ad48485a3953bb6124", "a2fb4a1d1a96d312"
	b3 := map[string]string{"X-B3-TraceId": trace, "X-B3-SpanId": caller, "X-B3-Sampled": "1"}
	h.get(t, client, "/ok", b3)
	h.get(t, client, "/fail", b3)
	if err := h.proxy.Update(oneRoute([]model.L7Cluster{clusterOf("app", app), clusterOf(tr.Cluster, zipkin.Listener.Addr().String())},
		model.L7Route{Name: "reviews", Destinations: to("app")})); err != nil { // no tracer: the zipkin one flushes
		t.Fatal(err)
	}
	waitFor(t, "the Zipkin collector's spans", func() bool { mu.Lock(); defer mu.Unlock(); return len(got) >= 2 })
	mu.Lock()
	defer mu.Unlock()
	if len(got) != 2 || paths[0] != "POST /api/v2/spans "+tr.Authority {
		t.Fatalf("collector got %d spans by %v; want 2 by POST /api/v2/spans", len(got), paths)
	}
	for _, s := range got {
		failed := s.Tags["url.path"] == "/fail"
		if s.TraceID != trace || s.ParentID != caller || len(s.ID) != 16 || s.Kind != "SERVER" || s.Name != "reviews" ||
			s.LocalEndpoint.ServiceName != "waypoint.shop" || s.Timestamp == 0 || s.Duration < 1 || (s.Tags["error"] != "") != failed {
			t.Errorf("span %+v: want trace %s child of %s, SERVER reviews of waypoint.shop, error only on /fail", s, trace, caller)
		}
	}
}
