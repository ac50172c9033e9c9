// Package kube is the node agent's Kubernetes client: only the core/v1 and
// apps/v1 kinds it reads, each cut down to the fields it reads (types.go),
// with a scheme of its own, over client-go's REST client and informers.
// client-go's clientset registers every API group and links a typed client
// for each; in the agent that was most of its code and of its resident
// memory, on every node.
//
// It must not grow into a general client: a kind the agent starts to read
// gets a method here.
package kube

import (
	"context"
	"encoding/json"
	"fmt"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/runtime/serializer"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/pkg/model"
)

var codecs = func() serializer.CodecFactory {
	s := runtime.NewScheme()
	addKnownTypes(s)
	// ListOptions and friends, unversioned, as client-go's scheme has them.
	metav1.AddToGroupVersion(s, schema.GroupVersion{Version: "v1"})
	return serializer.NewCodecFactory(s)
}()

// Client reads pods, namespaces and services (core/v1) and daemonsets
// (apps/v1), and annotates pods (AnnotatePod).
type Client struct {
	core, apps *rest.RESTClient
}

// New returns a Client for the API server cfg points at. It asks for JSON:
// decoding protobuf would take k8s.io/api's generated types and code for
// every field of a pod, where JSON decodes into the few fields types.go
// keeps and skips the rest.
func New(cfg *rest.Config) (*Client, error) {
	core, err := restClient(cfg, CoreV1, "/api")
	if err != nil {
		return nil, err
	}
	apps, err := restClient(cfg, AppsV1, "/apis")
	if err != nil {
		return nil, err
	}
	return &Client{core: core, apps: apps}, nil
}

func restClient(cfg *rest.Config, gv schema.GroupVersion, apiPath string) (*rest.RESTClient, error) {
	c := rest.CopyConfig(cfg)
	c.GroupVersion = &gv
	c.APIPath = apiPath
	c.NegotiatedSerializer = codecs.WithoutConversion()
	c.ContentType = runtime.ContentTypeJSON
	c.AcceptContentTypes = runtime.ContentTypeJSON
	if c.UserAgent == "" {
		c.UserAgent = rest.DefaultKubernetesUserAgent()
	}
	rc, err := rest.RESTClientFor(c)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client for %s: %w", gv, err)
	}
	return rc, nil
}

// PodsOnNode lists and watches the pods scheduled to node.
func (c *Client) PodsOnNode(node string) cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.core, "pods", metav1.NamespaceAll, fields.OneTermEqualSelector("spec.nodeName", node))
}

// Namespaces lists and watches all namespaces.
func (c *Client) Namespaces() cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.core, "namespaces", metav1.NamespaceAll, fields.Everything())
}

// DaemonSet lists and watches one daemonset.
func (c *Client) DaemonSet(namespace, name string) cache.ListerWatcher {
	return cache.NewListWatchFromClient(c.apps, "daemonsets", namespace, fields.OneTermEqualSelector("metadata.name", name))
}

// ListPods lists one page (at most limit) of the pods of namespace (all
// namespaces: ""), from cont (a previous page's Continue; "" first).
func (c *Client) ListPods(ctx context.Context, namespace, cont string, limit int64) (*PodList, error) {
	r := c.core.Get().Namespace(namespace).Resource("pods").
		VersionedParams(&metav1.ListOptions{Limit: limit, Continue: cont}, metav1.ParameterCodec)
	return get(ctx, r, &PodList{})
}

// GetPod reads one pod.
func (c *Client) GetPod(ctx context.Context, namespace, name string) (*Pod, error) {
	return get(ctx, c.core.Get().Namespace(namespace).Resource("pods").Name(name), &Pod{})
}

// GetNamespace reads one namespace.
func (c *Client) GetNamespace(ctx context.Context, name string) (*Namespace, error) {
	return get(ctx, c.core.Get().Resource("namespaces").Name(name), &Namespace{})
}

// GetService reads one service.
func (c *Client) GetService(ctx context.Context, namespace, name string) (*Service, error) {
	return get(ctx, c.core.Get().Namespace(namespace).Resource("services").Name(name), &Service{})
}

// AnnotatePod sets (value non-nil) or removes (nil) one annotation of a
// pod through its status subresource, the one write the agent makes: it
// may change a pod's metadata and status there, never its spec (Istio's
// CNI agent takes the same right for the same annotation). resourceVersion,
// when set, is a precondition: a pod changed since is a Conflict error.
func (c *Client) AnnotatePod(ctx context.Context, namespace, name, resourceVersion, key string, value *string) error {
	body, err := AnnotationPatch(resourceVersion, key, value)
	if err != nil {
		return err
	}
	return c.core.Patch(types.MergePatchType).Namespace(namespace).Resource("pods").Name(name).SubResource("status").
		Body(body).Do(ctx).Error()
}

// AnnotationPatch is AnnotatePod's JSON merge patch: the annotation key set
// to value (removed when nil), with resourceVersion, when set, as
// precondition.
func AnnotationPatch(resourceVersion, key string, value *string) ([]byte, error) {
	meta := map[string]any{"annotations": map[string]any{key: value}}
	if resourceVersion != "" {
		meta["resourceVersion"] = resourceVersion
	}
	return json.Marshal(map[string]any{"metadata": meta})
}

func get[T runtime.Object](ctx context.Context, r *rest.Request, into T) (T, error) {
	if err := r.Do(ctx).Into(into); err != nil {
		var none T
		return none, err
	}
	return into, nil
}

// DropUnread is an informer transform (SetTransform) that drops the metadata
// the agent never reads and would otherwise keep for every object it
// caches: managed fields and annotations (up to 256 KiB a pod), but for
// Istio's ambient ones it reads (model.AnnotationRedirection and
// model.AnnotationBypassInbound).
func DropUnread(obj any) (any, error) {
	if m, ok := obj.(metav1.Object); ok {
		m.SetManagedFields(nil)
		var kept map[string]string
		for _, k := range []string{model.AnnotationRedirection, model.AnnotationBypassInbound} {
			if v, ok := m.GetAnnotations()[k]; ok {
				if kept == nil {
					kept = map[string]string{}
				}
				kept[k] = v
			}
		}
		m.SetAnnotations(kept)
	}
	return obj, nil
}
