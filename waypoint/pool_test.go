package waypoint

import (
	"bufio"
	"context"
	"crypto/tls"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/accesslog"
	"github.com/meshlet/meshlet/pkg/model"
)

// TestUpstreamHTTPVersion: the HTTP version a request goes upstream in
// follows the cluster's protocol and pool settings (Istio's port protocol,
// h2UpgradePolicy and useClientProtocol), whichever version the client
// spoke; a WebSocket upgrade goes over HTTP/1.1 even to an upgraded
// cluster.
func TestUpstreamHTTPVersion(t *testing.T) {
	var protos http.Protocols
	protos.SetHTTP1(true)
	protos.SetUnencryptedHTTP2(true)
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		io.WriteString(w, r.Proto)
	}))
	srv.Config.Protocols = &protos
	srv.Start()
	t.Cleanup(srv.Close)
	addr := srv.Listener.Addr().String()

	cluster := func(name string, proto model.UpstreamProtocol, pool model.ConnectionPool) model.L7Cluster {
		c := clusterOf(name, addr)
		c.Protocol, c.Traffic.Pool = proto, pool
		return c
	}
	clusters := []model.L7Cluster{
		cluster("auto", model.UpstreamAuto, model.ConnectionPool{}),
		cluster("http2", model.UpstreamHTTP2, model.ConnectionPool{}),
		cluster("client", model.UpstreamAuto, model.ConnectionPool{UseClientProtocol: true}),
		cluster("upgrade", model.UpstreamAuto, model.ConnectionPool{H2Upgrade: true}),
		cluster("keep", model.UpstreamAuto, model.ConnectionPool{H2Upgrade: true, UseClientProtocol: true}),
	}
	var routes []model.L7Route
	for _, c := range clusters {
		routes = append(routes, model.L7Route{Name: c.Name, Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/" + c.Name}}}, Destinations: to(c.Name)})
	}
	h := start(t, oneRoute(clusters, routes...), nil)

	var h2c http.Protocols
	h2c.SetUnencryptedHTTP2(true)
	clients := map[string]*http.Client{
		"HTTP/1.1": newClient(t),
		"HTTP/2.0": {Transport: &http.Transport{Protocols: &h2c}, Timeout: 5 * time.Second},
	}
	for _, tt := range []struct{ cluster, fromH1, fromH2 string }{
		{"auto", "HTTP/1.1", "HTTP/1.1"},
		{"http2", "HTTP/2.0", "HTTP/2.0"},
		{"client", "HTTP/1.1", "HTTP/2.0"},
		{"upgrade", "HTTP/2.0", "HTTP/2.0"},
		{"keep", "HTTP/1.1", "HTTP/2.0"},
	} {
		for client, want := range map[string]string{"HTTP/1.1": tt.fromH1, "HTTP/2.0": tt.fromH2} {
			if code, body := h.get(t, clients[client], "/"+tt.cluster, nil); code != 200 || body != want {
				t.Errorf("cluster %s, client over %s: %d, upstream saw %q; want %s", tt.cluster, client, code, body, want)
			}
		}
	}
	// A WebSocket upgrade to the upgraded cluster: this backend does not
	// switch protocols, but it must see the request in HTTP/1.1.
	code, body := h.get(t, clients["HTTP/1.1"], "/upgrade", map[string]string{"Connection": "Upgrade", "Upgrade": "websocket",
		"Sec-WebSocket-Version": "13", "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ=="})
	if code != 200 || body != "HTTP/1.1" {
		t.Errorf("WebSocket upgrade to an upgraded cluster: %d, upstream saw %q; want HTTP/1.1", code, body)
	}
}

// TestMaxRetries: a cluster's maxRetries, or its retry budget's minimum,
// bounds the retries outstanding at once. With one slot and a backend that
// fails every first try and holds the retry, only one of several
// concurrent requests is retried; the others get their failure at once,
// flagged UO, and counted as overflow.
func TestMaxRetries(t *testing.T) {
	t.Run("maxRetries", func(t *testing.T) {
		testRetrySlots(t, model.TrafficPolicy{Pool: model.ConnectionPool{MaxRetries: 1}})
	})
	t.Run("retryBudget", func(t *testing.T) {
		testRetrySlots(t, model.TrafficPolicy{Pool: model.ConnectionPool{MaxRetries: 5}, RetryBudget: &model.RetryBudget{Percent: 0, MinConcurrency: 1}})
	})
}

func testRetrySlots(t *testing.T, tp model.TrafficPolicy) {
	var tries atomic.Int64
	release := make(chan struct{})
	var seen sync.Map
	addr := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		tries.Add(1)
		id := r.Header.Get("X-Id")
		if _, again := seen.LoadOrStore(id, true); !again {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		select { // the retry stays outstanding, for a while at most
		case <-release:
		case <-time.After(3 * time.Second):
		}
		io.WriteString(w, "retried")
	}))
	c := clusterOf("b", addr)
	c.Traffic = tp
	h := start(t, oneRoute([]model.L7Cluster{c}, model.L7Route{Name: "r", Destinations: to("b"),
		Retries: &model.RetryPolicy{Attempts: 2, RetryOn: []string{"5xx"}, Backoff: time.Millisecond}}), nil)

	type result struct {
		code int
		body string
	}
	first := make(chan result, 1)
	go func() {
		code, body := h.get(t, newClient(t), "/", map[string]string{"X-Id": "first"})
		first <- result{code, body}
	}()
	// Wait for the first request's retry to be outstanding.
	deadline := time.Now().Add(5 * time.Second)
	for tries.Load() < 2 && time.Now().Before(deadline) {
		time.Sleep(5 * time.Millisecond)
	}
	for i := range 3 {
		code, _ := h.get(t, newClient(t), "/", map[string]string{"X-Id": fmt.Sprint("other-", i)})
		if code != http.StatusServiceUnavailable {
			t.Errorf("request %d while the only retry slot is taken: %d; want its own 503, not retried", i, code)
		}
	}
	close(release)
	if r := <-first; r.code != 200 || r.body != "retried" {
		t.Errorf("the request holding the retry slot: %d %q; want 200 retried", r.code, r.body)
	}
	if n := tries.Load(); n != 5 {
		t.Errorf("backend saw %d tries; want 5 (2 for the first request, 1 for each other)", n)
	}
	if n := h.log.countFlag(t, flagOverflow); n != 3 {
		t.Errorf("%d access log lines flagged UO; want 3", n)
	}
	// With the slot back, a failing request is retried again.
	if code, body := h.get(t, newClient(t), "/", map[string]string{"X-Id": "later"}); code != 200 || body != "retried" {
		t.Errorf("a request after the retry ended: %d %q; want 200 retried (the slot was given back)", code, body)
	}
}

