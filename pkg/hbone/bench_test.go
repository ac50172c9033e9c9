package hbone

import (
	"context"
	"crypto/tls"
	"io"
	"net"
	"testing"

	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/rawsock"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
)

// Each benchmark has an "hbone" and a "tls" sub-benchmark: the second runs the
// same load over a plain TLS 1.3 connection on loopback with the same SVIDs,
// the in-run baseline. Compare them as ratios (benchstat), never as absolute
// times.

const benchChunk = 32 << 10

// tlsPipe returns the client end of a mutual TLS 1.3 connection on loopback
// whose server end runs serve.
func tlsPipe(b *testing.B, e *env, serve func(net.Conn)) net.Conn {
	b.Helper()
	scfg := tlsconfig.MTLSServerConfig(e.srv.opts.SVID, e.srv.opts.Bundle, tlsconfig.AuthorizeMemberOf(td))
	scfg.MinVersion = tls.VersionTLS13
	ln, err := tls.Listen("tcp", "127.0.0.1:0", scfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		c, err := ln.Accept()
		if err != nil {
			return
		}
		defer c.Close()
		serve(c)
	}()
	ccfg := tlsconfig.MTLSClientConfig(e.client, identity.NewBundleSource(e.ca.ca.Bundle()), tlsconfig.AuthorizeID(serverID))
	ccfg.MinVersion = tls.VersionTLS13
	c, err := tls.Dial("tcp", ln.Addr().String(), ccfg)
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { c.Close() })
	return c
}

type halfCloser interface {
	io.ReadWriter
	CloseWrite() error
}

// throughput writes b.N chunks, half-closes and waits for the peer's end.
func throughput(b *testing.B, c halfCloser) {
	buf := make([]byte, benchChunk)
	b.SetBytes(benchChunk)
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
	}
	if err := c.CloseWrite(); err != nil {
		b.Fatal(err)
	}
	if _, err := io.Copy(io.Discard, c); err != nil {
		b.Fatal(err)
	}
}

// roundTrip sends 1 KiB and reads it back, b.N times.
func roundTrip(b *testing.B, c io.ReadWriter) {
	buf := make([]byte, 1024)
	b.SetBytes(int64(len(buf)))
	b.ReportAllocs()
	b.ResetTimer()
	for range b.N {
		if _, err := c.Write(buf); err != nil {
			b.Fatal(err)
		}
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
	}
}

func discard(_ context.Context, r *Request) error {
	_, err := io.Copy(io.Discard, r.Stream)
	return err
}

func BenchmarkStreamThroughput(b *testing.B) {
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, discard, nil)
		c, err := e.dialer.Dial(context.Background(), e.target())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		throughput(b, c)
	})
	b.Run("tls", func(b *testing.B) {
		e := newEnv(b, discard, nil)
		c := tlsPipe(b, e, func(c net.Conn) { io.Copy(io.Discard, c) })
		throughput(b, c.(*tls.Conn))
	})
}

func BenchmarkStreamRoundTrip(b *testing.B) {
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, nil, nil)
		c, err := e.dialer.Dial(context.Background(), e.target())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrip(b, c)
	})
	b.Run("tls", func(b *testing.B) {
		e := newEnv(b, nil, nil)
		c := tlsPipe(b, e, func(c net.Conn) { io.Copy(c, c) })
		roundTrip(b, c)
	})
}

// BenchmarkStreamOpen measures opening one stream on a pooled connection and
// one 1 KiB round trip on it, the cost a new proxied TCP connection pays.
func BenchmarkStreamOpen(b *testing.B) {
	e := newEnv(b, nil, nil)
	buf := make([]byte, 1024)
	b.ReportAllocs()
	for b.Loop() {
		c, err := e.dialer.Dial(context.Background(), e.target())
		if err != nil {
			b.Fatal(err)
		}
		c.Write(buf)
		if _, err := io.ReadFull(c, buf); err != nil {
			b.Fatal(err)
		}
		c.Close()
	}
}

// BenchmarkParallelRoundTrip runs 1 KiB echoes on concurrent streams that
// share one pooled connection (the agent under many client connections);
// "tls" gives each goroutine its own TLS connection.
func BenchmarkParallelRoundTrip(b *testing.B) {
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, nil, nil)
		b.SetBytes(1024)
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			c, err := e.dialer.Dial(context.Background(), e.target())
			if err != nil {
				b.Error(err)
				return
			}
			defer c.Close()
			buf := make([]byte, 1024)
			for pb.Next() {
				c.Write(buf)
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
	b.Run("tls", func(b *testing.B) {
		e := newEnv(b, nil, nil)
		b.SetBytes(1024)
		b.ReportAllocs()
		b.SetParallelism(4)
		b.RunParallel(func(pb *testing.PB) {
			c := tlsPipe(b, e, func(c net.Conn) { io.Copy(c, c) })
			buf := make([]byte, 1024)
			for pb.Next() {
				c.Write(buf)
				if _, err := io.ReadFull(c, buf); err != nil {
					b.Error(err)
					return
				}
			}
		})
	})
}

// BenchmarkRelayRoundTrip is the node agent's path in one process: a TCP
// client, a relay onto an HBONE stream, the server's relay onto TCP, and a
// TCP echo behind it; 1 KiB round trips. "tcp" is the echo dialled
// directly, the in-run baseline.
func BenchmarkRelayRoundTrip(b *testing.B) {
	echoAddr := tcpEcho(b)
	b.Run("hbone", func(b *testing.B) {
		e := newEnv(b, func(ctx context.Context, r *Request) error {
			up, err := net.Dial("tcp", echoAddr)
			if err != nil {
				return err
			}
			defer up.Close()
			return Relay(r.Stream, rawsock.Wrap(up).(*rawsock.Conn))
		}, nil)
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			b.Fatal(err)
		}
		defer ln.Close()
		go func() {
			for {
				down, err := ln.Accept()
				if err != nil {
					return
				}
				go func() {
					defer down.Close()
					c, err := e.dialer.Dial(context.Background(), e.target())
					if err != nil {
						return
					}
					defer c.Close()
					Relay(c, rawsock.Wrap(down).(*rawsock.Conn))
				}()
			}
		}()
		c, err := net.Dial("tcp", ln.Addr().String())
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrip(b, c)
	})
	b.Run("tcp", func(b *testing.B) {
		c, err := net.Dial("tcp", echoAddr)
		if err != nil {
			b.Fatal(err)
		}
		defer c.Close()
		roundTrip(b, c)
	})
}

// tcpEcho serves a TCP echo on loopback until the benchmark ends.
func tcpEcho(b *testing.B) string {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() { defer c.Close(); io.Copy(c, c) }()
		}
	}()
	return ln.Addr().String()
}
