package main

import (
	"context"
	"errors"
	"log/slog"
	"net/netip"
	"slices"

	networkingapi "istio.io/api/networking/v1alpha3"
	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

// serviceEntryStatusWriter writes the addresses each build allocated to
// ServiceEntries (controlplane.Builder.ServiceEntryStatus) into their
// status.addresses, as Istio's allocator does, so that users see which
// address the mesh's DNS proxy answers a host with.
//
// It works as gatewayStatusWriter does, for the same reasons: the field is
// a list other writers may add to, so the writer reads, merges
// (mergeAddresses: the entries in the automatic range are meshd's, the
// others are kept) and calls UpdateStatus, which keeps every other field
// of status (conditions, validationMessages) as read and makes a
// concurrent write a conflict, retried on a fresh read. An entry whose
// status already says it is not written; replicas compute the same
// addresses from the same objects, so they agree. Builds hand over their
// result without waiting, and writes run on at most statusWorkers
// goroutines: config pushes never wait on the API server.
type serviceEntryStatusWriter struct {
	istio istioclient.Interface
	log   *slog.Logger
	queue statusQueue[serviceEntryBatch]
}

// serviceEntryBatch is one build's addresses with the inputs they were
// computed from (the informers' objects, whose status is compared with
// them).
type serviceEntryBatch struct {
	status []controlplane.ServiceEntryAddresses
	in     *controlplane.Inputs
}

func newServiceEntryStatusWriter(istio istioclient.Interface, log *slog.Logger) *serviceEntryStatusWriter {
	return &serviceEntryStatusWriter{istio: istio, log: log, queue: newStatusQueue[serviceEntryBatch]()}
}

// submit queues a build's addresses, replacing those still waiting; it
// never blocks.
func (w *serviceEntryStatusWriter) submit(status []controlplane.ServiceEntryAddresses, in *controlplane.Inputs) {
	w.queue.put(serviceEntryBatch{status: status, in: in})
}

func (w *serviceEntryStatusWriter) run(ctx context.Context) {
	w.queue.run(ctx, func(b serviceEntryBatch) {
		writeEach(ctx, b.status, func(st controlplane.ServiceEntryAddresses) bool {
			cached := b.in.ServiceEntryObject(st.Namespace, st.Name)
			if cached == nil {
				return false
			}
			_, changed := withAddresses(cached, st) // else the informer's copy already says it: no write
			return changed
		}, func(st controlplane.ServiceEntryAddresses) {
			w.write(ctx, st, b.in.ServiceEntryObject(st.Namespace, st.Name))
		})
	})
}

// write brings one ServiceEntry's status.addresses to st, starting from
// the informer's copy (cached); it logs, never returns, a failure.
func (w *serviceEntryStatusWriter) write(ctx context.Context, st controlplane.ServiceEntryAddresses, cached *networkingv1.ServiceEntry) {
	client := w.istio.NetworkingV1().ServiceEntries(st.Namespace)
	se := cached
	err := retry.OnError(statusBackoff, retriableStatusError, func() error {
		if se == nil {
			var err error
			if se, err = client.Get(ctx, st.Name, metav1.GetOptions{}); err != nil {
				return err
			}
		}
		next, changed := withAddresses(se, st)
		if !changed {
			return nil
		}
		_, err := client.UpdateStatus(ctx, next, metav1.UpdateOptions{FieldManager: "meshd"})
		if err != nil {
			se = nil // read it again: someone else wrote in between
		}
		return err
	})
	switch {
	case err == nil, apierrors.IsNotFound(err), errors.Is(err, context.Canceled):
		// Written, unchanged, or deleted meanwhile.
	case apierrors.IsForbidden(err):
		w.log.Error("write ServiceEntry status.addresses: forbidden; grant meshd's ClusterRole the verb update on serviceentries/status (group networking.istio.io)",
			"namespace", st.Namespace, "name", st.Name, "err", err)
	default:
		w.log.Warn("write ServiceEntry status.addresses", "namespace", st.Namespace, "name", st.Name, "err", err)
	}
}

// withAddresses returns a copy of se whose status.addresses carry st
// (mergeAddresses), and whether that differs from se's. An entry whose
// generation is not the one st was computed for is left alone: st is
// stale, or the object is, and the next build brings the right one.
func withAddresses(se *networkingv1.ServiceEntry, st controlplane.ServiceEntryAddresses) (*networkingv1.ServiceEntry, bool) {
	if se.Generation != st.Generation {
		return nil, false
	}
	// Compared first on the shared object, so that an unchanged entry,
	// the usual case, costs no copy.
	if _, changed := mergeAddresses(se.Status.GetAddresses(), st.Addresses); !changed {
		return nil, false
	}
	c := se.DeepCopy()
	c.Status.Addresses, _ = mergeAddresses(c.Status.GetAddresses(), st.Addresses)
	return c, true
}

// mergeAddresses returns status.addresses with meshd's entries (those
// whose value is in the automatic range, controlplane.IsAutoAllocated)
// replaced by want: the other entries first, as they were, then want in
// its order. changed is false when meshd's entries already are want, in
// that order, wherever the others sit among them.
func mergeAddresses(current []*networkingapi.ServiceEntryAddress, want []controlplane.HostAddress) (merged []*networkingapi.ServiceEntryAddress, changed bool) {
	var ours []controlplane.HostAddress
	for _, a := range current {
		if v, err := netip.ParseAddr(a.GetValue()); err == nil && controlplane.IsAutoAllocated(v) {
			ours = append(ours, controlplane.HostAddress{Host: a.GetHost(), Value: v})
			continue
		}
		merged = append(merged, a)
	}
	if slices.Equal(ours, want) {
		return current, false
	}
	for _, h := range want {
		merged = append(merged, &networkingapi.ServiceEntryAddress{Value: h.Value.String(), Host: h.Host})
	}
	return merged, true
}