// TestUpstreamMaxConnectionDuration: an upstream HTTP/1.1 connection takes
// no new request once maxConnectionDuration old: the next request goes on a
// new connection.
func TestUpstreamMaxConnectionDuration(t *testing.T) {
	var conns atomic.Int64
	srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "ok") }))
	srv.Config.ConnState = func(_ net.Conn, s http.ConnState) {
		if s == http.StateNew {
			conns.Add(1)
		}
	}
	srv.Start()
	t.Cleanup(srv.Close)
	c := clusterOf("b", srv.Listener.Addr().String())
	c.Traffic.Pool.MaxConnectionDuration = time.Second
	h := start(t, oneRoute([]model.L7Cluster{c}, model.L7Route{Name: "r", Destinations: to("b")}), nil)
	client := newClient(t)
	for range 5 {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if n := conns.Load(); n != 1 {
		t.Errorf("5 quick requests used %d upstream connections; want 1", n)
	}
	time.Sleep(1100 * time.Millisecond)
	for range 3 {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("request: %d", code)
		}
	}
	if n := conns.Load(); n != 2 {
		t.Errorf("requests after the connection's maximum duration used %d connections in all; want 2 (one new)", n)
	}
}

// TestRelayTimeouts: a relayed TCP connection is closed once idle for the
// pool's tcp idle timeout (activity either way keeps it open), and once
// its maximum duration is reached however busy, each logged with its flag
// (SI, DT); NoTimeout keeps an idle connection open.
func TestRelayTimeouts(t *testing.T) {
	echo := tcpBackend(t, func(c net.Conn) { io.Copy(c, c) })
	relay := func(pool model.ConnectionPool) (*syncBuffer, net.Conn) {
		c := clusterOf("echo", echo)
		c.Traffic.Pool = pool
		cfg := &Config{L7: &model.L7Config{
			Listeners: []model.L7Listener{{Name: "tcp", Port: 9000, TCP: &model.TCPRoute{Name: "echo", Destinations: to("echo")}}},
			Clusters:  []model.L7Cluster{c},
		}}
		log := &syncBuffer{}
		return log, dialServeTCP(t, cfg, log)
	}
	echoed := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(2 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		_, err := io.ReadFull(c, got)
		return err
	}
	closedWithin := func(c net.Conn, d time.Duration) bool {
		c.SetReadDeadline(time.Now().Add(d))
		_, err := c.Read(make([]byte, 1))
		return err == io.EOF || (err != nil && !isTimeout(err))
	}

	h, c := relay(model.ConnectionPool{TCPIdleTimeout: 600 * time.Millisecond})
	for range 10 { // busy for longer than the idle timeout
		if err := echoed(c, "ping"); err != nil {
			t.Fatalf("relay with activity every 100ms: %v", err)
		}
		time.Sleep(100 * time.Millisecond)
	}
	if !closedWithin(c, 2*time.Second) {
		t.Error("an idle relay was not closed after the idle timeout")
	}
	waitForLog(t, h, flagStreamIdleTimeout)

	h, c = relay(model.ConnectionPool{MaxConnectionDuration: 500 * time.Millisecond, TCPIdleTimeout: model.NoTimeout})
	start := time.Now()
	for time.Since(start) < 5*time.Second {
		if echoed(c, "ping") != nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if took := time.Since(start); took < 450*time.Millisecond || took > 4*time.Second {
		t.Errorf("a busy relay with a 500ms maximum duration ended after %v", took)
	}
	waitForLog(t, h, flagDurationTimeout)

	_, c = relay(model.ConnectionPool{TCPIdleTimeout: model.NoTimeout})
	time.Sleep(300 * time.Millisecond)
	if err := echoed(c, "still there"); err != nil {
		t.Errorf("a relay without idle timeout, after a quiet spell: %v", err)
	}
}

func isTimeout(err error) bool {
	ne, ok := err.(net.Error)
	return ok && ne.Timeout()
}

func waitForLog(t *testing.T, log *syncBuffer, flag string) {
	t.Helper()
	deadline := time.Now().Add(3 * time.Second)
	for log.countFlag(t, flag) == 0 {
		if time.Now().After(deadline) {
			t.Errorf("no access log line flagged %s; log: %+v", flag, log.lines(t))
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// TestWarmup: with warmup set, an endpoint that joins the cluster gets a
// share that grows from the minimum percent of its weight over the warmup
// duration (Envoy's slow start), for round robin and least request alike;
// the endpoints of the cluster's first config, and every endpoint without
// warmup, share evenly; a push that changes something else keeps a warming
// endpoint's start.
func TestWarmup(t *testing.T) {
	a, b := &named{name: "a"}, &named{name: "b"}
	addrA, addrB := backend(t, a), backend(t, b)
	config := func(lb model.LBPolicy, addrs ...string) *Config {
		c := clusterOf("svc", addrs...)
		c.Traffic.LB = lb
		return oneRoute([]model.L7Cluster{c}, model.L7Route{Name: "r", Destinations: to("svc")})
	}
	warm := &model.Warmup{Duration: 10 * time.Minute, MinPercent: 10, Aggression: 1}
	share := func(h *harness, n int) int {
		b0 := b.count()
		client := newClient(t)
		for range n {
			if code, _ := h.get(t, client, "/", nil); code != 200 {
				t.Fatalf("request: %d", code)
			}
		}
		return b.count() - b0
	}
	const n = 600
	for _, simple := range []model.LoadBalancing{model.LBRoundRobin, model.LBDefault} {
		lb := model.LBPolicy{Simple: simple, Warmup: warm}
		// b is in the first config: not warming.
		h := start(t, config(lb, addrA, addrB), nil)
		checkShare(t, fmt.Sprintf("%q: b, in the first config", simple), share(h, n), n, 0.5)
		// b joins later: about 10/110 of the requests while it warms.
		h = start(t, config(lb, addrA), nil)
		if err := h.proxy.Update(config(lb, addrA, addrB)); err != nil {
			t.Fatal(err)
		}
		checkShare(t, fmt.Sprintf("%q: b, just joined", simple), share(h, n), n, 10.0/110)
		// Another push (a retry policy): b still warming.
		next := config(lb, addrA, addrB)
		next.L7.Listeners[0].VirtualHosts[0].Routes[0].Retries = &model.RetryPolicy{Attempts: 1}
		if err := h.proxy.Update(next); err != nil {
			t.Fatal(err)
		}
		checkShare(t, fmt.Sprintf("%q: b, after an unrelated push", simple), share(h, n), n, 10.0/110)
	}
	// Without warmup a joining endpoint gets its full share at once.
	h := start(t, config(model.LBPolicy{Simple: model.LBRandom}, addrA), nil)
	if err := h.proxy.Update(config(model.LBPolicy{Simple: model.LBRandom}, addrA, addrB)); err != nil {
		t.Fatal(err)
	}
	checkShare(t, "b, joined, no warmup", share(h, n), n, 0.5)
}

// TestRetryBudgetShare: a retry budget allows its percent of the requests
// in flight to the cluster as retries at once, never fewer than its
// minimum; a slot given back is free again.
func TestRetryBudgetShare(t *testing.T) {
	u := newUpstream("c", "", []model.L7Endpoint{{Address: "198.18.0.1:80"}, {Address: "198.18.0.2:80"}},
		model.TrafficPolicy{RetryBudget: &model.RetryBudget{Percent: 20, MinConcurrency: 3}}, &Options{}, proxyPlace{})
	take := func() int {
		held := make([]bool, 0, 20)
		for range 20 {
			var h bool
			if !u.acquireRetry(&h) {
				break
			}
			held = append(held, h)
		}
		for i := range held {
			u.releaseRetry(&held[i])
		}
		return len(held)
	}
	if n := take(); n != 3 {
		t.Errorf("retries allowed with nothing in flight: %d; want the minimum, 3", n)
	}
	u.endpoints[0].active.Store(30)
	u.endpoints[1].active.Store(20)
	if n := take(); n != 10 {
		t.Errorf("retries allowed with 50 requests in flight: %d; want 20%%, 10", n)
	}
	if n := take(); n != 10 {
		t.Errorf("retries allowed once the slots were given back: %d; want 10 again", n)
	}
}

// TestTCPRouteMatches: a service's tcp routes with conditions are tried in
// order on each connection relayed whole: the client's labels, its
// namespace together with the address it dialled; a connection none of
// them takes goes to the unconditional route.
func TestTCPRouteMatches(t *testing.T) {
	greeter := func(name string) string {
		return tcpBackend(t, func(c net.Conn) { io.WriteString(c, name+"\n") })
	}
	cfg := &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "p", VirtualHosts: []model.VirtualHost{{
			Name: "db.shop.svc.cluster.local", Domains: []string{"db"}, Opaque: true,
			Routes: []model.L7Route{{Name: "default", Destinations: to("all")}},
			TCPMatched: []model.TCPRoute{
				{Name: "reports", Destinations: to("reports"), Matches: []model.TCPMatch{{SourceLabels: map[string]string{"app": "reports"}}}},
				{Name: "analytics", Destinations: to("analytics"), Matches: []model.TCPMatch{{SourceNamespace: "analytics", DestinationSubnets: []string{"198.18.9.0/24"}}}},
			},
			TCP: &model.TCPRoute{Name: "default", Destinations: to("all")},
		}}}},
		Clusters: []model.L7Cluster{clusterOf("all", greeter("all")), clusterOf("reports", greeter("reports")), clusterOf("analytics", greeter("analytics"))},
	}}
	if err := cfg.L7.Validate(); err != nil {
		t.Fatal(err)
	}
	var client atomic.Pointer[Peer]
	h := start(t, cfg, func(o *Options) {
		o.ConnPeer = func(net.Conn) Peer { return *client.Load() }
	})
	for _, tt := range []struct {
		peer Peer
		want string
	}{
		{Peer{Namespace: "shop", Labels: map[string]string{"app": "reports", "version": "v2"}}, "reports"},
		{Peer{Namespace: "analytics", DestinationIP: netip.MustParseAddr("198.18.9.5")}, "analytics"},
		{Peer{Namespace: "analytics", DestinationIP: netip.MustParseAddr("198.18.10.5")}, "all"},
		{Peer{Namespace: "shop", Labels: map[string]string{"app": "web"}, DestinationIP: netip.MustParseAddr("198.18.9.5")}, "all"},
	} {
		p := tt.peer
		p.DestinationService, p.DestinationPort = "db.shop.svc.cluster.local", 9000
		client.Store(&p)
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		c.Close()
		if got := strings.TrimSpace(line); err != nil || got != tt.want {
			t.Errorf("client %+v: relayed to %q (%v); want %s", tt.peer, got, err, tt.want)
		}
	}
}

