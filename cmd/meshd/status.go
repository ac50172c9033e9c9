package main

import (
	"context"
	"crypto/x509"
	"encoding/json"
	"fmt"
	"log/slog"
	"sort"
	"sync"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/meshstatus"
	"github.com/meshlet/meshlet/pkg/xds"
)

// The status report (pkg/meshstatus): each meshd replica publishes who is
// connected to it and what they acknowledged in a ConfigMap of its own
// namespace, owned by the replica's Pod so that it goes away with it.

// statusPublisher keeps the report current.
type statusPublisher struct {
	kube      kubernetes.Interface
	namespace string
	pod       string // this replica's pod name; empty disables publishing
	clients   func() []xds.ClientStatus
	log       *slog.Logger

	mu    sync.Mutex
	certs map[string]meshstatus.Cert // caller|identity -> latest
}

// issued records a signed certificate (ca.ServerOptions.Issued).
func (p *statusPublisher) issued(c ca.Caller, leaf *x509.Certificate) {
	r := meshstatus.Cert{NotAfter: leaf.NotAfter}
	if len(leaf.URIs) > 0 {
		r.Identity = leaf.URIs[0].String()
	}
	if c.PodName != "" {
		r.Pod = c.Namespace + "/" + c.PodName
	}
	r.Node = c.NodeName
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.certs == nil {
		p.certs = map[string]meshstatus.Cert{}
	}
	p.certs[r.Node+"|"+r.Pod+"|"+r.Identity] = r
}

func (p *statusPublisher) report(now time.Time, generation string) meshstatus.Report {
	rep := meshstatus.Report{Meshd: p.pod, Updated: now.UTC(), Generation: generation, Clients: []meshstatus.Client{}, Certs: []meshstatus.Cert{}}
	for _, c := range p.clients() {
		cr := meshstatus.Client{NodeID: c.NodeID, Role: string(c.Principal.Role), Node: c.Principal.Node,
			Namespace: c.Principal.Namespace, Name: c.Principal.Name, Connected: c.Connected.UTC(), Acked: c.Acked}
		if n := c.LastNACK; n != nil {
			cr.NACK = &meshstatus.NACK{TypeURL: n.TypeURL, Version: n.Version, Error: n.Message, At: n.At.UTC()}
		}
		for _, nc := range c.Certs {
			cr.Certs = append(cr.Certs, meshstatus.Cert{Node: c.Principal.Node, Identity: nc.Identity, NotAfter: nc.NotAfter.UTC()})
		}
		rep.Clients = append(rep.Clients, cr)
	}
	p.mu.Lock()
	for k, c := range p.certs {
		if now.After(c.NotAfter) {
			delete(p.certs, k) // expired: no longer anyone's current certificate
			continue
		}
		rep.Certs = append(rep.Certs, c)
	}
	p.mu.Unlock()
	sort.Slice(rep.Certs, func(i, j int) bool {
		a, b := rep.Certs[i], rep.Certs[j]
		return a.Node+a.Pod+a.Identity < b.Node+b.Pod+b.Identity
	})
	return rep
}

// run publishes the report every meshstatus.Interval until ctx ends.
func (p *statusPublisher) run(ctx context.Context, generation func() string) {
	if p.pod == "" {
		p.log.Info("status report disabled: POD_NAME is not set")
		return
	}
	owner, err := p.kube.CoreV1().Pods(p.namespace).Get(ctx, p.pod, metav1.GetOptions{})
	if err != nil {
		p.log.Warn("status report disabled: cannot read own pod", "pod", p.pod, "err", err)
		return
	}
	t := time.NewTicker(meshstatus.Interval)
	defer t.Stop()
	for {
		if err := p.publish(ctx, owner, generation()); err != nil && ctx.Err() == nil {
			p.log.Warn("publish status report", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (p *statusPublisher) publish(ctx context.Context, owner *corev1.Pod, generation string) error {
	b, err := json.Marshal(p.report(time.Now(), generation))
	if err != nil {
		return fmt.Errorf("encode status: %w", err)
	}
	name := meshstatus.NamePrefix + p.pod
	cms := p.kube.CoreV1().ConfigMaps(p.namespace)
	cm, err := cms.Get(ctx, name, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		cm = &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: p.namespace,
			Labels:          map[string]string{meshstatus.Label: "true", "app.kubernetes.io/part-of": "meshlet"},
			OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Pod", Name: owner.Name, UID: owner.UID}}},
			Data: map[string]string{meshstatus.Key: string(b)}}
		_, err = cms.Create(ctx, cm, metav1.CreateOptions{})
		return err
	}
	if err != nil {
		return err
	}
	cm = cm.DeepCopy()
	cm.Data = map[string]string{meshstatus.Key: string(b)}
	_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
	return err
}
