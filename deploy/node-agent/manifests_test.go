// Package nodeagent holds the node agent's manifests; this test checks them
// as the API server and a reviewer would. It has no other Go code.
package nodeagent

import (
	"bytes"
	"os"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/scheme"
)

func decodeAll(t *testing.T, file string) []runtime.Object {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	var out []runtime.Object
	for _, doc := range bytes.Split(b, []byte("\n---\n")) {
		if len(bytes.TrimSpace(doc)) == 0 {
			continue
		}
		obj, _, err := scheme.Codecs.UniversalDeserializer().Decode(doc, nil, nil)
		if err != nil {
			t.Fatalf("%s: decode: %v", file, err)
		}
		out = append(out, obj)
	}
	return out
}

func TestDaemonSet(t *testing.T) {
	objs := decodeAll(t, "daemonset.yaml")
	if len(objs) != 1 {
		t.Fatalf("daemonset.yaml has %d objects; want 1", len(objs))
	}
	ds, ok := objs[0].(*appsv1.DaemonSet)
	if !ok {
		t.Fatalf("daemonset.yaml holds a %T", objs[0])
	}
	if ru := ds.Spec.UpdateStrategy.RollingUpdate; ru == nil || ru.MaxSurge == nil || ru.MaxSurge.IntValue() != 1 || ru.MaxUnavailable == nil || ru.MaxUnavailable.IntValue() != 0 {
		t.Errorf("updateStrategy = %+v; want maxSurge 1, maxUnavailable 0 (listener handoff)", ds.Spec.UpdateStrategy)
	}
	spec := ds.Spec.Template.Spec
	if !spec.HostNetwork || !spec.HostPID {
		t.Errorf("hostNetwork=%v hostPID=%v; want both true", spec.HostNetwork, spec.HostPID)
	}
	if len(spec.Tolerations) == 0 || spec.Tolerations[0].Operator != corev1.TolerationOpExists {
		t.Errorf("tolerations = %v; want to tolerate every taint", spec.Tolerations)
	}
	if spec.ServiceAccountName != "meshlet-node-agent" {
		t.Errorf("serviceAccountName = %q", spec.ServiceAccountName)
	}
	c := spec.Containers[0]
	if !strings.HasPrefix(c.Image, "meshlet.dev/node-agent") {
		t.Errorf("image = %q; want meshlet.dev/node-agent", c.Image)
	}
	sc := c.SecurityContext
	if sc == nil || sc.Privileged == nil || *sc.Privileged {
		t.Errorf("container must not be privileged; least capabilities instead")
	}
	for _, capName := range []corev1.Capability{"BPF", "NET_ADMIN", "SYS_ADMIN", "NET_RAW"} {
		if !slices.Contains(sc.Capabilities.Add, capName) {
			t.Errorf("capabilities.add lacks %s", capName)
		}
	}
	if !slices.Contains(sc.Capabilities.Drop, "ALL") {
		t.Errorf("capabilities.drop lacks ALL")
	}
	mounts := map[string]corev1.VolumeMount{}
	for _, m := range c.VolumeMounts {
		mounts[m.Name] = m
	}
	hostPaths := map[string]string{}
	for _, v := range spec.Volumes {
		if v.HostPath != nil {
			hostPaths[v.Name] = v.HostPath.Path
		}
	}
	for _, want := range []struct{ host, mount string }{
		{"/sys/fs/bpf", "/sys/fs/bpf"},
		{"/var/run/netns", "/var/run/netns"},
		{"/var/run/meshlet", "/var/run/meshlet"},
		{"/etc/cni/net.d", "/host/etc/cni/net.d"},
		{"/opt/cni/bin", "/host/opt/cni/bin"},
		{"/sys/fs/cgroup", "/host/cgroup"},
	} {
		found := false
		for name, p := range hostPaths {
			if p == want.host && mounts[name].MountPath == want.mount {
				found = true
			}
		}
		if !found {
			t.Errorf("no hostPath %s mounted at %s", want.host, want.mount)
		}
	}
	for name, p := range hostPaths {
		if p == "/var/run/netns" && (mounts[name].MountPropagation == nil || *mounts[name].MountPropagation != corev1.MountPropagationHostToContainer) {
			t.Errorf("/var/run/netns must be mounted with HostToContainer propagation (new pods' netns appear after start)")
		}
	}
	args := strings.Join(c.Args, " ")
	for _, want := range []string{"--cgroup-root=/host/cgroup", "--cni-conf-dir=/host/etc/cni/net.d", "--cni-bin-dir=/host/opt/cni/bin",
		"--meshd-address=meshd.meshlet-system.svc:15012", "--meshd-root-cert=/var/run/secrets/meshlet/root-cert.pem"} {
		if !strings.Contains(args, want) {
			t.Errorf("args lack %s (they must match the mounts)", want)
		}
	}
	rootMounted := false
	for _, v := range spec.Volumes {
		if v.ConfigMap != nil && v.ConfigMap.Name == "istio-ca-root-cert" && mounts[v.Name].MountPath == "/var/run/secrets/meshlet" {
			rootMounted = true
		}
	}
	if !rootMounted {
		t.Errorf("meshd's root ConfigMap istio-ca-root-cert is not mounted at /var/run/secrets/meshlet")
	}
	if c.ReadinessProbe == nil || c.ReadinessProbe.HTTPGet == nil || c.ReadinessProbe.HTTPGet.Port.IntValue() != 15021 {
		t.Errorf("readiness probe must be HTTP on 15021")
	}
	if g := spec.TerminationGracePeriodSeconds; g == nil || *g <= 30 {
		t.Errorf("terminationGracePeriodSeconds = %v; want more than the 30s drain", g)
	}
}

