// Package crdwatch tells the parts of meshd that wait for an optional CRD
// (BackendTLSPolicy, TLSRoute, TCPRoute, ListenerSet,
// XBackendTrafficPolicy) when a CustomResourceDefinition is installed or
// changes, as istiod's CRD watcher does, so that a CRD installed while meshd
// runs is read within moments instead of at the next poll of discovery.
//
// It watches the CRDs' metadata only (their schemas can be hundreds of
// kilobytes each) and keeps nothing of them but the name. The waiters still
// ask discovery whether the kind is served (a CRD is served once it is
// Established, which is one more change of the CRD, heard here too) and
// keep their slow poll as a fallback, for a meshd whose role may not watch
// CRDs.
package crdwatch

import (
	"context"
	"fmt"
	"log/slog"
	"sync"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/tools/cache"
)

// Resource is the CustomResourceDefinition resource.
var Resource = schema.GroupVersionResource{Group: "apiextensions.k8s.io", Version: "v1", Resource: "customresourcedefinitions"}

// Watcher hears CRDs being added and changed. A nil *Watcher is valid and
// never tells of anything (callers then rely on their poll).
type Watcher struct {
	client metadata.Interface
	log    *slog.Logger

	mu   sync.Mutex
	subs map[*subscription]struct{}
}

type subscription struct {
	names map[string]bool
	ch    chan struct{}
}

// New returns a Watcher reading CRDs' metadata through client; Start
// starts it. A nil log means slog.Default().
func New(client metadata.Interface, log *slog.Logger) *Watcher {
	if log == nil {
		log = slog.Default()
	}
	return &Watcher{client: client, log: log, subs: map[*subscription]struct{}{}}
}

// Start watches CRDs until ctx ends. When the role may not list them it
// says so, with the fix, and returns an error; the Watcher then tells of
// nothing, and the callers' polls find CRDs installed later, only later.
// It does not wait for the first list: a CRD that exists at Start is
// reported to subscribers once, which costs them one discovery call.
func (w *Watcher) Start(ctx context.Context) error {
	if w == nil {
		return nil
	}
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	_, err := w.client.Resource(Resource).List(lctx, metav1.ListOptions{Limit: 1})
	cancel()
	if err != nil {
		if apierrors.IsForbidden(err) {
			err = fmt.Errorf("list %s: %w: grant meshd's ClusterRole get, list and watch on customresourcedefinitions (apiextensions.k8s.io), as the chart does; until then an optional CRD installed while meshd runs is read only at the next poll", Resource.GroupResource(), err)
		} else {
			err = fmt.Errorf("list %s: %w", Resource.GroupResource(), err)
		}
		return err
	}
	inf := metadatainformer.NewFilteredMetadataInformer(w.client, Resource, metav1.NamespaceAll, 0, cache.Indexers{}, nil).Informer()
	// The name is all that is used: the rest of each CRD's metadata
	// (managed fields, last-applied annotations) is not kept.
	if err := inf.SetTransform(keepName); err != nil {
		return err
	}
	if _, err := inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    w.heard,
		UpdateFunc: func(_, obj any) { w.heard(obj) },
	}); err != nil {
		return err
	}
	go inf.RunWithContext(ctx)
	return nil
}

// keepName is the informer's transform: a CRD's name (and resource
// version, which the informer compares) is all it keeps.
func keepName(obj any) (any, error) {
	if m, ok := obj.(*metav1.PartialObjectMetadata); ok {
		return &metav1.PartialObjectMetadata{TypeMeta: m.TypeMeta, ObjectMeta: metav1.ObjectMeta{Name: m.Name, ResourceVersion: m.ResourceVersion}}, nil
	}
	return obj, nil
}

func (w *Watcher) heard(obj any) {
	m, ok := obj.(*metav1.PartialObjectMetadata)
	if !ok {
		return
	}
	w.mu.Lock()
	defer w.mu.Unlock()
	for s := range w.subs {
		if s.names[m.Name] {
			select {
			case s.ch <- struct{}{}:
			default: // one pending signal is enough: the waiter re-checks all
			}
		}
	}
}

// Subscribe returns a channel that receives a signal (coalesced: at most
// one waits) each time one of the CRDs named (plural.group, e.g.
// "listenersets.gateway.networking.k8s.io") is added or changes, and a
// function that ends the subscription. On a nil Watcher the channel never
// receives.
func (w *Watcher) Subscribe(names ...string) (<-chan struct{}, func()) {
	s := &subscription{names: map[string]bool{}, ch: make(chan struct{}, 1)}
	if w == nil {
		return s.ch, func() {}
	}
	for _, n := range names {
		s.names[n] = true
	}
	w.mu.Lock()
	w.subs[s] = struct{}{}
	w.mu.Unlock()
	return s.ch, func() {
		w.mu.Lock()
		delete(w.subs, s)
		w.mu.Unlock()
	}
}

// WaitServed calls served when one of the CRDs named is added or changes
// (w's signal) and every period besides, until served reports true (then
// it returns true) or ctx ends (false). Errors (discovery unavailable for
// a while) are logged at debug level, naming what, and retried.
func (w *Watcher) WaitServed(ctx context.Context, period time.Duration, what string, served func() (bool, error), names ...string) bool {
	changed, stop := w.Subscribe(names...)
	defer stop()
	t := time.NewTicker(period)
	defer t.Stop()
	log := slog.Default()
	if w != nil {
		log = w.log
	}
	for {
		select {
		case <-ctx.Done():
			return false
		case <-t.C:
		case <-changed:
		}
		ok, err := served()
		if err != nil {
			log.Debug("look for "+what, "err", err)
			continue
		}
		if ok {
			return true
		}
	}
}
