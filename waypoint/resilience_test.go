package waypoint

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

func failing(code int) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(code) })
}

func TestRetriesHideFailures(t *testing.T) {
	// A cluster whose first endpoint always fails: half the picks would fail
	// without retries.
	good := &named{name: "good"}
	bad := backend(t, failing(503))
	var flip atomic.Int64
	// A single backend that fails every other request.
	flaky := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if flip.Add(1)%2 == 1 {
			w.WriteHeader(500)
			return
		}
		w.Write([]byte("flaky-ok"))
	}))
	clusters := []model.L7Cluster{
		{Name: "half", Endpoints: []model.L7Endpoint{{Address: bad}, {Address: backend(t, good)}}, Traffic: model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin}}},
		clusterOf("flaky", flaky),
	}
	tests := []struct {
		name      string
		path      string
		retries   *model.RetryPolicy
		want200   bool
		wantFlags string
	}{
		{name: "istio default retries 503 on another endpoint", path: "/half", want200: true},
		{name: "5xx retry on a flaky backend", path: "/flaky", retries: &model.RetryPolicy{Attempts: 3, RetryOn: []string{"5xx"}}, want200: true},
		{name: "no retries shows the failures", path: "/flaky", retries: &model.RetryPolicy{Attempts: 0}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cl := "half"
			if tt.path == "/flaky" {
				cl = "flaky"
			}
			h := start(t, oneRoute(clusters, model.L7Route{Name: "r", Destinations: to(cl), Retries: tt.retries}), nil)
			client := newClient(t)
			fails := 0
			for i := 0; i < 100; i++ {
				if code, _ := h.get(t, client, tt.path, nil); code != 200 {
					fails++
				}
			}
			if tt.want200 && fails > 0 {
				t.Errorf("%d of 100 requests failed; want retries to hide every failure", fails)
			}
			if !tt.want200 && (fails < 30 || fails > 70) {
				t.Errorf("%d of 100 requests failed without retries; want about 50", fails)
			}
		})
	}
}

func TestRetriesExhausted(t *testing.T) {
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("bad", backend(t, failing(503)))},
		model.L7Route{Name: "r", Destinations: to("bad"), Retries: &model.RetryPolicy{Attempts: 2, RetryOn: []string{"5xx"}}}), nil)
	if code, _ := h.get(t, newClient(t), "/", nil); code != 503 {
		t.Fatalf("GET = %d; want 503", code)
	}
	if n := h.log.countFlag(t, flagRetryExhausted); n != 1 {
		t.Errorf("access log lines with URX = %d; want 1", n)
	}
}

func TestConnectFailure(t *testing.T) {
	// A port with nothing listening: connect fails, is retried (Istio's
	// default retries connect-failure), then 503 UF.
	h2 := start(t, oneRoute([]model.L7Cluster{clusterOf("dead", "127.0.0.1:1")}, model.L7Route{Name: "r", Destinations: to("dead")}), nil)
	code, _ := h2.get(t, newClient(t), "/", nil)
	if code != 503 || h2.log.countFlag(t, flagConnFailure) != 1 {
		t.Errorf("GET to a closed port = %d, log %+v; want 503 with UF", code, h2.log.lines(t))
	}
}

func slow(d time.Duration) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-time.After(d):
			w.Write([]byte("slow"))
		case <-r.Context().Done():
		}
	})
}

func TestTimeouts(t *testing.T) {
	slowAddr := backend(t, slow(2*time.Second))
	tests := []struct {
		name  string
		route model.L7Route
	}{
		{name: "per-try timeout", route: model.L7Route{Name: "r", Destinations: to("slow"), Retries: &model.RetryPolicy{Attempts: 1, PerTryTimeout: 100 * time.Millisecond, RetryOn: []string{"5xx"}}}},
		{name: "request timeout", route: model.L7Route{Name: "r", Destinations: to("slow"), Timeout: 150 * time.Millisecond}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h := start(t, oneRoute([]model.L7Cluster{clusterOf("slow", slowAddr)}, tt.route), nil)
			began := time.Now()
			code, _ := h.get(t, newClient(t), "/", nil)
			took := time.Since(began)
			if code != http.StatusGatewayTimeout {
				t.Errorf("GET = %d; want 504", code)
			}
			if took > time.Second {
				t.Errorf("GET took %v; want the timeout to cut it well before the backend's 2s", took)
			}
			if h.log.countFlag(t, flagUpstreamTimeout) != 1 {
				t.Errorf("access log %+v; want flag UT", h.log.lines(t))
			}
		})
	}
}

