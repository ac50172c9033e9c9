package main

import (
	"context"
	"fmt"
	"log/slog"
	"strings"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/pkg/controlplane"
)

// eventRecorder writes a Warning Event on each rejected object, so
// `kubectl describe` shows why meshd skipped it. Events are written from
// one goroutine; when the queue is full, further ones are dropped (the log
// line and the metric still report them).
type eventRecorder struct {
	kube  kubernetes.Interface
	log   *slog.Logger
	queue chan controlplane.Rejection
}

func (e *eventRecorder) record(r controlplane.Rejection) {
	select {
	case e.queue <- r:
	default:
	}
}

func (e *eventRecorder) run(ctx context.Context) {
	for {
		select {
		case <-ctx.Done():
			return
		case r := <-e.queue:
			e.write(ctx, r)
		}
	}
}

func (e *eventRecorder) write(ctx context.Context, r controlplane.Rejection) {
	ns := r.Namespace
	if ns == "" {
		ns = metav1.NamespaceDefault
	}
	kind, _, _ := strings.Cut(r.Kind, ".") // "Gateway.networking.istio.io" → "Gateway"
	now := metav1.NewTime(time.Now())
	reason := "MeshConfigRejected" // skipped: the rest of the config flows without it
	if r.Warning {
		reason = "MeshConfigWarning" // used, but probably not what its author meant
	}
	ev := &corev1.Event{
		ObjectMeta:     metav1.ObjectMeta{GenerateName: strings.ToLower(fmt.Sprintf("%s.%s.", r.Name, kind)), Namespace: ns},
		InvolvedObject: corev1.ObjectReference{Kind: kind, Namespace: r.Namespace, Name: r.Name},
		Reason:         reason,
		Message:        r.Reason,
		Type:           corev1.EventTypeWarning,
		Source:         corev1.EventSource{Component: "meshd"},
		FirstTimestamp: now,
		LastTimestamp:  now,
		Count:          1,
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if _, err := e.kube.CoreV1().Events(ns).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		e.log.Warn("record rejection event", "kind", r.Kind, "namespace", r.Namespace, "name", r.Name, "err", err)
	}
}
