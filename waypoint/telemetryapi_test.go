package waypoint

import (
	"fmt"
	"net/http"
	"slices"
	"strings"
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

// TestAccessLogFilter: a Telemetry accessLogging filter logs only the
// requests its CEL condition holds for (here: failures, and anything a
// client marks for debugging), while metrics still count every request; an
// expression the proxy cannot compile refuses the config and the last good
// one keeps serving.
func TestAccessLogFilter(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/fail" {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	}))
	cl := clusterOf("outbound|9080||reviews.default.svc.cluster.local", app)
	cfg := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name), Retries: &model.RetryPolicy{}})
	cfg.L7.Telemetry.AccessLogFilter = "response.code >= 400 || request.headers['x-debug'] == 'true'"
	h := start(t, cfg, nil)
	client := newClient(t)
	for _, r := range []struct {
		path  string
		debug bool
		code  int
	}{{"/ok", false, 200}, {"/fail", false, 503}, {"/ok", true, 200}, {"/ok", false, 200}, {"/fail", false, 503}} {
		hdr := map[string]string{}
		if r.debug {
			hdr["X-Debug"] = "true"
		}
		if code, _ := h.get(t, client, r.path, hdr); code != r.code {
			t.Fatalf("GET %s = %d; want %d", r.path, code, r.code)
		}
	}
	var logged []string
	for _, l := range h.log.lines(t) {
		logged = append(logged, fmt.Sprintf("%s %d", l.Path, l.ResponseCode))
	}
	if want := []string{"/fail 503", "/ok 200", "/fail 503"}; !slices.Equal(logged, want) {
		t.Errorf("logged %q; want %q (the failures and the debug request)", logged, want)
	}
	if n := metricSum(t, h.reg, "istio_requests_total", map[string]string{"reporter": "waypoint"}); n != 5 {
		t.Errorf("requests counted: %v; want all 5", n)
	}

	bad := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	bad.L7.Telemetry.AccessLogFilter = "response.code >="
	if err := h.proxy.Update(bad); err == nil || !strings.Contains(err.Error(), "filter expression") {
		t.Errorf("Update with an invalid filter = %v; want it refused naming the filter expression", err)
	}
	if code, _ := h.get(t, client, "/fail", nil); code != 503 || len(h.log.lines(t)) != 4 {
		t.Errorf("after the refused config: %d, %d lines; want the last good config still filtering (503 logged, 4 lines)", code, len(h.log.lines(t)))
	}
}
