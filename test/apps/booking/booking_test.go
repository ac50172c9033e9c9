package main

import (
	"context"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"testing"
	"time"
)

// chainOptions say how chain sets up the four services.
type chainOptions struct {
	versions map[string]string // role -> version; "v1" when missing
	fail     map[string]int    // role -> FAIL_PERCENT; 0 when missing
	// wrap, when set, wraps a role's handler (to see the requests it gets).
	wrap map[string]func(http.Handler) http.Handler
}

// chain starts the four services on loopback, wired to each other.
func chain(t *testing.T, o chainOptions) map[string]*httptest.Server {
	t.Helper()
	srv := map[string]*httptest.Server{}
	cfgs := map[string]*config{}
	for _, role := range []string{"inventory", "shipping", "order", "booking"} {
		v := o.versions[role]
		if v == "" {
			v = "v1"
		}
		c := &config{role: role, version: v, pod: role + "-pod", namespace: "shop", failPercent: o.fail[role], client: &http.Client{Timeout: 5 * time.Second}}
		cfgs[role] = c
		h := c.handler()
		if w := o.wrap[role]; w != nil {
			h = w(h)
		}
		srv[role] = httptest.NewServer(h)
		t.Cleanup(srv[role].Close)
	}
	cfgs["order"].inventory, cfgs["order"].shipping = srv["inventory"].URL, srv["shipping"].URL
	cfgs["booking"].order = srv["order"].URL
	return srv
}

func get(t *testing.T, url string, hdr map[string]string) (int, map[string]any) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header.Set(k, v)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	var out map[string]any
	if err := json.Unmarshal(b, &out); err != nil {
		t.Fatalf("%s: answer %q is not JSON: %v", url, b, err)
	}
	return resp.StatusCode, out
}

func TestBookingChain(t *testing.T) {
	srv := chain(t, chainOptions{versions: map[string]string{"order": "v2"}})
	code, b := get(t, srv["booking"].URL+"/api/v1/booking/lamp", nil)
	if code != 200 {
		t.Fatalf("GET /api/v1/booking/lamp = %d %v; want 200", code, b)
	}
	nested, _ := b["booking"].(map[string]any)
	order, _ := nested["order"].(map[string]any)
	inv, _ := order["inventory"].(map[string]any)
	ship, _ := order["shipping"].(map[string]any)
	tests := []struct {
		name     string
		got      map[string]any
		service  string
		version  string
		extraKey string // a field only this service answers
	}{
		{"booking", b, "booking", "v1", "booking"},
		{"order", order, "order", "v2", "inventory"},
		{"inventory", inv, "inventory", "v1", "inStock"},
		{"shipping", ship, "shipping", "v1", "days"},
	}
	for _, tt := range tests {
		if tt.got["service"] != tt.service || tt.got["version"] != tt.version || tt.got["pod"] != tt.service+"-pod" ||
			tt.got["namespace"] != "shop" || tt.got["item"] != "lamp" || tt.got[tt.extraKey] == nil {
			t.Errorf("%s answer = %v; want service %s version %s pod %s-pod namespace shop item lamp and %s",
				tt.name, tt.got, tt.service, tt.version, tt.service, tt.extraKey)
		}
	}
	// The top-level order (read by test/e2e/mesh and the demo script) is the
	// same answer as booking.order.
	if !reflect.DeepEqual(b["order"], nested["order"]) {
		t.Errorf("order = %v; want booking.order %v", b["order"], nested["order"])
	}
	if code, b := get(t, srv["booking"].URL+"/api/v1/booking", nil); code != 200 || b["item"] != "book" {
		t.Errorf("GET /api/v1/booking = %d %v; want 200 and item book", code, b)
	}
	for _, role := range []string{"booking", "order", "inventory", "shipping"} {
		resp, err := http.Get(srv[role].URL + "/healthz")
		if err != nil {
			t.Fatalf("%s /healthz: %v", role, err)
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != 200 || strings.TrimSpace(string(body)) != "ok" {
			t.Errorf("%s /healthz = %d %q; want 200 ok", role, resp.StatusCode, body)
		}
	}
}

// TestBookingForwardsHeaders sends a request to booking and checks what
// reached inventory and shipping, two calls down the chain.
func TestBookingForwardsHeaders(t *testing.T) {
	seen := map[string]chan http.Header{"inventory": make(chan http.Header, 1), "shipping": make(chan http.Header, 1)}
	record := func(role string) func(http.Handler) http.Handler {
		return func(h http.Handler) http.Handler {
			return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if r.URL.Path != "/healthz" {
					seen[role] <- r.Header.Clone()
				}
				h.ServeHTTP(w, r)
			})
		}
	}
	srv := chain(t, chainOptions{wrap: map[string]func(http.Handler) http.Handler{"inventory": record("inventory"), "shipping": record("shipping")}})
	sent := map[string]string{
		"end-user":      "jason",
		"x-request-id":  "5b9c2f0e-7d1a-4c3b-9e8f-2a6d4c1b0e9f",
		"traceparent":   "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
		"tracestate":    "meshlet=00f067aa0ba902b7",
		"authorization": "Bearer demo",
		"cookie":        "session=secret",
		"x-other":       "1",
	}
	if code, b := get(t, srv["booking"].URL+"/api/v1/booking", sent); code != 200 {
		t.Fatalf("GET /api/v1/booking = %d %v; want 200", code, b)
	}
	got := map[string]http.Header{"inventory": <-seen["inventory"], "shipping": <-seen["shipping"]}
	tests := []struct {
		header string
		want   string // what inventory and shipping must see; "" for nothing
	}{
		{"end-user", "jason"},
		{"x-request-id", sent["x-request-id"]},
		{"traceparent", sent["traceparent"]},
		{"tracestate", sent["tracestate"]},
		{"authorization", "Bearer demo"},
		{"cookie", ""},
		{"x-other", ""},
	}
	for _, tt := range tests {
		for role, h := range got {
			if v := h.Get(tt.header); v != tt.want {
				t.Errorf("%s saw %s = %q; want %q", role, tt.header, v, tt.want)
			}
		}
	}
}

