package waypoint

import (
	"fmt"
	"net/http"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// placed is an endpoint of the locality tests: its name is its address.
type placed struct{ name, node, loc string }

func placedUpstream(t *testing.T, lb *model.LocalityLB, self proxyPlace, eps ...placed) *upstream {
	t.Helper()
	var spec []model.L7Endpoint
	for _, e := range eps {
		spec = append(spec, model.L7Endpoint{Address: e.name + ":80", Node: e.node, Locality: e.loc})
	}
	return newUpstream("c", "", spec, model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRandom, Locality: lb}}, &Options{}, self)
}

// picks counts which endpoints n picks choose.
func picks(t *testing.T, u *upstream, n int) map[string]int {
	t.Helper()
	got := map[string]int{}
	for range n {
		e, err := u.pick(nil, "")
		if err != nil {
			t.Fatalf("pick: %v", err)
		}
		got[e.addr[:len(e.addr)-3]]++
	}
	return got
}

func eject(u *upstream, names ...string) {
	for _, e := range u.endpoints {
		for _, n := range names {
			if e.addr == n+":80" {
				e.mu.Lock()
				e.ejectedUntil = time.Now().Add(time.Hour)
				e.mu.Unlock()
			}
		}
	}
}

func TestLocalityPriority(t *testing.T) {
	west := proxyPlace{node: "n1", loc: model.Locality{Region: "west", Zone: "a"}}
	eps := []placed{
		{"zone-a-1", "n1", "west/a/"}, {"zone-a-2", "n2", "west/a/"},
		{"zone-b", "n3", "west/b/"}, {"east", "n4", "east/a/"}, {"north", "n5", "north/a/"},
	}
	failover := &model.LocalityLB{Priority: model.LocalityPriority}

	t.Run("the proxy's zone takes all", func(t *testing.T) {
		got := picks(t, placedUpstream(t, failover, west, eps...), 200)
		if got["zone-a-1"]+got["zone-a-2"] != 200 || got["zone-a-1"] == 0 || got["zone-a-2"] == 0 {
			t.Errorf("picks %v; want all 200 spread over zone a's two endpoints", got)
		}
	})
	t.Run("half the zone ejected: 70% stay, 30% spill to the region", func(t *testing.T) {
		// Envoy's priority load: 1 of 2 healthy x 1.4 = 70%.
		u := placedUpstream(t, failover, west, eps...)
		eject(u, "zone-a-1")
		got := picks(t, u, 2000)
		if got["zone-a-1"] != 0 || got["zone-a-2"] < 1250 || got["zone-a-2"] > 1550 || got["zone-a-2"]+got["zone-b"] != 2000 {
			t.Errorf("picks %v; want ~1400 to zone-a-2, the rest to zone-b, none ejected or out of region", got)
		}
	})
	t.Run("zone gone: the region, then anywhere", func(t *testing.T) {
		u := placedUpstream(t, failover, west, eps...)
		eject(u, "zone-a-1", "zone-a-2")
		if got := picks(t, u, 50); got["zone-b"] != 50 {
			t.Errorf("picks %v; want all to zone-b", got)
		}
		eject(u, "zone-b")
		if got := picks(t, u, 100); got["east"]+got["north"] != 100 || got["east"] == 0 || got["north"] == 0 {
			t.Errorf("picks %v; want east and north alike", got)
		}
	})
	t.Run("failover region first", func(t *testing.T) {
		lb := &model.LocalityLB{Priority: model.LocalityPriority, Failover: []model.LocalityFailover{{From: "west", To: "north"}}}
		u := placedUpstream(t, lb, west, eps...)
		eject(u, "zone-a-1", "zone-a-2", "zone-b")
		if got := picks(t, u, 50); got["north"] != 50 {
			t.Errorf("picks %v; want all to north, west's failover region", got)
		}
	})
	t.Run("same node", func(t *testing.T) {
		u := placedUpstream(t, &model.LocalityLB{Priority: []string{model.PriorityNode}}, west, eps...)
		if got := picks(t, u, 50); got["zone-a-1"] != 50 {
			t.Errorf("picks %v; want all to zone-a-1 on n1", got)
		}
	})
	t.Run("proxy's place unknown: every endpoint", func(t *testing.T) {
		got := picks(t, placedUpstream(t, failover, proxyPlace{}, eps...), 500)
		if len(got) != len(eps) {
			t.Errorf("picks %v; want every endpoint", got)
		}
	})
	t.Run("a node without topology labels ranks by node only", func(t *testing.T) {
		u := placedUpstream(t, &model.LocalityLB{Priority: []string{model.PriorityRegion, model.PriorityZone, model.PriorityNode}}, proxyPlace{node: "n3"}, eps...)
		if got := picks(t, u, 50); got["zone-b"] != 50 {
			t.Errorf("picks %v; want all to zone-b on the proxy's node n3", got)
		}
	})
	t.Run("all ejected: no healthy upstream", func(t *testing.T) {
		u := placedUpstream(t, failover, west, eps...)
		eject(u, "zone-a-1", "zone-a-2", "zone-b", "east", "north")
		if e, err := u.pick(nil, ""); err != errNoHealthy {
			t.Errorf("pick = %v, %v; want errNoHealthy", e, err)
		}
	})
}

