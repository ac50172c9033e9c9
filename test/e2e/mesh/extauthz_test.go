package meshtest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// TestExtAuthz: Istio's external authorization task on a waypoint. The mesh
// config (ConfigMap istio in istio-system, key mesh, as Istio keeps it)
// names an HTTP ext_authz provider (`echo authz`, like Istio's ext-authz
// sample); a CUSTOM AuthorizationPolicy attached to the namespace's
// waypoint sends /admin requests to it. A request with x-ext-authz: allow
// reaches the app carrying the x-user the authorizer set, and the client
// sees the authorizer's x-ext-authz-check-result; one without gets the
// authorizer's 403 and never reaches the app; other paths are not checked;
// with the authorizer gone, checks fail closed (403).
func TestExtAuthz(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, echoV1V2+`---
apiVersion: v1
kind: Pod
metadata: {name: ext-authz, labels: {app: ext-authz}}
spec:
  containers:
  - name: authz
    image: meshlet.dev/echo:latest
    args: [authz, -http, "8000"]
    readinessProbe: {httpGet: {path: /healthz, port: 8000}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: ext-authz}
spec:
  selector: {app: ext-authz}
  ports: [{name: http, port: 8000}]
`)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "app=ext-authz", 1, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	applyWaypoint(t, lb, run, ns, "--enroll-namespace")

	lb.Apply(t, "istio-system", fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: istio}
data:
  mesh: |
    extensionProviders:
    - name: lab-ext-authz
      envoyExtAuthzHttp:
        service: ext-authz.%s.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz, x-ext-authz-user]
        headersToUpstreamOnAllow: [x-user]
        headersToDownstreamOnAllow: [x-ext-authz-check-result]
`, ns))
	t.Cleanup(func() { _, _ = lb.Kubectl("-n", "istio-system", "delete", "configmap", "istio", "--ignore-not-found") })
	lb.Apply(t, ns, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: ext-authz}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: CUSTOM
  provider: {name: lab-ext-authz}
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`)
	admin := fmt.Sprintf("http://echo.%s.svc.cluster.local:8080/admin/users", ns)
	lab.WaitFor(t, time.Minute, "requests without the header denied by the authorizer", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "5", "-answer-header", "x-ext-authz-check-result", admin)
		return s.ByStatus["403"] == 5 && s.Answered["denied"] == 5, fmt.Errorf("status %v, check results %v (errors %v)", s.ByStatus, s.Answered, s.Errors)
	})
	s := summary(t, lb, ns, client.Name, "-n", "5", "-H", "x-ext-authz: allow", "-H", "x-ext-authz-user: alice", "-H", "x-user: mallory",
		"-seen-header", "x-user", "-answer-header", "x-ext-authz-check-result", admin)
	if s.ByStatus["200"] != 5 || s.Seen["alice"] != 5 || s.Answered["allowed"] != 5 {
		t.Errorf("allowed requests: status %v, the app saw x-user %v, the client saw check results %v (errors %v); want 5 x 200, alice, allowed", s.ByStatus, s.Seen, s.Answered, s.Errors)
	}
	s = summary(t, lb, ns, client.Name, "-n", "5", fmt.Sprintf("http://echo.%s.svc.cluster.local:8080/public", ns))
	if s.ByStatus["200"] != 5 {
		t.Errorf("/public (no CUSTOM rule matches): status %v (errors %v); want 5 x 200", s.ByStatus, s.Errors)
	}
	logs, err := lb.PodLogs(ns, "ext-authz", "authz")
	if err != nil {
		t.Fatal(err)
	}
	if strings.Contains(logs, "/public") || strings.Count(logs, "GET /admin/users") < 10 {
		t.Errorf("authorizer log:\n%s\nwant the /admin checks only", logs)
	}

	// The authorizer gone: checks fail, and the requests are denied.
	if out, err := lb.Kubectl("-n", ns, "delete", "pod", "ext-authz", "--wait=true"); err != nil {
		t.Fatalf("delete the authorizer: %v: %s", err, out)
	}
	lab.WaitFor(t, time.Minute, "requests denied with the authorizer gone (fail closed)", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "5", "-H", "x-ext-authz: allow", admin)
		return s.ByStatus["403"] == 5, fmt.Errorf("status %v (errors %v)", s.ByStatus, s.Errors)
	})
}