func TestFaultInjection(t *testing.T) {
	ok := backend(t, &named{name: "ok"})
	t.Run("abort at its rate", func(t *testing.T) {
		h := start(t, oneRoute([]model.L7Cluster{clusterOf("ok", ok)}, model.L7Route{Name: "r", Destinations: to("ok"),
			Fault: &model.FaultInjection{Abort: &model.FaultAbort{HTTPStatus: 418, Percent: 30}}}), nil)
		client := newClient(t)
		const n = 1000
		aborted := 0
		for i := 0; i < n; i++ {
			if code, _ := h.get(t, client, "/", nil); code == 418 {
				aborted++
			}
		}
		checkShare(t, "aborted", aborted, n, 0.30)
		if got := h.log.countFlag(t, flagFaultInjected); got != aborted {
			t.Errorf("FI flags in access log = %d; want %d", got, aborted)
		}
	})
	t.Run("delay", func(t *testing.T) {
		h := start(t, oneRoute([]model.L7Cluster{clusterOf("ok", ok)}, model.L7Route{Name: "r", Destinations: to("ok"),
			Fault: &model.FaultInjection{Delay: &model.FaultDelay{Duration: 150 * time.Millisecond, Percent: 100}}}), nil)
		began := time.Now()
		code, _ := h.get(t, newClient(t), "/", nil)
		if took := time.Since(began); code != 200 || took < 150*time.Millisecond {
			t.Errorf("GET = %d after %v; want 200 after at least 150ms", code, took)
		}
		if h.log.countFlag(t, flagDelayInjected) != 1 {
			t.Errorf("access log %+v; want flag DI", h.log.lines(t))
		}
	})
}

func TestMirror(t *testing.T) {
	primary := &named{name: "primary"}
	var mirrored atomic.Int64
	var shadowHost, shadowUser atomic.Value
	shadow := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		shadowHost.Store(r.Host)
		shadowUser.Store(r.Header.Get("X-User"))
		mirrored.Add(1)
		time.Sleep(500 * time.Millisecond) // a slow mirror must not slow the client
		w.Write([]byte("shadow"))
	}))
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("primary", backend(t, primary)), clusterOf("shadow", shadow)},
		model.L7Route{Name: "r", Destinations: to("primary"), Mirrors: []model.Mirror{{Cluster: "shadow", Percent: 100}}}), nil)
	client := newClient(t)
	began := time.Now()
	for i := 0; i < 5; i++ {
		if code, body := h.get(t, client, "/", map[string]string{"Host": "reviews:9080", "X-User": "jason"}); code != 200 || body != "primary" {
			t.Fatalf("GET = %d %q; want 200 primary", code, body)
		}
	}
	if took := time.Since(began); took > 400*time.Millisecond {
		t.Errorf("5 mirrored requests took %v; want the slow mirror not to delay the client", took)
	}
	deadline := time.Now().Add(5 * time.Second)
	for mirrored.Load() < 5 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := mirrored.Load(); got != 5 {
		t.Errorf("shadow saw %d requests; want 5", got)
	}
	if got, _ := shadowHost.Load().(string); got != "reviews-shadow:9080" {
		t.Errorf("shadow Host = %q; want reviews-shadow:9080", got)
	}
	if got, _ := shadowUser.Load().(string); got != "jason" {
		t.Errorf("shadow X-User = %q; want the client's jason", got)
	}
}

