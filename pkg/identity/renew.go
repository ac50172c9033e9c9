package identity

import (
	"context"
	"crypto/x509"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// RenewerOptions configure a Renewer.
type RenewerOptions struct {
	// ID is the identity to keep an SVID for. Required.
	ID spiffeid.ID
	// Source receives each new SVID. Required; it may start empty.
	Source *SVIDSource
	// Issue sends a CSR (DER) to the CA and returns the issued chain, leaf
	// first. Required.
	Issue func(ctx context.Context, csrDER []byte) ([]*x509.Certificate, error)
	// MinBackoff is the first retry delay after a failed renewal; zero means 1s.
	MinBackoff time.Duration
	// MaxBackoff caps the retry delay; zero means 1m.
	MaxBackoff time.Duration
	// OnError, if set, is told of every failed renewal (the valid SVID stays in
	// use). Nil means failures are only retried.
	OnError func(error)
}

// Renewer keeps an SVIDSource holding a valid SVID: it renews at half of the
// certificate's lifetime and, when renewal fails, keeps the current SVID and
// retries with jittered exponential backoff.
type Renewer struct {
	opts RenewerOptions
}

// NewRenewer checks opts and returns a Renewer.
func NewRenewer(opts RenewerOptions) (*Renewer, error) {
	if opts.ID.IsZero() || opts.Source == nil || opts.Issue == nil {
		return nil, errors.New("new renewer: ID, Source and Issue are required")
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = time.Second
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = time.Minute
	}
	if opts.MaxBackoff < opts.MinBackoff {
		opts.MaxBackoff = opts.MinBackoff
	}
	return &Renewer{opts: opts}, nil
}

// RenewAt returns when a certificate valid from notBefore to notAfter should be
// renewed: at half its lifetime.
func RenewAt(notBefore, notAfter time.Time) time.Time {
	return notBefore.Add(notAfter.Sub(notBefore) / 2)
}

// Renew issues one new SVID and stores it in the source.
func (r *Renewer) Renew(ctx context.Context) error {
	csr, key, err := NewCSR(r.opts.ID)
	if err != nil {
		return err
	}
	chain, err := r.opts.Issue(ctx, csr)
	if err != nil {
		return fmt.Errorf("issue SVID for %s: %w", r.opts.ID, err)
	}
	if len(chain) == 0 {
		return fmt.Errorf("issue SVID for %s: CA returned an empty chain", r.opts.ID)
	}
	raw := make([]byte, 0, 1024*len(chain))
	for _, c := range chain {
		raw = append(raw, c.Raw...)
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key: %w", err)
	}
	svid, err := x509svid.ParseRaw(raw, keyDER)
	if err != nil {
		return fmt.Errorf("parse issued SVID for %s: %w", r.opts.ID, err)
	}
	if svid.ID != r.opts.ID {
		return fmt.Errorf("issued SVID names %s, asked for %s", svid.ID, r.opts.ID)
	}
	return r.opts.Source.Set(svid)
}

// Run renews until ctx is done, then returns ctx's error. It renews at once if
// the source is empty.
func (r *Renewer) Run(ctx context.Context) error {
	backoff := r.opts.MinBackoff
	for {
		wait := time.Duration(0)
		if svid, err := r.opts.Source.GetX509SVID(); err == nil {
			leaf := svid.Certificates[0]
			wait = time.Until(RenewAt(leaf.NotBefore, leaf.NotAfter))
		}
		if wait > 0 {
			if err := sleep(ctx, wait); err != nil {
				return err
			}
		}
		err := r.Renew(ctx)
		if err == nil {
			backoff = r.opts.MinBackoff
			continue
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if r.opts.OnError != nil {
			r.opts.OnError(err)
		}
		// Full jitter in [backoff/2, backoff], so replicas do not retry in step.
		d := backoff/2 + rand.N(backoff/2+1)
		if err := sleep(ctx, d); err != nil {
			return err
		}
		backoff = min(backoff*2, r.opts.MaxBackoff)
	}
}

func sleep(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-t.C:
		return nil
	}
}
