package main

import (
	"context"
	"log/slog"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// rootConfigMap is the ConfigMap every namespace gets with the mesh root, as
// Istio's istio-ca-root-cert, so clients can verify meshd.
const (
	rootConfigMap = "istio-ca-root-cert"
	rootKey       = "root-cert.pem"
)

// rootPublisher writes the root ConfigMap into namespaces: every namespace
// at start and every 10 minutes, and a namespace as soon as it appears.
type rootPublisher struct {
	kube kubernetes.Interface
	pem  atomic.Pointer[string] // the roots, PEM; replaced during a CA rotation
	log  *slog.Logger

	queue chan string
	done  chan struct{}
}

func (p *rootPublisher) kick(ns string) {
	select {
	case p.queue <- ns:
	default: // the periodic pass will catch it
	}
}

func (p *rootPublisher) stop() {
	if p.done != nil {
		close(p.done)
	}
}

func (p *rootPublisher) run(ctx context.Context) {
	tick := time.NewTicker(10 * time.Minute)
	defer tick.Stop()
	p.all(ctx)
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.done:
			return
		case ns := <-p.queue:
			p.publish(ctx, ns)
		case <-tick.C:
			p.all(ctx)
		}
	}
}

func (p *rootPublisher) all(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	list, err := p.kube.CoreV1().Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		p.log.Warn("list namespaces for the root certificate", "err", err)
		return
	}
	for _, ns := range list.Items {
		if ns.DeletionTimestamp == nil {
			p.publish(ctx, ns.Name)
		}
	}
}

// setPEM replaces the roots and rewrites every namespace's ConfigMap now.
func (p *rootPublisher) setPEM(ctx context.Context, pem string) {
	p.pem.Store(&pem)
	p.all(ctx)
}

func (p *rootPublisher) publish(ctx context.Context, ns string) {
	pem := *p.pem.Load()
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	cms := p.kube.CoreV1().ConfigMaps(ns)
	cm, err := cms.Get(ctx, rootConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: rootConfigMap, Namespace: ns, Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}},
			Data:       map[string]string{rootKey: pem},
		}
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		if apierrors.IsAlreadyExists(err) {
			err = nil // the other replica was first
		}
	case err == nil && cm.Data[rootKey] != pem:
		cm = cm.DeepCopy()
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[rootKey] = pem
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	}
	if err != nil {
		p.log.Warn("publish root certificate", "namespace", ns, "err", err)
	}
}
