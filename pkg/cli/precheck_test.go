package cli

import (
	"errors"
	"strings"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	authorizationv1 "k8s.io/api/authorization/v1"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/version"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshlet/meshlet/deploy/crds"
)

// fakeCluster is what a precheck test's cluster holds.
type fakeCluster struct {
	// version is the API server's git version; "" means unreachable.
	version string
	// kube are the objects of the typed clientset, dyn those of the
	// dynamic one (CRDs, GatewayClasses).
	kube, dyn []runtime.Object
	// deny says which access reviews are refused; nil allows all.
	deny func(ra *authorizationv1.ResourceAttributes) bool
}

func (fc fakeCluster) clients(t *testing.T) *clients {
	t.Helper()
	kube := fake.NewClientset(fc.kube...)
	disc := kube.Discovery().(*fakediscovery.FakeDiscovery)
	disc.FakedServerVersion = &version.Info{GitVersion: fc.version}
	if fc.version == "" {
		kube.PrependReactor("get", "version", func(k8stesting.Action) (bool, runtime.Object, error) {
			return true, nil, errors.New("dial tcp 198.18.0.1:6443: connect: connection refused")
		})
	}
	kube.PrependReactor("create", "selfsubjectaccessreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		r := a.(k8stesting.CreateAction).GetObject().(*authorizationv1.SelfSubjectAccessReview).DeepCopy()
		r.Status.Allowed = fc.deny == nil || !fc.deny(r.Spec.ResourceAttributes)
		return true, r, nil
	})
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		crdResource: "CustomResourceDefinitionList", gatewayClassResource: "GatewayClassList",
	}, fc.dyn...)
	return &clients{kube: kube, dynamic: dyn}
}

func node(name, os, arch, kernel string, taints ...corev1.Taint) *corev1.Node {
	return &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: name, Labels: map[string]string{"kubernetes.io/os": os, "kubernetes.io/arch": arch}},
		Spec:       corev1.NodeSpec{Taints: taints},
		Status:     corev1.NodeStatus{NodeInfo: corev1.NodeSystemInfo{OperatingSystem: os, Architecture: arch, KernelVersion: kernel}},
	}
}

func deployment(ns, name, image string, labels map[string]string) *appsv1.Deployment {
	return &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: image}}}}}}
}

func daemonSet(ns, name string, labels map[string]string, env ...corev1.EnvVar) *appsv1.DaemonSet {
	return &appsv1.DaemonSet{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels},
		Spec: appsv1.DaemonSetSpec{Template: corev1.PodTemplateSpec{Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "c", Image: "x", Env: env}}}}}}
}

func crdObject(name string, annotations map[string]string, manager string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{}
	u.SetAPIVersion("apiextensions.k8s.io/v1")
	u.SetKind("CustomResourceDefinition")
	u.SetName(name)
	u.SetAnnotations(annotations)
	if manager != "" {
		u.SetManagedFields([]metav1.ManagedFieldsEntry{{Manager: manager, Operation: metav1.ManagedFieldsOperationApply}})
	}
	return u
}

func gatewayClass(name, controller string) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"spec": map[string]any{"controllerName": controller}}}
	u.SetAPIVersion("gateway.networking.k8s.io/v1")
	u.SetKind("GatewayClass")
	u.SetName(name)
	return u
}

