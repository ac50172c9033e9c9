package deployer

import (
	"encoding/json"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
)

var update = flag.Bool("update", false, "rewrite the golden files in testdata/")

func gateway(class string, listeners ...gatewayv1.Listener) *gatewayv1.Gateway {
	return &gatewayv1.Gateway{
		ObjectMeta: metav1.ObjectMeta{Name: "waypoint", Namespace: "bookinfo", UID: "0b5e3d7a-1111-4c2d-9e0f-000000000001"},
		Spec:       gatewayv1.GatewaySpec{GatewayClassName: gatewayv1.ObjectName(class), Listeners: listeners},
	}
}

var opts = RenderOptions{MeshdAddress: "meshd.meshlet-system.svc:15012", TrustDomain: "cluster.local"}

func TestRenderGolden(t *testing.T) {
	tests := []struct {
		name   string
		gw     *gatewayv1.Gateway
		golden string
	}{
		{"istio-waypoint", gateway("istio-waypoint", gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: "HBONE"}), "waypoint.golden.json"},
		{"meshlet ingress", gateway("meshlet",
			gatewayv1.Listener{Name: "https", Port: 443, Protocol: gatewayv1.HTTPSProtocolType},
			gatewayv1.Listener{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType},
			gatewayv1.Listener{Name: "http-alt", Port: 80, Protocol: gatewayv1.HTTPProtocolType, Hostname: ptr(gatewayv1.Hostname("a.example"))},
		), "ingress.golden.json"},
		{"meshlet ingress asking for an address", addressed("meshlet", nil, "IPAddress=198.51.100.7"), "ingress-address.golden.json"},
		{"waypoint of Service type NodePort", addressed("meshlet-waypoint", []string{ServiceTypeAnnotation, "NodePort"}), "waypoint-nodeport.golden.json"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Render(tt.gw, opts, Params{})
			if err != nil {
				t.Fatalf("Render() = %v", err)
			}
			got, err := json.MarshalIndent(objs, "", "  ")
			if err != nil {
				t.Fatal(err)
			}
			got = append(got, '\n')
			path := filepath.Join("testdata", tt.golden)
			if *update {
				if err := os.WriteFile(path, got, 0o644); err != nil {
					t.Fatal(err)
				}
			}
			want, err := os.ReadFile(path)
			if err != nil {
				t.Fatalf("read golden (run with -update to create it): %v", err)
			}
			if diff := cmp.Diff(string(want), string(got)); diff != "" {
				t.Errorf("Render(%s) differs from %s (-want +got):\n%s", tt.name, path, diff)
			}
		})
	}
}

// TestRenderContract checks, independently of the golden files, what the
// rest of meshlet relies on: meshd finds the waypoint by its pod label,
// the binary reads its identity from the downward API, and the Gateway owns
// every object.
func TestRenderContract(t *testing.T) {
	gw := gateway("meshlet-waypoint")
	objs, err := Render(gw, opts, Params{})
	if err != nil {
		t.Fatal(err)
	}
	tmpl := objs.Deployment.Spec.Template
	if got := tmpl.Labels[GatewayNameLabel]; got != "waypoint" {
		t.Errorf("pod label %s = %q; want %q", GatewayNameLabel, got, "waypoint")
	}
	if got := *objs.Deployment.Spec.Selector; got.MatchLabels[GatewayNameLabel] != "waypoint" {
		t.Errorf("deployment selector = %v; want it to select the gateway-name label", got.MatchLabels)
	}
	c := tmpl.Spec.Containers[0]
	if *c.Image != DefaultImage {
		t.Errorf("image = %q; want %q", *c.Image, DefaultImage)
	}
	env := map[string]string{}
	for _, e := range c.Env {
		if e.ValueFrom != nil {
			env[*e.Name] = *e.ValueFrom.FieldRef.FieldPath
		}
	}
	for k, want := range map[string]string{"POD_NAME": "metadata.name", "POD_NAMESPACE": "metadata.namespace", "SERVICE_ACCOUNT": "spec.serviceAccountName", "NODE_NAME": "spec.nodeName", "GATEWAY_NAME": "metadata.labels['gateway.networking.k8s.io/gateway-name']"} {
		if env[k] != want {
			t.Errorf("env %s from %q; want %q", k, env[k], want)
		}
	}
	// Burstable QoS (not first to be evicted), a memory bound for
	// --memory-limit=auto, no CPU throttling.
	if r := c.Resources; r == nil || r.Requests.Cpu().IsZero() || r.Requests.Memory().IsZero() ||
		r.Limits.Memory().IsZero() || !r.Limits.Cpu().IsZero() {
		t.Errorf("resources = %+v; want CPU and memory requests and a memory limit only", r)
	}
	var ports []int32
	for _, p := range c.Ports {
		ports = append(ports, *p.ContainerPort)
	}
	if diff := cmp.Diff([]int32{15008, 15020, 15021}, ports); diff != "" {
		t.Errorf("container ports (-want +got):\n%s", diff)
	}
	for what, refs := range map[string][]string{
		"ServiceAccount": {*objs.ServiceAccount.OwnerReferences[0].Kind, string(*objs.ServiceAccount.OwnerReferences[0].UID)},
		"Deployment":     {*objs.Deployment.OwnerReferences[0].Kind, string(*objs.Deployment.OwnerReferences[0].UID)},
		"Service":        {*objs.Service.OwnerReferences[0].Kind, string(*objs.Service.OwnerReferences[0].UID)},
	} {
		if refs[0] != "Gateway" || refs[1] != string(gw.UID) {
			t.Errorf("%s owner = %v; want the Gateway %s", what, refs, gw.UID)
		}
	}
	if got := len(objs.Service.Spec.Ports); got != 1 || *objs.Service.Spec.Ports[0].Port != 15008 {
		t.Errorf("waypoint Service ports = %d; want only 15008", got)
	}
	if n := len(tmpl.Spec.ImagePullSecrets); n != 0 {
		t.Errorf("%d image pull secrets without any asked for; want none", n)
	}
}

