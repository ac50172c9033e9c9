package waypoint

import (
	"bufio"
	"io"
	"net"
	"net/http"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

var payload = strings.Repeat("x", 1024)

// denyAdmin is the benchmarks' one policy: DENY on paths under /admin.
var denyAdmin = []*policy.Policy{{Namespace: "default", Name: "deny-admin", Action: policy.Deny, Rules: []policy.Rule{{To: []policy.Operation{{Paths: []string{"/admin*"}}}}}}}

func benchBackend(b testing.TB) string {
	return backend(b, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.Copy(io.Discard, r.Body)
		io.WriteString(w, payload)
	}))
}

func benchProxy(b testing.TB, app string) *harness {
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", app)},
		model.L7Route{Name: "api", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/api"}}}, Destinations: to("app")})
	cfg.Policies = denyAdmin
	return start(b, cfg, func(o *Options) { o.AccessLog = nil })
}

func doGet(b testing.TB, c *http.Client, url string) {
	resp, err := c.Get(url)
	if err != nil {
		b.Fatal(err)
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	if resp.StatusCode != 200 {
		b.Fatalf("GET %s = %d", url, resp.StatusCode)
	}
}

// BenchmarkRequest compares one 1 KiB GET straight to the backend with the
// same request through the waypoint (route match, DENY policy, metrics).
func BenchmarkRequest(b *testing.B) {
	app := benchBackend(b)
	h := benchProxy(b, app)
	for _, bc := range []struct{ name, url string }{
		{"direct", "http://" + app + "/api/v1"},
		{"proxy", h.url + "/api/v1"},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := newClient(b)
			b.ReportAllocs()
			for b.Loop() {
				doGet(b, c, bc.url)
			}
		})
	}
}

// BenchmarkProxyOverhead reports the ratio of time per request through the
// proxy to time per request direct, measured side by side.
func BenchmarkProxyOverhead(b *testing.B) {
	app := benchBackend(b)
	h := benchProxy(b, app)
	c := newClient(b)
	var direct, proxied time.Duration
	b.ReportAllocs()
	for b.Loop() {
		t0 := time.Now()
		doGet(b, c, "http://"+app+"/api/v1")
		t1 := time.Now()
		doGet(b, c, h.url+"/api/v1")
		direct += t1.Sub(t0)
		proxied += time.Since(t1)
	}
	b.ReportMetric(float64(proxied)/float64(direct), "proxy/direct")
}

func TestHotPathAllocs(t *testing.T) {
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", "127.0.0.1:1")},
		model.L7Route{Name: "h", Matches: []model.RouteMatch{{Headers: []model.HeaderMatch{{Name: "end-user", Value: model.StringMatch{Exact: "jason"}}}}}, Destinations: to("app")},
		model.L7Route{Name: "api", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/api"}}}, Destinations: to("app")})
	c, err := compile(cfg, nil, &Options{})
	if err != nil {
		t.Fatal(err)
	}
	in := &routeInput{path: "/api/v1", method: "GET", authority: "reviews:9080", header: &reqFields{list: []field{{"End-User", "alice"}}}}
	m, err := newMetrics(prometheus.NewRegistry(), "", nil, "")
	if err != nil {
		t.Fatal(err)
	}
	rec := &record{start: time.Now(), code: 200, peer: Peer{Principal: "cluster.local/ns/a/sa/b", Labels: map[string]string{"app": "a"}}, dest: destInfo{service: "reviews.default.svc.cluster.local"}}
	m.observe(rec, nil, nil, nil) // the series is cached from here on
	traceHeader := &reqFields{m: http.Header{}}
	tests := []struct {
		name string
		max  float64
		fn   func()
	}{
		{"normalizePath clean", 0, func() { normalizePath("/api/v1/reviews/1") }},
		{"normalizePath dirty", 5, func() { normalizePath("//api/./v1/../v2%2Fx") }},
		{"findRoute", 0, func() { c.selectListener(0).findRoute(in) }},
		{"metrics.observe cached series", 0, func() { m.observe(rec, nil, nil, nil) }},
		// The traceparent string and its one-element value slice.
		{"startTrace", 2, func() { startTrace(traceHeader, 0) }},
		{"policy.Evaluate", 0, func() {
			policy.Evaluate(denyAdmin, &policy.Request{Path: "/api/v1", Method: "GET", DestinationPort: 9080})
		}},
	}
	for _, tt := range tests {
		if got := testing.AllocsPerRun(100, tt.fn); got > tt.max {
			t.Errorf("%s allocates %v times per call; want at most %v", tt.name, got, tt.max)
		}
	}
}

// BenchmarkRequestWire is BenchmarkRequest's proxied GET with a client and
// a backend that only write canned bytes and scan for the head's end, so
// that a CPU profile of it is mostly the waypoint's own work (net/http's
// client and server are most of BenchmarkRequest's). It reports the
// process's CPU time per request (cpu-us/op, user and system), which the
// client and backend add the same to in every case: "bare" has no metrics,
// no policy and no tracing, "full" the benchmarks' usual proxy (a DENY
// policy, Istio metrics, traces started but not sampled).
func BenchmarkRequestWire(b *testing.B) {
	answer := []byte("HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 1024\r\n\r\n" + payload)
	app := tcpBackend(b, func(c net.Conn) {
		br := bufio.NewReader(c)
		for {
			if err := skipHead(br); err != nil {
				return
			}
			if _, err := c.Write(answer); err != nil {
				return
			}
		}
	})
	bare := oneRoute([]model.L7Cluster{clusterOf("app", app)},
		model.L7Route{Name: "api", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/api"}}}, Destinations: to("app")})
	for _, bc := range []struct {
		name string
		h    func() *harness
	}{
		{"bare", func() *harness {
			return start(b, bare, func(o *Options) { o.AccessLog, o.Registerer = nil, nil })
		}},
		{"full", func() *harness { return benchProxy(b, app) }},
	} {
		b.Run(bc.name, func(b *testing.B) {
			h := bc.h()
			request := []byte("GET /api/v1 HTTP/1.1\r\nHost: reviews:9080\r\nUser-Agent: bench\r\nAccept: */*\r\n\r\n")
			b.ReportAllocs()
			// Eight clients at once keep the proxy busy, as under load:
			// one alone would mostly measure waking up idle threads.
			b.SetParallelism(4)
			cpu0 := processCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				c, err := net.Dial("tcp", h.addr)
				if err != nil {
					b.Error(err)
					return
				}
				defer c.Close()
				br := bufio.NewReader(c)
				for pb.Next() {
					if _, err := c.Write(request); err != nil {
						b.Error(err)
						return
					}
					resp, err := http.ReadResponse(br, nil)
					if err != nil {
						b.Error(err)
						return
					}
					io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
					if resp.StatusCode != 200 {
						b.Errorf("status %d", resp.StatusCode)
						return
					}
				}
			})
			b.ReportMetric(float64((processCPU(b)-cpu0).Microseconds())/float64(b.N), "cpu-us/op")
		})
	}
}

// processCPU is the process's user and system CPU time so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// skipHead reads through the next blank line.
func skipHead(br *bufio.Reader) error {
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if len(line) <= 2 {
			return nil
		}
	}
}
