package waypoint

import (
	"bytes"
	"context"
	"crypto/sha256"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

func TestDialContextHook(t *testing.T) {
	app := backend(t, &named{name: "app"})
	var dials atomic.Int64
	var addrs sync.Map
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", "app.hbone.invalid:9080")}, model.L7Route{Name: "r", Destinations: to("app")}),
		func(o *Options) {
			// The hook sees the endpoint address and decides how to reach it,
			// as the HBONE dialer will.
			o.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
				dials.Add(1)
				addrs.Store(addr, true)
				return (&net.Dialer{}).DialContext(ctx, network, app)
			}
		})
	if code, body := h.get(t, newClient(t), "/", nil); code != 200 || body != "app" {
		t.Fatalf("GET = %d %q; want 200 app", code, body)
	}
	if _, ok := addrs.Load("app.hbone.invalid:9080"); !ok || dials.Load() != 1 {
		t.Errorf("DialContext called %d times; want once with the endpoint address", dials.Load())
	}
}

func TestConsistentHash(t *testing.T) {
	var eps []model.L7Endpoint
	for _, n := range []string{"a", "b", "c", "d"} {
		eps = append(eps, model.L7Endpoint{Address: backend(t, &named{name: n})})
	}
	cl := model.L7Cluster{Name: "hash", Endpoints: eps, Traffic: model.TrafficPolicy{LB: model.LBPolicy{ConsistentHash: &model.ConsistentHash{Header: "x-user"}}}}
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("hash")}), nil)
	client := newClient(t)
	seen := map[string]bool{}
	for _, user := range []string{"u1", "u2", "u3", "u4", "u5", "u6", "u7", "u8"} {
		_, first := h.get(t, client, "/", map[string]string{"X-User": user})
		for i := 0; i < 5; i++ {
			if _, body := h.get(t, client, "/", map[string]string{"X-User": user}); body != first {
				t.Fatalf("user %s went to %s then %s; want a stable endpoint", user, first, body)
			}
		}
		seen[first] = true
	}
	if len(seen) < 2 {
		t.Errorf("8 users all hashed to %v; want a spread", seen)
	}
}

// TestConsistentHashStickyCookie: with an httpCookie ttl, a client without
// the cookie is given one (Set-Cookie with the TTL and path, beside the
// app's own cookies) and, sending it back, keeps reaching the endpoint its
// first request reached; a query parameter hash keeps each value on one
// endpoint.
func TestConsistentHashStickyCookie(t *testing.T) {
	var eps []model.L7Endpoint
	for _, n := range []string{"a", "b", "c", "d"} {
		eps = append(eps, model.L7Endpoint{Address: backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			http.SetCookie(w, &http.Cookie{Name: "app", Value: n})
			io.WriteString(w, n)
		}))})
	}
	sticky := model.L7Cluster{Name: "sticky", Endpoints: eps, Traffic: model.TrafficPolicy{LB: model.LBPolicy{
		ConsistentHash: &model.ConsistentHash{Cookie: "route", CookieTTL: 30 * time.Minute, CookiePath: "/shop"}}}}
	byQuery := model.L7Cluster{Name: "query", Endpoints: eps, Traffic: model.TrafficPolicy{LB: model.LBPolicy{
		ConsistentHash: &model.ConsistentHash{QueryParam: "cart"}}}}
	h := start(t, oneRoute([]model.L7Cluster{sticky, byQuery},
		model.L7Route{Name: "q", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/q"}}}, Destinations: to("query")},
		model.L7Route{Name: "r", Destinations: to("sticky")}), nil)
	client := newClient(t)
	seen := map[string]bool{}
	for range 8 {
		resp, err := client.Get(h.url + "/shop")
		if err != nil {
			t.Fatal(err)
		}
		first, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		var route *http.Cookie
		app := false
		for _, c := range resp.Cookies() {
			switch c.Name {
			case "route":
				route = c
			case "app":
				app = true
			}
		}
		if route == nil || route.MaxAge != 1800 || route.Path != "/shop" || !route.HttpOnly || !app {
			t.Fatalf("first response's cookies = %v; want the app's and route with Max-Age=1800, Path=/shop, HttpOnly", resp.Cookies())
		}
		cookies := []*http.Cookie{route}
		seen[string(first)] = true
		for range 4 {
			req, _ := http.NewRequest(http.MethodGet, h.url+"/shop", nil)
			req.AddCookie(&http.Cookie{Name: "route", Value: cookies[0].Value})
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != string(first) {
				t.Fatalf("with its cookie the client reached %s, first %s; want the same endpoint", b, first)
			}
			for _, c := range resp.Cookies() {
				if c.Name == "route" {
					t.Errorf("a client sending the cookie was given another: %v", c)
				}
			}
		}
	}
	if len(seen) < 2 {
		t.Errorf("8 new clients all went to %v; want a spread", seen)
	}
	for _, cart := range []string{"c1", "c2", "c3"} {
		_, first := h.get(t, client, "/q?cart="+cart, nil)
		for range 4 {
			if _, body := h.get(t, client, "/q?x=1&cart="+cart, nil); body != first {
				t.Fatalf("cart %s went to %s then %s; want a stable endpoint", cart, first, body)
			}
		}
	}
}

