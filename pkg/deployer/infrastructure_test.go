package deployer

import (
	"errors"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// withInfra returns the waypoint Gateway with team/cost-center labels and
// annotations (one of each trying to take a key meshlet sets) and a
// parametersRef to the ConfigMap "wp-params".
func withInfra() *gatewayv1.Gateway {
	gw := gateway("istio-waypoint")
	gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{
		Labels:        map[gatewayv1.LabelKey]gatewayv1.LabelValue{"team": "payments", GatewayNameLabel: "hijack"},
		Annotations:   map[gatewayv1.AnnotationKey]gatewayv1.AnnotationValue{"cost-center": "42", "prometheus.io/port": "9999"},
		ParametersRef: &gatewayv1.LocalParametersReference{Group: "", Kind: "ConfigMap", Name: "wp-params"},
	}
	return gw
}

func params(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "wp-params", Namespace: "bookinfo"}, Data: data}
}

// gwParams is params as the Gateway's own, without class defaults.
func gwParams(data map[string]string) Params { return Params{Gateway: params(data)} }

// TestRenderInfrastructure: the Gateway's infrastructure labels and
// annotations land on every object and the pods, meshlet's own keys
// unchanged; the parameters ConfigMap's overlays change what they name
// (replicas when no autoscaler is asked for, placement, one resource of the waypoint container, Service and
// ServiceAccount annotations) and leave the rest of the rendered objects,
// and what meshd relies on (names, selectors, the gateway-name pod label),
// as meshlet renders them.
func TestRenderInfrastructure(t *testing.T) {
	gw := withInfra()
	if name, err := ParamsConfigMap(gw); err != nil || name != "wp-params" {
		t.Fatalf("ParamsConfigMap = %q, %v; want wp-params", name, err)
	}
	objs, err := Render(gw, opts, gwParams(map[string]string{
		"deployment": `
metadata: {name: other, labels: {gateway.networking.k8s.io/gateway-name: hijack, tier: edge}}
spec:
  selector: {matchLabels: {app: hijack}}
  template:
    metadata: {labels: {extra: "yes", gateway.networking.k8s.io/gateway-name: hijack}}
    spec:
      nodeSelector: {pool: edge}
      containers:
      - name: waypoint
        resources: {limits: {memory: 256Mi}}
`,
		"service":        "metadata: {annotations: {lb: internal}}\nspec: {selector: {app: hijack}}\n",
		"serviceAccount": "metadata: {annotations: {eks.amazonaws.com/role-arn: 'arn:x'}}\n",
		"horizontalPodAutoscaler": `spec:
  minReplicas: 2
  maxReplicas: 5
  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: other}
  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 80}}}]
`,
		"podDisruptionBudget": "spec: {minAvailable: 1, selector: {matchLabels: {app: hijack}}}\n",
	}))
	if err != nil {
		t.Fatal(err)
	}
	dep, svc, sa := objs.Deployment, objs.Service, objs.ServiceAccount
	tmpl := dep.Spec.Template
	for what, m := range map[string]map[string]string{
		"service account labels": sa.Labels, "deployment labels": dep.Labels, "service labels": svc.Labels, "pod labels": tmpl.Labels,
	} {
		if m["team"] != "payments" || m[GatewayNameLabel] != "waypoint" {
			t.Errorf("%s = %v; want team=payments and %s=waypoint", what, m, GatewayNameLabel)
		}
	}
	for what, m := range map[string]map[string]string{
		"service account annotations": sa.Annotations, "deployment annotations": dep.Annotations,
		"service annotations": svc.Annotations, "pod annotations": tmpl.Annotations,
	} {
		if m["cost-center"] != "42" {
			t.Errorf("%s = %v; want cost-center=42", what, m)
		}
	}
	if got := tmpl.Annotations["prometheus.io/port"]; got != "15020" {
		t.Errorf("pod annotation prometheus.io/port = %q; want meshlet's 15020", got)
	}
	if *dep.Name != "waypoint" || *dep.Namespace != "bookinfo" || len(dep.OwnerReferences) != 1 || dep.OwnerReferences[0].UID == nil || *dep.OwnerReferences[0].UID != gw.UID {
		t.Errorf("deployment %v/%v owned by %+v; want waypoint/bookinfo owned by the Gateway", dep.Name, dep.Namespace, dep.OwnerReferences)
	}
	if dep.Labels[GatewayNameLabel] != "waypoint" || dep.Labels["tier"] != "edge" {
		t.Errorf("deployment labels = %v; want the parameters' tier=edge beside meshlet's %s=waypoint", dep.Labels, GatewayNameLabel)
	}
	if dep.Spec.Replicas != nil {
		t.Errorf("replicas = %d beside an autoscaler; want none (the autoscaler's)", *dep.Spec.Replicas)
	}
	if sel := dep.Spec.Selector.MatchLabels; len(sel) != 1 || sel[GatewayNameLabel] != "waypoint" {
		t.Errorf("deployment selector = %v; want meshlet's", sel)
	}
	if tmpl.Labels["extra"] != "yes" || tmpl.Labels["istio.io/dataplane-mode"] != "none" {
		t.Errorf("pod labels = %v; want the parameters' extra=yes beside meshlet's", tmpl.Labels)
	}
	if tmpl.Spec.NodeSelector["pool"] != "edge" {
		t.Errorf("nodeSelector = %v; want pool=edge", tmpl.Spec.NodeSelector)
	}
	if n := len(tmpl.Spec.Containers); n != 1 {
		t.Fatalf("%d containers; want the waypoint's, merged by name", n)
	}
	c := tmpl.Spec.Containers[0]
	if c.Image == nil || *c.Image != DefaultImage || len(c.Args) == 0 || len(c.Env) == 0 {
		t.Errorf("waypoint container lost what meshlet renders: image %v, %d args, %d env", c.Image, len(c.Args), len(c.Env))
	}
	if r := c.Resources; r == nil || r.Limits.Memory().String() != "256Mi" || r.Requests.Cpu().String() != "100m" {
		t.Errorf("resources = %+v; want the 256Mi memory limit of the parameters and meshlet's 100m CPU request", r)
	}
	if svc.Annotations["lb"] != "internal" || len(svc.Spec.Selector) != 1 || svc.Spec.Selector[GatewayNameLabel] != "waypoint" {
		t.Errorf("service annotations %v, selector %v; want lb=internal and meshlet's selector", svc.Annotations, svc.Spec.Selector)
	}
	if sa.Annotations["eks.amazonaws.com/role-arn"] != "arn:x" || *sa.Name != "waypoint" {
		t.Errorf("service account %v annotations %v; want waypoint with the role annotation", *sa.Name, sa.Annotations)
	}
	hpa := objs.HorizontalPodAutoscaler
	if hpa == nil {
		t.Fatal("no HorizontalPodAutoscaler for parameters with the key")
	}
	if ref := hpa.Spec.ScaleTargetRef; *hpa.Name != "waypoint" || *ref.Kind != "Deployment" || *ref.Name != "waypoint" ||
		*hpa.Spec.MinReplicas != 2 || *hpa.Spec.MaxReplicas != 5 || len(hpa.Spec.Metrics) != 1 ||
		hpa.Labels[GatewayNameLabel] != "waypoint" || hpa.Annotations["cost-center"] != "42" || *hpa.OwnerReferences[0].UID != gw.UID {
		t.Errorf("autoscaler %s: target %s/%s, replicas %d..%d, %d metrics, labels %v, annotations %v; want the waypoint Deployment's, 2..5, 1, and the Gateway's",
			*hpa.Name, *ref.Kind, *ref.Name, *hpa.Spec.MinReplicas, *hpa.Spec.MaxReplicas, len(hpa.Spec.Metrics), hpa.Labels, hpa.Annotations)
	}
	pdb := objs.PodDisruptionBudget
	if pdb == nil {
		t.Fatal("no PodDisruptionBudget for parameters with the key")
	}
	if sel := pdb.Spec.Selector.MatchLabels; len(sel) != 1 || sel[GatewayNameLabel] != "waypoint" || pdb.Spec.MinAvailable.IntValue() != 1 || *pdb.OwnerReferences[0].UID != gw.UID {
		t.Errorf("disruption budget: selector %v, minAvailable %v; want the waypoint's pods, 1", sel, pdb.Spec.MinAvailable)
	}

	plain, err := Render(gw, opts, gwParams(map[string]string{"deployment": "spec: {replicas: 2}"}))
	if err != nil {
		t.Fatal(err)
	}
	if plain.HorizontalPodAutoscaler != nil || plain.PodDisruptionBudget != nil {
		t.Errorf("parameters without their keys made an autoscaler (%v) or disruption budget (%v)", plain.HorizontalPodAutoscaler != nil, plain.PodDisruptionBudget != nil)
	}
	if r := plain.Deployment.Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("replicas = %v; want 2 from the parameters", r)
	}
}

