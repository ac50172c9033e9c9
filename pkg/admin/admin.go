// Package admin holds the process-level knobs every meshlet daemon shares:
// the admin endpoint (config dump, pprof), served on loopback only, and the
// Go runtime's soft memory limit.
package admin

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/pprof"
	"time"
)

// Serve serves the admin endpoints on addr until ctx ends, and only on a
// loopback address: they expose configuration and, with pprof, memory
// contents, and must never be reachable from the network. handlers are
// served at their paths; pprof adds /debug/pprof/.
func Serve(ctx context.Context, addr string, pprofToo bool, handlers map[string]http.Handler) error {
	if err := CheckAddr(addr); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for admin on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	if pprofToo {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for path, h := range handlers {
		mux.Handle(path, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return nil
}

// CheckAddr refuses an admin address that is not host:port on loopback.
func CheckAddr(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("admin address %q is not host:port: %w", addr, err)
	}
	if ip := net.ParseIP(host); host != "localhost" && (ip == nil || !ip.IsLoopback()) {
		return fmt.Errorf("admin address %q is not a loopback address: debug endpoints are served on localhost only", addr)
	}
	return nil
}