func TestCORS(t *testing.T) {
	app := &named{name: "app"}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app"),
		CORS: &model.CORSPolicy{AllowOrigins: []model.StringMatch{{Exact: "https://good.example"}}, AllowMethods: []string{"GET", "POST"}, MaxAge: time.Hour}}), nil)
	client := newClient(t)
	req, _ := http.NewRequest(http.MethodOptions, h.url+"/", nil)
	req.Header.Set("Origin", "https://good.example")
	req.Header.Set("Access-Control-Request-Method", "POST")
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 || resp.Header.Get("Access-Control-Allow-Origin") != "https://good.example" || resp.Header.Get("Access-Control-Allow-Methods") != "GET,POST" || resp.Header.Get("Access-Control-Max-Age") != "3600" {
		t.Errorf("preflight = %d %v", resp.StatusCode, resp.Header)
	}
	req, _ = http.NewRequest(http.MethodGet, h.url+"/", nil)
	req.Header.Set("Origin", "https://evil.example")
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.Header.Get("Access-Control-Allow-Origin") != "" {
		t.Errorf("disallowed origin got Access-Control-Allow-Origin %q", resp.Header.Get("Access-Control-Allow-Origin"))
	}
}

func TestGRPCFaultAbort(t *testing.T) {
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("grpc", grpcBackend(t))}, model.L7Route{Name: "r", Destinations: to("grpc"),
		Fault: &model.FaultInjection{Abort: &model.FaultAbort{GRPCStatus: "UNAVAILABLE", Percent: 100}}}), nil)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("UnaryCall with an injected abort = %v; want Unavailable", err)
	}
}

func TestTCPFallbackL4Policy(t *testing.T) {
	var accepted atomic.Int64
	echo := tcpBackend(t, func(c net.Conn) { accepted.Add(1); io.Copy(c, c) })
	cfg := oneRoute([]model.L7Cluster{clusterOf("tcp", echo)}, model.L7Route{Name: "r", DirectResponse: &model.DirectResponse{Status: 200}})
	cfg.TCPCluster = "tcp"
	// Only sleep may connect; the TCP client has no identity.
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "only-sleep", Rules: []policy.Rule{{From: []policy.Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}}}}}}
	h := start(t, cfg, nil)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	io.WriteString(c, "hello\n")
	if n, err := c.Read(make([]byte, 10)); err == nil {
		t.Errorf("denied TCP client read %d bytes; want the connection closed", n)
	}
	if accepted.Load() != 0 {
		t.Errorf("backend accepted %d connections from a denied client", accepted.Load())
	}
}

