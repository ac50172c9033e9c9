package cli

import (
	"context"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"

	"github.com/meshlet/meshlet/deploy/crds"
)

// TestDecideGatewayAPIChannel: without --gateway-api-channel the channel
// the cluster has is kept; experimental is always allowed; standard over
// experimental is refused unless forced. (The lab should cover the same
// against a real API server: install experimental, upgrade without the
// flag, upgrade with standard.)
func TestDecideGatewayAPIChannel(t *testing.T) {
	const none crds.Channel = ""
	tests := []struct {
		installed, requested crds.Channel
		force                bool
		want                 crds.Channel
		wantErr              string
	}{
		{installed: none, requested: none, want: crds.Standard},
		{installed: crds.Standard, requested: none, want: crds.Standard},
		{installed: crds.Experimental, requested: none, want: crds.Experimental},
		{installed: none, requested: crds.Experimental, want: crds.Experimental},
		{installed: crds.Standard, requested: crds.Experimental, want: crds.Experimental},
		{installed: crds.Experimental, requested: crds.Experimental, want: crds.Experimental},
		{installed: none, requested: crds.Standard, want: crds.Standard},
		{installed: crds.Standard, requested: crds.Standard, want: crds.Standard},
		{installed: crds.Experimental, requested: crds.Standard, wantErr: "the cluster has the Gateway API experimental channel CRDs"},
		{installed: crds.Experimental, requested: crds.Standard, force: true, want: crds.Standard},
		{installed: crds.Experimental, requested: none, force: true, want: crds.Experimental},
	}
	for _, tc := range tests {
		got, err := decideGatewayAPIChannel(tc.installed, tc.requested, tc.force)
		if tc.wantErr != "" {
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Errorf("installed %q, requested %q, force %v: error %v; want %q", tc.installed, tc.requested, tc.force, err, tc.wantErr)
			}
			// The refusal says what is lost and both ways on.
			for _, w := range []string{"sessionPersistence", "retry", "ExternalAuth", "prunes", "--gateway-api-channel experimental", "--force-gateway-api-channel"} {
				if err != nil && !strings.Contains(err.Error(), w) {
					t.Errorf("refusal %q does not name %q", err, w)
				}
			}
			continue
		}
		if err != nil || got != tc.want {
			t.Errorf("installed %q, requested %q, force %v: %q, %v; want %q", tc.installed, tc.requested, tc.force, got, err, tc.want)
		}
	}
}

// TestInstalledGatewayAPIChannel reads the HTTPRoute CRD's channel
// annotation, as the API server returns it.
func TestInstalledGatewayAPIChannel(t *testing.T) {
	crd := func(annotations map[string]string) runtime.Object {
		u := &unstructured.Unstructured{}
		u.SetAPIVersion("apiextensions.k8s.io/v1")
		u.SetKind("CustomResourceDefinition")
		u.SetName("httproutes.gateway.networking.k8s.io")
		u.SetAnnotations(annotations)
		return u
	}
	tests := []struct {
		name string
		objs []runtime.Object
		want crds.Channel
	}{
		{"no Gateway API", nil, ""},
		{"standard", []runtime.Object{crd(map[string]string{crds.ChannelAnnotation: "standard"})}, crds.Standard},
		{"experimental", []runtime.Object{crd(map[string]string{crds.ChannelAnnotation: "experimental"})}, crds.Experimental},
		{"no annotation", []runtime.Object{crd(nil)}, crds.Standard},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(),
				map[schema.GroupVersionResource]string{crdResource: "CustomResourceDefinitionList"}, tc.objs...)
			got, err := installedGatewayAPIChannel(context.Background(), dyn)
			if err != nil || got != tc.want {
				t.Errorf("installedGatewayAPIChannel = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}

// TestGatewayAPIChannelRender: the experimental channel renders the
// experimental Gateway API CRDs in place of the standard ones, plus the
// gateway.networking.x-k8s.io ones; every CRD decodes strictly.
func TestGatewayAPIChannelRender(t *testing.T) {
	channelOfCRD := func(r *Rendered, name string) (string, bool) {
		for _, o := range r.Objects {
			if o.GetKind() == "CustomResourceDefinition" && o.GetName() == name {
				return o.GetAnnotations()[crds.ChannelAnnotation], true
			}
		}
		return "", false
	}
	for _, tc := range []struct {
		channel crds.Channel
		want    string
		xBTP    bool
	}{{"", "standard", false}, {crds.Standard, "standard", false}, {crds.Experimental, "experimental", true}} {
		r, err := Render(RenderOptions{Profile: "minimal", GatewayAPIChannel: tc.channel})
		if err != nil {
			t.Fatal(err)
		}
		if got, _ := channelOfCRD(r, "httproutes.gateway.networking.k8s.io"); got != tc.want {
			t.Errorf("channel %q: HTTPRoute CRD channel %q; want %q", tc.channel, got, tc.want)
		}
		if _, ok := channelOfCRD(r, "xbackendtrafficpolicies.gateway.networking.x-k8s.io"); ok != tc.xBTP {
			t.Errorf("channel %q: XBackendTrafficPolicy CRD rendered %v; want %v", tc.channel, ok, tc.xBTP)
		}
		seen := map[string]bool{}
		for _, o := range r.Objects {
			if o.GetKind() != "CustomResourceDefinition" {
				continue
			}
			if seen[o.GetName()] {
				t.Errorf("channel %q: CRD %s rendered twice", tc.channel, o.GetName())
			}
			seen[o.GetName()] = true
			if ch, ok := o.GetAnnotations()[crds.ChannelAnnotation]; ok && ch != tc.want {
				t.Errorf("channel %q: CRD %s of channel %s", tc.channel, o.GetName(), ch)
			}
		}
	}
	if _, err := Render(RenderOptions{GatewayAPIChannel: "beta"}); err == nil || !strings.Contains(err.Error(), "use standard or experimental") {
		t.Errorf("Render with channel beta: %v", err)
	}
}

func TestGatewayAPIChannelFlag(t *testing.T) {
	for _, cmd := range []string{"install", "upgrade"} {
		_, _, err := run(t, "", false, append(noCluster(t), cmd, "--gateway-api-channel", "beta", "--dry-run")...)
		if err == nil || !strings.Contains(err.Error(), `--gateway-api-channel: unknown Gateway API channel "beta": use standard or experimental`) {
			t.Errorf("%s --gateway-api-channel beta: %v", cmd, err)
		}
	}
	out, _, err := run(t, "", false, append(noCluster(t), "install", "--profile", "minimal", "--gateway-api-channel", "experimental", "--dry-run", "-o", "yaml")...)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out, "name: xbackendtrafficpolicies.gateway.networking.x-k8s.io\n") || strings.Contains(out, crds.ChannelAnnotation+": standard") {
		t.Errorf("install --gateway-api-channel experimental --dry-run -o yaml does not print the experimental channel alone")
	}
	// Given, the channel is known without the cluster: the plan says it.
	out, _, err = run(t, "", false, append(noCluster(t), "install", "--gateway-api-channel", "experimental", "--dry-run")...)
	if err != nil {
		t.Fatal(err)
	}
	golden(t, "install/plan-default-experimental.txt", []byte(out))
}
