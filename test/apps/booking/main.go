// Command booking is the tutorial's sample application: one binary that
// plays one of four services, chosen by -role (or $ROLE):
//
//	booking   GET /api/v1/booking[/{item}]   calls order
//	order     GET /api/v1/order/{item}       calls inventory and shipping
//	inventory GET /api/v1/inventory/{item}
//	shipping  GET /api/v1/shipping/{item}
//
// Each answers JSON with its service name, version ($VERSION, from the pod's
// version label), pod ($POD_NAME) and namespace ($POD_NAMESPACE), and nests
// the answers of the services it called, so one request through the ingress
// shows which version of every service served it:
//
//	{"service":"booking","version":"v1","pod":"booking-v1-…","item":"book",
//	 "booking":{"item":"book","order":{…}},
//	 "order":{"service":"order",…,"inventory":{…},"shipping":{…}}}
//
// booking.order and order are the same answer: booking.order is the shape the
// tutorial documents, the top-level order is what test/e2e/mesh and
// test/scripts/demo.sh read. The headers that steer routing and tracing
// (end-user, x-request-id, traceparent, tracestate, authorization) are
// passed on to the services it calls. $FAIL_PERCENT answers that share of
// requests 503 and $DELAY waits before answering, for the tutorial's
// resilience steps. GET /healthz answers ok.
//
// It must stay a plain workload: no mesh logic, no Kubernetes API calls.
package main

import (
	"context"
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
	"os/signal"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// forwarded are the request headers passed on to the services called.
var forwarded = []string{"end-user", "x-request-id", "traceparent", "tracestate", "authorization"}

// maxBody bounds an answer read from another service.
const maxBody = 1 << 20

// config is one service's setup.
type config struct {
	role      string // booking, order, inventory or shipping
	version   string // answered as "version"; $VERSION, "v1" when unset
	pod       string // answered as "pod"; $POD_NAME, may be empty
	namespace string // answered as "namespace" when set; $POD_NAMESPACE

	failPercent int           // share of requests answered 503; 0 fails none
	delay       time.Duration // wait before answering; 0 answers at once

	// Base URLs (scheme and host, no path) of the services called; only the
	// ones the role calls are used.
	order, inventory, shipping string
	// client makes the calls; it must have a timeout.
	client *http.Client
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func configFromEnv(args []string) (*config, string, error) {
	fs := flag.NewFlagSet("booking", flag.ContinueOnError)
	// A connection per call: routing changes (a waypoint added, a new
	// VirtualService) apply to the next call at once. A long-lived
	// connection keeps the path it was opened on, in the mesh as anywhere.
	c := &config{client: &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true}}}
	fs.StringVar(&c.role, "role", os.Getenv("ROLE"), "booking, order, inventory or shipping (default $ROLE)")
	addr := fs.String("listen", ":"+envOr("PORT", "8080"), "listen address (default :$PORT or :8080)")
	if err := fs.Parse(args); err != nil {
		return nil, "", err
	}
	c.version, c.pod, c.namespace = envOr("VERSION", "v1"), os.Getenv("POD_NAME"), os.Getenv("POD_NAMESPACE")
	c.order = envOr("ORDER_URL", "http://order-service:8080")
	c.inventory = envOr("INVENTORY_URL", "http://inventory-service:8080")
	c.shipping = envOr("SHIPPING_URL", "http://shipping-service:8080")
	if v := os.Getenv("FAIL_PERCENT"); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil || n < 0 || n > 100 {
			return nil, "", fmt.Errorf("FAIL_PERCENT=%q: want an integer from 0 to 100", v)
		}
		c.failPercent = n
	}
	if v := os.Getenv("DELAY"); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d < 0 {
			return nil, "", fmt.Errorf("DELAY=%q: want a duration such as 200ms", v)
		}
		c.delay = d
	}
	switch c.role {
	case "booking", "order", "inventory", "shipping":
	default:
		return nil, "", fmt.Errorf("-role %q: want booking, order, inventory or shipping", c.role)
	}
	return c, *addr, nil
}

// handler serves the role's API.
func (c *config) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "ok\n") })
	api := "/api/v1/" + c.role
	mux.HandleFunc("GET "+api, c.serve)
	mux.HandleFunc("GET "+api+"/{item}", c.serve)
	return logRequests(mux)
}

// statusRecorder remembers the status a handler wrote, for the request log.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

func (r *statusRecorder) WriteHeader(code int) {
	r.status = code
	r.ResponseWriter.WriteHeader(code)
}

// logRequests writes one line per API request to the log (stderr): what a
// user reads with kubectl logs to see which version served what, mirrored
// requests included. Health checks are not logged.
func logRequests(h http.Handler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		rec := &statusRecorder{ResponseWriter: w, status: http.StatusOK}
		h.ServeHTTP(rec, r)
		if r.URL.Path != "/healthz" {
			log.Printf("request %s %q %d host=%q from=%s", r.Method, r.URL.Path, rec.status, r.Host, r.RemoteAddr)
		}
	})
}

