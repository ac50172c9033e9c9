package waypoint

import (
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
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
		return testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"reporter": "waypoint"})
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
	if n := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"reporter": "waypoint"}); n != 5 {
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

// metricLabels are the label names of a metric's series (nil when the
// metric is not exported), and whether all its series have the same ones.
func metricLabels(t *testing.T, reg *prometheus.Registry, name string) []string {
	t.Helper()
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != name || len(mf.GetMetric()) == 0 {
			continue
		}
		var names []string
		for _, l := range mf.GetMetric()[0].GetLabel() {
			names = append(names, l.GetName())
		}
		return names
	}
	return nil
}

// TestMetricTagOverrides: a push with the Telemetry API's metrics overrides
// relabels the request metrics on the next request, without a restart:
// a label removed, a standard one given an expression's value, labels
// added from the host and a header (a request without the header gets
// "unknown"), a metric turned off; a metric whose layout does not change
// keeps counting; an expression the proxy cannot compile refuses the push
// and the last layout stays; the next push without overrides restores the
// standard labels.
func TestMetricTagOverrides(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	cl := clusterOf("outbound|9080||reviews.default.svc.cluster.local", app)
	plain := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	h := start(t, plain, nil)
	client := newClient(t)
	send := func(n int, hdr map[string]string) {
		t.Helper()
		for range n {
			if code, _ := h.get(t, client, "/", hdr); code != http.StatusOK {
				t.Fatalf("status %d", code)
			}
		}
	}
	send(2, nil)
	if got := metricLabels(t, h.reg, "istio_requests_total"); !slices.Contains(got, "request_protocol") || slices.Contains(got, "tenant") {
		t.Fatalf("standard labels = %v; want request_protocol and no tenant", got)
	}

	relabel := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	relabel.L7.Telemetry.Metrics = map[string]model.MetricOverride{
		"REQUEST_COUNT": {Tags: map[string]model.TagOverride{
			"request_protocol": {Remove: true},
			"response_code":    {Value: "response.code >= 500 ? '5xx' : 'ok'"},
			"request_host":     {Value: "request.host"},
			"tenant":           {Value: "request.headers['x-tenant']"},
		}},
		"REQUEST_SIZE": {Disabled: true},
	}
	if err := h.proxy.Update(relabel); err != nil {
		t.Fatal(err)
	}
	send(2, map[string]string{"X-Tenant": "acme"})
	send(1, nil)
	got := metricLabels(t, h.reg, "istio_requests_total")
	for _, l := range []string{"request_host", "tenant", "response_code", "destination_service"} {
		if !slices.Contains(got, l) {
			t.Errorf("relabelled istio_requests_total has no %s label: %v", l, got)
		}
	}
	if slices.Contains(got, "request_protocol") {
		t.Errorf("relabelled istio_requests_total still has request_protocol: %v", got)
	}
	for _, c := range []struct {
		labels map[string]string
		want   float64
	}{
		{map[string]string{"tenant": "acme", "request_host": "reviews.default.svc.cluster.local", "response_code": "ok"}, 2},
		{map[string]string{"tenant": "unknown"}, 1},
		{nil, 3}, // the series of the standard layout went with it
	} {
		if n := testutil.MetricSum(t, h.reg, "istio_requests_total", c.labels); n != c.want {
			t.Errorf("istio_requests_total%v = %v; want %v", c.labels, n, c.want)
		}
	}
	if got := metricLabels(t, h.reg, "istio_request_bytes"); got != nil {
		t.Errorf("istio_request_bytes disabled, still exported with %v", got)
	}
	if n := testutil.MetricSum(t, h.reg, "istio_request_duration_milliseconds", map[string]string{"request_protocol": "http"}); n != 5 {
		t.Errorf("istio_request_duration_milliseconds (layout unchanged) counted %v requests; want all 5", n)
	}

	broken := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	broken.L7.Telemetry.Metrics = map[string]model.MetricOverride{"REQUEST_COUNT": {Tags: map[string]model.TagOverride{"x": {Value: "request.host +"}}}}
	if err := h.proxy.Update(broken); err == nil || !strings.Contains(err.Error(), "REQUEST_COUNT: tag x") {
		t.Errorf("a push with an expression that does not compile = %v; want refused naming the metric and tag", err)
	}
	send(1, map[string]string{"X-Tenant": "acme"})
	if n := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"tenant": "acme"}); n != 3 {
		t.Errorf("after the refused push, istio_requests_total{tenant=acme} = %v; want 3 (the last layout kept)", n)
	}

	if err := h.proxy.Update(plain); err != nil {
		t.Fatal(err)
	}
	send(1, nil)
	if got := metricLabels(t, h.reg, "istio_requests_total"); !slices.Contains(got, "request_protocol") || slices.Contains(got, "tenant") {
		t.Errorf("labels after the overrides went = %v; want the standard ones", got)
	}
	if n := testutil.MetricSum(t, h.reg, "istio_request_bytes", nil); n != 1 {
		t.Errorf("istio_request_bytes exported again counted %v; want the 1 request since", n)
	}
}

