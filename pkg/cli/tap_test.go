package cli

import (
	"context"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/waypoint"
)

// TestPrintTap: what `meshctl tap` prints of a real waypoint's tap stream:
// a line per request with its method, authority, path, status, latency,
// upstream and route, then the end on stderr; -o json passes the lines on;
// a stream cut before its end line is an error.
func TestPrintTap(t *testing.T) {
	app := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	t.Cleanup(app.Close)
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "http", VirtualHosts: []model.VirtualHost{{Name: "shop", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "all", Destinations: []model.WeightedDestination{{Cluster: "app"}}}}}}}},
		Clusters: []model.L7Cluster{{Name: "app", Endpoints: []model.L7Endpoint{{Address: app.Listener.Addr().String()}}}},
	}}})
	if err != nil {
		t.Fatal(err)
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		p.Serve(ctx, l, waypoint.ServerOptions{DetectTimeout: 200 * time.Millisecond})
	}()
	t.Cleanup(func() { cancel(); <-done; p.Close() })
	admin := httptest.NewServer(p.TapHandler())
	t.Cleanup(admin.Close)

	tap := func(raw bool) (string, string) {
		res, err := http.Get(admin.URL + configdump.TapPath + "?max=2&path=/cart")
		if err != nil {
			t.Fatal(err)
		}
		defer res.Body.Close()
		go func() {
			time.Sleep(100 * time.Millisecond) // the tap is open
			for _, path := range []string{"/other", "/cart/1?user=alice", "/cart/2"} {
				r, err := http.Get("http://" + l.Addr().String() + path)
				if err != nil {
					t.Error(err)
					return
				}
				io.Copy(io.Discard, r.Body)
				r.Body.Close()
			}
		}()
		var out, errOut strings.Builder
		if err := printTap(res.Body, &out, &errOut, raw); err != nil {
			t.Fatal(err)
		}
		return out.String(), errOut.String()
	}
	out, errOut := tap(false)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	want := regexp.MustCompile(`^\d\d:\d\d:\d\d\.\d{3} src=127\.0\.0\.1 dst=app :method=GET :authority=127\.0\.0\.1:\d+ :path=/cart/1 status=200 latency=\S+ upstream=` +
		regexp.QuoteMeta(app.Listener.Addr().String()) + ` route=all flags=- bytes=0/2$`)
	if len(lines) != 2 || !want.MatchString(lines[0]) || !strings.Contains(lines[1], ":path=/cart/2 ") || strings.Contains(out, "alice") {
		t.Errorf("meshctl tap printed:\n%s\nwant two lines, the first matching %s, no query", out, want)
	}
	if errOut != "tap ended (max events): 2 requests shown, 0 dropped (the reader was too slow)\n" {
		t.Errorf("stderr %q", errOut)
	}
	out, _ = tap(true)
	if n := strings.Count(out, `{"event":`); n != 2 || !strings.Contains(out, `{"end":`) {
		t.Errorf("-o json printed:\n%s\nwant the two event lines and the end line", out)
	}
	var discard strings.Builder
	if err := printTap(strings.NewReader(`{"event":{"method":"GET"}}`+"\n"), &discard, &discard, false); err == nil || !strings.Contains(err.Error(), "without its end line") {
		t.Errorf("a cut stream: %v; want an error", err)
	}
}
