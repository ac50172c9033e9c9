package hbone

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"golang.org/x/net/http2"
)

// This file re-verifies established connections when the trust changes
// (Server.Reverify, Dialer.Reverify): TLS verifies a peer once, at the
// handshake, so a peer whose trust domain alias was taken back, or whose
// root left the bundle, would otherwise keep its tunnel for as long as it
// keeps it busy.

// peerTrust is a connection's peer as the handshake verified it, kept to
// verify it again.
type peerTrust struct {
	id    spiffeid.ID
	chain []*x509.Certificate // as presented, leaf first
	// at is when the handshake verified the chain. It is verified again as
	// of then: what Reverify asks is whether the trust still covers the
	// peer, not whether its certificate outlived the connection, which TLS
	// never asks. Checked at the time of the change instead, a long-lived
	// tunnel of a peer that renewed long ago would be cut by any change of
	// trust, however unrelated to it.
	at time.Time

	mu sync.Mutex
	// roots and chains are what the chain last verified against, and
	// the verified chains; nil before the first Reverify. Another chain
	// verification is needed only when the roots of the peer's trust
	// domain differ from them: a Reverify after a change of something
	// else costs a comparison per connection, no signature.
	roots   *x509bundle.Bundle
	chains  [][]*x509.Certificate
	revoked bool
}

// newPeerTrust keeps what the handshake in cs verified, nil when it holds
// no SPIFFE peer (which a handshake of ours never lets through).
func newPeerTrust(cs tls.ConnectionState, at time.Time) *peerTrust {
	if len(cs.PeerCertificates) == 0 {
		return nil
	}
	id, err := x509svid.IDFromCert(cs.PeerCertificates[0])
	if err != nil {
		return nil
	}
	return &peerTrust{id: id, chain: cs.PeerCertificates, at: at}
}

// recheck verifies the peer again as the handshake did, against bundle and
// authorize as they are now. It returns why the peer no longer passes the
// first time it does not, and nil otherwise, so that a connection is
// closed, logged and counted once however many Reverify calls meet it.
func (p *peerTrust) recheck(bundle x509bundle.Source, authorize tlsconfig.Authorizer) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.revoked {
		return nil
	}
	err := p.verifyLocked(bundle, authorize)
	if err != nil {
		p.revoked = true
	}
	return err
}

func (p *peerTrust) verifyLocked(bundle x509bundle.Source, authorize tlsconfig.Authorizer) error {
	// The roots are taken once and the chain verified against them, not
	// against bundle, so that what is remembered is what was verified.
	roots, err := bundle.GetX509BundleForTrustDomain(p.id.TrustDomain())
	if err != nil {
		p.roots, p.chains = nil, nil
		return err
	}
	if roots != p.roots && !roots.Equal(p.roots) {
		p.roots, p.chains = nil, nil
		_, chains, err := x509svid.Verify(p.chain, roots, x509svid.WithTime(p.at))
		if err != nil {
			return err
		}
		p.roots, p.chains = roots, chains
	}
	return authorize(p.id, p.chains)
}

// wasRevoked reports whether Reverify closed the connection.
func (p *peerTrust) wasRevoked() bool {
	if p == nil {
		return false
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.revoked
}

// untrusted is a connection Reverify ends.
type untrusted struct {
	c      *conn
	remote net.Addr
	peer   spiffeid.ID
	err    error
}

// reverifyConns rechecks each connection's peer with check, and ends those
// that fail: at once none takes a new stream, and all are closed
// together; it returns when they are, with what it closed.
func reverifyConns(conns []*conn, check func(*conn) error, logger *slog.Logger) []untrusted {
	var out []untrusted
	for _, c := range conns {
		if c.cfg.trust == nil {
			continue
		}
		err := check(c)
		if err == nil {
			continue
		}
		u := untrusted{c: c, remote: c.nc.RemoteAddr(), peer: c.cfg.trust.id, err: err}
		logger.Info("hbone connection closed: peer no longer trusted", "remote", u.remote, "peer", u.peer, "reason", err)
		c.refuseStreams()
		out = append(out, u)
	}
	var wg sync.WaitGroup
	for _, u := range out {
		wg.Add(1)
		go func() {
			defer wg.Done()
			u.c.flushAndClose(fmt.Errorf("%w: %s: %w", errUntrusted, u.peer, u.err))
		}()
	}
	wg.Wait()
	return out
}

// errUntrusted ends the streams of a connection Reverify closed.
var errUntrusted = errors.New("hbone: peer no longer trusted")

// refuseStreams makes a connection whose peer is no longer trusted take no
// new stream, and queues GOAWAY INADEQUATE_SECURITY (the peer's identity
// no longer meets ours) for flushAndClose to send.
//
// The streams in flight get no grace, unlike Shutdown's: they are reset
// when the connection closes, right after. The peer is one we no longer
// trust, and deny by default holds for bytes as for connections; the
// streams a mesh tunnel carries are mostly long-lived TCP connections,
// which a grace of seconds would not see end but would leave open to the
// peer; their clients reconnect, through a handshake the peer must pass.
func (c *conn) refuseStreams() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	c.closing = true
	if !c.goAwaySent {
		c.goAwaySent = true
		c.queueLocked(ctlFrame{kind: ctlGoAway, id: c.maxPeerStream, code: http2.ErrCodeInadequateSecurity})
	}
}
