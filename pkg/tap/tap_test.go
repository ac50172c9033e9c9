package tap

import (
	"bufio"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

type event struct {
	N    int    `json:"n"`
	Kind string `json:"kind"`
}

// kindFilter selects events of query "kind"; "bad" is refused.
func kindFilter(q url.Values) (func(*event) bool, error) {
	k := q.Get("kind")
	if k == "bad" {
		return nil, errors.New("kind: bad")
	}
	if k == "" {
		return nil, nil
	}
	return func(e *event) bool { return e.Kind == k }, nil
}

func waitTaps(t *testing.T, h *Hub[event], n int) {
	t.Helper()
	for deadline := time.Now().Add(5 * time.Second); h.Taps() != n; time.Sleep(5 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("%d taps open; want %d", h.Taps(), n)
		}
	}
}

// readTap reads a tap stream to its end.
func readTap(t *testing.T, res *http.Response) ([]event, *End) {
	t.Helper()
	defer res.Body.Close()
	var events []event
	sc := bufio.NewScanner(res.Body)
	for sc.Scan() {
		var l Line[event]
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("line %q: %v", sc.Text(), err)
		}
		if l.End != nil {
			return events, l.End
		}
		events = append(events, *l.Event)
	}
	t.Fatalf("stream ended without its end line: %v", sc.Err())
	return nil, nil
}

// TestHubStream: a tap streams the events its filter selects, as
// newline-delimited JSON, and ends after max events with its end line; an
// idle tap ends at its time; the slot is freed either way.
func TestHubStream(t *testing.T) {
	h := &Hub[event]{}
	srv := httptest.NewServer(h.Handler(kindFilter))
	t.Cleanup(srv.Close)
	res, err := http.Get(srv.URL + "?max=2&kind=b")
	if err != nil {
		t.Fatal(err)
	}
	if res.StatusCode != 200 || res.Header.Get("Content-Type") != "application/x-ndjson" {
		t.Fatalf("tap = %s %q", res.Status, res.Header.Get("Content-Type"))
	}
	waitTaps(t, h, 1)
	for i, k := range []string{"a", "b", "a", "b", "b"} {
		h.Publish(event{N: i, Kind: k})
	}
	events, end := readTap(t, res)
	if len(events) != 2 || events[0].N != 1 || events[1].N != 3 || *end != (End{Reason: "max events", Events: 2}) {
		t.Errorf("tap gave %+v, end %+v; want events 1 and 3 (kind b), then the end (max events)", events, end)
	}
	waitTaps(t, h, 0)
	if h.Active() {
		t.Error("Active with no tap open")
	}

	res, err = http.Get(srv.URL + "?seconds=1")
	if err != nil {
		t.Fatal(err)
	}
	events, end = readTap(t, res)
	if len(events) != 0 || end.Reason != "time" {
		t.Errorf("idle tap gave %v, end %+v; want only the end, reason time", events, end)
	}
}

// TestHubBounds: more than MaxTaps at once are refused (429), and so are
// bounds out of range, a bad filter (400) and methods but GET.
func TestHubBounds(t *testing.T) {
	h := &Hub[event]{}
	srv := httptest.NewServer(h.Handler(kindFilter))
	t.Cleanup(srv.Close)
	var open []*http.Response
	for range MaxTaps {
		r, err := http.Get(srv.URL + "?seconds=5")
		if err != nil {
			t.Fatal(err)
		}
		open = append(open, r)
	}
	waitTaps(t, h, MaxTaps)
	get := func(q string) int {
		t.Helper()
		r, err := http.Get(srv.URL + "?" + q)
		if err != nil {
			t.Fatal(err)
		}
		r.Body.Close()
		return r.StatusCode
	}
	if code := get(""); code != http.StatusTooManyRequests {
		t.Errorf("tap beyond %d = %d; want 429", MaxTaps, code)
	}
	for _, r := range open {
		r.Body.Close()
	}
	waitTaps(t, h, 0)
	for _, q := range []string{"max=0", "max=" + strconv.Itoa(MaxEvents+1), "seconds=x", "seconds=601", "kind=bad"} {
		if code := get(q); code != http.StatusBadRequest {
			t.Errorf("tap ?%s = %d; want 400", q, code)
		}
	}
	r, err := http.Post(srv.URL, "text/plain", strings.NewReader(""))
	if err != nil {
		t.Fatal(err)
	}
	r.Body.Close()
	if r.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST = %d; want 405", r.StatusCode)
	}
}

// blockingWriter is a ResponseWriter whose writes wait for release once the
// first has begun (a reader that stops reading).
type blockingWriter struct {
	header  http.Header
	began   chan struct{}
	release chan struct{}
	once    sync.Once
	mu      sync.Mutex
	body    strings.Builder
}

func (w *blockingWriter) Header() http.Header { return w.header }
func (w *blockingWriter) WriteHeader(int)     {}
func (w *blockingWriter) Write(b []byte) (int, error) {
	w.once.Do(func() { close(w.began) })
	<-w.release
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.body.Write(b)
}

// TestHubDropsForSlowReader: a tap whose reader is stuck holds a bounded
// buffer; what it cannot take is dropped and counted in its end line, and
// Publish never waits.
func TestHubDropsForSlowReader(t *testing.T) {
	h := &Hub[event]{}
	w := &blockingWriter{header: http.Header{}, began: make(chan struct{}), release: make(chan struct{})}
	done := make(chan struct{})
	go func() {
		defer close(done)
		h.Handler(nil).ServeHTTP(w, httptest.NewRequest(http.MethodGet, "/?max=1", nil))
	}()
	waitTaps(t, h, 1)
	h.Publish(event{N: 0})
	<-w.began // the handler holds event 0, stuck writing it
	start := time.Now()
	for i := 1; i <= buffer+10; i++ {
		h.Publish(event{N: i})
	}
	if d := time.Since(start); d > time.Second {
		t.Errorf("publishing to a stuck tap took %v", d)
	}
	close(w.release)
	<-done
	lines := strings.Split(strings.TrimSpace(w.body.String()), "\n")
	var last Line[event]
	if err := json.Unmarshal([]byte(lines[len(lines)-1]), &last); err != nil {
		t.Fatal(err)
	}
	if len(lines) != 2 || last.End == nil || *last.End != (End{Reason: "max events", Events: 1, Dropped: 10}) {
		t.Errorf("stream %q; want event 0, then the end with 10 dropped", lines)
	}
	if h.Taps() != 0 {
		t.Errorf("%d taps open after the end", h.Taps())
	}
}

// TestPublishCostsNothingWhileNobodyTaps: with no tap open, Publish
// allocates nothing.
func TestPublishCostsNothingWhileNobodyTaps(t *testing.T) {
	h := &Hub[event]{}
	if n := testing.AllocsPerRun(100, func() { h.Publish(event{N: 1, Kind: "a"}) }); n != 0 {
		t.Errorf("Publish with no tap: %v allocations; want 0", n)
	}
}
