package waypoint

import (
	"encoding/binary"
	"encoding/hex"
	"io"

	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"google.golang.org/protobuf/encoding/protowire"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"
)

// OTLPOptions configure an OTLPExporter.
type OTLPOptions struct {
	// Endpoint is the collector's OTLP/HTTP base URL, e.g.
	// http://otel-collector.observability:4318; spans go to <Endpoint>/v1/traces.
	// Required.
	Endpoint string
	// ServiceName is the resource's service.name; empty means "waypoint".
	ServiceName string
	// Resource are further resource attributes (k8s.namespace.name, ...).
	Resource map[string]string
	// Client sends the requests; nil means one with a 10s timeout.
	Client *http.Client
	// BatchSize flushes a batch when this many spans are queued; zero means 512.
	BatchSize int
	// Interval flushes whatever is queued this often; zero means 2s.
	Interval time.Duration
	// MaxQueue bounds the spans waiting for export; beyond it new spans are
	// dropped (and counted), never blocking a request. Zero means 4096.
	MaxQueue int
	// Logf reports export failures; nil discards them.
	Logf func(format string, args ...any)
	// GRPC sends OTLP/gRPC (TraceService/Export, protobuf) in place of
	// OTLP/HTTP with JSON; Client's transport must then speak HTTP/2 (h2c
	// for an http:// endpoint).
	GRPC bool
	// Path is the OTLP/HTTP path after Endpoint's own; empty means
	// /v1/traces.
	Path string
	// Headers are set on every export (a collector's API key, a tenant).
	Headers map[string]string
	// Timeout bounds one export; zero means 10s.
	Timeout time.Duration
	// Zipkin posts Zipkin's v2 JSON (the resource's service.name as the
	// local endpoint, its other attributes as tags) to Endpoint + Path in
	// place of OTLP; Path is then required.
	Zipkin bool
}

// otlpGRPCPath is the OTLP/gRPC trace export method.
const otlpGRPCPath = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"

// OTLPExporter sends the waypoint's spans to an OpenTelemetry collector
// over OTLP/HTTP with the JSON encoding the OTLP specification defines, or
// over OTLP/gRPC (OTLPOptions.GRPC) with its protobuf encoding, or to a
// Zipkin collector in its v2 JSON (OTLPOptions.Zipkin). It
// is written against the wire format, not the OpenTelemetry SDK: the SDK
// and its protobuf module would move the versions the lab's pinned
// Kubernetes binaries are built with (see the note in the README).
// Requests never wait for it: Export only queues, Run sends in batches.
type OTLPExporter struct {
	opts    OTLPOptions
	url     string
	mu      sync.Mutex
	queue   []Span
	kick    chan struct{}
	dropped int
	sent    int
}

// NewOTLPExporter checks opts.
func NewOTLPExporter(opts OTLPOptions) (*OTLPExporter, error) {
	u, err := url.Parse(opts.Endpoint)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("OTLP endpoint %q: want an http(s) URL of the collector's OTLP/HTTP port, e.g. http://otel-collector:4318", opts.Endpoint)
	}
	if opts.ServiceName == "" {
		opts.ServiceName = "waypoint"
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 10 * time.Second
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.BatchSize <= 0 {
		opts.BatchSize = 512
	}
	if opts.Interval <= 0 {
		opts.Interval = 2 * time.Second
	}
	if opts.MaxQueue <= 0 {
		opts.MaxQueue = 4096
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	path := opts.Path
	switch {
	case opts.GRPC:
		path = otlpGRPCPath
	case opts.Zipkin && path == "":
		return nil, errors.New("zipkin exporter: no path to post spans to (Istio's default is /api/v2/spans)")
	case path == "":
		path = "/v1/traces"
	}
	u.Path = strings.TrimRight(u.Path, "/") + path
	return &OTLPExporter{opts: opts, url: u.String(), kick: make(chan struct{}, 1)}, nil
}

// Export queues one span; it is Options.ExportSpan.
func (e *OTLPExporter) Export(s Span) {
	e.mu.Lock()
	if len(e.queue) >= e.opts.MaxQueue {
		e.dropped++
		e.mu.Unlock()
		return
	}
	e.queue = append(e.queue, s)
	full := len(e.queue) >= e.opts.BatchSize
	e.mu.Unlock()
	if full {
		select {
		case e.kick <- struct{}{}:
		default:
		}
	}
}

// Stats returns the spans sent and dropped so far.
func (e *OTLPExporter) Stats() (sent, dropped int) {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.sent, e.dropped
}

// Run sends queued spans until ctx ends, then makes one last bounded flush.
func (e *OTLPExporter) Run(ctx context.Context) error {
	t := time.NewTicker(e.opts.Interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			fctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			e.flush(fctx)
			return nil
		case <-t.C:
		case <-e.kick:
		}
		e.flush(ctx)
	}
}

