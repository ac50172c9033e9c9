package controlplane

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	securityv1 "istio.io/client-go/pkg/apis/security/v1"
	istiofake "istio.io/client-go/pkg/clientset/versioned/fake"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fakediscovery "k8s.io/client-go/discovery/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayxv1alpha1 "sigs.k8s.io/gateway-api/apisx/v1alpha1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/crdwatch"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// servedResources returns discovery lists serving every required and
// optional CRD except skip.
func servedResources(skip ...string) []*metav1.APIResourceList {
	byGV := map[string]*metav1.APIResourceList{}
	var out []*metav1.APIResourceList
	for _, c := range append(slices.Clone(requiredCRDs), backendTLSPolicyCRD, tlsRouteCRD, tcpRouteCRD, listenerSetCRD, backendTrafficCRD) {
		if strings.Contains(strings.Join(skip, ","), c.resource+"."+c.groupVersion) {
			continue
		}
		l, ok := byGV[c.groupVersion]
		if !ok {
			l = &metav1.APIResourceList{GroupVersion: c.groupVersion}
			byGV[c.groupVersion] = l
			out = append(out, l)
		}
		l.APIResources = append(l.APIResources, metav1.APIResource{Name: c.resource, Kind: c.kind, Namespaced: true})
	}
	return out
}

func TestCheckCRDs(t *testing.T) {
	tests := []struct {
		name    string
		skip    []string
		wantErr []string
	}{
		{name: "all installed"},
		{name: "one missing", skip: []string{"peerauthentications.security.istio.io/v1"},
			wantErr: []string{"peerauthentications.security.istio.io (security.istio.io/v1 PeerAuthentication)", InstallCRDsCommand}},
		{name: "whole group missing", skip: []string{"httproutes.gateway.networking.k8s.io/v1", "gateways.gateway.networking.k8s.io/v1",
			"gatewayclasses.gateway.networking.k8s.io/v1", "grpcroutes.gateway.networking.k8s.io/v1", "referencegrants.gateway.networking.k8s.io/v1"},
			wantErr: []string{"httproutes.gateway.networking.k8s.io", "referencegrants.gateway.networking.k8s.io", InstallCRDsCommand}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			kube := kubefake.NewClientset()
			kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = servedResources(tt.skip...)
			err := CheckCRDs(kube)
			if len(tt.wantErr) == 0 {
				if err != nil {
					t.Fatalf("CheckCRDs() = %v; want nil", err)
				}
				return
			}
			if !errors.Is(err, ErrCRDMissing) {
				t.Fatalf("CheckCRDs() = %v; want ErrCRDMissing", err)
			}
			for _, s := range tt.wantErr {
				if !strings.Contains(err.Error(), s) {
					t.Errorf("CheckCRDs() = %q; want it to name %q", err, s)
				}
			}
		})
	}
}

type changeRecorder struct {
	mu      sync.Mutex
	changes []Change
	notify  chan struct{}
}

func (r *changeRecorder) OnChange(c Change) {
	r.mu.Lock()
	r.changes = append(r.changes, c)
	r.mu.Unlock()
	select {
	case r.notify <- struct{}{}:
	default:
	}
}

// waitFor waits until a change matching want has been recorded.
func (r *changeRecorder) waitFor(t *testing.T, want Change) {
	t.Helper()
	deadline := time.After(10 * time.Second)
	for {
		r.mu.Lock()
		for _, c := range r.changes {
			if c == want {
				r.mu.Unlock()
				return
			}
		}
		r.mu.Unlock()
		select {
		case <-r.notify:
		case <-deadline:
			t.Fatalf("no change %+v within 10s; got %+v", want, r.changes)
		}
	}
}

