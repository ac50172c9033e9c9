package deployer

import (
	"context"
	"log/slog"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	fakediscovery "k8s.io/client-go/discovery/fake"
	kubefake "k8s.io/client-go/kubernetes/fake"
	corev1listers "k8s.io/client-go/listers/core/v1"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"

	"github.com/meshlet/meshlet/pkg/crdwatch"
	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestAttachedListenerSets: reconcile renders with the sets whose
// parentRef names the Gateway and which its allowedListeners admits, in
// merge order; a set of a namespace the cache does not have is not
// admitted by a selector, even one that matches no labels.
func TestAttachedListenerSets(t *testing.T) {
	at := func(min int) metav1.Time { return metav1.NewTime(time.Date(2026, 1, 1, 0, min, 0, 0, time.UTC)) }
	set := func(ns, name string, created int, parent string) *gatewayv1.ListenerSet {
		ls := listenerSet(ns, name)
		ls.CreationTimestamp = at(created)
		ls.Spec.ParentRef.Name = gatewayv1.ObjectName(parent)
		return ls
	}
	otherKind := set("bookinfo", "other-kind", 0, "waypoint")
	otherKind.Spec.ParentRef.Kind = ptr(gatewayv1.Kind("Service"))
	sets := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byParent: parentIndex})
	for _, ls := range []*gatewayv1.ListenerSet{
		set("team-b", "b", 1, "waypoint"),
		set("team-a", "a", 2, "waypoint"),
		set("bookinfo", "same", 3, "waypoint"),
		set("gone", "orphan", 0, "waypoint"),
		set("team-a", "elsewhere", 0, "other-gateway"),
		otherKind,
	} {
		if err := sets.Add(ls); err != nil {
			t.Fatal(err)
		}
	}
	nsIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for ns, env := range map[string]string{"bookinfo": "dev", "team-a": "dev", "team-b": "prod"} {
		if err := nsIdx.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns, Labels: map[string]string{"env": env}}}); err != nil {
			t.Fatal(err)
		}
	}
	d := &Deployer{}
	d.sets.Store(&listenerSetCaches{byParent: sets, namespaces: corev1listers.NewNamespaceLister(nsIdx)})

	allowing := func(from gatewayv1.FromNamespaces, sel *metav1.LabelSelector) *gatewayv1.Gateway {
		gw := gateway("meshlet")
		gw.Spec.AllowedListeners = &gatewayv1.AllowedListeners{Namespaces: &gatewayv1.ListenerNamespaces{From: &from, Selector: sel}}
		return gw
	}
	notProd := &metav1.LabelSelector{MatchExpressions: []metav1.LabelSelectorRequirement{{Key: "env", Operator: metav1.LabelSelectorOpNotIn, Values: []string{"prod"}}}}
	tests := []struct {
		name string
		gw   *gatewayv1.Gateway
		want []string
	}{
		{"none by default", gateway("meshlet"), nil},
		{"same", allowing(gatewayv1.NamespacesFromSame, nil), []string{"bookinfo/same"}},
		{"all", allowing(gatewayv1.NamespacesFromAll, nil), []string{"gone/orphan", "team-b/b", "team-a/a", "bookinfo/same"}},
		{"selector", allowing(gatewayv1.NamespacesFromSelector, notProd), []string{"team-a/a", "bookinfo/same"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := d.attachedListenerSets(tt.gw)
			if err != nil {
				t.Fatal(err)
			}
			var names []string
			for _, ls := range got {
				names = append(names, ls.Namespace+"/"+ls.Name)
			}
			if diff := cmp.Diff(tt.want, names); diff != "" {
				t.Errorf("attached sets (-want +got):\n%s", diff)
			}
		})
	}

	t.Run("without the CRD", func(t *testing.T) {
		got, err := (&Deployer{}).attachedListenerSets(allowing(gatewayv1.NamespacesFromAll, nil))
		if err != nil || got != nil {
			t.Errorf("attachedListenerSets() = %v, %v; want none", got, err)
		}
	})
}

// laterCRD makes kube's fake discovery serve the Gateway API's v1 kinds
// but ListenerSet, and ListenerSet too from the first discovery call
// after the returned install is called. The switch is made by a reactor,
// under the fake's lock in the goroutine that then reads the list, so
// it races with no read.
func laterCRD(kube *kubefake.Clientset) (install func(), discoveries func() int) {
	disc := kube.Discovery().(*fakediscovery.FakeDiscovery)
	served := func(withSets bool) []*metav1.APIResourceList {
		l := &metav1.APIResourceList{GroupVersion: listenerSetGroupVersion, APIResources: []metav1.APIResource{
			{Name: "gateways", Kind: "Gateway", Namespaced: true}, {Name: "httproutes", Kind: "HTTPRoute", Namespaced: true}}}
		if withSets {
			l.APIResources = append(l.APIResources, metav1.APIResource{Name: listenerSetResource, Kind: "ListenerSet", Namespaced: true})
		}
		return []*metav1.APIResourceList{l}
	}
	disc.Resources = served(false)
	var installed atomic.Bool
	switched := false
	kube.PrependReactor("get", "resource", func(k8stesting.Action) (bool, runtime.Object, error) {
		if installed.Load() && !switched {
			disc.Resources, switched = served(true), true
		}
		return false, nil, nil
	})
	return func() { installed.Store(true) }, func() int {
		n := 0
		for _, a := range kube.Actions() {
			if a.GetVerb() == "get" && a.GetResource().Resource == "resource" {
				n++
			}
		}
		return n
	}
}

