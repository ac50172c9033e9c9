package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/discovery/cached/memory"
	fakediscovery "k8s.io/client-go/discovery/fake"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/restmapper"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

// run executes meshctl with args, stdin in and isTTY, and returns stdout, stderr and the error.
func run(t *testing.T, in string, isTTY bool, args ...string) (string, string, error) {
	t.Helper()
	var out, errOut bytes.Buffer
	cmd := NewRootCommand(Streams{In: strings.NewReader(in), Out: &out, ErrOut: &errOut, IsTerminal: func() bool { return isTTY }})
	cmd.SetArgs(args)
	err := cmd.Execute()
	return out.String(), errOut.String(), err
}

// noCluster points meshctl at a kubeconfig that does not exist, so that a
// test which wrongly reaches for a cluster fails with a kubeconfig error.
func noCluster(t *testing.T) []string {
	t.Helper()
	return []string{"--kubeconfig", filepath.Join(t.TempDir(), "no-such-kubeconfig")}
}

func TestInstallPlanGolden(t *testing.T) {
	for _, profile := range []string{"minimal", "default", "demo"} {
		t.Run(profile, func(t *testing.T) {
			out, _, err := run(t, "", false, append(noCluster(t), "install", "--profile", profile, "--dry-run")...)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "install/plan-"+profile+".txt", []byte(out))
		})
	}
}

func TestInstallDryRunManifestMatchesChartGolden(t *testing.T) {
	out, _, err := run(t, "", false, append(noCluster(t), "install", "--profile", "minimal", "--dry-run", "-o", "yaml")...)
	if err != nil {
		t.Fatal(err)
	}
	want, err := os.ReadFile("testdata/chart/minimal.yaml")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasSuffix(out, string(want)) || !strings.Contains(out, "kind: CustomResourceDefinition") {
		t.Errorf("install --dry-run -o yaml is not the CRDs followed by the minimal chart golden file")
	}
}

func TestInstallConfirmation(t *testing.T) {
	tests := []struct {
		name    string
		stdin   string
		tty     bool
		args    []string
		wantErr string
	}{
		{"no TTY without -y refuses", "", false, nil, `refusing to change the cluster without confirmation: stdin is not a terminal; rerun as "meshctl install -y" to confirm`},
		{"TTY answered no", "n\n", true, nil, "not confirmed: nothing was changed"},
		{"TTY empty answer is no", "\n", true, nil, "not confirmed"},
		// Confirmed: install goes on to the cluster, which here is a missing kubeconfig.
		{"TTY answered yes", "y\n", true, nil, "load kubeconfig"},
		{"-y skips the question", "", false, []string{"-y"}, "load kubeconfig"},
		{"bad --set names the syntax", "", false, []string{"--set", "meshd"}, "use key.path=value"},
		{"bad output", "", false, []string{"--dry-run", "-o", "json"}, `unknown output format "json": use -o yaml`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, _, err := run(t, tc.stdin, tc.tty, append(append(noCluster(t), "install"), tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("install error = %v, want it to contain %q", err, tc.wantErr)
			}
			if tc.tty && !strings.Contains(out, "Install meshlet with this plan? [y/N]") {
				t.Errorf("no question asked on a TTY; stdout:\n%s", out)
			}
			if strings.Contains(tc.wantErr, "not confirmed") && !errors.Is(err, ErrNotConfirmed) {
				t.Errorf("error %v is not ErrNotConfirmed", err)
			}
		})
	}
}

func TestUninstallRefusesWithoutConfirmation(t *testing.T) {
	_, _, err := run(t, "", false, append(noCluster(t), "uninstall", "--purge")...)
	want := `rerun as "meshctl uninstall --purge -y"`
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("uninstall error = %v, want it to contain %q", err, want)
	}
}

func TestWaypointGateway(t *testing.T) {
	u, err := WaypointGateway("bookinfo", "waypoint", "all", "meshlet-waypoint")
	if err != nil {
		t.Fatal(err)
	}
	var gw gatewayv1.Gateway
	if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(u.Object, &gw, true); err != nil {
		t.Fatalf("waypoint does not decode as a Gateway API Gateway: %v", err)
	}
	if gw.Spec.GatewayClassName != "meshlet-waypoint" || len(gw.Spec.Listeners) != 1 ||
		gw.Spec.Listeners[0].Name != "mesh" || gw.Spec.Listeners[0].Port != 15008 || gw.Spec.Listeners[0].Protocol != "HBONE" ||
		gw.Labels["istio.io/waypoint-for"] != "all" || gw.Namespace != "bookinfo" {
		t.Errorf("waypoint Gateway = %+v", gw)
	}
	if _, err := WaypointGateway("ns", "w", "pods", "meshlet-waypoint"); err == nil || !strings.Contains(err.Error(), "use service, workload, all or none") {
		t.Errorf("bad --for error = %v", err)
	}
	if _, err := WaypointGateway("ns", "w", "all", "meshlet"); err == nil || !strings.Contains(err.Error(), "use meshlet-waypoint or istio-waypoint") {
		t.Errorf("ingress class for a waypoint: error = %v", err)
	}
}