func TestSources(t *testing.T) {
	// istio.io/client-go's fake clientset predates streaming lists (the
	// WatchListClient feature client-go turns on by default): list and watch
	// the classic way against the fakes. A real API server serves both.
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	kube := kubefake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "app", Labels: map[string]string{"istio.io/dataplane-mode": "ambient"}}})
	kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = servedResources()
	istio := istiofake.NewSimpleClientset(&securityv1.PeerAuthentication{ObjectMeta: metav1.ObjectMeta{Name: "default", Namespace: "istio-system"}})
	rec := &changeRecorder{notify: make(chan struct{}, 1)}
	src, err := NewSources(SourcesOptions{Kube: kube, Istio: istio, Gateway: gatewayfake.NewClientset(), Listener: rec})
	if err != nil {
		t.Fatalf("NewSources: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	if err := src.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}

	p := &corev1.Pod{
		ObjectMeta: metav1.ObjectMeta{Name: "web", Namespace: "app", UID: "uid-web"},
		Spec:       corev1.PodSpec{NodeName: "n1"},
		Status:     corev1.PodStatus{PodIP: "10.0.0.5", Phase: corev1.PodRunning},
	}
	if _, err := kube.CoreV1().Pods("app").Create(ctx, p, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create pod: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindPod, Namespace: "app", Name: "web", Op: OpAdd})

	in, err := src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	snap, _ := NewBuilder(BuilderOptions{}).Build(in)
	w, ok := snap.Workload("uid-web")
	if !ok || !w.Enrolled || w.Node != "n1" {
		t.Errorf("workload uid-web = %+v, %v; want enrolled on n1", w, ok)
	}
	if got := len(snap.PeerAuthentications()); got != 1 {
		t.Errorf("PeerAuthentications() = %d; want 1 from the Istio informer", got)
	}

	p.Labels = map[string]string{"istio.io/dataplane-mode": "none"}
	p.ResourceVersion = "2"
	if _, err := kube.CoreV1().Pods("app").Update(ctx, p, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update pod: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindPod, Namespace: "app", Name: "web", Op: OpUpdate})
	if err := istio.SecurityV1().PeerAuthentications("istio-system").Delete(ctx, "default", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete PeerAuthentication: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindPeerAuthentication, Namespace: "istio-system", Name: "default", Op: OpDelete})
}

