//go:build !linux

package dnsproxy

import (
	"errors"
	"net"
)

// listenUDP needs Linux network namespaces; the node agent runs on Linux only.
func listenUDP(string, string, uint32) (net.PacketConn, error) {
	return nil, errors.New("the DNS proxy runs on Linux only")
}
