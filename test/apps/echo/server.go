package main

import (
	"context"
	"crypto/tls"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log"
	"math/rand/v2"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"time"

	"google.golang.org/grpc"

	"github.com/meshlet/meshlet/test/apps/echo/echopb"
)

// Identity is what the server knows about its pod, from the downward API.
type Identity struct {
	Pod       string // POD_NAME
	Namespace string // POD_NAMESPACE
	Version   string // VERSION (the pod's version label)
	Node      string // NODE_NAME
	PodIP     string // POD_IP
}

// identityFromEnv reads the pod identity the manifest passes as env.
func identityFromEnv() Identity {
	pod := os.Getenv("POD_NAME")
	if pod == "" {
		pod, _ = os.Hostname()
	}
	return Identity{
		Pod:       pod,
		Namespace: os.Getenv("POD_NAMESPACE"),
		Version:   os.Getenv("VERSION"),
		Node:      os.Getenv("NODE_NAME"),
		PodIP:     os.Getenv("POD_IP"),
	}
}

// Response is the JSON body of every HTTP answer (and what the client parses).
type Response struct {
	Pod        string            `json:"pod"`
	Namespace  string            `json:"namespace"`
	Version    string            `json:"version"`
	Node       string            `json:"node,omitempty"`
	PodIP      string            `json:"podIP,omitempty"`
	Protocol   string            `json:"protocol"`
	TLSServer  string            `json:"tlsServerName,omitempty"` // the SNI, on the HTTPS port
	Method     string            `json:"method,omitempty"`
	Host       string            `json:"host,omitempty"`
	Path       string            `json:"path,omitempty"`
	ClientAddr string            `json:"clientAddr"`
	Headers    map[string]string `json:"headers,omitempty"`
	Status     int               `json:"status"`
	BodyBytes  int64             `json:"bodyBytes"`
	Payload    string            `json:"payload,omitempty"`
	Error      string            `json:"error,omitempty"`
}

// maxPayload bounds ?size= so one request cannot make the server allocate
// without limit.
const maxPayload = 1 << 20

// behaviour is what a request asks the server to do, from the query string or
// the x-echo-* headers (the query wins).
type behaviour struct {
	status int           // ?status=503 / x-echo-status: answer with this code
	delay  time.Duration // ?delay=200ms / x-echo-delay
	fail   int           // ?fail=50 / x-echo-fail: percentage answered 503
	size   int           // ?size=N / x-echo-size: payload bytes in the answer
}

func param(r *http.Request, name string) string {
	if v := r.URL.Query().Get(name); v != "" {
		return v
	}
	return r.Header.Get("X-Echo-" + name)
}

// parseBehaviour reads the request's instructions; bad values are errors
// naming the parameter.
func parseBehaviour(r *http.Request) (behaviour, error) {
	var b behaviour
	if v := param(r, "status"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 100 || n > 599 {
			return b, fmt.Errorf("status=%q: want an HTTP code 100-599", v)
		}
		b.status = n
	}
	if v := param(r, "delay"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 || d > time.Minute {
			return b, fmt.Errorf("delay=%q: want a Go duration up to 1m, e.g. 200ms", v)
		}
		b.delay = d
	}
	if v := param(r, "fail"); v != "" {
		n, err := strconv.Atoi(strings.TrimSuffix(v, "%"))
		if err != nil || n < 0 || n > 100 {
			return b, fmt.Errorf("fail=%q: want a percentage 0-100", v)
		}
		b.fail = n
	}
	if v := param(r, "size"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > maxPayload {
			return b, fmt.Errorf("size=%q: want a byte count 0-%d", v, maxPayload)
		}
		b.size = n
	}
	return b, nil
}

// httpProtocol names the protocol a request came in on.
func httpProtocol(r *http.Request) string {
	switch {
	case r.ProtoMajor == 2 && r.TLS == nil:
		return "h2c"
	case r.ProtoMajor == 2:
		return "h2"
	case r.TLS != nil:
		// The HTTPS port: what a proxy originating TLS sent, and its SNI.
		return fmt.Sprintf("HTTP/%d.%d over TLS to %s", r.ProtoMajor, r.ProtoMinor, r.TLS.ServerName)
	default:
		return fmt.Sprintf("HTTP/%d.%d", r.ProtoMajor, r.ProtoMinor)
	}
}

