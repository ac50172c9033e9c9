package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"net"
	"net/http"
	"os"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"

	"github.com/meshlet/meshlet/pkg/admin"
	"github.com/meshlet/meshlet/waypoint"
)

// runStatic serves a static L7 configuration (waypoint.LoadConfigFile's
// JSON) on a plain HTTP listener, without meshd, HBONE or mesh identity:
// for developing routes and for benchmarking the proxy against others on
// the same path. Never a production mode: nothing is authenticated.
//
// --admin-addr serves pprof here as in mesh mode, so that the benchmark can
// profile the proxy under load.
func runStatic(ctx context.Context, f flags) error {
	path, listen, metricsAddr := f.configFile, f.listen, f.metricsAddr
	cfg, err := waypoint.LoadConfigFile(path)
	if err != nil {
		return err
	}
	reg := prometheus.NewRegistry()
	opts := waypoint.Options{Config: cfg, Registerer: reg}
	if f.accessLog {
		opts.AccessLog = os.Stdout
	}
	p, err := waypoint.New(opts)
	if err != nil {
		return fmt.Errorf("--config-file %s: %w", path, err)
	}
	if f.adminAddr != "" {
		if err := admin.Serve(ctx, f.adminAddr, admin.Options{Pprof: true}); err != nil {
			return err
		}
	}
	ln, err := net.Listen("tcp", listen)
	if err != nil {
		return fmt.Errorf("--listen %s: %w", listen, err)
	}
	if metricsAddr != "" {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		srv := &http.Server{Addr: metricsAddr, Handler: mux, ReadHeaderTimeout: 5 * time.Second}
		go func() { _ = srv.ListenAndServe() }()
		defer srv.Close()
	}
	go admin.KeepLean(ctx, func() bool { return true }, log.Printf)
	err = p.Serve(ctx, ln, waypoint.ServerOptions{})
	if errors.Is(err, net.ErrClosed) || ctx.Err() != nil {
		return nil
	}
	return err
}
