package hbone

import (
	"bytes"
	"context"
	"net"
	"sync"
	"testing"
	"time"

	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// fuzzConn is a connection whose peer sent in and takes whatever is written.
type fuzzConn struct {
	in *bytes.Reader
}

func (c *fuzzConn) Read(p []byte) (int, error)       { return c.in.Read(p) }
func (c *fuzzConn) Write(p []byte) (int, error)      { return len(p), nil }
func (c *fuzzConn) Close() error                     { return nil }
func (c *fuzzConn) LocalAddr() net.Addr              { return &net.TCPAddr{} }
func (c *fuzzConn) RemoteAddr() net.Addr             { return &net.TCPAddr{} }
func (c *fuzzConn) SetDeadline(time.Time) error      { return nil }
func (c *fuzzConn) SetReadDeadline(time.Time) error  { return nil }
func (c *fuzzConn) SetWriteDeadline(time.Time) error { return nil }

// FuzzServerFrames: whatever frames an authenticated peer sends after the
// preface, the HBONE server's connection neither panics nor hangs: it reads
// them all, ends when they end, and every stream it accepted is finished.
// (A panic here would take the node agent, and every enrolled pod's
// traffic on the node, down with it.)
func FuzzServerFrames(f *testing.F) {
	frames := func(write func(fr *http2.Framer)) []byte {
		var b bytes.Buffer
		write(http2.NewFramer(&b, nil))
		return b.Bytes()
	}
	connect := func(fr *http2.Framer, id uint32, authority string, end bool) {
		var hb bytes.Buffer
		enc := hpack.NewEncoder(&hb)
		for _, kv := range [][2]string{{":method", "CONNECT"}, {":authority", authority}} {
			enc.WriteField(hpack.HeaderField{Name: kv[0], Value: kv[1]})
		}
		fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: hb.Bytes(), EndHeaders: true, EndStream: end})
	}
	f.Add(frames(func(fr *http2.Framer) {
		fr.WriteSettings()
		connect(fr, 1, "198.18.0.10:8080", false)
		fr.WriteData(1, false, []byte("hello"))
		fr.WriteWindowUpdate(1, 1000)
		fr.WriteData(1, true, []byte("bye"))
	}))
	f.Add(frames(func(fr *http2.Framer) {
		fr.WriteSettings(http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 30})
		connect(fr, 1, "[fd00::1]:80", false)
		fr.WriteRSTStream(1, http2.ErrCodeCancel)
		connect(fr, 3, "not-an-address", true)
		fr.WritePing(false, [8]byte{1})
		fr.WriteGoAway(3, http2.ErrCodeNo, nil)
	}))
	f.Add(frames(func(fr *http2.Framer) {
		connect(fr, 2, "198.18.0.10:8080", false)
		fr.WriteData(5, false, []byte("x"))
		fr.WriteContinuation(1, false, []byte{0x82})
	}))
	f.Fuzz(func(t *testing.T, in []byte) {
		var wg sync.WaitGroup
		c := newConn(&fuzzConn{in: bytes.NewReader(append([]byte(http2.ClientPreface), in...))}, connConfig{
			server: true, streamWindow: 1 << 16, connWindow: 1 << 20, maxStreams: 8,
			accept: func(st *stream, h *requestHeaders) {
				wg.Add(1)
				go func() {
					defer wg.Done()
					if h.method != "CONNECT" {
						st.finish(st.refuse(405, "CONNECT only"))
						return
					}
					if err := st.respond(200, ""); err != nil {
						st.finish(err)
						return
					}
					ctx, cancel := context.WithTimeout(context.Background(), time.Second)
					defer cancel()
					buf := make([]byte, 512)
					for {
						n, err := st.read(ctx, buf)
						if err != nil {
							break
						}
						if _, err := st.write(buf[:n]); err != nil {
							break
						}
					}
					st.finish(nil)
				}()
			},
		})
		if err := c.start(); err != nil {
			t.Fatal(err)
		}
		if err := c.readPreface(); err != nil {
			t.Fatal(err)
		}
		done := make(chan struct{})
		go func() { c.readLoop(); wg.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			t.Fatalf("the connection did not end within 10s of its input's end: %q", in)
		}
	})
}
