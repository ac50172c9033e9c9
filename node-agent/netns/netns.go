// Package netns opens and dials sockets inside a pod's network namespace from
// the node agent, which itself stays in the host network namespace.
//
// Every entry point runs its work on a goroutine locked to an OS thread that
// joins the pod's netns (setns) and returns to the host's before it unlocks;
// if it cannot return, the thread stays locked and Go retires it with the
// goroutine, so no other goroutine ever runs in a pod's netns by accident.
// Sockets keep the netns they were created in, so listeners and connections
// made here live in the pod while belonging to the agent process.
//
// Keeping the client's source address on the connection to the app needs
// three things in the pod netns, set up by PrepareReturnPath: the agent's
// dialing socket is IP_TRANSPARENT, bound to the client's address and marked
// with a return bit; net.ipv4.tcp_fwmark_accept=1 makes the app's accepted
// socket inherit that mark; and a policy rule sends packets carrying the bit
// to a table whose only route is "local default dev lo", so the app's replies
// to the client's address come back to the agent instead of leaving through
// the pod's interface. No iptables rules are used.
//
// This package must not decide what to open or why (that is the proxy's and
// the enroller's business); it only knows namespaces, sockets and marks.
package netns

import (
	"errors"
	"net/netip"
	"time"
)

// ListenOptions configures a listener opened inside a netns.
type ListenOptions struct {
	// Mark is set with SO_MARK on the socket (and so on what it accepts),
	// letting the eBPF connect hook recognise the agent's sockets. Zero
	// sets no mark.
	Mark uint32
	// Transparent sets IP_TRANSPARENT, so the listener accepts connections
	// steered to it for addresses and ports it is not bound to.
	Transparent bool
	// ReusePort sets SO_REUSEPORT so a new agent can bind the same port
	// while the old one drains.
	ReusePort bool
}

// DialOptions configures a connection made from inside a netns.
type DialOptions struct {
	// Mark is set with SO_MARK before connecting. Zero sets no mark.
	Mark uint32
	// Source, when valid, is the local address to bind (port 0 picks
	// one). An address that is not local in the netns needs Transparent.
	Source netip.AddrPort
	// Transparent sets IP_TRANSPARENT (and IP_FREEBIND) so Source may be an
	// address of another host, such as the client the agent speaks for.
	Transparent bool
	// Timeout bounds the connect. Zero means no bound beyond the context.
	Timeout time.Duration
}

// ReturnPath is the policy routing that brings the app's replies to a
// transparent source address back to the agent.
type ReturnPath struct {
	// Mark and Mask select the packets: those whose mark&Mask == Mark.
	// Mark must be non-zero.
	Mark, Mask uint32
	// Table is the routing table holding the local default route. Must be
	// non-zero and unused by anything else in the pod netns.
	Table int
	// Priority is the policy rule's priority. Zero means 100.
	Priority int
}

// ErrNotSupported is returned on systems without Linux network namespaces.
var ErrNotSupported = errors.New("network namespaces are not supported on this OS")
