// Package ebpf loads, pins and drives meshlet's eBPF data path (the programs in
// bpf/): outbound capture with cgroup/connect, sendmsg, recvmsg, getpeername
// and sock_release; sockops bookkeeping and per-workload TCP counters; and
// inbound steering with tc ingress inside a pod's netns. It gives the node
// agent a small API over the maps (enroll a pod, find a captured connection's
// original destination, read counters, reconcile after a restart).
//
// It must not decide policy (who is enrolled, which identity a pod has, what
// to do with a connection): the agent tells it. It must not touch iptables or
// any netns it was not given.
//
// Kernel floor: Linux 5.15 (bpf_get_netns_cookie in sockops, SO_NETNS_COOKIE,
// cgroup/getpeername and sock_release, bpf_sk_assign at tc ingress). Pod
// ingress uses TCX links from 6.6 and a clsact filter before. CheckKernel
// probes each program type, map type and helper and names the missing ones.
//
// Capture trusts socket marks: a pod process allowed to set SO_MARK
// (CAP_NET_ADMIN in its netns) can set the agent's mark and bypass capture.
package ebpf

import (
	"errors"
	"fmt"
	"net/netip"
)

// DefaultPinDir is where maps and links are pinned when Options.PinDir is empty.
const DefaultPinDir = "/sys/fs/bpf/meshlet"

// ErrNotSupported is returned on operating systems without eBPF.
var ErrNotSupported = errors.New("ebpf data path: not supported on this OS")

// ErrNoOriginalDst is returned by OriginalDst for a connection that was not
// captured (or whose entry was evicted: ml_origdst holds 65536 connections).
var ErrNoOriginalDst = errors.New("no original destination recorded")

// ErrNothingPinned is returned by Adopt when the pin directory holds no data path.
var ErrNothingPinned = errors.New("no pinned meshlet data path to adopt")

// Options configure Load and Adopt.
type Options struct {
	// PinDir is a directory on a bpffs mount for maps and links; created if
	// missing. Empty means DefaultPinDir.
	PinDir string
	// CgroupPath is the cgroup v2 directory the cgroup programs (connect,
	// sendmsg, recvmsg, getpeername, sock_release, sockops) attach to, usually
	// the cgroup v2 root. Required.
	CgroupPath string
	// AgentMark: sockets whose SO_MARK has any of these bits are the agent's
	// own and are never captured or counted. The agent's listeners in pod
	// netns should carry it too, so that what they accept is not counted as
	// the workload's. Zero means none are skipped.
	AgentMark uint32
	// OutboundPort is the TCP port captured connects go to on the pod's
	// loopback: the agent listens on 127.0.0.1 and [::1] there (IPv4 and
	// v4-mapped connects go to 127.0.0.1, IPv6 ones to ::1). Zero means 15001.
	OutboundPort uint16
	// DNSPort is the UDP port captured DNS queries go to on the pod's
	// loopback (127.0.0.1 and [::1], as OutboundPort). Zero means 15053.
	DNSPort uint16
	// InboundPort is the listener port tc ingress hands inbound plaintext SYNs
	// to. Zero means 15006.
	InboundPort uint16
	// IngressSkipMark: inbound packets with any of these skb mark bits are
	// never steered. Zero means none.
	IngressSkipMark uint32
	// ExcludeOutbound lists destinations never captured (besides loopback and
	// the mesh ports 15000/15001/15006/15008/15020/15021/15053).
	ExcludeOutbound []Exclusion
	// ExcludeInboundPorts lists local ports tc ingress never steers (besides
	// 15008 and InboundPort).
	ExcludeInboundPorts []uint16
	// IngressSkipSources lists source addresses tc ingress never steers,
	// such as the address kubelet's probes come from, so that probes reach
	// the app under STRICT. Nil means none.
	IngressSkipSources []netip.Addr
}

// Exclusion is a destination outbound capture leaves alone.
type Exclusion struct {
	// Addr is the destination address; the zero Addr means any address.
	Addr netip.Addr
	// Port is the destination port; zero means any port. Addr and Port must
	// not both be zero.
	Port uint16
}

// Pod flags (Pod.Flags).
const (
	// NoCaptureTCP leaves an enrolled pod's outbound TCP alone.
	NoCaptureTCP uint32 = 0x1
	// NoCaptureDNS leaves an enrolled pod's UDP/53 alone.
	NoCaptureDNS uint32 = 0x2
)

