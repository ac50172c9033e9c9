package controlplane

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strconv"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	k8sruntime "k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	"sigs.k8s.io/yaml"

	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// scaleInputs builds a cluster of pods and services spread over 10
// namespaces; service s selects pods p with p%services == s, so every
// service has pods/services endpoints. Objects carry
// resourceVersions set so the builder can reuse unchanged workloads.
func scaleInputs(tb testing.TB, pods, services int) *Inputs {
	tb.Helper()
	in := &Inputs{}
	const namespaces = 10
	for n := 0; n < namespaces; n++ {
		name := fmt.Sprintf("ns-%d", n)
		must(tb, in.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, ResourceVersion: "1",
			Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}}))
	}
	for s := 0; s < services; s++ {
		nsName := fmt.Sprintf("ns-%d", s%namespaces)
		must(tb, in.Add(&corev1.Service{
			ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("svc-%d", s), Namespace: nsName, ResourceVersion: "1"},
			Spec: corev1.ServiceSpec{
				ClusterIP: fmt.Sprintf("10.96.%d.%d", s/250, s%250+1),
				Selector:  map[string]string{"app": fmt.Sprintf("app-%d", s)},
				Ports: []corev1.ServicePort{
					{Name: "http", Port: 80, TargetPort: intstr.FromInt32(8080), Protocol: corev1.ProtocolTCP},
					{Name: "grpc", Port: 9090, TargetPort: intstr.FromString("grpc"), Protocol: corev1.ProtocolTCP},
				},
			},
		}))
	}
	for p := 0; p < pods; p++ {
		s := p % services
		nsName := fmt.Sprintf("ns-%d", s%namespaces)
		must(tb, in.Add(&corev1.Pod{
			ObjectMeta: metav1.ObjectMeta{
				Name: fmt.Sprintf("pod-%d", p), Namespace: nsName, UID: types.UID("uid-" + strconv.Itoa(p)), ResourceVersion: "1",
				Labels: map[string]string{"app": fmt.Sprintf("app-%d", s), "version": "v1"},
			},
			Spec: corev1.PodSpec{
				NodeName:           fmt.Sprintf("node-%d", p%100),
				ServiceAccountName: fmt.Sprintf("sa-%d", s),
				Containers: []corev1.Container{{Name: "app", Ports: []corev1.ContainerPort{
					{Name: "http", ContainerPort: 8080}, {Name: "grpc", ContainerPort: 9090}}}},
			},
			Status: corev1.PodStatus{
				Phase:      corev1.PodRunning,
				PodIP:      fmt.Sprintf("10.%d.%d.%d", 1+p/65000, (p/250)%250, p%250+1),
				PodIPs:     []corev1.PodIP{{IP: fmt.Sprintf("10.%d.%d.%d", 1+p/65000, (p/250)%250, p%250+1)}},
				Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}},
			},
		}))
	}
	return in
}

func must(tb testing.TB, err error) {
	tb.Helper()
	if err != nil {
		tb.Fatal(err)
	}
}

func TestScaleSnapshot(t *testing.T) {
	in := scaleInputs(t, 2000, 200)
	snap, rej := NewBuilder(BuilderOptions{}).Build(in)
	if len(rej) != 0 {
		t.Fatalf("rejections = %v", rej[:min(len(rej), 5)])
	}
	if got := len(snap.Workloads()); got != 2000 {
		t.Errorf("workloads = %d; want 2000", got)
	}
	for _, svc := range snap.Services() {
		if len(svc.Endpoints) != 10 {
			t.Fatalf("service %s has %d endpoints; want 10", svc.Key(), len(svc.Endpoints))
		}
	}
	if got := len(snap.WorkloadsOnNode("node-7")); got != 20 {
		t.Errorf("WorkloadsOnNode(node-7) = %d workloads; want 20", got)
	}
}

