//go:build !linux

package poller

import (
	"errors"
	"net"
	"syscall"
)

var errLinuxOnly = errors.New("poller: needs Linux (epoll)")

// Poller needs epoll.
type Poller struct{}

// Watch needs epoll.
type Watch struct{}

// Listener needs epoll.
type Listener struct{ net.Listener }

func New() (*Poller, error)                                            { return nil, errLinuxOnly }
func Shared() (*Poller, error)                                         { return nil, errLinuxOnly }
func (*Poller) Close() error                                           { return nil }
func (*Poller) Watch(syscall.Conn, func(*Watch) bool) (*Watch, error)  { return nil, errLinuxOnly }
func (*Poller) Accept(net.Listener, func(net.Conn)) (*Listener, error) { return nil, errLinuxOnly }
func (*Watch) Read(func(uintptr) bool) error                           { return errLinuxOnly }
func (*Watch) Stop()                                                   {}