func TestBookingFailures(t *testing.T) {
	huge := func(http.Handler) http.Handler {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			w.Header().Set("Content-Type", "application/json")
			io.WriteString(w, `{"pad":"`+strings.Repeat("x", maxBody)+`"}`)
		})
	}
	tests := []struct {
		name     string
		o        chainOptions
		down     string // a role whose server is closed before the request
		wantCode int
		wantText []string // in the answer's error
		wantUp   string   // the answer's upstream
	}{
		{name: "inventory failing", o: chainOptions{fail: map[string]int{"inventory": 100}},
			wantCode: http.StatusBadGateway, wantText: []string{"order answered 502", "inventory answered 503", "FAIL_PERCENT=100"}, wantUp: "order"},
		{name: "shipping down", down: "shipping",
			wantCode: http.StatusBadGateway, wantText: []string{"order answered 502", "shipping:"}, wantUp: "order"},
		{name: "order answer too big", o: chainOptions{wrap: map[string]func(http.Handler) http.Handler{"order": huge}},
			wantCode: http.StatusBadGateway, wantText: []string{"order: answer larger than"}, wantUp: "order"},
		{name: "booking itself failing", o: chainOptions{fail: map[string]int{"booking": 100}},
			wantCode: http.StatusServiceUnavailable, wantText: []string{"FAIL_PERCENT=100"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := chain(t, tt.o)
			if tt.down != "" {
				srv[tt.down].Close()
			}
			code, b := get(t, srv["booking"].URL+"/api/v1/booking", nil)
			msg, _ := b["error"].(string)
			if code != tt.wantCode || b["service"] != "booking" {
				t.Fatalf("GET /api/v1/booking = %d %v; want %d from booking", code, b, tt.wantCode)
			}
			for _, w := range tt.wantText {
				if !strings.Contains(msg, w) {
					t.Errorf("error = %q; want it to contain %q", msg, w)
				}
			}
			if up, _ := b["upstream"].(string); up != tt.wantUp {
				t.Errorf("upstream = %q; want %q", up, tt.wantUp)
			}
		})
	}
}

