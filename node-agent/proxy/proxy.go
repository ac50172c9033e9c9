// Package proxy is the per-pod L4 proxy of the node agent: the outbound
// listener (15001) that carries an enrolled pod's connections into the HBONE
// tunnel, the HBONE listener (15008) that takes tunnelled connections in, and
// the plaintext inbound listener (15006), all inside the pod's netns.
//
// One connection's flow reads top to bottom in serveOutbound, ServeStream and
// servePlaintext. Every decision that needs knowledge from elsewhere is a
// hook in Options: where a captured connection was going (the eBPF
// datapath), what that address is (the pushed model), how to open and serve
// tunnel streams (pkg/hbone), peer authentication and authorization
// (pkg/policy). The package must not know how those are implemented, and it
// must never serve a refused connection half-way: a refusal is a TCP reset
// (or a refused stream) counted by reason.
//
// A connection to a mesh destination whose pod the same agent serves takes
// no tunnel (serveLocal): DESIGN.md plans same-node traffic spliced in the
// kernel (sockhash + sk_msg), which keeps the policy decision but not the
// counters and needs a safe hand-over of bytes already in flight; until
// then it is carried in user space with one hop and no TLS.
//
// A connection captured on 15001 whose original destination port is 53 is
// DNS over TCP: it goes to Options.DNS (the pod's DNS proxy, which answers
// mesh names over TCP as it does over UDP) instead of passing through to the
// resolver, which does not know them. It is tracked and counted like a
// passthrough connection.
//
// Where the proxy counts a connection (opened, closed, refused) it also
// publishes an event to Options.Tap for `meshctl tap` (tap.go): while
// nobody taps, that is one atomic load and nothing is built.
//
// Ports inside the pod that belong to the mesh (15001, 15006, 15008, 15000,
// 15020, 15021, 15053) are never a destination: a pod dialling its own
// capture ports, or a CONNECT naming one, is refused.
package proxy

import (
	"context"
	"errors"
	"io"
	"net"
	"net/netip"
	"slices"
	"time"

	"github.com/meshlet/meshlet/node-agent/poller"
)

// Mesh ports, as in Istio.
const (
	PortOutbound  = 15001
	PortInbound   = 15006
	PortTunnel    = 15008
	PortAdmin     = 15000
	PortMetrics   = 15020
	PortReadiness = 15021
	PortDNS       = 15053
)

// dnsPort is the port of DNS over TCP, which Options.DNS serves.
const dnsPort = 53

var meshPorts = []uint16{PortOutbound, PortInbound, PortTunnel, PortAdmin, PortMetrics, PortReadiness, PortDNS}

// Workload names a workload for identity and metrics.
type Workload struct {
	// Namespace and Name (the workload: Deployment, StatefulSet … or the pod
	// when it has no owner) label metrics.
	Namespace, Name string
	// Identity is the SPIFFE ID, spiffe://<td>/ns/<ns>/sa/<sa>. Empty when
	// unknown (a plaintext client outside the mesh).
	Identity string
}

// Pod is one enrolled pod.
type Pod struct {
	Workload
	// UID is the pod's UID.
	UID string
	// Netns is the path of the pod's network namespace.
	Netns string
	// IPs are the pod's addresses.
	IPs []netip.Addr
}

func (p Pod) owns(a netip.Addr) bool { return slices.Contains(p.IPs, a.Unmap()) }

// Destination is where an outbound connection goes, as the model resolves it.
type Destination struct {
	// Target is the address to CONNECT to: the chosen endpoint's pod IP and
	// the (target) port.
	Target netip.AddrPort
	// Via is the HBONE endpoint: the target pod's 15008, or its waypoint's.
	Via netip.AddrPort
	// Identity is the SPIFFE ID the peer at Via must present.
	Identity string
	// Workload is the destination workload, for metrics.
	Workload Workload
	// Service is the destination service's host name, for metrics; empty
	// when the pod IP was dialled.
	Service string
	// Source is the connecting app's address (the tunnel's Forwarded
	// header). The proxy sets it before DialTunnel; Resolve leaves it zero.
	Source netip.AddrPort
	// Release, when set, is called once the connection to this
	// destination has ended (or was never made): the resolver counts
	// open connections per endpoint with it.
	Release func()
}

