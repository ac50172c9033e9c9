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
// with the authorizer gone, checks fail closed (403). The same mesh config
// names an opentelemetry tracing provider (`echo otlp`, an OTLP/gRPC
// collector in the mesh) that the namespace's Telemetry selects: the
// waypoint's spans of the client's sampled trace reach it, named
// waypoint.<namespace>. (One test for both providers: one waypoint and one
// mesh config to set up.)
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
---
apiVersion: v1
kind: Pod
metadata: {name: collector, labels: {app: collector}}
spec:
  containers:
  - name: otlp
    image: meshlet.dev/echo:latest
    args: [otlp, -grpc, "4317"]
    readinessProbe: {tcpSocket: {port: 4317}, periodSeconds: 1}
---
apiVersion: v1
kind: Service
metadata: {name: collector}
spec:
  selector: {app: collector}
  ports: [{name: grpc-otlp, port: 4317}]
`)
	lb.WaitPodsReady(t, ns, "app=echo", 2, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "app=ext-authz", 1, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "app=collector", 1, 2*time.Minute)
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
        service: ext-authz.%[1]s.svc.cluster.local
        port: 8000
        includeRequestHeadersInCheck: [x-ext-authz, x-ext-authz-user]
        headersToUpstreamOnAllow: [x-user]
        headersToDownstreamOnAllow: [x-ext-authz-check-result]
    - name: lab-otel
      opentelemetry: {service: collector.%[1]s.svc.cluster.local, port: 4317}
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

	// Tracing: the namespace's Telemetry names the provider; the client's
	// sampled trace continues through the waypoint, whose span reaches
	// the collector as the child of the client's.
	lb.Apply(t, ns, `apiVersion: telemetry.istio.io/v1
kind: Telemetry
metadata: {name: traces}
spec:
  tracing: [{providers: [{name: lab-otel}]}]
`)
	const trace, parent = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
	lab.WaitFor(t, time.Minute, "the waypoint's spans at the collector", func() (bool, error) {
		summary(t, lb, ns, client.Name, "-n", "3", "-H", "traceparent: 00-"+trace+"-"+parent+"-01", fmt.Sprintf("http://echo.%s.svc.cluster.local:8080/traced", ns))
		logs, err := lb.PodLogs(ns, "collector", "otlp")
		want := fmt.Sprintf("span trace=%s parent=%s name=", trace, parent)
		for _, line := range strings.Split(logs, "\n") {
			if strings.HasPrefix(line, want) && strings.Contains(line, " service=waypoint."+ns+" ") && strings.Contains(line, " code=200 ") {
				return true, nil
			}
		}
		return false, fmt.Errorf("collector log (err %v):\n%s\nwant a line %q... service=waypoint.%s code=200", err, logs, want, ns)
	})

	// The authorizer gone: checks fail, and the requests are denied.
	if out, err := lb.Kubectl("-n", ns, "delete", "pod", "ext-authz", "--wait=true"); err != nil {
		t.Fatalf("delete the authorizer: %v: %s", err, out)
	}
	lab.WaitFor(t, time.Minute, "requests denied with the authorizer gone (fail closed)", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "5", "-H", "x-ext-authz: allow", admin)
		return s.ByStatus["403"] == 5, fmt.Errorf("status %v (errors %v)", s.ByStatus, s.Errors)
	})
}
