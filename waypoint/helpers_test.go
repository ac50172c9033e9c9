package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// backend starts a loopback HTTP server and returns its host:port.
func backend(t testing.TB, h http.Handler) string {
	t.Helper()
	s := httptest.NewServer(h)
	t.Cleanup(s.Close)
	return s.Listener.Addr().String()
}

// tcpBackend starts a loopback TCP server that runs handle on each
// connection (in its own goroutine, closing it after) and returns its
// host:port.
func tcpBackend(t testing.TB, handle func(c net.Conn)) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); handle(c) }()
		}
	}()
	return l.Addr().String()
}

// named answers with its name and counts requests.
type named struct {
	name string
	mu   sync.Mutex
	n    int
	last *http.Request
}

func (b *named) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	b.mu.Lock()
	b.n++
	b.last = r.Clone(context.Background())
	b.mu.Unlock()
	io.Copy(io.Discard, r.Body)
	fmt.Fprint(w, b.name)
}

func (b *named) count() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.n
}

func (b *named) lastRequest() *http.Request {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.last
}

// syncBuffer is an access log sink safe for concurrent writes.
type syncBuffer struct{ testutil.Buffer }

// lines returns the access log entries.
func (s *syncBuffer) lines(t testing.TB) []accessLogLine {
	t.Helper()
	var out []accessLogLine
	sc := bufio.NewScanner(bytes.NewReader(s.Bytes()))
	for sc.Scan() {
		var l accessLogLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("access log line %q: %v", sc.Text(), err)
		}
		out = append(out, l)
	}
	return out
}

func (s *syncBuffer) countFlag(t testing.TB, flag string) int {
	n := 0
	for _, l := range s.lines(t) {
		for _, f := range strings.Split(l.ResponseFlags, ",") {
			if f == flag {
				n++
			}
		}
	}
	return n
}

type harness struct {
	proxy *Proxy
	addr  string
	reg   *prometheus.Registry
	log   *syncBuffer
	url   string
}

// start runs a Proxy with cfg on a loopback listener.
func start(t testing.TB, cfg *Config, mutate func(o *Options)) *harness {
	t.Helper()
	h := &harness{reg: prometheus.NewRegistry(), log: &syncBuffer{}}
	opts := Options{Config: cfg, Registerer: h.reg, AccessLog: h.log}
	if mutate != nil {
		mutate(&opts)
	}
	p, err := New(opts)
	if err != nil {
		t.Fatalf("New() = %v", err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		if err := p.Serve(ctx, l, ServerOptions{DetectTimeout: 200 * time.Millisecond}); err != nil {
			t.Errorf("Serve() = %v", err)
		}
	}()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	h.proxy, h.addr, h.url = p, l.Addr().String(), "http://"+l.Addr().String()
	return h
}

// get sends a GET through the proxy and returns status and body.
func (h *harness) get(t testing.TB, client *http.Client, path string, hdr map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodGet, h.url+path, nil)
	if err != nil {
		t.Fatal(err)
	}
	req.Host = "reviews.default.svc.cluster.local"
	for k, v := range hdr {
		if k == "Host" {
			req.Host = v
			continue
		}
		req.Header.Set(k, v)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", path, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func newClient(t testing.TB) *http.Client {
	t.Helper()
	tr := &http.Transport{MaxIdleConnsPerHost: 64}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second}
}

// oneRoute builds a config with one catch-all virtual host.
func oneRoute(clusters []model.L7Cluster, routes ...model.L7Route) *Config {
	return &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", VirtualHosts: []model.VirtualHost{{
			Name: "reviews", Domains: []string{"*"}, Routes: routes,
		}}}},
		Clusters: clusters,
	}}
}

func clusterOf(name string, addrs ...string) model.L7Cluster {
	c := model.L7Cluster{Name: name}
	for _, a := range addrs {
		c.Endpoints = append(c.Endpoints, model.L7Endpoint{Address: a})
	}
	return c
}

func to(cluster string) []model.WeightedDestination {
	return []model.WeightedDestination{{Cluster: cluster}}
}

var _ = policy.Allow

type dtoLabel = dto.LabelPair

// serve runs p with opts on a loopback listener and returns its address and
// a stop func that ends Serve, waits for it and closes p (also at cleanup).
func serve(t *testing.T, p *Proxy, opts ServerOptions) (string, func()) {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); p.Serve(ctx, l, opts) }()
	var once sync.Once
	stop := func() { once.Do(func() { cancel(); <-done; p.Close() }) }
	t.Cleanup(stop)
	return l.Addr().String(), stop
}

// startWith is serve for a Proxy with only cfg.
func startWith(t *testing.T, cfg *Config, opts ServerOptions) (string, func()) {
	t.Helper()
	p, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	return serve(t, p, opts)
}

// checkShare fails t unless hits of n is the share p (0..1) a weighted
// random choice should give, within five standard deviations of the
// binomial (one failure in ~1.7 million runs), which still tells a
// weight from its neighbours and from none.
func checkShare(t *testing.T, what string, hits, n int, p float64) {
	t.Helper()
	tol := 5 * math.Sqrt(float64(n)*p*(1-p))
	if want := float64(n) * p; math.Abs(float64(hits)-want) > tol {
		t.Errorf("%s: %d of %d (%.1f%%); want %.0f ± %.0f (%.0f%%)", what, hits, n, 100*float64(hits)/float64(n), want, tol, 100*p)
	}
}