func TestVersion(t *testing.T) {
	out, _, err := run(t, "", false, "version", "--client")
	if err != nil || !strings.HasPrefix(out, "client version: ") {
		t.Fatalf("version --client = %q, %v", out, err)
	}
	out, _, err = run(t, "", false, append(noCluster(t), "version")...)
	if !strings.HasPrefix(out, "client version: ") || err == nil || !strings.Contains(err.Error(), "pass --kubeconfig and --context") {
		t.Fatalf("version without a cluster = %q, %v; want the client version, then the kubeconfig fix", out, err)
	}
	tests := []struct{ image, want string }{
		{"meshlet.dev/meshd:v0.1.0", "v0.1.0"},
		{"registry:5000/meshlet/meshd", "latest"},
		{"meshlet.dev/meshd@sha256:abc", "sha256:abc"},
	}
	for _, tc := range tests {
		if got := imageTag(tc.image); got != tc.want {
			t.Errorf("imageTag(%q) = %q; want %q", tc.image, got, tc.want)
		}
	}
}

func TestKubeconfigErrorNamesTheFix(t *testing.T) {
	_, _, err := run(t, "", false, append(noCluster(t), "ambient", "enable", "default")...)
	if err == nil || !strings.Contains(err.Error(), "pass --kubeconfig and --context, or set KUBECONFIG") {
		t.Fatalf("ambient enable with no cluster: %v", err)
	}
}

// TestInstallChecksOptionalCRDs: with monitoring.podMonitor.enabled,
// install refuses a cluster without the PodMonitor CRD before it applies
// anything, naming the CRD and the value to turn off; with the CRD, or
// with the value off, it goes on.
func TestInstallChecksOptionalCRDs(t *testing.T) {
	podMonitorCRD := crdObject("podmonitors.monitoring.coreos.com", nil, "helm")
	tests := []struct {
		name    string
		set     []string
		crd     bool
		wantErr string // "": no error
	}{
		{"off, no CRD", nil, false, ""},
		{"on, no CRD", []string{"monitoring.podMonitor.enabled=true"}, false,
			"monitoring.podMonitor.enabled is on, but the cluster has no PodMonitor CRD (podmonitors.monitoring.coreos.com, which the Prometheus Operator installs): install that first, or set monitoring.podMonitor.enabled=false"},
		{"on, CRD there", []string{"monitoring.podMonitor.enabled=true"}, true, ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Render(RenderOptions{Set: tt.set})
			if err != nil {
				t.Fatal(err)
			}
			fc := readyCluster()
			if tt.crd {
				fc.dyn = append(fc.dyn, podMonitorCRD)
			}
			err = checkOptionalCRDs(t.Context(), fc.clients(t), r)
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || err.Error() != tt.wantErr) {
				t.Errorf("checkOptionalCRDs = %v; want %q", err, tt.wantErr)
			}
		})
	}
}

// TestPrunePodMonitors: an install with monitoring.podMonitor.enabled off
// deletes the PodMonitors an earlier one made, and where the cluster has
// no PodMonitor kind at all it goes on without them.
func TestPrunePodMonitors(t *testing.T) {
	r, err := Render(RenderOptions{SkipCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	for _, tt := range []struct {
		name     string
		operator bool // the cluster serves monitoring.coreos.com/v1
	}{{"operator installed", true}, {"no operator", false}} {
		t.Run(tt.name, func(t *testing.T) {
			core := &metav1.APIResourceList{GroupVersion: "v1", APIResources: []metav1.APIResource{
				{Name: "serviceaccounts", Kind: "ServiceAccount", Namespaced: true, Verbs: metav1.Verbs{"delete"}},
				{Name: "configmaps", Kind: "ConfigMap", Namespaced: true, Verbs: metav1.Verbs{"delete"}},
				{Name: "services", Kind: "Service", Namespaced: true, Verbs: metav1.Verbs{"delete"}},
			}}
			apps := &metav1.APIResourceList{GroupVersion: "apps/v1", APIResources: []metav1.APIResource{
				{Name: "deployments", Kind: "Deployment", Namespaced: true, Verbs: metav1.Verbs{"delete"}},
			}}
			monitoring := &metav1.APIResourceList{GroupVersion: "monitoring.coreos.com/v1", APIResources: []metav1.APIResource{
				{Name: "podmonitors", Kind: "PodMonitor", Namespaced: true, Verbs: metav1.Verbs{"delete"}},
			}}
			kube := fake.NewClientset()
			disc := kube.Discovery().(*fakediscovery.FakeDiscovery)
			disc.Resources = []*metav1.APIResourceList{core, apps}
			var objs []runtime.Object
			if tt.operator {
				disc.Resources = append(disc.Resources, monitoring)
				for _, name := range []string{"meshlet", "meshlet-gateways"} {
					pm := &unstructured.Unstructured{}
					pm.SetAPIVersion("monitoring.coreos.com/v1")
					pm.SetKind("PodMonitor")
					pm.SetNamespace(DefaultNamespace)
					pm.SetName(name)
					objs = append(objs, pm)
				}
			}
			podMonitors := schema.GroupVersionResource{Group: "monitoring.coreos.com", Version: "v1", Resource: "podmonitors"}
			dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{podMonitors: "PodMonitorList"}, objs...)
			c := &clients{kube: kube, dynamic: dyn, mapper: restmapper.NewDeferredDiscoveryRESTMapper(memory.NewMemCacheClient(disc))}
			var progress bytes.Buffer
			if err := prune(t.Context(), &progress, c, r); err != nil {
				t.Fatalf("prune: %v\n%s", err, progress.String())
			}
			left, err := dyn.Resource(podMonitors).Namespace(DefaultNamespace).List(t.Context(), metav1.ListOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(left.Items) != 0 {
				t.Errorf("PodMonitors left: %d; want the earlier install's pruned\n%s", len(left.Items), progress.String())
			}
			if tt.operator && !strings.Contains(progress.String(), "removed PodMonitor "+DefaultNamespace+"/meshlet-gateways") {
				t.Errorf("progress does not name the pruned PodMonitor:\n%s", progress.String())
			}
		})
	}
}
