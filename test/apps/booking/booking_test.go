package main

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"
)

// chain starts the four services on loopback, wired to each other; fail
// configures one role's FAIL_PERCENT.
func chain(t *testing.T, versions map[string]string, fail map[string]int) map[string]*httptest.Server {
	t.Helper()
	srv := map[string]*httptest.Server{}
	cfgs := map[string]*config{}
	for _, role := range []string{"inventory", "shipping", "order", "booking"} {
		v := versions[role]
		if v == "" {
			v = "v1"
		}
		c := &config{role: role, version: v, pod: role + "-pod", failPercent: fail[role], client: &http.Client{Timeout: 5 * time.Second}}
		cfgs[role] = c
		srv[role] = httptest.NewServer(c.handler())
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
	srv := chain(t, map[string]string{"order": "v2"}, nil)
	code, b := get(t, srv["booking"].URL+"/api/v1/booking/lamp", nil)
	if code != 200 {
		t.Fatalf("booking answered %d: %v", code, b)
	}
	order, _ := b["order"].(map[string]any)
	inv, _ := order["inventory"].(map[string]any)
	ship, _ := order["shipping"].(map[string]any)
	tests := []struct {
		name     string
		got      map[string]any
		service  string
		version  string
		extraKey string
	}{
		{"booking", b, "booking", "v1", "order"},
		{"order", order, "order", "v2", "inventory"},
		{"inventory", inv, "inventory", "v1", "inStock"},
		{"shipping", ship, "shipping", "v1", "days"},
	}
	for _, tt := range tests {
		if tt.got["service"] != tt.service || tt.got["version"] != tt.version || tt.got["item"] != "lamp" || tt.got[tt.extraKey] == nil {
			t.Errorf("%s answer = %v; want service %s version %s item lamp and %s", tt.name, tt.got, tt.service, tt.version, tt.extraKey)
		}
	}
	if code, b := get(t, srv["booking"].URL+"/api/v1/booking", nil); code != 200 || b["item"] != "book" {
		t.Errorf("booking without an item = %d %v; want 200 and item book", code, b)
	}
	if resp, err := http.Get(srv["booking"].URL + "/healthz"); err != nil || resp.StatusCode != 200 {
		t.Errorf("healthz = %v, %v; want 200", resp, err)
	} else {
		resp.Body.Close()
	}
}

func TestBookingForwardsRoutingHeaders(t *testing.T) {
	seen := make(chan http.Header, 1)
	inv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		seen <- r.Header.Clone()
		writeJSON(w, 200, map[string]any{"service": "inventory"})
	}))
	t.Cleanup(inv.Close)
	ship := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { writeJSON(w, 200, map[string]any{}) }))
	t.Cleanup(ship.Close)
	order := httptest.NewServer((&config{role: "order", version: "v1", inventory: inv.URL, shipping: ship.URL, client: http.DefaultClient}).handler())
	t.Cleanup(order.Close)
	code, _ := get(t, order.URL+"/api/v1/order/x", map[string]string{"end-user": "jason", "authorization": "Bearer t", "traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "cookie": "secret=1"})
	if code != 200 {
		t.Fatalf("order answered %d", code)
	}
	h := <-seen
	for k, want := range map[string]string{"End-User": "jason", "Authorization": "Bearer t", "Traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "Cookie": ""} {
		if got := h.Get(k); got != want {
			t.Errorf("inventory saw %s = %q; want %q", k, got, want)
		}
	}
}

func TestBookingFailures(t *testing.T) {
	tests := []struct {
		name     string
		fail     map[string]int
		wantCode int
		wantText string
	}{
		{"inventory failing: booking says which service", map[string]int{"inventory": 100}, http.StatusBadGateway, "inventory answered 503"},
		{"booking itself failing", map[string]int{"booking": 100}, http.StatusServiceUnavailable, "FAIL_PERCENT"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := chain(t, nil, tt.fail)
			code, b := get(t, srv["booking"].URL+"/api/v1/booking", nil)
			if code != tt.wantCode || !strings.Contains(b["error"].(string), tt.wantText) {
				t.Errorf("= %d %v; want %d with %q", code, b, tt.wantCode, tt.wantText)
			}
		})
	}
	// A service that is down is named too.
	srv := chain(t, nil, nil)
	srv["shipping"].Close()
	if code, b := get(t, srv["booking"].URL+"/api/v1/booking", nil); code != http.StatusBadGateway || !strings.Contains(b["error"].(string), "shipping") {
		t.Errorf("shipping down = %d %v; want 502 naming shipping", code, b)
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
