package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
)

// TestServerReportsRefusedConnections: every connection refused before a
// stream is reported with why — a certificate of a trust domain the server
// does not accept, or none, as peer_unverified; a TLS client that offers no
// h2, or speaks no HTTP/2 after the handshake, as not_hbone; a client that
// is no TLS client at all as handshake_failed — and a sound client is
// served without a report.
func TestServerReportsRefusedConnections(t *testing.T) {
	m := newMeshCAs(t)
	type report struct{ reason, detail string }
	reports := make(chan report, 8)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewServer(ServerOptions{SVID: m.own.svid(t, serverID), Bundle: m.bundles(), TrustDomain: td,
		HandshakeTimeout: 2 * time.Second,
		Handler: func(_ context.Context, r *Request) error {
			_, err := io.Copy(r.Stream, r.Stream)
			return err
		},
		OnRefusedConn: func(remote net.Addr, reason, detail string) {
			if remote == nil {
				t.Error("a refusal without the client's address")
			}
			reports <- report{reason, detail}
		}})
	if err != nil {
		t.Fatal(err)
	}
	go srv.Serve(ln)
	t.Cleanup(func() { srv.Close() })
	addr := ln.Addr().String()

	tlsClient := func(id *spiffeid.ID, alpn []string, after func(c *tls.Conn)) {
		cfg := &tls.Config{InsecureSkipVerify: true, NextProtos: alpn, MinVersion: tls.VersionTLS13}
		if id != nil {
			signer := m.other
			if id.MemberOf(td) {
				signer = m.own
			}
			svid, err := signer.svid(t, *id).GetX509SVID()
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{{Certificate: [][]byte{svid.Certificates[0].Raw}, PrivateKey: svid.PrivateKey}}
		}
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			return
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if after != nil {
			after(c)
		}
		c.Read(make([]byte, 1)) // a TLS 1.3 refusal of the client's certificate arrives here
	}
	foreign := spiffeid.RequireFromString("spiffe://other.example/ns/a/sa/client")
	sound := clientID
	for _, tt := range []struct {
		name   string
		run    func()
		reason string
		detail string
	}{
		{"a certificate of a trust domain that is not accepted", func() { tlsClient(&foreign, []string{http2.NextProtoTLS}, nil) }, RefusedPeer, "trust domain"},
		{"no client certificate", func() { tlsClient(nil, []string{http2.NextProtoTLS}, nil) }, RefusedPeer, "no client certificate"},
		{"a TLS client that offers no h2", func() { tlsClient(&sound, nil, nil) }, RefusedProtocol, "not h2"},
		{"no HTTP/2 preface", func() {
			tlsClient(&sound, []string{http2.NextProtoTLS}, func(c *tls.Conn) { c.Write([]byte("GET / HTTP/1.1\r\n\r\n")) })
		}, RefusedProtocol, "preface"},
		{"not TLS", func() {
			c, err := net.Dial("tcp", addr)
			if err != nil {
				t.Fatal(err)
			}
			c.Write([]byte("GET / HTTP/1.1\r\nHost: x\r\n\r\n"))
			c.SetReadDeadline(time.Now().Add(3 * time.Second))
			c.Read(make([]byte, 1))
			c.Close()
		}, RefusedHandshake, ""},
	} {
		tt.run()
		select {
		case r := <-reports:
			if r.reason != tt.reason || !strings.Contains(r.detail, tt.detail) {
				t.Errorf("%s: reported %q (%s); want %q saying %q", tt.name, r.reason, r.detail, tt.reason, tt.detail)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("%s: no refusal reported", tt.name)
		}
	}

	// A sound client is served and nothing is reported.
	d, err := NewDialer(DialerOptions{Bundle: m.bundles()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	c, err := d.Dial(ctxT(t), Target{Local: m.own.svid(t, clientID), Proxy: ln.Addr().(*net.TCPAddr).AddrPort(), PeerID: serverID, Addr: target})
	if err != nil {
		t.Fatalf("a sound client: %v", err)
	}
	c.Close()
	select {
	case r := <-reports:
		t.Errorf("a sound client was reported refused: %q (%s)", r.reason, r.detail)
	case <-time.After(200 * time.Millisecond):
	}
}
