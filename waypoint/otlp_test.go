package waypoint

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// collector is an OTLP/HTTP receiver on loopback that keeps what it got.
type collector struct {
	mu     sync.Mutex
	bodies []otlpExport
	fail   bool
}

func (c *collector) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != "/v1/traces" || r.Method != http.MethodPost || r.Header.Get("Content-Type") != "application/json" {
		http.Error(w, "want POST /v1/traces application/json", http.StatusBadRequest)
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.fail {
		http.Error(w, "unavailable", http.StatusServiceUnavailable)
		return
	}
	b, _ := io.ReadAll(r.Body)
	var e otlpExport
	if err := json.Unmarshal(b, &e); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	c.bodies = append(c.bodies, e)
}

func (c *collector) spans() []otlpSpan {
	c.mu.Lock()
	defer c.mu.Unlock()
	var out []otlpSpan
	for _, b := range c.bodies {
		for _, rs := range b.ResourceSpans {
			for _, ss := range rs.ScopeSpans {
				out = append(out, ss.Spans...)
			}
		}
	}
	return out
}

// TestOTLPExport: requests through the waypoint with a sampled traceparent
// reach an OTLP/HTTP collector as server spans of the caller's trace, with
// the caller's span as parent, the HTTP attributes and an error status for
// a 5xx; a collector that fails loses spans (counted) and never the requests.
func TestOTLPExport(t *testing.T) {
	col := &collector{}
	srv := httptest.NewServer(col)
	t.Cleanup(srv.Close)
	exp, err := NewOTLPExporter(OTLPOptions{Endpoint: srv.URL + "/", Interval: 50 * time.Millisecond, Resource: map[string]string{"k8s.namespace.name": "default"}})
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); exp.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })

	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusBadGateway)
		}
	}))
	cl := clusterOf("outbound|9080||reviews.default.svc.cluster.local", app)
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "reviews", Destinations: to(cl.Name)}), func(o *Options) {
		o.ExportSpan = exp.Export
	})
	client := newClient(t)
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	tp := map[string]string{"traceparent": "00-" + trace + "-" + parent + "-01"}
	h.get(t, client, "/ok", tp)
	h.get(t, client, "/fail", tp)
	h.get(t, client, "/unsampled", map[string]string{"traceparent": "00-" + trace + "-" + parent + "-00"})

	deadline := time.Now().Add(5 * time.Second)
	for len(col.spans()) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	spans := col.spans()
	if len(spans) != 2 {
		t.Fatalf("collector got %d spans; want the 2 sampled requests", len(spans))
	}
	for _, s := range spans {
		attrs := map[string]string{}
		for _, kv := range s.Attributes {
			attrs[kv.Key] = kv.Value.StringValue
		}
		if s.TraceID != trace || s.ParentSpanID != parent || len(s.SpanID) != 16 || s.Kind != otlpSpanKindServer || s.StartTimeUnixNano == "" {
			t.Errorf("span %+v: want trace %s, parent %s, a 16-hex span id, kind SERVER", s, trace, parent)
		}
		wantErr := attrs["http.response.status_code"] == "502"
		if (s.Status.Code == otlpStatusError) != wantErr {
			t.Errorf("span with status %s has OTLP status code %d", attrs["http.response.status_code"], s.Status.Code)
		}
	}
	if got := col.bodies[0].ResourceSpans[0].Resource.Attributes; len(got) != 2 || got[1].Key != "service.name" || got[1].Value.StringValue != "waypoint" {
		t.Errorf("resource attributes = %+v; want k8s.namespace.name and service.name=waypoint", got)
	}

	col.mu.Lock()
	col.fail = true
	col.mu.Unlock()
	if code, _ := h.get(t, client, "/ok", tp); code != http.StatusOK {
		t.Errorf("request with a failing collector: %d; tracing must never fail a request", code)
	}
	deadline = time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		if _, dropped := exp.Stats(); dropped == 1 {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if sent, dropped := exp.Stats(); sent != 2 || dropped != 1 {
		t.Errorf("exporter stats sent %d dropped %d; want 2 and 1", sent, dropped)
	}
}

func TestOTLPEndpointMustBeHTTP(t *testing.T) {
	for _, ep := range []string{"", "collector:4318", "grpc://collector:4317", "http://"} {
		if _, err := NewOTLPExporter(OTLPOptions{Endpoint: ep}); err == nil {
			t.Errorf("endpoint %q accepted; want an error naming the expected form", ep)
		}
	}
}