// TestServeTCPRouteMatches: an ingress TCP listener's routes with
// conditions are tried before its unconditional one: a connection to an
// address in the route's subnet takes it, any other the default; with no
// default, a connection no route takes is closed.
func TestServeTCPRouteMatches(t *testing.T) {
	greeter := func(name string) string {
		return tcpBackend(t, func(c net.Conn) { io.WriteString(c, name+"\n") })
	}
	clusters := []model.L7Cluster{clusterOf("local", greeter("local")), clusterOf("other", greeter("other"))}
	relayedTo := func(l model.L7Listener) string {
		c := dialServeTCP(t, &Config{L7: &model.L7Config{Listeners: []model.L7Listener{l}, Clusters: clusters}}, nil)
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, _ := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line)
	}
	route := func(name, subnet string) model.TCPRoute {
		return model.TCPRoute{Name: name, Destinations: to(name), Matches: []model.TCPMatch{{DestinationSubnets: []string{subnet}}}}
	}
	def := &model.TCPRoute{Name: "other", Destinations: to("other")}
	if got := relayedTo(model.L7Listener{Name: "tcp", Port: 9000, TCPMatched: []model.TCPRoute{route("local", "127.0.0.0/8")}, TCP: def}); got != "local" {
		t.Errorf("a connection to 127.0.0.1 with a route for 127.0.0.0/8: relayed to %q; want local", got)
	}
	if got := relayedTo(model.L7Listener{Name: "tcp", Port: 9000, TCPMatched: []model.TCPRoute{route("local", "198.18.0.0/15")}, TCP: def}); got != "other" {
		t.Errorf("a connection to 127.0.0.1 with a route for 198.18.0.0/15 only: relayed to %q; want the default, other", got)
	}
	if got := relayedTo(model.L7Listener{Name: "tcp", Port: 9000, TCPMatched: []model.TCPRoute{route("local", "198.18.0.0/15")}}); got != "" {
		t.Errorf("a connection no route takes, without a default: relayed to %q; want it closed", got)
	}
}

