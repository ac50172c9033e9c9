package cli

import (
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/deployer"
)

// renderWith renders profile with values (YAML, as a -f file holds them),
// CRDs left out.
func renderWith(t *testing.T, profile, values string, set ...string) (*Rendered, error) {
	t.Helper()
	vf := filepath.Join(t.TempDir(), "values.yaml")
	if err := os.WriteFile(vf, []byte(values), 0o644); err != nil {
		t.Fatal(err)
	}
	return Render(RenderOptions{Profile: profile, ValueFiles: []string{vf}, Set: set, SkipCRDs: true})
}

// workload is a rendered Deployment's or DaemonSet's selector and pod
// template, decoded strictly.
type workload struct {
	selector *metav1.LabelSelector
	pod      corev1.PodTemplateSpec
}

func workloads(t *testing.T, r *Rendered) map[string]workload {
	t.Helper()
	out := map[string]workload{}
	for _, o := range r.Objects {
		switch o.GetKind() {
		case "Deployment":
			var d appsv1.Deployment
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &d, true); err != nil {
				t.Fatalf("Deployment %s: %v", o.GetName(), err)
			}
			out[o.GetName()] = workload{d.Spec.Selector, d.Spec.Template}
		case "DaemonSet":
			var d appsv1.DaemonSet
			if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &d, true); err != nil {
				t.Fatalf("DaemonSet %s: %v", o.GetName(), err)
			}
			out[o.GetName()] = workload{d.Spec.Selector, d.Spec.Template}
		}
	}
	return out
}

// placementValues sets every placement knob of every component, each to
// values of its own, with pull secrets given as a name and as {name:}.
const placementValues = `
global:
  imagePullSecrets: [reg-a, {name: reg-b}]
meshd:
  nodeSelector: {pool: control}
  tolerations: [{key: dedicated, value: control, effect: NoSchedule}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: zone, operator: In, values: [a]}]}]
  priorityClassName: mesh-critical
  topologySpreadConstraints: [{maxSkew: 1, topologyKey: topology.kubernetes.io/zone, whenUnsatisfiable: ScheduleAnyway, labelSelector: {matchLabels: {app.kubernetes.io/name: meshd}}}]
  podLabels: {team: mesh, app.kubernetes.io/part-of: meshlet}
  podAnnotations: {owner: meshd-team, prometheus.io/scrape: "false"}
nodeAgent:
  nodeSelector: {pool: mesh}
  tolerations: [{key: gpu, operator: Exists}]
  affinity:
    nodeAffinity:
      requiredDuringSchedulingIgnoredDuringExecution:
        nodeSelectorTerms: [{matchExpressions: [{key: mesh, operator: NotIn, values: ["off"]}]}]
  priorityClassName: agent-critical
  podLabels: {team: agent}
  podAnnotations: {owner: agent-team}
ingressGateway:
  nodeSelector: {pool: edge}
  tolerations: [{key: edge, operator: Exists, effect: NoSchedule}]
  affinity:
    podAntiAffinity:
      requiredDuringSchedulingIgnoredDuringExecution: [{topologyKey: kubernetes.io/hostname, labelSelector: {matchLabels: {istio: ingressgateway}}}]
  priorityClassName: edge-high
  topologySpreadConstraints: [{maxSkew: 2, topologyKey: kubernetes.io/hostname, whenUnsatisfiable: DoNotSchedule, labelSelector: {matchLabels: {istio: ingressgateway}}}]
  podLabels: {team: edge}
  podAnnotations: {owner: edge-team}
prometheus:
  nodeSelector: {pool: obs}
  tolerations: [{key: obs, operator: Exists}]
  affinity:
    nodeAffinity:
      preferredDuringSchedulingIgnoredDuringExecution: [{weight: 1, preference: {matchExpressions: [{key: ssd, operator: Exists}]}}]
  priorityClassName: obs-low
  podLabels: {team: obs}
  podAnnotations: {owner: obs-team}
`