func TestLocalityDistribute(t *testing.T) {
	lb := &model.LocalityLB{Distribute: []model.LocalityDistribute{
		{From: "west/b/*", To: map[string]uint32{"west/b/*": 100}},
		{From: "west/*", To: map[string]uint32{"west/a/*": 80, "west/*": 20}},
	}}
	eps := []placed{{"a1", "n1", "west/a/"}, {"a2", "n2", "west/a/"}, {"b", "n3", "west/b/"}, {"c", "n4", "west/c/"}, {"east", "n5", "east/a/"}}
	u := placedUpstream(t, lb, proxyPlace{node: "n1", loc: model.Locality{Region: "west", Zone: "a"}}, eps...)
	got := picks(t, u, 4000)
	// Zone a 80%; "west/*" 20% shared by zones b and c (one endpoint
	// each); east matches no pattern.
	if a := got["a1"] + got["a2"]; a < 3040 || a > 3360 || got["east"] != 0 || got["b"] < 280 || got["b"] > 520 || got["c"] < 280 || got["c"] > 520 {
		t.Errorf("picks %v; want ~3200 to zone a, ~400 each to b and c, none to east", got)
	}
	// A zone whose endpoints are all ejected gives its share to the others.
	eject(u, "a1", "a2")
	if got := picks(t, u, 200); got["b"]+got["c"] != 200 {
		t.Errorf("zone a ejected: picks %v; want all to b and c", got)
	}
	// The first entry whose from matches the proxy applies.
	u = placedUpstream(t, lb, proxyPlace{node: "n3", loc: model.Locality{Region: "west", Zone: "b"}}, eps...)
	if got := picks(t, u, 50); got["b"] != 50 {
		t.Errorf("proxy in west/b: picks %v; want all to b", got)
	}
	// No entry for the proxy's locality: every endpoint.
	u = placedUpstream(t, lb, proxyPlace{node: "n5", loc: model.Locality{Region: "east", Zone: "a"}}, eps...)
	if got := picks(t, u, 500); len(got) != len(eps) {
		t.Errorf("proxy in east: picks %v; want every endpoint", got)
	}
}

// TestLocalityFailoverRequests: through the proxy, requests stay in its
// zone; when that zone's endpoint fails, outlier detection ejects it and
// the requests fail over to the next zone, with no failed response (a
// retry goes to the healthy endpoint).
func TestLocalityFailoverRequests(t *testing.T) {
	var failing atomic.Bool
	near := &named{name: "near"}
	nearAddr := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if failing.Load() {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		near.ServeHTTP(w, r)
	}))
	far := &named{name: "far"}
	cl := model.L7Cluster{Name: "zoned", Endpoints: []model.L7Endpoint{
		{Address: nearAddr, Node: "n1", Locality: "west/a/"},
		{Address: backend(t, far), Node: "n2", Locality: "west/b/"},
	}, Traffic: model.TrafficPolicy{
		LB:      model.LBPolicy{Locality: &model.LocalityLB{Priority: model.LocalityPriority}},
		Outlier: &model.OutlierDetection{Consecutive5xxErrors: 1, BaseEjectionTime: time.Minute, MaxEjectionPercent: 100},
	}}
	cfg := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("zoned"), Retries: &model.RetryPolicy{Attempts: 2, RetryOn: []string{"5xx"}}})
	cfg.L7.ProxyLocalities = map[string]string{"n1": "west/a/", "n2": "west/b/"}
	h := start(t, cfg, func(o *Options) { o.NodeName = "n1" })
	client := newClient(t)
	for i := range 20 {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("request %d = %d; want 200", i, code)
		}
	}
	if near.count() != 20 || far.count() != 0 {
		t.Fatalf("near served %d, far %d; want all 20 by near, in the proxy's zone", near.count(), far.count())
	}
	// The config dump (meshctl proxy-config endpoints) shows each one's level.
	for _, e := range h.proxy.EndpointStates(time.Now()) {
		if want := map[bool]string{true: "0", false: "1"}[e.Address == nearAddr]; e.Priority != want {
			t.Errorf("endpoint %s (%s) priority %q; want %q", e.Address, e.Locality, e.Priority, want)
		}
	}
	failing.Store(true)
	for i := range 20 {
		if code, _ := h.get(t, client, "/", nil); code != 200 {
			t.Fatalf("request %d after near failed = %d; want 200 (retried on far)", i, code)
		}
	}
	if far.count() != 20 {
		t.Errorf("far served %d of 20 after near failed; want all", far.count())
	}
}