// TestCircuitBreaker: a burst of HTTP/1.1 requests beyond the connection
// pool (maxConnections 1, one pending) or beyond http2MaxRequests (which
// Istio applies to HTTP/1.1 too) gets 503 overflows at once, counted, while
// the backend never sees more than the limit.
func TestCircuitBreaker(t *testing.T) {
	for _, tt := range []struct {
		name string
		pool model.ConnectionPool
	}{
		{"maxConnections", model.ConnectionPool{MaxConnections: 1, HTTP1MaxPendingRequests: 1}},
		{"http2MaxRequests over HTTP/1.1", model.ConnectionPool{HTTP2MaxRequests: 1}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var active, peak atomic.Int64
			b := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				n := active.Add(1)
				for {
					p := peak.Load()
					if n <= p || peak.CompareAndSwap(p, n) {
						break
					}
				}
				time.Sleep(300 * time.Millisecond)
				active.Add(-1)
				w.Write([]byte("ok"))
			}))
			cl := clusterOf("cb", b)
			cl.Traffic.Pool = tt.pool
			h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("cb"), Retries: &model.RetryPolicy{}}), nil)
			client := newClient(t)
			const burst = 10
			var wg sync.WaitGroup
			var ok, overflow atomic.Int64
			for i := 0; i < burst; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					code, _ := h.get(t, client, "/", nil)
					switch code {
					case 200:
						ok.Add(1)
					case 503:
						overflow.Add(1)
					}
				}()
			}
			wg.Wait()
			if peak.Load() > 1 {
				t.Errorf("backend saw %d concurrent requests; want at most 1", peak.Load())
			}
			if ok.Load() < 1 || overflow.Load() < 1 || ok.Load()+overflow.Load() != burst {
				t.Errorf("burst of %d: %d ok, %d overflow; want both, adding up", burst, ok.Load(), overflow.Load())
			}
			if got := h.log.countFlag(t, flagOverflow); got != int(overflow.Load()) {
				t.Errorf("UO flags = %d; want %d", got, overflow.Load())
			}
			if got := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"response_code": "503", "response_flags": "UO"}); got != float64(overflow.Load()) {
				t.Errorf("istio_requests_total{response_flags=UO} = %v; want %d", got, overflow.Load())
			}
		})
	}
}

func TestOutlierDetection(t *testing.T) {
	good := &named{name: "good"}
	var badHits atomic.Int64
	bad := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { badHits.Add(1); w.WriteHeader(500) }))
	cl := model.L7Cluster{Name: "od", Endpoints: []model.L7Endpoint{{Address: bad}, {Address: backend(t, good)}},
		Traffic: model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin}, Outlier: &model.OutlierDetection{
			Consecutive5xxErrors: 3, BaseEjectionTime: 400 * time.Millisecond, MaxEjectionPercent: 50,
		}}}
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("od"), Retries: &model.RetryPolicy{}}), nil)
	client := newClient(t)
	for i := 0; i < 6; i++ { // round robin: 3 reach the bad endpoint and eject it
		h.get(t, client, "/", nil)
	}
	if got := badHits.Load(); got != 3 {
		t.Fatalf("bad endpoint saw %d requests before ejection; want 3", got)
	}
	for i := 0; i < 20; i++ {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("request %d while ejected = %d; want 200", i, code)
		}
	}
	if got := badHits.Load(); got != 3 {
		t.Errorf("ejected endpoint saw %d requests; want none after ejection", got-3)
	}
	if got := testutil.MetricSum(t, h.reg, "meshlet_waypoint_outlier_ejections_total", map[string]string{"cluster": "od"}); got != 1 {
		t.Errorf("ejections metric = %v; want 1", got)
	}
	// The config dump (meshctl proxy-config endpoints) shows which.
	for _, e := range h.proxy.EndpointStates(time.Now()) {
		if ejected := !e.EjectedUntil.IsZero(); e.Cluster != "od" || ejected != (e.Address == bad) || (e.Address == bad && e.Ejections != 1) {
			t.Errorf("endpoint state %+v; want cluster od, only %s ejected (once)", e, bad)
		}
	}
	if n := len(h.proxy.EndpointStates(time.Now())); n != 2 {
		t.Errorf("%d endpoint states; want the cluster's 2", n)
	}
	time.Sleep(450 * time.Millisecond)
	for i := 0; i < 4; i++ {
		h.get(t, client, "/", nil)
	}
	if got := badHits.Load(); got == 3 {
		t.Errorf("endpoint not back after baseEjectionTime: no new requests")
	}
}

