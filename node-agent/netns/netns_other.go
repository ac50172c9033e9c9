//go:build !linux

package netns

import (
	"context"
	"net"
)

// Do returns ErrNotSupported.
func Do(string, func() error) error { return ErrNotSupported }

// Listen returns ErrNotSupported.
func Listen(string, string, ListenOptions) (net.Listener, error) { return nil, ErrNotSupported }

// Dial returns ErrNotSupported.
func Dial(context.Context, string, string, DialOptions) (net.Conn, error) {
	return nil, ErrNotSupported
}

// PrepareReturnPath returns ErrNotSupported.
func PrepareReturnPath(string, ReturnPath) error { return ErrNotSupported }

// Listeners returns ErrNotSupported.
func Listeners(string, ...uint16) (map[uint16]int, error) { return nil, ErrNotSupported }