// TestRenderParamsRefused: parameters that cannot be used are a ParamsError
// that names the reference and what is wrong.
func TestRenderParamsRefused(t *testing.T) {
	secret := withInfra()
	secret.Spec.Infrastructure.ParametersRef.Kind = "Secret"
	if _, err := ParamsConfigMap(secret); err == nil || !strings.Contains(err.Error(), "only a ConfigMap") {
		t.Errorf("parametersRef to a Secret: %v; want refused", err)
	}
	for _, tt := range []struct {
		name, want string
		data       map[string]string
	}{
		{"unknown key", `keys autoscaler: meshlet reads only deployment, service, serviceAccount, horizontalPodAutoscaler, podDisruptionBudget`, map[string]string{"autoscaler": "spec: {}"}},
		{"unknown autoscaler field", `horizontalPodAutoscaler: json: unknown field "maxReplica"`, map[string]string{"horizontalPodAutoscaler": "spec: {maxReplica: 3}"}},
		{"not YAML", "deployment: not YAML", map[string]string{"deployment": "spec: [unclosed"}},
		{"not a mapping", "want a YAML mapping", map[string]string{"service": "- a\n- b\n"}},
		{"unknown field", `unknown field "replica"`, map[string]string{"deployment": "spec: {replica: 2}"}},
		{"replicas beside an autoscaler", `deployment sets spec.replicas (2) and horizontalPodAutoscaler scales the same Deployment: remove replicas`,
			map[string]string{"deployment": "spec: {replicas: 2}", "horizontalPodAutoscaler": "spec: {minReplicas: 2, maxReplicas: 5}"}},
		{"another service account", `the pods run as the Gateway's service account "waypoint"`, map[string]string{"deployment": "spec: {template: {spec: {serviceAccountName: admin}}}"}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(withInfra(), opts, gwParams(tt.data))
			var perr *ParamsError
			if !errors.As(err, &perr) || !strings.Contains(err.Error(), tt.want) || !strings.Contains(err.Error(), `parametersRef ConfigMap "wp-params"`) {
				t.Errorf("Render = %v; want a ParamsError naming the ConfigMap and containing %q", err, tt.want)
			}
		})
	}
}

