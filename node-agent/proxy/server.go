package proxy

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/meshlet/meshlet/node-agent/netns"
	"github.com/meshlet/meshlet/node-agent/poller"
)

// Proxy is one enrolled pod's set of listeners and the connections they
// carry.
type Proxy struct {
	opts Options

	mu        sync.Mutex
	listeners []net.Listener // *poller.Listener: Close stops accepting
	tunnel    TunnelServer   // nil without Options.Tunnel
	conns     map[io.Closer]struct{}
	draining  bool // listeners closing: no new connection is accepted
	// stopped: every listener is closed, so the connection count only falls
	// from here (Drain waits on it).
	stopped bool
	wg      sync.WaitGroup // open connections
}

// Start opens the pod's listeners inside its netns (with SO_REUSEPORT, so a
// new agent can open its own beside them during a handoff) and serves them.
// No goroutine waits on them: the Poller accepts for every pod.
func Start(opts Options) (*Proxy, error) {
	if err := opts.check(); err != nil {
		return nil, err
	}
	p := &Proxy{opts: opts, conns: map[io.Closer]struct{}{}}
	fail := func(err error) (*Proxy, error) {
		for _, ln := range p.listeners {
			ln.Close()
		}
		if p.tunnel != nil {
			ctx, cancel := context.WithCancel(context.Background())
			cancel()
			_ = p.tunnel.Shutdown(ctx)
		}
		return nil, fmt.Errorf("start proxy for %s/%s: %w", opts.Pod.Namespace, opts.Pod.Name, err)
	}
	pl := opts.Poller
	if pl == nil {
		var err error
		if pl, err = poller.Shared(); err != nil {
			return fail(err)
		}
	}
	lo := netns.ListenOptions{Mark: opts.Mark, ReusePort: true}
	listen := func(port int, serve func(net.Conn)) error {
		// Bind the wildcard: 15001 receives loopback-rewritten connects,
		// 15006 connections assigned by the tc program, 15008 the tunnel.
		ln, err := netns.Listen(opts.Pod.Netns, net.JoinHostPort("", strconv.Itoa(port)), lo)
		if err != nil {
			return err
		}
		pln, err := pl.Accept(ln, serve)
		if err != nil {
			ln.Close()
			return err
		}
		p.listeners = append(p.listeners, pln)
		return nil
	}
	if opts.Tunnel != nil {
		// Made before any listener serves, so that 15008 never accepts a
		// connection with no server for it.
		ts, err := opts.Tunnel(p)
		if err != nil {
			return fail(err)
		}
		p.tunnel = ts
	}
	if opts.OriginalDst != nil {
		if err := listen(PortOutbound, p.served(p.serveOutbound)); err != nil {
			return fail(err)
		}
	}
	if err := listen(PortInbound, p.served(p.servePlaintext)); err != nil {
		return fail(err)
	}
	if p.tunnel != nil {
		if err := listen(PortTunnel, p.tunnel.ServeConn); err != nil {
			return fail(err)
		}
	}
	return p, nil
}

// served is the poller's accepted function for a listener: the connection
// is tracked before the poller goes on (so that once Drain has closed the
// listeners, every connection they accepted is counted), then served on a
// goroutine of its own.
func (p *Proxy) served(serve func(net.Conn)) func(net.Conn) {
	return func(c net.Conn) {
		if !p.track(c) {
			reset(c)
			return
		}
		go func() {
			defer p.untrack(c)
			serve(c)
		}()
	}
}

// track registers an open connection. A connection accepted while the
// listeners are closing is served like any other (resetting it would fail a
// client that reached us just before the handoff); only after every
// listener is closed and the tunnel server has stopped is it refused.
func (p *Proxy) track(c io.Closer) bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.stopped {
		return false
	}
	p.conns[c] = struct{}{}
	p.wg.Add(1)
	return true
}

func (p *Proxy) untrack(c io.Closer) {
	p.mu.Lock()
	delete(p.conns, c)
	p.mu.Unlock()
	p.wg.Done()
}

