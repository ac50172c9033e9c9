package enroll

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/watch"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
)

// clientsetAPI is the reconciler's API over a client-go clientset (the
// tests' fake one); the agent itself uses node-agent/kube.
type clientsetAPI struct{ c kubernetes.Interface }

func (a clientsetAPI) PodsOnNode(node string) cache.ListerWatcher {
	sel := fields.OneTermEqualSelector("spec.nodeName", node).String()
	// As client-go's generated informers do: the fake clientset says it
	// cannot stream the initial list (watch-list).
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			o.FieldSelector = sel
			return a.c.CoreV1().Pods(metav1.NamespaceAll).List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			o.FieldSelector = sel
			return a.c.CoreV1().Pods(metav1.NamespaceAll).Watch(ctx, o)
		},
	}, a.c)
}

func (a clientsetAPI) Namespaces() cache.ListerWatcher {
	return cache.ToListWatcherWithWatchListSemantics(&cache.ListWatch{
		ListWithContextFunc: func(ctx context.Context, o metav1.ListOptions) (runtime.Object, error) {
			return a.c.CoreV1().Namespaces().List(ctx, o)
		},
		WatchFuncWithContext: func(ctx context.Context, o metav1.ListOptions) (watch.Interface, error) {
			return a.c.CoreV1().Namespaces().Watch(ctx, o)
		},
	}, a.c)
}

func (a clientsetAPI) GetPod(ctx context.Context, ns, name string) (*corev1.Pod, error) {
	return a.c.CoreV1().Pods(ns).Get(ctx, name, metav1.GetOptions{})
}

func (a clientsetAPI) GetNamespace(ctx context.Context, name string) (*corev1.Namespace, error) {
	return a.c.CoreV1().Namespaces().Get(ctx, name, metav1.GetOptions{})
}