// classDefaults is a class defaults ConfigMap for istio-waypoint in the
// mesh namespace.
func classDefaults(data map[string]string) *corev1.ConfigMap {
	return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "waypoint-defaults", Namespace: "meshlet-system",
		Labels: map[string]string{ClassDefaultsLabel: "istio-waypoint"}}, Data: data}
}

// classData sets replicas, the waypoint container's resources, node
// placement and a disruption budget for every waypoint.
var classData = map[string]string{
	"deployment": `
metadata: {labels: {tier: mesh}}
spec:
  replicas: 2
  template:
    metadata: {labels: {platform: "yes"}}
    spec:
      nodeSelector: {pool: mesh}
      containers:
      - name: waypoint
        resources: {requests: {cpu: 200m}, limits: {memory: 512Mi}}
`,
	"podDisruptionBudget": "spec: {minAvailable: 1}\n",
}

// TestRenderClassDefaults: the class defaults alone shape a Gateway
// without parameters of its own (replicas, resources, placement, a
// disruption budget for its pods), meshlet's invariants kept; a Gateway's
// own parameters are merged over them: a field both set is the Gateway's,
// one only the class defaults set is kept, the budget is the class's with
// the Gateway's overlay, and an autoscaler of the Gateway's takes the
// count from the class's replicas.
func TestRenderClassDefaults(t *testing.T) {
	gw := gateway("istio-waypoint")
	objs, err := Render(gw, opts, Params{Class: classDefaults(classData)})
	if err != nil {
		t.Fatal(err)
	}
	dep := objs.Deployment
	tmpl := dep.Spec.Template
	c := tmpl.Spec.Containers[0]
	if r := dep.Spec.Replicas; r == nil || *r != 2 {
		t.Errorf("replicas = %v; want the class defaults' 2", r)
	}
	if r := c.Resources; r.Requests.Cpu().String() != "200m" || r.Limits.Memory().String() != "512Mi" || r.Requests.Memory().String() != "64Mi" {
		t.Errorf("resources = %+v; want the class defaults' 200m CPU request and 512Mi limit beside meshlet's 64Mi request", r)
	}
	if c.Image == nil || *c.Image != DefaultImage || len(c.Args) == 0 {
		t.Errorf("waypoint container lost what meshlet renders: image %v, %d args", c.Image, len(c.Args))
	}
	if tmpl.Spec.NodeSelector["pool"] != "mesh" || tmpl.Labels["platform"] != "yes" || tmpl.Labels[GatewayNameLabel] != "waypoint" || dep.Labels["tier"] != "mesh" {
		t.Errorf("nodeSelector %v, pod labels %v, deployment labels %v; want the class defaults' beside meshlet's", tmpl.Spec.NodeSelector, tmpl.Labels, dep.Labels)
	}
	pdb := objs.PodDisruptionBudget
	if pdb == nil {
		t.Fatal("no PodDisruptionBudget for class defaults with the key")
	}
	if sel := pdb.Spec.Selector.MatchLabels; *pdb.Name != "waypoint" || *pdb.Namespace != "bookinfo" || sel[GatewayNameLabel] != "waypoint" ||
		pdb.Spec.MinAvailable.IntValue() != 1 || *pdb.OwnerReferences[0].UID != gw.UID {
		t.Errorf("disruption budget %s/%s: selector %v, minAvailable %v; want bookinfo/waypoint for the waypoint's pods, 1, owned by the Gateway",
			*pdb.Namespace, *pdb.Name, sel, pdb.Spec.MinAvailable)
	}
	if objs.HorizontalPodAutoscaler != nil {
		t.Error("an autoscaler without the key")
	}

	// The Gateway's own parameters over the class defaults.
	own := withInfra()
	objs, err = Render(own, opts, Params{Class: classDefaults(classData), Gateway: params(map[string]string{
		"deployment": `
spec:
  replicas: 3
  template:
    spec:
      containers:
      - name: waypoint
        resources: {limits: {memory: 256Mi}}
`,
		"podDisruptionBudget": "spec: {minAvailable: 2}\n",
	})})
	if err != nil {
		t.Fatal(err)
	}
	dep = objs.Deployment
	tmpl = dep.Spec.Template
	c = tmpl.Spec.Containers[0]
	if r := dep.Spec.Replicas; r == nil || *r != 3 {
		t.Errorf("replicas = %v; want the Gateway's 3 over the class defaults' 2", r)
	}
	if r := c.Resources; r.Limits.Memory().String() != "256Mi" || r.Requests.Cpu().String() != "200m" {
		t.Errorf("resources = %+v; want the Gateway's 256Mi limit and the class defaults' 200m CPU request", r)
	}
	if tmpl.Spec.NodeSelector["pool"] != "mesh" || tmpl.Labels["team"] != "payments" || tmpl.Labels["platform"] != "yes" {
		t.Errorf("nodeSelector %v, pod labels %v; want the class defaults' pool and label kept beside the infrastructure's", tmpl.Spec.NodeSelector, tmpl.Labels)
	}
	if pdb := objs.PodDisruptionBudget; pdb == nil || pdb.Spec.MinAvailable.IntValue() != 2 || pdb.Annotations["cost-center"] != "42" {
		t.Errorf("disruption budget %+v; want the class defaults' with the Gateway's minAvailable 2 and its annotations", pdb)
	}

	// The Gateway's autoscaler owns the count the class defaults set.
	objs, err = Render(own, opts, Params{Class: classDefaults(classData), Gateway: params(map[string]string{
		"horizontalPodAutoscaler": "spec: {minReplicas: 2, maxReplicas: 4}\n",
	})})
	if err != nil {
		t.Fatal(err)
	}
	if r := objs.Deployment.Spec.Replicas; r != nil || objs.HorizontalPodAutoscaler == nil || *objs.HorizontalPodAutoscaler.Spec.MaxReplicas != 4 {
		t.Errorf("replicas %v, autoscaler %v; want no replicas beside the Gateway's autoscaler (max 4)", r, objs.HorizontalPodAutoscaler)
	}
	if c := objs.Deployment.Spec.Template.Spec.Containers[0]; c.Resources.Requests.Cpu().String() != "200m" {
		t.Errorf("resources = %+v; want the class defaults' kept", c.Resources)
	}

	// An autoscaler of the class defaults, overlaid by the Gateway's.
	withHPA := classDefaults(map[string]string{"horizontalPodAutoscaler": "spec: {minReplicas: 2, maxReplicas: 10}\n"})
	objs, err = Render(own, opts, Params{Class: withHPA, Gateway: params(map[string]string{"horizontalPodAutoscaler": "spec: {maxReplicas: 4}\n"})})
	if err != nil {
		t.Fatal(err)
	}
	if h := objs.HorizontalPodAutoscaler; h == nil || *h.Spec.MinReplicas != 2 || *h.Spec.MaxReplicas != 4 || *h.Spec.ScaleTargetRef.Name != "waypoint" {
		t.Errorf("autoscaler %+v; want the class defaults' minReplicas 2 with the Gateway's maxReplicas 4, targeting the waypoint", h)
	}

	// A Gateway opts out of the class defaults' autoscaler and budget with
	// a null, and may set its own count again.
	both := classDefaults(map[string]string{"horizontalPodAutoscaler": "spec: {maxReplicas: 10}\n", "podDisruptionBudget": "spec: {minAvailable: 1}\n"})
	for _, tt := range []struct {
		name         string
		data         map[string]string
		hpa, pdb     bool
		replicas     int32 // 0: none
		replicasWhat string
	}{
		{"autoscaler off", map[string]string{"horizontalPodAutoscaler": "null", "deployment": "spec: {replicas: 3}"}, false, true, 3, "the Gateway's 3"},
		{"budget off", map[string]string{"podDisruptionBudget": " ~\n"}, true, false, 0, "none beside the autoscaler"},
		{"both off", map[string]string{"horizontalPodAutoscaler": "NULL", "podDisruptionBudget": "Null"}, false, false, 0, "none (the count the autoscaler left stays)"},
	} {
		objs, err := Render(own, opts, Params{Class: both, Gateway: params(tt.data)})
		if err != nil {
			t.Errorf("%s: %v", tt.name, err)
			continue
		}
		if got := objs.HorizontalPodAutoscaler != nil; got != tt.hpa {
			t.Errorf("%s: autoscaler rendered %t; want %t", tt.name, got, tt.hpa)
		}
		if got := objs.PodDisruptionBudget != nil; got != tt.pdb {
			t.Errorf("%s: disruption budget rendered %t; want %t", tt.name, got, tt.pdb)
		}
		if r := objs.Deployment.Spec.Replicas; (r == nil) != (tt.replicas == 0) || (r != nil && *r != tt.replicas) {
			t.Errorf("%s: replicas %v; want %s", tt.name, r, tt.replicasWhat)
		}
	}
}

