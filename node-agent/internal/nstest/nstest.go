// Package nstest builds the network namespaces node-agent tests run in: named
// netns joined by a veth pair, addressed from the test's own sub-range, or
// alone with only their loopback, all removed at cleanup. It must not be imported by non-test code.
package nstest

import "net/netip"

// Pod is one test network namespace.
type Pod struct {
	// Name is the netns name (under /var/run/netns).
	Name string
	// Path is the netns bind mount, what the code under test opens.
	Path string
	// Addr is the address on its veth end; zero without one (Loopback).
	Addr netip.Addr
}