// TestLogfBounded: what clients cause is logged at most logBurst times a
// second per message; the next one logged says how many were not, and
// other messages have their own budget.
func TestLogfBounded(t *testing.T) {
	var lines []string
	p, err := New(Options{Config: oneRoute(nil, model.L7Route{Name: "r", DirectResponse: &model.DirectResponse{Status: 200}}), Logf: func(f string, a ...any) { lines = append(lines, fmt.Sprintf(f, a...)) }})
	if err != nil {
		t.Fatal(err)
	}
	for i := range 100 {
		p.logf("waypoint: connection %d denied", i)
	}
	p.logf("waypoint: another kind")
	if len(lines) != logBurst+1 {
		t.Fatalf("%d lines logged for 100 denials and one other message; want %d", len(lines), logBurst+1)
	}
	// A second later the budget is back, and the first line counts the rest.
	now := time.Now().Add(time.Second)
	ok, dropped := p.logs.allow("waypoint: connection %d denied", now)
	if !ok || dropped != 100-logBurst {
		t.Errorf("a second later: allowed %v, %d reported dropped; want true, %d", ok, dropped, 100-logBurst)
	}
}

// TestOutlierSplitLocalOrigin: with splitExternalLocalOriginErrors the
// proxy's own failures (connect failures, resets, try timeouts) eject
// after consecutiveLocalOriginFailures in a row, an answer resets that
// count, and they no longer add to the 5xx count; without it they count as
// 5xx.
func TestOutlierSplitLocalOrigin(t *testing.T) {
	for _, split := range []bool{false, true} {
		od := &model.OutlierDetection{Consecutive5xxErrors: 2, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100,
			SplitLocalOrigin: split, ConsecutiveLocalOriginFailures: 2}
		eps := []model.L7Endpoint{{Address: "198.18.0.1:80"}, {Address: "198.18.0.2:80"}, {Address: "198.18.0.3:80"}, {Address: "198.18.0.4:80"}}
		u := newUpstream("c", "", eps, model.TrafficPolicy{Outlier: od}, &Options{}, proxyPlace{})
		for i, seq := range [][]int{
			{0, 503, 0},                  // split: local 1 after the answer reset it, 5xx 1
			{0, 0},                       // split: two local failures in a row
			{503, 503},                   // 5xx twice either way
			{statusTryTimeout, 200, 503}, // a try's timeout, then answers
		} {
			for _, st := range seq {
				u.report(u.endpoints[i], st)
			}
		}
		want := map[bool][]bool{false: {true, true, true, false}, true: {false, true, true, false}}[split]
		for i, e := range u.endpoints {
			if got := e.ejected(time.Now()); got != want[i] {
				t.Errorf("split %v: endpoint %d ejected %v; want %v", split, i, got, want[i])
			}
		}
	}
}