// TestRenderClassDefaultsRefused: class defaults that cannot be used are a
// ParamsError naming their ConfigMap as the class defaults, with or
// without parameters of the Gateway's own; a Gateway's replicas beside the
// class defaults' autoscaler is the Gateway's, naming the class defaults.
func TestRenderClassDefaultsRefused(t *testing.T) {
	const named = "class defaults ConfigMap meshlet-system/waypoint-defaults (gateway.istio.io/defaults-for-class=istio-waypoint): "
	for _, tt := range []struct {
		name, want string
		data       map[string]string
	}{
		{"unknown key", "keys autoscaler: meshlet reads only", map[string]string{"autoscaler": "spec: {}"}},
		{"not YAML", "deployment: not YAML", map[string]string{"deployment": "spec: [unclosed"}},
		{"unknown field", `podDisruptionBudget: json: unknown field "minAvailabel"`, map[string]string{"podDisruptionBudget": "spec: {minAvailabel: 1}"}},
		{"replicas beside an autoscaler", "deployment sets spec.replicas (2) and horizontalPodAutoscaler scales the same Deployment",
			map[string]string{"deployment": "spec: {replicas: 2}", "horizontalPodAutoscaler": "spec: {maxReplicas: 5}"}},
	} {
		for _, own := range []bool{false, true} {
			t.Run(fmt.Sprintf("%s/own parameters %t", tt.name, own), func(t *testing.T) {
				gw, p := gateway("istio-waypoint"), Params{Class: classDefaults(tt.data)}
				if own {
					gw, p.Gateway = withInfra(), params(map[string]string{"deployment": "spec: {replicas: 1}"})
					if _, ok := tt.data["horizontalPodAutoscaler"]; ok {
						p.Gateway = params(nil)
					}
				}
				_, err := Render(gw, opts, p)
				var perr *ParamsError
				if !errors.As(err, &perr) || !strings.Contains(err.Error(), named+tt.want) || strings.Contains(err.Error(), "parametersRef") {
					t.Errorf("Render = %v; want a ParamsError %q", err, named+tt.want)
				}
			})
		}
	}

	withHPA := classDefaults(map[string]string{"horizontalPodAutoscaler": "spec: {maxReplicas: 5}"})
	_, err := Render(withInfra(), opts, Params{Class: withHPA, Gateway: params(map[string]string{"deployment": "spec: {replicas: 3}"})})
	if want := `parametersRef ConfigMap "wp-params": deployment sets spec.replicas (3) and the class defaults' horizontalPodAutoscaler (ConfigMap meshlet-system/waypoint-defaults) scales the same Deployment`; err == nil || !strings.Contains(err.Error(), want) {
		t.Errorf("Render = %v; want %q", err, want)
	}

	// What the API server refuses, by who is at fault.
	refused := errors.New("spec.replicas: Invalid value: -1")
	for _, tt := range []struct {
		name string
		p    Params
		want string
	}{
		{"class defaults", Params{Class: withHPA}, named + "the deployment they make is invalid"},
		{"own", Params{Gateway: params(nil)}, `parametersRef ConfigMap "wp-params": the deployment it makes is invalid`},
		{"both", Params{Class: withHPA, Gateway: params(nil)}, `parametersRef ConfigMap "wp-params": the deployment it makes over the class defaults of ConfigMap meshlet-system/waypoint-defaults is invalid`},
	} {
		if err := tt.p.invalid(withInfra(), "deployment", refused); !err.invalid || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%s: invalid() = %v; want %q", tt.name, err, tt.want)
		}
	}
}

