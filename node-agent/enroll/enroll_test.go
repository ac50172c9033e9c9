package enroll

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"

	"github.com/meshlet/meshlet/node-agent/cni"
	"github.com/meshlet/meshlet/pkg/model"
)

func TestInMesh(t *testing.T) {
	amb := map[string]string{Label: ModeAmbient}
	tests := []struct {
		name      string
		nsLabels  map[string]string
		podLabels map[string]string
		hostNet   bool
		sidecar   string // "container" or "init": an istio-proxy of that kind
		annotated string // ambient.istio.io/redirection
		want      bool
	}{
		{name: "namespace ambient", nsLabels: amb, want: true},
		{name: "namespace unlabelled", want: false},
		{name: "pod opts in", podLabels: amb, want: true},
		{name: "pod opts out of ambient namespace", nsLabels: amb, podLabels: map[string]string{Label: ModeNone}, want: false},
		{name: "hostNetwork never", nsLabels: amb, podLabels: amb, hostNet: true, want: false},
		{name: "other value", nsLabels: map[string]string{Label: "sidecar"}, want: false},
		{name: "istio-proxy sidecar in ambient namespace", nsLabels: amb, sidecar: "container", want: false},
		{name: "native sidecar opting in", podLabels: amb, sidecar: "init", want: false},
		{name: "redirection disabled by annotation (Istio's opt-out)", nsLabels: amb, annotated: "disabled", want: false},
		{name: "redirection annotation enabled (Istio's status)", nsLabels: amb, annotated: "enabled", want: true},
	}
	for _, tt := range tests {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Labels: tt.podLabels}, Spec: corev1.PodSpec{HostNetwork: tt.hostNet,
			Containers: []corev1.Container{{Name: "app"}}}}
		if tt.annotated != "" {
			pod.Annotations = map[string]string{model.AnnotationRedirection: tt.annotated}
		}
		switch tt.sidecar {
		case "container":
			pod.Spec.Containers = append(pod.Spec.Containers, corev1.Container{Name: "istio-proxy"})
		case "init":
			pod.Spec.InitContainers = []corev1.Container{{Name: "istio-init"}, {Name: "istio-proxy"}}
		}
		if got := InMesh(tt.nsLabels, slim(t, pod)); got != tt.want {
			t.Errorf("%s: InMesh(%v, pod labels %v, hostNetwork %v) = %v; want %v", tt.name, tt.nsLabels, tt.podLabels, tt.hostNet, got, tt.want)
		}
	}
}

func TestWorkloadName(t *testing.T) {
	yes := true
	tests := []struct {
		name   string
		owners []metav1.OwnerReference
		labels map[string]string
		want   string
	}{
		{name: "deployment", owners: []metav1.OwnerReference{{Kind: "ReplicaSet", Name: "cart-7d4b9c", Controller: &yes}}, labels: map[string]string{"pod-template-hash": "7d4b9c"}, want: "cart"},
		{name: "statefulset", owners: []metav1.OwnerReference{{Kind: "StatefulSet", Name: "db", Controller: &yes}}, want: "db"},
		{name: "bare pod", want: "pod-x"},
	}
	for _, tt := range tests {
		pod := &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: "pod-x", OwnerReferences: tt.owners, Labels: tt.labels}}
		if got := WorkloadName(slim(t, pod)); got != tt.want {
			t.Errorf("%s: WorkloadName = %q; want %q", tt.name, got, tt.want)
		}
	}
}

const node = "node-1"

func ns(name string, l map[string]string) *corev1.Namespace {
	return &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: l}}
}

func pod(ns, name, nodeName, ip string, l map[string]string) *corev1.Pod {
	return &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, UID: types.UID("uid-" + name), Labels: l},
		Spec:       corev1.PodSpec{NodeName: nodeName, ServiceAccountName: "sa-" + name},
		Status:     corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip, PodIPs: []corev1.PodIP{{IP: ip}}},
	}
}

// recorder is the Enroll/Unenroll hooks, recording the set of enrolled pods.
type recorder struct {
	mu  sync.Mutex
	set map[string]Pod
}

// enroll and unenroll are the hooks recording the set.
func (r *recorder) enroll(_ context.Context, p Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.set[p.Namespace+"/"+p.Name] = p
	return nil
}

