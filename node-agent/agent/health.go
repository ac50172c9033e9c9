package agent

import (
	"fmt"
	"net/http"
)

// ReadinessHandler serves /healthz/ready for the DaemonSet's readiness
// probe (15021): 200 once starting reports nil (every running pod enrolled,
// meshd's first config in), 503 with starting's reason before that and from
// the moment the agent starts draining, so a rolling update stops sending
// new work to a draining agent and keeps the old agent until this one can
// decide for its pods.
//
// newest, when set, says whether this is still the newest agent on the node
// (Succession.Newest): a superseded agent answers 503, so a probe of the new
// agent's pod that reaches it cannot make that pod ready early.
func (a *Agent) ReadinessHandler(starting func() error, newest func() bool) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
		switch {
		case a.Draining():
			http.Error(w, "draining", http.StatusServiceUnavailable)
		case newest != nil && !newest():
			http.Error(w, "superseded: a newer agent is starting on this node", http.StatusServiceUnavailable)
		default:
			if starting != nil {
				if err := starting(); err != nil {
					http.Error(w, "starting: "+err.Error(), http.StatusServiceUnavailable)
					return
				}
			}
			fmt.Fprintln(w, "ready")
		}
	})
	return mux
}