// TestRenderPodPlacement: every pod the chart makes carries the pull
// secrets and its component's nodeSelector, tolerations, affinity,
// priority, labels and annotations (topology spread for meshd and the
// ingress gateway), the chart's own labels still there and still
// selected; the node agent's nodeSelector is merged with the chart's
// default, as Helm merges maps.
func TestRenderPodPlacement(t *testing.T) {
	r, err := renderWith(t, "demo", placementValues)
	if err != nil {
		t.Fatal(err)
	}
	got := workloads(t, r)
	pull := []corev1.LocalObjectReference{{Name: "reg-a"}, {Name: "reg-b"}}
	tests := []struct {
		name         string
		nodeSelector map[string]string
		toleration   string // the key of the only toleration
		affinity     func(*corev1.Affinity) bool
		priority     string
		spreadSkew   int32 // 0: none
		team, owner  string
		ownLabels    map[string]string
		annotations  map[string]string // besides owner
	}{
		{
			name: "meshd", nodeSelector: map[string]string{"pool": "control"}, toleration: "dedicated",
			// A map is merged: the default anti-affinity stays beside the node affinity.
			affinity: func(a *corev1.Affinity) bool { return a.NodeAffinity != nil && a.PodAntiAffinity != nil },
			priority: "mesh-critical", spreadSkew: 1, team: "mesh", owner: "meshd-team",
			ownLabels:   map[string]string{"app.kubernetes.io/name": "meshd", "app.kubernetes.io/part-of": "meshlet", "istio.io/dataplane-mode": "none"},
			annotations: map[string]string{"prometheus.io/scrape": "false", "prometheus.io/port": "15014", "prometheus.io/path": "/metrics"},
		},
		{
			name: "meshlet-node-agent", nodeSelector: map[string]string{"pool": "mesh", "kubernetes.io/os": "linux"}, toleration: "gpu",
			affinity: func(a *corev1.Affinity) bool { return a.NodeAffinity != nil },
			priority: "agent-critical", team: "agent", owner: "agent-team",
			ownLabels:   map[string]string{"app.kubernetes.io/name": "meshlet-node-agent", "istio.io/dataplane-mode": "none"},
			annotations: map[string]string{"prometheus.io/scrape": "true", "prometheus.io/port": "15020"},
		},
		{
			name: "istio-ingressgateway", nodeSelector: map[string]string{"pool": "edge"}, toleration: "edge",
			affinity: func(a *corev1.Affinity) bool { return a.PodAntiAffinity != nil && a.NodeAffinity == nil },
			priority: "edge-high", spreadSkew: 2, team: "edge", owner: "edge-team",
			ownLabels:   map[string]string{"istio": "ingressgateway", "gateway.networking.k8s.io/gateway-name": "istio-ingressgateway", "istio.io/dataplane-mode": "none"},
			annotations: map[string]string{"prometheus.io/scrape": "true"},
		},
		{
			name: "prometheus", nodeSelector: map[string]string{"pool": "obs"}, toleration: "obs",
			affinity: func(a *corev1.Affinity) bool { return a.NodeAffinity != nil && a.PodAntiAffinity == nil },
			priority: "obs-low", team: "obs", owner: "obs-team",
			ownLabels: map[string]string{"app.kubernetes.io/name": "prometheus", "istio.io/dataplane-mode": "none"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w, ok := got[tt.name]
			if !ok {
				t.Fatalf("%s not rendered", tt.name)
			}
			spec := w.pod.Spec
			if d := cmp.Diff(pull, spec.ImagePullSecrets); d != "" {
				t.Errorf("imagePullSecrets (-want +got):\n%s", d)
			}
			if d := cmp.Diff(tt.nodeSelector, spec.NodeSelector); d != "" {
				t.Errorf("nodeSelector (-want +got):\n%s", d)
			}
			if len(spec.Tolerations) != 1 || spec.Tolerations[0].Key != tt.toleration {
				t.Errorf("tolerations = %+v; want only the one of key %s", spec.Tolerations, tt.toleration)
			}
			if spec.Affinity == nil || !tt.affinity(spec.Affinity) {
				t.Errorf("affinity = %+v; not the one set", spec.Affinity)
			}
			if spec.PriorityClassName != tt.priority {
				t.Errorf("priorityClassName = %q; want %q", spec.PriorityClassName, tt.priority)
			}
			var skew int32
			if n := len(spec.TopologySpreadConstraints); n == 1 {
				skew = spec.TopologySpreadConstraints[0].MaxSkew
			} else if n > 1 {
				t.Errorf("topologySpreadConstraints = %+v; want one", spec.TopologySpreadConstraints)
			}
			if skew != tt.spreadSkew {
				t.Errorf("topologySpreadConstraints maxSkew = %d; want %d (0: none)", skew, tt.spreadSkew)
			}
			l := w.pod.Labels
			if l["team"] != tt.team {
				t.Errorf("pod label team = %q; want %q", l["team"], tt.team)
			}
			for k, v := range tt.ownLabels {
				if l[k] != v {
					t.Errorf("pod label %s = %q; want the chart's %q", k, l[k], v)
				}
			}
			sel, err := metav1.LabelSelectorAsSelector(w.selector)
			if err != nil || !sel.Matches(labels.Set(l)) {
				t.Errorf("selector %v does not select the pod labels %v (%v)", w.selector, l, err)
			}
			a := w.pod.Annotations
			if a["owner"] != tt.owner {
				t.Errorf("pod annotation owner = %q; want %q", a["owner"], tt.owner)
			}
			for k, v := range tt.annotations {
				if a[k] != v {
					t.Errorf("pod annotation %s = %q; want %q", k, a[k], v)
				}
			}
		})
	}
}