// Pod is the record of an enrolled pod, keyed by its netns cookie.
type Pod struct {
	// WorkloadID is the agent's number for the pod's (namespace, workload,
	// service account); counters are kept per WorkloadID.
	WorkloadID uint32
	// Flags are NoCapture* bits.
	Flags uint32
	// IPv4 is the pod's IPv4 address; the zero Addr when it has none.
	IPv4 netip.Addr
	// IPv6 is the pod's IPv6 address; the zero Addr when it has none.
	IPv6 netip.Addr
	// ProbePorts are the ports kubelet probes on the pod (httpGet and
	// tcpSocket probes): a SYN to one of them from a SetProbeSources
	// address passes tc ingress untouched, so probes do not cost the agent
	// a connection each (STRICT exempts them there anyway).
	ProbePorts []uint16
}

// RTTBuckets is the number of RTT histogram buckets: bucket i counts
// connections whose smoothed RTT at close was below RTTBucketBound(i).
const RTTBuckets = 12

// RTTBucketBound returns bucket i's upper bound in microseconds (64us << i);
// the last bucket has no bound and returns 0.
func RTTBucketBound(i int) uint64 {
	if i < 0 || i >= RTTBuckets-1 {
		return 0
	}
	return 64 << uint(i)
}

// Stats are one workload's counters, summed over CPUs. Byte and packet
// counts are added when a connection closes.
type Stats struct {
	ConnsOpened     uint64
	ConnsClosed     uint64
	BytesSent       uint64
	BytesReceived   uint64
	PacketsSent     uint64 // data segments
	PacketsReceived uint64 // data segments
	Retransmits     uint64
	RTT             [RTTBuckets]uint64 // connections per RTT bucket (not cumulative)
	// Redirect decisions at connect/sendmsg.
	CapturedTCP      uint64
	CapturedDNS      uint64
	BypassedMark     uint64 // the agent's own sockets
	BypassedMeshPort uint64
	BypassedExcluded uint64 // loopback or Options.ExcludeOutbound
	BypassedFlags    uint64 // Pod.Flags
}

// IngressStats are the tc ingress program's counters over all pods.
type IngressStats struct {
	Steered            uint64
	PassedExcludedPort uint64
	PassedMark         uint64
	PassedSource       uint64 // Options.IngressSkipSources
	PassedNoListener   uint64
	AssignFailed       uint64
	PassedProbe        uint64 // Pod.ProbePorts from SetProbeSources addresses
}

// ReconcileResult says what Reconcile changed, by netns cookie.
type ReconcileResult struct {
	// Upserted are the desired pods written (new or changed).
	Upserted []uint64
	// Removed are entries that were not desired, or whose pod IP now belongs
	// to another desired pod.
	Removed []uint64
	// RemovedConns counts original-destination entries dropped because their
	// netns is no longer enrolled.
	RemovedConns int
	// RemovedIngress counts pinned pod ingress links dropped because their
	// interface is gone.
	RemovedIngress int
}

// withDefaults fills zero fields and checks the rest.
func (o Options) withDefaults() (Options, error) {
	if o.PinDir == "" {
		o.PinDir = DefaultPinDir
	}
	if o.OutboundPort == 0 {
		o.OutboundPort = 15001
	}
	if o.DNSPort == 0 {
		o.DNSPort = 15053
	}
	if o.InboundPort == 0 {
		o.InboundPort = 15006
	}
	if o.CgroupPath == "" {
		return o, errors.New("ebpf options: CgroupPath is empty: set it to the cgroup v2 directory to attach to (usually the cgroup v2 root)")
	}
	for i, e := range o.ExcludeOutbound {
		if !e.Addr.IsValid() && e.Port == 0 {
			return o, fmt.Errorf("ebpf options: ExcludeOutbound[%d] has neither Addr nor Port: it would exclude everything; remove it", i)
		}
	}
	for i, a := range o.IngressSkipSources {
		if !a.IsValid() {
			return o, fmt.Errorf("ebpf options: IngressSkipSources[%d] is not a valid address", i)
		}
	}
	for _, p := range []struct {
		name string
		port uint16
	}{{"OutboundPort", o.OutboundPort}, {"DNSPort", o.DNSPort}, {"InboundPort", o.InboundPort}} {
		if p.port == 53 {
			return o, fmt.Errorf("ebpf options: %s is 53: captured DNS would loop; use a mesh port such as 15053", p.name)
		}
	}
	return o, nil
}
