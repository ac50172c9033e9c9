// Package poller waits on many sockets with one goroutine.
//
// The node agent listens in every enrolled pod: 15001, 15006 and 15008 over
// TCP and the DNS proxy's two UDP sockets. With a goroutine parked in Accept
// or ReadFrom for each, 50 pods kept 250 goroutines and their stacks (about
// 2 MB, measured in the lab) only to wait. A Poller registers those sockets in
// an epoll instance of its own, which is itself registered in the Go
// runtime's netpoller: one goroutine, parked like any other reader until a
// socket is ready, accepts the connections (each then served on a goroutine
// of its own, as before) or hands the datagrams to their reader.
//
// The sockets stay ordinary net.Listener and net.PacketConn values: they are
// opened, bound with SO_REUSEPORT for the handoff and closed as before, and
// the runtime's own registration is left alone; the Poller only adds a level-
// triggered watch for readability and reads or accepts without blocking.
package poller