func (e *OTLPExporter) flush(ctx context.Context) {
	for {
		e.mu.Lock()
		n := min(len(e.queue), e.opts.BatchSize)
		batch := e.queue[:n:n]
		e.queue = e.queue[n:]
		e.mu.Unlock()
		if n == 0 {
			return
		}
		if err := e.send(ctx, batch); err != nil {
			e.mu.Lock()
			e.dropped += n
			e.mu.Unlock()
			e.opts.Logf("OTLP export of %d spans to %s failed, dropped: %v", n, e.url, err)
			return
		}
		e.mu.Lock()
		e.sent += n
		e.mu.Unlock()
	}
}

// OTLP/JSON types: only what a span export carries.
type (
	otlpAnyValue struct {
		StringValue string `json:"stringValue"`
	}
	otlpKeyValue struct {
		Key   string       `json:"key"`
		Value otlpAnyValue `json:"value"`
	}
	otlpSpan struct {
		TraceID           string         `json:"traceId"`
		SpanID            string         `json:"spanId"`
		ParentSpanID      string         `json:"parentSpanId,omitempty"`
		Name              string         `json:"name"`
		Kind              int            `json:"kind"`
		StartTimeUnixNano string         `json:"startTimeUnixNano"`
		EndTimeUnixNano   string         `json:"endTimeUnixNano"`
		Attributes        []otlpKeyValue `json:"attributes,omitempty"`
		Status            struct {
			Code int `json:"code,omitempty"`
		} `json:"status"`
	}
	otlpScopeSpans struct {
		Scope struct {
			Name string `json:"name"`
		} `json:"scope"`
		Spans []otlpSpan `json:"spans"`
	}
	otlpResourceSpans struct {
		Resource struct {
			Attributes []otlpKeyValue `json:"attributes"`
		} `json:"resource"`
		ScopeSpans []otlpScopeSpans `json:"scopeSpans"`
	}
	otlpExport struct {
		ResourceSpans []otlpResourceSpans `json:"resourceSpans"`
	}
)

const (
	otlpSpanKindServer = 2
	otlpStatusError    = 2
)

func keyValues(m map[string]string) []otlpKeyValue {
	out := make([]otlpKeyValue, 0, len(m))
	for k, v := range m {
		out = append(out, otlpKeyValue{Key: k, Value: otlpAnyValue{StringValue: v}})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out
}

func (e *OTLPExporter) send(ctx context.Context, batch []Span) error {
	ctx, cancel := context.WithTimeout(ctx, e.opts.Timeout)
	defer cancel()
	res := map[string]string{"service.name": e.opts.ServiceName}
	for k, v := range e.opts.Resource {
		res[k] = v
	}
	var body []byte
	var err error
	switch {
	case e.opts.GRPC:
		body = grpcFrame(encodeTraces(res, batch))
	case e.opts.Zipkin:
		if body, err = encodeZipkin(res, batch); err != nil {
			return err
		}
	default:
		if body, err = e.encodeJSON(res, batch); err != nil {
			return err
		}
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(body))
	if err != nil {
		return err
	}
	for k, v := range e.opts.Headers {
		req.Header.Set(k, v)
	}
	if e.opts.GRPC {
		req.Header["Content-Type"] = []string{"application/grpc"}
		req.Header["Te"] = []string{"trailers"}
		if d, ok := ctx.Deadline(); ok {
			req.Header["Grpc-Timeout"] = []string{strconv.FormatInt(max(time.Until(d).Milliseconds(), 1), 10) + "m"}
		}
	} else {
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := e.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return errors.New("collector answered " + resp.Status)
	}
	if !e.opts.GRPC {
		return nil
	}
	// The answer (ExportTraceServiceResponse, partial_success at most) is
	// read to the trailers, which carry the call's status.
	if _, err := io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)); err != nil {
		return fmt.Errorf("read the collector's answer: %w", err)
	}
	st := resp.Trailer.Get("Grpc-Status")
	if st == "" {
		st = resp.Header.Get("Grpc-Status") // trailers-only
	}
	if st != "0" {
		return fmt.Errorf("collector's export call failed: grpc-status %q %s", st, resp.Trailer.Get("Grpc-Message")+resp.Header.Get("Grpc-Message"))
	}
	return nil
}