// TestTCPMetricTagOverrides: the overrides of the TCP metrics apply to a
// forwarded connection, with the connection's attributes (no request's).
func TestTCPMetricTagOverrides(t *testing.T) {
	echo := tcpBackend(t, func(c net.Conn) { io.Copy(c, c) })
	cfg := oneRoute([]model.L7Cluster{clusterOf("tcp", echo)}, model.L7Route{Name: "r", DirectResponse: &model.DirectResponse{Status: 200}})
	cfg.TCPCluster = "tcp"
	cfg.L7.Telemetry.Metrics = map[string]model.MetricOverride{
		"TCP_OPENED_CONNECTIONS": {Tags: map[string]model.TagOverride{
			"destination_port": {Value: "string(destination.port)"}, "source_principal": {Remove: true},
			"host": {Value: "request.host"}, // no request: unknown
		}},
		"TCP_SENT_BYTES": {Disabled: true},
	}
	h := start(t, cfg, nil)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(5 * time.Second))
	io.WriteString(c, "not http\n")
	buf := make([]byte, 9)
	if _, err := io.ReadFull(c, buf); err != nil {
		t.Fatal(err)
	}
	c.Close()
	deadline := time.Now().Add(5 * time.Second)
	for testutil.MetricSum(t, h.reg, "istio_tcp_connections_closed_total", nil) < 1 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	_, port, _ := net.SplitHostPort(h.addr)
	if n := testutil.MetricSum(t, h.reg, "istio_tcp_connections_opened_total", map[string]string{"destination_port": port, "host": "unknown", "destination_service": "tcp"}); n != 1 {
		t.Errorf("istio_tcp_connections_opened_total{destination_port=%s} = %v; want 1", port, n)
	}
	if got := metricLabels(t, h.reg, "istio_tcp_connections_opened_total"); slices.Contains(got, "source_principal") {
		t.Errorf("source_principal removed, still a label: %v", got)
	}
	if got := metricLabels(t, h.reg, "istio_tcp_sent_bytes_total"); got != nil {
		t.Errorf("istio_tcp_sent_bytes_total disabled, still exported: %v", got)
	}
	if n := testutil.MetricSum(t, h.reg, "istio_tcp_received_bytes_total", map[string]string{"source_principal": "unknown"}); n != 9 {
		t.Errorf("istio_tcp_received_bytes_total (standard labels) = %v; want 9", n)
	}
}

// TestMetricTagOverridesBounded: label values from a header, which any
// client sets, make at most maxCustomSeries series; the ones after are
// counted under "other".
func TestMetricTagOverridesBounded(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, "", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	if err := m.apply(map[string]model.MetricOverride{"REQUEST_COUNT": {Tags: map[string]model.TagOverride{"user": {Value: "request.headers['x-user']"}}}}); err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	extra := 25
	for i := range maxCustomSeries + extra {
		req.Header.Set("X-User", strconv.Itoa(i))
		rec := &record{start: time.Now(), code: 200, dest: destInfo{service: "reviews"}}
		m.observe(rec, req, mapFields(req), &responseWriter{})
	}
	mfs, err := reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() == "istio_requests_total" && len(mf.GetMetric()) != maxCustomSeries+1 {
			t.Errorf("%d series; want at most %d and the one for other", len(mf.GetMetric()), maxCustomSeries+1)
		}
	}
	if n := testutil.MetricSum(t, reg, "istio_requests_total", map[string]string{"user": otherValue}); n != float64(extra) {
		t.Errorf("requests counted under %q = %v; want %d", otherValue, n, extra)
	}
	if n := testutil.MetricSum(t, reg, "istio_requests_total", map[string]string{"user": "7"}); n != 1 {
		t.Errorf("requests of user 7 = %v; want 1", n)
	}
}