// TestRenderPlacementDefaults: unset, the values render what the chart
// always did (the node agent on every Linux node whatever its taints,
// system-node-critical; meshd's replicas spread over nodes; no pull
// secrets), and a default can be dropped with null, as in Helm.
func TestRenderPlacementDefaults(t *testing.T) {
	r, err := renderWith(t, "demo", "")
	if err != nil {
		t.Fatal(err)
	}
	got := workloads(t, r)
	agent := got["meshlet-node-agent"].pod.Spec
	if d := cmp.Diff(map[string]string{"kubernetes.io/os": "linux"}, agent.NodeSelector); d != "" {
		t.Errorf("node agent nodeSelector (-want +got):\n%s", d)
	}
	if d := cmp.Diff([]corev1.Toleration{{Operator: corev1.TolerationOpExists}}, agent.Tolerations); d != "" {
		t.Errorf("node agent tolerations (-want +got):\n%s", d)
	}
	if agent.PriorityClassName != "system-node-critical" || agent.Affinity != nil {
		t.Errorf("node agent priorityClassName %q, affinity %+v; want system-node-critical, none", agent.PriorityClassName, agent.Affinity)
	}
	meshd := got["meshd"].pod.Spec
	want := &corev1.Affinity{PodAntiAffinity: &corev1.PodAntiAffinity{PreferredDuringSchedulingIgnoredDuringExecution: []corev1.WeightedPodAffinityTerm{{
		Weight: 100,
		PodAffinityTerm: corev1.PodAffinityTerm{
			TopologyKey:   "kubernetes.io/hostname",
			LabelSelector: &metav1.LabelSelector{MatchLabels: map[string]string{"app.kubernetes.io/name": "meshd"}},
		},
	}}}}
	if d := cmp.Diff(want, meshd.Affinity); d != "" {
		t.Errorf("meshd affinity (-want +got):\n%s", d)
	}
	for name, w := range got {
		s := w.pod.Spec
		if s.ImagePullSecrets != nil || (name != "meshlet-node-agent" && (s.NodeSelector != nil || s.Tolerations != nil || s.PriorityClassName != "")) || s.TopologySpreadConstraints != nil {
			t.Errorf("%s: pull secrets %v, nodeSelector %v, tolerations %v, priority %q, spread %v; want none by default",
				name, s.ImagePullSecrets, s.NodeSelector, s.Tolerations, s.PriorityClassName, s.TopologySpreadConstraints)
		}
	}

	r, err = renderWith(t, "minimal", "", "meshd.affinity.podAntiAffinity=null", "nodeAgent.nodeSelector.kubernetes\\.io/os=null")
	if err != nil {
		t.Fatal(err)
	}
	got = workloads(t, r)
	if a, ns := got["meshd"].pod.Spec.Affinity, got["meshlet-node-agent"].pod.Spec.NodeSelector; a != nil || ns != nil {
		t.Errorf("with the defaults set to null: meshd affinity %+v, node agent nodeSelector %v; want none", a, ns)
	}
}