// serveOutbound carries one connection the pod opened: find where it was
// going, resolve it, and tunnel it (or pass it through).
func (p *Proxy) serveOutbound(down net.Conn) {
	o := &p.opts
	dst, err := o.OriginalDst(down)
	if err != nil {
		p.refuse(&connInfo{connLabels: connLabels{reporter: "source", src: o.Pod.Workload}, srcAddr: p.clientAddr(down, netip.Addr{})},
			ReasonNoOrigDst, err.Error)
		o.Errorf("outbound from %s/%s: original destination: %v", o.Pod.Namespace, o.Pod.Name, err)
		reset(down)
		return
	}
	// What the events of this connection say, filled in as it is known.
	info := connInfo{connLabels: connLabels{reporter: "source", src: o.Pod.Workload}, srcAddr: p.clientAddr(down, dst.Addr()), dstAddr: dst}
	if o.Pod.owns(dst.Addr()) && isMeshPort(dst.Port()) || dst.Addr().IsLoopback() && isMeshPort(dst.Port()) {
		info.dst = o.Pod.Workload
		p.refuse(&info, ReasonMeshPort, func() string { return fmt.Sprintf("connect to mesh port %d", dst.Port()) })
		reset(down)
		return
	}
	if o.DNS != nil && dst.Port() == dnsPort {
		// DNS over TCP: the pod's DNS proxy answers it, mesh names
		// included, and forwards the rest to dst itself. Counted as a
		// passthrough connection to a destination outside the mesh.
		cc := p.open(&info)
		opened := p.tapOpened(&info)
		o.DNS(countConn(down, cc), dst)
		if cc != nil {
			cc.closed.Add(1)
			p.tapClosed(&info, opened, cc.bytes)
		}
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.DialTimeout)
	defer cancel()
	var up io.ReadWriteCloser
	var labels connLabels
	var d Destination
	for wait := 50 * time.Millisecond; ; wait *= 2 {
		inMesh := false
		d = Destination{}
		if o.Resolve != nil {
			d, inMesh = o.Resolve(o.Pod, dst)
		}
		labels = connLabels{reporter: "source", src: o.Pod.Workload}
		info.dstAddr = dst
		if d.Target.IsValid() {
			info.dstAddr = d.Target
		}
		if inMesh {
			d.Source = info.srcAddr
			labels.dst, labels.service, labels.mutualTLS = d.Workload, d.Service, true
			// The destination's Drain waits for (then cuts) a same-node
			// connection too, as it does a tunnel stream. Once it has
			// stopped (the agent hands over to its successor), the tunnel
			// below reaches the successor's listener instead.
			if local := p.localPeer(d); local != nil && local.track(down) {
				defer local.untrack(down)
				if d.Release != nil {
					defer d.Release()
				}
				info.connLabels = labels
				p.serveLocal(ctx, down, local, d, &info)
				return
			}
			up, err = o.DialTunnel(ctx, o.Pod, d)
		} else {
			// Outside the mesh: dial it from the pod as the pod would
			// have (or the endpoint Resolve chose), marked so the connect
			// hook does not capture it again.
			target := dst
			if d.Target.IsValid() {
				target = d.Target
			}
			labels.service = d.Service
			up, err = netns.Dial(ctx, o.Pod.Netns, target.String(), netns.DialOptions{Mark: o.Mark})
		}
		// Nothing listens on the tunnel port while the model says the
		// destination is in the mesh: its node agent is enrolling the pod
		// (meshd's push can beat the agent's own watch) or has just
		// unenrolled it. Ask the model again shortly, for a moment.
		if err == nil || !inMesh || !errors.Is(err, syscall.ECONNREFUSED) || wait > refusedRetryMax {
			break
		}
		if d.Release != nil {
			d.Release()
		}
		select {
		case <-time.After(wait):
		case <-ctx.Done():
		}
	}
	if d.Release != nil {
		defer d.Release()
	}
	info.connLabels = labels
	if err != nil {
		p.refuse(&info, ReasonDialFailed, err.Error)
		o.Errorf("outbound %s/%s -> %s: %v", o.Pod.Namespace, o.Pod.Name, dst, err)
		reset(down)
		return
	}
	cc := p.open(&info)
	opened := p.tapOpened(&info)
	p.tapClosed(&info, opened, splice(down, up, cc))
}

// open counts c's opening and returns its counters: nil without Metrics,
// unless a tap may want its bytes.
func (p *Proxy) open(c *connInfo) *connCounters {
	cc := p.opts.Metrics.open(c.connLabels)
	if cc == nil && p.opts.Tap != nil {
		cc = &connCounters{closed: nopCounter{}, sent: nopCounter{}, received: nopCounter{}}
	}
	return cc
}

// localPeer returns the proxy of d's pod when it runs on this node and d
// goes straight to it: its own tunnel port (not a waypoint's), the
// identity the tunnel would have verified. Else nil: the tunnel.
func (p *Proxy) localPeer(d Destination) *Proxy {
	if p.opts.Local == nil || d.Via.Port() != PortTunnel || !d.Target.IsValid() {
		return nil
	}
	dp := p.opts.Local(d.Via.Addr().Unmap())
	if dp == nil || !dp.opts.Pod.owns(d.Target.Addr()) || dp.opts.Pod.Identity == "" || dp.opts.Pod.Identity != d.Identity {
		return nil
	}
	return dp
}

