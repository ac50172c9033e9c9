package ebpf

import (
	"net/netip"
	"testing"
)

// BenchmarkOriginalDstOf is the agent's per-connection lookup.
func BenchmarkOriginalDstOf(b *testing.B) {
	s := newSetup(b, Options{})
	k := sockopsMlConnKey{NetnsCookie: 42, Ip: netip.MustParseAddr("127.0.0.1").As16(), Port: 40000}
	v := sockopsMlAddr{Ip: netip.MustParseAddr(remoteIP).As16(), Port: 8080, Family: afInet}
	if err := s.dp.maps.MlOrigdst.Put(k, v); err != nil {
		b.Fatal(err)
	}
	client := netip.MustParseAddrPort("127.0.0.1:40000")
	b.ReportAllocs()
	for b.Loop() {
		if _, err := s.dp.OriginalDstOf(42, client); err != nil {
			b.Fatal(err)
		}
	}
}
