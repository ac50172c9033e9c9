package waypoint

import (
	"context"
	"encoding/binary"
	"fmt"
	"net"
	"net/netip"
)

// The PROXY protocol (HAProxy's, versions 1 and 2) tells an endpoint the
// client's address ahead of the connection's own bytes, for a DestinationRule
// trafficPolicy.proxyProtocol: a relayed connection's is its client's; an
// HTTP request's goes on a connection of its own (they cannot be shared
// between clients).

// proxyAddrs are the addresses a PROXY header carries: the client's and
// the one it dialled.
type proxyAddrs struct {
	src, dst netip.AddrPort
}

type proxyAddrsKey struct{}

// withProxyAddrs records a request's addresses for the dial of its
// connection.
func withProxyAddrs(ctx context.Context, a proxyAddrs) context.Context {
	return context.WithValue(ctx, proxyAddrsKey{}, a)
}

// proxyHeader is the PROXY header of the given version for a: v1's text
// line, or v2's binary block; UNKNOWN (v1) or LOCAL (v2) when the
// addresses are not both known and of one family.
func proxyHeader(version int, a proxyAddrs) []byte {
	src, dst := a.src, a.dst
	known := src.IsValid() && dst.IsValid()
	if known {
		src = netip.AddrPortFrom(src.Addr().Unmap(), src.Port())
		dst = netip.AddrPortFrom(dst.Addr().Unmap(), dst.Port())
		known = src.Addr().Is4() == dst.Addr().Is4()
	}
	if version == 1 {
		if !known {
			return []byte("PROXY UNKNOWN\r\n")
		}
		fam := "TCP4"
		if src.Addr().Is6() {
			fam = "TCP6"
		}
		return fmt.Appendf(nil, "PROXY %s %s %s %d %d\r\n", fam, src.Addr(), dst.Addr(), src.Port(), dst.Port())
	}
	b := []byte("\r\n\r\n\x00\r\nQUIT\n")
	if !known {
		return append(b, 0x20, 0x00, 0x00, 0x00) // version 2, LOCAL, no addresses
	}
	fam, n := byte(0x11), 12 // TCP over IPv4
	if src.Addr().Is6() {
		fam, n = 0x21, 36
	}
	b = append(b, 0x21, fam) // version 2, PROXY
	b = binary.BigEndian.AppendUint16(b, uint16(n))
	b = append(b, src.Addr().AsSlice()...)
	b = append(b, dst.Addr().AsSlice()...)
	b = binary.BigEndian.AppendUint16(b, src.Port())
	return binary.BigEndian.AppendUint16(b, dst.Port())
}

// proxyProtocolDial writes the PROXY header of version with the addresses
// the dial's context carries (withProxyAddrs; LOCAL/UNKNOWN without)
// first on every connection.
func proxyProtocolDial(dial dialFunc, version int) dialFunc {
	return func(ctx context.Context, network, addr string) (net.Conn, error) {
		c, err := dial(ctx, network, addr)
		if err != nil {
			return nil, err
		}
		a, _ := ctx.Value(proxyAddrsKey{}).(proxyAddrs)
		if _, err := c.Write(proxyHeader(version, a)); err != nil {
			c.Close()
			return nil, err
		}
		return c, nil
	}
}

// addrPortOf is a's address and port, when it is an IP one.
func addrPortOf(a net.Addr) netip.AddrPort {
	if a == nil {
		return netip.AddrPort{}
	}
	ap, _ := netip.ParseAddrPort(a.String())
	return ap
}