// gatewayAPICRDs are the standard channel's CRDs at version v, as the
// Gateway API's release files carry them, applied by manager.
func gatewayAPICRDs(t *testing.T, v string, ch crds.Channel, manager string) []runtime.Object {
	t.Helper()
	r, err := Render(RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []runtime.Object
	for _, o := range r.Objects {
		if strings.HasSuffix(o.GetName(), ".gateway.networking.k8s.io") {
			out = append(out, crdObject(o.GetName(), map[string]string{"gateway.networking.k8s.io/bundle-version": v, crds.ChannelAnnotation: string(ch)}, manager))
		}
	}
	return out
}

// istioCRDs are the Istio CRDs install applies, applied by manager.
func istioCRDs(t *testing.T, manager string) []runtime.Object {
	t.Helper()
	r, err := Render(RenderOptions{})
	if err != nil {
		t.Fatal(err)
	}
	var out []runtime.Object
	for _, o := range r.Objects {
		if o.GetKind() == "CustomResourceDefinition" && strings.Contains(o.GetName(), ".istio.io") {
			out = append(out, crdObject(o.GetName(), nil, manager))
		}
	}
	return out
}

// readyCluster is a cluster meshlet installs on without a remark.
func readyCluster() fakeCluster {
	return fakeCluster{version: "v1.33.2", kube: []runtime.Object{
		node("node-a", "linux", "amd64", "6.1.0-18-amd64"),
		node("node-b", "linux", "amd64", "5.15.0-1034-aws"),
	}}
}

// runPrecheckOn runs precheck against fc with the default profile and
// returns its text output and exit code.
func runPrecheckOn(t *testing.T, fc fakeCluster, opts *precheckOptions) (string, int) {
	t.Helper()
	if opts == nil {
		opts = &precheckOptions{}
	}
	var out strings.Builder
	err := runPrecheck(t.Context(), &out, fc.clients(t), opts)
	var ee ExitError
	switch {
	case err == nil:
		return out.String(), 0
	case errors.As(err, &ee):
		return out.String(), ee.Code
	}
	t.Fatalf("precheck: %v\n%s", err, out.String())
	return "", -1
}

// TestPrecheckReadyClusterGolden: on a cluster ready for meshlet, precheck
// says what it checked, one line each, and exits 0.
func TestPrecheckReadyClusterGolden(t *testing.T) {
	out, code := runPrecheckOn(t, readyCluster(), nil)
	if code != 0 {
		t.Errorf("exit %d; want 0", code)
	}
	golden(t, "precheck/ready.txt", []byte(out))
}

// TestPrecheck: each problem is one line naming the object and the fix,
// at its severity; errors exit 1, warnings and infos 0.
func TestPrecheck(t *testing.T) {
	tests := []struct {
		name   string
		change func(fc *fakeCluster)
		opts   *precheckOptions
		// want are lines (after the mark) that must be printed, whole or
		// as a prefix; absent must not appear anywhere.
		want     []string
		absent   []string
		wantCode int
	}{
		{
			name: "ready", wantCode: 0,
			want: []string{
				"✔ the API server is reachable and runs Kubernetes v1.33.2 (meshlet needs 1.31 or newer)",
				"✔ you may create and patch the ",
				"✔ the node agent will run on 2 node(s) (Linux, amd64), kernels 5.15.0-1034-aws to 6.1.0-18-amd64 (meshlet needs 5.15 or newer",
				"ℹ no node has TCX (kernel 6.6 or newer): the node agents attach pod ingress with a clsact filter instead",
				"✔ no other mesh (Istio, Linkerd, Cilium) and no meshlet installed",
				"ℹ the cluster has no Gateway API CRDs: install adds Gateway API v1.6.3 (standard channel)",
				"✔ no namespace is labelled istio.io/dataplane-mode=ambient yet",
				"✔ the cluster is ready for meshctl install",
			},
		},
		{
			name: "PodMonitors without their CRD", wantCode: 1,
			opts: &precheckOptions{render: RenderOptions{Set: []string{"monitoring.podMonitor.enabled=true"}}},
			want: []string{"✘ monitoring.podMonitor.enabled is on, but the cluster has no PodMonitor CRD (podmonitors.monitoring.coreos.com, which the Prometheus Operator installs): install that first, or set monitoring.podMonitor.enabled=false"},
		},
		{
			name: "PodMonitors with their CRD", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.dyn = append(fc.dyn, crdObject("podmonitors.monitoring.coreos.com", nil, "helm"))
			},
			opts:   &precheckOptions{render: RenderOptions{Set: []string{"monitoring.podMonitor.enabled=true"}}},
			want:   []string{"✔ CRD podmonitors.monitoring.coreos.com, which your values' objects need, is installed"},
			absent: []string{"PodMonitor CRD"},
		},
		{
			name: "API server unreachable", wantCode: 1,
			change: func(fc *fakeCluster) { fc.version = "" },
			want:   []string{"✘ cannot reach the API server: dial tcp 198.18.0.1:6443: connect: connection refused; check --kubeconfig and --context", "✘ 1 error(s), 0 warning(s): fix the errors before meshctl install"},
			absent: []string{"Permissions", "Nodes"},
		},
		{
			name: "Kubernetes too old", wantCode: 1,
			change: func(fc *fakeCluster) { fc.version = "v1.30.9-eks-1234" },
			want:   []string{"✘ the API server runs Kubernetes v1.30.9-eks-1234; meshlet needs 1.31 or newer (the Gateway API CRDs it installs use CEL the older API servers refuse): upgrade the cluster"},
		},
		{
			// An API server built from source without version stamps, as
			// the lab's: its version says nothing, so nothing is refused.
			name: "an unstamped API server", wantCode: 0,
			change: func(fc *fakeCluster) { fc.version = "v0.0.0-master+$Format:%H$" },
			want:   []string{"⚠ the API server answers with a version meshctl cannot read (\"v0.0.0-master+$Format:%H$\"): meshlet needs Kubernetes 1.31 or newer"},
		},
		{
			name: "a node with an old kernel", wantCode: 1,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube, node("old-1", "linux", "amd64", "5.10.0-28-cloud-amd64"))
			},
			want:   []string{"✘ node(s) old-1 run kernel 5.10.0-28-cloud-amd64; the node agent needs Linux 5.15 or newer", "✘ 1 error(s), 0 warning(s)"},
			absent: []string{"✔ the node agent will run on"},
		},
		{
			name: "a RHEL kernel below the floor", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube, node("rhel-1", "linux", "amd64", "4.18.0-477.el8.x86_64"))
			},
			want: []string{"⚠ node(s) rhel-1 run kernel 4.18.0-477.el8.x86_64, older than meshlet's floor 5.15, but a RHEL-family kernel backports BPF features"},
		},
		{
			name: "TCX on some nodes", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube, node("new-1", "linux", "arm64", "6.6.12-linuxkit"))
			},
			want: []string{"ℹ 1 of 3 node agents will use TCX for pod ingress (kernel 6.6 or newer), the others clsact", "✔ the node agent will run on 3 node(s) (Linux, amd64, arm64)"},
		},
		{
			name: "a windows node", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube, node("win-1", "windows", "amd64", "10.0.20348.2227"))
			},
			want: []string{"⚠ windows node(s) win-1: meshlet runs on Linux only, so no node agent runs there and their pods cannot be enrolled", "✔ the cluster is ready for meshctl install, with 1 warning(s) to read first"},
		},
		{
			name: "an architecture meshlet is not built for", wantCode: 1,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube, node("z-1", "linux", "s390x", "6.8.0-40-generic"))
			},
			want: []string{"✘ node(s) z-1 are s390x; meshlet is built for amd64 and arm64 only"},
		},
		{
			name: "missing RBAC", wantCode: 1,
			change: func(fc *fakeCluster) {
				fc.deny = func(ra *authorizationv1.ResourceAttributes) bool {
					return ra.Resource == "clusterroles" || (ra.Resource == "deployments" && ra.Verb == "delete")
				}
			},
			want: []string{
				"✘ you may not create, patch clusterroles.rbac.authorization.k8s.io cluster-wide, which install needs for ClusterRole meshlet-meshd, ClusterRole meshlet-node-agent: ask for the right, or have a cluster admin install",
				"check with kubectl auth can-i create clusterroles.rbac.authorization.k8s.io",
				"✘ you may not delete deployments.apps in namespace meshlet-system, which install needs for Deployment prometheus: ask for the right, or have a cluster admin install; check with kubectl auth can-i delete deployments.apps -n meshlet-system",
				"✘ 2 error(s)",
			},
			absent: []string{"✔ you may create and patch"},
		},
		{
			name: "Istio present", wantCode: 1,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube,
					deployment("istio-system", "istiod", "docker.io/istio/pilot:1.24.2", map[string]string{"app": "istiod"}),
					daemonSet("istio-system", "ztunnel", map[string]string{"app": "ztunnel"}),
					daemonSet("istio-system", "istio-cni-node", map[string]string{"k8s-app": "istio-cni-node"}, corev1.EnvVar{Name: "AMBIENT_ENABLED", Value: "true"}),
				)
				fc.dyn = append(fc.dyn, gatewayClass("istio", "istio.io/gateway-controller"), gatewayClass("istio-waypoint", "istio.io/mesh-controller"))
				fc.dyn = append(fc.dyn, istioCRDs(t, "helm")...)
				fc.dyn = append(fc.dyn, gatewayAPICRDs(t, "v1.2.1", crds.Standard, "kubectl")...)
			},
			want: []string{
				"⚠ Istio's control plane runs (Deployment istio-system/istiod, Istio 1.24.2): meshlet leaves its sidecar pods alone",
				"✘ Istio's ztunnel runs (DaemonSet istio-system/ztunnel): it and meshlet's node agent would both capture the pods of namespaces labelled istio.io/dataplane-mode=ambient; remove Istio's ambient data plane first (helm uninstall ztunnel -n istio-system",
				"✘ Istio's CNI agent runs in ambient mode (DaemonSet istio-system/istio-cni-node, AMBIENT_ENABLED=true)",
				"⚠ GatewayClass istio belongs to controller istio.io/gateway-controller: install leaves it, but meshd serves Gateways of class istio as well",
				"⚠ GatewayClass istio-waypoint belongs to controller istio.io/mesh-controller",
				"ℹ the cluster has Gateway API v1.2.1 standard channel (",
				"install upgrades them to v1.6.3",
				"Istio CRDs (",
				"were applied by helm (Istio 1.24.2 runs): install applies those of istio.io/api v1.31.4 over them",
				"✘ 2 error(s), 3 warning(s)",
			},
		},
		{
			name: "meshlet present", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube,
					deployment("meshlet-system", "meshd", "meshlet.dev/meshd:v0.1.0", map[string]string{"app.kubernetes.io/name": "meshd", "app.kubernetes.io/part-of": "meshlet", profileLabel: "demo"}),
					daemonSet("meshlet-system", nodeAgentName, map[string]string{"app.kubernetes.io/name": nodeAgentName, "app.kubernetes.io/part-of": "meshlet"}),
				)
				fc.dyn = append(fc.dyn, gatewayClass("meshlet", "meshlet.dev/gateway-controller"), gatewayClass("meshlet-waypoint", "meshlet.dev/gateway-controller"))
				fc.dyn = append(fc.dyn, istioCRDs(t, FieldManager)...)
				fc.dyn = append(fc.dyn, gatewayAPICRDs(t, "v1.6.3", crds.Standard, FieldManager)...)
			},
			want: []string{
				"ℹ meshlet v0.1.0 is already installed in namespace meshlet-system (profile demo): meshctl status checks its health, meshctl upgrade moves it to this meshctl's version; meshctl install --profile default would switch it to that profile, removing what only demo has",
				"✔ Gateway API CRDs v1.6.3 (standard channel), as meshlet bundles",
				"✔ the cluster is ready for meshctl install",
			},
			absent: []string{"✔ no other mesh", "Istio CRDs (", "⚠ GatewayClass", "✘ GatewayClass"},
		},
		{
			name: "meshlet in another namespace", wantCode: 1,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube, deployment("mesh", "meshd", "meshlet.dev/meshd:v0.1.0", map[string]string{"app.kubernetes.io/name": "meshd", "app.kubernetes.io/part-of": "meshlet"}))
			},
			want: []string{"✘ meshlet is already installed in namespace mesh (Deployment mesh/meshd), not in meshlet-system: a second install would run a second meshd", "pass --mesh-namespace mesh to upgrade that one"},
		},
		{
			name: "a GatewayClass of meshlet's name owned by another controller", wantCode: 1,
			change: func(fc *fakeCluster) {
				fc.dyn = append(fc.dyn, gatewayClass("meshlet", "example.com/other"))
			},
			want: []string{"✘ GatewayClass meshlet belongs to controller example.com/other: its controllerName cannot change, so install's apply of it fails; delete it if no Gateway uses it (kubectl delete gatewayclass meshlet), or install with --set gatewayClasses.enabled=false"},
		},
		{
			name: "newer Gateway API", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.dyn = append(fc.dyn, gatewayAPICRDs(t, "v1.7.0", crds.Standard, "kubectl")...)
			},
			want: []string{"⚠ the cluster has Gateway API v1.7.0 (", "newer than meshlet's v1.6.3: install would replace them with the older CRDs"},
		},
		{
			name: "older experimental Gateway API", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.dyn = append(fc.dyn, gatewayAPICRDs(t, "v1.5.1", crds.Experimental, "kubectl")...)
			},
			want: []string{"ℹ the cluster has Gateway API v1.5.1 experimental channel (", "install keeps the experimental channel and brings it to v1.6.3"},
		},
		{
			name: "Linkerd and Cilium", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube,
					deployment("linkerd", "linkerd-destination", "cr.l5d.io/linkerd/controller:edge-25.1.1", map[string]string{"linkerd.io/control-plane-component": "destination"}),
					daemonSet("kube-system", "cilium", map[string]string{"k8s-app": "cilium"}),
					&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "cilium-config"}, Data: map[string]string{"cni-exclusive": "true", "kube-proxy-replacement": "true"}},
				)
			},
			want: []string{
				"⚠ Linkerd's control plane runs (Deployment linkerd/linkerd-destination)",
				"⚠ Cilium (ConfigMap kube-system/cilium-config) has cni-exclusive not false: it removes other CNI configurations, meshlet-cni's among them",
				"⚠ Cilium (ConfigMap kube-system/cilium-config) replaces kube-proxy with socket load balancing inside pods",
			},
		},
		{
			name: "ambient namespace with sidecar pods", wantCode: 0,
			change: func(fc *fakeCluster) {
				fc.kube = append(fc.kube,
					&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{LabelDataplaneMode: "ambient"}}},
					&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "cart"}},
					&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "legacy"}, Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}, {Name: "istio-proxy"}}}},
					&corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "shop", Name: "out", Labels: map[string]string{LabelDataplaneMode: "none"}}},
				)
			},
			want: []string{
				"ℹ namespace shop is labelled istio.io/dataplane-mode=ambient: its 1 pod(s) are enrolled as soon as the node agents start",
				"⚠ namespace shop: 1 pod(s) with an Istio sidecar (legacy) are left alone",
			},
			absent: []string{"no namespace is labelled"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fc := readyCluster()
			if tt.change != nil {
				tt.change(&fc)
			}
			out, code := runPrecheckOn(t, fc, tt.opts)
			if code != tt.wantCode {
				t.Errorf("exit %d; want %d", code, tt.wantCode)
			}
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q", w)
				}
			}
			for _, a := range tt.absent {
				if strings.Contains(out, a) {
					t.Errorf("output has %q", a)
				}
			}
			if t.Failed() {
				t.Logf("output:\n%s", out)
			}
		})
	}
}

