package main

import (
	"io"
	corev1 "k8s.io/api/core/v1"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"
)

func TestHealthAndAdmin(t *testing.T) {
	cfg, err := parseFlags(nil)
	if err != nil {
		t.Fatalf("parseFlags(nil): %v", err)
	}
	var ready bool
	servers := newHTTPServers(cfg, prometheus.NewRegistry(), func() any { return []string{"agent-1"} }, func() bool { return ready }, func() []*corev1.Pod { return nil })
	byAddr := map[string]http.Handler{}
	for _, s := range servers {
		byAddr[s.Addr] = s.Handler
	}
	get := func(addr, path string) (int, string) {
		t.Helper()
		h, ok := byAddr[addr]
		if !ok {
			t.Fatalf("no server on %s; have %v", addr, byAddr)
		}
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, path, nil))
		body, _ := io.ReadAll(rec.Result().Body)
		return rec.Code, string(body)
	}

	if code, _ := get(":15021", "/healthz/ready"); code != http.StatusServiceUnavailable {
		t.Errorf("ready before the first model = %d; want 503", code)
	}
	ready = true
	if code, _ := get(":15021", "/healthz/ready"); code != http.StatusOK {
		t.Errorf("ready after the first model = %d; want 200", code)
	}
	if code, _ := get(":15021", "/healthz/live"); code != http.StatusOK {
		t.Errorf("live = %d; want 200", code)
	}
	if code, body := get("127.0.0.1:15000", "/debug/xds"); code != http.StatusOK || !strings.Contains(body, "agent-1") {
		t.Errorf("/debug/xds = %d %q; want 200 with the client list", code, body)
	}
	if code, _ := get(":15014", "/debug/xds"); code != http.StatusNotFound {
		t.Errorf("/debug/xds on the metrics port = %d; want 404 (debug is loopback only)", code)
	}
}

func TestAdminAddrMustBeLoopback(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr bool
	}{
		{"127.0.0.1:15000", false},
		{"[::1]:15000", false},
		{"localhost:15000", false},
		{":15000", true},
		{"0.0.0.0:15000", true},
		{"198.18.0.5:15000", true},
		{"nonsense", true},
	}
	for _, tt := range tests {
		_, err := parseFlags([]string{"--admin-addr", tt.addr})
		if (err != nil) != tt.wantErr {
			t.Errorf("parseFlags(--admin-addr %q) error = %v; want error %v", tt.addr, err, tt.wantErr)
		}
	}
}