func (r *recorder) unenroll(_ context.Context, p Pod) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.set, p.Namespace+"/"+p.Name)
	return nil
}

func (r *recorder) names() []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for k := range r.set {
		out = append(out, k)
	}
	slices.Sort(out)
	return out
}

func eventually(t *testing.T, what string, f func() (bool, string)) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		ok, got := f()
		if ok {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: still %s", what, got)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestReconcilerLive(t *testing.T) {
	amb := map[string]string{Label: ModeAmbient}
	client := fake.NewClientset(
		ns("shop", amb), ns("plain", nil),
		pod("shop", "cart", node, "198.19.3.10", nil),
		pod("shop", "legacy", node, "198.19.3.11", map[string]string{Label: ModeNone}),
		pod("shop", "remote", "node-2", "198.19.3.12", nil),
		pod("plain", "web", node, "198.19.3.13", nil),
		pod("plain", "optin", node, "198.19.3.14", amb),
	)
	hostNet := pod("shop", "hostnet", node, "198.19.3.1", nil)
	hostNet.Spec.HostNetwork = true
	client.CoreV1().Pods("shop").Create(context.Background(), hostNet, metav1.CreateOptions{})

	rec := &recorder{set: map[string]Pod{}}
	afterSync := make(chan []string, 2)
	snap := filepath.Join(t.TempDir(), "enrollment.json")
	var self atomic.Pointer[Reconciler]
	var readyEarly atomic.Bool // Synced before a pod that ran at start was enrolled
	r, err := New(Options{
		Client: clientsetAPI{client}, NodeName: node, SnapshotPath: snap, Errorf: t.Logf,
		Enroll: func(_ context.Context, p Pod) error {
			rec.mu.Lock()
			defer rec.mu.Unlock()
			if r := self.Load(); r != nil && r.Synced() && (p.Name == "cart" || p.Name == "optin") && len(rec.set) < 2 {
				readyEarly.Store(true)
			}
			rec.set[p.Namespace+"/"+p.Name] = p
			return nil
		},
		Unenroll:  rec.unenroll,
		FindNetns: func(uid string, ips []netip.Addr) (string, error) { return "/proc/self/ns/net", nil },
		AfterSync: func() {
			afterSync <- rec.names()
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	self.Store(r)
	ctx := runReconciler(t, r)

	want := func(names ...string) func() (bool, string) {
		return func() (bool, string) {
			got := rec.names()
			return slices.Equal(got, names), cmp.Diff(names, got)
		}
	}
	eventually(t, "initial enrollment", want("plain/optin", "shop/cart"))
	eventually(t, "Synced", func() (bool, string) { return r.Synced(), "not synced" })
	if readyEarly.Load() {
		t.Error("Synced (the agent's readiness) before the pods running at start were enrolled: a rolling update would refuse their connections")
	}
	select {
	case got := <-afterSync:
		if d := cmp.Diff([]string{"plain/optin", "shop/cart"}, got); d != "" {
			t.Errorf("AfterSync ran before the initial enrollment was done (-want +got):\n%s", d)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("AfterSync not called")
	}
	rec.mu.Lock()
	cart := rec.set["shop/cart"]
	rec.mu.Unlock()
	if d := cmp.Diff(Pod{UID: "uid-cart", Namespace: "shop", Name: "cart", ServiceAccount: "sa-cart", Workload: "cart",
		IPs: []netip.Addr{netip.MustParseAddr("198.19.3.10")}, Netns: "/proc/self/ns/net"}, cart, cmp.Comparer(func(a, b netip.Addr) bool { return a == b })); d != "" {
		t.Errorf("enrolled cart (-want +got):\n%s", d)
	}
	eventually(t, "snapshot", func() (bool, string) {
		s, err := cni.ReadSnapshot(snap)
		return err == nil && slices.Equal(s.AmbientNamespaces, []string{"shop"}), ""
	})

	// Label the plain namespace: web joins, live.
	client.CoreV1().Namespaces().Update(ctx, ns("plain", amb), metav1.UpdateOptions{})
	eventually(t, "after labelling plain", want("plain/optin", "plain/web", "shop/cart"))
	eventually(t, "snapshot after labelling", func() (bool, string) {
		s, _ := cni.ReadSnapshot(snap)
		return slices.Equal(s.AmbientNamespaces, []string{"plain", "shop"}), ""
	})

	// Istio's bypass-inbound-capture on a running pod: re-enrolled with its
	// inbound left alone, live; other annotations are not kept.
	web := pod("plain", "web", node, "198.19.3.13", nil)
	web.Annotations = map[string]string{model.AnnotationBypassInbound: "true", "other": "x"}
	client.CoreV1().Pods("plain").Update(ctx, web, metav1.UpdateOptions{})
	eventually(t, "web re-enrolled bypassing inbound", func() (bool, string) {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		return rec.set["plain/web"].BypassInbound, "web enrolled without BypassInbound"
	})
	if p, err := r.getPod(ctx, "plain", "web"); err != nil || p.Annotations["other"] != "" || p.Annotations[model.AnnotationBypassInbound] != "true" {
		t.Errorf("cached web's annotations = %v (%v); want only those the agent reads", p.Annotations, err)
	}

	// Unlabel shop: cart leaves. Opt legacy back in by dropping its label: no
	// change, shop is no longer ambient.
	client.CoreV1().Namespaces().Update(ctx, ns("shop", nil), metav1.UpdateOptions{})
	eventually(t, "after unlabelling shop", want("plain/optin", "plain/web"))

	// A terminating pod stays in the mesh through its grace period, and
	// leaves once its sandbox is torn down (CNI DEL).
	term := pod("plain", "optin", node, "198.19.3.14", amb)
	term.DeletionTimestamp = &metav1.Time{Time: time.Now()}
	client.CoreV1().Pods("plain").Update(ctx, term, metav1.UpdateOptions{})
	eventually(t, "terminating pod seen", func() (bool, string) {
		p, err := r.getPod(ctx, "plain", "optin")
		return err == nil && p.DeletionTimestamp != nil, "no deletion timestamp yet"
	})
	time.Sleep(200 * time.Millisecond)
	if got := rec.names(); !slices.Contains(got, "plain/optin") {
		t.Fatalf("a terminating pod left the mesh before its sandbox was torn down: enrolled %v", got)
	}
	r.CNIDel(ctx, cni.PodEvent{Namespace: "plain", Name: "optin", UID: "uid-optin"})
	eventually(t, "after the terminating pod's CNI DEL", want("plain/web"))
	client.CoreV1().Pods("plain").Update(ctx, pod("plain", "optin", node, "198.19.3.14", amb), metav1.UpdateOptions{})

	// A pod opting out leaves; a deleted pod leaves.
	client.CoreV1().Pods("plain").Update(ctx, pod("plain", "web", node, "198.19.3.13", map[string]string{Label: ModeNone}), metav1.UpdateOptions{})
	client.CoreV1().Pods("plain").Delete(ctx, "optin", metav1.DeleteOptions{})
	eventually(t, "after opt-out and delete", want())
	if len(afterSync) != 0 {
		t.Error("AfterSync called more than once")
	}
}

func TestCNIAdd(t *testing.T) {
	amb := map[string]string{Label: ModeAmbient}
	starting := pod("shop", "new", node, "", nil)
	starting.Status = corev1.PodStatus{Phase: corev1.PodPending}
	client := fake.NewClientset(ns("shop", amb), ns("plain", nil), starting, pod("plain", "web", node, "", nil))
	var enrolled []Pod
	failing := false
	r, err := New(Options{
		Client: clientsetAPI{client}, NodeName: node, SnapshotPath: filepath.Join(t.TempDir(), "s.json"),
		Enroll: func(_ context.Context, p Pod) error {
			if failing {
				return context.DeadlineExceeded
			}
			enrolled = append(enrolled, p)
			return nil
		},
		Unenroll: func(context.Context, Pod) error { return nil },
		FindNetns: func(string, []netip.Addr) (string, error) {
			t.Error("FindNetns called for a CNI-reported pod")
			return "", nil
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	// Not running the informers: CNIAdd must work from the API alone, as it
	// does for a pod the watch has not delivered yet.
	ctx := context.Background()
	tests := []struct {
		name    string
		ev      cni.PodEvent
		failing bool
		want    cni.Verdict
	}{
		{name: "mesh pod", ev: cni.PodEvent{Namespace: "shop", Name: "new", UID: "uid-new", Netns: "/proc/self/ns/net", IPs: []string{"198.19.3.20"}},
			want: cni.Verdict{MustEnroll: true, Enrolled: true}},
		{name: "outside mesh", ev: cni.PodEvent{Namespace: "plain", Name: "web", UID: "uid-web", Netns: "/proc/self/ns/net", IPs: []string{"198.19.3.21"}},
			want: cni.Verdict{}},
		{name: "unknown pod in ambient namespace", ev: cni.PodEvent{Namespace: "shop", Name: "ghost", Netns: "/proc/self/ns/net"},
			want: cni.Verdict{MustEnroll: true, Error: `look up pod shop/ghost: pods "ghost" not found`}},
	}
	for _, tt := range tests {
		failing = tt.failing
		if got := r.CNIAdd(ctx, tt.ev); got != tt.want {
			t.Errorf("%s: CNIAdd = %+v; want %+v", tt.name, got, tt.want)
		}
	}
	if len(enrolled) != 1 || enrolled[0].Netns != "/proc/self/ns/net" || enrolled[0].IPs[0] != netip.MustParseAddr("198.19.3.20") {
		t.Errorf("enrolled = %+v; want shop/new with the CNI-reported netns and IP", enrolled)
	}
	// Enrollment failing makes the verdict say so (the plugin fails ADD).
	failing = true
	client.CoreV1().Pods("shop").Create(ctx, pod("shop", "second", node, "", nil), metav1.CreateOptions{})
	v := r.CNIAdd(ctx, cni.PodEvent{Namespace: "shop", Name: "second", UID: "uid-second", Netns: "/proc/self/ns/net", IPs: []string{"198.19.3.22"}})
	if !v.MustEnroll || v.Enrolled || v.Error == "" {
		t.Errorf("CNIAdd with a failing Enroll = %+v; want MustEnroll with an error", v)
	}
}

// TestCNIAddNodePath: the plugin reports the netns as the node sees it (in
// the lab, under the node's root); the agent finds it in its own netns dir.
func TestCNIAddNodePath(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cni-1234"), nil, 0o644); err != nil {
		t.Fatal(err)
	}
	client := fake.NewClientset(ns("shop", map[string]string{Label: ModeAmbient}), pod("shop", "new", node, "", nil))
	var got Pod
	r, err := New(Options{
		Client: clientsetAPI{client}, NodeName: node, SnapshotPath: filepath.Join(t.TempDir(), "s.json"), NetnsDir: dir,
		Enroll:   func(_ context.Context, p Pod) error { got = p; return nil },
		Unenroll: func(context.Context, Pod) error { return nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	v := r.CNIAdd(context.Background(), cni.PodEvent{Namespace: "shop", Name: "new", UID: "uid-new",
		Netns: "/work/.lab/nodes/n1/var/run/netns/cni-1234", IfName: "eth0", IPs: []string{"198.19.3.40"}})
	if !v.Enrolled {
		t.Fatalf("CNIAdd = %+v; want enrolled", v)
	}
	if want := filepath.Join(dir, "cni-1234"); got.Netns != want || got.IfName != "eth0" {
		t.Errorf("enrolled netns %q ifname %q; want %q, eth0", got.Netns, got.IfName, want)
	}
}

func TestProbePorts(t *testing.T) {
	pod := &corev1.Pod{Spec: corev1.PodSpec{Containers: []corev1.Container{
		{
			Ports:          []corev1.ContainerPort{{Name: "http", ContainerPort: 8080}},
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromString("http")}}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{HTTPGet: &corev1.HTTPGetAction{Port: intstr.FromInt32(8080)}}},
			StartupProbe:   &corev1.Probe{ProbeHandler: corev1.ProbeHandler{Exec: &corev1.ExecAction{Command: []string{"true"}}}},
		},
		{
			LivenessProbe:  &corev1.Probe{ProbeHandler: corev1.ProbeHandler{TCPSocket: &corev1.TCPSocketAction{Port: intstr.FromInt32(6379)}}},
			ReadinessProbe: &corev1.Probe{ProbeHandler: corev1.ProbeHandler{GRPC: &corev1.GRPCAction{Port: 9090}}},
		},
	}}}
	if d := cmp.Diff([]uint16{6379, 8080, 9090}, ProbePorts(slim(t, pod))); d != "" {
		t.Errorf("ProbePorts (-want +got):\n%s", d)
	}
}

// A pod whose enrollment fails at start (netns not found yet, a listener that
// cannot bind) keeps the agent unready until a retry enrolls it: readiness
// is what lets a rolling update stop the old agent, whose listeners are the
// pod's only ones until then. A pod that never enrolls holds it only for
// SyncGrace, and the log names it.
func TestReconcilerReadyWaitsForFailedEnrollment(t *testing.T) {
	amb := map[string]string{Label: ModeAmbient}
	for _, tt := range []struct {
		name     string
		recovers bool
	}{
		{name: "retry succeeds", recovers: true},
		{name: "never enrolls"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			client := fake.NewClientset(ns("shop", amb),
				pod("shop", "cart", node, "198.19.3.10", nil),
				pod("shop", "web", node, "198.19.3.11", nil))
			var attempts atomic.Int32
			allow := make(chan struct{})
			rec := &recorder{set: map[string]Pod{}}
			var logs struct {
				sync.Mutex
				lines []string
			}
			r, err := New(Options{
				Client: clientsetAPI{client}, NodeName: node, SnapshotPath: filepath.Join(t.TempDir(), "enrollment.json"),
				SyncGrace: 300 * time.Millisecond,
				Errorf: func(format string, args ...any) {
					logs.Lock()
					defer logs.Unlock()
					logs.lines = append(logs.lines, fmt.Sprintf(format, args...))
				},
				Enroll: func(_ context.Context, p Pod) error {
					if p.Name == "cart" {
						attempts.Add(1)
						select {
						case <-allow:
						default:
							return errors.New("bind 127.0.0.1:15001: address already in use")
						}
					}
					rec.mu.Lock()
					defer rec.mu.Unlock()
					rec.set[p.Namespace+"/"+p.Name] = p
					return nil
				},
				Unenroll:  func(context.Context, Pod) error { return nil },
				FindNetns: func(string, []netip.Addr) (string, error) { return "/proc/self/ns/net", nil },
			})
			if err != nil {
				t.Fatal(err)
			}
			runReconciler(t, r)

			eventually(t, "cart's enrollment retried", func() (bool, string) {
				return attempts.Load() >= 2, fmt.Sprintf("%d attempts", attempts.Load())
			})
			if r.Synced() {
				t.Fatalf("ready while cart, running at start, is not enrolled (enrolled: %v): a rolling update would stop the old agent and refuse cart's connections", rec.names())
			}
			if tt.recovers {
				close(allow)
				eventually(t, "ready after cart enrolled", func() (bool, string) {
					return r.Synced() && slices.Contains(rec.names(), "shop/cart"), fmt.Sprintf("synced %v, enrolled %v", r.Synced(), rec.names())
				})
				return
			}
			eventually(t, "ready after SyncGrace", func() (bool, string) { return r.Synced(), "not synced" })
			logs.Lock()
			defer logs.Unlock()
			if !slices.ContainsFunc(logs.lines, func(l string) bool {
				return strings.Contains(l, "not yet enrolled") && strings.Contains(l, "shop/cart")
			}) {
				t.Errorf("readiness after SyncGrace with cart not enrolled logged nothing naming it; log:\n%s", strings.Join(logs.lines, "\n"))
			}
		})
	}
}

// TestReconcilerAnnotatesPods: an enrolled pod carries Istio's status
// annotation ambient.istio.io/redirection: enabled, written through the
// pods/status subresource, and loses it when it leaves the mesh; a pod the
// user opted out ("disabled") or another node's is never written; a stale
// "enabled" on a pod out of the mesh is removed; once the API server
// refuses the write (no patch right on pods/status) the agent says so once
// and stops trying, enrollment unaffected.
func TestReconcilerAnnotatesPods(t *testing.T) {
	amb := map[string]string{Label: ModeAmbient}
	optout := pod("shop", "optout", node, "198.19.3.21", nil)
	optout.Annotations = map[string]string{model.AnnotationRedirection: model.AnnotationRedirectionDisabled}
	stale := pod("plain", "stale", node, "198.19.3.22", nil)
	stale.Annotations = map[string]string{model.AnnotationRedirection: model.AnnotationRedirectionEnabled}
	client := fake.NewClientset(ns("shop", amb), ns("plain", nil),
		pod("shop", "cart", node, "198.19.3.20", nil), optout, stale,
		pod("shop", "remote", "node-2", "198.19.3.23", nil))
	var patches atomic.Int32
	var forbid atomic.Bool
	client.PrependReactor("patch", "pods", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "status" {
			t.Errorf("pod patched through %q; want the status subresource only", a.GetSubresource())
		}
		patches.Add(1)
		if forbid.Load() {
			return true, nil, apierrors.NewForbidden(schema.GroupResource{Resource: "pods/status"}, a.(k8stesting.PatchAction).GetName(), errors.New("no patch right"))
		}
		return false, nil, nil
	})
	var logged atomic.Int32
	rec := &recorder{set: map[string]Pod{}}
	r, err := New(Options{
		Client: clientsetAPI{client}, NodeName: node, SnapshotPath: filepath.Join(t.TempDir(), "s.json"),
		Errorf: func(format string, args ...any) {
			if strings.Contains(format, "annotate") {
				logged.Add(1)
			}
			t.Logf(format, args...)
		},
		Enroll:    rec.enroll,
		Unenroll:  rec.unenroll,
		FindNetns: func(uid string, ips []netip.Addr) (string, error) { return "/proc/self/ns/net", nil },
	})
	if err != nil {
		t.Fatal(err)
	}
	ctx := runReconciler(t, r)

	annotation := func(ns, name string) string {
		p, err := client.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		v, ok := p.Annotations[model.AnnotationRedirection]
		if !ok {
			return "(none)"
		}
		return v
	}
	wantAnnotations := func(what string, want map[string]string) {
		t.Helper()
		eventually(t, what, func() (bool, string) {
			got := map[string]string{}
			for k := range want {
				ns, name, _ := strings.Cut(k, "/")
				got[k] = annotation(ns, name)
			}
			return cmp.Equal(got, want), cmp.Diff(want, got)
		})
	}
	wantAnnotations("enrolled pods annotated", map[string]string{
		"shop/cart": "enabled", "shop/optout": "disabled", "plain/stale": "(none)", "shop/remote": "(none)"})
	if got := rec.names(); !slices.Equal(got, []string{"shop/cart"}) {
		t.Errorf("enrolled %v; want shop/cart", got)
	}

	// The namespace leaves the mesh: so does cart, and its annotation.
	client.CoreV1().Namespaces().Update(ctx, ns("shop", nil), metav1.UpdateOptions{})
	wantAnnotations("annotation removed with the pod out of the mesh", map[string]string{
		"shop/cart": "(none)", "shop/optout": "disabled"})

	// No right to patch pods/status: said once, not tried again; the pod
	// still joins the mesh.
	forbid.Store(true)
	client.CoreV1().Namespaces().Update(ctx, ns("plain", amb), metav1.UpdateOptions{})
	client.CoreV1().Namespaces().Update(ctx, ns("shop", amb), metav1.UpdateOptions{})
	eventually(t, "pods enrolled without the annotation", func() (bool, string) {
		got := rec.names()
		return slices.Equal(got, []string{"plain/stale", "shop/cart"}), fmt.Sprint(got)
	})
	eventually(t, "refusal logged", func() (bool, string) { return logged.Load() == 1, fmt.Sprint(logged.Load(), " logged") })
	n := patches.Load()
	client.CoreV1().Pods("shop").Update(ctx, pod("shop", "cart", node, "198.19.3.20", map[string]string{"v": "2"}), metav1.UpdateOptions{})
	time.Sleep(200 * time.Millisecond)
	if patches.Load() != n || logged.Load() != 1 {
		t.Errorf("after a refusal: %d more patches, %d refusals logged; want none more and one", patches.Load()-n, logged.Load())
	}
}

// runReconciler runs r until the test ends and returns its context.
func runReconciler(t *testing.T, r *Reconciler) context.Context {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return ctx
}
