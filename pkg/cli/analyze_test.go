package cli

import (
	"encoding/base64"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/meshlet/meshlet/pkg/testutil"
)

func TestAnalyzeCorpus(t *testing.T) {
	type want struct {
		severity Severity
		check    string
		object   string // Kind namespace/name
		message  string // exact message
	}
	tests := []struct {
		name     string
		args     []string
		wantExit int
		want     []want
	}{
		{
			name: "clean booking app", args: []string{"-f", "testdata/analyze/clean"},
		},
		{
			name: "removed API versions", args: []string{"-f", "testdata/analyze/removed-api/deploy.yaml"}, wantExit: 1,
			want: []want{
				{SeverityError, "removed-api", "Deployment default/inventory-v1", "apps/v1beta1 Deployment is removed since Kubernetes 1.16 (the API server refuses it): change apiVersion to apps/v1; apps/v1 also requires spec.selector matching the pod template's labels"},
				{SeverityError, "removed-api", "PodDisruptionBudget default/inventory", "policy/v1beta1 PodDisruptionBudget is removed since Kubernetes 1.25 (the API server refuses it): change apiVersion to policy/v1; in policy/v1 an empty selector selects every pod of the namespace"},
			},
		},
		{
			name: "VirtualService to unknown host and subset", args: []string{"-f", "testdata/analyze/vs-unknown"}, wantExit: 1,
			want: []want{
				{SeverityError, "config", "VirtualService default/shipping", "destination host shiping-service.default.svc.cluster.local matches no service or ServiceEntry"},
				{SeverityError, "config", "VirtualService default/shipping", `destination shipping-service.default.svc.cluster.local subset "v3" is not defined by a DestinationRule`},
			},
		},
		{
			name: "DestinationRule subset selecting no pod is a warning", args: []string{"-f", "testdata/analyze/dr-subset"},
			want: []want{
				{SeverityWarning, "config", "DestinationRule default/inventory-service", `subset "v2" (labels map[version:v2]) selects no endpoint of inventory-service.default.svc.cluster.local`},
			},
		},
		{
			name: "warnings fail under --failure-threshold Warning", args: []string{"-f", "testdata/analyze/dr-subset", "--failure-threshold", "Warning"}, wantExit: 1,
			want: []want{
				{SeverityWarning, "config", "DestinationRule default/inventory-service", `subset "v2" (labels map[version:v2]) selects no endpoint of inventory-service.default.svc.cluster.local`},
			},
		},
		{
			name: "policies selecting nothing", args: []string{"-f", "testdata/analyze/policies"},
			want: []want{
				{SeverityWarning, "config", "AuthorizationPolicy default/require-jwt", "selector map[app:bookings-service] matches no workload"},
				{SeverityWarning, "policy-selects-nothing", "RequestAuthentication default/jwt", "selector app=bookings-service matches no pod in namespace default: check the labels, or remove the selector to apply it namespace-wide"},
			},
		},
		{
			name: "conflicting PeerAuthentications", args: []string{"-f", "testdata/analyze/peerauth"}, wantExit: 1,
			want: []want{
				{SeverityError, "conflicting-peerauthentication", "PeerAuthentication default/permissive", "2 PeerAuthentications are namespace-wide (no selector) in namespace default (permissive, strict): only the oldest applies; merge them into one"},
				{SeverityError, "conflicting-peerauthentication", "PeerAuthentication default/strict", "2 PeerAuthentications are namespace-wide (no selector) in namespace default (permissive, strict): only the oldest applies; merge them into one"},
			},
		},
		{
			name: "Gateway with no gateway deployment", args: []string{"-f", "testdata/analyze/gateway"}, wantExit: 1,
			want: []want{
				{SeverityError, "gateway-no-deployment", "Gateway.networking.istio.io default/eastwest", "selector istio=eastwestgateway matches no gateway deployment: install one with meshctl install (the default profile has istio: ingressgateway)"},
			},
		},
		{
			name: "enrolled pod on a node without a ready node agent", args: []string{"-f", "testdata/analyze/node-agent", "--profile", "none"}, wantExit: 1,
			want: []want{
				{SeverityError, "no-node-agent", "Pod shop/booking-b", "enrolled (istio.io/dataplane-mode=ambient) but no ready meshlet node agent runs on node node-b, so its traffic bypasses the mesh: check kubectl -n meshlet-system get pods -o wide -l app.kubernetes.io/name=meshlet-node-agent (taints, resources), or run meshctl install"},
			},
		},
		{
			name: "ListenerSet its Gateway does not admit", args: []string{"-f", "testdata/analyze/listenerset"},
			want: []want{
				{SeverityWarning, "config", "ListenerSet team-a/team-a", "not attached to Gateway infra/edge: Gateway infra/edge does not admit ListenerSets of namespace team-a: its spec.allowedListeners.namespaces.from is None (the default); its owner can set Same, All or Selector"},
			},
		},
		{
			name: "minimal profile has no ingress gateway", args: []string{"-f", "testdata/analyze/gateway", "--profile", "minimal"}, wantExit: 1,
			want: []want{
				{SeverityError, "gateway-no-deployment", "Gateway.networking.istio.io default/booking-gateway", "selector istio=ingressgateway matches no gateway deployment: install one with meshctl install (the default profile has istio: ingressgateway)"},
				{SeverityError, "gateway-no-deployment", "Gateway.networking.istio.io default/eastwest", "selector istio=eastwestgateway matches no gateway deployment: install one with meshctl install (the default profile has istio: ingressgateway)"},
			},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := run(t, "", false, append(append(noCluster(t), "analyze"), tc.args...)...)
			exit := 0
			var ex ExitError
			switch {
			case errors.As(err, &ex):
				exit = ex.Code
			case err != nil:
				t.Fatal(err)
			}
			if exit != tc.wantExit {
				t.Errorf("exit code %d, want %d", exit, tc.wantExit)
			}
			lines := strings.Split(strings.TrimSpace(out), "\n")
			if len(tc.want) == 0 {
				if out != "✔ No problems found.\n" {
					t.Errorf("output:\n%s\nwant no problems", out)
				}
				return
			}
			if len(lines) != len(tc.want) {
				t.Errorf("got %d findings, want %d:\n%s", len(lines), len(tc.want), out)
			}
			for _, w := range tc.want {
				prefix := string(w.severity) + " [" + w.check + "] " + w.object + " ("
				found := false
				for _, l := range lines {
					if strings.HasPrefix(l, prefix) && strings.HasSuffix(l, "): "+w.message) {
						found = true
					}
				}
				if !found {
					t.Errorf("no finding %q ... %q in:\n%s", prefix, w.message, out)
				}
			}
		})
	}
}