func TestRateLimit(t *testing.T) {
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("ok", backend(t, &named{name: "ok"}))},
		model.L7Route{Name: "r", Destinations: to("ok"), RateLimit: &model.RateLimit{MaxTokens: 3, FillInterval: time.Hour}},
	), nil)
	client := newClient(t)
	var codes []int
	for i := 0; i < 5; i++ {
		code, _ := h.get(t, client, "/", nil)
		codes = append(codes, code)
	}
	want := []int{200, 200, 200, 429, 429}
	for i := range want {
		if codes[i] != want[i] {
			t.Fatalf("codes = %v; want %v", codes, want)
		}
	}
	if got := h.log.countFlag(t, flagRateLimited); got != 2 {
		t.Errorf("RL flags = %d; want 2", got)
	}
	t.Run("per header key", func(t *testing.T) {
		h := start(t, oneRoute([]model.L7Cluster{clusterOf("ok", backend(t, &named{name: "ok"}))},
			model.L7Route{Name: "r", Destinations: to("ok"), RateLimit: &model.RateLimit{MaxTokens: 1, FillInterval: time.Hour, Key: "header:x-user"}}), nil)
		client := newClient(t)
		a1, _ := h.get(t, client, "/", map[string]string{"X-User": "a"})
		a2, _ := h.get(t, client, "/", map[string]string{"X-User": "a"})
		b1, _ := h.get(t, client, "/", map[string]string{"X-User": "b"})
		if a1 != 200 || a2 != 429 || b1 != 200 {
			t.Errorf("a, a, b = %d %d %d; want 200 429 200", a1, a2, b1)
		}
	})
}

// TestRateLimitSharedByRule: the routes meshd splits from one rule (one per
// match, all with the rule's origin and name) draw from one bucket, so
// spreading requests over the rule's paths does not multiply its limit; a
// route of another name, or of the same name from another object (two
// HTTPRoutes' rules named alike), keeps its own bucket.
func TestRateLimitSharedByRule(t *testing.T) {
	limit := func() *model.RateLimit {
		return &model.RateLimit{MaxTokens: 3, TokensPerFill: 3, FillInterval: time.Hour}
	}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("ok", backend(t, &named{name: "ok"}))},
		model.L7Route{Name: "rule", Origin: "HTTPRoute/app/one", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/a"}}}, Destinations: to("ok"), RateLimit: limit()},
		model.L7Route{Name: "other", Origin: "HTTPRoute/app/one", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/c"}}}, Destinations: to("ok"), RateLimit: limit()},
		model.L7Route{Name: "rule", Origin: "HTTPRoute/app/two", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/d"}}}, Destinations: to("ok"), RateLimit: limit()},
		model.L7Route{Name: "rule", Origin: "HTTPRoute/app/one", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/b"}}}, Destinations: to("ok"), RateLimit: limit()},
	), nil)
	client := newClient(t)
	var got []string
	for i := 0; i < 8; i++ {
		path := []string{"/a", "/b"}[i%2]
		code, _ := h.get(t, client, path, nil)
		got = append(got, fmt.Sprintf("%s %d", path, code))
	}
	want := []string{"/a 200", "/b 200", "/a 200", "/b 429", "/a 429", "/b 429", "/a 429", "/b 429"}
	if !slices.Equal(got, want) {
		t.Errorf("requests over both matches of one rule, limit 3: %q; want %q", got, want)
	}
	if code, _ := h.get(t, client, "/c", nil); code != 200 {
		t.Errorf("GET /c (route other, its own bucket) = %d; want 200", code)
	}
	if code, _ := h.get(t, client, "/d", nil); code != 200 {
		t.Errorf("GET /d (route rule of another HTTPRoute, its own bucket) = %d; want 200", code)
	}
}

func TestOutlierGatewayErrors(t *testing.T) {
	tests := []struct {
		name      string
		status    int
		wantEject bool
	}{
		{name: "502 counts as a gateway error", status: 502, wantEject: true},
		{name: "500 does not", status: 500, wantEject: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var badHits atomic.Int64
			bad := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { badHits.Add(1); w.WriteHeader(tt.status) }))
			cl := model.L7Cluster{Name: "gw", Endpoints: []model.L7Endpoint{{Address: bad}, {Address: backend(t, &named{name: "good"})}},
				Traffic: model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin}, Outlier: &model.OutlierDetection{
					ConsecutiveGatewayErrors: 2, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50,
				}}}
			h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("gw"), Retries: &model.RetryPolicy{}}), nil)
			client := newClient(t)
			for i := 0; i < 12; i++ {
				h.get(t, client, "/", nil)
			}
			ejected := badHits.Load() == 2
			if ejected != tt.wantEject {
				t.Errorf("bad endpoint saw %d of 12 requests; want ejected=%v", badHits.Load(), tt.wantEject)
			}
		})
	}
}