func TestJWKSRefreshKeepsLastGoodKeys(t *testing.T) {
	s := newSigner(t)
	var fail atomic.Bool
	var fetches atomic.Int64
	jwks := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		if fail.Load() {
			w.WriteHeader(500)
			return
		}
		io.WriteString(w, s.jwks)
	}))
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, &named{name: "app"}))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.JWTProviders = []model.JWTProvider{{Issuer: issuer, JWKSURI: "http://" + jwks}}
	h := start(t, cfg, func(o *Options) { o.JWKSRefresh = 50 * time.Millisecond })
	client := newClient(t)
	auth := map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(nil))}
	if code, _ := h.get(t, client, "/", auth); code != 200 {
		t.Fatalf("first request = %d; want 200", code)
	}
	fail.Store(true)
	time.Sleep(100 * time.Millisecond)
	for i := 0; i < 3; i++ {
		if code, _ := h.get(t, client, "/", auth); code != 200 {
			t.Fatalf("request during failing refresh = %d; want 200 on the last good keys", code)
		}
		time.Sleep(60 * time.Millisecond)
	}
	if fetches.Load() < 2 {
		t.Errorf("JWKS fetched %d times; want a refresh after JWKSRefresh", fetches.Load())
	}
}

// h2Conn opens a raw HTTP/2 connection with the client preface sent.
func h2Conn(t *testing.T, addr string) (net.Conn, *http2.Framer) {
	t.Helper()
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	c.SetDeadline(time.Now().Add(10 * time.Second))
	io.WriteString(c, http2.ClientPreface)
	fr := http2.NewFramer(c, c)
	if err := fr.WriteSettings(); err != nil {
		t.Fatal(err)
	}
	return c, fr
}

func encodeHeaders(t *testing.T, extra ...string) []byte {
	var buf bytes.Buffer
	enc := hpack.NewEncoder(&buf)
	kv := append([]string{":method", "GET", ":scheme", "http", ":path", "/", ":authority", "reviews"}, extra...)
	for i := 0; i < len(kv); i += 2 {
		if err := enc.WriteField(hpack.HeaderField{Name: kv[i], Value: kv[i+1]}); err != nil {
			t.Fatal(err)
		}
	}
	return buf.Bytes()
}

func TestHTTP2ContinuationFloodIsCutOff(t *testing.T) {
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, &named{name: "app"}))}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	_, fr := h2Conn(t, h.addr)
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 1, BlockFragment: encodeHeaders(t), EndStream: true}); err != nil {
		t.Fatal(err)
	}
	// Endless CONTINUATION frames on stream 3: the server must give up
	// (GOAWAY or close) long before 64 MiB.
	big := encodeHeaders(t, "x-pad", strings.Repeat("a", 8000))
	if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: 3, BlockFragment: big}); err != nil {
		t.Fatal(err)
	}
	sent := 0
	var werr error
	for sent < 64<<20 {
		if werr = fr.WriteContinuation(3, false, big); werr != nil {
			break
		}
		sent += len(big)
	}
	if werr == nil {
		t.Fatalf("server accepted %d bytes of CONTINUATION frames; want the connection cut", sent)
	}
}

func TestHTTP2RapidResetIsBounded(t *testing.T) {
	var active, peak atomic.Int64
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		n := active.Add(1)
		defer active.Add(-1)
		for p := peak.Load(); n > p && !peak.CompareAndSwap(p, n); p = peak.Load() {
		}
		select {
		case <-time.After(200 * time.Millisecond):
		case <-r.Context().Done():
		}
	}))
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app"), Retries: &model.RetryPolicy{}}), nil)
	_, fr := h2Conn(t, h.addr)
	block := encodeHeaders(t)
	const streams = 2000
	for i := 0; i < streams; i++ {
		id := uint32(2*i + 1)
		if err := fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: block, EndStream: true, EndHeaders: true}); err != nil {
			break // the server may close a connection that abuses resets
		}
		if err := fr.WriteRSTStream(id, http2.ErrCodeCancel); err != nil {
			break
		}
	}
	time.Sleep(300 * time.Millisecond)
	t.Logf("peak backend concurrency during the flood: %d", peak.Load())
	if got := peak.Load(); got > 100 {
		t.Errorf("backend saw %d concurrent requests from one connection's rapid resets; want at most MaxConcurrentStreams (100)", got)
	}
	// The proxy still serves other clients.
	if code, _ := h.get(t, newClient(t), "/", nil); code != 200 {
		t.Errorf("GET after the flood = %d; want 200", code)
	}
}

