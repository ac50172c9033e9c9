package meshtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// infraParams is a parameters ConfigMap for a waypoint Gateway: replicas
// (none when 0, the autoscaler's count; -1 is one the API server refuses)
// and the waypoint container's memory limit, an annotation on its Service,
// and extra (more data keys, indented as they are).
func infraParams(replicas int, extra string) string {
	replicasLine := ""
	if replicas != 0 {
		replicasLine = fmt.Sprintf("\n      replicas: %d", replicas)
	}
	return fmt.Sprintf(`apiVersion: v1
kind: ConfigMap
metadata: {name: wp-params}
data:
  deployment: |
    spec:%s
      template:
        spec:
          containers:
          - name: waypoint
            resources: {limits: {memory: 512Mi}}
  service: |
    metadata: {annotations: {example.com/lb: internal}}
%s`, replicasLine, extra)
}

const infraGateway = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint}
spec:
  gatewayClassName: istio-waypoint
  infrastructure:
    labels: {example.com/team: payments}
    annotations: {example.com/cost-center: "42"}
    parametersRef: {group: "", kind: ConfigMap, name: wp-params}
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`

// TestWaypointInfrastructure: a waypoint Gateway's spec.infrastructure, as
// Istio reads it. Its labels and annotations are on the waypoint's
// Deployment, Service, ServiceAccount and pods; the ConfigMap its
// parametersRef names sets the replicas and the waypoint container's memory
// limit and annotates the Service; an edit of the ConfigMap is rolled out;
// its horizontalPodAutoscaler and podDisruptionBudget keys make those
// objects for the waypoint, removed when the keys go;
// class defaults (a ConfigMap in the mesh namespace labelled
// gateway.istio.io/defaults-for-class: istio-waypoint) annotate its
// Deployment and Service, its own parameters winning where both set a
// field, until the ConfigMap is deleted;
// a ConfigMap meshlet cannot use (another key; a Deployment the API server
// refuses) rejects the Gateway (Accepted False, InvalidParameters, saying
// why) and leaves the running waypoint as it was, its Service too.
func TestWaypointInfrastructure(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, infraParams(2, "")+"---\n"+infraGateway)
	pods := lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint", 2, 3*time.Minute)
	for _, p := range pods {
		lim := p.Spec.Containers[0].Resources.Limits.Memory().String()
		if p.Labels["example.com/team"] != "payments" || p.Annotations["example.com/cost-center"] != "42" || lim != "512Mi" {
			t.Errorf("pod %s: labels %v, annotations %v, memory limit %s; want the infrastructure's label and annotation and the parameters' 512Mi",
				p.Name, p.Labels, p.Annotations, lim)
		}
	}
	meta := func(kind string) (labels, annotations map[string]string) {
		t.Helper()
		out, err := lb.Kubectl("get", kind, "waypoint", "-n", ns, "-o", "json")
		if err != nil {
			t.Fatalf("get %s: %v: %s", kind, err, out)
		}
		var obj struct {
			Metadata struct{ Labels, Annotations map[string]string }
		}
		if err := json.Unmarshal([]byte(out), &obj); err != nil {
			t.Fatal(err)
		}
		return obj.Metadata.Labels, obj.Metadata.Annotations
	}
	for _, kind := range []string{"deployment", "service", "serviceaccount"} {
		l, a := meta(kind)
		if l["example.com/team"] != "payments" || a["example.com/cost-center"] != "42" || l["gateway.networking.k8s.io/gateway-name"] != "waypoint" {
			t.Errorf("%s labels %v, annotations %v; want the infrastructure's beside meshlet's", kind, l, a)
		}
	}
	if _, a := meta("service"); a["example.com/lb"] != "internal" {
		t.Errorf("service annotations %v; want the parameters' example.com/lb", a)
	}

	// Class defaults: a ConfigMap in the mesh namespace labelled for the
	// waypoint's class is merged under its own parameters, which win where
	// both set a field (the Service annotation, the memory limit: the pod
	// template stays as it was, no rollout); gone with the ConfigMap.
	const classDefaults = "infra-test-waypoint-defaults"
	t.Cleanup(func() {
		_, _ = lb.Kubectl("delete", "configmap", classDefaults, "-n", meshSystem, "--ignore-not-found")
	})
	lb.Apply(t, meshSystem, `apiVersion: v1
kind: ConfigMap
metadata:
  name: `+classDefaults+`
  labels: {gateway.istio.io/defaults-for-class: istio-waypoint}
data:
  deployment: |
    metadata: {annotations: {example.com/class-default: "yes"}}
    spec:
      template:
        spec:
          containers:
          - name: waypoint
            resources: {limits: {memory: 128Mi}}
  service: |
    metadata: {annotations: {example.com/lb: class, example.com/class-default: "yes"}}