// noDeadlineConn is a connection that ignores deadlines, as an HBONE
// stream does.
type noDeadlineConn struct{ net.Conn }

func (noDeadlineConn) SetDeadline(time.Time) error      { return nil }
func (noDeadlineConn) SetReadDeadline(time.Time) error  { return nil }
func (noDeadlineConn) SetWriteDeadline(time.Time) error { return nil }

// TestTimeoutWithoutDeadlines: the route timeout cuts an upstream reached
// over a connection without deadlines (the waypoint's HBONE streams), with
// the circuit breaker's single connection, as the lab's resilience test
// does; the connection is not reused after it.
func TestTimeoutWithoutDeadlines(t *testing.T) {
	slowAddr := backend(t, slow(2*time.Second))
	cl := clusterOf("slow", slowAddr)
	cl.Traffic.Pool = model.ConnectionPool{MaxConnections: 1, HTTP1MaxPendingRequests: 1}
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("slow"), Timeout: 150 * time.Millisecond}), func(o *Options) {
		o.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return noDeadlineConn{c}, nil
		}
	})
	for i := range 3 {
		began := time.Now()
		code, _ := h.get(t, newClient(t), "/", nil)
		if took := time.Since(began); code != http.StatusGatewayTimeout || took > time.Second {
			t.Errorf("request %d: %d after %v; want 504 well before the backend's 2s", i, code, took)
		}
	}
}

// TestEarlyAnswerWithoutDeadlines: an upstream that answers before reading
// the request body (an early 413, a redirect) and then stops reading, over a
// connection without deadlines (the waypoint's HBONE streams): the client
// gets the answer at once, not when the upstream finally closes, and the
// connection is not reused.
func TestEarlyAnswerWithoutDeadlines(t *testing.T) {
	const hold = 5 * time.Second
	var conns atomic.Int32
	addr := tcpBackend(t, func(c net.Conn) {
		conns.Add(1)
		br := bufio.NewReader(c)
		for {
			line, err := br.ReadString('\n')
			if err != nil || line == "\r\n" {
				break
			}
		}
		io.WriteString(c, "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 8\r\n\r\ntoo big\n")
		time.Sleep(hold) // reads nothing more: the body's write blocks
	})
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("up", addr)}, model.L7Route{Name: "r", Destinations: to("up")}), func(o *Options) {
		o.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
			c, err := (&net.Dialer{}).DialContext(ctx, network, addr)
			if err != nil {
				return nil, err
			}
			return noDeadlineConn{c}, nil
		}
	})
	client := newClient(t)
	for i := range 2 {
		body := io.LimitReader(zeros{}, 64<<20) // far more than socket buffers hold
		req, err := http.NewRequest(http.MethodPost, h.url+"/upload", body)
		if err != nil {
			t.Fatal(err)
		}
		req.Host = "reviews.default.svc.cluster.local"
		began := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			t.Fatalf("upload %d: %v", i, err)
		}
		b, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if took := time.Since(began); resp.StatusCode != http.StatusRequestEntityTooLarge || took > hold/2 {
			t.Errorf("upload %d: %d %q after %v; want the upstream's 413 at once, not after it stops holding the connection (%v)", i, resp.StatusCode, b, took, hold)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("upstream connections = %d; want 2 (one whose request body was cut short is never reused)", n)
	}
}

// zeros reads as an endless run of zero bytes.
type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	clear(p)
	return len(p), nil
}

// TestOutlierEjectionDecays: each ejection of the same endpoint lasts
// longer (baseEjectionTime times the count), and every interval it spends
// back in load balancing takes one off that count, as Envoy does.
func TestOutlierEjectionDecays(t *testing.T) {
	od := &model.OutlierDetection{Consecutive5xxErrors: 1, Interval: 10 * time.Second, BaseEjectionTime: 30 * time.Second, MaxEjectionPercent: 100}
	u := newUpstream("od", "", []model.L7Endpoint{{Address: "198.19.0.1:80"}, {Address: "198.19.0.2:80"}}, model.TrafficPolicy{Outlier: od}, &Options{}, proxyPlace{})
	e := u.endpoints[0]
	t0 := time.Now()
	for _, step := range []struct {
		at, want time.Duration // when it is ejected again (from t0), and for how long
	}{
		{0, 30 * time.Second},
		{31 * time.Second, 60 * time.Second},  // back for 1 s: the count grows to 2
		{116 * time.Second, 30 * time.Second}, // back for 25 s: two intervals take it to 0, then 1
		{151 * time.Second, 60 * time.Second}, // back for 5 s: 2 again
	} {
		now := t0.Add(step.at)
		u.eject(e, od, now)
		if got := e.ejectedUntil.Sub(now); got != step.want {
			t.Errorf("ejected at +%v for %v; want %v", step.at, got, step.want)
		}
	}
}

