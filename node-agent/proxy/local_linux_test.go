package proxy

import (
	"context"
	"errors"
	"io"
	"net/netip"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// A connection between two pods of one agent goes straight to the
// destination's app: no tunnel stream, the app sees the client's address,
// and both reporters count it as they would a tunnelled one.
func TestOutboundSameNode(t *testing.T) {
	m := newMesh(t, "mlna-sn", meshConfig{mode: ModeStrict, local: true, authorize: func(_ context.Context, r AuthzRequest) Decision {
		return Decision{Allow: r.Principal == idA && r.Source == netip.MustParseAddr("198.19.4.1"), Reason: "allow-cart"}
	}})
	msg := strings.Repeat("payload ", 1000)
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if got, err := roundTrip(c, msg); err != nil || got != msg {
		t.Fatalf("echo on the same-node path: %d bytes, %v; want the %d bytes sent", len(got), err, len(msg))
	}
	m.wantAppSawA(t)
	if n := m.tunnelDials.Load(); n != 0 {
		t.Errorf("%d tunnel dials; want none between pods of one node", n)
	}
	waitClosed(t, m, 2)
	m.wantBothReported(t, len(msg))
}

// The destination's authorization holds on the same-node path: a source
// identity it does not allow is reset before the app sees a connection,
// and counted refused by both ends.
func TestOutboundSameNodeDenied(t *testing.T) {
	m := newMesh(t, "mlna-sd", meshConfig{mode: ModeStrict, local: true, authorize: func(_ context.Context, r AuthzRequest) Decision {
		return Decision{Allow: r.Principal == idBad, Reason: "allow-intruder-only"}
	}})
	// The reset may come before the client's connect returns.
	if c, err := netns.Dial(context.Background(), m.a.Netns, netip.AddrPortFrom(m.a.IPs[0], PortOutbound).String(), netns.DialOptions{Timeout: 5 * time.Second}); err == nil {
		c.SetDeadline(time.Now().Add(10 * time.Second))
		if got, err := roundTrip(c, "hello"); err == nil && got != "" {
			t.Fatalf("denied same-node connection echoed %q", got)
		}
		c.Close()
	}
	select {
	case src := <-m.appSources:
		t.Fatalf("the app accepted a connection from %s that policy denies", src)
	case <-time.After(200 * time.Millisecond):
	}
	if got := refused(m, "destination", m.b.Workload, ReasonDenied); got != 1 {
		t.Errorf("destination refused{denied} = %v; want 1", got)
	}
	if got := refused(m, "source", m.b.Workload, ReasonDenied); got != 1 {
		t.Errorf("source refused{denied} = %v; want 1", got)
	}
	if n := m.tunnelDials.Load(); n != 0 {
		t.Errorf("a denied same-node connection was retried through the tunnel (%d dials)", n)
	}
}

// A destination that does not prove the identity the model asks of it
// (the resolved identity is not the pod's), or that is reached through a
// waypoint, goes through the tunnel as before.
func TestOutboundSameNodeOnlyStraightToThePod(t *testing.T) {
	for _, tt := range []struct {
		name   string
		mutate func(d *Destination)
	}{
		{"other identity", func(d *Destination) { d.Identity = idBad }},
		{"through a waypoint", func(d *Destination) { d.Via = netip.AddrPortFrom(d.Via.Addr(), 15009) }},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var bApp atomic.Value // netip.AddrPort, set once newMesh returns; read by the proxy's goroutines
			m := newMesh(t, "mlna-sw", meshConfig{mode: ModePermissive, local: true, resolve: func(dst netip.AddrPort) (Destination, bool) {
				if a, _ := bApp.Load().(netip.AddrPort); dst != a {
					return Destination{}, false
				}
				d := Destination{Target: dst, Via: netip.AddrPortFrom(dst.Addr(), PortTunnel), Identity: idB}
				tt.mutate(&d)
				return d, true
			}})
			bApp.Store(netip.AddrPortFrom(m.b.IPs[0], appPort))
			c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
			roundTrip(c, "x") // nothing listens on a port 15009: refused
			if n := m.tunnelDials.Load(); n == 0 {
				t.Error("no tunnel dial; want the tunnel used")
			}
		})
	}
}

// Draining the destination's proxy (its pod unenrolled) waits for a
// same-node connection, then cuts it.
func TestOutboundSameNodeDrain(t *testing.T) {
	m := newMesh(t, "mlna-sx", meshConfig{mode: ModeStrict, local: true})
	c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	if _, err := io.WriteString(c, "ping"); err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "ping" {
		t.Fatalf("echo = %q, %v", buf, err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	if err := m.pb.Drain(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Drain of the destination with a same-node connection open = %v; want it to wait and then cut it", err)
	}
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if n, err := c.Read(buf); err == nil {
		t.Fatalf("the connection still carried %d bytes after the destination drained", n)
	}
}