// TestBookingEnvHooks configures a service from the environment, as the
// tutorial does with kubectl set env, and checks the answers.
func TestBookingEnvHooks(t *testing.T) {
	tests := []struct {
		name      string
		env       map[string]string
		wantCode  int
		wantSlow  time.Duration // the answer takes at least this long
		wantError string
	}{
		{name: "defaults", wantCode: 200},
		{name: "fail all", env: map[string]string{"FAIL_PERCENT": "100"}, wantCode: 503, wantError: "FAIL_PERCENT=100"},
		{name: "fail none", env: map[string]string{"FAIL_PERCENT": "0"}, wantCode: 200},
		{name: "delay", env: map[string]string{"DELAY": "100ms"}, wantCode: 200, wantSlow: 100 * time.Millisecond},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for _, k := range []string{"FAIL_PERCENT", "DELAY", "VERSION", "POD_NAME", "POD_NAMESPACE"} {
				t.Setenv(k, tt.env[k])
			}
			c, _, err := configFromEnv([]string{"-role", "inventory"})
			if err != nil {
				t.Fatalf("configFromEnv: %v", err)
			}
			srv := httptest.NewServer(c.handler())
			t.Cleanup(srv.Close)
			start := time.Now()
			code, b := get(t, srv.URL+"/api/v1/inventory/lamp", nil)
			took := time.Since(start)
			if code != tt.wantCode || b["service"] != "inventory" || b["version"] != "v1" {
				t.Errorf("GET = %d %v; want %d from inventory v1", code, b, tt.wantCode)
			}
			if msg, _ := b["error"].(string); !strings.Contains(msg, tt.wantError) || (tt.wantError == "") != (msg == "") {
				t.Errorf("error = %q; want %q", msg, tt.wantError)
			}
			if took < tt.wantSlow {
				t.Errorf("answered in %v; want at least %v", took, tt.wantSlow)
			}
		})
	}
}

// TestBookingGracefulShutdown stops the server (as SIGTERM does) while a
// request is under way: the request is answered and serve returns cleanly.
func TestBookingGracefulShutdown(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	c := &config{role: "shipping", version: "v1", delay: 300 * time.Millisecond, client: http.DefaultClient}
	ctx, stop := context.WithCancel(context.Background())
	defer stop()
	done := make(chan error, 1)
	go func() { done <- serve(ctx, c, ln) }()
	answered := make(chan int, 1)
	go func() {
		resp, err := http.Get("http://" + ln.Addr().String() + "/api/v1/shipping/lamp")
		if err != nil {
			t.Errorf("request under way at shutdown: %v", err)
			answered <- 0
			return
		}
		resp.Body.Close()
		answered <- resp.StatusCode
	}()
	time.Sleep(100 * time.Millisecond) // the request is in the handler's DELAY
	stop()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("serve = %v; want nil after a clean shutdown", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("serve did not return within 5s of shutdown")
	}
	select {
	case code := <-answered:
		if code != 200 {
			t.Errorf("request under way at shutdown = %d; want 200", code)
		}
	default:
		t.Error("serve returned before the request under way was answered")
		<-answered // the client goroutine must not outlive the test
	}
	if _, err := net.DialTimeout("tcp", ln.Addr().String(), time.Second); err == nil {
		t.Error("still accepting connections after shutdown")
	}
}

func TestBookingConfig(t *testing.T) {
	tests := []struct {
		env     map[string]string
		args    []string
		wantErr string
	}{
		{args: []string{"-role", "order"}},
		{args: []string{"-role", "payments"}, wantErr: `-role "payments"`},
		{env: map[string]string{"ROLE": "shipping", "FAIL_PERCENT": "150"}, wantErr: "FAIL_PERCENT"},
		{env: map[string]string{"ROLE": "shipping", "DELAY": "soon"}, wantErr: "DELAY"},
	}
	for _, tt := range tests {
		for _, k := range []string{"ROLE", "FAIL_PERCENT", "DELAY"} {
			t.Setenv(k, tt.env[k])
		}
		_, _, err := configFromEnv(tt.args)
		if (err == nil) != (tt.wantErr == "") || (err != nil && !strings.Contains(err.Error(), tt.wantErr)) {
			t.Errorf("configFromEnv(%v, %v) = %v; want error containing %q", tt.env, tt.args, err, tt.wantErr)
		}
	}
}