// TestPickClassDefaults: of the ConfigMaps labelled for the class in the
// namespace, the oldest is used, then by name; those of another namespace
// or labelled for another class do not count, nor any without a
// namespace to read them from.
func TestPickClassDefaults(t *testing.T) {
	at := func(min int) metav1.Time { return metav1.NewTime(time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)) }
	cm := func(ns, name, class string, created int) corev1.ConfigMap {
		c := corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, CreationTimestamp: at(created)}}
		if class != "" {
			c.Labels = map[string]string{ClassDefaultsLabel: class}
		}
		return c
	}
	tests := []struct {
		name       string
		cms        []corev1.ConfigMap
		ns         string
		want       string
		wantOthers []string
	}{
		{"none", nil, "meshlet-system", "", nil},
		{"one", []corev1.ConfigMap{cm("meshlet-system", "d", "istio-waypoint", 5)}, "meshlet-system", "d", nil},
		{"oldest", []corev1.ConfigMap{cm("meshlet-system", "a", "istio-waypoint", 5), cm("meshlet-system", "b", "istio-waypoint", 1), cm("meshlet-system", "c", "istio-waypoint", 3)},
			"meshlet-system", "b", []string{"c", "a"}},
		{"same age: by name", []corev1.ConfigMap{cm("meshlet-system", "y", "istio-waypoint", 1), cm("meshlet-system", "x", "istio-waypoint", 1)},
			"meshlet-system", "x", []string{"y"}},
		{"another namespace's, another class's, unlabelled", []corev1.ConfigMap{
			cm("bookinfo", "older", "istio-waypoint", 0), cm("meshlet-system", "ingress", "istio", 0), cm("meshlet-system", "plain", "", 0),
			cm("meshlet-system", "d", "istio-waypoint", 9)}, "meshlet-system", "d", nil},
		{"no namespace", []corev1.ConfigMap{cm("", "d", "istio-waypoint", 0)}, "", "", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, others := pickClassDefaults(tt.cms, tt.ns, "istio-waypoint")
			name := ""
			if got != nil {
				name = got.Name
			}
			if name != tt.want || !slices.Equal(others, tt.wantOthers) {
				t.Errorf("pickClassDefaults() = %q, ignoring %v; want %q, ignoring %v", name, others, tt.want, tt.wantOthers)
			}
		})
	}
}