// serveLocal carries a connection to a mesh destination whose pod this
// agent also serves, without the tunnel: the destination's proxy decides
// on it as on a tunnel stream from this pod's identity (CheckStream:
// authorization with the source's principal and address), connects to the
// app keeping the client's address, and both ends count it as the agents
// at either end of a tunnel would.
//
// Why: a tunnel between two pods of one node costs two TLS 1.3 ends, an
// HTTP/2 stream and a second proxy hop inside one process, to carry bytes
// that never leave the node. The identity the tunnel would prove is the
// one the agent gave the source pod: the agent holds both pods' keys, so
// the TLS handshake would prove nothing the agent does not know. The
// connection is reported as mutual TLS, the policy it is held to (a
// STRICT PeerAuthentication serves it; a plaintext client is still
// refused on 15006). The caller has tracked down in dp (its Drain waits).
func (p *Proxy) serveLocal(ctx context.Context, down net.Conn, dp *Proxy, d Destination, info *connInfo) {
	o := &p.opts
	refuse := func(reason, policy string, err error) {
		info.policy = policy
		p.refuse(info, reason, err.Error)
		o.Errorf("outbound %s/%s -> %s (same node): %v", o.Pod.Namespace, o.Pod.Name, d.Target, err)
		reset(down)
	}
	s := Stream{Conn: down, Peer: o.Pod.Identity, Source: d.Source, PeerAddr: d.Source.Addr(), Target: d.Target}
	dd, err := dp.checkStream(ctx, s)
	if err != nil {
		reason, policy := ReasonDenied, ""
		if r := (*Refused)(nil); errors.As(err, &r) {
			reason, policy = r.Reason, r.Policy
		}
		refuse(reason, policy, err)
		return
	}
	src := Workload{Identity: o.Pod.Identity}
	if dp.opts.PeerWorkload != nil {
		src = dp.opts.PeerWorkload(d.Source.Addr(), o.Pod.Identity)
	}
	dinfo := connInfo{connLabels: connLabels{reporter: "destination", src: src, dst: dp.opts.Pod.Workload, mutualTLS: true},
		srcAddr: d.Source, dstAddr: d.Target, policy: dd.Policy}
	up, err := dp.dialApp(ctx, d.Source.Addr(), d.Target)
	if err != nil {
		dp.refuse(&dinfo, ReasonDialFailed, err.Error)
		refuse(ReasonDialFailed, "", err)
		return
	}
	scc, dcc := p.open(info), dp.open(&dinfo)
	sOpened, dOpened := p.tapOpened(info), dp.tapOpened(&dinfo)
	b := splice(down, up, joinCounters(scc, dcc))
	p.tapClosed(info, sOpened, b)
	dp.tapClosed(&dinfo, dOpened, b)
}

// refusedRetryMax bounds the retries of a tunnel dial refused by the
// destination: 50+100+...+800 ms, 1.5 s in all.
const refusedRetryMax = 800 * time.Millisecond

// CheckStream decides whether an inbound tunnel stream may be served: it
// must name this pod and an app port, and the peer must be authorized. It
// returns a *Refused (counted) or nil, and never touches s.Conn, so a tunnel
// server can call it before accepting the stream.
func (p *Proxy) CheckStream(ctx context.Context, s Stream) error {
	_, err := p.checkStream(ctx, s)
	return err
}

// checkStream is CheckStream, returning the authorization decision that
// let the stream in (its policy names the ALLOW, for the tap).
func (p *Proxy) checkStream(ctx context.Context, s Stream) (Decision, error) {
	o := &p.opts
	if !o.Pod.owns(s.Target.Addr()) {
		return Decision{}, p.refuseStream(s, ReasonNotThisPod, "", fmt.Sprintf("CONNECT to %s, which is not pod %s/%s", s.Target, o.Pod.Namespace, o.Pod.Name))
	}
	if isMeshPort(s.Target.Port()) {
		return Decision{}, p.refuseStream(s, ReasonMeshPort, "", fmt.Sprintf("CONNECT to mesh port %d", s.Target.Port()))
	}
	src := s.PeerAddr
	if !src.IsValid() {
		src = s.Source.Addr()
	}
	d := p.authorize(ctx, s.Peer, src, s.Target)
	if !d.Allow {
		return d, p.refuseStream(s, ReasonDenied, d.Policy, fmt.Sprintf("%s from %s to port %d: %s", s.Peer, src, s.Target.Port(), d.Reason))
	}
	return d, nil
}

