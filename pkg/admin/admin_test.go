package admin

import (
	"context"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"testing"
)

// TestServeAdminEndpoints: the handlers given are served at their paths,
// pprof only when asked for.
func TestServeAdminEndpoints(t *testing.T) {
	for _, pprofToo := range []bool{false, true} {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := ln.Addr().String()
		ln.Close()
		ctx, cancel := context.WithCancel(context.Background())
		t.Cleanup(cancel)
		dump := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "dump") })
		if err := Serve(ctx, addr, Options{Pprof: pprofToo, Handlers: map[string]http.Handler{"/config_dump": dump}}); err != nil {
			t.Fatal(err)
		}
		get := func(path string) (int, string) {
			t.Helper()
			res, err := http.Get("http://" + addr + path)
			if err != nil {
				t.Fatal(err)
			}
			defer res.Body.Close()
			b, _ := io.ReadAll(res.Body)
			return res.StatusCode, string(b)
		}
		if code, body := get("/config_dump"); code != 200 || body != "dump" {
			t.Errorf("pprof %v: /config_dump = %d %q; want 200 \"dump\"", pprofToo, code, body)
		}
		want := http.StatusNotFound
		if pprofToo {
			want = http.StatusOK
		}
		if code, _ := get("/debug/pprof/"); code != want {
			t.Errorf("pprof %v: /debug/pprof/ = %d; want %d", pprofToo, code, want)
		}
		cancel()
	}
}

func TestServeAdminRefusesNonLoopback(t *testing.T) {
	tests := []struct {
		addr    string
		wantErr string
	}{
		{"0.0.0.0:0", "not a loopback address"},
		{":0", "not a loopback address"},
		{"198.18.0.1:0", "not a loopback address"},
		{"nonsense", "not host:port"},
		{"127.0.0.1:0", ""},
	}
	for _, tt := range tests {
		t.Run(tt.addr, func(t *testing.T) {
			ctx, cancel := context.WithCancel(context.Background())
			t.Cleanup(cancel)
			err := Serve(ctx, tt.addr, Options{})
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Serve(%q) = %v; want nil", tt.addr, err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Serve(%q) = %v; want an error containing %q", tt.addr, err, tt.wantErr)
			}
		})
	}
}

func TestMemoryLimit(t *testing.T) {
	files := func(m map[string]string) func(string) ([]byte, error) {
		return func(name string) ([]byte, error) {
			if v, ok := m[name]; ok {
				return []byte(v), nil
			}
			return nil, os.ErrNotExist
		}
	}
	const v2, v1 = "/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"
	tests := []struct {
		flag    string
		env     string
		cgroup  map[string]string
		want    int64
		wantErr bool
	}{
		{flag: "auto", cgroup: map[string]string{v2: "1000\n"}, want: 900},
		{flag: "auto", cgroup: map[string]string{v2: "max\n"}, want: 0},
		{flag: "auto", cgroup: map[string]string{v1: "2000\n"}, want: 1800},
		{flag: "auto", cgroup: map[string]string{v1: "9223372036854771712\n"}, want: 0},
		{flag: "auto", env: "100MiB", cgroup: map[string]string{v2: "1000\n"}, want: 0},
		{flag: "auto", want: 0},
		{flag: "none", cgroup: map[string]string{v2: "1000\n"}, want: 0},
		{flag: "64MiB", want: 64 << 20},
		{flag: "1GiB", want: 1 << 30},
		{flag: "12345", want: 12345},
		{flag: "64MB", wantErr: true},
		{flag: "-1", wantErr: true},
	}
	for _, tt := range tests {
		getenv := func(k string) string {
			if k == "GOMEMLIMIT" {
				return tt.env
			}
			return ""
		}
		got, _, err := memoryLimit(tt.flag, getenv, files(tt.cgroup))
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("memoryLimit(%q, GOMEMLIMIT=%q, %v) = %d, %v; want %d (error %v)", tt.flag, tt.env, tt.cgroup, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestApplyGCPercent(t *testing.T) {
	gc := 100
	set := func(n int) int { old := gc; gc = n; return old }
	if n, from := applyGCPercent(50, func(string) string { return "" }, set); n != 50 || gc != 50 || from != "default" {
		t.Errorf("no $GOGC: %d from %s, runtime at %d; want 50 from default", n, from, gc)
	}
	gc = 200 // as the runtime set it from $GOGC=200
	if n, from := applyGCPercent(50, func(k string) string {
		if k == "GOGC" {
			return "200"
		}
		return ""
	}, set); n != 200 || gc != 200 || from != "$GOGC" {
		t.Errorf("$GOGC=200: %d from %s, runtime at %d; want 200 from $GOGC, unchanged", n, from, gc)
	}
}
