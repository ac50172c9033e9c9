package waypoint

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestRetryRateWindow: a rate budget's counts, on a clock of the test's
// making: a retry is allowed when, counting it, the retries are at most
// the percent of the requests over the interval; counts are forgotten
// once an interval old (by 1.1 intervals at most), never before; the
// minimum lets its retries through per its own interval.
func TestRetryRateWindow(t *testing.T) {
	now := time.Unix(1000, 0)
	clock := func() time.Time { return now }
	r := newRetryRate(&model.RetryBudget{Percent: 20, Interval: 10 * time.Second}, clock)
	counts := func() (int64, int64) {
		el := now.Sub(r.start)
		return r.requests.count(el), r.retries.count(el)
	}
	if r.allowRetry() {
		t.Errorf("a retry with nothing sent: allowed; want refused (1 of 1 is over 20%%)")
	}
	for range 3 {
		r.sent()
	}
	if r.allowRetry() {
		t.Errorf("a retry after 3 requests: allowed; want refused (1 of 4 is over 20%%)")
	}
	r.sent()
	if !r.allowRetry() {
		t.Errorf("a retry after 4 requests: refused; want allowed (1 of 5 is 20%%)")
	}
	r.sent() // the retry's try
	if r.allowRetry() {
		t.Errorf("a second retry after 5 requests, 1 retry: allowed; want refused (2 of 6)")
	}
	if req, ret := counts(); req != 5 || ret != 1 {
		t.Errorf("counts = %d requests, %d retries; want 5, 1", req, ret)
	}

	// Half an interval on, more requests; just short of an interval after
	// the first ones, all are still counted.
	now = now.Add(5 * time.Second)
	for range 5 {
		r.sent()
	}
	now = now.Add(5*time.Second - time.Millisecond)
	if req, ret := counts(); req != 10 || ret != 1 {
		t.Errorf("counts just short of an interval = %d, %d; want 10, 1", req, ret)
	}
	// 1.1 intervals after the first ones, only the later ones are.
	now = now.Add(time.Second + time.Millisecond)
	if req, ret := counts(); req != 5 || ret != 0 {
		t.Errorf("counts 11s after the first requests = %d, %d; want 5 (the later ones), 0", req, ret)
	}
	if !r.allowRetry() {
		t.Errorf("a retry once the old retry is forgotten: refused; want allowed (1 of 6)")
	}
	// Long after, nothing is left, a clock that steps back counts in the
	// current bucket.
	now = now.Add(time.Hour)
	if req, ret := counts(); req != 0 || ret != 0 {
		t.Errorf("counts an hour on = %d, %d; want 0, 0", req, ret)
	}
	now = now.Add(-time.Minute)
	r.sent()
	if req, _ := counts(); req != 1 {
		t.Errorf("a request counted on a clock stepped back: %d requests; want 1", req)
	}

	// The minimum: 2 retries per 2s whatever the percent.
	m := newRetryRate(&model.RetryBudget{Percent: 0, Interval: 10 * time.Second, MinRetries: 2, MinRetryInterval: 2 * time.Second}, clock)
	allowed := func() int {
		n := 0
		for range 5 {
			if m.allowRetry() {
				n++
			}
		}
		return n
	}
	if n := allowed(); n != 2 {
		t.Errorf("retries allowed by the minimum: %d; want 2", n)
	}
	now = now.Add(time.Second)
	if n := allowed(); n != 0 {
		t.Errorf("retries allowed by the minimum 1s later: %d; want 0", n)
	}
	now = now.Add(1200 * time.Millisecond)
	if n := allowed(); n != 2 {
		t.Errorf("retries allowed by the minimum 2.2s later: %d; want 2 again", n)
	}
	// At 50%, each request may be retried once (1 retry of 2 tries, then
	// 2 of 4, 3 of 6), not a second time (4 of 7).
	half := newRetryRate(&model.RetryBudget{Percent: 50, Interval: time.Second}, clock)
	var got []bool
	for range 3 {
		half.sent()
		ok := half.allowRetry()
		got = append(got, ok)
		if ok {
			half.sent()
		}
	}
	if !got[0] || !got[1] || !got[2] || half.allowRetry() {
		t.Errorf("50%%: retries of 3 requests failing in turn allowed %v, then a second retry; want [true true true], not the second", got)
	}
}

