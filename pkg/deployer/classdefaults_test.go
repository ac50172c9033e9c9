package deployer

import (
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"slices"
	"strings"
	"testing"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/validation/field"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
	gatewaylisters "sigs.k8s.io/gateway-api/pkg/client/listers/apis/v1"
)

// reconcileWith reconciles gw with the ConfigMaps cms in the cluster and
// class defaults read from meshlet-system. The API server refuses a
// Deployment carrying the annotation "refuse". It returns the Deployment
// applied (nil when none was) and the Gateway's Accepted condition.
func reconcileWith(t *testing.T, gw *gatewayv1.Gateway, cms ...runtime.Object) (*corev1.PodTemplateSpec, *metav1.Condition) {
	t.Helper()
	kube := kubefake.NewClientset(cms...)
	kube.PrependReactor("patch", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchActionImpl)
		if strings.Contains(string(p.GetPatch()), `"refuse":`) {
			return true, nil, apierrors.NewInvalid(schema.GroupKind{Group: "apps", Kind: "Deployment"}, gw.Name,
				field.ErrorList{field.Invalid(field.NewPath("metadata", "annotations"), "refuse", "refused")})
		}
		// The fake's tracker would write a dry run.
		return len(p.PatchOptions.DryRun) > 0, &appsv1.Deployment{}, nil
	})
	var accepted *metav1.Condition
	gwc := gatewayfake.NewSimpleClientset()
	gwc.PrependReactor("patch", "gateways", func(a k8stesting.Action) (bool, runtime.Object, error) {
		var st gatewayv1.Gateway
		if err := json.Unmarshal(a.(k8stesting.PatchAction).GetPatch(), &st); err != nil {
			t.Fatal(err)
		}
		for i, c := range st.Status.Conditions {
			if c.Type == string(gatewayv1.GatewayConditionAccepted) {
				accepted = &st.Status.Conditions[i]
			}
		}
		return true, &gatewayv1.Gateway{}, nil
	})
	d, err := New(Options{Kube: kube, Gateway: gwc, Render: opts, ClassDefaultsNamespace: "meshlet-system", Logger: slog.New(slog.NewTextHandler(io.Discard, nil))})
	if err != nil {
		t.Fatal(err)
	}
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	if err := idx.Add(gw); err != nil {
		t.Fatal(err)
	}
	d.gateways = gatewaylisters.NewGatewayLister(idx)
	if err := d.reconcile(context.Background(), cache.ObjectName{Namespace: gw.Namespace, Name: gw.Name}); err != nil {
		t.Fatal(err)
	}
	if accepted == nil {
		t.Fatal("no Accepted condition applied")
	}
	dep, err := kube.AppsV1().Deployments(gw.Namespace).Get(context.Background(), gw.Name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, accepted
	}
	if err != nil {
		t.Fatal(err)
	}
	return &dep.Spec.Template, accepted
}

