package kubelet

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	corev1 "k8s.io/api/core/v1"
)

// APIPort is the kubelet API port the API server reaches for `kubectl logs`
// and `kubectl port-forward`.
const APIPort = 10250

// serveAPI serves the part of the kubelet API the lab has on NodeIP:10250
// over TLS: container logs, so `kubectl logs [-f] [--tail N]` works, and
// port-forward, so `kubectl port-forward` (and client-go's portforward)
// reaches ports on a pod's loopback (see podForwarder). Only a client
// certificate from the lab CA in the group system:masters (the API server's
// kubelet client) gets in. No exec or attach.
func (k *kubelet) serveAPI(ctx context.Context) error {
	_, err := k.serveAPIAt(ctx, net.JoinHostPort(k.cfg.NodeIP, strconv.Itoa(APIPort)))
	return err
}

// serveAPIAt serves the kubelet API on addr until ctx is done and returns the
// address it listens on (nil when the API is not configured). Its goroutines,
// port-forwards included, are in k.wg: when ctx is done the server and every
// port-forward connection are closed.
func (k *kubelet) serveAPIAt(ctx context.Context, addr string) (net.Addr, error) {
	if k.cfg.ServingCert == "" || k.cfg.ServingKey == "" || k.cfg.ClientCA == "" {
		return nil, nil // not configured: the lab's records are the only way to logs
	}
	cert, err := tls.LoadX509KeyPair(k.cfg.ServingCert, k.cfg.ServingKey)
	if err != nil {
		return nil, fmt.Errorf("load kubelet serving certificate: %w", err)
	}
	caPEM, err := os.ReadFile(k.cfg.ClientCA)
	if err != nil {
		return nil, fmt.Errorf("read kubelet client CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("client CA %s holds no certificate", k.cfg.ClientCA)
	}
	fwd := &forwards{k: k}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /containerLogs/{namespace}/{pod}/{container}", k.containerLogs)
	// The paths a kubelet serves and the API server's pods/portforward
	// proxies to (/portForward/<namespace>/<pod>); the uid form is the
	// kubelet's too.
	for _, p := range []string{"/portForward/{namespace}/{pod}", "/portForward/{namespace}/{pod}/{uid}"} {
		mux.HandleFunc("GET "+p, fwd.serve)
		mux.HandleFunc("POST "+p, fwd.serve)
	}
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok") })
	srv := &http.Server{
		Handler:           onlyMasters(mux),
		ReadHeaderTimeout: 10 * time.Second,
		TLSConfig:         &tls.Config{Certificates: []tls.Certificate{cert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS12},
		BaseContext:       func(net.Listener) context.Context { return ctx },
	}
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("listen for the kubelet API: %w", err)
	}
	k.wg.Add(2)
	go func() {
		defer k.wg.Done()
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		_ = srv.Close() // followers still streaming
		// Port-forward connections were taken over from srv (which does
		// not close them); each closes when ctx is done.
		fwd.closeAndWait()
	}()
	go func() {
		defer k.wg.Done()
		if err := srv.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			k.logf("kubelet API: %v", err)
		}
	}()
	return ln.Addr(), nil
}

func onlyMasters(next http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.TLS == nil || len(r.TLS.PeerCertificates) == 0 || !slices.Contains(r.TLS.PeerCertificates[0].Subject.Organization, "system:masters") {
			http.Error(w, "forbidden: only the API server's kubelet client may use the lab kubelet API", http.StatusForbidden)
			return
		}
		next.ServeHTTP(w, r)
	})
}

// logFile finds the log of a container of a pod this kubelet runs.
func (k *kubelet) logFile(ns, pod, container string) (string, error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for uid, w := range k.workers {
		p := w.currentPod()
		if p.Namespace != ns || p.Name != pod {
			continue
		}
		for _, c := range append(append([]corev1.Container(nil), p.Spec.InitContainers...), p.Spec.Containers...) {
			if c.Name == container {
				return filepath.Join(k.cfg.LogDir, fmt.Sprintf("%s_%s_%s", ns, pod, uid), container+".log"), nil
			}
		}
		return "", fmt.Errorf("container %q is not in pod %s/%s", container, ns, pod)
	}
	return "", fmt.Errorf("pod %s/%s does not run on node %s", ns, pod, k.cfg.NodeName)
}

// containerLogs answers kubectl logs: tailLines, limitBytes and follow.
func (k *kubelet) containerLogs(w http.ResponseWriter, r *http.Request) {
	path, err := k.logFile(r.PathValue("namespace"), r.PathValue("pod"), r.PathValue("container"))
	if err != nil {
		http.Error(w, err.Error(), http.StatusNotFound)
		return
	}
	q := r.URL.Query()
	tail, limit := -1, int64(-1)
	if v := q.Get("tailLines"); v != "" {
		if tail, err = strconv.Atoi(v); err != nil || tail < 0 {
			http.Error(w, "tailLines: want a non-negative integer", http.StatusBadRequest)
			return
		}
	}
	if v := q.Get("limitBytes"); v != "" {
		if limit, err = strconv.ParseInt(v, 10, 64); err != nil || limit <= 0 {
			http.Error(w, "limitBytes: want a positive integer", http.StatusBadRequest)
			return
		}
	}
	f, err := os.Open(path)
	if errors.Is(err, os.ErrNotExist) {
		w.Header().Set("Content-Type", "text/plain")
		return // not started yet: empty, as a kubelet answers
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	defer f.Close()
	if tail >= 0 {
		if err := seekTail(f, tail); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
	}
	w.Header().Set("Content-Type", "text/plain")
	var out io.Writer = w
	if limit > 0 {
		out = &limitWriter{w: w, left: limit}
	}
	if _, err := io.Copy(out, f); err != nil || q.Get("follow") != "true" {
		return
	}
	flusher, _ := w.(http.Flusher)
	for {
		if flusher != nil {
			flusher.Flush()
		}
		select {
		case <-r.Context().Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
		if _, err := io.Copy(out, f); err != nil {
			return
		}
	}
}

// seekTail positions f at the start of its last n lines.
func seekTail(f *os.File, n int) error {
	st, err := f.Stat()
	if err != nil {
		return err
	}
	size := st.Size()
	if n == 0 {
		_, err := f.Seek(size, io.SeekStart)
		return err
	}
	const chunk = 64 << 10
	pos, lines := size, 0
	buf := make([]byte, chunk)
	for pos > 0 {
		step := min(int64(chunk), pos)
		pos -= step
		if _, err := f.ReadAt(buf[:step], pos); err != nil && !errors.Is(err, io.EOF) {
			return err
		}
		b := buf[:step]
		for i := len(b) - 1; i >= 0; i-- {
			if b[i] != '\n' || pos+int64(i) == size-1 {
				continue
			}
			if lines++; lines == n {
				_, err := f.Seek(pos+int64(i)+1, io.SeekStart)
				return err
			}
		}
		if bytes.Count(b, []byte{'\n'}) == 0 && pos == 0 {
			break
		}
	}
	_, err = f.Seek(0, io.SeekStart)
	return err
}

type limitWriter struct {
	w    io.Writer
	left int64
}

func (l *limitWriter) Write(p []byte) (int, error) {
	if l.left <= 0 {
		return 0, io.EOF
	}
	if int64(len(p)) > l.left {
		p = p[:l.left]
	}
	n, err := l.w.Write(p)
	l.left -= int64(n)
	if err == nil && l.left <= 0 {
		err = io.EOF
	}
	return n, err
}