// TestAccessLogFormat: a config's access log format writes each request's
// line with Envoy's operators: a text format (here Istio's default and a
// custom one) or a JSON object; the response's headers and the upstream's
// service time are there, and a connection relayed whole gets a line with
// dashes for what it has no request for.
func TestAccessLogFormat(t *testing.T) {
	web := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("X-Served-By", "web-1")
		io.WriteString(w, "hello")
	}))
	raw := func(b *syncBuffer) string { return b.String() }
	for _, tt := range []struct {
		name   string
		format model.AccessLogFormat
		want   *regexp.Regexp
	}{
		{"istio text", model.AccessLogFormat{Text: accesslog.IstioText},
			regexp.MustCompile(`^\[\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\] "GET /cart\?id=7 HTTP/1\.1" 200 - - - "-" 0 5 \d+ \d+ "127\.0\.0\.1" "meshlet-test" "[0-9a-f-]+" "reviews\.default\.svc\.cluster\.local" "127\.0\.0\.1:\d+" web - 127\.0\.0\.1:\d+ 127\.0\.0\.1:\d+ - r\n$`)},
		{"custom text", model.AccessLogFormat{Text: `%REQ(:METHOD)% %REQ(:PATH)% by %RESP(X-SERVED-BY)% %RESPONSE_CODE% "%REQ(X-TENANT):3%"`},
			regexp.MustCompile(`^GET /cart\?id=7 by web-1 200 "acm"\n$`)},
		{"labels", model.AccessLogFormat{Labels: map[string]string{"code": "%RESPONSE_CODE%", "served": "%RESP(X-SERVED-BY)%", "sni": "%REQUESTED_SERVER_NAME%"}},
			regexp.MustCompile(`^\{"code":200,"served":"web-1","sni":null\}\n$`)},
		{"labels, empty left out", model.AccessLogFormat{Labels: map[string]string{"code": "%RESPONSE_CODE%", "sni": "%REQUESTED_SERVER_NAME%"}, OmitEmpty: true},
			regexp.MustCompile(`^\{"code":200\}\n$`)},
	} {
		t.Run(tt.name, func(t *testing.T) {
			cfg := oneRoute([]model.L7Cluster{clusterOf("web", web)}, model.L7Route{Name: "r", Destinations: to("web")})
			f := tt.format
			cfg.L7.Telemetry.AccessLogFormat = &f
			h := start(t, cfg, nil)
			if code, _ := h.get(t, newClient(t), "/cart?id=7", map[string]string{"User-Agent": "meshlet-test", "X-Tenant": "acme"}); code != 200 {
				t.Fatalf("request: %d", code)
			}
			deadline := time.Now().Add(2 * time.Second)
			for raw(h.log) == "" && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			if got := raw(h.log); !tt.want.MatchString(got) {
				t.Errorf("access log line %q; want it to match %s", got, tt.want)
			}
		})
	}

	// A relayed connection's line.
	echo := tcpBackend(t, func(c net.Conn) { io.Copy(c, c) })
	log := &syncBuffer{}
	c := dialServeTCP(t, &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "tcp", Port: 9000, TCP: &model.TCPRoute{Name: "echo", Destinations: to("echo")}}},
		Clusters:  []model.L7Cluster{clusterOf("echo", echo)},
		Telemetry: model.L7Telemetry{AccessLogFormat: &model.AccessLogFormat{Text: `%REQ(:METHOD)% %ROUTE_NAME% %BYTES_RECEIVED% %UPSTREAM_CLUSTER%`}},
	}}, log)
	io.WriteString(c, "ping")
	io.ReadFull(c, make([]byte, 4))
	c.Close()
	deadline := time.Now().Add(2 * time.Second)
	for raw(log) == "" && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if got := raw(log); got != "- echo 4 echo\n" {
		t.Errorf("a relayed connection's line %q; want %q", got, "- echo 4 echo\n")
	}
}