func TestRBAC(t *testing.T) {
	objs := decodeAll(t, "rbac.yaml")
	var role *rbacv1.ClusterRole
	var binding *rbacv1.ClusterRoleBinding
	var sa *corev1.ServiceAccount
	for _, o := range objs {
		switch o := o.(type) {
		case *rbacv1.ClusterRole:
			role = o
		case *rbacv1.ClusterRoleBinding:
			binding = o
		case *corev1.ServiceAccount:
			sa = o
		}
	}
	if role == nil || binding == nil || sa == nil {
		t.Fatalf("rbac.yaml must hold a ServiceAccount, ClusterRole and ClusterRoleBinding")
	}
	can := func(group, resource, verb string) bool {
		for _, r := range role.Rules {
			if slices.Contains(r.APIGroups, group) && slices.Contains(r.Resources, resource) && slices.Contains(r.Verbs, verb) {
				return true
			}
		}
		return false
	}
	for _, want := range []struct{ group, resource string }{
		{"", "pods"}, {"", "namespaces"}, {"", "nodes"}, {"", "services"}, {"discovery.k8s.io", "endpointslices"},
	} {
		for _, verb := range []string{"get", "list", "watch"} {
			if !can(want.group, want.resource, verb) {
				t.Errorf("ClusterRole cannot %s %s", verb, want.resource)
			}
		}
	}
	// Its one write: Istio's status annotation on the pods it enrolls,
	// through pods/status, which cannot change a pod's spec.
	if !can("", "pods/status", "patch") {
		t.Errorf("ClusterRole cannot patch pods/status (the ambient.istio.io/redirection annotation)")
	}
	for _, r := range role.Rules {
		for _, v := range r.Verbs {
			write := v == "patch" && slices.Equal(r.Resources, []string{"pods/status"}) && slices.Equal(r.APIGroups, []string{""})
			if !write && !slices.Contains([]string{"get", "list", "watch"}, v) {
				t.Errorf("ClusterRole grants %q on %v; the agent only reads, and patches pods/status", v, r.Resources)
			}
		}
	}
	if binding.RoleRef.Name != role.Name || len(binding.Subjects) != 1 ||
		binding.Subjects[0].Name != sa.Name || binding.Subjects[0].Namespace != sa.Namespace {
		t.Errorf("binding %+v does not bind %s to %s/%s", binding, role.Name, sa.Namespace, sa.Name)
	}
}