// TestRenderPodLabelsKeepSelectors: a podLabel that would change a label
// the chart selects its pods by (or keeps them out of the mesh with) fails
// the render, naming the value and the label; the same value is taken.
func TestRenderPodLabelsKeepSelectors(t *testing.T) {
	tests := []struct {
		name    string
		values  string
		wantErr string // "": renders
	}{
		{"meshd name", "meshd: {podLabels: {app.kubernetes.io/name: control}}",
			"meshd.podLabels sets app.kubernetes.io/name=control, but the chart sets app.kubernetes.io/name=meshd on these pods"},
		{"node agent enrolled", "nodeAgent: {podLabels: {istio.io/dataplane-mode: ambient}}",
			"nodeAgent.podLabels sets istio.io/dataplane-mode=ambient, but the chart sets istio.io/dataplane-mode=none"},
		{"gateway selector", "ingressGateway: {podLabels: {istio: eastwest}}",
			"remove istio from ingressGateway.podLabels"},
		{"gateway name meshd knows it by", "ingressGateway: {podLabels: {gateway.networking.k8s.io/gateway-name: other}}",
			"ingressGateway.podLabels sets gateway.networking.k8s.io/gateway-name=other"},
		{"prometheus name", "prometheus: {podLabels: {app.kubernetes.io/name: prom}}",
			"prometheus.podLabels sets app.kubernetes.io/name=prom"},
		{"the chart's own value", "nodeAgent: {podLabels: {istio.io/dataplane-mode: none, app.kubernetes.io/name: meshlet-node-agent}}", ""},
		{"a number is a string label", "meshd: {podLabels: {tier: 1}}", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := renderWith(t, "demo", tt.values)
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Render = %v; want it to render", err)
				}
				workloads(t, r) // decodes strictly: label values are strings
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Render error = %v; want it to contain %q", err, tt.wantErr)
			}
		})
	}
}

// podMonitors returns the rendered PodMonitors by name.
func podMonitors(r *Rendered) map[string]*unstructured.Unstructured {
	out := map[string]*unstructured.Unstructured{}
	for _, o := range r.Objects {
		if o.GetKind() == "PodMonitor" {
			out[o.GetName()] = o
		}
	}
	return out
}

// pmSpec is the part of a monitoring.coreos.com/v1 PodMonitor the chart
// sets (the operator's Go types are not a dependency of meshlet).
type pmSpec struct {
	NamespaceSelector struct {
		Any        bool     `json:"any"`
		MatchNames []string `json:"matchNames"`
	} `json:"namespaceSelector"`
	Selector  metav1.LabelSelector `json:"selector"`
	Endpoints []struct {
		Port        string `json:"port"`
		Path        string `json:"path"`
		Interval    string `json:"interval"`
		Relabelings []struct {
			Action       string   `json:"action"`
			SourceLabels []string `json:"sourceLabels"`
			Regex        string   `json:"regex"`
			Replacement  string   `json:"replacement"`
			TargetLabel  string   `json:"targetLabel"`
		} `json:"relabelings"`
	} `json:"podMetricsEndpoints"`
}

func decodePodMonitor(t *testing.T, o *unstructured.Unstructured) pmSpec {
	t.Helper()
	var pm struct {
		Spec pmSpec `json:"spec"`
	}
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, &pm, false); err != nil {
		t.Fatalf("PodMonitor %s: %v", o.GetName(), err)
	}
	return pm.Spec
}

// selects reports whether pm's selector selects pod labels l.
func selects(t *testing.T, pm pmSpec, l map[string]string) bool {
	t.Helper()
	sel, err := metav1.LabelSelectorAsSelector(&pm.Selector)
	if err != nil {
		t.Fatal(err)
	}
	return sel.Matches(labels.Set(l))
}

// containerPort is the number of the container port named name in pod, 0
// when none.
func containerPort(pod corev1.PodSpec, name string) int32 {
	for _, c := range pod.Containers {
		for _, p := range c.Ports {
			if p.Name == name {
				return p.ContainerPort
			}
		}
	}
	return 0
}

