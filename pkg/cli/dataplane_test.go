package cli

import (
	"net/netip"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// row reports whether out has a line whose whitespace-separated cells
// start with cells, in order.
func hasRow(out string, cells ...string) bool {
	for _, line := range strings.Split(out, "\n") {
		f := regexp.MustCompile(`\s{2,}`).Split(strings.TrimSpace(line), -1)
		if len(f) < len(cells) {
			continue
		}
		ok := true
		for i, c := range cells {
			if f[i] != c {
				ok = false
				break
			}
		}
		if ok {
			return true
		}
	}
	return false
}

func TestPrintAgentConfig(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	wp := &model.WaypointRef{Waypoint: model.NamespacedName{Namespace: "shop", Name: "waypoint"}}
	d := &configdump.Agent{
		Node: "n1", RootNamespace: "istio-system", Enrolled: []string{"u1"},
		Workloads: []*model.Workload{
			{UID: "u2", Name: "web-2", Namespace: "shop", Node: "n2", IPs: []netip.Addr{netip.MustParseAddr("198.18.2.5")}, Identity: "spiffe://cluster.local/ns/shop/sa/web", Enrolled: true, Waypoint: wp},
			{UID: "u1", Name: "web-1", Namespace: "shop", Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("198.18.1.5")}, Identity: "spiffe://cluster.local/ns/shop/sa/web", Enrolled: true},
			{UID: "u3", Name: "legacy", Namespace: "old", Node: "n1", IPs: []netip.Addr{netip.MustParseAddr("198.18.1.9")}},
		},
		Services: []*model.Service{{Name: "web", Namespace: "shop", Source: model.SourceKubernetes,
			VIPs: []netip.Addr{netip.MustParseAddr("198.19.0.10")}, Ports: []model.ServicePort{{Port: 80}, {Port: 443}},
			Endpoints: []model.Endpoint{{WorkloadUID: "u1", Ready: true}, {WorkloadUID: "u2"}}, Waypoint: wp},
			{Name: "api", Namespace: "shop", Source: model.SourceKubernetes, VIPs: []netip.Addr{netip.MustParseAddr("198.19.0.11")},
				Ports: []model.ServicePort{{Port: 8080}}, TrafficDistribution: model.TrafficPreferClose},
			{Name: "dns-cache", Namespace: "shop", Source: model.SourceKubernetes, VIPs: []netip.Addr{netip.MustParseAddr("198.19.0.12")},
				Ports: []model.ServicePort{{Port: 53}}, NodeLocal: true, TrafficDistribution: model.TrafficPreferClose},
			{Name: "cart", Namespace: "shop", Source: model.SourceKubernetes, VIPs: []netip.Addr{netip.MustParseAddr("198.19.0.13")},
				Ports: []model.ServicePort{{Port: 80}}, SessionAffinity: time.Hour, TrafficDistribution: model.TrafficPreferClose}},
		AuthorizationPolicies: []*model.AuthorizationPolicy{{Policy: &policy.Policy{Name: "deny-admin", Namespace: "shop", Action: policy.Deny},
			Selector: map[string]string{"app": "web"}},
			{Policy: &policy.Policy{Name: "ext", Namespace: "shop", Action: policy.Custom, Provider: "authz"}, Selector: map[string]string{"app": "web"}}},
		PeerAuthentications: []*model.PeerAuthentication{{Meta: model.ObjectMeta{Name: "default", Namespace: "istio-system"}, Mode: model.MTLSStrict}},
		Certificates: []configdump.Certificate{{Identity: "spiffe://cluster.local/ns/shop/sa/web", SerialNumber: "1f",
			NotBefore: now.Add(-time.Hour), NotAfter: now.Add(23 * time.Hour), Issuer: "O=cluster.local"}},
	}
	tests := []struct {
		kind, ns string
		rows     [][]string
		absent   []string
	}{
		{kind: "workloads", rows: [][]string{
			{"NAMESPACE", "NAME", "IP", "NODE", "IDENTITY", "WAYPOINT", "PROTOCOL"},
			{"old", "legacy", "198.18.1.9", "n1", "-", "None", "TCP"},
			{"shop", "web-1", "198.18.1.5", "n1", "spiffe://cluster.local/ns/shop/sa/web", "None", "HBONE (this node)"},
			{"shop", "web-2", "198.18.2.5", "n2", "spiffe://cluster.local/ns/shop/sa/web", "shop/waypoint", "HBONE"},
		}},
		{kind: "workloads", ns: "shop", rows: [][]string{{"shop", "web-1"}}, absent: []string{"legacy"}},
		{kind: "services", rows: [][]string{{"shop", "web", "Service", "198.19.0.10", "80,443", "1/2", "shop/waypoint", "-"},
			{"shop", "api", "Service", "198.19.0.11", "8080", "0/0", "None", "PreferClose"},
			{"shop", "dns-cache", "Service", "198.19.0.12", "53", "0/0", "None", "NodeLocal"},
			{"shop", "cart", "Service", "198.19.0.13", "80", "0/0", "None", "PreferClose,ClientIP"}}},
		{kind: "policies", rows: [][]string{
			{"istio-system", "default", "PeerAuthentication", "STRICT", "mesh"},
			{"shop", "deny-admin", "AuthorizationPolicy", "DENY", "workloads app=web"},
			{"shop", "ext", "AuthorizationPolicy", "CUSTOM (authz)", "workloads app=web"},
		}},
		{kind: "certificates", rows: [][]string{{"spiffe://cluster.local/ns/shop/sa/web", "valid", "2026-12-06T11:00:00Z", "2026-12-07T11:00:00Z", "1f"}}},
		{kind: "all", rows: [][]string{{"WORKLOADS"}, {"SERVICES"}, {"POLICIES"}, {"CERTIFICATES"}, {"shop", "web-1"}, {"shop", "deny-admin"}}},
	}
	for _, tt := range tests {
		t.Run(tt.kind+"/"+tt.ns, func(t *testing.T) {
			var b strings.Builder
			if err := printAgentConfig(&b, d, tt.kind, tt.ns, now); err != nil {
				t.Fatal(err)
			}
			out := b.String()
			for _, r := range tt.rows {
				if !hasRow(out, r...) {
					t.Errorf("no row %q in:\n%s", r, out)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(out, a) {
					t.Errorf("%q shown with -n %s:\n%s", a, tt.ns, out)
				}
			}
		})
	}
	// Sorted by namespace and name, whatever the dump's order.
	var b strings.Builder
	_ = printAgentConfig(&b, d, "workloads", "", now)
	if out := b.String(); strings.Index(out, "web-1") > strings.Index(out, "web-2") {
		t.Errorf("web-2 before web-1:\n%s", out)
	}
}

func TestPrintProxyConfig(t *testing.T) {
	now := time.Date(2026, 12, 6, 12, 0, 0, 0, time.UTC)
	d := &configdump.Waypoint{Gateway: "shop/waypoint", L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "web.shop.svc.cluster.local:80", Port: 80, VirtualHosts: []model.VirtualHost{{
			Name: "web", Domains: []string{"web.shop.svc.cluster.local", "web", "web.shop", "198.19.0.10"},
			Routes: []model.L7Route{
				{Name: "beta", Matches: []model.RouteMatch{{URI: &model.StringMatch{Prefix: "/api"}, Headers: []model.HeaderMatch{{Name: "x-user"}}}},
					Destinations: []model.WeightedDestination{{Cluster: "web", Subset: "v2", Weight: 100}}},
				{Name: "split", Destinations: []model.WeightedDestination{{Cluster: "web", Subset: "v1", Weight: 90}, {Cluster: "web", Subset: "v2", Weight: 10}},
					Session: &model.SessionPersistence{Cookie: "web-session"}},
				{Name: "gone", Matches: []model.RouteMatch{{URI: &model.StringMatch{Exact: "/old"}}}, DirectResponse: &model.DirectResponse{Status: 410}},
			},
			TCP: &model.TCPRoute{Name: "default", Destinations: []model.WeightedDestination{{Cluster: "web", Weight: 1}}}},
			{Name: "db", Domains: []string{"db.shop.svc.cluster.local"}, Opaque: true,
				Routes: []model.L7Route{{Name: "default", Destinations: []model.WeightedDestination{{Cluster: "db", Weight: 1}}}},
				TCP:    &model.TCPRoute{Name: "shop/db", Destinations: []model.WeightedDestination{{Cluster: "db", Weight: 1}}}},
		}},
			{Name: "tls-nginx", Port: 8443, Passthrough: []model.PassthroughRoute{{Name: "nginx.shop.tls.0", SNIHosts: []string{"nginx.example.com"},
				Destinations: []model.WeightedDestination{{Cluster: "web", Weight: 100}}}}},
			{Name: "tcp", Port: 31400, TCP: &model.TCPRoute{Name: "tcp-echo.shop.tcp.0", Destinations: []model.WeightedDestination{
				{Cluster: "web", Subset: "v1", Weight: 80}, {Cluster: "web", Subset: "v2", Weight: 20}}}}},
		Workloads: []model.L7Workload{{Addresses: []string{"198.18.1.7"}, Name: "db-0", Namespace: "shop"}},
		Clusters: []model.L7Cluster{{Name: "web", Endpoints: []model.L7Endpoint{{Address: "198.18.1.5:8080"}, {Address: "198.18.2.5:8080"}},
			Subsets: []model.Subset{{Name: "v1"}, {Name: "v2"}}},
			{Name: "zoned", Endpoints: []model.L7Endpoint{{Address: "198.18.3.5:8080"}},
				Traffic: model.TrafficPolicy{LB: model.LBPolicy{Simple: model.LBRoundRobin, Locality: &model.LocalityLB{Priority: model.LocalityPriority}}}}},
	}, Certificates: []configdump.Certificate{{Identity: "spiffe://cluster.local/ns/shop/sa/waypoint", NotBefore: now.Add(-25 * time.Hour), NotAfter: now.Add(-time.Hour)}},
		Endpoints: []configdump.Endpoint{
			{Cluster: "web", Address: "198.18.1.5:8080", Active: 2},
			{Cluster: "web", Subset: "v1", Address: "198.18.1.5:8080", EjectedUntil: now.Add(30 * time.Second), Ejections: 1},
			{Cluster: "zoned", Address: "198.18.3.5:8080", Locality: "west/a/", Priority: "1"},
			{Cluster: "web", Address: "198.18.2.9:8080", Draining: true},
		}}
	tests := []struct {
		kind string
		rows [][]string
	}{
		{"listeners", [][]string{{"web.shop.svc.cluster.local:80", "80", "-", "web,db"}, {"tls-nginx", "8443", "passthrough", "-"}, {"tcp", "31400", "tcp", "-"}, {"(workloads)", "*", "workload", "shop/db-0"}}},
		{"routes", [][]string{
			{"web.shop.svc.cluster.local:80", "web", "web.shop.svc.cluster.local,web (+2)", "beta", "uri^=/api header:x-user", "web|v2"},
			{"web.shop.svc.cluster.local:80", "web", "web.shop.svc.cluster.local,web (+2)", "split", "*", "web|v1 90%, web|v2 10% (session: cookie web-session)"},
			{"web.shop.svc.cluster.local:80", "web", "web.shop.svc.cluster.local,web (+2)", "gone", "uri=/old", "direct response 410"},
			{"web.shop.svc.cluster.local:80", "web", "web.shop.svc.cluster.local,web (+2)", "default", "tcp (not http)", "web"},
			{"web.shop.svc.cluster.local:80", "db", "db.shop.svc.cluster.local", "shop/db", "tcp (all: port declared tcp)", "db"},
			{"tls-nginx", "(tls passthrough)", "nginx.example.com", "nginx.shop.tls.0", "sni nginx.example.com", "web"},
			{"tcp", "(tcp)", "-", "tcp-echo.shop.tcp.0", "*", "web|v1 80%, web|v2 20%"},
		}},
		{"clusters", [][]string{{"web", "-", "-", "v1,v2", "198.18.1.5:8080,198.18.2.5:8080"},
			{"zoned", "-", "ROUND_ROBIN+LOCALITY_FAILOVER(region,zone,subzone)", "-", "198.18.3.5:8080"}}},
		{"certificates", [][]string{{"spiffe://cluster.local/ns/shop/sa/waypoint", "expired"}}},
		{"endpoints", [][]string{{"web", "-", "198.18.1.5:8080", "HEALTHY", "2", "0", "-", "-"}, {"web", "v1", "198.18.1.5:8080", "EJECTED for 30s", "0", "1", "-", "-"},
			{"zoned", "-", "198.18.3.5:8080", "HEALTHY", "0", "0", "west/a/", "1"}, {"web", "-", "198.18.2.9:8080", "DRAINING (sessions only)", "0", "0", "-", "-"}}},
	}
	for _, tt := range tests {
		t.Run(tt.kind, func(t *testing.T) {
			var b strings.Builder
			if err := printProxyConfig(&b, d, tt.kind, now); err != nil {
				t.Fatal(err)
			}
			for _, r := range tt.rows {
				if !hasRow(b.String(), r...) {
					t.Errorf("no row %q in:\n%s", r, b.String())
				}
			}
		})
	}
	// Routes are listed in match order (first match wins).
	var b strings.Builder
	_ = printProxyConfig(&b, d, "routes", now)
	if out := b.String(); !(strings.Index(out, "beta") < strings.Index(out, "split") && strings.Index(out, "split") < strings.Index(out, "gone")) {
		t.Errorf("routes out of match order:\n%s", out)
	}
}

