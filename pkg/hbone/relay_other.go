//go:build !linux

package hbone

// resetByPeer cannot tell a reset from a clean close outside Linux; Relay
// then relies on the reset reaching one of its two directions.
func resetByPeer(HalfConn) bool { return false }