func TestDryRunDenyIsLoggedNotEnforced(t *testing.T) {
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, &named{name: "app"}))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "dry-deny", Action: policy.Deny, DryRun: true, Rules: []policy.Rule{{}}}}
	var logged atomic.Value
	h := start(t, cfg, func(o *Options) {
		o.Logf = func(format string, args ...any) { logged.Store(fmt.Sprintf(format, args...)) }
	})
	if code, _ := h.get(t, newClient(t), "/x", nil); code != 200 {
		t.Errorf("GET under a dry-run DENY = %d; want 200", code)
	}
	if got, _ := logged.Load().(string); !strings.Contains(got, "would be denied by default/dry-deny") {
		t.Errorf("log = %q; want the dry-run decision", got)
	}
}

func TestUpdateKeepsUpstreamState(t *testing.T) {
	var badHits atomic.Int64
	bad := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { badHits.Add(1); w.WriteHeader(500) }))
	cl := model.L7Cluster{Name: "od", Endpoints: []model.L7Endpoint{{Address: bad}, {Address: backend(t, &named{name: "good"})}},
		Traffic: model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin}, Outlier: &model.OutlierDetection{Consecutive5xxErrors: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 50}}}
	routeA := model.L7Route{Name: "a", Destinations: to("od"), Retries: &model.RetryPolicy{}}
	h := start(t, oneRoute([]model.L7Cluster{cl}, routeA), nil)
	client := newClient(t)
	h.get(t, client, "/", nil)
	h.get(t, client, "/", nil)
	if badHits.Load() != 1 {
		t.Fatalf("bad endpoint hits = %d; want 1 (then ejected)", badHits.Load())
	}
	// A route-only change must not un-eject the endpoint.
	routeA.Name = "renamed"
	if err := h.proxy.Update(oneRoute([]model.L7Cluster{cl}, routeA)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 6; i++ {
		h.get(t, client, "/", nil)
	}
	if badHits.Load() != 1 {
		t.Errorf("bad endpoint hits after Update = %d; want still ejected", badHits.Load())
	}
}

func TestH2CUpgradeIsNotForwarded(t *testing.T) {
	app := &named{name: "app"}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	code, _ := rawGet(t, h.addr, "/", "Connection: Upgrade, HTTP2-Settings", "Upgrade: h2c", "HTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA")
	last := app.lastRequest()
	if code != 200 || last == nil || last.Header.Get("Upgrade") != "" || last.Header.Get("Http2-Settings") != "" {
		t.Errorf("h2c upgrade attempt = %d, backend saw %v; want 200 with the upgrade headers dropped", code, last)
	}
}

func TestOversizedHeadersRejected(t *testing.T) {
	app := &named{name: "app"}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	code, _ := rawGet(t, h.addr, "/", "X-Big: "+strings.Repeat("a", 100<<10))
	if code != http.StatusRequestHeaderFieldsTooLarge {
		t.Errorf("GET with 100 KiB of headers = %d; want 431", code)
	}
	if app.lastRequest() != nil {
		t.Error("backend saw the oversized request")
	}
}

// flakyEcho fails its first call with UNAVAILABLE, then echoes.
type flakyEcho struct {
	testgrpc.UnimplementedTestServiceServer
	calls atomic.Int64
}

func (f *flakyEcho) UnaryCall(ctx context.Context, in *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if f.calls.Add(1) == 1 {
		return nil, status.Error(codes.Unavailable, "warming up")
	}
	return &testgrpc.SimpleResponse{Payload: in.GetPayload()}, nil
}

func TestGRPCRetriedOnUnavailable(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	svc := &flakyEcho{}
	testgrpc.RegisterTestServiceServer(srv, svc)
	go srv.Serve(l)
	t.Cleanup(srv.Stop)
	// Istio's default retry policy retries gRPC UNAVAILABLE.
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("grpc", l.Addr().String())}, model.L7Route{Name: "r", Destinations: to("grpc")}), nil)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	resp, err := testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("again")}})
	if err != nil || string(resp.GetPayload().GetBody()) != "again" {
		t.Fatalf("UnaryCall = %v, %v; want the retried call to succeed with the same body", resp, err)
	}
	if svc.calls.Load() != 2 {
		t.Errorf("backend calls = %d; want 2 (one retry)", svc.calls.Load())
	}
}

