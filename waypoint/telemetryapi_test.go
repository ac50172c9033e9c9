package waypoint

import (
	"net/http"
	"sync/atomic"
	"testing"

	"github.com/meshlet/meshlet/pkg/model"
)

// TestTelemetryAPISwitches: a config push carrying the Telemetry API's
// settings turns the access log and request metrics off and raises trace
// sampling, without a restart; the next push restores the defaults.
func TestTelemetryAPISwitches(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	cl := clusterOf("outbound|9080||reviews.default.svc.cluster.local", app)
	cfg := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	var spans atomic.Int64
	h := start(t, cfg, func(o *Options) {
		o.TraceSampling = 0
		o.ExportSpan = func(Span) { spans.Add(1) }
	})
	client := newClient(t)
	send := func(n int) {
		for range n {
			if code, _ := h.get(t, client, "/", nil); code != http.StatusOK {
				t.Fatalf("status %d", code)
			}
		}
	}
	requests := func() float64 {
		return metricSum(t, h.reg, "istio_requests_total", map[string]string{"reporter": "waypoint"})
	}

	send(3)
	if got := len(h.log.lines(t)); got != 3 || requests() != 3 || spans.Load() != 0 {
		t.Fatalf("defaults: %d log lines, %v requests counted, %d spans; want 3, 3, 0", got, requests(), spans.Load())
	}

	off, full := false, 100.0
	quiet := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	quiet.L7.Telemetry = model.L7Telemetry{AccessLog: &off, RequestMetrics: &off, TraceSampling: &full}
	if err := h.proxy.Update(quiet); err != nil {
		t.Fatal(err)
	}
	send(4)
	if got := len(h.log.lines(t)); got != 3 || requests() != 3 || spans.Load() != 4 {
		t.Errorf("Telemetry off/100%%: %d log lines, %v requests counted, %d spans; want still 3, still 3, and 4", got, requests(), spans.Load())
	}

	if err := h.proxy.Update(cfg); err != nil {
		t.Fatal(err)
	}
	send(2)
	if got := len(h.log.lines(t)); got != 5 || requests() != 5 || spans.Load() != 4 {
		t.Errorf("defaults again: %d log lines, %v requests counted, %d spans; want 5, 5, 4", got, requests(), spans.Load())
	}
}
