package configdump

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

func TestCertificateState(t *testing.T) {
	nb := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	c := Certificate{NotBefore: nb, NotAfter: nb.Add(24 * time.Hour)}
	tests := []struct {
		at   time.Time
		want string
	}{
		{nb.Add(-time.Minute), "not yet valid"},
		{nb, "valid"},
		{nb.Add(12 * time.Hour), "valid"},
		{nb.Add(22 * time.Hour), "expiring"}, // under a tenth of 24h left
		{nb.Add(24 * time.Hour), "expired"},
		{nb.Add(48 * time.Hour), "expired"},
	}
	for _, tt := range tests {
		if got := c.State(tt.at); got != tt.want {
			t.Errorf("State(%s) = %q; want %q", tt.at, got, tt.want)
		}
	}
	if _, ok := CertificateOf("spiffe://x/ns/a/sa/b", nil); ok {
		t.Error("CertificateOf(no chain) ok; want false")
	}
}

// TestAgentDocument: the document served holds the snapshot's model and
// decodes back into the same objects (what meshctl reads); only GET.
func TestAgentDocument(t *testing.T) {
	web := &model.Workload{UID: "u1", Kind: model.KindPod, Name: "web-1", Namespace: "shop", Node: "n1",
		IPs: []netip.Addr{netip.MustParseAddr("198.18.1.5")}, Identity: "spiffe://cluster.local/ns/shop/sa/web", Enrolled: true}
	svc := &model.Service{Name: "web", Namespace: "shop", Source: model.SourceKubernetes, VIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")},
		Ports: []model.ServicePort{{Name: "http", Port: 80}}, Endpoints: []model.Endpoint{{WorkloadUID: "u1", Ready: true}}}
	deny := &model.AuthorizationPolicy{Policy: &policy.Policy{Name: "deny-admin", Namespace: "shop", Action: policy.Deny}}
	s := model.NewSnapshot(model.SnapshotInput{Version: 7, TrustDomain: "example.org", Workloads: []*model.Workload{web},
		Services: []*model.Service{svc}, AuthorizationPolicies: []*model.AuthorizationPolicy{deny}})
	srv := httptest.NewServer(Handler(func() any {
		d := &Agent{Node: "n1", Enrolled: []string{"u1"}}
		d.SetModel(s)
		return d
	}))
	defer srv.Close()

	res, err := http.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	defer res.Body.Close()
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q; want application/json", ct)
	}
	var got Agent
	if err := json.NewDecoder(res.Body).Decode(&got); err != nil {
		t.Fatal(err)
	}
	if got.Node != "n1" || got.ConfigVersion != 7 || got.TrustDomain != "example.org" || len(got.Enrolled) != 1 {
		t.Errorf("document header = %+v; want node n1, version 7, trust domain example.org, one enrolled pod", got)
	}
	if len(got.Workloads) != 1 || got.Workloads[0].Identity != web.Identity || got.Workloads[0].IPs[0] != web.IPs[0] {
		t.Errorf("workloads = %+v; want web-1 with its identity and IP", got.Workloads)
	}
	if len(got.Services) != 1 || got.Services[0].VIPs[0] != svc.VIPs[0] || !got.Services[0].Endpoints[0].Ready {
		t.Errorf("services = %+v; want web with its VIP and ready endpoint", got.Services)
	}
	if len(got.AuthorizationPolicies) != 1 || got.AuthorizationPolicies[0].Policy.Action != policy.Deny {
		t.Errorf("policies = %+v; want deny-admin", got.AuthorizationPolicies)
	}

	post, err := http.Post(srv.URL, "text/plain", nil)
	if err != nil {
		t.Fatal(err)
	}
	post.Body.Close()
	if post.StatusCode != http.StatusMethodNotAllowed {
		t.Errorf("POST = %d; want 405", post.StatusCode)
	}
}

// TestRedactL7: a dump never carries a private key (an ingress listener's,
// an SNI entry's, an upstream client's, a subset's), and redacting leaves
// the config the proxy serves from untouched.
func TestRedactL7(t *testing.T) {
	const key = "-----BEGIN PRIVATE KEY-----\nsecret\n-----END PRIVATE KEY-----\n"
	mtls := func() *model.UpstreamTLS {
		return &model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "db", ClientCertPEM: "cert", ClientKeyPEM: key}
	}
	in := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "https", Port: 443,
			TLS: &model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: "cert", KeyPEM: key},
			SNI: []model.ListenerTLS{{Mode: model.TLSModeSimple, CertPEM: "cert2", KeyPEM: key, SNIHosts: []string{"a.example"}}}}},
		Clusters: []model.L7Cluster{{Name: "db", Traffic: model.TrafficPolicy{TLS: mtls()},
			Subsets: []model.Subset{{Name: "v1", Traffic: &model.TrafficPolicy{TLS: mtls()}}, {Name: "v2"}}}},
		ExtAuthz:  []model.ExtAuthz{{Name: "authz", AdditionalHeaders: map[string]string{"Authorization": "Bearer s3cret"}}},
		Telemetry: model.L7Telemetry{Tracer: &model.Tracer{Provider: "otel", Headers: map[string]string{"Api-Key": "t0ken"}}},
	}
	b, err := json.Marshal(RedactL7(in))
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(string(b), "PRIVATE KEY") || strings.Contains(string(b), "s3cret") || strings.Contains(string(b), "t0ken") ||
		strings.Count(string(b), Redacted) != 6 || !strings.Contains(string(b), `"Api-Key":"`+Redacted+`"`) {
		t.Errorf("redacted config = %s; want 4 keys, the authorizer's and the tracer's header values redacted and none shown", b)
	}
	if in.ExtAuthz[0].AdditionalHeaders["Authorization"] != "Bearer s3cret" || in.Telemetry.Tracer.Headers["Api-Key"] != "t0ken" {
		t.Error("RedactL7 changed the authorizer's or tracer's headers it was given")
	}
	if !strings.Contains(string(b), `"CertPEM":"cert2"`) || !strings.Contains(string(b), `"ClientCertPEM":"cert"`) {
		t.Errorf("redacted config = %s; want the certificates kept", b)
	}
	if in.Listeners[0].TLS.KeyPEM != key || in.Listeners[0].SNI[0].KeyPEM != key ||
		in.Clusters[0].Traffic.TLS.ClientKeyPEM != key || in.Clusters[0].Subsets[0].Traffic.TLS.ClientKeyPEM != key {
		t.Error("RedactL7 changed the config it was given")
	}
	if RedactL7(nil) != nil {
		t.Error("RedactL7(nil) != nil")
	}
}
