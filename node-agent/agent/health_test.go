package agent

import (
	"context"
	"net/http"
	"net/http/httptest"
	"testing"
)

type nopDatapath struct{ Datapath }

func TestReadiness(t *testing.T) {
	ag, err := New(Options{NodeName: "n", Datapath: nopDatapath{}})
	if err != nil {
		t.Fatal(err)
	}
	synced := false
	srv := httptest.NewServer(ag.ReadinessHandler(func() bool { return synced }))
	defer srv.Close()
	status := func() int {
		t.Helper()
		resp, err := http.Get(srv.URL + "/healthz/ready")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if got := status(); got != http.StatusServiceUnavailable {
		t.Errorf("before sync: %d; want 503", got)
	}
	synced = true
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
