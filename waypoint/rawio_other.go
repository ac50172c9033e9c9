//go:build !linux

package waypoint

import "net"

// withRawIO returns c: raw system calls on the socket are Linux's only
// (rawio_linux.go).
func withRawIO(c net.Conn) net.Conn { return c }
