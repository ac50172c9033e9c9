package waypoint

import (
	"bufio"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/tap"
)

// openTap starts a tap on srv with query q and returns its lines as they
// come, closed at the stream's end.
func openTap(t *testing.T, srv *httptest.Server, q string) (*http.Response, <-chan string) {
	t.Helper()
	resp, err := http.Get(srv.URL + configdump.TapPath + "?" + q)
	if err != nil {
		t.Fatal(err)
	}
	lines := make(chan string, 64)
	go func() {
		defer close(lines)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			lines <- sc.Text()
		}
	}()
	return resp, lines
}

func waitTaps(t *testing.T, p *Proxy, n int32) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); int32(p.taps.Taps()) != n; {
		if time.Now().After(deadline) {
			t.Fatalf("%d taps open; want %d", p.taps.Taps(), n)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// TestTap: a tap streams the requests that finish, filtered, each with its
// method, authority, path without the query, status, route, source and
// upstream, and no header or query value; it ends after max events (or
// its time) with what it lost; more than tap.MaxTaps at once are refused, bad
// bounds too, and nothing is published once the taps are gone.
func TestTap(t *testing.T) {
	app := backend(t, &named{name: "app"})
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)},
		model.L7Route{Name: "api", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/api"}}}, Destinations: to("app")},
		model.L7Route{Name: "rest", Destinations: to("app")}), nil)
	srv := httptest.NewServer(h.proxy.TapHandler())
	t.Cleanup(srv.Close)
	client := newClient(t)

	resp, lines := openTap(t, srv, "path=/api&max=3&seconds=20")
	if resp.StatusCode != 200 || resp.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("tap = %d %q", resp.StatusCode, resp.Header.Get("Content-Type"))
	}
	waitTaps(t, h.proxy, 1)
	h.get(t, client, "/other", nil)
	h.get(t, client, "/api/a?token=secret", map[string]string{"Authorization": "Bearer secret"})
	h.get(t, client, "/api/b", nil)
	h.get(t, client, "/api/c", nil)
	h.get(t, client, "/api/d", nil)
	var events []configdump.TapEvent
	var end *configdump.TapEnd
	for l := range lines {
		if strings.Contains(l, "secret") {
			t.Errorf("tap line %s carries a query or header value", l)
		}
		var tl configdump.TapLine
		if err := json.Unmarshal([]byte(l), &tl); err != nil {
			t.Fatalf("tap line %q: %v", l, err)
		}
		switch {
		case tl.Event != nil:
			events = append(events, *tl.Event)
		case tl.End != nil:
			end = tl.End
		}
	}
	if len(events) != 3 || end == nil || end.Reason != "max events" || end.Events != 3 {
		t.Fatalf("tap gave %d events, end %+v; want 3 then the end (max events)", len(events), end)
	}
	e := events[0]
	if e.Method != "GET" || e.Path != "/api/a" || e.Authority != "reviews.default.svc.cluster.local" || e.Status != 200 ||
		e.Route != "api" || e.Upstream != app || e.Source == "" || e.Flags != "-" || e.Protocol != "HTTP/1.1" || e.DurationMS <= 0 || e.ResponseBytes != 3 {
		t.Errorf("first event %+v; want GET /api/a 200 by route api from %s", e, app)
	}
	if events[1].Path != "/api/b" || events[2].Path != "/api/c" {
		t.Errorf("events %v, %v; want /api/b then /api/c (the filter left /other out)", events[1].Path, events[2].Path)
	}
	waitTaps(t, h.proxy, 0)

	// Bounds.
	var open []*http.Response
	for range tap.MaxTaps {
		r, _ := openTap(t, srv, "seconds=5")
		open = append(open, r)
	}
	waitTaps(t, h.proxy, tap.MaxTaps)
	r, err := http.Get(srv.URL + configdump.TapPath)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(r.Body)
	r.Body.Close()
	if r.StatusCode != http.StatusTooManyRequests {
		t.Errorf("tap beyond %d = %d %s; want 429", tap.MaxTaps, r.StatusCode, body)
	}
	for _, r := range open {
		r.Body.Close()
	}
	waitTaps(t, h.proxy, 0)
	for _, q := range []string{"max=0", "max=10001", "seconds=x", "seconds=601"} {
		r, err := http.Get(srv.URL + configdump.TapPath + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		if r.StatusCode != http.StatusBadRequest {
			t.Errorf("tap ?%s = %d; want 400", q, r.StatusCode)
		}
	}
	_, lines = openTap(t, srv, "seconds=1&method=POST")
	waitTaps(t, h.proxy, 1)
	h.get(t, client, "/api/e", nil) // a GET: filtered out
	var last configdump.TapLine
	n := 0
	for l := range lines {
		n++
		json.Unmarshal([]byte(l), &last)
	}
	if n != 1 || last.End == nil || last.End.Reason != "time" || last.End.Events != 0 {
		t.Errorf("an idle tap gave %d lines ending %+v; want only the end, reason time", n, last.End)
	}
}
