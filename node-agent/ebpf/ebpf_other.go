//go:build !linux

package ebpf

import (
	"net"
	"net/netip"
)

// Datapath is not available on this OS.
type Datapath struct{}

// IngressOptions configure AttachPodIngress.
type IngressOptions struct{}

// CheckKernel reports that eBPF is not supported on this OS.
func CheckKernel() error { return ErrNotSupported }

// Load is not supported on this OS.
func Load(Options) (*Datapath, error) { return nil, ErrNotSupported }

// Adopt is not supported on this OS.
func Adopt(Options) (*Datapath, error) { return nil, ErrNotSupported }

// NetnsCookie is not supported on this OS.
func NetnsCookie(string) (uint64, error) { return 0, ErrNotSupported }

func (*Datapath) Enroll(uint64, Pod) error           { return ErrNotSupported }
func (*Datapath) Enrolled() (map[uint64]Pod, error)  { return nil, ErrNotSupported }
func (*Datapath) Unenroll(uint64) error              { return ErrNotSupported }
func (*Datapath) SetProbeSources([]netip.Addr) error { return ErrNotSupported }
func (*Datapath) Reconcile(map[uint64]Pod) (ReconcileResult, error) {
	return ReconcileResult{}, ErrNotSupported
}
func (*Datapath) OriginalDst(net.Conn) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrNotSupported
}
func (*Datapath) OriginalDstOf(uint64, netip.AddrPort) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrNotSupported
}
func (*Datapath) SockOriginalDst(uint64) (netip.AddrPort, error) {
	return netip.AddrPort{}, ErrNotSupported
}
func (*Datapath) AttachPodIngress(string, string, IngressOptions) error { return ErrNotSupported }
func (*Datapath) DetachPodIngress(string, string) error                 { return ErrNotSupported }
func (*Datapath) Stats() (map[uint32]Stats, error)                      { return nil, ErrNotSupported }
func (*Datapath) IngressStats() (IngressStats, error)                   { return IngressStats{}, ErrNotSupported }
func (*Datapath) PruneStats(map[uint32]bool) (int, error)               { return 0, ErrNotSupported }
func (*Datapath) Close() error                                          { return nil }
func (*Datapath) Uninstall() error                                      { return ErrNotSupported }
