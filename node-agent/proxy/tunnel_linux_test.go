package proxy

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"strings"
	"sync"

	"github.com/meshlet/meshlet/node-agent/netns"
)

// The tests' tunnel is a stand-in for pkg/hbone, which has not landed yet: a
// TCP connection from the source pod's netns to the peer's 15008 that starts
// with one header line "<identity> <target>\n" and a one-line answer
// ("ok" or "refused <reason>"). It carries no TLS and trusts the claimed
// identity; it exists only to exercise the proxy's side of the hooks.
// TODO(meshlet): replace with pkg/hbone's Dialer and Server once committed.

type bufConn struct {
	net.Conn
	r *bufio.Reader
}

func (c *bufConn) Read(b []byte) (int, error) { return c.r.Read(b) }

func (c *bufConn) CloseWrite() error {
	if cw, ok := c.Conn.(interface{ CloseWrite() error }); ok {
		return cw.CloseWrite()
	}
	return nil
}

func testDialTunnel(mark uint32) func(ctx context.Context, src Pod, d Destination) (io.ReadWriteCloser, error) {
	return func(ctx context.Context, src Pod, d Destination) (io.ReadWriteCloser, error) {
		return dialTestTunnel(ctx, src.Netns, src.Identity, mark, d)
	}
}

func dialTestTunnel(ctx context.Context, nsPath, identity string, mark uint32, d Destination) (net.Conn, error) {
	c, err := netns.Dial(ctx, nsPath, d.Via.String(), netns.DialOptions{Mark: mark})
	if err != nil {
		return nil, err
	}
	if _, err := fmt.Fprintf(c, "%s %s\n", identity, d.Target); err != nil {
		c.Close()
		return nil, err
	}
	r := bufio.NewReader(c)
	line, err := r.ReadString('\n')
	if err != nil {
		c.Close()
		return nil, fmt.Errorf("read tunnel answer: %w", err)
	}
	if line != "ok\n" {
		c.Close()
		return nil, errors.New(strings.TrimSpace(line))
	}
	return &bufConn{Conn: c, r: r}, nil
}

// testTunnel serves the test's line protocol in place of HBONE.
type testTunnel struct{ h StreamHandler }

func newTestTunnel(h StreamHandler) (TunnelServer, error) { return testTunnel{h}, nil }

func (testTunnel) Shutdown(context.Context) error { return nil }

func (tt testTunnel) ServeConn(c net.Conn) {
	h := tt.h
	go func() {
		r := bufio.NewReader(c)
		line, err := r.ReadString('\n')
		if err != nil {
			c.Close()
			return
		}
		var id, target string
		fmt.Sscan(line, &id, &target)
		tgt, _ := netip.ParseAddrPort(target)
		// The answer "ok" is written once the proxy accepted the stream:
		// the first write on the stream's conn.
		sc := &answerConn{bufConn: bufConn{Conn: c, r: r}}
		s := Stream{Conn: sc, Peer: id, Source: addrPort(c.RemoteAddr()), PeerAddr: addrPort(c.RemoteAddr()).Addr(), Target: tgt}
		err = h.CheckStream(context.Background(), s)
		if err == nil {
			err = h.ServeStream(context.Background(), s)
		}
		var ref *Refused
		if errors.As(err, &ref) {
			fmt.Fprintf(c, "refused %s\n", ref.Reason)
			c.Close()
		}
	}()
}

// answerConn sends "ok" before the first byte, or on the first read.
type answerConn struct {
	bufConn
	once sync.Once
	err  error
}

func (c *answerConn) answer() error {
	c.once.Do(func() { _, c.err = c.Conn.Write([]byte("ok\n")) })
	return c.err
}

func (c *answerConn) Write(b []byte) (int, error) {
	if err := c.answer(); err != nil {
		return 0, err
	}
	return c.Conn.Write(b)
}

func (c *answerConn) Read(b []byte) (int, error) {
	if err := c.answer(); err != nil {
		return 0, err
	}
	return c.bufConn.Read(b)
}