// TestReconcileClassDefaults: reconcile reads the class defaults of the
// Gateway's class from the configured namespace only (one labelled alike
// in the Gateway's namespace, or for another class, does not count), under
// the Gateway's own parameters; class defaults the API server refuses
// reject the Gateway naming them, found by dry-running them alone when the
// Gateway has parameters too, which are named when the class defaults
// alone pass.
func TestReconcileClassDefaults(t *testing.T) {
	labelled := func(ns, name, class, podLabels string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: map[string]string{ClassDefaultsLabel: class}},
			Data: map[string]string{"deployment": "spec: {template: {metadata: {labels: " + podLabels + "}}}"}}
	}
	own := func(podLabels string) *corev1.ConfigMap {
		return &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "wp-params"},
			Data: map[string]string{"deployment": "spec: {template: {metadata: {labels: " + podLabels + "}}}"}}
	}
	elsewhere := labelled("bookinfo", "not-here", "istio-waypoint", "{from: bookinfo}")
	otherClass := labelled("meshlet-system", "ingress", "istio", "{from: ingress}")

	tmpl, acc := reconcileWith(t, gateway("istio-waypoint"), labelled("meshlet-system", "defaults", "istio-waypoint", "{from: class, tier: mesh}"), elsewhere, otherClass)
	if acc.Status != metav1.ConditionTrue || tmpl == nil || tmpl.Labels["from"] != "class" || tmpl.Labels["tier"] != "mesh" {
		t.Errorf("class defaults alone: Accepted %s, pod labels %v; want accepted with the mesh namespace's class defaults", acc.Status, tmpl)
	}
	tmpl, acc = reconcileWith(t, withInfra(), labelled("meshlet-system", "defaults", "istio-waypoint", "{from: class, tier: mesh}"), own("{from: gateway}"), elsewhere)
	if acc.Status != metav1.ConditionTrue || tmpl == nil || tmpl.Labels["from"] != "gateway" || tmpl.Labels["tier"] != "mesh" {
		t.Errorf("with the Gateway's own: Accepted %s, pod labels %v; want the Gateway's from=gateway over the class defaults, their tier=mesh kept", acc.Status, tmpl)
	}
	tmpl, acc = reconcileWith(t, withInfra(), own("{from: gateway}"), elsewhere, otherClass)
	if acc.Status != metav1.ConditionTrue || tmpl == nil || tmpl.Labels["from"] != "gateway" {
		t.Errorf("without class defaults: Accepted %s, pod labels %v; want the Gateway's own only", acc.Status, tmpl)
	}

	refusing := labelled("meshlet-system", "defaults", "istio-waypoint", "{tier: mesh}")
	refusing.Data["deployment"] = "metadata: {annotations: {refuse: class}}"
	for _, tt := range []struct {
		name string
		gw   *gatewayv1.Gateway
		cms  []runtime.Object
		want string
	}{
		{"class defaults alone", gateway("istio-waypoint"), []runtime.Object{refusing},
			"class defaults ConfigMap meshlet-system/defaults (gateway.istio.io/defaults-for-class=istio-waypoint): the deployment they make is invalid"},
		{"class defaults under the Gateway's", withInfra(), []runtime.Object{refusing, own("{from: gateway}")},
			"class defaults ConfigMap meshlet-system/defaults (gateway.istio.io/defaults-for-class=istio-waypoint): the deployment they make is invalid"},
		{"the Gateway's over the class defaults", withInfra(), []runtime.Object{labelled("meshlet-system", "defaults", "istio-waypoint", "{tier: mesh}"),
			&corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "wp-params"}, Data: map[string]string{"deployment": "metadata: {annotations: {refuse: own}}"}}},
			`parametersRef ConfigMap "wp-params": the deployment it makes over the class defaults of ConfigMap meshlet-system/defaults is invalid`},
		{"unusable class defaults", gateway("istio-waypoint"), []runtime.Object{&corev1.ConfigMap{ObjectMeta: refusing.ObjectMeta, Data: map[string]string{"deployments": "{}"}}},
			"class defaults ConfigMap meshlet-system/defaults (gateway.istio.io/defaults-for-class=istio-waypoint): keys deployments"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, acc := reconcileWith(t, tt.gw, tt.cms...)
			if acc.Status != metav1.ConditionFalse || acc.Reason != string(gatewayv1.GatewayReasonInvalidParameters) || !strings.Contains(acc.Message, tt.want) {
				t.Errorf("Accepted %s %s %q; want False InvalidParameters %q", acc.Status, acc.Reason, acc.Message, tt.want)
			}
			if tmpl != nil {
				t.Errorf("a Deployment was applied for rejected parameters: pod labels %v", tmpl.Labels)
			}
		})
	}
}

// TestClassDefaultsEnqueue: a ConfigMap labelled ClassDefaultsLabel in the
// class defaults namespace (or its tombstone) re-renders every Gateway of
// its class and only those; one of another namespace, or unlabelled,
// none.
func TestClassDefaultsEnqueue(t *testing.T) {
	idx := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, g := range []struct{ ns, name, class string }{
		{"a", "wp1", "istio-waypoint"}, {"b", "wp2", "istio-waypoint"}, {"a", "ingress", "istio"}, {"a", "foreign", "other"},
	} {
		gw := gateway(g.class)
		gw.Namespace, gw.Name = g.ns, g.name
		if err := idx.Add(gw); err != nil {
			t.Fatal(err)
		}
	}
	d := &Deployer{gateways: gatewaylisters.NewGatewayLister(idx),
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.DefaultTypedControllerRateLimiter[cache.ObjectName]())}
	defer d.queue.ShutDown()
	cm := func(ns, class string) *corev1.ConfigMap {
		c := &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: "defaults"}}
		if class != "" {
			c.Labels = map[string]string{ClassDefaultsLabel: class}
		}
		return c
	}
	for _, tt := range []struct {
		name string
		obj  any
		want []string
	}{
		{"waypoint class", cm("meshlet-system", "istio-waypoint"), []string{"a/wp1", "b/wp2"}},
		{"tombstone", cache.DeletedFinalStateUnknown{Key: "meshlet-system/defaults", Obj: cm("meshlet-system", "istio")}, []string{"a/ingress"}},
		{"not meshlet's class", cm("meshlet-system", "other"), nil},
		{"another namespace", cm("a", "istio-waypoint"), nil},
		{"unlabelled", cm("meshlet-system", ""), nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			d.enqueueClasses(classDefaultsOf("meshlet-system", tt.obj)...)
			var got []string
			for d.queue.Len() > 0 {
				k, _ := d.queue.Get()
				got = append(got, k.String())
				d.queue.Done(k)
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("enqueued %v; want %v", got, tt.want)
			}
		})
	}
	if got := classDefaultsOf("", cm("", "istio-waypoint")); got != nil {
		t.Errorf("classDefaultsOf without a namespace = %v; want none", got)
	}
}