// TestOutlierErrorCodesAndPanic: with outlierDetectionHttpErrorCodes only
// those statuses count toward ejection; with minHealthPercent, once too
// few endpoints are left in, ejections are ignored and every endpoint
// takes traffic (Envoy's panic mode).
func TestOutlierErrorCodesAndPanic(t *testing.T) {
	eps := []model.L7Endpoint{{Address: "198.19.0.1:80"}, {Address: "198.19.0.2:80"}}
	od := &model.OutlierDetection{Consecutive5xxErrors: 2, MaxEjectionPercent: 100, ErrorCodes: []int{429}}
	u := newUpstream("od", "", eps, model.TrafficPolicy{Outlier: od}, &Options{}, proxyPlace{})
	a, b := u.endpoints[0], u.endpoints[1]
	now := time.Now()
	for range 3 {
		u.report(a, 500) // not a listed code
	}
	if a.ejected(now) {
		t.Error("ejected after 500s; want only 429 to count")
	}
	u.report(b, 429)
	u.report(b, 429)
	if !b.ejected(time.Now()) {
		t.Error("not ejected after two 429s")
	}

	picked := func(u *upstream) map[string]bool {
		got := map[string]bool{}
		for range 50 {
			e, err := u.pick(nil, "")
			if err != nil {
				t.Fatal(err)
			}
			got[e.addr] = true
		}
		return got
	}
	for _, tt := range []struct {
		minHealth int
		want      int
	}{{0, 1}, {50, 1}, {60, 2}} {
		od := &model.OutlierDetection{Consecutive5xxErrors: 1, MaxEjectionPercent: 100, MinHealthPercent: tt.minHealth}
		u := newUpstream("od", "", eps, model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin}, Outlier: od}, &Options{}, proxyPlace{})
		u.report(u.endpoints[0], 503)
		if got := picked(u); len(got) != tt.want {
			t.Errorf("minHealthPercent %d, one of two ejected: picked %v; want %d endpoint(s)", tt.minHealth, got, tt.want)
		}
	}
}

// TestRetryBackoffBounds: the wait before each retry stays in its bounds:
// Envoy's full jitter without a Backoff, [Backoff, min(Backoff<<n,
// 10*Backoff)] with one, and it spreads over the range rather than sitting
// at an end.
func TestRetryBackoffBounds(t *testing.T) {
	const ms = time.Millisecond
	tests := []struct {
		base   time.Duration
		n      int
		lo, hi time.Duration
	}{
		{0, 0, 0, 25 * ms},
		{0, 1, 0, 50 * ms},
		{0, 3, 0, 200 * ms},
		{0, 4, 0, 250 * ms},
		{0, 60, 0, 250 * ms}, // many attempts: no overflow
		{100 * ms, 0, 100 * ms, 100 * ms},
		{100 * ms, 1, 100 * ms, 200 * ms},
		{100 * ms, 3, 100 * ms, 800 * ms},
		{100 * ms, 4, 100 * ms, time.Second}, // Envoy's 10x cap
		{100 * ms, 60, 100 * ms, time.Second},
		{math.MaxInt64 / 4, 2, math.MaxInt64 / 4, math.MaxInt64}, // no overflow
	}
	for _, tt := range tests {
		var low, high bool // a sample in the lower and in the upper quarter
		for i := 0; i < 2000; i++ {
			d := retryBackoff(tt.base, tt.n)
			if d < tt.lo || d > tt.hi {
				t.Fatalf("retryBackoff(%v, %d) = %v; want within [%v, %v]", tt.base, tt.n, d, tt.lo, tt.hi)
			}
			low = low || d <= tt.lo+(tt.hi-tt.lo)/4
			high = high || d >= tt.hi-(tt.hi-tt.lo)/4
		}
		if !low || !high {
			t.Errorf("retryBackoff(%v, %d) in 2000 samples: lower quarter %v, upper quarter %v; want both of [%v, %v]", tt.base, tt.n, low, high, tt.lo, tt.hi)
		}
	}
}

