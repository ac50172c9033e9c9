package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"time"
)

// runAuthz serves an HTTP external authorizer (Envoy's ext_authz HTTP
// service, as Istio's ext-authz sample): a request carrying
// "x-ext-authz: allow" is allowed, with x-ext-authz-check-result: allowed
// and x-user (the x-ext-authz-user header, else "allowed-user") for the
// proxy to pass on; anything else is denied with 403. Each check is logged.
func runAuthz(ctx context.Context, args []string, log io.Writer) error {
	fs := flag.NewFlagSet("echo authz", flag.ContinueOnError)
	addr := fs.String("http", "8000", "port or address to serve checks on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", listenAddr(*addr))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") })
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		verdict := "denied"
		if r.Header.Get("X-Ext-Authz") == "allow" {
			verdict = "allowed"
			user := r.Header.Get("X-Ext-Authz-User")
			if user == "" {
				user = "allowed-user"
			}
			w.Header().Set("X-User", user)
		}
		w.Header().Set("X-Ext-Authz-Check-Result", verdict)
		fmt.Fprintf(log, "check %s %s host %s: %s\n", r.Method, r.URL.RequestURI(), r.Host, verdict)
		if verdict == "denied" {
			w.WriteHeader(http.StatusForbidden)
			io.WriteString(w, "denied by ext_authz for not having correct header")
		}
	})
	s := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		_ = s.Shutdown(sctx)
	}()
	if err := s.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return err
	}
	return nil
}
