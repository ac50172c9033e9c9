package main

import (
	"context"
	"crypto/x509"
	"log/slog"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/xds"
)

// trustBundle is the pushed form of the roots: one entry per root, so both
// old and new are there during a rotation.
func trustBundle(td spiffeid.TrustDomain, roots []*x509.Certificate) *meshv1.TrustBundle {
	b := &meshv1.TrustBundle{TrustDomain: td.Name()}
	for _, r := range roots {
		b.RootsPem = append(b.RootsPem, string(ca.EncodePEM([]*x509.Certificate{r})))
	}
	return b
}

// caRotation follows the CA Secret (a plugged-in cacerts replaced by the
// operator, or another replica's generated root) and switches the CA to new
// material in the order that keeps every peer verifying every other:
//  1. the new roots, with the old ones, are pushed to every client and
//     written to every namespace's istio-ca-root-cert;
//  2. it waits until every connected client has acknowledged them (bounded
//     by ackWait: a client that never answers must not stall the CA; it
//     gets the new roots when it reconnects);
//  3. only then the CA signs with the new key, and meshd's own serving
//     certificate is reissued under it.
//
// The old roots stay trusted for as long as this meshd runs, so certificates
// they signed keep verifying until they expire (24h by default). A restarted
// meshd trusts what the Secret's root-cert.pem holds: during a rotation that
// should be both roots, as Istio documents for cacerts.
type caRotation struct {
	store     ca.Store
	authority *ca.CA
	xds       *xds.Server
	publish   func(ctx context.Context, rootsPEM string) // writes istio-ca-root-cert everywhere
	serving   *servingCert
	td        spiffeid.TrustDomain
	ackWait   time.Duration
	log       *slog.Logger
}

func (r *caRotation) run(ctx context.Context, every time.Duration) {
	if every <= 0 {
		return
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
			r.check(ctx)
		}
	}
}

// check rotates when the Secret holds material the CA does not sign with.
// It reports whether a rotation happened.
func (r *caRotation) check(ctx context.Context) bool {
	lctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	keys, err := r.store.Load(lctx)
	cancel()
	if err != nil {
		r.log.Warn("re-read the CA Secret; keeping the current CA", "err", err)
		return false
	}
	if r.authority.SignsWith(keys) {
		return false
	}
	roots, err := r.authority.RotationRoots(keys)
	if err != nil {
		r.log.Error("the CA Secret changed but its material is invalid; keeping the current CA (fix the Secret: cert-chain.pem must chain ca-cert.pem to root-cert.pem)", "err", err)
		return false
	}
	gen, err := r.xds.PushTrustBundle(trustBundle(r.td, roots))
	if err != nil {
		r.log.Error("push the rotated roots; keeping the current CA", "err", err)
		return false
	}
	r.publish(ctx, string(ca.EncodePEM(roots)))
	pending := r.waitAcks(ctx, gen)
	if len(pending) > 0 {
		r.log.Warn("CA rotation: some clients did not acknowledge the new roots in time; they get them when they reconnect", "clients", pending, "waited", r.ackWait)
	}
	if err := r.authority.Rotate(keys, roots); err != nil {
		r.log.Error("rotate the CA", "err", err)
		return false
	}
	r.serving.reset()
	r.log.Info("CA rotated: signing with the new key; old roots stay trusted", "roots", len(roots))
	return true
}

// waitAcks waits until every client connected now has acknowledged the
// trust bundle at generation gen or later, the push of the new roots (a
// client that connected since got them in its first response; an ACK of
// a bundle that changed for another reason before, its aliases, does not
// count), and returns those still pending when ackWait runs out.
func (r *caRotation) waitAcks(ctx context.Context, gen uint64) []string {
	deadline := time.Now().Add(r.ackWait)
	for {
		pending := withoutAck(r.xds.Clients(), gen)
		if len(pending) == 0 || time.Now().After(deadline) || ctx.Err() != nil {
			return pending
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// withoutAck names the clients that have not ACKed the trust bundle at
// generation gen or later.
func withoutAck(clients []xds.ClientStatus, gen uint64) []string {
	var pending []string
	for _, c := range clients {
		if !c.AckedAtLeast(meshv1.TrustBundleType, gen) {
			pending = append(pending, c.NodeID)
		}
	}
	return pending
}