// TestGatewayReportsAsSource: an ingress gateway counts what it forwards as
// Istio's gateways do, as the source: reporter="source" with itself in the
// source_* labels (its workload, namespace, identity and app), whoever the
// client outside the mesh was.
func TestGatewayReportsAsSource(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {}))
	cl := clusterOf("outbound|9080||reviews.shop.svc.cluster.local", app)
	cl.Endpoints[0].Identity = "spiffe://cluster.local/ns/shop/sa/reviews"
	cfg := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "default", Destinations: to(cl.Name)})
	self := &Peer{Workload: "edge", Namespace: "gateways", Principal: "spiffe://cluster.local/ns/gateways/sa/edge", Labels: map[string]string{"app": "edge"}}
	h := start(t, cfg, func(o *Options) { o.Reporter, o.Self = "source", self })
	if code, _ := h.get(t, newClient(t), "/", nil); code != http.StatusOK {
		t.Fatalf("status %d", code)
	}
	want := map[string]string{"reporter": "source", "source_workload": "edge", "source_workload_namespace": "gateways",
		"source_principal": self.Principal, "source_app": "edge", "destination_service": "reviews.shop.svc.cluster.local",
		"destination_principal": "spiffe://cluster.local/ns/shop/sa/reviews"} // the endpoint's identity, which the config names
	if n := testutil.MetricSum(t, h.reg, "istio_requests_total", want); n != 1 {
		t.Errorf("istio_requests_total%v = %v; want 1", want, n)
	}
	if n := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"reporter": "waypoint"}); n != 0 {
		t.Errorf("requests reported as waypoint by a gateway: %v", n)
	}
	if _, err := New(Options{Config: cfg, Reporter: "client"}); err == nil || !strings.Contains(err.Error(), `reporter "client"`) {
		t.Errorf("New with reporter client = %v; want refused", err)
	}
}

// TestMetricLayoutKeptAcrossPushes: a metric whose labels a push leaves as
// they were keeps its series, and reads its values from the new push's
// expressions, numbered anew (here the host's expression moves from second
// to first when the request count's changes).
func TestMetricLayoutKeptAcrossPushes(t *testing.T) {
	reg := prometheus.NewRegistry()
	m, err := newMetrics(reg, "", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	host := model.TagOverride{Value: "request.host"}
	first := map[string]model.MetricOverride{
		"REQUEST_COUNT":    {Tags: map[string]model.TagOverride{"tenant": {Value: "request.headers['x-tenant']"}}},
		"REQUEST_DURATION": {Tags: map[string]model.TagOverride{"host": host}},
	}
	second := map[string]model.MetricOverride{
		"REQUEST_COUNT":    {Tags: map[string]model.TagOverride{"host": host}},
		"REQUEST_DURATION": {Tags: map[string]model.TagOverride{"host": host}},
	}
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	req.Header.Set("X-Tenant", "acme")
	observe := func() {
		rec := &record{start: time.Now(), code: 200, authority: "shop.example", dest: destInfo{service: "reviews"}}
		m.observe(rec, req, mapFields(req), &responseWriter{})
	}
	for _, o := range []map[string]model.MetricOverride{first, second} {
		if err := m.apply(o); err != nil {
			t.Fatal(err)
		}
		observe()
	}
	if n := testutil.MetricSum(t, reg, "istio_request_duration_milliseconds", map[string]string{"host": "shop.example"}); n != 2 {
		t.Errorf("durations with host=shop.example across both pushes = %v; want 2", n)
	}
	if n := testutil.MetricSum(t, reg, "istio_requests_total", map[string]string{"host": "shop.example"}); n != 1 {
		t.Errorf("requests with host=shop.example after the second push = %v; want 1", n)
	}
}