// TestRenderImageAndPullSecrets: the image and pull secrets meshd is given
// (the chart's global.hub, global.tag and global.imagePullSecrets) are the
// waypoint pods', so a registry that needs credentials serves waypoints
// too.
func TestRenderImageAndPullSecrets(t *testing.T) {
	o := opts
	o.Image, o.ImagePullSecrets = "registry.corp.example/mesh/waypoint:1.4.2", []string{"regcred", "mirror"}
	objs, err := Render(gateway("istio-waypoint"), o, Params{})
	if err != nil {
		t.Fatal(err)
	}
	spec := objs.Deployment.Spec.Template.Spec
	if got := *spec.Containers[0].Image; got != o.Image {
		t.Errorf("image = %q; want %q", got, o.Image)
	}
	var names []string
	for _, r := range spec.ImagePullSecrets {
		names = append(names, *r.Name)
	}
	if diff := cmp.Diff(o.ImagePullSecrets, names); diff != "" {
		t.Errorf("image pull secrets (-want +got):\n%s", diff)
	}
}

func listenerSet(ns, name string, listeners ...gatewayv1.ListenerEntry) *gatewayv1.ListenerSet {
	return &gatewayv1.ListenerSet{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns},
		Spec: gatewayv1.ListenerSetSpec{
			ParentRef: gatewayv1.ParentGatewayReference{Name: "waypoint", Namespace: ptr(gatewayv1.Namespace("bookinfo"))},
			Listeners: listeners,
		},
	}
}

// servicePort is a Service port as kubectl shows it.
type servicePort struct {
	Name     string
	Port     int32
	Target   string
	Protocol corev1.Protocol
}

func servicePorts(objs *Objects) []servicePort {
	var out []servicePort
	for _, p := range objs.Service.Spec.Ports {
		out = append(out, servicePort{*p.Name, *p.Port, p.TargetPort.String(), *p.Protocol})
	}
	return out
}

