package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"testing"
	"time"

	"github.com/meshlet/meshlet/node-agent/internal/nstest"
	"github.com/meshlet/meshlet/node-agent/netns"
)

// TestDNSOverTCPHook: a connection the pod opened to port 53 of a resolver
// (here on B's address) and captured on 15001 is handed to Options.DNS,
// with the resolver's address, and never reaches the resolver; it is
// counted as a passthrough connection, bytes included. Without the hook it
// passes through to the resolver as before.
func TestDNSOverTCPHook(t *testing.T) {
	resolver := netip.MustParseAddrPort("198.19.4.2:53")
	tests := []struct {
		name     string
		withHook bool
		want     string // the line the client reads back
	}{
		{name: "hook", withHook: true, want: "dns 198.19.4.2:53 got query"},
		{name: "no hook", want: "resolver got query"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var cfg meshConfig
			cfg.mode, cfg.origDst = ModePermissive, resolver
			hooked := make(chan netip.AddrPort, 1)
			if tt.withHook {
				cfg.dns = func(c net.Conn, orig netip.AddrPort) {
					defer c.Close()
					hooked <- orig
					line, err := bufio.NewReader(c).ReadString('\n')
					if err != nil {
						return
					}
					fmt.Fprintf(c, "dns %s got %s", orig, line)
				}
			}
			m := newMesh(t, "mlna-dt", cfg)
			atResolver := make(chan struct{}, 4)
			ln := nstest.MustListen(t)(netns.Listen(m.b.Netns, resolver.String(), netns.ListenOptions{}))
			go func() {
				for {
					c, err := ln.Accept()
					if err != nil {
						return
					}
					atResolver <- struct{}{}
					line, _ := bufio.NewReader(c).ReadString('\n')
					fmt.Fprintf(c, "resolver got %s", line)
					c.Close()
				}
			}()

			c := dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
			if _, err := io.WriteString(c, "query\n"); err != nil {
				t.Fatal(err)
			}
			got, err := bufio.NewReader(c).ReadString('\n')
			if err != nil || got != tt.want+"\n" {
				t.Fatalf("read %q, %v; want %q", got, err, tt.want+"\n")
			}
			if !tt.withHook {
				return
			}
			if orig := <-hooked; orig != resolver {
				t.Errorf("hook got original destination %s; want %s", orig, resolver)
			}
			select {
			case <-atResolver:
				t.Error("the resolver got the connection; want it served by the DNS hook only")
			default:
			}
			waitClosed(t, m, 1)
			labels := []string{"source", "cart", "shop", idA, "unknown", "unknown", "unknown", "unknown", "none"}
			for _, c := range []struct {
				name string
				got  float64
				want float64
			}{
				{"opened", value(m.metrics.opened.WithLabelValues(labels...)), 1},
				{"closed", value(m.metrics.closed.WithLabelValues(labels...)), 1},
				{"received", value(m.metrics.received.WithLabelValues(labels...)), float64(len("query\n"))},
				{"sent", value(m.metrics.sent.WithLabelValues(labels...)), float64(len(tt.want) + 1)},
			} {
				if c.got != c.want {
					t.Errorf("istio_tcp %s = %v; want %v", c.name, c.got, c.want)
				}
			}
		})
	}
}

// TestDNSOverTCPDrain: a DNS-over-TCP connection the hook holds is tracked:
// Drain waits for it and cuts it when its time is up.
func TestDNSOverTCPDrain(t *testing.T) {
	in, served := make(chan struct{}), make(chan error, 1)
	m := newMesh(t, "mlna-dd", meshConfig{mode: ModePermissive, origDst: netip.MustParseAddrPort("198.19.4.2:53"),
		dns: func(c net.Conn, _ netip.AddrPort) {
			defer c.Close()
			close(in)
			_, err := c.Read(make([]byte, 1)) // an idle client
			served <- err
		}})
	dialFrom(t, m.a, netip.AddrPortFrom(m.a.IPs[0], PortOutbound))
	select {
	case <-in:
	case <-time.After(5 * time.Second):
		t.Fatal("the connection never reached the DNS hook")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
	defer cancel()
	start := time.Now()
	err := m.pa.Drain(ctx)
	if !errors.Is(err, context.DeadlineExceeded) || time.Since(start) < 250*time.Millisecond {
		t.Errorf("Drain = %v after %v; want it to wait for the DNS connection, then cut it (deadline exceeded)", err, time.Since(start))
	}
	select {
	case err := <-served:
		if err == nil {
			t.Error("the hook's read succeeded; want the connection cut")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the DNS connection was not cut by Drain")
	}
}