// TestIncrementalBuild checks that a rebuild after one pod changes reuses
// every other workload and that Diff names exactly the change.
func TestIncrementalBuild(t *testing.T) {
	in := scaleInputs(t, 200, 20)
	b := NewBuilder(BuilderOptions{})
	b.Build(in)

	// A pod-level warning is reported by every build, also when the pod's
	// workload is reused.
	warned := in.pods["ns-5/pod-5"].DeepCopy()
	warned.Labels["istio.io/use-waypoint"] = "missing"
	warned.ResourceVersion = "2"
	must(t, in.Add(warned))
	first, rej := b.Build(in)
	if !hasRejection(rej, "Pod ns-5/pod-5: pod label istio.io/use-waypoint=missing", true) {
		t.Fatalf("first build rejections = %v; want the missing-waypoint warning", rej)
	}

	changed := in.pods["ns-3/pod-3"].DeepCopy()
	changed.ResourceVersion = "2"
	changed.Labels["istio.io/dataplane-mode"] = "none"
	must(t, in.Add(changed))
	second, rej := b.Build(in)
	if !hasRejection(rej, "Pod ns-5/pod-5: pod label istio.io/use-waypoint=missing", true) {
		t.Errorf("second build rejections = %v; want the reused pod's warning again", rej)
	}

	if second.Version() <= first.Version() {
		t.Errorf("Version() = %d after %d; want it to grow", second.Version(), first.Version())
	}
	reused := 0
	for _, w := range second.Workloads() {
		if old, _ := first.Workload(w.UID); old == w {
			reused++
		}
	}
	if reused != 199 {
		t.Errorf("reused %d workloads; want 199 (all but the changed pod)", reused)
	}
	d := second.Diff(first)
	if len(d.WorkloadsChanged) != 1 || d.WorkloadsChanged[0] != "uid-3" || len(d.ServicesChanged) != 0 || len(d.WorkloadsRemoved) != 0 {
		t.Errorf("Diff = %+v; want only workload uid-3 changed", d)
	}
	if w, _ := second.Workload("uid-3"); w.Enrolled {
		t.Errorf("uid-3 still enrolled after istio.io/dataplane-mode=none")
	}

	// A policy change invalidates the reuse: every workload is rebuilt and
	// the ones the policy binds to show up in the diff.
	must(t, in.Add(mustDecode(t, `apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: deny, namespace: ns-1, resourceVersion: "5"}
spec: {action: DENY, rules: [{from: [{source: {notNamespaces: [ns-1]}}]}]}
`)))
	third, _ := b.Build(in)
	if d := third.Diff(second); len(d.WorkloadsChanged) != 20 {
		t.Errorf("after a namespace policy in ns-1, %d workloads changed; want the 20 in ns-1", len(d.WorkloadsChanged))
	}
}

func mustDecode(t *testing.T, doc string) k8sruntime.Object {
	t.Helper()
	var tm struct {
		APIVersion string `json:"apiVersion"`
		Kind       string `json:"kind"`
	}
	must(t, yaml.Unmarshal([]byte(doc), &tm))
	obj := newObject(tm.APIVersion, tm.Kind)
	must(t, yaml.Unmarshal([]byte(doc), obj))
	return obj
}

// BenchmarkBuildSnapshot builds the model of 10,000 pods and 1,000 services
// from scratch and reports the heap the resulting snapshot keeps alive.
func BenchmarkBuildSnapshot(b *testing.B) {
	in := scaleInputs(b, 10000, 1000)
	var retained uint64
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		var before, after runtime.MemStats
		if i == 0 {
			runtime.GC()
			runtime.ReadMemStats(&before)
		}
		snap, rej := NewBuilder(BuilderOptions{}).Build(in)
		if len(rej) != 0 {
			b.Fatalf("rejections: %v", rej[0])
		}
		if i == 0 {
			runtime.GC()
			runtime.ReadMemStats(&after)
			retained = after.HeapAlloc - before.HeapAlloc
			runtime.KeepAlive(snap)
		}
	}
	b.ReportMetric(float64(retained), "snapshot-heap-bytes")
}

// BenchmarkRebuildOnePodChanged measures the common case: one pod changed
// in a cluster of 10,000 pods and 1,000 services.
func BenchmarkRebuildOnePodChanged(b *testing.B) {
	in := scaleInputs(b, 10000, 1000)
	bld := NewBuilder(BuilderOptions{})
	bld.Build(in)
	p := in.pods["ns-0/pod-0"]
	b.ReportAllocs()
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		p = p.DeepCopy()
		p.ResourceVersion = strconv.Itoa(i + 2)
		must(b, in.Add(p))
		bld.Build(in)
	}
}

