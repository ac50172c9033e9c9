package enroll

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/node-agent/kube"
)

// clientsetAPI is the reconciler's API over a client-go clientset (the
// tests' fake one), whose k8s.io/api objects it hands on as node-agent/kube's
// cut-down kinds, through their JSON as the API server would send it; the
// agent itself uses node-agent/kube.
type clientsetAPI struct{ c kubernetes.Interface }

// convert re-decodes a k8s.io/api object's JSON into node-agent/kube's kind
// for it; other objects (a watch's Status) pass unchanged.
func convert(obj runtime.Object) (runtime.Object, error) {
	var into runtime.Object
	switch obj.(type) {
	case *corev1.Pod:
		into = &kube.Pod{}
	case *corev1.PodList:
		into = &kube.PodList{}
	case *corev1.Namespace:
		into = &kube.Namespace{}
	case *corev1.NamespaceList:
		into = &kube.NamespaceList{}
	default:
		return obj, nil
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return nil, err
	}
	if err := json.Unmarshal(b, into); err != nil {
		return nil, fmt.Errorf("decode %T as %T: %w", obj, into, err)
	}
	return into, nil
}

func converted[T runtime.Object](obj runtime.Object, err error) (T, error) {
	var none T
	if err != nil {
		return none, err
	}
	out, err := convert(obj)
	if err != nil {
		return none, err
	}
	return out.(T), nil
}

func convertWatch(w watch.Interface, err error) (watch.Interface, error) {
	if err != nil {
		return nil, err
	}
	return watch.Filter(w, func(e watch.Event) (watch.Event, bool) {
		obj, err := convert(e.Object)
		if err != nil {
			return watch.Event{Type: watch.Error, Object: &metav1.Status{Message: err.Error()}}, true
		}
		e.Object = obj
		return e, true
	}), nil
}

// slim is the pod as the agent decodes it.
func slim(t *testing.T, pod *corev1.Pod) *kube.Pod {
	t.Helper()
	p, err := converted[*kube.Pod](pod, nil)
	if err != nil {
		t.Fatal(err)
	}
	return p
}

func (a clientsetAPI) PodsOnNode(node string) cache.ListerWatcher {
	sel := fields.OneTermEqualSelector("spec.nodeName", node).String()
	// As client-go's generated informers do: the fake clientset says it
	// cannot stream the initial list (watch-list).
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return converted[*kube.PodList](a.c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return convertWatch(a.c.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o))
		},
	}, a.c)
}

func (a clientsetAPI) Namespaces() cache.ListerWatcher {
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return converted[*kube.NamespaceList](a.c.CoreV1().Namespaces().List(ctx, o))
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return convertWatch(a.c.CoreV1().Namespaces().Watch(ctx, o))
		},
	}, a.c)
}

func (a clientsetAPI) GetPod(ctx context.Context, ns, name string) (*kube.Pod, error) {
	return converted[*kube.Pod](a.c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{}))
}

func (a clientsetAPI) GetNamespace(ctx context.Context, name string) (*kube.Namespace, error) {
	return converted[*kube.Namespace](a.c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{}))
}

func (a clientsetAPI) AnnotatePod(ctx context.Context, ns, name, resourceVersion, key string, value *string) error {
	body, err := kube.AnnotationPatch(resourceVersion, key, value)
	if err != nil {
		return err
	}
	_, err = a.c.CoreV1().Pods(ns).Patch(ctx, name, types.MergePatchType, body, metav1.PatchOptions{}, "status")
	return err
}
