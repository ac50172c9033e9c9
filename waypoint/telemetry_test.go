package waypoint

import (
	"net/http"
	"strings"
	"testing"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/testutil"
)

func TestMetricsAndAccessLog(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Write([]byte(strings.Repeat("x", 1000)))
	}))
	cl := clusterOf("outbound|9080||reviews.default.svc.cluster.local", app)
	cl.Endpoints[0].Labels = map[string]string{"app": "reviews", "version": "v1"}
	cl.Endpoints[0].Workload = "reviews-v1"
	cfg := oneRoute([]model.L7Cluster{cl},
		model.L7Route{Name: "missing", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/missing"}}}, DirectResponse: &model.DirectResponse{Status: 404}},
		model.L7Route{Name: "default", Destinations: to(cl.Name)})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "deny-secret", Action: policy.Deny, Rules: []policy.Rule{{To: []policy.Operation{{Paths: []string{"/secret"}}}}}}}
	h := start(t, cfg, func(o *Options) {
		o.Peer = func(*http.Request) Peer {
			return Peer{Principal: "spiffe://cluster.local/ns/default/sa/productpage", Workload: "productpage-v1", Labels: map[string]string{"app": "productpage"}}
		}
		o.ClusterID = "Kubernetes"
	})
	client := newClient(t)
	for i := 0; i < 7; i++ {
		h.get(t, client, "/reviews/1", nil)
	}
	for i := 0; i < 3; i++ {
		h.get(t, client, "/secret", nil)
	}
	base := map[string]string{
		"reporter": "waypoint", "source_principal": "spiffe://cluster.local/ns/default/sa/productpage",
		"source_workload": "productpage-v1", "source_workload_namespace": "default", "source_app": "productpage",
		"connection_security_policy": "mutual_tls",
	}
	with := func(extra map[string]string) map[string]string {
		m := map[string]string{}
		for k, v := range base {
			m[k] = v
		}
		for k, v := range extra {
			m[k] = v
		}
		return m
	}
	ok := with(map[string]string{"response_code": "200", "destination_service": "reviews.default.svc.cluster.local",
		"destination_service_name": "reviews", "destination_service_namespace": "default", "destination_app": "reviews", "destination_version": "v1", "response_flags": "-",
		"destination_workload": "reviews-v1", "source_cluster": "Kubernetes", "destination_cluster": "Kubernetes"})
	tests := []struct {
		metric string
		labels map[string]string
		want   float64
	}{
		{"istio_requests_total", ok, 7},
		{"istio_request_duration_milliseconds", ok, 7},
		{"istio_request_bytes", ok, 7},
		{"istio_response_bytes", ok, 7},
		{"istio_requests_total", with(map[string]string{"response_code": "403", "source_cluster": "Kubernetes", "destination_cluster": "unknown"}), 3},
		{"istio_requests_total", map[string]string{"reporter": "waypoint"}, 10},
	}
	for _, tt := range tests {
		if got := testutil.MetricSum(t, h.reg, tt.metric, tt.labels); got != tt.want {
			t.Errorf("%s%v = %v; want %v", tt.metric, tt.labels, got, tt.want)
		}
	}
	// Response bytes: 7 responses of 1000 bytes.
	mfs, _ := h.reg.Gather()
	for _, mf := range mfs {
		if mf.GetName() == "istio_response_bytes" {
			var sum float64
			for _, m := range mf.GetMetric() {
				if m.Histogram != nil && labelValue(m.GetLabel(), "response_code") == "200" {
					sum += m.Histogram.GetSampleSum()
				}
			}
			if sum != 7000 {
				t.Errorf("istio_response_bytes sum for 200s = %v; want 7000", sum)
			}
		}
	}
	lines := h.log.lines(t)
	if len(lines) != 10 {
		t.Fatalf("access log has %d lines; want 10", len(lines))
	}
	l := lines[0]
	if l.Method != "GET" || l.Path != "/reviews/1" || l.ResponseCode != 200 || l.BytesSent != 1000 || l.UpstreamHost != app ||
		l.UpstreamCluster != cl.Name || l.RouteName != "default" || l.ResponseFlags != "-" || l.RequestID == "-" {
		t.Errorf("access log line = %+v", l)
	}
	if d := lines[9]; d.ResponseCode != 403 || !strings.HasPrefix(d.ResponseCodeDetails, "rbac_access_denied_matched_policy[default/deny-secret]") {
		t.Errorf("denied access log line = %+v", d)
	}
}

func labelValue(ls []*dtoLabel, name string) string {
	for _, l := range ls {
		if l.GetName() == name {
			return l.GetValue()
		}
	}
	return ""
}

func TestNewRejectsDuplicateRegistration(t *testing.T) {
	reg := prometheus.NewRegistry()
	cfg := oneRoute([]model.L7Cluster{clusterOf("a", "127.0.0.1:1")}, model.L7Route{Name: "r", Destinations: to("a")})
	if _, err := New(Options{Config: cfg, Registerer: reg}); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Options{Config: cfg, Registerer: reg}); err == nil {
		t.Error("second New() on the same registry = nil; want a registration error")
	}
}