// TestRenderPodMonitors: monitoring.podMonitor.enabled renders PodMonitors
// that select meshd (its metrics port 15014 by name), the node agents
// (15020, which they do not declare: by address), the chart's ingress
// gateway, and the waypoints and gateways pkg/deployer renders for meshd
// (their metrics port 15020), with the interval and the user's labels;
// off, as by default, none.
func TestRenderPodMonitors(t *testing.T) {
	for _, profile := range []string{"minimal", "default", "demo"} {
		r, err := renderWith(t, profile, "")
		if err != nil {
			t.Fatal(err)
		}
		if pms := podMonitors(r); len(pms) != 0 {
			t.Errorf("profile %s renders PodMonitors by default: %v", profile, pms)
		}
	}

	r, err := renderWith(t, "default", `monitoring: {podMonitor: {enabled: true, interval: 30s, labels: {release: kube-prometheus-stack, app.kubernetes.io/name: mine}}}`)
	if err != nil {
		t.Fatal(err)
	}
	pms := podMonitors(r)
	if len(pms) != 2 || pms["meshlet"] == nil || pms["meshlet-gateways"] == nil {
		t.Fatalf("PodMonitors %v; want meshlet and meshlet-gateways", pms)
	}
	for name, o := range pms {
		if o.GetAPIVersion() != "monitoring.coreos.com/v1" || o.GetNamespace() != DefaultNamespace {
			t.Errorf("PodMonitor %s: %s in %q; want monitoring.coreos.com/v1 in %s", name, o.GetAPIVersion(), o.GetNamespace(), DefaultNamespace)
		}
		if l := o.GetLabels(); l["release"] != "kube-prometheus-stack" || l["app.kubernetes.io/name"] != name {
			t.Errorf("PodMonitor %s labels %v; want release: kube-prometheus-stack beside the chart's own", name, l)
		}
		for _, e := range decodePodMonitor(t, o).Endpoints {
			if e.Interval != "30s" || e.Path != "/metrics" {
				t.Errorf("PodMonitor %s endpoint %+v; want interval 30s, path /metrics", name, e)
			}
		}
	}

	own := decodePodMonitor(t, pms["meshlet"])
	if d := cmp.Diff([]string{DefaultNamespace}, own.NamespaceSelector.MatchNames); d != "" || own.NamespaceSelector.Any {
		t.Errorf("PodMonitor meshlet namespaceSelector %+v; want the install namespace only", own.NamespaceSelector)
	}
	got := workloads(t, r)
	for _, tt := range []struct {
		workload string
		port     int32 // by the endpoint's named port; 0: by address
	}{{"meshd", 15014}, {"istio-ingressgateway", 15020}, {"meshlet-node-agent", 0}} {
		pod := got[tt.workload].pod
		if !selects(t, own, pod.Labels) {
			t.Errorf("PodMonitor meshlet does not select %s's pods (%v)", tt.workload, pod.Labels)
		}
		if tt.port != 0 {
			if p := containerPort(pod.Spec, own.Endpoints[0].Port); p != tt.port {
				t.Errorf("%s: port %q = %d; want %d", tt.workload, own.Endpoints[0].Port, p, tt.port)
			}
			continue
		}
		// The agent declares no port, so the named-port endpoint drops it
		// and the other keeps it, at its pod IP with 15020.
		if p := containerPort(pod.Spec, own.Endpoints[0].Port); p != 0 {
			t.Errorf("the node agent declares port %s: %d", own.Endpoints[0].Port, p)
		}
		if len(own.Endpoints) != 2 {
			t.Fatalf("PodMonitor meshlet endpoints %+v; want a second one for the node agent", own.Endpoints)
		}
		rl := own.Endpoints[1].Relabelings
		if len(rl) != 3 || rl[0].Action != "keep" || rl[0].Regex != "meshlet-node-agent" ||
			rl[1].TargetLabel != "__address__" || rl[1].Replacement != "$1:15020" || rl[2].Replacement != "[$1]:15020" {
			t.Errorf("node agent endpoint relabelings %+v; want keep the agent, address <pod IP>:15020", rl)
		}
	}

	gws := decodePodMonitor(t, pms["meshlet-gateways"])
	if !gws.NamespaceSelector.Any {
		t.Errorf("PodMonitor meshlet-gateways namespaceSelector %+v; want any namespace", gws.NamespaceSelector)
	}
	for _, class := range []gatewayv1.ObjectName{"meshlet-waypoint", "istio-waypoint", "meshlet", "istio"} {
		gw := &gatewayv1.Gateway{
			ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "gw", UID: types.UID("u1")},
			Spec: gatewayv1.GatewaySpec{GatewayClassName: class, Listeners: []gatewayv1.Listener{{Name: "http", Port: 8080, Protocol: gatewayv1.HTTPProtocolType}},
				Infrastructure: &gatewayv1.GatewayInfrastructure{Labels: map[gatewayv1.LabelKey]gatewayv1.LabelValue{"app.kubernetes.io/managed-by": "someone-else"}}},
		}
		objs, err := deployer.Render(gw, deployer.RenderOptions{MeshdAddress: "meshd.meshlet-system.svc:15012", TrustDomain: "cluster.local"}, deployer.Params{})
		if err != nil {
			t.Fatal(err)
		}
		// The apply configuration as the API server gets it.
		data, err := sigsyaml.Marshal(objs.Deployment)
		if err != nil {
			t.Fatal(err)
		}
		var d appsv1.Deployment
		if err := sigsyaml.Unmarshal(data, &d); err != nil {
			t.Fatal(err)
		}
		if !selects(t, gws, d.Spec.Template.Labels) {
			t.Errorf("class %s: PodMonitor meshlet-gateways does not select the deployer's pod labels %v", class, d.Spec.Template.Labels)
		}
		if p := containerPort(d.Spec.Template.Spec, gws.Endpoints[0].Port); p != 15020 {
			t.Errorf("class %s: the deployer's pods have port %q = %d; want 15020", class, gws.Endpoints[0].Port, p)
		}
		if selects(t, own, d.Spec.Template.Labels) {
			t.Errorf("class %s: PodMonitor meshlet selects the deployer's pods too (scraped twice)", class)
		}
	}
	if selects(t, gws, got["istio-ingressgateway"].pod.Labels) {
		t.Error("PodMonitor meshlet-gateways selects the chart's ingress gateway too (scraped twice)")
	}

	// Without the components, their selectors go; without meshd, nothing
	// deploys gateways; interval "" leaves it to the Prometheus.
	r, err = renderWith(t, "minimal", `monitoring: {podMonitor: {enabled: true, interval: ""}}`, "meshd.enabled=false")
	if err != nil {
		t.Fatal(err)
	}
	pms = podMonitors(r)
	if len(pms) != 1 || pms["meshlet"] == nil {
		t.Fatalf("minimal without meshd: PodMonitors %v; want meshlet only", pms)
	}
	own = decodePodMonitor(t, pms["meshlet"])
	if d := cmp.Diff([]string{"meshlet-node-agent"}, own.Selector.MatchExpressions[0].Values); d != "" {
		t.Errorf("minimal without meshd: selected names (-want +got):\n%s", d)
	}
	for _, e := range own.Endpoints {
		if e.Interval != "" {
			t.Errorf("interval %q rendered; want none", e.Interval)
		}
	}
}