// Mode is a PeerAuthentication mTLS mode.
type Mode int

// The PeerAuthentication modes, as Istio names them.
const (
	ModePermissive Mode = iota // mTLS and plaintext accepted
	ModeStrict                 // mTLS only
	ModeDisable                // plaintext passes
)

// AuthzRequest is what an authorization decision sees.
type AuthzRequest struct {
	// Pod is the destination pod.
	Pod Pod
	// Principal is the verified peer SPIFFE ID; empty for plaintext.
	Principal string
	// Source is the client's address.
	Source netip.Addr
	// Destination is the pod address the client reached (the pod's first
	// IP when unset); Port is the destination port.
	Destination netip.Addr
	Port        uint16
}

// Decision is an authorization verdict.
type Decision struct {
	// Allow lets the connection through.
	Allow bool
	// Reason names the policy that decided, for logs and metrics.
	Reason string
	// Policy is the AuthorizationPolicy that decided ("namespace/name"),
	// empty when none did (no policy, or no ALLOW matched), for taps.
	Policy string
}

// Stream is one inbound tunnel stream as the HBONE server hands it over.
type Stream struct {
	// Conn carries the stream's bytes. If it has CloseWrite() error, the
	// proxy half-closes it when the app stops sending.
	Conn io.ReadWriteCloser
	// Peer is the client's verified SPIFFE ID.
	Peer string
	// Source is the original client's address (the tunnel's Forwarded
	// header, else the tunnel's peer); the app sees it as the client.
	Source netip.AddrPort
	// PeerAddr is the tunnel connection's peer address, which the client
	// cannot forge; authorization's source IP when valid, else Source's.
	PeerAddr netip.Addr
	// Target is the address the CONNECT named.
	Target netip.AddrPort
}

// StreamHandler is what a tunnel server calls for each stream; *Proxy is
// one.
type StreamHandler interface {
	CheckStream(ctx context.Context, s Stream) error
	ServeStream(ctx context.Context, s Stream) error
}

// ConnRefuser is a StreamHandler that is also told of the tunnel
// connections refused before any stream (the HBONE server's handshake and
// protocol checks: hbone.Refused* reasons), and of those closed because
// their peer is no longer trusted (hbone.RefusedUntrusted), to count them
// (Proxy).
type ConnRefuser interface {
	RefuseConn(remote net.Addr, reason, detail string)
}

// TunnelServer serves the HBONE connections accepted on a pod's 15008.
type TunnelServer interface {
	// ServeConn takes in one accepted connection and serves it on a
	// goroutine of its own (after Shutdown it closes it); it must not
	// block: the poller calls it.
	ServeConn(c net.Conn)
	// Shutdown tells every client to open no new stream, waits for open
	// streams to finish until ctx ends, then closes what is left.
	Shutdown(ctx context.Context) error
}

// Refused is the error ServeStream returns for a stream it will not serve;
// the tunnel server answers it with a refusal (403) and resets the stream.
type Refused struct {
	// Reason is the metric label: policy_denied, not_this_pod, mesh_port, ….
	Reason string
	// Detail is for the log.
	Detail string
	// Policy is the AuthorizationPolicy that refused, if one did.
	Policy string
}

func (r *Refused) Error() string { return "refused (" + r.Reason + "): " + r.Detail }

// Refusal reasons, the values of the reason label.
const (
	ReasonStrict     = "strict_mtls_plaintext"
	ReasonDenied     = "policy_denied"
	ReasonNotThisPod = "not_this_pod"
	ReasonMeshPort   = "mesh_port"
	ReasonNoOrigDst  = "no_original_destination"
	ReasonDialFailed = "upstream_unreachable"
)

