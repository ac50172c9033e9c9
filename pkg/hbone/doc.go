// Package hbone is meshlet's tunnel: HTTP/2 CONNECT over mutual TLS 1.3
// between node agents (and waypoints), as Istio's HBONE. The server accepts
// CONNECT streams whose :authority is an ip:port, after verifying the client's
// X.509 SVID against the trust bundle and trust domain, and hands each stream
// to a handler; the client pools HTTP/2 connections per (local identity,
// destination, expected peer identity) and opens one CONNECT stream per
// proxied connection, refusing a server whose SPIFFE ID is not the one
// expected. With trust domain aliases (Istio's trustDomainAliases, a trust
// domain migration) a peer of an alias passes as one of the trust domain,
// and the expected identity's path in an alias as that identity; nothing
// else does. A peer is verified at the handshake, and again by Reverify
// when the trust changes: a connection whose peer no longer passes is
// closed, as a new handshake of it would be refused.
//
// The HTTP/2 layer is the package's own (conn.go), framed by x/net's
// http2.Framer and hpack: one goroutine per connection reads frames into the
// streams' buffers, and writes go out on the caller's goroutine, one flush
// per Write. It serves CONNECT streams only, and bounds what a network peer
// can make it hold: concurrent streams, header size, flow-control windows,
// and PING, SETTINGS and RST_STREAM rates.
//
// The client's original source address travels in a Forwarded header
// (RFC 7239): `Forwarded: for="<ip>:<port>"` (IPv6 as "[ip]:port"), the header
// Istio's ztunnel also sets on HBONE CONNECT requests.
//
// It must not decide authorization (PeerAuthentication and L4 policy are the
// caller's hooks), resolve destinations, or touch sockets outside the
// listener and dial hook it is given.
package hbone