func TestSourceMatchAndPrincipalRateLimit(t *testing.T) {
	v1, v2 := &named{name: "v1"}, &named{name: "v2"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("v1", backend(t, v1)), clusterOf("v2", backend(t, v2))},
		model.L7Route{Name: "from-canary-ns", Matches: []model.RouteMatch{{SourceNamespace: "canary", SourceLabels: map[string]string{"app": "tester"}}}, Destinations: to("v2"),
			RateLimit: &model.RateLimit{MaxTokens: 1, FillInterval: time.Hour, Key: "principal"}},
		model.L7Route{Name: "default", Destinations: to("v1")})
	h := start(t, cfg, func(o *Options) {
		o.Peer = func(r *http.Request) Peer {
			switch r.URL.Query().Get("test-peer") {
			case "tester-a":
				return Peer{Principal: "cluster.local/ns/canary/sa/a", Labels: map[string]string{"app": "tester"}}
			case "tester-b":
				return Peer{Principal: "cluster.local/ns/canary/sa/b", Labels: map[string]string{"app": "tester"}}
			case "other":
				return Peer{Principal: "cluster.local/ns/canary/sa/c", Labels: map[string]string{"app": "web"}}
			}
			return Peer{}
		}
	})
	client := newClient(t)
	tests := []struct {
		peer     string
		wantCode int
		wantBody string
	}{
		{"tester-a", 200, "v2"},
		{"tester-a", 429, ""}, // one token per principal
		{"tester-b", 200, "v2"},
		{"other", 200, "v1"}, // labels do not match
		{"", 200, "v1"},
	}
	for i, tt := range tests {
		code, body := h.get(t, client, "/?test-peer="+tt.peer, nil)
		if code != tt.wantCode || (tt.wantBody != "" && body != tt.wantBody) {
			t.Errorf("request %d as %q = %d %q; want %d %q", i, tt.peer, code, body, tt.wantCode, tt.wantBody)
		}
	}
}

func TestEndpointWeights(t *testing.T) {
	heavy, light := &named{name: "heavy"}, &named{name: "light"}
	cl := model.L7Cluster{Name: "w", Endpoints: []model.L7Endpoint{{Address: backend(t, heavy), Weight: 3}, {Address: backend(t, light), Weight: 1}}}
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("w")}), nil)
	client := newClient(t)
	counts := map[string]int{}
	const n = 800
	for i := 0; i < n; i++ {
		_, body := h.get(t, client, "/", nil)
		counts[body]++
	}
	checkShare(t, fmt.Sprintf("the heavy endpoint's requests (counts %v)", counts), counts["heavy"], n, 0.75)
}

func TestTraceContext(t *testing.T) {
	app := &named{name: "app"}
	var spans []Span
	var mu sync.Mutex
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")}),
		func(o *Options) {
			o.TraceSampling = 100
			o.ExportSpan = func(s Span) { mu.Lock(); spans = append(spans, s); mu.Unlock() }
		})
	client := newClient(t)
	const parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	h.get(t, client, "/", map[string]string{"Traceparent": parent, "Tracestate": "vendor=x"})
	got := app.lastRequest()
	tid, pid, flags, ok := parseTraceparent(got.Header.Get("Traceparent"))
	if !ok || tid != "4bf92f3577b34da6a3ce929d0e0e4736" || pid == "00f067aa0ba902b7" || flags != 1 || got.Header.Get("Tracestate") != "vendor=x" {
		t.Errorf("upstream traceparent %q tracestate %q; want the same trace, a new span, sampled, tracestate kept", got.Header.Get("Traceparent"), got.Header.Get("Tracestate"))
	}
	h.get(t, client, "/", map[string]string{"Traceparent": "garbage"})
	if _, _, _, ok := parseTraceparent(app.lastRequest().Header.Get("Traceparent")); !ok {
		t.Errorf("invalid traceparent not replaced: %q", app.lastRequest().Header.Get("Traceparent"))
	}
	mu.Lock()
	defer mu.Unlock()
	if len(spans) != 2 || spans[0].TraceID != tid || spans[0].SpanID != pid || spans[0].ParentSpanID != "00f067aa0ba902b7" || spans[0].Attributes["http.response.status_code"] != "200" {
		t.Errorf("exported spans = %+v", spans)
	}
}

