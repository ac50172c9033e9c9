// Package tunnel connects the per-pod proxies to pkg/hbone: the client side
// dials from the source pod's network namespace (one pooled Dialer per pod,
// so a pooled connection always carries that pod's address), presents the
// pod's SVID and requires the peer to present the identity the model names
// (or its form in one of the trust domain's aliases);
// the server side serves a pod's 15008 listener with the pod's SVID, asking
// the proxy to check a stream before it is accepted (a refusal is a 403) and
// to serve it after.
//
// It must not decide anything itself: where to go, which identity to expect
// and whether to serve come from the proxy and the model.
package tunnel

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/hbone"
)

// Options configures a Tunnel.
type Options struct {
	// TrustDomain is the trust domain peers come from (it or one of its
	// aliases). Required.
	TrustDomain spiffeid.TrustDomain
	// Bundle holds the roots peers' SVIDs are verified against, an
	// alias's too. Required.
	Bundle x509bundle.Source
	// TrustDomainAliases, if set, returns the trust domains that name the
	// same workloads as td (the aliases meshd pushes with the trust
	// bundle: identity.BundleSource's Aliases), asked at each handshake:
	// a pod's 15008 accepts peers of TrustDomain's aliases, and a peer
	// presenting the expected identity's path in an alias passes as that
	// identity. Nil: TrustDomain only.
	TrustDomainAliases func(td spiffeid.TrustDomain) []spiffeid.TrustDomain
	// SVID returns the certificate source for a workload identity (one per
	// service account with pods on the node). Required.
	SVID func(ctx context.Context, id spiffeid.ID) (x509svid.Source, error)
	// Mark is the SO_MARK of the tunnel's TCP connections, so the eBPF
	// connect hook leaves them alone. Zero sets none.
	Mark uint32
	// DrainTimeout bounds a pod's open streams once its listener closes.
	// Zero means 30s.
	DrainTimeout time.Duration
}

// Tunnel implements the mesh's Dial and Serve hooks with pkg/hbone.
type Tunnel struct {
	opts    Options
	mu      sync.Mutex
	dialers map[string]*hbone.Dialer // by source netns path
	servers map[*tunnelServer]struct{}
}

// New checks opts and returns a Tunnel.
func New(opts Options) (*Tunnel, error) {
	if opts.TrustDomain.IsZero() || opts.Bundle == nil || opts.SVID == nil {
		return nil, errors.New("tunnel: Options.TrustDomain, Bundle and SVID are required")
	}
	if opts.DrainTimeout == 0 {
		opts.DrainTimeout = 30 * time.Second
	}
	return &Tunnel{opts: opts, dialers: map[string]*hbone.Dialer{}, servers: map[*tunnelServer]struct{}{}}, nil
}

func (t *Tunnel) dialer(nsPath string) (*hbone.Dialer, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if d, ok := t.dialers[nsPath]; ok {
		return d, nil
	}
	mark := t.opts.Mark
	d, err := hbone.NewDialer(hbone.DialerOptions{
		Bundle: t.opts.Bundle, TrustDomainAliases: t.opts.TrustDomainAliases,
		DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
			return netns.Dial(ctx, nsPath, addr, netns.DialOptions{Mark: mark})
		},
	})
	if err != nil {
		return nil, err
	}
	t.dialers[nsPath] = d
	return d, nil
}

// Dial opens one stream from src to d through d.Via.
func (t *Tunnel) Dial(ctx context.Context, src proxy.Pod, d proxy.Destination) (io.ReadWriteCloser, error) {
	local, err := t.svidOf(ctx, src.Identity)
	if err != nil {
		return nil, err
	}
	peer, err := spiffeid.FromString(d.Identity)
	if err != nil {
		return nil, fmt.Errorf("tunnel to %s: expected peer identity %q: %w", d.Via, d.Identity, err)
	}
	dl, err := t.dialer(src.Netns)
	if err != nil {
		return nil, err
	}
	c, err := dl.Dial(ctx, hbone.Target{Local: local, Proxy: d.Via, PeerID: peer, Addr: d.Target, Source: d.Source})
	if err != nil {
		return nil, err
	}
	return c, nil
}

