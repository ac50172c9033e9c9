package cni

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"time"
)

// ServerOptions configures the agent's end of the plugin's socket.
type ServerOptions struct {
	// SocketPath is where to listen. Empty means DefaultSocketPath. A stale
	// socket file left by a previous agent is replaced.
	SocketPath string
	// Add handles a pod the plugin reports on ADD. Required.
	Add func(ctx context.Context, ev PodEvent) Verdict
	// Check handles CHECK. Nil means: answer as Add would without acting,
	// which is simply Verdict{} (nothing to report).
	Check func(ctx context.Context, ev PodEvent) Verdict
	// Del handles a pod going away. Nil means ignore.
	Del func(ctx context.Context, ev PodEvent)
}

// Server serves the plugin's requests on a unix socket.
type Server struct {
	opts ServerOptions
	ln   net.Listener
	file os.FileInfo // the socket file as bound, to tell it from a successor's
	srv  *http.Server
}

// Listen creates the socket (mode 0600: only root talks to the agent) and
// returns a Server ready to Serve.
func Listen(opts ServerOptions) (*Server, error) {
	if opts.Add == nil {
		return nil, errors.New("cni server: ServerOptions.Add is required")
	}
	if opts.SocketPath == "" {
		opts.SocketPath = DefaultSocketPath
	}
	if err := os.MkdirAll(filepath.Dir(opts.SocketPath), 0o755); err != nil {
		return nil, fmt.Errorf("create socket dir: %w", err)
	}
	if err := os.Remove(opts.SocketPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("remove stale socket: %w", err)
	}
	ln, err := net.Listen("unix", opts.SocketPath)
	if err != nil {
		return nil, fmt.Errorf("listen on %s: %w", opts.SocketPath, err)
	}
	if err := os.Chmod(opts.SocketPath, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("chmod %s: %w", opts.SocketPath, err)
	}
	// During a rolling update the next agent binds this path while this one
	// drains: only the agent whose socket the path still is may remove it.
	if ul, ok := ln.(*net.UnixListener); ok {
		ul.SetUnlinkOnClose(false)
	}
	st, err := os.Stat(opts.SocketPath)
	if err != nil {
		ln.Close()
		return nil, fmt.Errorf("stat %s: %w", opts.SocketPath, err)
	}
	s := &Server{opts: opts, ln: ln, file: st}
	mux := http.NewServeMux()
	mux.HandleFunc("POST "+pathAdd, s.handle(opts.Add))
	mux.HandleFunc("POST "+pathCheck, s.handle(func(ctx context.Context, ev PodEvent) Verdict {
		if opts.Check == nil {
			return Verdict{}
		}
		return opts.Check(ctx, ev)
	}))
	mux.HandleFunc("POST "+pathDel, s.handle(func(ctx context.Context, ev PodEvent) Verdict {
		if opts.Del != nil {
			opts.Del(ctx, ev)
		}
		return Verdict{}
	}))
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Serve answers requests until Close. It returns nil after Close.
func (s *Server) Serve() error {
	if err := s.srv.Serve(s.ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		return fmt.Errorf("serve cni socket: %w", err)
	}
	return nil
}

// Close stops the server and removes the socket file, unless another
// agent has bound the path since (the new agent of a rolling update).
func (s *Server) Close() error {
	err := s.srv.Close()
	if st, serr := os.Stat(s.opts.SocketPath); serr == nil && os.SameFile(st, s.file) {
		if rerr := os.Remove(s.opts.SocketPath); rerr != nil && !errors.Is(rerr, os.ErrNotExist) {
			err = errors.Join(err, rerr)
		}
	}
	return err
}

func (s *Server) handle(f func(context.Context, PodEvent) Verdict) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		var ev PodEvent
		if err := json.NewDecoder(io.LimitReader(r.Body, 1<<20)).Decode(&ev); err != nil {
			http.Error(w, "decode pod event: "+err.Error(), http.StatusBadRequest)
			return
		}
		v := f(r.Context(), ev)
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(v)
	}
}
