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

// Options say what an admin server serves, and to whom.
type Options struct {
	// Pprof adds /debug/pprof/.
	Pprof bool
	// Handlers are served at their paths.
	Handlers map[string]http.Handler
	// RootPeersOnly answers only connections from sockets owned by root
	// (uid 0), found with sock_diag; others get 403. For a process in the
	// host's network namespace (the node agent), whose loopback every
	// process and hostNetwork pod of the node shares: the kubelet's
	// port-forward (dialled by the container runtime) and root on the node
	// get in, an unprivileged process does not. Linux only; elsewhere every
	// request is refused.
	RootPeersOnly bool
}

// Serve serves the admin endpoints on addr until ctx ends, and only on a
// loopback address: they expose configuration and, with pprof, memory
// contents, and must never be reachable from the network.
func Serve(ctx context.Context, addr string, o Options) error {
	if err := CheckAddr(addr); err != nil {
		return err
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return fmt.Errorf("listen for admin on %s: %w", addr, err)
	}
	mux := http.NewServeMux()
	if o.Pprof {
		mux.HandleFunc("/debug/pprof/", pprof.Index)
		mux.HandleFunc("/debug/pprof/profile", pprof.Profile)
		mux.HandleFunc("/debug/pprof/trace", pprof.Trace)
	}
	for path, h := range o.Handlers {
		mux.Handle(path, h)
	}
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	if o.RootPeersOnly {
		srv.ConnContext = func(ctx context.Context, c net.Conn) context.Context {
			uid, err := peerUID(c)
			return context.WithValue(ctx, peerKey{}, peer{uid, err})
		}
		srv.Handler = rootOnly(mux)
	}
	go func() { _ = srv.Serve(ln) }()
	go func() {
		<-ctx.Done()
		_ = srv.Close()
	}()
	return nil
}

type peerKey struct{}

// peer is the owner of a connection's other end.
type peer struct {
	uid uint32
	err error
}

func rootOnly(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p, _ := r.Context().Value(peerKey{}).(peer)
		switch {
		case p.err != nil:
			http.Error(w, "admin: cannot tell who is asking ("+p.err.Error()+"): answered to root on the node only", http.StatusForbidden)
		case p.uid != 0:
			http.Error(w, fmt.Sprintf("admin: answered to root on the node only (this connection's owner is uid %d); use kubectl port-forward or meshctl agent-config", p.uid), http.StatusForbidden)
		default:
			next.ServeHTTP(w, r)
		}
	})
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
