package main

import (
	"context"
	"log"
	"sync/atomic"

	"k8s.io/client-go/tools/cache"

	"github.com/meshlet/meshlet/node-agent/kube"
)

// uninstallWatch tells a rolling update from an uninstall when the agent is
// stopped. Both send SIGTERM; only an uninstall deletes the DaemonSet, and
// with foreground deletion (meshctl uninstall, kubectl delete --cascade=
// foreground) the DaemonSet is marked for deletion before its pods are
// stopped. The agent watches its own DaemonSet so that it knows at SIGTERM
// without asking the API server, whose permissions for it may already be
// gone by then. On an uninstall the agent removes its eBPF programs and
// its CNI entry, so that pods keep working without the mesh; on a restart
// it keeps them, so that the next agent adopts them with no gap.
type uninstallWatch struct {
	deleting atomic.Bool
}

func watchOwnDaemonSet(ctx context.Context, client *kube.Client, namespace, name string) *uninstallWatch {
	w := &uninstallWatch{}
	if namespace == "" || name == "" {
		log.Printf("uninstall detection off: no --daemonset-name or POD_NAMESPACE; pins and CNI entry stay on exit")
		return w
	}
	inf := cache.NewSharedIndexInformer(client.DaemonSet(namespace, name), &kube.DaemonSet{}, 0, cache.Indexers{})
	// Only the deletion timestamp is read: kubectl's last-applied
	// annotation (the whole manifest) is not kept.
	_ = inf.SetTransform(kube.DropUnread)
	mark := func(obj any) {
		if ds, ok := obj.(*kube.DaemonSet); ok && ds.DeletionTimestamp != nil {
			w.deleting.Store(true)
		}
	}
	_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    mark,
		UpdateFunc: func(_, n any) { mark(n) },
		DeleteFunc: func(any) { w.deleting.Store(true) },
	})
	go inf.RunWithContext(ctx)
	return w
}

// uninstalling reports whether the agent's DaemonSet is being deleted.
func (w *uninstallWatch) uninstalling() bool { return w.deleting.Load() }
