package cli

import (
	"bytes"
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"google.golang.org/protobuf/encoding/protojson"
	"helm.sh/helm/v3/pkg/chart"
	"helm.sh/helm/v3/pkg/chart/loader"
	meshconfig "istio.io/api/mesh/v1alpha1"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	policyv1 "k8s.io/api/policy/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apiextv1 "k8s.io/apiextensions-apiserver/pkg/apis/apiextensions/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/kube-openapi/pkg/validation/spec"
	"k8s.io/kube-openapi/pkg/validation/strfmt"
	"k8s.io/kube-openapi/pkg/validation/validate"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	sigsyaml "sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/controlplane"

	chartfiles "github.com/meshlet/meshlet/deploy/charts/meshlet"
	"github.com/meshlet/meshlet/deploy/crds"
)

var update = flag.Bool("update", false, "rewrite golden files under testdata/")

// golden compares got with testdata/name, or rewrites it under -update.
func golden(t *testing.T, name string, got []byte) {
	t.Helper()
	p := filepath.Join("testdata", name)
	if *update {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(p)
	if err != nil {
		t.Fatalf("read golden file (run go test ./pkg/cli/... -update to create it): %v", err)
	}
	if d := cmp.Diff(string(want), string(got)); d != "" {
		t.Errorf("%s differs (-golden +got); if intended, run go test ./pkg/cli/... -update:\n%s", p, d)
	}
}

func TestRenderProfilesGolden(t *testing.T) {
	for _, profile := range chartfiles.Profiles {
		t.Run(profile, func(t *testing.T) {
			r, err := Render(RenderOptions{Profile: profile, SkipCRDs: true})
			if err != nil {
				t.Fatal(err)
			}
			m, err := Manifest(r.Objects)
			if err != nil {
				t.Fatal(err)
			}
			golden(t, "chart/"+profile+".yaml", m)
		})
	}
}

// kinds counts rendered objects by kind/name.
func kinds(objs []*unstructured.Unstructured) map[string]bool {
	out := map[string]bool{}
	for _, o := range objs {
		out[o.GetKind()+"/"+o.GetName()] = true
	}
	return out
}

func TestRenderProfilesContent(t *testing.T) {
	tests := []struct {
		profile      string
		want, absent []string
	}{
		{"minimal", []string{"Deployment/meshd", "DaemonSet/meshlet-node-agent", "PodDisruptionBudget/meshd", "Service/meshd"}, []string{"Deployment/istio-ingressgateway", "Deployment/prometheus"}},
		{"default", []string{"Deployment/meshd", "DaemonSet/meshlet-node-agent", "Deployment/istio-ingressgateway", "Service/istio-ingressgateway"}, []string{"Deployment/prometheus"}},
		{"demo", []string{"Deployment/meshd", "DaemonSet/meshlet-node-agent", "Deployment/istio-ingressgateway", "Deployment/prometheus"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.profile, func(t *testing.T) {
			r, err := Render(RenderOptions{Profile: tc.profile})
			if err != nil {
				t.Fatal(err)
			}
			got := kinds(r.Objects)
			for _, w := range append(tc.want, "CustomResourceDefinition/virtualservices.networking.istio.io", "CustomResourceDefinition/httproutes.gateway.networking.k8s.io", "Namespace/meshlet-system") {
				if !got[w] {
					t.Errorf("profile %s: %s not rendered", tc.profile, w)
				}
			}
			for _, a := range tc.absent {
				if got[a] {
					t.Errorf("profile %s: %s rendered, want absent", tc.profile, a)
				}
			}
			if r.Objects[0].GetKind() != "CustomResourceDefinition" {
				t.Errorf("first object is %s, want CRDs first", r.Objects[0].GetKind())
			}
		})
	}
}

// TestRenderGatewayClasses: `kubectl get gatewayclass` after install lists
// meshlet's classes, controlled by the controllerName meshd reports status
// under; Istio's class names only when asked for (gatewayClasses.istioNames),
// and none without meshd to serve them.
func TestRenderGatewayClasses(t *testing.T) {
	gatewayClassSchema := crdSchema(t, "gatewayclasses.gateway.networking.k8s.io", "v1")
	tests := []struct {
		name string
		set  []string
		want []string
	}{
		{"default", nil, []string{"meshlet", "meshlet-waypoint"}},
		{"Istio's names asked for", []string{"gatewayClasses.istioNames=true"}, []string{"meshlet", "meshlet-waypoint", "istio", "istio-waypoint"}},
		{"disabled", []string{"gatewayClasses.enabled=false"}, nil},
		{"without meshd", []string{"meshd.enabled=false"}, nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			r, err := Render(RenderOptions{Set: tt.set, SkipCRDs: true})
			if err != nil {
				t.Fatal(err)
			}
			var got []string
			for _, o := range r.Objects {
				if o.GetKind() != "GatewayClass" {
					continue
				}
				got = append(got, o.GetName())
				var gc gatewayv1.GatewayClass
				if err := runtime.DefaultUnstructuredConverter.FromUnstructured(o.Object, &gc); err != nil {
					t.Fatal(err)
				}
				// As the API server will: the CRD's schema (lengths, patterns).
				if res := gatewayClassSchema.Validate(o.Object); !res.IsValid() {
					t.Errorf("GatewayClass %s fails the CRD's schema: %v", gc.Name, res.Errors)
				}
				if gc.Spec.ControllerName != controlplane.ControllerName || gc.Spec.Description == nil || *gc.Spec.Description == "" {
					t.Errorf("GatewayClass %s: controllerName %q, description %v; want %q and a description", gc.Name, gc.Spec.ControllerName, gc.Spec.Description, controlplane.ControllerName)
				}
			}
			sort.Strings(got)
			want := append([]string(nil), tt.want...)
			sort.Strings(want)
			if diff := cmp.Diff(want, got); diff != "" {
				t.Errorf("rendered GatewayClasses (-want +got):\n%s", diff)
			}
		})
	}
}

// TestRenderedObjectsDecode converts every rendered object into its typed
// Kubernetes struct, strictly, so a misspelt field fails here and not in the cluster.
func TestRenderedObjectsDecode(t *testing.T) {
	r, err := Render(RenderOptions{Profile: "demo"})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range r.Objects {
		var typed any
		switch o.GetKind() {
		case "Deployment":
			typed = &appsv1.Deployment{}
		case "DaemonSet":
			typed = &appsv1.DaemonSet{}
		case "Service":
			typed = &corev1.Service{}
		case "ServiceAccount":
			typed = &corev1.ServiceAccount{}
		case "ConfigMap":
			typed = &corev1.ConfigMap{}
		case "Namespace":
			typed = &corev1.Namespace{}
		case "PodDisruptionBudget":
			typed = &policyv1.PodDisruptionBudget{}
		case "ClusterRole":
			typed = &rbacv1.ClusterRole{}
		case "ClusterRoleBinding":
			typed = &rbacv1.ClusterRoleBinding{}
		case "Role":
			typed = &rbacv1.Role{}
		case "RoleBinding":
			typed = &rbacv1.RoleBinding{}
		case "CustomResourceDefinition":
			typed = &apiextv1.CustomResourceDefinition{}
		case "GatewayClass":
			typed = &gatewayv1.GatewayClass{}
		default:
			t.Errorf("%s %s: no typed check for this kind; add one", o.GetKind(), o.GetName())
			continue
		}
		if err := runtime.DefaultUnstructuredConverter.FromUnstructuredWithValidation(o.Object, typed, true); err != nil {
			t.Errorf("%s %s does not decode as %T: %v", o.GetKind(), o.GetName(), typed, err)
		}
	}
}

func TestRenderValues(t *testing.T) {
	dir := t.TempDir()
	vf := filepath.Join(dir, "v.yaml")
	if err := os.WriteFile(vf, []byte("trustDomain: from-file.org\nmeshd:\n  replicas: 3\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, err := Render(RenderOptions{Profile: "minimal", ValueFiles: []string{vf}, Set: []string{"trustDomain=example.org", "global.tag=v9"}, Namespace: "mesh", SkipCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	m, _ := Manifest(r.Objects)
	for _, want := range []string{"--trust-domain=example.org", "image: meshlet.dev/meshd:v9", "replicas: 3", "namespace: mesh\n", "meshd.mesh.svc:15012"} {
		if !bytes.Contains(m, []byte(want)) {
			t.Errorf("rendered manifest lacks %q", want)
		}
	}

	tests := []struct {
		name    string
		opts    RenderOptions
		wantErr string
	}{
		{"unknown profile", RenderOptions{Profile: "huge"}, `unknown profile "huge": use one of minimal, default, demo`},
		{"bad CA mode", RenderOptions{Set: []string{"ca.mode=vault"}}, `ca.mode "vault" is not supported: use selfSigned or pluggedIn`},
		{"missing values file", RenderOptions{ValueFiles: []string{filepath.Join(dir, "nope.yaml")}}, "read values file"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Render(tc.opts)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("Render error = %v, want it to contain %q", err, tc.wantErr)
			}
		})
	}
}

// TestEmbeddedChartIsTheDirectory renders the chart as helm would load it
// from disk and compares with the embedded copy, so a file the embed
// patterns miss fails here.
func TestEmbeddedChartIsTheDirectory(t *testing.T) {
	disk, err := loader.Load("../../deploy/charts/meshlet")
	if err != nil {
		t.Fatal(err)
	}
	embedded, err := loadChart(chartfiles.FS())
	if err != nil {
		t.Fatal(err)
	}
	names := func(ch *chart.Chart) []string {
		var out []string
		for _, f := range ch.Templates {
			out = append(out, f.Name)
		}
		sort.Strings(out)
		return out
	}
	if d := cmp.Diff(names(disk), names(embedded)); d != "" {
		t.Errorf("embedded chart templates differ from the directory (-disk +embedded); update the go:embed patterns in deploy/charts/meshlet/chart.go:\n%s", d)
	}
	if d := cmp.Diff(disk.Values, embedded.Values); d != "" {
		t.Errorf("embedded values.yaml differs from the directory:\n%s", d)
	}
}

// crdSchema returns a validator for the OpenAPI schema of one version of
// an embedded CRD (deploy/crds): the checks the API server makes of an
// object's structure (types, lengths, patterns), not its CEL rules.
func crdSchema(t *testing.T, name, version string) *validate.SchemaValidator {
	t.Helper()
	docs, err := crds.Documents()
	if err != nil {
		t.Fatal(err)
	}
	var crd apiextv1.CustomResourceDefinition
	if err := sigsyaml.Unmarshal(docs[name], &crd); err != nil {
		t.Fatalf("CRD %s: %v", name, err)
	}
	for _, v := range crd.Spec.Versions {
		if v.Name != version || v.Schema == nil {
			continue
		}
		// The CRD's JSONSchemaProps and OpenAPI's Schema share one JSON form.
		b, err := json.Marshal(v.Schema.OpenAPIV3Schema)
		if err != nil {
			t.Fatal(err)
		}
		var sch spec.Schema
		if err := json.Unmarshal(b, &sch); err != nil {
			t.Fatal(err)
		}
		return validate.NewSchemaValidator(&sch, nil, "", strfmt.Default)
	}
	t.Fatalf("CRD %s has no version %s with a schema", name, version)
	return nil
}

// TestRenderMeshConfig: meshConfig becomes Istio's mesh config (ConfigMap
// istio in the root namespace, key mesh), which meshd parses as a
// MeshConfig; unset, there is none (an existing Istio's stays untouched).
func TestRenderMeshConfig(t *testing.T) {
	dir := t.TempDir()
	vf := filepath.Join(dir, "v.yaml")
	if err := os.WriteFile(vf, []byte(`meshConfig:
  extensionProviders:
  - name: ext-authz
    envoyExtAuthzHttp: {service: ext-authz.foo.svc.cluster.local, port: 8000, includeRequestHeadersInCheck: [x-ext-authz]}
`), 0o644); err != nil {
		t.Fatal(err)
	}
	find := func(r *Rendered) *unstructured.Unstructured {
		for _, o := range r.Objects {
			if o.GetKind() == "ConfigMap" && o.GetName() == "istio" {
				return o
			}
		}
		return nil
	}
	r, err := Render(RenderOptions{ValueFiles: []string{vf}, SkipCRDs: true})
	if err != nil {
		t.Fatal(err)
	}
	cm := find(r)
	if cm == nil || cm.GetNamespace() != "istio-system" {
		t.Fatalf("ConfigMap istio = %v; want it in the root namespace istio-system", cm)
	}
	text, _, _ := unstructured.NestedString(cm.Object, "data", "mesh")
	j, err := sigsyaml.YAMLToJSON([]byte(text))
	mc := &meshconfig.MeshConfig{}
	if err == nil {
		err = protojson.Unmarshal(j, mc)
	}
	if err != nil || len(mc.GetExtensionProviders()) != 1 || mc.GetExtensionProviders()[0].GetEnvoyExtAuthzHttp().GetPort() != 8000 {
		t.Errorf("mesh = %q: %v; want a MeshConfig with the ext-authz provider", text, err)
	}
	if r, err := Render(RenderOptions{SkipCRDs: true}); err != nil || find(r) != nil {
		t.Errorf("without meshConfig: %v, ConfigMap istio rendered: %v; want none", err, find(r) != nil)
	}
}