// TestRetryRateConcurrent: requests and retries from many goroutines at
// once never take the retries over the budget, and use it.
func TestRetryRateConcurrent(t *testing.T) {
	r := newRetryRate(&model.RetryBudget{Percent: 20, Interval: time.Hour}, nil)
	var wg sync.WaitGroup
	var retries atomic.Int64
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for range 2000 {
				r.sent()
				if r.allowRetry() {
					retries.Add(1)
					r.sent()
				}
			}
		}()
	}
	wg.Wait()
	reqs := r.requests.count(time.Since(r.start))
	if n := retries.Load(); n*100 > 20*reqs || n*100 < 20*reqs-100 {
		t.Errorf("%d retries of %d requests; want 20%% (within one)", n, reqs)
	}
}

// TestRetryBudgetRate: a cluster's rate budget (Gateway API's
// retryConstraint) against a backend that always fails: the retries are
// at most 20% of the tries the backend saw, the budget is used, and each
// retry refused is a 503 to the client, flagged UO and counted as
// overflow; the minimum lets retries through where the percent allows
// none, and once the interval has passed it does again; gRPC is answered
// UNAVAILABLE.
func TestRetryBudgetRate(t *testing.T) {
	failing := func(t *testing.T) (string, *atomic.Int64) {
		var tries atomic.Int64
		return backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			tries.Add(1)
			http.Error(w, "backend", http.StatusServiceUnavailable)
		})), &tries
	}
	route := model.L7Route{Name: "r", Destinations: to("b"), Retries: &model.RetryPolicy{Attempts: 1, RetryOn: []string{"5xx"}, Backoff: time.Millisecond}}
	run := func(t *testing.T, h *harness, n int) (retried, refused int) {
		c := newClient(t)
		for range n {
			switch code, body := h.get(t, c, "/", nil); {
			case code == 503 && body == "retry budget exceeded":
				refused++
			case code == 503 && body == "backend\n":
				retried++
			default:
				t.Fatalf("answer %d %q; want the backend's 503 after a retry, or 503 retry budget exceeded", code, body)
			}
		}
		return
	}

	t.Run("percent", func(t *testing.T) {
		addr, tries := failing(t)
		c := clusterOf("b", addr)
		c.Traffic.RetryBudget = &model.RetryBudget{Percent: 20, Interval: 10 * time.Second}
		h := start(t, oneRoute([]model.L7Cluster{c}, route), nil)
		const n = 50
		retried, refused := run(t, h, n)
		sent := tries.Load()
		if sent != int64(n+retried) {
			t.Errorf("backend saw %d tries; want %d (a first try each, %d retried)", sent, n+retried, retried)
		}
		// Counting every try, first or retry: at most 20%, and the budget
		// used (one more retry would be over it).
		if r := int64(retried); r*100 > 20*sent || (r+1)*100 <= 20*(sent+1) {
			t.Errorf("%d retries of %d tries; want 20%% of them (within one)", retried, sent)
		}
		if refused == 0 || refused+retried != n {
			t.Errorf("%d refused, %d retried of %d requests; want the rest refused", refused, retried, n)
		}
		if got := h.log.countFlag(t, flagOverflow); got != refused {
			t.Errorf("%d access log lines flagged UO; want %d", got, refused)
		}
		if got := testutil.MetricSum(t, h.reg, "meshlet_waypoint_upstream_overflow_total", map[string]string{"cluster": "b"}); got != float64(refused) {
			t.Errorf("meshlet_waypoint_upstream_overflow_total = %v; want %d", got, refused)
		}
	})

	t.Run("minimum", func(t *testing.T) {
		addr, tries := failing(t)
		c := clusterOf("b", addr)
		c.Traffic.RetryBudget = &model.RetryBudget{Percent: 20, Interval: 10 * time.Second, MinRetries: 2, MinRetryInterval: 10 * time.Second}
		h := start(t, oneRoute([]model.L7Cluster{c}, route), nil)
		// 20% alone allows no retry of the first 3 requests; the minimum
		// allows 2 of them.
		if retried, refused := run(t, h, 3); retried != 2 || refused != 1 || tries.Load() != 5 {
			t.Errorf("3 requests: %d retried, %d refused, %d tries; want 2, 1, 5", retried, refused, tries.Load())
		}
	})

	t.Run("slides", func(t *testing.T) {
		addr, tries := failing(t)
		c := clusterOf("b", addr)
		c.Traffic.RetryBudget = &model.RetryBudget{Percent: 0, Interval: time.Second, MinRetries: 1, MinRetryInterval: time.Second}
		h := start(t, oneRoute([]model.L7Cluster{c}, route), nil)
		t0 := time.Now()
		if retried, _ := run(t, h, 1); retried != 1 {
			t.Fatalf("the first request: not retried; want retried (the minimum)")
		}
		if _, refused := run(t, h, 1); refused != 1 {
			t.Fatalf("the second request at once: retried; want refused")
		}
		// Refused until the retry is an interval old, then retried again.
		deadline := time.Now().Add(3 * time.Second)
		for {
			if retried, _ := run(t, h, 1); retried == 1 {
				if d := time.Since(t0); d < time.Second {
					t.Errorf("retried again %v after the first retry; want an interval, 1s, at least", d)
				}
				break
			}
			if time.Now().After(deadline) {
				t.Fatalf("still refused 3s after the first retry; want retried again past the 1s interval")
			}
			time.Sleep(50 * time.Millisecond)
		}
		if n := tries.Load(); n < 5 {
			t.Errorf("backend saw %d tries; want 2 for each retried request, 1 for each refused", n)
		}
	})

	t.Run("grpc", func(t *testing.T) {
		var protos http.Protocols
		protos.SetUnencryptedHTTP2(true)
		srv := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			io.Copy(io.Discard, r.Body) // read whole: the request can be replayed
			w.Header().Set("Content-Type", "application/grpc")
			w.Header().Set("Grpc-Status", "14")
			w.Header().Set("Grpc-Message", "backend")
			w.WriteHeader(http.StatusOK)
		}))
		srv.Config.Protocols = &protos
		srv.Start()
		t.Cleanup(srv.Close)
		c := clusterOf("b", srv.Listener.Addr().String())
		c.Traffic.RetryBudget = &model.RetryBudget{Percent: 0, Interval: 10 * time.Second, MinRetries: 1, MinRetryInterval: 10 * time.Second}
		r := route
		r.Retries = &model.RetryPolicy{Attempts: 1, RetryOn: []string{"unavailable"}, Backoff: time.Millisecond}
		h := start(t, oneRoute([]model.L7Cluster{c}, r), nil)
		conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { conn.Close() })
		client := testgrpc.NewTestServiceClient(conn)
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		for i, want := range []string{"backend", "retry budget exceeded"} {
			_, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("x")}})
			if s := status.Convert(err); s.Code() != codes.Unavailable || s.Message() != want {
				t.Errorf("call %d: %v; want UNAVAILABLE %q", i, err, want)
			}
		}
		if got := testutil.MetricSum(t, h.reg, "meshlet_waypoint_upstream_overflow_total", map[string]string{"cluster": "b"}); got != 1 {
			t.Errorf("meshlet_waypoint_upstream_overflow_total = %v; want 1", got)
		}
	})
}

