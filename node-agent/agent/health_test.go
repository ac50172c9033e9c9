package agent

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"os/exec"
	"strings"
	"testing"
)

type nopDatapath struct{ Datapath }

func TestReadiness(t *testing.T) {
	ag, err := New(Options{NodeName: "n", Datapath: nopDatapath{}})
	if err != nil {
		t.Fatal(err)
	}
	var starting error = errors.New("no mesh config from meshd yet")
	h := ag.ReadinessHandler(func() error { return starting }, nil)
	status := readiness(t, h)
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("before sync: %d; want 503", got)
	}
	rec := httptest.NewRecorder()
	h.ServeHTTP(rec, httptest.NewRequest("GET", "/healthz/ready", nil))
	if !strings.Contains(rec.Body.String(), "no mesh config from meshd yet") {
		t.Errorf("before sync: body %q does not say why", rec.Body.String())
	}
	starting = nil
	if got := status(); got != http.StatusOK {
		t.Errorf("synced: %d; want 200", got)
	}
	if err := ag.Drain(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("draining: %d; want 503", got)
	}
}

// TestSuccession: two agents on a node (a rolling update): once the second
// has claimed the node, the first answers readiness 503, so a kubelet probe
// of the new pod that reaches the old agent cannot make it ready early.
func TestSuccession(t *testing.T) {
	path := t.TempDir() + "/agent.pid"
	old, err := ClaimSuccession(path)
	if err != nil {
		t.Fatal(err)
	}
	ag, err := New(Options{NodeName: "n", Datapath: nopDatapath{}})
	if err != nil {
		t.Fatal(err)
	}
	status := readiness(t, ag.ReadinessHandler(nil, old.Newest))
	if got := status(); got != http.StatusOK {
		t.Fatalf("the only agent, synced: %d; want 200", got)
	}
	// The next agent is another process: its PID claims the node.
	proc := exec.Command("sleep", "30")
	if err := proc.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { proc.Process.Kill(); proc.Wait() })
	next := &Succession{path: path, pid: proc.Process.Pid}
	if err := next.claim(); err != nil {
		t.Fatal(err)
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("superseded agent: %d; want 503", got)
	}
	if !next.Newest() || old.Newest() {
		t.Errorf("Newest: old %v, next %v; want only next", old.Newest(), next.Newest())
	}
	// The new agent exits (it failed at start): the node is the old one's
	// again, which answers ready instead of holding the node unready.
	proc.Process.Kill()
	proc.Wait()
	if got := status(); got != http.StatusOK {
		t.Errorf("agent whose successor exited: %d; want 200", got)
	}
}

// readiness serves h and returns a func that probes it as the kubelet does.
func readiness(t *testing.T, h http.Handler) func() int {
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return func() int {
		t.Helper()
		resp, err := http.Get(srv.URL + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
}