// clientAddr is the app's address as the destination should see it: the
// capture hands the connection to 15001 over loopback, so a loopback source
// becomes the pod's own address of dst's family.
func (p *Proxy) clientAddr(down net.Conn, dst netip.Addr) netip.AddrPort {
	src := addrPort(down.RemoteAddr())
	if !src.Addr().IsLoopback() {
		return src
	}
	for _, ip := range p.opts.Pod.IPs {
		if ip.Is4() == dst.Is4() {
			return netip.AddrPortFrom(ip, src.Port())
		}
	}
	return src
}

// ServeStream serves one inbound tunnel stream: CheckStream, then connect
// to the app from inside the pod keeping the client's address. It returns a
// *Refused without touching the stream when it will not serve it, and nil
// once the stream is done.
func (p *Proxy) ServeStream(ctx context.Context, s Stream) error {
	d, err := p.checkStream(ctx, s)
	if err != nil {
		return err
	}
	// A stream that reaches us has been answered 200 already; serve it even
	// while draining (its client chose this connection before our GOAWAY).
	if !p.track(s.Conn) {
		return p.refuseStream(s, "draining", "", "agent has stopped")
	}
	up, err := p.dialApp(ctx, s.Source.Addr(), s.Target)
	if err != nil {
		p.untrack(s.Conn)
		return p.refuseStream(s, ReasonDialFailed, "", err.Error())
	}
	defer p.untrack(s.Conn)
	info := p.streamInfo(s, d.Policy)
	cc := p.open(&info)
	opened := p.tapOpened(&info)
	p.tapClosed(&info, opened, splice(s.Conn, up, cc))
	return nil
}

// streamInfo is what the events of tunnel stream s say, the source named
// by PeerWorkload.
func (p *Proxy) streamInfo(s Stream, policy string) connInfo {
	o := &p.opts
	src := Workload{Identity: s.Peer}
	if o.PeerWorkload != nil {
		src = o.PeerWorkload(s.Source.Addr(), s.Peer)
	}
	return connInfo{connLabels: connLabels{reporter: "destination", src: src, dst: o.Pod.Workload, mutualTLS: true},
		srcAddr: s.Source, dstAddr: s.Target, policy: policy}
}

// RefuseConn counts a tunnel connection to the pod's 15008 that the HBONE
// server refused before any stream (ConnRefuser): a client whose
// certificate did not verify (peer_unverified: no identity is known, the
// source is its address), a failed handshake, a client that is no HBONE
// client; or one it closed later because its client is no longer trusted
// (peer_untrusted: the trust changed under it). The reasons are the HBONE
// server's.
func (p *Proxy) RefuseConn(remote net.Addr, reason, detail string) {
	info := connInfo{connLabels: connLabels{reporter: "destination", dst: p.opts.Pod.Workload, mutualTLS: false},
		srcAddr: addrPort(remote)}
	p.refuse(&info, reason, func() string { return detail })
}

func (p *Proxy) refuseStream(s Stream, reason, policy, detail string) error {
	info := p.streamInfo(s, policy)
	p.refuse(&info, reason, func() string { return detail })
	return &Refused{Reason: reason, Detail: detail, Policy: policy}
}

// servePlaintext serves one inbound connection that did not come through
// the tunnel: PeerAuthentication first, then authorization without a
// principal, then the app.
func (p *Proxy) servePlaintext(down net.Conn) {
	o := &p.opts
	dst := addrPort(down.LocalAddr())
	if o.InboundDst != nil {
		dst = o.InboundDst(down)
	}
	src := addrPort(down.RemoteAddr())
	// What the events of this connection say. The source is known by its
	// address only: nothing proves who it is.
	info := connInfo{connLabels: connLabels{reporter: "destination", dst: o.Pod.Workload}, srcAddr: src, dstAddr: dst}
	refuse := func(reason string, detail func() string) {
		p.refuse(&info, reason, detail)
		reset(down)
	}
	if isMeshPort(dst.Port()) || !o.Pod.owns(dst.Addr()) {
		refuse(ReasonMeshPort, func() string { return fmt.Sprintf("plaintext to %s: a mesh port, or not this pod", dst) })
		return
	}
	mode := ModePermissive
	if o.PeerAuth != nil {
		mode = o.PeerAuth(o.Pod, dst.Port())
	}
	probe := o.ProbeExempt != nil && o.ProbeExempt(src.Addr(), dst.Port())
	if mode == ModeStrict && !probe {
		refuse(ReasonStrict, func() string {
			return fmt.Sprintf("plaintext to port %d, where PeerAuthentication is STRICT", dst.Port())
		})
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), o.DialTimeout)
	defer cancel()
	// A kubelet probe is not the workload's traffic: L4 policies do not
	// apply to it, or an ALLOW for some identity would fail the pod's
	// readiness (Istio's probes bypass ztunnel altogether).
	if !probe {
		d := p.authorize(ctx, "", src.Addr(), dst)
		info.policy = d.Policy
		if !d.Allow {
			refuse(ReasonDenied, func() string {
				return fmt.Sprintf("plaintext from %s to port %d: %s", src.Addr(), dst.Port(), d.Reason)
			})
			return
		}
	}
	up, err := p.dialApp(ctx, src.Addr(), dst)
	if err != nil {
		o.Errorf("inbound plaintext %s -> %s: %v", src, dst, err)
		refuse(ReasonDialFailed, err.Error)
		return
	}
	cc := p.open(&info)
	opened := p.tapOpened(&info)
	p.tapClosed(&info, opened, splice(down, up, cc))
}

