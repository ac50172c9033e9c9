package kube

import (
	"encoding/json"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"github.com/meshlet/meshlet/pkg/model"
	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// decode reads obj's JSON, as the API server sends it, with the agent's
// codecs.
func decode(t *testing.T, obj any) runtime.Object {
	t.Helper()
	b, err := json.Marshal(obj)
	if err != nil {
		t.Fatal(err)
	}
	out, _, err := codecs.UniversalDeserializer().Decode(b, nil, nil)
	if err != nil {
		t.Fatalf("decode %s: %v", b, err)
	}
	return out
}

// TestTypesDecodeCoreJSON holds the cut-down kinds' field names against
// k8s.io/api's: every field the agent reads comes through, and an object
// full of fields it does not read decodes without error.
func TestTypesDecodeCoreJSON(t *testing.T) {
	yes := true
	deleted := metav1.NewTime(time.Date(2026, 12, 4, 10, 0, 0, 0, time.UTC))
	meta := metav1.ObjectMeta{
		Namespace: "shop", Name: "cart-7d4b9c-x2x", UID: "uid-1", ResourceVersion: "42",
		Labels:          map[string]string{"app": "cart", "pod-template-hash": "7d4b9c"},
		Annotations:     map[string]string{"note": "kept until DropUnread"},
		OwnerReferences: []metav1.OwnerReference{{APIVersion: "apps/v1", Kind: "ReplicaSet", Name: "cart-7d4b9c", UID: "rs", Controller: &yes}},
		ManagedFields:   []metav1.ManagedFieldsEntry{{Manager: "kubectl", Operation: metav1.ManagedFieldsOperationApply}},
	}
	core := &corev1.Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: meta,
		Spec: corev1.PodSpec{
			NodeName: "node-1", HostNetwork: true, ServiceAccountName: "cart",
			Volumes: []corev1.Volume{{Name: "data", VolumeSource: corev1.VolumeSource{EmptyDir: &corev1.EmptyDirVolumeSource{}}}},
			Containers: []corev1.Container{{
				Name: "app", Image: "cart:1", Args: []string{"--port=8080"},
				Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080, Protocol: corev1.ProtocolTCP}},
				Env:            []corev1.EnvVar{{Name: "A", Value: "b"}},
				LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Path: "/healthz", Port: intstr.FromString("http")}}, PeriodSeconds: 5},
				ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(8081)}}},
				StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}},
			}, {
				Name:          "sidecar",
				LivenessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
			}},
		},
		Status: corev1.PodStatus{
			Phase: corev1.PodRunning, PodIP: "198.18.64.5", PodIPs: []corev1.PodIP{{IP: "198.18.64.5"}, {IP: "fd00::5"}},
			Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
		},
	}
	want := &Pod{
		TypeMeta:   metav1.TypeMeta{APIVersion: "v1", Kind: "Pod"},
		ObjectMeta: meta,
		Spec: PodSpec{
			NodeName: "node-1", HostNetwork: true, ServiceAccountName: "cart",
			Containers: []Container{{
				Name:           "app",
				Ports:          []ContainerPort{{Name: "http", ContainerPort: 8080}},
				LivenessProbe:  &Probe{HTTPGet: &PortAction{Port: intstr.FromString("http")}},
				ReadinessProbe: &Probe{TCPSocket: &PortAction{Port: intstr.FromInt32(8081)}},
				StartupProbe:   &Probe{GRPC: &GRPCAction{Port: 9090}},
			}, {
				Name:          "sidecar",
				LivenessProbe: &Probe{},
			}},
		},
		Status: PodStatus{Phase: PodRunning, PodIP: "198.18.64.5", PodIPs: []PodIP{{IP: "198.18.64.5"}, {IP: "fd00::5"}}},
	}
	got, ok := decode(t, core).(*Pod)
	if !ok {
		t.Fatalf("a core/v1 pod decoded as %T; want *kube.Pod", got)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("pod (-want +got):\n%s", d)
	}

	cp := got.DeepCopyObject().(*Pod)
	cp.Labels["app"] = "changed"
	cp.Spec.Containers[0].Ports[0].ContainerPort = 1
	cp.Spec.Containers[0].LivenessProbe.HTTPGet.Port = intstr.FromInt32(1)
	cp.Status.PodIPs[0].IP = "changed"
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("changing a DeepCopy changed the original (-want +got):\n%s", d)
	}

	if _, err := DropUnread(got); err != nil {
		t.Fatal(err)
	}
	if got.Annotations != nil || got.ManagedFields != nil || got.Labels["app"] != "cart" {
		t.Errorf("after DropUnread: annotations %v, managed fields %v, labels %v; want no annotations or managed fields, labels kept",
			got.Annotations, got.ManagedFields, got.Labels)
	}
	got.Annotations = map[string]string{"note": "x", model.AnnotationBypassInbound: "true", model.AnnotationRedirection: "disabled"}
	if _, err := DropUnread(got); err != nil {
		t.Fatal(err)
	}
	if d := cmp.Diff(map[string]string{model.AnnotationBypassInbound: "true", model.AnnotationRedirection: "disabled"}, got.Annotations); d != "" {
		t.Errorf("after DropUnread, annotations (-want +got):\n%s", d)
	}

	ns, ok := decode(t, &corev1.Namespace{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Namespace"},
		ObjectMeta: metav1.ObjectMeta{Name: "shop", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}},
		Spec:       corev1.NamespaceSpec{Finalizers: []corev1.FinalizerName{"kubernetes"}}}).(*Namespace)
	if !ok || ns.Name != "shop" || ns.Labels["istio.io/dataplane-mode"] != "ambient" {
		t.Errorf("namespace decoded as %#v; want shop with its label", ns)
	}

	svc, ok := decode(t, &corev1.Service{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "Service"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "kube-system", Name: "kube-dns"},
		Spec:       corev1.ServiceSpec{ClusterIP: "198.19.0.10", Ports: []corev1.ServicePort{{Port: 53}}}}).(*Service)
	if !ok || svc.Spec.ClusterIP != "198.19.0.10" {
		t.Errorf("service decoded as %#v; want cluster IP 198.19.0.10", svc)
	}

	ds, ok := decode(t, &appsv1.DaemonSet{TypeMeta: metav1.TypeMeta{APIVersion: "apps/v1", Kind: "DaemonSet"},
		ObjectMeta: metav1.ObjectMeta{Namespace: "meshlet-system", Name: "meshlet-node-agent", DeletionTimestamp: &deleted},
		Status:     appsv1.DaemonSetStatus{NumberReady: 2}}).(*DaemonSet)
	if !ok || ds.DeletionTimestamp == nil || !ds.DeletionTimestamp.Equal(&deleted) {
		t.Errorf("daemonset decoded as %#v; want its deletion timestamp", ds)
	}

	list, ok := decode(t, &corev1.PodList{TypeMeta: metav1.TypeMeta{APIVersion: "v1", Kind: "PodList"},
		ListMeta: metav1.ListMeta{ResourceVersion: "7"}, Items: []corev1.Pod{*core}}).(*PodList)
	if !ok || list.ResourceVersion != "7" || len(list.Items) != 1 || list.Items[0].Spec.ServiceAccountName != "cart" {
		t.Errorf("pod list decoded as %#v; want resource version 7 and the pod", list)
	}
}
