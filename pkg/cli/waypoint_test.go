package cli

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"sigs.k8s.io/yaml"
)

// object decodes one YAML object.
func object(t *testing.T, doc string) *unstructured.Unstructured {
	t.Helper()
	u := &unstructured.Unstructured{}
	if err := yaml.Unmarshal([]byte(doc), &u.Object); err != nil {
		t.Fatal(err)
	}
	return u
}

// TestPickWaypointClass: the GatewayClass `meshctl waypoint apply` gives a
// waypoint without --gateway-class, from what it read of the cluster.
func TestPickWaypointClass(t *testing.T) {
	classes := schema.GroupResource{Group: "gateway.networking.k8s.io", Resource: "gatewayclasses"}
	meshlets := `{apiVersion: gateway.networking.k8s.io/v1, kind: GatewayClass, metadata: {name: istio-waypoint}, spec: {controllerName: meshlet.dev/gateway-controller}}`
	istios := `{apiVersion: gateway.networking.k8s.io/v1, kind: GatewayClass, metadata: {name: istio-waypoint}, spec: {controllerName: istio.io/gateway-controller}}`
	tests := []struct {
		name     string
		existing string // the waypoint Gateway's class, "" when there is none
		istio    string // GatewayClass istio-waypoint
		istioErr error  // reading it
		want     string
		wantErr  string
	}{{
		name:     "no GatewayClass istio-waypoint (the chart's default)",
		istioErr: apierrors.NewNotFound(classes, "istio-waypoint"),
		want:     "meshlet-waypoint",
	}, {
		name:     "not allowed to read GatewayClasses",
		istioErr: apierrors.NewForbidden(classes, "istio-waypoint", errors.New("no RBAC")),
		want:     "meshlet-waypoint",
	}, {
		name:  "istio-waypoint installed by meshlet (gatewayClasses.istioNames)",
		istio: meshlets,
		want:  "istio-waypoint",
	}, {
		name:  "istio-waypoint is Istio's own class",
		istio: istios,
		want:  "meshlet-waypoint",
	}, {
		name:     "an existing waypoint keeps its class",
		existing: "istio-waypoint",
		istioErr: apierrors.NewNotFound(classes, "istio-waypoint"),
		want:     "istio-waypoint",
	}, {
		name:     "an existing meshlet-waypoint is not moved to istio-waypoint",
		existing: "meshlet-waypoint",
		istio:    meshlets,
		want:     "meshlet-waypoint",
	}, {
		name:     "the cluster cannot be read",
		istioErr: apierrors.NewServiceUnavailable("etcd down"),
		wantErr:  "read GatewayClass istio-waypoint: etcd down (choose one with --gateway-class)",
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gc *unstructured.Unstructured
			if tt.istio != "" {
				gc = object(t, tt.istio)
			}
			got, err := pickWaypointClass(tt.existing, gc, tt.istioErr)
			if tt.wantErr != "" {
				if err == nil || err.Error() != tt.wantErr {
					t.Fatalf("pickWaypointClass() error = %v; want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Errorf("pickWaypointClass(%q, ...) = %q, %v; want %q", tt.existing, got, err, tt.want)
			}
		})
	}
}

// TestCheckOverwrite: `meshctl waypoint apply` updates a waypoint of
// either class and refuses a Gateway of the same name that is not a
// waypoint (an ingress Gateway, another controller's), saying which and
// what to do.
func TestCheckOverwrite(t *testing.T) {
	tests := []struct {
		name     string
		existing string // the Gateway of the waypoint's name, "" when there is none
		wantErr  string
	}{{
		name: "no Gateway of that name",
	}, {
		name:     "a meshlet-waypoint waypoint",
		existing: `{metadata: {name: waypoint, namespace: shop}, spec: {gatewayClassName: meshlet-waypoint}}`,
	}, {
		name:     "an istio-waypoint waypoint",
		existing: `{metadata: {name: waypoint, namespace: shop}, spec: {gatewayClassName: istio-waypoint}}`,
	}, {
		name:     "meshlet's ingress Gateway",
		existing: `{metadata: {name: waypoint, namespace: shop}, spec: {gatewayClassName: meshlet}}`,
		wantErr:  `not applied: Gateway shop/waypoint is not a waypoint (GatewayClass "meshlet") and applying would make it one; choose another --name, or delete that Gateway yourself (kubectl delete gateway waypoint -n shop) if it is no longer needed`,
	}, {
		name:     "another controller's Gateway",
		existing: `{metadata: {name: edge, namespace: shop}, spec: {gatewayClassName: cilium}}`,
		wantErr:  `not applied: Gateway shop/edge is not a waypoint (GatewayClass "cilium") and applying would make it one; choose another --name, or delete that Gateway yourself (kubectl delete gateway edge -n shop) if it is no longer needed`,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var gw *unstructured.Unstructured
			if tt.existing != "" {
				gw = object(t, tt.existing)
			}
			err := checkOverwrite(gw)
			got := ""
			if err != nil {
				got = err.Error()
			}
			if got != tt.wantErr {
				t.Errorf("checkOverwrite(%s) error = %q; want %q", tt.existing, got, tt.wantErr)
			}
		})
	}
}

// TestWaypointApplyGatewayClassFlag: --gateway-class takes the two
// waypoint classes and refuses any other before reaching for a cluster.
func TestWaypointApplyGatewayClassFlag(t *testing.T) {
	tests := []struct {
		class   string
		wantErr string
	}{
		{"meshlet", `unknown --gateway-class "meshlet": use meshlet-waypoint or istio-waypoint`},
		{"istio-waypoint", "pass --kubeconfig and --context"},
		{"meshlet-waypoint", "pass --kubeconfig and --context"},
	}
	for _, tt := range tests {
		_, _, err := run(t, "", false, append(noCluster(t), "waypoint", "apply", "-n", "shop", "--gateway-class", tt.class)...)
		if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
			t.Errorf("waypoint apply --gateway-class %s: error = %v; want it to contain %q", tt.class, err, tt.wantErr)
		}
	}
}

// TestPrintWaypoints: `meshctl waypoint list` shows the waypoints of
// either class, and no other Gateway.
func TestPrintWaypoints(t *testing.T) {
	var gws []unstructured.Unstructured
	for _, doc := range []string{
		`{metadata: {name: waypoint, namespace: shop, labels: {istio.io/waypoint-for: all}}, spec: {gatewayClassName: meshlet-waypoint}, status: {conditions: [{type: Programmed, status: "True"}]}}`,
		`{metadata: {name: edge, namespace: shop}, spec: {gatewayClassName: meshlet}}`,
		`{metadata: {name: from-istio, namespace: shop}, spec: {gatewayClassName: istio-waypoint}}`,
		`{metadata: {name: other, namespace: shop}, spec: {gatewayClassName: cilium}}`,
	} {
		gws = append(gws, *object(t, doc))
	}
	var out strings.Builder
	n, err := printWaypoints(&out, gws)
	if err != nil {
		t.Fatal(err)
	}
	want := `NAMESPACE  NAME        CLASS             FOR      PROGRAMMED
shop       waypoint    meshlet-waypoint  all      true
shop       from-istio  istio-waypoint    service  false
`
	if d := cmp.Diff(want, out.String()); d != "" || n != 2 {
		t.Errorf("printWaypoints() = %d waypoints (want 2), table (-want +got):\n%s", n, d)
	}
}