func (c *config) serve(w http.ResponseWriter, r *http.Request) {
	if c.delay > 0 {
		select {
		case <-time.After(c.delay):
		case <-r.Context().Done():
			return
		}
	}
	if c.failPercent > 0 && rand.IntN(100) < c.failPercent {
		out := c.identity()
		out["error"] = fmt.Sprintf("failing on purpose (FAIL_PERCENT=%d)", c.failPercent)
		writeJSON(w, http.StatusServiceUnavailable, out)
		return
	}
	item := r.PathValue("item")
	if item == "" {
		item = "book"
	}
	out := c.identity()
	out["item"] = item
	switch c.role {
	case "booking":
		order, err := c.call(r, c.order, "order", item)
		if err != nil {
			writeError(w, c, err)
			return
		}
		out["booking"] = map[string]any{"item": item, "order": order}
		out["order"] = order
	case "order":
		inv, err := c.call(r, c.inventory, "inventory", item)
		if err != nil {
			writeError(w, c, err)
			return
		}
		ship, err := c.call(r, c.shipping, "shipping", item)
		if err != nil {
			writeError(w, c, err)
			return
		}
		out["inventory"], out["shipping"] = inv, ship
	case "inventory":
		out["inStock"] = 3 + len(item)%5
	case "shipping":
		out["days"] = 1 + len(item)%3
	}
	writeJSON(w, http.StatusOK, out)
}

// identity is the start of every answer: who served it.
func (c *config) identity() map[string]any {
	out := map[string]any{"service": c.role, "version": c.version, "pod": c.pod}
	if c.namespace != "" {
		out["namespace"] = c.namespace
	}
	return out
}

// upstreamError is a failed call to another service.
type upstreamError struct {
	service string
	status  int
	detail  string // the failed service's own error, when it said one
	err     error
}

func (e *upstreamError) Error() string {
	if e.err != nil {
		return fmt.Sprintf("%s: %v", e.service, e.err)
	}
	if e.detail != "" {
		return fmt.Sprintf("%s answered %d: %s", e.service, e.status, e.detail)
	}
	return fmt.Sprintf("%s answered %d", e.service, e.status)
}

// call GETs /api/v1/<service>/<item> from base with the forwarded headers.
func (c *config) call(in *http.Request, base, service, item string) (map[string]any, error) {
	req, err := http.NewRequestWithContext(in.Context(), http.MethodGet, strings.TrimSuffix(base, "/")+"/api/v1/"+service+"/"+item, nil)
	if err != nil {
		return nil, &upstreamError{service: service, err: err}
	}
	for _, h := range forwarded {
		if v := in.Header.Values(h); len(v) > 0 {
			req.Header[http.CanonicalHeaderKey(h)] = v
		}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		return nil, &upstreamError{service: service, err: err}
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, maxBody+1))
	if err != nil {
		return nil, &upstreamError{service: service, status: resp.StatusCode, err: fmt.Errorf("read answer: %w", err)}
	}
	if len(b) > maxBody {
		return nil, &upstreamError{service: service, status: resp.StatusCode, err: fmt.Errorf("answer larger than %d bytes", maxBody)}
	}
	var out map[string]any
	if resp.StatusCode != http.StatusOK {
		ue := &upstreamError{service: service, status: resp.StatusCode}
		if json.Unmarshal(b, &out) == nil {
			ue.detail, _ = out["error"].(string)
		}
		return nil, ue
	}
	if err := json.Unmarshal(b, &out); err != nil {
		return nil, &upstreamError{service: service, err: fmt.Errorf("answer is not JSON: %w", err)}
	}
	return out, nil
}

func writeError(w http.ResponseWriter, c *config, err error) {
	var ue *upstreamError
	body := c.identity()
	body["error"] = err.Error()
	if errors.As(err, &ue) {
		body["upstream"] = ue.service
		if ue.status != 0 {
			body["upstreamStatus"] = ue.status
		}
	}
	writeJSON(w, http.StatusBadGateway, body)
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// shutdownGrace bounds how long in-flight requests may finish after SIGTERM;
// Kubernetes' default terminationGracePeriodSeconds is 30s.
const shutdownGrace = 10 * time.Second

// serve answers on ln until ctx is done, then stops taking connections and
// waits (up to shutdownGrace) for the requests under way to finish. It
// returns only once they have: Serve itself returns as soon as Shutdown
// starts, so returning from there would cut them off.
func serve(ctx context.Context, c *config, ln net.Listener) error {
	srv := &http.Server{Handler: c.handler(), ReadHeaderTimeout: 10 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.Serve(ln) }()
	select {
	case err := <-errc:
		return fmt.Errorf("serve: %w", err)
	case <-ctx.Done():
	}
	sctx, cancel := context.WithTimeout(context.Background(), shutdownGrace)
	defer cancel()
	if err := srv.Shutdown(sctx); err != nil {
		return fmt.Errorf("shut down: %w", err)
	}
	return nil
}

func main() {
	c, addr, err := configFromEnv(os.Args[1:])
	if err != nil {
		log.Fatalf("booking: %v", err)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		log.Fatalf("booking: listen on %s: %v", addr, err)
	}
	log.Printf("booking: %s %s serving on %s", c.role, c.version, ln.Addr())
	if err := serve(ctx, c, ln); err != nil {
		log.Fatalf("booking: %v", err)
	}
	log.Printf("booking: %s stopped", c.role)
}