func TestAnalyzeJSONGolden(t *testing.T) {
	out, _, err := run(t, "", false, append(noCluster(t), "analyze", "-o", "json",
		"-f", "testdata/analyze/vs-unknown", "-f", "testdata/analyze/peerauth", "-f", "testdata/analyze/removed-api", "-f", "testdata/analyze/policies")...)
	var ex ExitError
	if !errors.As(err, &ex) || ex.Code != 1 {
		t.Errorf("analyze -o json with errors: %v, want exit code 1", err)
	}
	golden(t, "analyze/findings.json", []byte(out))
}

func TestAnalyzeBadInput(t *testing.T) {
	tests := []struct {
		name    string
		args    []string
		wantErr string
	}{
		{"missing file", []string{"-f", "testdata/analyze/nope.yaml"}, "pass existing files or directories with -f"},
		{"bad threshold", []string{"-f", "testdata/analyze/clean", "--failure-threshold", "Info"}, `unknown --failure-threshold "Info": use Error or Warning`},
		{"bad output", []string{"-f", "testdata/analyze/clean", "-o", "xml"}, `unknown output format "xml"`},
		{"live without cluster", nil, "pass --kubeconfig and --context, or set KUBECONFIG"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, _, err := run(t, "", false, append(append(noCluster(t), "analyze"), tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// Live analysis without the right to list Secrets or ConfigMaps skips the
// checks of references to them instead of reporting each as missing; with
// that right (or from files) a missing one is still reported.
func TestAnalyzeUnreadableReferences(t *testing.T) {
	const config = `apiVersion: v1
kind: Service
metadata: {name: api, namespace: shop}
spec:
  selector: {app: api}
  ports: [{name: http, port: 80, targetPort: 8443}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner, namespace: shop, labels: {istio.io/use-waypoint: waypoint}}
spec:
  hosts: [api.partner.example]
  ports: [{number: 80, name: http, protocol: HTTP, targetPort: 443}]
  resolution: DNS
---
apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: partner, namespace: shop}
spec:
  host: api.partner.example
  trafficPolicy: {tls: {mode: SIMPLE, credentialName: partner-ca}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint, namespace: shop}
spec:
  gatewayClassName: istio-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: BackendTLSPolicy
metadata: {name: api, namespace: shop}
spec:
  targetRefs: [{group: "", kind: Service, name: api}]
  validation:
    hostname: api.shop.example
    caCertificateRefs: [{group: "", kind: ConfigMap, name: api-ca}]
`
	f := filepath.Join(t.TempDir(), "config.yaml")
	if err := os.WriteFile(f, []byte(config), 0o644); err != nil {
		t.Fatal(err)
	}
	// Read (from files here, as live analysis lists them), they satisfy
	// the references.
	present := filepath.Join(t.TempDir(), "present.yaml")
	cert, key := testutil.SelfSignedPEM(t, "api.shop.example")
	if err := os.WriteFile(present, fmt.Appendf(nil, `apiVersion: v1
kind: Secret
metadata: {name: partner-ca, namespace: shop}
type: kubernetes.io/tls
data: {tls.crt: %s, tls.key: %s, ca.crt: %[1]s}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: api-ca, namespace: shop}
data: {ca.crt: %q}
`, base64.StdEncoding.EncodeToString(cert), base64.StdEncoding.EncodeToString(key), cert), 0o644); err != nil {
		t.Fatal(err)
	}
	reported := func(findings []Finding, part string) bool {
		return slices.ContainsFunc(findings, func(f Finding) bool { return strings.Contains(f.Message, part) })
	}
	const noSecret, noConfigMap = "no Secret of type kubernetes.io/tls", ": no ConfigMap shop/api-ca"
	for _, tt := range []struct {
		unreadable         []string
		wantSecret, wantCM bool
	}{
		{nil, true, true},
		{[]string{"Secret"}, false, true},
		{[]string{"ConfigMap"}, true, false},
		{[]string{"Secret", "ConfigMap"}, false, false},
	} {
		findings, err := AnalyzeFiles([]string{f}, AnalyzeOptions{AssumeProfile: "none", Unreadable: tt.unreadable})
		if err != nil {
			t.Fatal(err)
		}
		withRefs, err := AnalyzeFiles([]string{f, present}, AnalyzeOptions{AssumeProfile: "none", Unreadable: tt.unreadable})
		if err != nil {
			t.Fatal(err)
		}
		if reported(withRefs, noSecret) || reported(withRefs, noConfigMap) {
			t.Errorf("unreadable %v: with the Secret and ConfigMap read, findings %v; want neither reported missing", tt.unreadable, withRefs)
		}
		if got := reported(findings, noSecret); got != tt.wantSecret {
			t.Errorf("unreadable %v: missing Secret reported %t; want %t (findings %v)", tt.unreadable, got, tt.wantSecret, findings)
		}
		if got := reported(findings, noConfigMap); got != tt.wantCM {
			t.Errorf("unreadable %v: missing ConfigMap reported %t; want %t (findings %v)", tt.unreadable, got, tt.wantCM, findings)
		}
	}
}
