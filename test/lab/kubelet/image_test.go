package kubelet

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
)

func TestResolveImage(t *testing.T) {
	images := map[string]string{
		"meshlet.dev/echo":                "/lab/bin/echo",
		"registry.k8s.io/coredns/coredns": "/lab/bin/coredns",
		"localhost:5000/tools:v1":         "/lab/bin/tools",
	}
	tests := []struct {
		ref     string
		want    string
		wantErr bool
	}{
		{ref: "meshlet.dev/echo", want: "/lab/bin/echo"},
		{ref: "meshlet.dev/echo:v2", want: "/lab/bin/echo"},
		{ref: "meshlet.dev/echo:v2@sha256:abcd", want: "/lab/bin/echo"},
		{ref: "registry.k8s.io/coredns/coredns:v1.12.0", want: "/lab/bin/coredns"},
		{ref: "localhost:5000/tools", want: "/lab/bin/tools"},
		{ref: "localhost:5000/tools:v9", want: "/lab/bin/tools"},
		{ref: "nginx:latest", wantErr: true},
		{ref: "meshlet.dev/echo2", wantErr: true},
	}
	for _, tt := range tests {
		got, err := resolveImage(images, tt.ref)
		if tt.wantErr {
			var ipe *imagePullError
			if !errors.As(err, &ipe) || !strings.Contains(err.Error(), tt.ref) || !strings.Contains(err.Error(), ".lab/images.json") {
				t.Errorf("resolveImage(%q) error = %v; want an image pull error naming the image and .lab/images.json", tt.ref, err)
			}
			continue
		}
		if err != nil || got != tt.want {
			t.Errorf("resolveImage(%q) = %q, %v; want %q", tt.ref, got, err, tt.want)
		}
	}
}

func TestResolveCommand(t *testing.T) {
	const bin = "/lab/bin/echo"
	tests := []struct {
		name     string
		command  []string
		args     []string
		wantPath string
		wantArgv []string
		wantErr  string
	}{
		{name: "image entrypoint", args: []string{"-http", "8080"}, wantPath: bin, wantArgv: []string{bin, "-http", "8080"}},
		{name: "entrypoint by name", command: []string{"echo", "client"}, args: []string{"-n", "3"}, wantPath: bin, wantArgv: []string{"echo", "client", "-n", "3"}},
		{name: "entrypoint by other dir", command: []string{"/usr/local/bin/echo"}, wantPath: bin, wantArgv: []string{"/usr/local/bin/echo"}},
		{name: "absolute path", command: []string{"/bin/sh", "-c", "true"}, wantPath: "/bin/sh", wantArgv: []string{"/bin/sh", "-c", "true"}},
		{name: "on PATH", command: []string{"sleep"}, args: []string{"1"}, wantArgv: []string{"sleep", "1"}},
		{name: "missing absolute", command: []string{"/nonexistent/app"}, wantErr: "/nonexistent/app"},
		{name: "relative", command: []string{"./app"}, wantErr: `"./app" not found`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path, argv, err := resolveCommand(bin, tt.command, tt.args)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) || !strings.Contains(err.Error(), bin) {
					t.Fatalf("resolveCommand(%q) error = %v; want one naming %q and the image binary", tt.command, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantPath != "" && path != tt.wantPath {
				t.Errorf("path = %q; want %q", path, tt.wantPath)
			}
			if path == "" || !strings.HasPrefix(path, "/") {
				t.Errorf("path = %q; want an absolute path", path)
			}
			if diff := cmp.Diff(tt.wantArgv, argv); diff != "" {
				t.Errorf("argv (-want +got):\n%s", diff)
			}
		})
	}
}

func TestEffectiveCaps(t *testing.T) {
	tests := []struct {
		drop, add []string
		want      []string
		wantErr   bool
	}{
		{drop: []string{"ALL"}, add: []string{"NET_ADMIN", "CAP_NET_RAW"}, want: []string{"NET_ADMIN", "NET_RAW"}},
		{drop: []string{"ALL"}, want: []string{}},
		{add: []string{"bogus"}, wantErr: true},
	}
	for _, tt := range tests {
		got, err := effectiveCaps(tt.drop, tt.add)
		if (err != nil) != tt.wantErr {
			t.Errorf("effectiveCaps(%v, %v) error = %v", tt.drop, tt.add, err)
			continue
		}
		if !tt.wantErr {
			if diff := cmp.Diff(tt.want, got); diff != "" {
				t.Errorf("effectiveCaps(%v, %v) (-want +got):\n%s", tt.drop, tt.add, diff)
			}
		}
	}
	def, _ := effectiveCaps(nil, nil)
	if len(def) != len(defaultCaps) {
		t.Errorf("default caps = %v; want containerd's %v", def, defaultCaps)
	}
}