// newHandler returns the HTTP handler: /healthz answers ok, every other path
// echoes.
func newHandler(id Identity) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("/healthz", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "text/plain")
		io.WriteString(w, "ok\n")
	})
	mux.HandleFunc("/ws", serveWebSocket(id))
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		resp := Response{
			Pod: id.Pod, Namespace: id.Namespace, Version: id.Version, Node: id.Node, PodIP: id.PodIP,
			Protocol: httpProtocol(r), Method: r.Method, Host: r.Host, Path: r.URL.Path,
			ClientAddr: r.RemoteAddr, Headers: map[string]string{}, Status: http.StatusOK,
		}
		if r.TLS != nil {
			resp.TLSServer = r.TLS.ServerName
		}
		for k, v := range r.Header {
			resp.Headers[k] = strings.Join(v, ",")
		}
		n, _ := io.Copy(io.Discard, io.LimitReader(r.Body, 64<<20))
		resp.BodyBytes = n
		b, err := parseBehaviour(r)
		if err != nil {
			resp.Status, resp.Error = http.StatusBadRequest, err.Error()
			writeJSON(w, resp)
			return
		}
		if b.delay > 0 {
			select {
			case <-time.After(b.delay):
			case <-r.Context().Done():
				return
			}
		}
		if b.status != 0 {
			resp.Status = b.status
		}
		if b.fail > 0 && rand.IntN(100) < b.fail {
			resp.Status, resp.Error = http.StatusServiceUnavailable, fmt.Sprintf("failed on purpose (fail=%d%%)", b.fail)
		}
		if b.size > 0 {
			resp.Payload = strings.Repeat("x", b.size)
		}
		writeJSON(w, resp)
	})
	return mux
}

func writeJSON(w http.ResponseWriter, resp Response) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Echo-Pod", resp.Pod)
	w.Header().Set("X-Echo-Version", resp.Version)
	w.WriteHeader(resp.Status)
	json.NewEncoder(w).Encode(resp)
}

// newHTTPServer serves HTTP/1.1 and h2c (HTTP/2 with prior knowledge) on one
// port, with net/http's own unencrypted HTTP/2 (x/net's h2c is deprecated).
func newHTTPServer(id Identity) *http.Server {
	var p http.Protocols
	p.SetHTTP1(true)
	p.SetUnencryptedHTTP2(true)
	return &http.Server{
		Handler:           newHandler(id),
		Protocols:         &p,
		ReadHeaderTimeout: 10 * time.Second,
	}
}

// newGRPCServer returns a gRPC server with the Echo service registered.
func newGRPCServer(id Identity) *grpc.Server {
	s := grpc.NewServer()
	echopb.RegisterEchoServer(s, &grpcEcho{id: id})
	return s
}

func envOr(name, def string) string {
	if v := os.Getenv(name); v != "" {
		return v
	}
	return def
}

// listenAddr turns a port or an address into an address to listen on.
func listenAddr(v string) string {
	if _, err := strconv.Atoi(v); err == nil {
		return ":" + v
	}
	return v
}

// runServe runs both servers until ctx is done.
func runServe(ctx context.Context, args []string) error {
	fs := flag.NewFlagSet("echo", flag.ContinueOnError)
	httpAddr := fs.String("http", envOr("HTTP_PORT", "8080"), "HTTP/1.1 + h2c port or address (env HTTP_PORT)")
	grpcAddr := fs.String("grpc", envOr("GRPC_PORT", "9090"), "gRPC port or address, empty to disable (env GRPC_PORT)")
	httpsAddr := fs.String("https", os.Getenv("HTTPS_PORT"), "HTTPS (HTTP/1.1 and h2) port or address, with the PEM certificate chain and key in $TLS_CERT and $TLS_KEY; empty to disable (env HTTPS_PORT)")
	if err := fs.Parse(args); err != nil {
		return err
	}
	id := identityFromEnv()
	hl, err := net.Listen("tcp", listenAddr(*httpAddr))
	if err != nil {
		return fmt.Errorf("listen http on %s: %w", *httpAddr, err)
	}
	hs := newHTTPServer(id)
	errc := make(chan error, 3)
	go func() { errc <- hs.Serve(hl) }()
	if *httpsAddr != "" {
		pair, err := tls.X509KeyPair([]byte(os.Getenv("TLS_CERT")), []byte(os.Getenv("TLS_KEY")))
		if err != nil {
			hs.Close()
			return fmt.Errorf("https on %s: $TLS_CERT and $TLS_KEY: %w", *httpsAddr, err)
		}
		tl, err := net.Listen("tcp", listenAddr(*httpsAddr))
		if err != nil {
			hs.Close()
			return fmt.Errorf("listen https on %s: %w", *httpsAddr, err)
		}
		ts := &http.Server{Handler: newHandler(id), ReadHeaderTimeout: 10 * time.Second,
			TLSConfig: &tls.Config{Certificates: []tls.Certificate{pair}}}
		go func() { errc <- ts.ServeTLS(tl, "", "") }()
		defer ts.Close()
	}
	var gs *grpc.Server
	if *grpcAddr != "" {
		gl, err := net.Listen("tcp", listenAddr(*grpcAddr))
		if err != nil {
			hs.Close()
			return fmt.Errorf("listen grpc on %s: %w", *grpcAddr, err)
		}
		gs = newGRPCServer(id)
		go func() { errc <- gs.Serve(gl) }()
	}
	log.Printf("echo %s/%s version %q: http on %s, grpc on %q", id.Namespace, id.Pod, id.Version, hl.Addr(), *grpcAddr)
	select {
	case <-ctx.Done():
	case err := <-errc:
		if !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve: %w", err)
		}
	}
	sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if gs != nil {
		gs.GracefulStop()
	}
	return hs.Shutdown(sctx)
}
