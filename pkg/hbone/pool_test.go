package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"sync/atomic"
	"testing"

	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// TestDialHookAndPoolKeys checks that every connection goes through the
// DialContext hook and that connections are pooled per local identity: a
// second identity to the same server gets its own connection.
func TestDialHookAndPoolKeys(t *testing.T) {
	e := newEnv(t, nil, nil)
	var dials atomic.Int32
	d, err := NewDialer(DialerOptions{
		Bundle: identity.NewBundleSource(e.ca.ca.Bundle()),
		DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
			dials.Add(1)
			return (&net.Dialer{}).DialContext(ctx, network, addr)
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { d.Close() })
	other := e.ca.svid(t, spiffeid.RequireFromString("spiffe://cluster.local/ns/a/sa/other"))
	roundTrip := func(local *identity.SVIDSource) {
		t.Helper()
		tg := e.target()
		tg.Local = local
		c, err := d.Dial(ctxT(t), tg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.Write([]byte("x"))
		c.CloseWrite()
		if b, err := io.ReadAll(c); err != nil || string(b) != "x" {
			t.Fatalf("echo = %q, %v", b, err)
		}
	}
	roundTrip(e.client)
	roundTrip(e.client)
	roundTrip(other)
	if n := dials.Load(); n != 2 {
		t.Errorf("DialContext called %d times; want 2 (one per local identity)", n)
	}
	if r := <-e.last; r.Peer != clientID {
		t.Errorf("first stream's peer = %s; want %s", r.Peer, clientID)
	}
}

// TestRenewedServerSVID swaps the server's SVID, as renewal does, and checks
// that the next handshake presents the new certificate.
func TestRenewedServerSVID(t *testing.T) {
	e := newEnv(t, nil, nil)
	src := e.srv.opts.SVID.(*identity.SVIDSource)
	serial := func() string {
		t.Helper()
		cfg := tlsconfig.MTLSClientConfig(e.client, identity.NewBundleSource(e.ca.ca.Bundle()), tlsconfig.AuthorizeID(serverID))
		cfg.NextProtos = []string{"h2"}
		c, err := tls.Dial("tcp", e.addr.String(), cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].SerialNumber.String()
	}
	before, _ := src.GetX509SVID()
	if got := serial(); got != before.Certificates[0].SerialNumber.String() {
		t.Fatalf("server presented serial %s; want %s", got, before.Certificates[0].SerialNumber)
	}
	renewed, _ := e.ca.svid(t, serverID).GetX509SVID()
	if err := src.Set(renewed); err != nil {
		t.Fatal(err)
	}
	if got := serial(); got != renewed.Certificates[0].SerialNumber.String() {
		t.Fatalf("after renewal the server presented serial %s; want the renewed %s", got, renewed.Certificates[0].SerialNumber)
	}
}