func TestSourcesRefusesToStartWithoutCRDs(t *testing.T) {
	kube := kubefake.NewClientset()
	kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = servedResources("authorizationpolicies.security.istio.io/v1")
	src, err := NewSources(SourcesOptions{Kube: kube, Istio: istiofake.NewSimpleClientset(), Gateway: gatewayfake.NewClientset()})
	if err != nil {
		t.Fatalf("NewSources: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	err = src.Start(context.Background())
	if !errors.Is(err, ErrCRDMissing) || !strings.Contains(err.Error(), "authorizationpolicies.security.istio.io") {
		t.Errorf("Start() = %v; want ErrCRDMissing naming authorizationpolicies.security.istio.io", err)
	}
}

// startSources starts Sources over fakes whose discovery serves the CRDs
// but skip, with rec hearing changes and logs written to log.
func startSources(t *testing.T, kube *kubefake.Clientset, gw *gatewayfake.Clientset, rec Listener, log *bytes.Buffer, skip ...string) *Sources {
	t.Helper()
	// See TestSources: the fakes predate streaming lists.
	t.Setenv("KUBE_FEATURE_WatchListClient", "false")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	kube.Discovery().(*fakediscovery.FakeDiscovery).Resources = servedResources(skip...)
	src, err := NewSources(SourcesOptions{Kube: kube, Istio: istiofake.NewSimpleClientset(), Gateway: gw, Listener: rec,
		Logger: slog.New(slog.NewTextHandler(log, nil))})
	if err != nil {
		t.Fatalf("NewSources: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	if err := src.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	return src
}

// TestSourcesBackendTLSPolicy: BackendTLSPolicies and the CA bundles of
// ConfigMaps reach Inputs, trimmed to what the builder reads; ConfigMaps
// without a CA bundle cause no rebuild.
func TestSourcesBackendTLSPolicy(t *testing.T) {
	meta := func(name string) metav1.ObjectMeta {
		return metav1.ObjectMeta{Name: name, Namespace: "app", Annotations: map[string]string{"kubectl.kubernetes.io/last-applied-configuration": "{...}"},
			ManagedFields: []metav1.ManagedFieldsEntry{{Manager: "kubectl"}}}
	}
	mesh := meta("istio")
	mesh.Namespace = "istio-system"
	kube := kubefake.NewClientset(&corev1.ConfigMap{ObjectMeta: meta("api-ca"), Data: map[string]string{caCertKey: "PEM", "notes.txt": "other data"}},
		&corev1.ConfigMap{ObjectMeta: mesh, Data: map[string]string{meshConfigKey: "extensionProviders: []", "meshNetworks": "networks: {}"}})
	gw := gatewayfake.NewClientset(&gatewayv1.BackendTLSPolicy{ObjectMeta: meta("api-tls"), Spec: gatewayv1.BackendTLSPolicySpec{
		Validation: gatewayv1.BackendTLSPolicyValidation{Hostname: "api.example.com"}}})
	rec := &changeRecorder{notify: make(chan struct{}, 1)}
	src := startSources(t, kube, gw, rec, &bytes.Buffer{})

	in, err := src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	if got := in.configMaps["app/api-ca"]; got == nil || got.Annotations != nil || got.ManagedFields != nil {
		t.Errorf("ConfigMap app/api-ca in Inputs = %+v; want it without annotations or managed fields", got)
	} else if diff := cmp.Diff(map[string]string{caCertKey: "PEM"}, got.Data); diff != "" {
		t.Errorf("ConfigMap app/api-ca data in Inputs (-want +got):\n%s", diff)
	}
	if got := in.configMaps["istio-system/istio"]; got == nil || !cmp.Equal(got.Data, map[string]string{meshConfigKey: "extensionProviders: []"}) {
		t.Errorf("the mesh config's ConfigMap in Inputs = %+v; want its mesh key only", got)
	}
	if got := in.backendTLS["app/api-tls"]; got == nil || got.Annotations != nil || got.ManagedFields != nil || got.Spec.Validation.Hostname != "api.example.com" {
		t.Errorf("BackendTLSPolicy app/api-tls in Inputs = %+v; want its spec without annotations or managed fields", got)
	}

	ctx := context.Background()
	if _, err := kube.CoreV1().ConfigMaps("app").Create(ctx, &corev1.ConfigMap{ObjectMeta: meta("settings"), Data: map[string]string{"a": "b"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ConfigMap: %v", err)
	}
	if _, err := kube.CoreV1().ConfigMaps("app").Create(ctx, &corev1.ConfigMap{ObjectMeta: meta("db-ca"), Data: map[string]string{caCertKey: "PEM"}}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create ConfigMap: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindConfigMap, Namespace: "app", Name: "db-ca", Op: OpAdd})
	mc, err := kube.CoreV1().ConfigMaps("istio-system").Get(ctx, "istio", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	mc.Data[meshConfigKey] = "extensionProviders: [{name: authz}]"
	mc.ResourceVersion = "2"
	if _, err := kube.CoreV1().ConfigMaps("istio-system").Update(ctx, mc, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update the mesh config: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindConfigMap, Namespace: "istio-system", Name: "istio", Op: OpUpdate})
	rec.mu.Lock()
	for _, c := range rec.changes {
		if c.Name == "settings" {
			t.Errorf("change %+v; want none for a ConfigMap without ca.crt", c)
		}
	}
	rec.mu.Unlock()
	if err := gw.GatewayV1().BackendTLSPolicies("app").Delete(ctx, "api-tls", metav1.DeleteOptions{}); err != nil {
		t.Fatalf("delete BackendTLSPolicy: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindBackendTLSPolicy, Namespace: "app", Name: "api-tls", Op: OpDelete})
}

// TestSourcesWithoutBackendTLSPolicyCRD: a cluster whose Gateway API
// predates BackendTLSPolicy still runs meshd, which says what it does
// without; ConfigMaps are still read (the mesh config).
func TestSourcesWithoutBackendTLSPolicyCRD(t *testing.T) {
	kube := kubefake.NewClientset(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "api-ca", Namespace: "app"}, Data: map[string]string{caCertKey: "PEM"}})
	var log bytes.Buffer
	src := startSources(t, kube, gatewayfake.NewClientset(), nil, &log, "backendtlspolicies.gateway.networking.k8s.io/v1")
	if !strings.Contains(log.String(), "BackendTLSPolicy is not read") || !strings.Contains(log.String(), "backendtlspolicies.gateway.networking.k8s.io") {
		t.Errorf("log = %q; want a line saying BackendTLSPolicy is not read, naming the missing CRD", log.String())
	}
	in, err := src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	if len(in.configMaps) != 1 || len(in.backendTLS) != 0 {
		t.Errorf("Inputs holds ConfigMaps %v, BackendTLSPolicies %v; want the ConfigMap, no policy", sortedKeys(in.configMaps), sortedKeys(in.backendTLS))
	}
}

// TestSourcesListenerSet: ListenerSets reach Inputs when their CRD is
// served; meshd's own status write on one rebuilds nothing, a change of
// its spec does.
func TestSourcesListenerSet(t *testing.T) {
	ls := &gatewayv1.ListenerSet{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Namespace: "app", Generation: 1},
		Spec: gatewayv1.ListenerSetSpec{ParentRef: gatewayv1.ParentGatewayReference{Name: "ingress"},
			Listeners: []gatewayv1.ListenerEntry{{Name: "http", Port: 8080, Protocol: gatewayv1.HTTPProtocolType}}}}
	gw := gatewayfake.NewClientset(ls)
	rec := &changeRecorder{notify: make(chan struct{}, 1)}
	src := startSources(t, kubefake.NewClientset(), gw, rec, &bytes.Buffer{})
	in, err := src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	if got, ok := in.GatewayAPIObject(KindListenerSet, "app", "team-a").(*gatewayv1.ListenerSet); !ok || got.Spec.ParentRef.Name != "ingress" {
		t.Fatalf("ListenerSet app/team-a in Inputs = %+v; want the one created", got)
	}

	ctx := context.Background()
	written := ls.DeepCopy()
	written.ResourceVersion = "2"
	written.Status.Conditions = []metav1.Condition{{Type: "Accepted", Status: "True", Reason: "Accepted", ObservedGeneration: 1, LastTransitionTime: metav1.Now()}}
	if _, err := gw.GatewayV1().ListenerSets("app").UpdateStatus(ctx, written, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ListenerSet status: %v", err)
	}
	respec := written.DeepCopy()
	respec.ResourceVersion, respec.Generation = "3", 2
	respec.Spec.Listeners[0].Port = 8081
	if _, err := gw.GatewayV1().ListenerSets("app").Update(ctx, respec, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("update ListenerSet spec: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindListenerSet, Namespace: "app", Name: "team-a", Op: OpUpdate})
	rec.mu.Lock()
	defer rec.mu.Unlock()
	var updates int
	for _, c := range rec.changes {
		if c.Kind == KindListenerSet && c.Op == OpUpdate {
			updates++
		}
	}
	if updates != 1 {
		t.Errorf("ListenerSet updates heard = %d (%+v); want 1: the spec change, not the status write", updates, rec.changes)
	}
}

// TestSourcesXBackendTrafficPolicy: with the experimental channel's CRD
// served, XBackendTrafficPolicies reach the build.
func TestSourcesXBackendTrafficPolicy(t *testing.T) {
	p := &gatewayxv1alpha1.XBackendTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Name: "budget", Namespace: "app"},
		Spec: gatewayxv1alpha1.BackendTrafficPolicySpec{TargetRefs: []gatewayxv1alpha1.LocalPolicyTargetReference{{Kind: "Service", Name: "reviews"}}}}
	src := startSources(t, kubefake.NewClientset(), gatewayfake.NewClientset(p), &changeRecorder{notify: make(chan struct{}, 1)}, &bytes.Buffer{})
	in, err := src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	if got, ok := in.GatewayAPIObject(KindXBackendTrafficPolicy, "app", "budget").(*gatewayxv1alpha1.XBackendTrafficPolicy); !ok || got.Spec.TargetRefs[0].Name != "reviews" {
		t.Fatalf("XBackendTrafficPolicy app/budget in Inputs = %+v; want the one created", got)
	}
}

// TestSourcesWithoutOptionalGatewayCRDs: a cluster whose Gateway API
// predates v1.5 still runs meshd, which says, for each kind it cannot
// read, what goes unserved.
func TestSourcesWithoutOptionalGatewayCRDs(t *testing.T) {
	var log bytes.Buffer
	src := startSources(t, kubefake.NewClientset(), gatewayfake.NewClientset(), nil, &log,
		"tlsroutes.gateway.networking.k8s.io/v1", "tcproutes.gateway.networking.k8s.io/v1", "listenersets.gateway.networking.k8s.io/v1")
	for _, want := range []string{
		"TLSRoute is not read: its CRD is not installed (Gateway API before v1.5); Gateways' TLS passthrough listeners and waypoints get no TLSRoutes until it is installed (meshd reads it then, no restart needed)",
		"TCPRoute is not read: its CRD is not installed (Gateway API before v1.5); Gateways' TCP listeners and waypoints get no TCPRoutes until it is installed (meshd reads it then, no restart needed)",
		"ListenerSet is not read: its CRD is not installed (Gateway API before v1.5); listeners of ListenerSets are not served nor their status written until it is installed (meshd reads it then, no restart needed)",
		"listenersets.gateway.networking.k8s.io (gateway.networking.k8s.io/v1 ListenerSet)",
	} {
		if !strings.Contains(log.String(), want) {
			t.Errorf("log = %q; want it to say %q", log.String(), want)
		}
	}
	for _, ki := range src.snapshot() {
		if ki.kind == KindTLSRoute || ki.kind == KindTCPRoute || ki.kind == KindListenerSet {
			t.Errorf("informer of %s started; want none without its CRD", ki.kind)
		}
	}
}

// TestSourcesCRDInstalledLater: an optional CRD installed after Start
// (XBackendTrafficPolicy with the experimental channel, ListenerSet with
// a newer Gateway API) is found by the CRD poller: its objects reach
// Inputs, the Listener hears them (by then Inputs holds them), later
// changes too, the pickup is logged once, and the poller stops once every
// optional CRD is served. With the CRD watch (SourcesOptions.CRDs) and the
// poll an hour away, the CRDs are found when they are heard installed.
func TestSourcesCRDInstalledLater(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false") // see TestSources
	t.Run("poll", func(t *testing.T) { sourcesCRDInstalledLater(t, false) })
	t.Run("watch", func(t *testing.T) { sourcesCRDInstalledLater(t, true) })
}

func sourcesCRDInstalledLater(t *testing.T, watch bool) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	const step = 20 * time.Millisecond
	poll := step
	md := testutil.FakeMetadata()
	var crds *crdwatch.Watcher
	if watch {
		poll = time.Hour
		crds = crdwatch.New(md, nil)
		if err := crds.Start(ctx); err != nil {
			t.Fatal(err)
		}
	}
	kube := kubefake.NewClientset()
	disc := kube.Discovery().(*fakediscovery.FakeDiscovery)
	disc.Resources = servedResources("xbackendtrafficpolicies.gateway.networking.x-k8s.io/v1alpha1", "listenersets.gateway.networking.k8s.io/v1")
	// Installing the CRDs: the next discovery call serves them. The
	// reactor runs under the fake's lock in the goroutine that then reads
	// Resources, so the switch races with no read.
	var installed atomic.Bool
	var switched bool
	discoveries := func() int {
		n := 0
		for _, a := range kube.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "resource" {
				n++
			}
		}
		return n
	}
	kube.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		if installed.Load() && !switched {
			disc.Resources, switched = servedResources(), true
		}
		return false, nil, nil
	})
	policy := &gatewayxv1alpha1.XBackendTrafficPolicy{ObjectMeta: metav1.ObjectMeta{Name: "budget", Namespace: "app"},
		Spec: gatewayxv1alpha1.BackendTrafficPolicySpec{TargetRefs: []gatewayxv1alpha1.LocalPolicyTargetReference{{Kind: "Service", Name: "reviews"}}}}
	set := &gatewayv1.ListenerSet{ObjectMeta: metav1.ObjectMeta{Name: "team-a", Namespace: "app", Generation: 1},
		Spec: gatewayv1.ListenerSetSpec{ParentRef: gatewayv1.ParentGatewayReference{Name: "ingress"},
			Listeners: []gatewayv1.ListenerEntry{{Name: "http", Port: 8080, Protocol: gatewayv1.HTTPProtocolType}}}}
	gw := gatewayfake.NewClientset(policy, set)
	var log testutil.Buffer
	rec := &changeRecorder{notify: make(chan struct{}, 1)}
	src, err := NewSources(SourcesOptions{Kube: kube, Istio: istiofake.NewSimpleClientset(), Gateway: gw, Listener: rec,
		Logger: slog.New(slog.NewTextHandler(&log, nil)), CRDPoll: poll, CRDs: crds})
	if err != nil {
		t.Fatalf("NewSources: %v", err)
	}
	t.Cleanup(func() { _ = src.Close() })
	if err := src.Start(ctx); err != nil {
		t.Fatalf("Start: %v", err)
	}
	want := "XBackendTrafficPolicy is not read: its CRD is not installed (it is in Gateway API's experimental channel only: meshctl install (or upgrade) --gateway-api-channel experimental); " +
		"Services get no retry budget or session persistence from XBackendTrafficPolicies until it is installed (meshd reads it then, no restart needed)"
	if !strings.Contains(log.String(), want) {
		t.Errorf("log = %q; want it to say %q", log.String(), want)
	}
	// A few polls find nothing: nothing is read.
	if watch {
		time.Sleep(10 * step)
	} else {
		for start := discoveries(); discoveries() < start+3; {
			time.Sleep(step)
		}
	}
	in, err := src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	if got := in.GatewayAPIObject(KindXBackendTrafficPolicy, "app", "budget"); got != nil {
		t.Fatalf("XBackendTrafficPolicy in Inputs before its CRD is served: %+v", got)
	}

	installed.Store(true)
	if watch {
		for _, name := range []string{"xbackendtrafficpolicies.gateway.networking.x-k8s.io", "listenersets.gateway.networking.k8s.io"} {
			testutil.InstallCRD(t, md, name)
		}
	}
	for _, c := range []Change{
		{Kind: KindXBackendTrafficPolicy, Namespace: "app", Name: "budget", Op: OpAdd},
		{Kind: KindListenerSet, Namespace: "app", Name: "team-a", Op: OpAdd},
	} {
		rec.waitFor(t, c)
		in, err := src.Inputs()
		if err != nil {
			t.Fatalf("Inputs: %v", err)
		}
		if in.GatewayAPIObject(c.Kind, c.Namespace, c.Name) == nil {
			t.Errorf("%s %s/%s heard but not in Inputs", c.Kind, c.Namespace, c.Name)
		}
	}
	in, err = src.Inputs()
	if err != nil {
		t.Fatalf("Inputs: %v", err)
	}
	if got, ok := in.GatewayAPIObject(KindXBackendTrafficPolicy, "app", "budget").(*gatewayxv1alpha1.XBackendTrafficPolicy); !ok || got.Spec.TargetRefs[0].Name != "reviews" {
		t.Errorf("XBackendTrafficPolicy app/budget in Inputs = %+v; want the one created", got)
	}
	if got, ok := in.GatewayAPIObject(KindListenerSet, "app", "team-a").(*gatewayv1.ListenerSet); !ok || got.Spec.ParentRef.Name != "ingress" {
		t.Errorf("ListenerSet app/team-a in Inputs = %+v; want the one created", got)
	}
	for _, kind := range []string{KindXBackendTrafficPolicy, KindListenerSet} {
		if n := strings.Count(log.String(), kind+" CRD installed: now read"); n != 1 {
			t.Errorf("log says %q %d times; want once:\n%s", kind+" CRD installed: now read", n, log.String())
		}
	}

	// From now on changes are heard as any other kind's.
	retry := policy.DeepCopy()
	retry.Name = "retry"
	if _, err := gw.ExperimentalV1alpha1().XBackendTrafficPolicies("app").Create(ctx, retry, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create XBackendTrafficPolicy: %v", err)
	}
	rec.waitFor(t, Change{Kind: KindXBackendTrafficPolicy, Namespace: "app", Name: "retry", Op: OpAdd})

	// Every optional CRD is served: the poller has stopped.
	n := discoveries()
	time.Sleep(5 * step)
	if got := discoveries(); got != n {
		t.Errorf("discovery asked %d more times after every CRD was found; want the poller stopped", got-n)
	}
}

