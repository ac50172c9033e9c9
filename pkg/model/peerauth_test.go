package model

import (
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
)

func pa(ns, name string, age int, sel map[string]string, mode MTLSMode, ports map[uint32]MTLSMode) *PeerAuthentication {
	return &PeerAuthentication{
		Meta:      ObjectMeta{Namespace: ns, Name: name, Created: time.Unix(1_700_000_000, 0).Add(time.Duration(age) * time.Hour)},
		Selector:  sel,
		Mode:      mode,
		PortModes: ports,
	}
}

func TestResolvePeerAuthentication(t *testing.T) {
	app := map[string]string{"app": "reviews"}
	tests := []struct {
		name     string
		policies []*PeerAuthentication
		ns       string
		labels   map[string]string
		want     MTLSMode
		port     uint32
		wantPort MTLSMode
	}{
		{
			// Istio: with no policy, workloads accept both mTLS and plaintext (PERMISSIVE).
			name: "no policy is permissive", ns: "foo", labels: app,
			want: MTLSPermissive, port: 80, wantPort: MTLSPermissive,
		},
		{
			// Istio docs "Globally enabling Istio mutual TLS in STRICT mode": a policy
			// named default in the root namespace without selector is mesh-wide.
			name:     "mesh-wide strict",
			policies: []*PeerAuthentication{pa("istio-system", "default", 0, nil, MTLSStrict, nil)},
			ns:       "foo", labels: app, want: MTLSStrict, port: 80, wantPort: MTLSStrict,
		},
		{
			// A selector-less policy outside the root namespace covers only its namespace.
			name:     "namespace policy does not leak to other namespaces",
			policies: []*PeerAuthentication{pa("bar", "default", 0, nil, MTLSStrict, nil)},
			ns:       "foo", labels: app, want: MTLSPermissive, port: 80, wantPort: MTLSPermissive,
		},
		{
			// Istio: "namespace-wide policy takes precedence over the mesh-wide policy".
			name: "namespace overrides mesh",
			policies: []*PeerAuthentication{
				pa("istio-system", "default", 0, nil, MTLSStrict, nil),
				pa("foo", "default", 1, nil, MTLSPermissive, nil),
			},
			ns: "foo", labels: app, want: MTLSPermissive, port: 80, wantPort: MTLSPermissive,
		},
		{
			// Istio: workload-specific policy takes precedence over namespace-wide.
			name: "workload overrides namespace",
			policies: []*PeerAuthentication{
				pa("foo", "default", 0, nil, MTLSStrict, nil),
				pa("foo", "reviews", 1, app, MTLSDisable, nil),
			},
			ns: "foo", labels: app, want: MTLSDisable, port: 80, wantPort: MTLSDisable,
		},
		{
			// A workload policy whose selector does not match leaves the namespace mode.
			name: "non-matching selector ignored",
			policies: []*PeerAuthentication{
				pa("foo", "default", 0, nil, MTLSStrict, nil),
				pa("foo", "ratings", 1, map[string]string{"app": "ratings"}, MTLSDisable, nil),
			},
			ns: "foo", labels: app, want: MTLSStrict, port: 80, wantPort: MTLSStrict,
		},
		{
			// Istio: UNSET "inherit from parent, if has one. Otherwise treated as PERMISSIVE".
			name: "unset inherits from namespace",
			policies: []*PeerAuthentication{
				pa("foo", "default", 0, nil, MTLSStrict, nil),
				pa("foo", "reviews", 1, app, MTLSUnset, nil),
			},
			ns: "foo", labels: app, want: MTLSStrict, port: 80, wantPort: MTLSStrict,
		},
		{
			// Istio: "If there are more than one mesh-wide peer authentication
			// policies, the oldest one is used."
			name: "oldest mesh policy wins",
			policies: []*PeerAuthentication{
				pa("istio-system", "newer", 5, nil, MTLSDisable, nil),
				pa("istio-system", "older", 1, nil, MTLSStrict, nil),
			},
			ns: "foo", labels: app, want: MTLSStrict, port: 80, wantPort: MTLSStrict,
		},
		{
			// Istio: among several workload-specific policies matching one workload,
			// the oldest one applies.
			name: "oldest workload policy wins",
			policies: []*PeerAuthentication{
				pa("foo", "b-new", 3, app, MTLSDisable, nil),
				pa("foo", "a-old", 2, map[string]string{"app": "reviews"}, MTLSStrict, nil),
			},
			ns: "foo", labels: app, want: MTLSStrict, port: 80, wantPort: MTLSStrict,
		},
		{
			// Equal creation times: ties are broken by name so the result is stable.
			name: "tie broken by name",
			policies: []*PeerAuthentication{
				pa("foo", "zz", 0, nil, MTLSDisable, nil),
				pa("foo", "aa", 0, nil, MTLSStrict, nil),
			},
			ns: "foo", labels: app, want: MTLSStrict, port: 80, wantPort: MTLSStrict,
		},
		{
			// Istio docs example "Enable mutual TLS per port": namespace STRICT,
			// workload policy with portLevelMtls 8080: DISABLE.
			name: "port-level override",
			policies: []*PeerAuthentication{
				pa("foo", "default", 0, nil, MTLSStrict, nil),
				pa("foo", "reviews", 1, app, MTLSUnset, map[uint32]MTLSMode{8080: MTLSDisable}),
			},
			ns: "foo", labels: app, want: MTLSStrict, port: 8080, wantPort: MTLSDisable,
		},
		{
			// A port-level UNSET inherits the workload's resolved mode.
			name: "port-level unset inherits workload mode",
			policies: []*PeerAuthentication{
				pa("foo", "reviews", 1, app, MTLSPermissive, map[uint32]MTLSMode{9000: MTLSUnset}),
				pa("istio-system", "default", 0, nil, MTLSStrict, nil),
			},
			ns: "foo", labels: app, want: MTLSPermissive, port: 9000, wantPort: MTLSPermissive,
		},
		{
			// The root namespace's own workloads: a selector-less policy there is
			// mesh-wide and also covers them.
			name:     "root namespace workloads",
			policies: []*PeerAuthentication{pa("istio-system", "default", 0, nil, MTLSStrict, nil)},
			ns:       "istio-system", labels: app, want: MTLSStrict, port: 1, wantPort: MTLSStrict,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := ResolvePeerAuthentication(tt.policies, "istio-system", tt.ns, tt.labels)
			if got.Mode != tt.want {
				t.Errorf("Mode = %s; want %s (policies %v)", got.Mode, tt.want, got.Policies)
			}
			if m := got.ModeFor(tt.port); m != tt.wantPort {
				t.Errorf("ModeFor(%d) = %s; want %s", tt.port, m, tt.wantPort)
			}
		})
	}
}

func TestResolvePeerAuthenticationPolicies(t *testing.T) {
	app := map[string]string{"app": "reviews"}
	got := ResolvePeerAuthentication([]*PeerAuthentication{
		pa("istio-system", "default", 0, nil, MTLSStrict, nil),
		pa("foo", "default", 0, nil, MTLSUnset, nil),
		pa("foo", "reviews", 0, app, MTLSUnset, nil),
	}, "istio-system", "foo", app)
	want := []NamespacedName{{"foo", "reviews"}, {"foo", "default"}, {"istio-system", "default"}}
	if diff := cmp.Diff(want, got.Policies); diff != "" {
		t.Errorf("Policies mismatch (-want +got):\n%s", diff)
	}
}