// TestNamespaceDefault: -n wins; without it the kubeconfig context's
// namespace, as kubectl's; without one (or without a kubeconfig) "default".
func TestNamespaceDefault(t *testing.T) {
	dir := t.TempDir()
	kc := filepath.Join(dir, "kubeconfig")
	if err := os.WriteFile(kc, []byte(`apiVersion: v1
kind: Config
clusters: [{name: lab, cluster: {server: "https://127.0.0.1:1"}}]
users: [{name: admin, user: {}}]
contexts:
- {name: shop, context: {cluster: lab, user: admin, namespace: shop}}
- {name: plain, context: {cluster: lab, user: admin}}
current-context: shop
`), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		kubeconfig, context, flag, want string
	}{
		{kc, "", "", "shop"},
		{kc, "", "billing", "billing"},
		{kc, "plain", "", "default"},
		{filepath.Join(dir, "missing"), "", "", "default"},
	}
	for _, tt := range tests {
		g := &globalOptions{kubeconfig: tt.kubeconfig, context: tt.context}
		if got := g.namespace(tt.flag); got != tt.want {
			t.Errorf("namespace(%q) with kubeconfig %s, context %q = %q; want %q", tt.flag, filepath.Base(tt.kubeconfig), tt.context, got, tt.want)
		}
	}
}