func TestUpdateKeepsRateLimitBuckets(t *testing.T) {
	app := backend(t, &named{name: "app"})
	mk := func(target string) *Config {
		return oneRoute([]model.L7Cluster{clusterOf("app", app), clusterOf("app2", app)},
			model.L7Route{Name: "r", Destinations: to(target), RateLimit: &model.RateLimit{MaxTokens: 1, FillInterval: time.Hour}})
	}
	h := start(t, mk("app"), nil)
	client := newClient(t)
	if code, _ := h.get(t, client, "/", nil); code != 200 {
		t.Fatalf("first request = %d; want 200", code)
	}
	if err := h.proxy.Update(mk("app2")); err != nil {
		t.Fatal(err)
	}
	if code, _ := h.get(t, client, "/", nil); code != 429 {
		t.Errorf("request after an unrelated config push = %d; want 429 (bucket kept)", code)
	}
}

func TestLargeBodiesStream(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		sum := sha256.New()
		n, _ := io.Copy(sum, r.Body)
		fmt.Fprintf(w, "%d %x", n, sum.Sum(nil))
	}))
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	body := bytes.Repeat([]byte("0123456789abcdef"), 3<<16) // 3 MiB, over MaxBufferedBody
	want := fmt.Sprintf("%d %x", len(body), sha256.Sum256(body))
	client := newClient(t)
	for _, chunked := range []bool{false, true} {
		var r io.Reader = bytes.NewReader(body)
		if chunked {
			r = io.MultiReader(r) // hides the length: sent chunked
		}
		resp, err := client.Post(h.url+"/upload", "application/octet-stream", r)
		if err != nil {
			t.Fatal(err)
		}
		got, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || string(got) != want {
			t.Errorf("POST 3 MiB (chunked %v) = %d %q; want %q", chunked, resp.StatusCode, got, want)
		}
	}
}

func TestMaxRequestsPerConnection(t *testing.T) {
	var mu sync.Mutex
	conns := map[string]int{}
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		conns[r.RemoteAddr]++
		mu.Unlock()
	}))
	cl := clusterOf("app", app)
	cl.Traffic.Pool.MaxRequestsPerConnection = 3
	h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	client := newClient(t)
	for i := 0; i < 9; i++ {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("GET = %d", code)
		}
	}
	mu.Lock()
	defer mu.Unlock()
	if len(conns) != 3 {
		t.Errorf("9 sequential requests used %d upstream connections (%v); want 3 with maxRequestsPerConnection 3", len(conns), conns)
	}
	for addr, n := range conns {
		if n > 3 {
			t.Errorf("connection %s carried %d requests; want at most 3", addr, n)
		}
	}
}

// idConn is what an HBONE server's listener might return: a stream that
// knows its peer's identity.
type idConn struct {
	net.Conn
	principal string
}

type idListener struct {
	net.Listener
}

func (l idListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err != nil {
		return nil, err
	}
	return &idConn{Conn: c, principal: "cluster.local/ns/web/sa/frontend"}, nil
}

func TestConnFromContextCarriesStreamIdentity(t *testing.T) {
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "only-frontend", Rules: []policy.Rule{{
		From: []policy.Source{{Principals: []string{"cluster.local/ns/web/sa/frontend"}}},
	}}}}
	p, err := New(Options{Config: cfg, Peer: func(r *http.Request) Peer {
		if c, ok := ConnFromContext(r.Context()); ok {
			if ic, ok := c.(*idConn); ok {
				return Peer{Principal: ic.principal}
			}
		}
		return Peer{}
	}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ctx, idListener{l}, ServerOptions{}) }()
	t.Cleanup(func() { cancel(); <-done })
	resp, err := newClient(t).Get("http://" + l.Addr().String() + "/")
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("GET over a stream with the allowed identity = %d; want 200", resp.StatusCode)
	}
}