// A status write (meshd's own, or another controller's) to a kind whose
// status the build does not read rebuilds nothing; a change of spec,
// labels, annotations or deletion does, and so does any update of a kind
// whose status the build reads (Gateway: its addresses).
func TestStatusOnlyUpdate(t *testing.T) {
	base := metav1.ObjectMeta{Name: "r", Namespace: "app", Generation: 3, Labels: map[string]string{"a": "1"}, Annotations: map[string]string{"n": "x"}}
	now := metav1.Now()
	for _, tt := range []struct {
		name string
		kind string
		edit func(m *metav1.ObjectMeta)
		want bool
	}{
		{"status only", KindHTTPRoute, func(*metav1.ObjectMeta) {}, true},
		{"ServiceEntry status only", KindServiceEntry, func(*metav1.ObjectMeta) {}, true},
		{"spec changed", KindHTTPRoute, func(m *metav1.ObjectMeta) { m.Generation++ }, false},
		{"label changed", KindServiceEntry, func(m *metav1.ObjectMeta) { m.Labels = map[string]string{"istio.io/use-waypoint": "w"} }, false},
		{"annotation changed", KindGRPCRoute, func(m *metav1.ObjectMeta) { m.Annotations = nil }, false},
		{"deletion started", KindBackendTLSPolicy, func(m *metav1.ObjectMeta) { m.DeletionTimestamp = &now }, false},
		{"ListenerSet status only", KindListenerSet, func(*metav1.ObjectMeta) {}, true},
		{"ListenerSet spec changed", KindListenerSet, func(m *metav1.ObjectMeta) { m.Generation++ }, false},
		{"Gateway status is read", KindGateway, func(*metav1.ObjectMeta) {}, false},
		{"no generation kept", KindHTTPRoute, func(m *metav1.ObjectMeta) {}, false},
	} {
		o, n := base.DeepCopy(), base.DeepCopy()
		if tt.name == "no generation kept" {
			o.Generation, n.Generation = 0, 0
		}
		tt.edit(n)
		if got := statusOnlyUpdate(tt.kind, o, n); got != tt.want {
			t.Errorf("%s: statusOnlyUpdate(%s) = %t; want %t", tt.name, tt.kind, got, tt.want)
		}
	}
}

