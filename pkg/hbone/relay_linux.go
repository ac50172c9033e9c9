package hbone

import (
	"syscall"

	"golang.org/x/sys/unix"
)

// tcpClose is TCP_CLOSE in include/net/tcp_states.h.
const tcpClose = 7

// resetByPeer reports whether a TCP connection whose read just returned
// io.EOF was in fact reset. Linux hands a RST's error to only one pending
// syscall: when a write on the other direction takes it, the read sees EOF.
// A FIN leaves the socket in CLOSE_WAIT, a RST in CLOSE; the caller must
// know that its own side has not closed (then a clean close ends in CLOSE
// too).
func resetByPeer(c HalfConn) bool {
	sc, ok := c.(syscall.Conn)
	if !ok {
		return false
	}
	rc, err := sc.SyscallConn()
	if err != nil {
		return false
	}
	reset := false
	rc.Control(func(fd uintptr) {
		info, err := unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		reset = err == nil && info.State == tcpClose
	})
	return reset
}