// BenchmarkMeshdMemory10kPods reports what meshd keeps in memory for a
// cluster of 10,000 pods and 1,000 services: the objects as its informers
// hold them, the model built from them, and the xDS server's translated
// resources — the live heap after GC, against the heap before any of it
// existed. Target (issue 3): under 300 MB.
func BenchmarkMeshdMemory10kPods(b *testing.B) {
	var heap uint64
	for b.Loop() {
		var before, after runtime.MemStats
		runtime.GC()
		runtime.ReadMemStats(&before)
		in := scaleInputs(b, 10000, 1000)
		snap, rej := NewBuilder(BuilderOptions{}).Build(in)
		if len(rej) != 0 {
			b.Fatalf("rejections: %v", rej[0])
		}
		srv, err := xds.New(xds.Options{Authenticate: func(context.Context, string) (xdsnode.Principal, error) {
			return xdsnode.Principal{}, errors.New("no clients in this benchmark")
		}, Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
		if err != nil {
			b.Fatal(err)
		}
		if err := srv.Apply(snap); err != nil {
			b.Fatal(err)
		}
		runtime.GC()
		runtime.ReadMemStats(&after)
		heap = after.HeapAlloc - before.HeapAlloc
		runtime.KeepAlive(in)
		srv.Close()
	}
	b.ReportMetric(float64(heap)/(1<<20), "heap-MB")
}

// listenerSetInputs is scaleInputs with an ingress Gateway that admits
// ListenerSets from every namespace and sets of its own, each with an HTTP
// listener for its own host on port 80 and an HTTPS one on 443, and a
// route attached to the set: the many-teams, many-certificates shape
// ListenerSets are for.
func listenerSetInputs(tb testing.TB, sets int) *Inputs {
	tb.Helper()
	in := scaleInputs(tb, 200, 100)
	all := gatewayv1.NamespacesFromAll
	must(tb, in.Add(&gatewayv1.Gateway{ObjectMeta: metav1.ObjectMeta{Name: "edge", Namespace: "ns-0", ResourceVersion: "1"},
		Spec: gatewayv1.GatewaySpec{GatewayClassName: "meshlet", AllowedListeners: &gatewayv1.AllowedListeners{Namespaces: &gatewayv1.ListenerNamespaces{From: &all}},
			Listeners: []gatewayv1.Listener{{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType}}}}))
	gwNS := gatewayv1.Namespace("ns-0")
	kind := gatewayv1.Kind(KindListenerSet)
	for i := range sets {
		ns := fmt.Sprintf("ns-%d", i%10)
		host := gatewayv1.Hostname(fmt.Sprintf("team-%d.example.com", i))
		name := fmt.Sprintf("team-%d", i)
		must(tb, in.Add(&gatewayv1.ListenerSet{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, ResourceVersion: "1"},
			Spec: gatewayv1.ListenerSetSpec{ParentRef: gatewayv1.ParentGatewayReference{Name: "edge", Namespace: &gwNS},
				Listeners: []gatewayv1.ListenerEntry{{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType, Hostname: &host}}}}))
		must(tb, in.Add(&gatewayv1.HTTPRoute{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, ResourceVersion: "1"},
			Spec: gatewayv1.HTTPRouteSpec{CommonRouteSpec: gatewayv1.CommonRouteSpec{ParentRefs: []gatewayv1.ParentReference{{Kind: &kind, Name: gatewayv1.ObjectName(name)}}},
				Rules: []gatewayv1.HTTPRouteRule{{BackendRefs: []gatewayv1.HTTPBackendRef{{BackendRef: gatewayv1.BackendRef{BackendObjectReference: gatewayv1.BackendObjectReference{
					Name: gatewayv1.ObjectName(fmt.Sprintf("svc-%d", (i%10)+10*(i%10))), Port: ptrTo(gatewayv1.PortNumber(80))}}}}}}}}))
	}
	return in
}

// BenchmarkBuildListenerSets is a full build of a gateway with 1000
// ListenerSets attached, each with a route: the listeners' validation and
// the routes' attachment must not grow with the square of their number.
func BenchmarkBuildListenerSets(b *testing.B) {
	in := listenerSetInputs(b, 1000)
	if _, rej := NewBuilder(BuilderOptions{}).Build(in); len(rej) > 0 {
		b.Fatalf("rejections: %v", rej[:min(3, len(rej))])
	}
	b.ReportAllocs()
	for b.Loop() {
		NewBuilder(BuilderOptions{}).Build(in)
	}
}