// Server makes the HBONE server of pod's 15008, serving streams through h.
// Its Shutdown waits for open streams at most DrainTimeout.
func (t *Tunnel) Server(pod proxy.Pod, h proxy.StreamHandler) (proxy.TunnelServer, error) {
	id, err := spiffeid.FromString(pod.Identity)
	if err != nil {
		return nil, fmt.Errorf("tunnel: pod identity %q: %w", pod.Identity, err)
	}
	// The certificate is fetched at the first handshake, and again at the
	// next one while meshd cannot issue it (an agent starting beside a
	// meshd that is not up yet): the listener stays open throughout, and
	// serves as soon as an SVID is there, without an agent restart.
	svid := &lazySVID{get: func(ctx context.Context) (x509svid.Source, error) { return t.opts.SVID(ctx, id) }}
	opts := hbone.ServerOptions{
		SVID: svid, Bundle: t.opts.Bundle, TrustDomain: t.opts.TrustDomain, TrustDomainAliases: t.opts.TrustDomainAliases,
		Authorize: func(ctx context.Context, r *hbone.Request) error { return h.CheckStream(ctx, streamOf(r)) },
		Handler:   func(ctx context.Context, r *hbone.Request) error { return h.ServeStream(ctx, streamOf(r)) },
	}
	if r, ok := h.(proxy.ConnRefuser); ok {
		opts.OnRefusedConn = r.RefuseConn
	}
	srv, err := hbone.NewServer(opts)
	if err != nil {
		return nil, err
	}
	// Asked for now rather than at the first handshake, as ztunnel
	// prefetches its workloads' certificates: the pod's first connection,
	// in or out (one certificate per service account), then does not wait
	// for meshd to sign one. A failure here is tried again at the first
	// handshake.
	go func() { _, _ = svid.GetX509SVID() }()
	ts := &tunnelServer{Server: srv, drain: t.opts.DrainTimeout, t: t}
	t.mu.Lock()
	t.servers[ts] = struct{}{}
	t.mu.Unlock()
	return ts, nil
}

type tunnelServer struct {
	*hbone.Server
	drain time.Duration
	t     *Tunnel
}

func (s *tunnelServer) Shutdown(ctx context.Context) error {
	s.t.mu.Lock()
	delete(s.t.servers, s)
	s.t.mu.Unlock()
	ctx, cancel := context.WithTimeout(ctx, s.drain)
	defer cancel()
	if err := s.Server.Shutdown(ctx); err != nil && !errors.Is(err, hbone.ErrServerClosed) {
		return err
	}
	return nil
}

// Reverify checks every established tunnel connection, in and out, against
// the trust of now, and closes those whose peer no longer passes (an alias
// taken back, a root gone from the bundle: hbone's Server.Reverify and
// Dialer.Reverify); it returns how many it closed. The pods' servers
// report theirs as refused (hbone.RefusedUntrusted) to their proxies.
// Call it when the trust changed: identity.BundleSource's Watch.
func (t *Tunnel) Reverify() int {
	t.mu.Lock()
	dialers := make([]*hbone.Dialer, 0, len(t.dialers))
	for _, d := range t.dialers {
		dialers = append(dialers, d)
	}
	servers := make([]*tunnelServer, 0, len(t.servers))
	for s := range t.servers {
		servers = append(servers, s)
	}
	t.mu.Unlock()
	n := 0
	for _, d := range dialers {
		n += d.Reverify()
	}
	for _, s := range servers {
		n += s.Reverify()
	}
	return n
}

// Forget closes the pooled connections of a pod that left the mesh.
func (t *Tunnel) Forget(pod proxy.Pod) {
	t.mu.Lock()
	d, ok := t.dialers[pod.Netns]
	delete(t.dialers, pod.Netns)
	t.mu.Unlock()
	if ok {
		d.Close()
	}
}

func (t *Tunnel) svidOf(ctx context.Context, identity string) (x509svid.Source, error) {
	id, err := spiffeid.FromString(identity)
	if err != nil {
		return nil, fmt.Errorf("tunnel: pod identity %q: %w", identity, err)
	}
	s, err := t.opts.SVID(ctx, id)
	if err != nil {
		return nil, fmt.Errorf("tunnel: SVID for %s: %w", id, err)
	}
	return s, nil
}

func streamOf(r *hbone.Request) proxy.Stream {
	s := proxy.Stream{Peer: r.Peer.String(), Source: r.Source, Target: r.Target}
	if r.Stream != nil {
		s.Conn = r.Stream
	}
	if ta, ok := r.RemoteAddr.(*net.TCPAddr); ok {
		ap := ta.AddrPort()
		s.PeerAddr = ap.Addr().Unmap()
		if !s.Source.IsValid() {
			s.Source = netip.AddrPortFrom(s.PeerAddr, ap.Port())
		}
	}
	return s
}

// lazySVID is an x509svid.Source that obtains its source on first use, and
// retries on each use until that succeeds.
type lazySVID struct {
	get func(ctx context.Context) (x509svid.Source, error)

	mu  sync.Mutex
	src x509svid.Source
}

// GetX509SVID implements x509svid.Source.
func (l *lazySVID) GetX509SVID() (*x509svid.SVID, error) {
	l.mu.Lock()
	src := l.src
	l.mu.Unlock()
	if src == nil {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		s, err := l.get(ctx)
		if err != nil {
			return nil, fmt.Errorf("tunnel: no certificate yet: %w", err)
		}
		l.mu.Lock()
		if l.src == nil {
			l.src = s
		}
		src = l.src
		l.mu.Unlock()
	}
	return src.GetX509SVID()
}
