// Package agent wires the node agent together: the CNI socket, the
// enrollment reconciler, the eBPF data path and one proxy per enrolled pod,
// plus the metrics (15020) and readiness (15021) endpoints and the drain on
// shutdown.
//
// Enrolling a pod, in order: open its listeners (so a captured connection
// always has somewhere to go), set up the return path for transparent
// connections to the app, attach inbound steering on its interface, then
// start outbound capture for its netns. Unenrolling runs the other way:
// capture stops first, then the listeners drain within a bound.
//
// The pushed mesh config, the tunnel and policy reach the proxies through
// the Mesh hooks; without a Mesh, enrolled pods' connections pass through
// the proxies unencrypted (useful only for testing the data path). This
// package must not implement any of those itself.
package agent

import (
	"context"
	"io"
	"net"
	"net/netip"
	"time"

	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/proxy"
)

// Datapath is what the agent needs from the loaded eBPF data path
// (node-agent/ebpf.Datapath).
type Datapath interface {
	Enroll(netnsCookie uint64, p ebpf.Pod) error
	Unenroll(netnsCookie uint64) error
	OriginalDst(c net.Conn) (netip.AddrPort, error)
	AttachPodIngress(nsPath, ifname string, opts ebpf.IngressOptions) error
	DetachPodIngress(nsPath, ifname string) error
	Reconcile(desired map[uint64]ebpf.Pod) (ebpf.ReconcileResult, error)
	SetProbeSources(addrs []netip.Addr) error
}

// Mesh is what the proxies need from the pushed config, the tunnel and
// policy; see proxy.Options for each hook's meaning.
type Mesh interface {
	Resolve(src proxy.Pod, dst netip.AddrPort) (proxy.Destination, bool)
	DialTunnel(ctx context.Context, src proxy.Pod, d proxy.Destination) (io.ReadWriteCloser, error)
	// TunnelServer makes the pod's HBONE server; nil leaves 15008 closed.
	TunnelServer(pod proxy.Pod, h proxy.StreamHandler) (proxy.TunnelServer, error)
	PeerAuth(pod proxy.Pod, port uint16) proxy.Mode
	PeerWorkload(src netip.Addr, identity string) proxy.Workload
	Authorize(ctx context.Context, r proxy.AuthzRequest) proxy.Decision
}

// PodForgetter is implemented by a Mesh that keeps per-pod state (pooled
// tunnel connections); the agent calls it when a pod leaves the mesh.
type PodForgetter interface {
	Forget(pod proxy.Pod)
}

// Marks and routing the agent uses inside pods. AgentMark must be one of the
// bits the data path skips (ebpf.Options.AgentMark); ReturnMark is an extra
// bit on connections to the app that keep the client's address.
const (
	DefaultAgentMark   uint32 = 0x539
	DefaultReturnMark  uint32 = 0x1000
	DefaultReturnTable        = 1539
)

// DNSServer is one pod's DNS proxy (a *dnsproxy.Server).
type DNSServer interface {
	// ServeTCP serves a DNS-over-TCP connection the pod opened to the
	// resolver orig, until c is closed (proxy.Options.DNS).
	ServeTCP(c net.Conn, orig netip.AddrPort)
	// Close stops the proxy.
	Close() error
}

// Options configures the agent.
type Options struct {
	// NodeName is this node. Required.
	NodeName string
	// TrustDomain builds pods' SPIFFE IDs. Empty means cluster.local.
	TrustDomain string
	// Datapath is the loaded eBPF data path. Required.
	Datapath Datapath
	// NetnsCookie returns a netns's cookie. Nil means ebpf.NetnsCookie.
	NetnsCookie func(nsPath string) (uint64, error)
	// Mesh provides resolution, tunnel and policy. Nil means passthrough.
	Mesh Mesh
	// DNS starts the pod's DNS proxy on its loopback port 15053 (where the
	// data path sends its UDP/53); the pod's proxy hands it the pod's DNS
	// over TCP (connections to port 53 captured on 15001). Nil means none,
	// and then the pod's DNS queries must not be captured (see
	// ebpf.NoCaptureDNS) and DNS over TCP passes through.
	DNS func(netnsPath, namespace string) (DNSServer, error)
	// AgentMark, ReturnMark and ReturnTable: see the constants. Zero means
	// the default.
	AgentMark, ReturnMark uint32
	ReturnTable           int
	// Metrics receives the proxies' TCP metrics. Nil counts nothing.
	Metrics *proxy.Metrics
	// Tap receives the proxies' connection events for `meshctl tap`. Nil
	// publishes none.
	Tap *proxy.Tap
	// DrainTimeout bounds how long open connections may finish when the
	// agent stops or a pod leaves the mesh. Zero means 30s.
	DrainTimeout time.Duration
	// HostAddrs returns the addresses of the agent's (the node's) network
	// namespace: plaintext from them to a pod's probe ports is the kubelet's
	// and passes STRICT. Nil means the interfaces' addresses, read each time.
	HostAddrs func() []netip.Addr
	// Errorf logs. Nil discards.
	Errorf func(format string, args ...any)
}