`)
	classDefaulted := func() (deployment, service string) {
		_, d := meta("deployment")
		_, s := meta("service")
		return d["example.com/class-default"], s["example.com/class-default"]
	}
	lab.WaitFor(t, time.Minute, "the class defaults on the waypoint's Deployment and Service", func() (bool, error) {
		d, s := classDefaulted()
		return d == "yes" && s == "yes", fmt.Errorf("class-default annotation: deployment %q, service %q", d, s)
	})
	memory, _ := lb.Kubectl("get", "deployment", "waypoint", "-n", ns, "-o", "jsonpath={.spec.template.spec.containers[0].resources.limits.memory}")
	if _, a := meta("service"); a["example.com/lb"] != "internal" || strings.TrimSpace(memory) != "512Mi" {
		t.Errorf("with class defaults: service annotation example.com/lb %q, memory limit %q; want the Gateway's own internal and 512Mi over the class defaults'",
			a["example.com/lb"], memory)
	}
	if out, err := lb.Kubectl("delete", "configmap", classDefaults, "-n", meshSystem); err != nil {
		t.Fatalf("delete the class defaults: %v: %s", err, out)
	}
	lab.WaitFor(t, time.Minute, "the class defaults gone from the waypoint's Deployment and Service", func() (bool, error) {
		d, s := classDefaulted()
		return d == "" && s == "", fmt.Errorf("class-default annotation: deployment %q, service %q", d, s)
	})

	replicas := func() string {
		out, _ := lb.Kubectl("get", "deployment", "waypoint", "-n", ns, "-o", "jsonpath={.spec.replicas}")
		return strings.TrimSpace(out)
	}
	lb.Apply(t, ns, infraParams(1, ""))
	lab.WaitFor(t, time.Minute, "the ConfigMap's edit (replicas 1) rolled out", func() (bool, error) {
		return replicas() == "1", nil
	})

	lb.Apply(t, ns, infraParams(3, "  autoscaler: |\n    spec: {}\n"))
	accepted := func() string {
		out, _ := lb.Kubectl("get", "gateway", "waypoint", "-n", ns, "-o",
			`jsonpath={.status.conditions[?(@.type=="Accepted")].status} {.status.conditions[?(@.type=="Accepted")].reason} {.status.conditions[?(@.type=="Accepted")].message}`)
		return out
	}
	lab.WaitFor(t, time.Minute, "the Gateway rejected for its parameters", func() (bool, error) {
		return strings.HasPrefix(accepted(), "False InvalidParameters"), nil
	})
	if got := accepted(); !strings.Contains(got, "autoscaler") || !strings.Contains(got, "wp-params") {
		t.Errorf("Accepted: %q; want the message to name the ConfigMap and the key", got)
	}
	if got := replicas(); got != "1" {
		t.Errorf("replicas %s after the rejected parameters; want 1, as deployed before", got)
	}
	// Parameters that merge but make an object the API server refuses:
	// found by a dry run, so nothing of them is written.
	lb.Apply(t, ns, strings.Replace(infraParams(-1, ""), "example.com/lb: internal", "example.com/lb: external", 1))
	lab.WaitFor(t, time.Minute, "the Gateway rejected for a Deployment the API server refuses", func() (bool, error) {
		got := accepted()
		return strings.HasPrefix(got, "False InvalidParameters") && strings.Contains(got, "invalid"), nil
	})
	if _, a := meta("service"); a["example.com/lb"] != "internal" || replicas() != "1" {
		t.Errorf("after parameters the API server refuses: service annotation %q, replicas %s; want internal and 1, as deployed before",
			a["example.com/lb"], replicas())
	}
	lb.Apply(t, ns, infraParams(1, ""))
	lab.WaitFor(t, time.Minute, "the Gateway accepted again once its parameters are fixed", func() (bool, error) {
		return strings.HasPrefix(accepted(), "True Accepted"), nil
	})

	// An autoscaler (which owns the replica count: the parameters set none)
	// and a disruption budget, while the parameters ask.
	lb.Apply(t, ns, infraParams(0, `  horizontalPodAutoscaler: |
    spec: {minReplicas: 1, maxReplicas: 3}
  podDisruptionBudget: |
    spec: {minAvailable: 1}
`))
	get := func(kind, path string) string {
		out, err := lb.Kubectl("get", kind, "waypoint", "-n", ns, "-o", "jsonpath="+path)
		if err != nil {
			return "absent: " + out
		}
		return strings.TrimSpace(out)
	}
	lab.WaitFor(t, time.Minute, "the waypoint's autoscaler and disruption budget made", func() (bool, error) {
		hpa := get("hpa", "{.spec.scaleTargetRef.kind}/{.spec.scaleTargetRef.name} {.spec.maxReplicas}")
		pdb := get("pdb", "{.spec.selector.matchLabels.gateway\\.networking\\.k8s\\.io/gateway-name} {.spec.minAvailable}")
		return hpa == "Deployment/waypoint 3" && pdb == "waypoint 1", fmt.Errorf("autoscaler %q, disruption budget %q", hpa, pdb)
	})
	lb.Apply(t, ns, infraParams(1, ""))
	lab.WaitFor(t, time.Minute, "the autoscaler and disruption budget removed with their keys", func() (bool, error) {
		hpa, pdb := get("hpa", "{.metadata.name}"), get("pdb", "{.metadata.name}")
		return strings.HasPrefix(hpa, "absent") && strings.HasPrefix(pdb, "absent"), fmt.Errorf("autoscaler %q, disruption budget %q", hpa, pdb)
	})
}