// tries is a backend that records when each request arrived and answers
// the first with first (a status, after a pause of firstDelay) and the
// rest with 200 at once.
type tries struct {
	first      int
	firstDelay time.Duration
	mu         sync.Mutex
	at         []time.Time
}

func (b *tries) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.at = append(b.at, time.Now())
	n := len(b.at)
	b.mu.Unlock()
	io.Copy(io.Discard, r.Body)
	if n > 1 {
		w.Write([]byte("ok"))
		return
	}
	select {
	case <-time.After(b.firstDelay):
	case <-r.Context().Done():
		return
	}
	w.WriteHeader(b.first)
}

func (b *tries) arrivals() []time.Time {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]time.Time(nil), b.at...)
}

// TestRetryBackoff: a retry waits at least the route's Backoff after the
// try it repeats; without one it waits Envoy's default (at most 25ms
// before the first retry), and the retry still happens.
func TestRetryBackoff(t *testing.T) {
	tests := []struct {
		name    string
		retries *model.RetryPolicy
		minGap  time.Duration // between the two tries' arrivals
	}{
		{name: "backoff 200ms", retries: &model.RetryPolicy{Attempts: 2, RetryOn: []string{"5xx"}, Backoff: 200 * time.Millisecond}, minGap: 200 * time.Millisecond},
		{name: "default backoff, 5xx", retries: &model.RetryPolicy{Attempts: 2, RetryOn: []string{"5xx"}}},
		{name: "default policy", retries: nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &tries{first: http.StatusServiceUnavailable}
			h := start(t, oneRoute([]model.L7Cluster{clusterOf("b", backend(t, b))}, model.L7Route{Name: "r", Destinations: to("b"), Retries: tt.retries}), nil)
			if code, body := h.get(t, newClient(t), "/", nil); code != 200 || body != "ok" {
				t.Fatalf("GET = %d %q; want 200 ok from the retry", code, body)
			}
			at := b.arrivals()
			if len(at) != 2 {
				t.Fatalf("backend saw %d tries; want 2", len(at))
			}
			gap := at[1].Sub(at[0])
			if gap < tt.minGap {
				t.Errorf("retry reached the backend %v after the first try; want at least %v", gap, tt.minGap)
			}
			if gap > 2*time.Second {
				t.Errorf("retry reached the backend %v after the first try; want well under 2s", gap)
			}
		})
	}
}

// TestPerTryTimeoutRetried: a try that outlives the per-try timeout is cut
// and, under a policy that retries it (reset, as meshd gives an HTTPRoute
// retry stanza), retried; the client gets the retry's answer. Istio's
// default retryOn does not retry a timed-out try, as in Envoy.
func TestPerTryTimeoutRetried(t *testing.T) {
	withPerTry := func(rp model.RetryPolicy) *model.RetryPolicy {
		rp.PerTryTimeout = 100 * time.Millisecond
		return &rp
	}
	tests := []struct {
		name      string
		retries   *model.RetryPolicy
		wantCode  int
		wantTries int
	}{
		{name: "retry on reset", retries: withPerTry(model.RetryPolicy{Attempts: 1, RetryOn: []string{"connect-failure", "refused-stream", "reset"}}), wantCode: 200, wantTries: 2},
		{name: "retry on 5xx", retries: withPerTry(model.RetryPolicy{Attempts: 1, RetryOn: []string{"5xx"}}), wantCode: 200, wantTries: 2},
		{name: "default policy", retries: withPerTry(model.DefaultRetry), wantCode: http.StatusGatewayTimeout, wantTries: 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			b := &tries{first: 200, firstDelay: 300 * time.Millisecond}
			h := start(t, oneRoute([]model.L7Cluster{clusterOf("b", backend(t, b))}, model.L7Route{Name: "r", Destinations: to("b"), Retries: tt.retries}), nil)
			if code, _ := h.get(t, newClient(t), "/", nil); code != tt.wantCode {
				t.Errorf("GET = %d; want %d", code, tt.wantCode)
			}
			if n := len(b.arrivals()); n != tt.wantTries {
				t.Errorf("backend saw %d tries; want %d", n, tt.wantTries)
			}
		})
	}
}