// TestPrecheckTaints: a node taint the node agent DaemonSet does not
// tolerate is a warning naming the node and the taint; the chart's agent
// tolerates every taint, and the ones the DaemonSet controller adds (a
// cordoned node) never count.
func TestPrecheckTaints(t *testing.T) {
	gpu := corev1.Taint{Key: "dedicated", Value: "gpu", Effect: corev1.TaintEffectNoSchedule}
	cordoned := corev1.Taint{Key: "node.kubernetes.io/unschedulable", Effect: corev1.TaintEffectNoSchedule}
	soft := corev1.Taint{Key: "spot", Value: "true", Effect: corev1.TaintEffectPreferNoSchedule}
	fc := readyCluster()
	fc.kube = append(fc.kube, node("gpu-1", "linux", "amd64", "6.8.0-1", gpu), node("drain-1", "linux", "amd64", "6.8.0-1", cordoned), node("spot-1", "linux", "amd64", "6.8.0-1", soft))
	const warning = "⚠ node(s) gpu-1 have the taint dedicated=gpu:NoSchedule, which the node agent DaemonSet does not tolerate"
	for _, tt := range []struct {
		name        string
		tolerations bool
		want        bool
	}{{"the chart's tolerations", true, false}, {"no tolerations", false, true}} {
		r, err := Render(RenderOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if !tt.tolerations {
			for _, o := range r.Objects {
				if o.GetKind() == "DaemonSet" {
					unstructured.RemoveNestedField(o.Object, "spec", "template", "spec", "tolerations")
				}
			}
		}
		rep := &precheckReport{}
		checkNodes(t.Context(), rep, fc.clients(t), r)
		var out strings.Builder
		if err := printPrecheck(&out, rep, ""); err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(out.String(), warning); got != tt.want {
			t.Errorf("%s: warning %t; want %t\n%s", tt.name, got, tt.want, out.String())
		}
		if strings.Contains(out.String(), "drain-1") || strings.Contains(out.String(), "spot-1") {
			t.Errorf("%s: a cordoned or PreferNoSchedule node is reported:\n%s", tt.name, out.String())
		}
	}
}

func TestParseKernel(t *testing.T) {
	tests := []struct {
		release string
		want    [2]uint // major, minor
		ok      bool
	}{
		{"6.1.0-18-amd64", [2]uint{6, 1}, true},
		{"5.15.0-1034-aws", [2]uint{5, 15}, true},
		{"4.18.0-477.el8.x86_64", [2]uint{4, 18}, true},
		{"6.6.12-linuxkit", [2]uint{6, 6}, true},
		{"5.14.0-427.13.1.el9_4.x86_64", [2]uint{5, 14}, true},
		{"10.0.20348.2227", [2]uint{10, 0}, true},
		{"", [2]uint{}, false},
		{"lab", [2]uint{}, false},
	}
	for _, tt := range tests {
		v, ok := parseKernel(tt.release)
		var got [2]uint
		if ok {
			got = [2]uint{v.Major(), v.Minor()}
		}
		if got != tt.want || ok != tt.ok {
			t.Errorf("parseKernel(%q) = %v, %t; want %v, %t", tt.release, got, ok, tt.want, tt.ok)
		}
	}
}

// TestPrecheckJSON: -o json holds every check with its level, and the verdict.
func TestPrecheckJSON(t *testing.T) {
	fc := readyCluster()
	fc.kube = append(fc.kube, node("old-1", "linux", "amd64", "5.4.0-150-generic"))
	out, code := runPrecheckOn(t, fc, &precheckOptions{output: "json"})
	if code != 1 || !strings.Contains(out, `"ready": false`) || !strings.Contains(out, `"level": "error"`) ||
		!strings.Contains(out, `"category": "Nodes"`) || !strings.Contains(out, "node(s) old-1 run kernel 5.4.0-150-generic") {
		t.Errorf("precheck -o json = exit %d:\n%s\nwant exit 1, not ready, the kernel error", code, out)
	}
}

// TestPrecheckFlags: a bad output format is refused before the cluster is
// contacted; a missing kubeconfig names the fix.
func TestPrecheckFlags(t *testing.T) {
	_, _, err := run(t, "", false, append(noCluster(t), "precheck", "-o", "wide")...)
	if err == nil || !strings.Contains(err.Error(), `--output "wide": want json or yaml`) {
		t.Errorf("precheck -o wide: %v", err)
	}
	_, _, err = run(t, "", false, append(noCluster(t), "precheck")...)
	if err == nil || !strings.Contains(err.Error(), "pass --kubeconfig and --context") {
		t.Errorf("precheck without a cluster: %v", err)
	}
}

// TestPrecheckNodeClocks: a Ready node whose kubelet stamps its Lease more
// than the certificates' backdate away from the other nodes' is warned
// about, by name and direction; nodes within it pass with one ok line, and
// a NotReady node's stale Lease is no clock of anyone's.
func TestPrecheckNodeClocks(t *testing.T) {
	now := time.Now()
	readyNode := func(name string, ready bool) *corev1.Node {
		n := node(name, "linux", "amd64", "6.1.0-18-amd64")
		status := corev1.ConditionTrue
		if !ready {
			status = corev1.ConditionFalse
		}
		n.Status.Conditions = []corev1.NodeCondition{{Type: corev1.NodeReady, Status: status}}
		return n
	}
	lease := func(node string, at time.Time) *coordinationv1.Lease {
		return &coordinationv1.Lease{ObjectMeta: metav1.ObjectMeta{Namespace: "kube-node-lease", Name: node},
			Spec: coordinationv1.LeaseSpec{RenewTime: &metav1.MicroTime{Time: at}}}
	}
	for _, tt := range []struct {
		name       string
		objs       []runtime.Object
		want, deny []string
	}{
		{"clocks agree", []runtime.Object{
			readyNode("node-a", true), readyNode("node-b", true), readyNode("node-c", false),
			lease("node-a", now), lease("node-b", now.Add(-8*time.Second)), lease("node-c", now.Add(-time.Hour)),
		}, []string{"✔ the clocks of the 2 Ready nodes agree within 1m0s"}, []string{"node-c", "clocks are off"}},
		{"one node ahead", []runtime.Object{
			readyNode("node-a", true), readyNode("node-b", true), readyNode("node-c", true),
			lease("node-a", now), lease("node-b", now.Add(-5*time.Second)), lease("node-c", now.Add(3*time.Minute)),
		}, []string{"⚠ node(s) node-c (3m0s ahead): their clocks are off", "NTP"}, []string{"node-a (", "node-b ("}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			out, _ := runPrecheckOn(t, fakeCluster{version: "v1.33.2", kube: tt.objs}, nil)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for _, d := range tt.deny {
				if strings.Contains(out, d) {
					t.Errorf("output has %q:\n%s", d, out)
				}
			}
		})
	}
}