func TestContainerEnv(t *testing.T) {
	opt := true
	pod := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "echo-1", Namespace: "demo", Labels: map[string]string{"version": "v2", "app": "echo"}},
		Spec:       corev1.PodSpec{NodeName: "lab-node-1"},
	}
	c := &corev1.Container{
		EnvFrom: []corev1.EnvFromSource{{Prefix: "CM_", ConfigMapRef: &corev1.ConfigMapEnvSource{LocalObjectReference: corev1.LocalObjectReference{Name: "cfg"}}}},
		Env: []corev1.EnvVar{
			{Name: "PLAIN", Value: "x"},
			{Name: "POD_IP", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "status.podIP"}}},
			{Name: "NODE_NAME", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "spec.nodeName"}}},
			{Name: "POD_NAMESPACE", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.namespace"}}},
			{Name: "VERSION", ValueFrom: &corev1.EnvVarSource{FieldRef: &corev1.ObjectFieldSelector{FieldPath: "metadata.labels['version']"}}},
			{Name: "PASSWORD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "pw"}}},
			{Name: "MAYBE", ValueFrom: &corev1.EnvVarSource{ConfigMapKeyRef: &corev1.ConfigMapKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "missing"}, Key: "k", Optional: &opt}}},
		},
	}
	src := envSources{
		configMap: func(ns, name string) (map[string]string, error) {
			if ns == "demo" && name == "cfg" {
				return map[string]string{"MODE": "fast"}, nil
			}
			return nil, errors.New("not found")
		},
		secret: func(ns, name string) (map[string][]byte, error) {
			if ns == "demo" && name == "sec" {
				return map[string][]byte{"pw": []byte("hunter2")}, nil
			}
			return nil, errors.New("not found")
		},
	}
	env, err := containerEnv(pod, c, "198.18.64.7", "198.18.0.11", src)
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		got[k] = v
	}
	want := map[string]string{
		"PLAIN": "x", "POD_IP": "198.18.64.7", "NODE_NAME": "lab-node-1", "POD_NAMESPACE": "demo", "VERSION": "v2",
		"PASSWORD": "hunter2", "MAYBE": "", "CM_MODE": "fast", "HOSTNAME": "echo-1",
		"KUBERNETES_SERVICE_HOST": "198.18.128.1", "KUBERNETES_SERVICE_PORT": "443",
	}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("env %s = %q; want %q", k, got[k], v)
		}
	}
	c.Env = append(c.Env, corev1.EnvVar{Name: "BAD", ValueFrom: &corev1.EnvVarSource{SecretKeyRef: &corev1.SecretKeySelector{LocalObjectReference: corev1.LocalObjectReference{Name: "sec"}, Key: "nope"}}})
	if _, err := containerEnv(pod, c, "", "", src); err == nil || !strings.Contains(err.Error(), "BAD") || !strings.Contains(err.Error(), "nope") {
		t.Errorf("env with a missing secret key: error = %v; want one naming the variable and the key", err)
	}
}

func TestExpandVars(t *testing.T) {
	env := map[string]string{"NODE_NAME": "lab-node-1", "PORT": "8080"}
	tests := []struct{ in, want string }{
		{"--node=$(NODE_NAME)", "--node=lab-node-1"},
		{"$(PORT)$(PORT)", "80808080"},
		{"$$(PORT)", "$(PORT)"},
		{"$(UNKNOWN)", "$(UNKNOWN)"},
		{"cost $5", "cost $5"},
		{"open $(PORT", "open $(PORT"},
		{"end$", "end$"},
	}
	for _, tt := range tests {
		if got := expandVars(tt.in, env); got != tt.want {
			t.Errorf("expandVars(%q) = %q; want %q", tt.in, got, tt.want)
		}
	}
}