// TestAttachedListenerSetsWhileInstalled: reconcile workers read the
// ListenerSet caches while Run sets them (the CRD installed later); run
// with -race.
func TestAttachedListenerSetsWhileInstalled(t *testing.T) {
	sets := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{byParent: parentIndex})
	ls := listenerSet("bookinfo", "same")
	if err := sets.Add(ls); err != nil {
		t.Fatal(err)
	}
	nsIdx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := nsIdx.Add(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookinfo"}}); err != nil {
		t.Fatal(err)
	}
	from := gatewayv1.NamespacesFromSame
	gw := gateway("meshlet")
	gw.Spec.AllowedListeners = &gatewayv1.AllowedListeners{Namespaces: &gatewayv1.ListenerNamespaces{From: &from}}
	d := &Deployer{}
	var wg sync.WaitGroup
	stored := make(chan struct{})
	for range 4 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				got, err := d.attachedListenerSets(gw)
				if err != nil {
					t.Error(err)
					return
				}
				if len(got) == 1 {
					return
				}
				select {
				case <-stored:
					if got, _ := d.attachedListenerSets(gw); len(got) != 1 {
						t.Errorf("attachedListenerSets() after the caches were set = %v; want bookinfo/same", got)
					}
					return
				default:
				}
			}
		}()
	}
	d.sets.Store(&listenerSetCaches{byParent: sets, namespaces: corev1listers.NewNamespaceLister(nsIdx)})
	close(stored)
	wg.Wait()
}

// TestRunListenerSetCRDInstalledLater: Run started without the
// ListenerSet CRD deploys an ingress Gateway with its own ports; once the
// CRD is served it reads ListenerSets and the Gateway's Service opens
// its set's port, with no restart: found by the poll, or at once when the
// CRD watch hears it installed (the poll an hour away).
func TestRunListenerSetCRDInstalledLater(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false") // the fakes predate streaming lists
	t.Run("poll", func(t *testing.T) { runListenerSetCRDInstalledLater(t, false) })
	t.Run("watch", func(t *testing.T) { runListenerSetCRDInstalledLater(t, true) })
}

func runListenerSetCRDInstalledLater(t *testing.T, watch bool) {
	const step = 10 * time.Millisecond
	poll := step
	var crds *crdwatch.Watcher
	md := testutil.FakeMetadata()
	if watch {
		poll = time.Hour
		crds = crdwatch.New(md, nil)
		if err := crds.Start(t.Context()); err != nil {
			t.Fatal(err)
		}
	}
	kube := kubefake.NewClientset(&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "bookinfo"}})
	install, discoveries := laterCRD(kube)
	from := gatewayv1.NamespacesFromSame
	gw := gateway("meshlet", gatewayv1.Listener{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType})
	gw.Spec.AllowedListeners = &gatewayv1.AllowedListeners{Namespaces: &gatewayv1.ListenerNamespaces{From: &from}}
	set := listenerSet("bookinfo", "team", gatewayv1.ListenerEntry{Name: "api", Port: 8080, Protocol: gatewayv1.HTTPProtocolType})
	// Created through the client: the fake's tracker would file an object
	// passed to the constructor under v1beta1, Gateway's first registered
	// version (v1beta1.Gateway is an alias of v1.Gateway); and the simple
	// fake, as NewClientset's field-managed one cannot tell v1 Gateways,
	// whose status applies are then taken as done.
	gwc := gatewayfake.NewSimpleClientset()
	gwc.PrependReactor("patch", "gateways", func(a k8stesting.Action) (bool, runtime.Object, error) {
		return a.GetSubresource() == "status", &gatewayv1.Gateway{}, nil
	})
	if _, err := gwc.GatewayV1().Gateways("bookinfo").Create(context.Background(), gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := gwc.GatewayV1().ListenerSets("bookinfo").Create(context.Background(), set, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx := runDeployer(t, Options{Kube: kube, Gateway: gwc, Render: opts, CRDPoll: poll, CRDs: crds})
	ports := func() []int32 {
		svc, err := kube.CoreV1().Services("bookinfo").Get(ctx, "waypoint", metav1.GetOptions{})
		if err != nil {
			return nil
		}
		var out []int32
		for _, p := range svc.Spec.Ports {
			out = append(out, p.Port)
		}
		slices.Sort(out)
		return out
	}
	waitPorts := func(want []int32) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for got := ports(); !slices.Equal(got, want); got = ports() {
			if time.Now().After(deadline) {
				t.Fatalf("Service bookinfo/waypoint ports = %v; want %v within 10s", got, want)
			}
			time.Sleep(step)
		}
	}
	waitPorts([]int32{80, 15008})
	if watch {
		time.Sleep(20 * step)
	} else {
		for start := discoveries(); discoveries() < start+3; {
			time.Sleep(step)
		}
	}
	if got := ports(); !slices.Equal(got, []int32{80, 15008}) {
		t.Fatalf("Service ports = %v before the ListenerSet CRD is installed; want the Gateway's own", got)
	}
	install()
	if watch {
		testutil.InstallCRD(t, md, "listenersets.gateway.networking.k8s.io")
	}
	waitPorts([]int32{80, 8080, 15008})
}

type tlog struct{ t *testing.T }

func (l tlog) Write(p []byte) (int, error) { l.t.Log(string(p)); return len(p), nil }

// runDeployer runs a Deployer with opts (logging to t) for at most 30 s,
// until the test ends, and returns the context it runs in.
func runDeployer(t *testing.T, opts Options) context.Context {
	t.Helper()
	opts.Logger = slog.New(slog.NewTextHandler(tlog{t}, nil))
	d, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	ran := make(chan error, 1)
	go func() { ran <- d.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		if err := <-ran; err != nil {
			t.Errorf("Run: %v", err)
		}
	})
	return ctx
}
