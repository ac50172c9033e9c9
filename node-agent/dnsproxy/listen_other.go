//go:build !linux

package dnsproxy

import (
	"errors"
	"net"
	"net/netip"
	"time"

	"github.com/meshlet/meshlet/node-agent/poller"
)

var errLinuxOnly = errors.New("the DNS proxy runs on Linux only")

// errNoSender: no socket in the pod has the query's source address.
var errNoSender = errors.New("no socket sent this query")

// listenUDP needs Linux network namespaces; the node agent runs on Linux only.
func listenUDP(string, string, uint32) (net.PacketConn, error) { return nil, errLinuxOnly }

func dialUDP(string, netip.AddrPort, uint32) (net.Conn, error) { return nil, errLinuxOnly }

// sockFinder needs sock_diag.
type sockFinder struct{}

func openSockFinder(string, time.Duration) (*sockFinder, error) { return nil, errLinuxOnly }
func (*sockFinder) cookie(netip.AddrPort) (uint64, error)       { return 0, errLinuxOnly }
func (*sockFinder) Close() error                                { return nil }

var errDrained = errors.New("no datagram waiting")

func recvFrom(*poller.Watch, []byte) (int, netip.AddrPort, error) {
	return 0, netip.AddrPort{}, errLinuxOnly
}