// TestTraceContextB3: a caller propagating Zipkin's B3 (multi-header or
// the single b3 header) and no traceparent has its trace continued: the
// upstream request's traceparent carries its trace ID (a 64-bit one padded)
// with the waypoint's span, its B3 headers are rewritten in the form they
// came for that span with the caller's as parent, the sampling decision is
// kept, and the exported span is the caller's child; a malformed b3 starts
// a new trace and is passed on as it came.
func TestTraceContextB3(t *testing.T) {
	app := &named{name: "app"}
	var spans []Span
	var mu sync.Mutex
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")}),
		func(o *Options) {
			o.ExportSpan = func(s Span) { mu.Lock(); spans = append(spans, s); mu.Unlock() }
		})
	client := newClient(t)
	const trace64, caller = "463ac35c9f6413ad", "a2fb4a1d1a96d312"

	h.get(t, client, "/", map[string]string{"X-B3-TraceId": trace64, "X-B3-SpanId": caller, "X-B3-Sampled": "1"})
	got := app.lastRequest().Header
	tid, pid, flags, ok := parseTraceparent(got.Get("Traceparent"))
	if !ok || tid != "0000000000000000"+trace64 || flags != 1 {
		t.Errorf("upstream traceparent %q; want trace 0000000000000000%s, sampled", got.Get("Traceparent"), trace64)
	}
	if got.Get("X-B3-TraceId") != trace64 || got.Get("X-B3-SpanId") != pid || got.Get("X-B3-ParentSpanId") != caller || got.Get("X-B3-Sampled") != "1" {
		t.Errorf("upstream B3 %v; want trace %s, span %s (the waypoint's), parent %s, sampled 1", got, trace64, pid, caller)
	}

	const trace128 = "80f198ee56343ba864fe8b2a57d3eff7"
	h.get(t, client, "/", map[string]string{"b3": trace128 + "-" + caller + "-0"})
	got = app.lastRequest().Header
	tid, pid, flags, ok = parseTraceparent(got.Get("Traceparent"))
	if !ok || tid != trace128 || flags != 0 || got.Get("B3") != trace128+"-"+pid+"-0-"+caller || got.Get("X-B3-TraceId") != "" {
		t.Errorf("upstream traceparent %q b3 %q; want trace %s unsampled and b3 %s-<span>-0-%s only", got.Get("Traceparent"), got.Get("B3"), trace128, trace128, caller)
	}

	h.get(t, client, "/", map[string]string{"b3": "not-a-context-at-all-really"})
	got = app.lastRequest().Header
	if tid, _, _, ok := parseTraceparent(got.Get("Traceparent")); !ok || tid == trace128 || got.Get("B3") != "not-a-context-at-all-really" {
		t.Errorf("malformed b3: traceparent %q b3 %q; want a new trace and b3 as it came", got.Get("Traceparent"), got.Get("B3"))
	}

	mu.Lock()
	defer mu.Unlock()
	if len(spans) != 1 || spans[0].TraceID != "0000000000000000"+trace64 || spans[0].ParentSpanID != caller {
		t.Errorf("exported spans %+v; want one, the sampled B3 request's, child of %s", spans, caller)
	}
}

// TestTraceCustomTags: a config's custom span tags: a literal, and a
// request header's value (bounded), its default when the request has none.
func TestTraceCustomTags(t *testing.T) {
	var spans []Span
	var mu sync.Mutex
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, &named{name: "app"}))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.Telemetry.TraceTags = map[string]model.TraceTag{"cluster": {Literal: "west"}, "user": {Header: "x-user", Default: "anon"}}
	h := start(t, cfg, func(o *Options) {
		o.TraceSampling = 100
		o.ExportSpan = func(s Span) { mu.Lock(); spans = append(spans, s); mu.Unlock() }
	})
	client := newClient(t)
	h.get(t, client, "/", map[string]string{"X-User": "alice"})
	h.get(t, client, "/", nil)
	h.get(t, client, "/", map[string]string{"X-User": strings.Repeat("u", 1000)})
	mu.Lock()
	defer mu.Unlock()
	if len(spans) != 3 {
		t.Fatalf("%d spans; want 3", len(spans))
	}
	for i, want := range []string{"alice", "anon", strings.Repeat("u", maxTagValue)} {
		if a := spans[i].Attributes; a["cluster"] != "west" || a["user"] != want || a["http.response.status_code"] != "200" {
			t.Errorf("span %d attributes %v; want cluster=west, user=%.20s..., the built-in ones kept", i, a, want)
		}
	}
}