// dialServeTCP serves cfg's TCP listener of port 9000 with a Proxy whose
// access log goes to log (nil: none) until the test ends, and returns a
// connection to it.
func dialServeTCP(t *testing.T, cfg *Config, log io.Writer) net.Conn {
	t.Helper()
	if err := cfg.L7.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := New(Options{Config: cfg, AccessLog: log})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	go p.ServeTCP(ctx, ln, 9000, time.Second)
	c, err := net.Dial("tcp", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

// TestTLSRouteByServerName: a service's TLSRoutes take its TLS connections
// by the ClientHello's server name, relayed whole (the backend sees the
// ClientHello); a name no route claims, and a connection that is not TLS,
// go on to the tcp route with nothing lost.
func TestTLSRouteByServerName(t *testing.T) {
	got := make(chan string, 8)
	backendNamed := func(name string) string {
		return tcpBackend(t, func(c net.Conn) {
			b := make([]byte, 1)
			if _, err := io.ReadFull(c, b); err == nil {
				got <- fmt.Sprintf("%s %#x", name, b[0])
			}
		})
	}
	cfg := &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "p", VirtualHosts: []model.VirtualHost{{
			Name: "secure.shop.svc.cluster.local", Domains: []string{"secure"}, Opaque: true,
			Routes:      []model.L7Route{{Name: "default", Destinations: to("rest")}},
			Passthrough: []model.PassthroughRoute{{Name: "shop/a", SNIHosts: []string{"a.example.com"}, Destinations: to("a")}},
			TCP:         &model.TCPRoute{Name: "default", Destinations: to("rest")},
		}}}},
		Clusters: []model.L7Cluster{clusterOf("a", backendNamed("a")), clusterOf("rest", backendNamed("rest"))},
	}}
	if err := cfg.L7.Validate(); err != nil {
		t.Fatal(err)
	}
	h := start(t, cfg, func(o *Options) {
		o.ConnPeer = func(net.Conn) Peer {
			return Peer{DestinationService: "secure.shop.svc.cluster.local", DestinationPort: 443}
		}
	})
	relayedTo := func(send func(c net.Conn)) string {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		go send(c)
		select {
		case s := <-got:
			return s
		case <-time.After(5 * time.Second):
			return "nothing"
		}
	}
	hello := func(sni string) func(c net.Conn) {
		return func(c net.Conn) {
			tc := tls.Client(c, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
			tc.SetDeadline(time.Now().Add(5 * time.Second))
			_ = tc.Handshake() // the backends speak no TLS: only the ClientHello matters
		}
	}
	for _, tt := range []struct {
		name string
		send func(c net.Conn)
		want string
	}{
		{"TLS for a.example.com", hello("a.example.com"), "a 0x16"},
		{"TLS for another name", hello("b.example.com"), "rest 0x16"},
		{"not TLS", func(c net.Conn) { io.WriteString(c, "PING\r\n") }, "rest 0x50"},
	} {
		if r := relayedTo(tt.send); r != tt.want {
			t.Errorf("%s: relayed to %q; want %q", tt.name, r, tt.want)
		}
	}
}