// TestPrecheckGrants: a user with every right install asks for, but who may
// not escalate roles, is told of each role install applies that grants
// rights they do not hold (the API server would refuse to create it), with
// the rights named; one who may escalate is not.
func TestPrecheckGrants(t *testing.T) {
	for _, tt := range []struct {
		name string
		deny func(ra *authorizationv1.ResourceAttributes) bool
		want []string
		none string
	}{
		{"may escalate", func(ra *authorizationv1.ResourceAttributes) bool {
			return ra.Verb == "patch" && ra.Resource == "pods" && ra.Subresource == "status"
		}, nil, "grants rights you do not hold"},
		{"may not escalate", func(ra *authorizationv1.ResourceAttributes) bool {
			return ra.Verb == "escalate" || (ra.Verb == "patch" && ra.Resource == "pods" && ra.Subresource == "status")
		}, []string{"✘ ClusterRole meshlet-node-agent grants rights you do not hold (patch pods/status)", "kubectl auth can-i escalate clusterroles"}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			fc := readyCluster()
			fc.deny = tt.deny
			out, code := runPrecheckOn(t, fc, nil)
			for _, w := range tt.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if len(tt.want) > 0 && code != 1 {
				t.Errorf("exit %d; want 1", code)
			}
			if tt.none != "" && strings.Contains(out, tt.none) {
				t.Errorf("output has %q:\n%s", tt.none, out)
			}
		})
	}
}
