//go:build !linux

package main

import "net"

// listenReusePort is a plain listen off Linux (the agent runs on Linux only).
func listenReusePort(addr string) (net.Listener, error) { return net.Listen("tcp", addr) }
