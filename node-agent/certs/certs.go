// Package certs keeps the node agent's workload certificates: one SVID per
// identity (service account) with pods on the node, issued by meshd's CA
// through Istio's IstioCertificateService, renewed at half-life, the valid
// one kept when renewal fails. Keys are generated here and never leave the
// agent's memory.
//
// It must not decide which identities a node may hold: the CA decides (a
// node agent gets certificates only for pods on its node).
package certs

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"

	"github.com/meshlet/meshlet/pkg/ca/caclient"
	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// Options configures a Manager.
type Options struct {
	// Conn is the gRPC connection to meshd's CA (15012, TLS). Required.
	Conn grpc.ClientConnInterface
	// Token returns the agent's service account token, sent as a bearer
	// token with every request. Required.
	Token func(ctx context.Context) (string, error)
	// TTL is the requested certificate lifetime. Zero means the CA's default.
	TTL time.Duration
	// OnError is told of failed renewals. Nil drops them.
	OnError func(id spiffeid.ID, err error)
}

// Manager holds one renewing SVID source per identity.
type Manager struct {
	opts   Options
	issue  func(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error)
	ctx    context.Context
	cancel context.CancelFunc

	mu      sync.Mutex
	sources map[spiffeid.ID]*entry
}

type entry struct {
	src    *identity.SVIDSource
	ready  chan struct{} // closed after the first issuance attempt
	err    error         // of the first attempt
	cancel context.CancelFunc
}

// New returns a Manager; Close stops its renewals.
func New(opts Options) (*Manager, error) {
	if opts.Conn == nil || opts.Token == nil {
		return nil, errors.New("certs: Options.Conn and Token are required")
	}
	issue, err := caclient.New(caclient.Options{Conn: opts.Conn, Token: opts.Token, TTL: opts.TTL})
	if err != nil {
		return nil, fmt.Errorf("certs: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	return &Manager{opts: opts, issue: issue, ctx: ctx, cancel: cancel, sources: map[spiffeid.ID]*entry{}}, nil
}

// SVID returns the source for id, issuing the first certificate on first
// use (and waiting for it) and renewing it in the background from then on.
func (m *Manager) SVID(ctx context.Context, id spiffeid.ID) (x509svid.Source, error) {
	m.mu.Lock()
	e, ok := m.sources[id]
	if !ok {
		e = &entry{src: identity.NewSVIDSource(nil), ready: make(chan struct{})}
		m.sources[id] = e
		rctx, cancel := context.WithCancel(m.ctx)
		e.cancel = cancel
		go m.run(rctx, id, e)
	}
	m.mu.Unlock()
	select {
	case <-e.ready:
	case <-ctx.Done():
		return nil, fmt.Errorf("certificate for %s: %w", id, ctx.Err())
	}
	if e.err != nil {
		// Forget the failed entry so the next caller tries again.
		m.mu.Lock()
		if m.sources[id] == e {
			delete(m.sources, id)
			e.cancel()
		}
		m.mu.Unlock()
		return nil, e.err
	}
	return e.src, nil
}

func (m *Manager) run(ctx context.Context, id spiffeid.ID, e *entry) {
	r, err := identity.NewRenewer(identity.RenewerOptions{ID: id, Source: e.src, Issue: m.issue,
		OnError: func(err error) {
			if m.opts.OnError != nil {
				m.opts.OnError(id, err)
			}
		}})
	if err == nil {
		err = r.Renew(ctx)
	}
	e.err = err
	close(e.ready)
	if err != nil {
		return
	}
	_ = r.Run(ctx)
}

// Certificates lists the identities held with their current certificate's
// expiry (reported to meshd in the xDS node metadata).
func (m *Manager) Certificates() []xdsnode.NodeCert {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]xdsnode.NodeCert, 0, len(m.sources))
	for id, e := range m.sources {
		if exp := e.src.Expiry(); !exp.IsZero() {
			out = append(out, xdsnode.NodeCert{Identity: id.String(), NotAfter: exp})
		}
	}
	slices.SortFunc(out, func(a, b xdsnode.NodeCert) int { return strings.Compare(a.Identity, b.Identity) })
	return out
}

// Dump describes the certificates held, sorted by identity, for the config
// dump (public facts only).
func (m *Manager) Dump() []configdump.Certificate {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([]configdump.Certificate, 0, len(m.sources))
	for id, e := range m.sources {
		if svid, err := e.src.GetX509SVID(); err == nil {
			if c, ok := configdump.CertificateOf(id.String(), svid.Certificates); ok {
				out = append(out, c)
			}
		}
	}
	slices.SortFunc(out, func(a, b configdump.Certificate) int { return strings.Compare(a.Identity, b.Identity) })
	return out
}

// Forget stops renewing id (no pod on the node uses it any more).
func (m *Manager) Forget(id spiffeid.ID) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if e, ok := m.sources[id]; ok {
		e.cancel()
		delete(m.sources, id)
	}
}

// Close stops every renewal.
func (m *Manager) Close() error {
	m.cancel()
	return nil
}