// Options configures one pod's proxy.
type Options struct {
	// Pod is the enrolled pod. Netns and IPs are required.
	Pod Pod
	// Mark is the SO_MARK of every socket the proxy opens, so the eBPF
	// connect hook leaves them alone. Zero sets no mark.
	Mark uint32
	// ReturnMark is added to Mark on the connection to the app that keeps
	// the client's address; it must match the pod's netns.ReturnPath. Zero
	// means connections to the app come from the pod's own address instead.
	ReturnMark uint32
	// OriginalDst returns where a connection accepted on 15001 was going.
	// Required for outbound.
	OriginalDst func(c net.Conn) (netip.AddrPort, error)
	// InboundDst returns where a plaintext connection accepted on 15006
	// was going. Nil means its local address, which the tc program's
	// bpf_sk_assign leaves as the original destination.
	InboundDst func(c net.Conn) netip.AddrPort
	// Resolve maps an original destination to a mesh destination. false
	// means the destination is outside the mesh: the connection passes
	// through without the tunnel, to d.Target when Resolve chose one (a
	// service endpoint outside the mesh), else to the original
	// destination. Nil means everything passes through.
	Resolve func(src Pod, dst netip.AddrPort) (Destination, bool)
	// DialTunnel opens a tunnel stream from the pod to d. Required for
	// outbound to mesh destinations.
	// The stream may have CloseWrite() error for half-close.
	DialTunnel func(ctx context.Context, src Pod, d Destination) (io.ReadWriteCloser, error)
	// Local returns the proxy of a pod this agent serves that owns addr,
	// or nil. With it, a connection to a mesh destination on the same
	// node skips the tunnel (serveLocal). Nil tunnels everything.
	Local func(addr netip.Addr) *Proxy
	// DNS serves a DNS-over-TCP connection the pod opened: one accepted on
	// 15001 whose original destination orig has port 53. It owns c and
	// returns once c is closed; c's bytes are counted (received and sent)
	// and Drain waits for it, then cuts it, as for any connection. Nil
	// passes such connections through to orig like any other.
	DNS func(c net.Conn, orig netip.AddrPort)
	// Tunnel makes the HBONE server of the pod's 15008: h.CheckStream
	// before accepting a stream (a refusal is answered 403), h.ServeStream
	// for each accepted one (an error resets it). Nil leaves 15008 closed.
	Tunnel func(h StreamHandler) (TunnelServer, error)
	// Poller accepts on the pod's listeners. Nil means poller.Shared().
	Poller *poller.Poller
	// PeerWorkload names the workload a tunnel stream came from, for the
	// destination's metrics: src is the client's address (from the
	// stream's Forwarded header or the peer), identity the peer's verified
	// SPIFFE ID. Nil labels the source by its identity only.
	PeerWorkload func(src netip.Addr, identity string) Workload
	// PeerAuth returns the PeerAuthentication mode for a port of the pod.
	// Nil means PERMISSIVE everywhere.
	PeerAuth func(pod Pod, port uint16) Mode
	// ProbeExempt says whether a plaintext connection from src to port is a
	// kubelet probe, served under STRICT (the kubelet is not in the mesh)
	// and not subject to Authorize (a probe is not the workload's traffic;
	// Istio's bypass ztunnel). Nil exempts nothing.
	ProbeExempt func(src netip.Addr, port uint16) bool
	// Authorize decides L4 authorization. Nil allows everything.
	Authorize func(ctx context.Context, r AuthzRequest) Decision
	// Metrics receives connection and byte counts. Nil counts nothing.
	Metrics *Metrics
	// Tap receives the connection events (opened, closed, refused) while
	// someone taps (`meshctl tap`); one hub serves every pod of the agent.
	// Nil publishes none.
	Tap *Tap
	// DialTimeout bounds connects to the app and passthrough destinations.
	// Zero means 10s.
	DialTimeout time.Duration
	// Errorf logs what goes wrong with single connections. Nil discards.
	Errorf func(format string, args ...any)
}

func (o *Options) check() error {
	if o.Pod.Netns == "" || len(o.Pod.IPs) == 0 {
		return errors.New("proxy options: Pod.Netns and Pod.IPs are required")
	}
	if o.DialTimeout == 0 {
		o.DialTimeout = 10 * time.Second
	}
	if o.Errorf == nil {
		o.Errorf = func(string, ...any) {}
	}
	return nil
}

func isMeshPort(p uint16) bool { return slices.Contains(meshPorts, p) }

func addrPort(a net.Addr) netip.AddrPort {
	if t, ok := a.(*net.TCPAddr); ok {
		ap := t.AddrPort()
		return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port())
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