// TestRetryBudgetRateKept: a cluster whose config changes keeps its rate
// budget's counts when the budget is the same, and starts afresh when it
// is not.
func TestRetryBudgetRateKept(t *testing.T) {
	b := model.RetryBudget{Percent: 20, Interval: 10 * time.Second}
	spec := clusterOf("b", "198.18.0.1:80")
	spec.Traffic.RetryBudget = &b
	spec.Subsets = []model.Subset{{Name: "v1"}}
	c := newCluster(&spec, nil, &Options{}, proxyPlace{})
	if c.all.rate == nil || c.subset("v1").rate == nil || c.all.rate == c.subset("v1").rate {
		t.Fatalf("a cluster and its subset: want a rate budget each")
	}
	grown := spec
	grown.Endpoints = append(grown.Endpoints, model.L7Endpoint{Address: "198.18.0.2:80"})
	c2 := newCluster(&grown, c, &Options{}, proxyPlace{})
	if c2.all.rate != c.all.rate || c2.subset("v1").rate != c.subset("v1").rate {
		t.Errorf("a new endpoint: the rate budgets were reset; want them kept")
	}
	changed := grown
	changed.Traffic.RetryBudget = &model.RetryBudget{Percent: 30, Interval: 10 * time.Second}
	c3 := newCluster(&changed, c2, &Options{}, proxyPlace{})
	if c3.all.rate == c2.all.rate || c3.all.rate.percent != 30 {
		t.Errorf("a new budget: the old counts kept; want a new budget")
	}
}