func (e *OTLPExporter) encodeJSON(res map[string]string, batch []Span) ([]byte, error) {
	rs := otlpResourceSpans{ScopeSpans: make([]otlpScopeSpans, 1)}
	rs.Resource.Attributes = keyValues(res)
	ss := &rs.ScopeSpans[0]
	ss.Scope.Name = otlpScope
	for _, s := range batch {
		sp := otlpSpan{
			TraceID: s.TraceID, SpanID: s.SpanID, ParentSpanID: s.ParentSpanID, Name: s.Name, Kind: otlpSpanKindServer,
			StartTimeUnixNano: strconv.FormatInt(s.Start.UnixNano(), 10), EndTimeUnixNano: strconv.FormatInt(s.End.UnixNano(), 10),
			Attributes: keyValues(s.Attributes),
		}
		if spanFailed(s) {
			sp.Status.Code = otlpStatusError
		}
		ss.Spans = append(ss.Spans, sp)
	}
	b, err := json.Marshal(otlpExport{ResourceSpans: []otlpResourceSpans{rs}})
	if err != nil {
		return nil, fmt.Errorf("encode spans: %w", err)
	}
	return b, nil
}

// zipkinSpan is a span in Zipkin's v2 JSON.
type zipkinSpan struct {
	TraceID       string            `json:"traceId"`
	ID            string            `json:"id"`
	ParentID      string            `json:"parentId,omitempty"`
	Name          string            `json:"name"`
	Kind          string            `json:"kind"`
	Timestamp     int64             `json:"timestamp"` // microseconds
	Duration      int64             `json:"duration"`  // microseconds, at least 1
	LocalEndpoint map[string]string `json:"localEndpoint"`
	Tags          map[string]string `json:"tags,omitempty"`
}

// encodeZipkin writes a batch as Zipkin's v2 JSON: server spans of the
// resource's service.name, the other resource attributes and the span's
// own as tags, "error" on a 5xx (as Zipkin's instrumentation marks one).
func encodeZipkin(res map[string]string, batch []Span) ([]byte, error) {
	out := make([]zipkinSpan, 0, len(batch))
	for _, s := range batch {
		tags := make(map[string]string, len(s.Attributes)+len(res))
		for k, v := range res {
			if k != "service.name" {
				tags[k] = v
			}
		}
		for k, v := range s.Attributes {
			tags[k] = v
		}
		if spanFailed(s) {
			tags["error"] = s.Attributes["http.response.status_code"]
		}
		out = append(out, zipkinSpan{
			TraceID: s.TraceID, ID: s.SpanID, ParentID: s.ParentSpanID, Name: s.Name, Kind: "SERVER",
			Timestamp: s.Start.UnixMicro(), Duration: max(s.End.Sub(s.Start).Microseconds(), 1),
			LocalEndpoint: map[string]string{"serviceName": res["service.name"]}, Tags: tags,
		})
	}
	b, err := json.Marshal(out)
	if err != nil {
		return nil, fmt.Errorf("encode spans: %w", err)
	}
	return b, nil
}

// otlpScope is the instrumentation scope of the waypoint's spans.
const otlpScope = "meshlet.dev/waypoint"

// spanFailed: a server span is an error for a 5xx answer, not a 4xx (the
// OpenTelemetry HTTP conventions).
func spanFailed(s Span) bool {
	code, err := strconv.Atoi(s.Attributes["http.response.status_code"])
	return err == nil && code >= 500
}