// TestUnchangedWhenTrimmed: of a kind meshd keeps trimmed, an update that
// changes nothing the build reads rebuilds nothing: a Node is read for its
// topology labels only (a kubelet's status update changes nothing), a
// ConfigMap for its CA bundle and mesh config only; a change to those does.
func TestUnchangedWhenTrimmed(t *testing.T) {
	node := func(rv, zone, ready string) any {
		n, _ := trimNode(&corev1.Node{ObjectMeta: metav1.ObjectMeta{Name: "n1", ResourceVersion: rv, Labels: map[string]string{"topology.kubernetes.io/zone": zone}},
			Status: corev1.NodeStatus{Conditions: []corev1.NodeCondition{{Type: corev1.NodeReady, Status: corev1.ConditionStatus(ready)}}}})
		return n
	}
	cm := func(rv, ca, other string) any {
		c, _ := trimCAConfigMap(&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "api-ca", Namespace: "app", ResourceVersion: rv},
			Data: map[string]string{caCertKey: ca, "notes": other}})
		return c
	}
	for _, tt := range []struct {
		name     string
		kind     string
		old, new any
		want     bool
	}{
		{"Node status update", KindNode, node("1", "a", "True"), node("2", "a", "False"), true},
		{"Node zone label changed", KindNode, node("1", "a", "True"), node("2", "b", "True"), false},
		{"ConfigMap other data", KindConfigMap, cm("1", "PEM", "x"), cm("2", "PEM", "y"), true},
		{"ConfigMap CA bundle", KindConfigMap, cm("1", "PEM", "x"), cm("2", "PEM2", "x"), false},
		{"untrimmed kind", KindHTTPRoute, node("1", "a", "True"), node("2", "a", "True"), false},
	} {
		if got := unchangedWhenTrimmed(tt.kind, tt.old, tt.new); got != tt.want {
			t.Errorf("%s: unchangedWhenTrimmed = %t; want %t", tt.name, got, tt.want)
		}
	}
}