// TestRenderWaypointImageFlags: meshd is told the chart's registry, tag and
// pull secrets for the waypoints and gateways it deploys at run time, so
// that those pull from where the chart's own pods do.
func TestRenderWaypointImageFlags(t *testing.T) {
	for _, tt := range []struct {
		values string
		want   []string
	}{
		{"", []string{"--waypoint-image=meshlet.dev/waypoint:latest"}},
		{"global: {hub: registry.corp.example/mesh, tag: 1.4.2, imagePullSecrets: [reg-a, {name: reg-b}]}",
			[]string{"--waypoint-image=registry.corp.example/mesh/waypoint:1.4.2", "--image-pull-secrets=reg-a,reg-b"}},
	} {
		r, err := renderWith(t, "default", tt.values)
		if err != nil {
			t.Fatal(err)
		}
		w, ok := workloads(t, r)["meshd"]
		if !ok {
			t.Fatal("meshd not rendered")
		}
		args := w.pod.Spec.Containers[0].Args
		for _, a := range tt.want {
			if !slices.Contains(args, a) {
				t.Errorf("values %q: meshd args %q; want %s", tt.values, args, a)
			}
		}
		if len(tt.want) == 1 && slices.ContainsFunc(args, func(a string) bool { return strings.HasPrefix(a, "--image-pull-secrets") }) {
			t.Errorf("meshd args %q: want no --image-pull-secrets without pull secrets", args)
		}
	}
}