// TestTunnel: a cluster with a tunnel reaches its target through each
// endpoint, an HTTP proxy, with a CONNECT to the target: HTTP requests and
// relayed connections alike; a proxy that refuses the CONNECT fails the
// request as a connection failure (503, UF).
func TestTunnel(t *testing.T) {
	target := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from the target") }))
	echo := tcpBackend(t, func(c net.Conn) { io.Copy(c, c) })
	connects := make(chan string, 16)
	proxy := func(allow bool) string {
		return tcpBackend(t, func(c net.Conn) {
			br := bufio.NewReader(c)
			req, err := http.ReadRequest(br)
			if err != nil || req.Method != http.MethodConnect {
				return
			}
			connects <- req.Host
			if !allow {
				io.WriteString(c, "HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
				return
			}
			up, err := net.Dial("tcp", req.Host)
			if err != nil {
				io.WriteString(c, "HTTP/1.1 502 Bad Gateway\r\nContent-Length: 0\r\n\r\n")
				return
			}
			defer up.Close()
			io.WriteString(c, "HTTP/1.1 200 Connection established\r\n\r\n")
			go io.Copy(up, br)
			io.Copy(c, up)
		})
	}
	tunnelTo := func(addr string) *model.Tunnel {
		host, port, _ := net.SplitHostPort(addr)
		p, _ := strconv.Atoi(port)
		return &model.Tunnel{TargetHost: host, TargetPort: uint32(p)}
	}
	open, refusing := proxy(true), proxy(false)
	clusters := []model.L7Cluster{clusterOf("via", open), clusterOf("refused", refusing)}
	clusters[0].Traffic.Tunnel = tunnelTo(target)
	clusters[1].Traffic.Tunnel = tunnelTo(target)
	h := start(t, oneRoute(clusters,
		model.L7Route{Name: "refused", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/refused"}}}, Destinations: to("refused"),
			Retries: &model.RetryPolicy{}},
		model.L7Route{Name: "via", Destinations: to("via")}), nil)
	if code, body := h.get(t, newClient(t), "/", nil); code != 200 || body != "from the target" {
		t.Errorf("through the tunnel: %d %q; want the target's answer", code, body)
	}
	if got := <-connects; got != target {
		t.Errorf("the proxy was asked to CONNECT %q; want %q", got, target)
	}
	if code, _ := h.get(t, newClient(t), "/refused", nil); code != http.StatusServiceUnavailable {
		t.Errorf("a proxy refusing the CONNECT: %d; want 503", code)
	}
	<-connects
	if n := h.log.countFlag(t, flagConnFailure); n != 1 {
		t.Errorf("%d lines flagged UF; want 1", n)
	}

	// A relayed connection goes through the tunnel too.
	relay := clusterOf("echo", open)
	relay.Traffic.Tunnel = tunnelTo(echo)
	c := dialServeTCP(t, &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "tcp", Port: 9000, TCP: &model.TCPRoute{Name: "echo", Destinations: to("echo")}}},
		Clusters:  []model.L7Cluster{relay},
	}}, nil)
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "ping")
	got := make([]byte, 4)
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "ping" {
		t.Errorf("a relayed connection through the tunnel: %q, %v; want the echo", got, err)
	}
	if host := <-connects; host != echo {
		t.Errorf("the relay's CONNECT was for %q; want %q", host, echo)
	}
}