// TestRetryRemoteLocalities: with retryRemoteLocalities a retry leaves the
// locality level it failed in for the next one (Envoy's
// previous_priorities); without, it stays in the proxy's zone while it has
// healthy endpoints, even failing ones.
func TestRetryRemoteLocalities(t *testing.T) {
	failing := http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { w.WriteHeader(http.StatusServiceUnavailable) })
	far := &named{name: "far"}
	cl := model.L7Cluster{Name: "zoned", Endpoints: []model.L7Endpoint{
		{Address: backend(t, failing), Node: "n1", Locality: "west/a/"},
		{Address: backend(t, failing), Node: "n1", Locality: "west/a/"},
		{Address: backend(t, far), Node: "n2", Locality: "west/b/"},
	}, Traffic: model.TrafficPolicy{LB: model.LBPolicy{Locality: &model.LocalityLB{Priority: model.LocalityPriority}}}}
	for _, remote := range []bool{false, true} {
		before := far.count()
		cfg := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("zoned"),
			Retries: &model.RetryPolicy{Attempts: 2, RetryOn: []string{"5xx"}, Backoff: time.Millisecond, RemoteLocalities: remote}})
		cfg.L7.ProxyLocalities = map[string]string{"n1": "west/a/", "n2": "west/b/"}
		h := start(t, cfg, func(o *Options) { o.NodeName = "n1" })
		client := newClient(t)
		want := map[bool]int{false: http.StatusServiceUnavailable, true: http.StatusOK}[remote]
		for i := range 10 {
			if code, _ := h.get(t, client, "/", nil); code != want {
				t.Errorf("retryRemoteLocalities %v: request %d = %d; want %d", remote, i, code, want)
			}
		}
		if served := far.count() - before; (served == 10) != remote || (served == 0) == remote {
			t.Errorf("retryRemoteLocalities %v: the far zone served %d of 10", remote, served)
		}
	}
}

// TestRetrySameHosts: a retry goes to another endpoint than the one that
// failed, unless retryIgnorePreviousHosts is false, when it may go to the
// same one.
func TestRetrySameHosts(t *testing.T) {
	var mu sync.Mutex
	first := map[string]string{} // request id -> the endpoint that failed it
	same := 0
	endpoint := func(name string) string {
		return backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			mu.Lock()
			defer mu.Unlock()
			id := r.Header.Get("X-Id")
			by, tried := first[id]
			if !tried {
				first[id] = name
				w.WriteHeader(http.StatusServiceUnavailable)
				return
			}
			if by == name {
				same++
			}
		}))
	}
	cl := clusterOf("two", endpoint("a"), endpoint("b"))
	cl.Traffic.LB.Simple = model.LBRandom
	for _, sameHosts := range []bool{false, true} {
		mu.Lock()
		same = 0
		mu.Unlock()
		h := start(t, oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("two"),
			Retries: &model.RetryPolicy{Attempts: 1, RetryOn: []string{"5xx"}, Backoff: time.Millisecond, SameHosts: sameHosts}}), nil)
		client := newClient(t)
		const n = 60
		for i := range n {
			if code, _ := h.get(t, client, "/", map[string]string{"X-Id": fmt.Sprint(sameHosts, i)}); code != 200 {
				t.Fatalf("request %d = %d; want 200 on the retry", i, code)
			}
		}
		mu.Lock()
		got := same
		mu.Unlock()
		if sameHosts && got == 0 {
			t.Errorf("retryIgnorePreviousHosts false: no retry of %d went to the endpoint that failed; want about half", n)
		}
		if !sameHosts && got != 0 {
			t.Errorf("by default %d of %d retries went to the endpoint that failed; want none", got, n)
		}
	}
}