func (p *Proxy) authorize(ctx context.Context, principal string, src netip.Addr, dst netip.AddrPort) Decision {
	if p.opts.Authorize == nil {
		return Decision{Allow: true}
	}
	return p.opts.Authorize(ctx, AuthzRequest{Pod: p.opts.Pod, Principal: principal, Source: src, Destination: dst.Addr().Unmap(), Port: dst.Port()})
}

// dialApp connects to the app at target from inside the pod, as src when
// the return path is set up.
func (p *Proxy) dialApp(ctx context.Context, src netip.Addr, target netip.AddrPort) (net.Conn, error) {
	o := &p.opts
	do := netns.DialOptions{Mark: o.Mark}
	if o.ReturnMark != 0 && src.IsValid() && !src.IsLoopback() {
		do.Mark |= o.ReturnMark
		do.Source = netip.AddrPortFrom(src, 0)
		do.Transparent = true
	}
	c, err := netns.Dial(ctx, o.Pod.Netns, target.String(), do)
	if err != nil {
		return nil, fmt.Errorf("connect to app: %w", err)
	}
	return c, nil
}

// Drain stops accepting, lets open connections finish until ctx ends, then
// closes what is left. It returns ctx's error when it had to cut
// connections.
func (p *Proxy) Drain(ctx context.Context) error {
	p.mu.Lock()
	p.draining = true
	lns := p.listeners
	p.mu.Unlock()
	for _, ln := range lns {
		ln.Close() // returns once the poller is done accepting on it
	}
	// The tunnel's streams are tracked too, and a stream its client opened
	// before our GOAWAY is served: only once the tunnel server has stopped
	// are new connections refused.
	var tunnelErr error
	if p.tunnel != nil {
		tunnelErr = p.tunnel.Shutdown(ctx)
	}
	p.mu.Lock()
	p.stopped = true
	p.mu.Unlock()
	done := make(chan struct{})
	go func() { p.wg.Wait(); close(done) }()
	select {
	case <-done:
		if ctx.Err() == nil {
			return tunnelErr
		}
		return ctx.Err()
	case <-ctx.Done():
	}
	p.mu.Lock()
	for c := range p.conns {
		reset(c)
	}
	p.mu.Unlock()
	<-done
	return ctx.Err()
}

// AwaitSuccessor waits until every port this proxy listens on has another
// listener in the pod's netns besides its own (a new agent's, in the same
// SO_REUSEPORT group), polling until ctx ends. It returns nil once they all
// have one, else an error naming the ports without. Called before Drain in a
// rolling update, it keeps the pod from being without a listener if the
// successor is late for this pod.
func (p *Proxy) AwaitSuccessor(ctx context.Context) error {
	p.mu.Lock()
	var ports []uint16
	for _, ln := range p.listeners {
		if a, ok := ln.Addr().(*net.TCPAddr); ok {
			ports = append(ports, uint16(a.Port))
		}
	}
	p.mu.Unlock()
	tick := time.NewTicker(20 * time.Millisecond)
	defer tick.Stop()
	for {
		var missing []uint16
		counts, lastErr := netns.Listeners(p.opts.Pod.Netns, ports...)
		for _, port := range ports {
			if counts[port] < 2 {
				missing = append(missing, port)
			}
		}
		if len(missing) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			if lastErr != nil {
				return fmt.Errorf("no other listener on ports %v: %w", missing, lastErr)
			}
			return fmt.Errorf("no other listener on ports %v", missing)
		case <-tick.C:
		}
	}
}

// Close closes listeners and connections at once.
func (p *Proxy) Close() error {
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := p.Drain(ctx); err != nil && !errors.Is(err, context.Canceled) {
		return err
	}
	return nil
}