// TestRenderListenerSets: an ingress Gateway's Service opens the ports of
// the listeners of the ListenerSets passed, each port once, named after its
// first listener in merge order (the Gateway's, then the sets' in the
// order given); a waypoint's Service does not.
func TestRenderListenerSets(t *testing.T) {
	ingress := gateway("meshlet",
		gatewayv1.Listener{Name: "https", Port: 443, Protocol: gatewayv1.HTTPSProtocolType},
		gatewayv1.Listener{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType},
	)
	// Two sets, one of another namespace; Render merges them in the order
	// given (the deployer's, SortListenerSets').
	older := listenerSet("team-a", "older",
		gatewayv1.ListenerEntry{Name: "api", Port: 8080, Protocol: gatewayv1.HTTPProtocolType},
		gatewayv1.ListenerEntry{Name: "raw", Port: 80, Protocol: gatewayv1.TCPProtocolType}, // the Gateway's http-80
		gatewayv1.ListenerEntry{Name: "dns", Port: 5353, Protocol: gatewayv1.UDPProtocolType},
	)
	newer := listenerSet("bookinfo", "newer",
		gatewayv1.ListenerEntry{Name: "passthrough", Port: 9443, Protocol: gatewayv1.TLSProtocolType},
		gatewayv1.ListenerEntry{Name: "api-tcp", Port: 8080, Protocol: gatewayv1.TCPProtocolType}, // older's http-8080
		gatewayv1.ListenerEntry{Name: "hbone", Port: 15008, Protocol: gatewayv1.TCPProtocolType},  // the mesh port
		gatewayv1.ListenerEntry{Name: "https-b", Port: 443, Protocol: gatewayv1.HTTPSProtocolType, Hostname: ptr(gatewayv1.Hostname("b.example"))},
	)
	mesh := servicePort{"mesh", 15008, "15008", corev1.ProtocolTCP}
	tests := []struct {
		name string
		sets []*gatewayv1.ListenerSet
		want []servicePort
	}{
		{"no sets", nil, []servicePort{
			mesh,
			{"http-80", 80, "80", corev1.ProtocolTCP},
			{"https-443", 443, "443", corev1.ProtocolTCP},
		}},
		{"older then newer", []*gatewayv1.ListenerSet{older, newer}, []servicePort{
			mesh,
			{"http-80", 80, "80", corev1.ProtocolTCP},
			{"https-443", 443, "443", corev1.ProtocolTCP},
			{"udp-5353", 5353, "5353", corev1.ProtocolUDP},
			{"http-8080", 8080, "8080", corev1.ProtocolTCP},
			{"tls-9443", 9443, "9443", corev1.ProtocolTCP},
		}},
		// The order given is the merge order: 8080 is named after newer's
		// TCP listener now; 80 stays the Gateway's.
		{"newer then older", []*gatewayv1.ListenerSet{newer, older}, []servicePort{
			mesh,
			{"http-80", 80, "80", corev1.ProtocolTCP},
			{"https-443", 443, "443", corev1.ProtocolTCP},
			{"udp-5353", 5353, "5353", corev1.ProtocolUDP},
			{"tcp-8080", 8080, "8080", corev1.ProtocolTCP},
			{"tls-9443", 9443, "9443", corev1.ProtocolTCP},
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			objs, err := Render(ingress, opts, Params{}, tt.sets...)
			if err != nil {
				t.Fatal(err)
			}
			if got := *objs.Service.Spec.Type; got != corev1.ServiceTypeLoadBalancer {
				t.Errorf("Service type = %s; want LoadBalancer", got)
			}
			if diff := cmp.Diff(tt.want, servicePorts(objs)); diff != "" {
				t.Errorf("Service ports (-want +got):\n%s", diff)
			}
			again, err := Render(ingress, opts, Params{}, tt.sets...)
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(objs, again); diff != "" {
				t.Errorf("Render is not deterministic (-first +second):\n%s", diff)
			}
		})
	}

	// Only the Service changes: the Deployment is the same with or
	// without sets.
	without, err := Render(ingress, opts, Params{})
	if err != nil {
		t.Fatal(err)
	}
	with, err := Render(ingress, opts, Params{}, older, newer)
	if err != nil {
		t.Fatal(err)
	}
	if diff := cmp.Diff(without.Deployment, with.Deployment); diff != "" {
		t.Errorf("Deployment changed with sets (-without +with):\n%s", diff)
	}

	t.Run("waypoint", func(t *testing.T) {
		wp := gateway("istio-waypoint", gatewayv1.Listener{Name: "mesh", Port: 15008, Protocol: "HBONE"})
		want, err := Render(wp, opts, Params{})
		if err != nil {
			t.Fatal(err)
		}
		got, err := Render(wp, opts, Params{}, older, newer)
		if err != nil {
			t.Fatal(err)
		}
		if diff := cmp.Diff(want, got); diff != "" {
			t.Errorf("waypoint rendered with sets differs (-without +with):\n%s", diff)
		}
		if diff := cmp.Diff([]servicePort{mesh}, servicePorts(got)); diff != "" {
			t.Errorf("waypoint Service ports (-want +got):\n%s", diff)
		}
		if got := *got.Service.Spec.Type; got != corev1.ServiceTypeClusterIP {
			t.Errorf("waypoint Service type = %s; want ClusterIP", got)
		}
	})
}

func TestRenderRefuses(t *testing.T) {
	noUID := gateway("istio-waypoint")
	noUID.UID = ""
	tests := []struct {
		name    string
		gw      *gatewayv1.Gateway
		opts    RenderOptions
		wantErr string
	}{
		{"other class", gateway("nginx"), opts, "not a meshlet class"},
		{"no uid", noUID, opts, "no UID"},
		{"no meshd", gateway("istio-waypoint"), RenderOptions{TrustDomain: "cluster.local"}, "MeshdAddress"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(tt.gw, tt.opts, Params{})
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Render() = %v; want an error containing %q", err, tt.wantErr)
			}
		})
	}
}

func ptr[T any](v T) *T { return &v }
