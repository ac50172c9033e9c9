package hbone

import (
	"errors"
	"fmt"
	"io"
	"sync/atomic"
)

// errConnReset: conn's data ended with a TCP reset that its read reported
// as io.EOF.
var errConnReset = errors.New("connection reset by peer")

// HalfConn is a connection whose write side can be closed on its own, such
// as *net.TCPConn, *Conn or a server Stream.
type HalfConn interface {
	io.ReadWriteCloser
	CloseWrite() error
}

// Relay copies bytes both ways between an HBONE stream and a TCP connection
// (or any HalfConn), carrying half-closes across: the end of one side's data
// becomes CloseWrite on the other (HTTP/2 END_STREAM ↔ TCP FIN), on the client
// and on the server end alike. It returns nil when both directions ended
// cleanly, or the first error after closing both sides (the caller then
// resets, never half-serves). The caller still owns conn and must close it.
func Relay(stream Stream, conn HalfConn) error {
	type result struct {
		toStream bool
		err      error
	}
	done := make(chan result, 2)
	var connWriteClosed atomic.Bool
	go func() {
		_, err := io.Copy(conn, stream)
		if err == nil {
			connWriteClosed.Store(true)
			err = conn.CloseWrite()
		}
		done <- result{false, err}
	}()
	go func() {
		_, err := io.Copy(stream, conn)
		// A reset must not pass for the end of conn's data: the state is
		// read before the flag, so a CLOSE state with the flag unset cannot
		// come from our own FIN.
		if err == nil && resetByPeer(conn) && !connWriteClosed.Load() {
			err = errConnReset
		}
		if err == nil {
			err = stream.CloseWrite()
		}
		done <- result{true, err}
	}()
	for range 2 {
		r := <-done
		if r.err != nil {
			dir := "stream to connection"
			if r.toStream {
				dir = "connection to stream"
			}
			return errors.Join(fmt.Errorf("relay %s: %w", dir, r.err), stream.Close(), conn.Close())
		}
	}
	return nil
}