// encodeTraces writes an ExportTraceServiceRequest (the same wire form as
// opentelemetry.proto.trace.v1.TracesData) in protobuf: one ResourceSpans
// with the resource's attributes and one scope holding the batch. It is
// written with protowire against the OTLP field numbers rather than with
// go.opentelemetry.io/proto/otlp's types: requiring that module here would
// move the versions the lab's pinned Kubernetes build resolves (test/go.sum,
// the lab cache's key). The lab's collector decodes it with those types.
func encodeTraces(res map[string]string, batch []Span) []byte {
	var scope []byte
	scope = protowire.AppendTag(scope, 1, protowire.BytesType) // scope
	scope = protowire.AppendBytes(scope, protowire.AppendString(protowire.AppendTag(nil, 1, protowire.BytesType), otlpScope))
	for _, s := range batch {
		scope = protowire.AppendTag(scope, 2, protowire.BytesType) // spans
		scope = protowire.AppendBytes(scope, encodeSpan(s))
	}
	var rs []byte
	rs = protowire.AppendTag(rs, 1, protowire.BytesType) // resource
	rs = protowire.AppendBytes(rs, appendAttributes(nil, 1, res))
	rs = protowire.AppendTag(rs, 2, protowire.BytesType) // scope_spans
	rs = protowire.AppendBytes(rs, scope)
	out := protowire.AppendTag(nil, 1, protowire.BytesType) // resource_spans
	return protowire.AppendBytes(out, rs)
}

func encodeSpan(s Span) []byte {
	var b []byte
	b = appendHexID(b, 1, s.TraceID)
	b = appendHexID(b, 2, s.SpanID)
	b = appendHexID(b, 4, s.ParentSpanID)
	b = protowire.AppendTag(b, 5, protowire.BytesType)
	b = protowire.AppendString(b, s.Name)
	b = protowire.AppendTag(b, 6, protowire.VarintType)
	b = protowire.AppendVarint(b, otlpSpanKindServer)
	b = protowire.AppendTag(b, 7, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.Start.UnixNano()))
	b = protowire.AppendTag(b, 8, protowire.Fixed64Type)
	b = protowire.AppendFixed64(b, uint64(s.End.UnixNano()))
	b = appendAttributes(b, 9, s.Attributes)
	if spanFailed(s) {
		var st []byte
		st = protowire.AppendTag(st, 3, protowire.VarintType) // code
		st = protowire.AppendVarint(st, otlpStatusError)
		b = protowire.AppendTag(b, 15, protowire.BytesType)
		b = protowire.AppendBytes(b, st)
	}
	return b
}

// appendHexID appends field num with the bytes of a hex ID; an empty or
// invalid one is left out (as an unset field).
func appendHexID(b []byte, num protowire.Number, id string) []byte {
	raw, err := hex.DecodeString(id)
	if err != nil || len(raw) == 0 {
		return b
	}
	b = protowire.AppendTag(b, num, protowire.BytesType)
	return protowire.AppendBytes(b, raw)
}

// appendAttributes appends m as repeated KeyValue field num (string
// values), sorted by key.
func appendAttributes(b []byte, num protowire.Number, m map[string]string) []byte {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	for _, k := range keys {
		var val []byte
		val = protowire.AppendTag(val, 1, protowire.BytesType) // string_value
		val = protowire.AppendString(val, m[k])
		var kv []byte
		kv = protowire.AppendTag(kv, 1, protowire.BytesType) // key
		kv = protowire.AppendString(kv, k)
		kv = protowire.AppendTag(kv, 2, protowire.BytesType) // value
		kv = protowire.AppendBytes(kv, val)
		b = protowire.AppendTag(b, num, protowire.BytesType)
		b = protowire.AppendBytes(b, kv)
	}
	return b
}

// grpcFrame is msg as one uncompressed gRPC message.
func grpcFrame(msg []byte) []byte {
	frame := make([]byte, 5+len(msg))
	binary.BigEndian.PutUint32(frame[1:5], uint32(len(msg)))
	copy(frame[5:], msg)
	return frame
}
