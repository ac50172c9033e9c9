package waypoint

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
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
}

// OTLPExporter sends the waypoint's spans to an OpenTelemetry collector
// over OTLP/HTTP with the JSON encoding the OTLP specification defines. It
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
	if opts.Client == nil {
		opts.Client = &http.Client{Timeout: 10 * time.Second}
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
	u.Path = strings.TrimRight(u.Path, "/") + "/v1/traces"
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
	rs := otlpResourceSpans{ScopeSpans: make([]otlpScopeSpans, 1)}
	res := map[string]string{"service.name": e.opts.ServiceName}
	for k, v := range e.opts.Resource {
		res[k] = v
	}
	rs.Resource.Attributes = keyValues(res)
	ss := &rs.ScopeSpans[0]
	ss.Scope.Name = "meshlet.dev/waypoint"
	for _, s := range batch {
		sp := otlpSpan{
			TraceID: s.TraceID, SpanID: s.SpanID, ParentSpanID: s.ParentSpanID, Name: s.Name, Kind: otlpSpanKindServer,
			StartTimeUnixNano: strconv.FormatInt(s.Start.UnixNano(), 10), EndTimeUnixNano: strconv.FormatInt(s.End.UnixNano(), 10),
			Attributes: keyValues(s.Attributes),
		}
		if code, err := strconv.Atoi(s.Attributes["http.response.status_code"]); err == nil && code >= 500 {
			sp.Status.Code = otlpStatusError // server spans: 5xx is an error, 4xx is not (OTel HTTP conventions)
		}
		ss.Spans = append(ss.Spans, sp)
	}
	b, err := json.Marshal(otlpExport{ResourceSpans: []otlpResourceSpans{rs}})
	if err != nil {
		return fmt.Errorf("encode spans: %w", err)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, e.url, bytes.NewReader(b))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := e.opts.Client.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode/100 != 2 {
		return errors.New("collector answered " + resp.Status)
	}
	return nil
}
