package hbone

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/net/http2"
	"golang.org/x/net/http2/hpack"
)

// This file is the HTTP/2 connection both ends share: framing and HPACK come
// from x/net (http2.Framer, hpack), the rest is purpose-built for CONNECT
// streams. One goroutine per connection reads frames and appends DATA to the
// stream's buffer; a stream's Read copies out of that buffer, and Write frames
// the bytes and flushes them on the caller's goroutine under the connection's
// write lock. A 1 KiB write is one TLS record and one goroutine hand-off on
// each side (reader to the stream's reader), where x/net's ClientConn and
// Server cost three each way.

const (
	// maxHeaderListSize bounds a decoded header block (SETTINGS_MAX_HEADER_LIST_SIZE):
	// a CONNECT carries a handful of short fields. x/net's Framer closes the
	// connection when a HEADERS or CONTINUATION fragment overshoots it.
	maxHeaderListSize = 16 << 10
	// initialPeerMaxStreams is assumed until the peer's SETTINGS arrive, as x/net does.
	initialPeerMaxStreams = 100
	// Flood bounds, per connection and second: PING, SETTINGS, PRIORITY and
	// empty DATA frames together, and RST_STREAM frames (a stream reset by
	// the peer still counts against the concurrency limit until its handler
	// returns, so resets cannot pile up handlers; this bounds the churn). Over
	// either, the connection ends with GOAWAY ENHANCE_YOUR_CALM.
	maxControlFramesPerSecond = 1000
	maxResetsPerSecond        = 10000
	// goAwayFlushTimeout bounds how long a GOAWAY may take to go out before
	// the connection is closed anyway.
	goAwayFlushTimeout = time.Second
	// A TLS read returns at most one 16 KiB record, and larger frames are
	// written past the buffer, so 16 KiB each way is enough.
	readBufferSize  = 16 << 10
	writeBufferSize = 16 << 10
	maxStreamID     = math.MaxInt32
)

var (
	// errConnClosed: the connection ended; streams on it fail with it.
	errConnClosed = errors.New("hbone: connection closed")
	// errGoneAway: the peer said it will not serve the stream (GOAWAY).
	errGoneAway = errors.New("hbone: connection going away, stream not served")
)

// streamError is a stream ended by RST_STREAM.
type streamError struct {
	code   http2.ErrCode
	remote bool // sent by the peer
}

func (e streamError) Error() string {
	if e.remote {
		return "hbone: stream reset by peer: " + e.code.String()
	}
	return "hbone: stream reset: " + e.code.String()
}

// connError ends the connection with GOAWAY code.
type connError struct {
	code   http2.ErrCode
	reason string
}

func (e connError) Error() string {
	return "hbone: connection error " + e.code.String() + ": " + e.reason
}

// connConfig is what differs between the client and the server end.
type connConfig struct {
	server       bool
	streamWindow int32 // receive window per stream we advertise
	connWindow   int32 // receive window of the connection
	maxStreams   uint32
	// accept is the server's hook for a new stream, called on the reader
	// goroutine with c.mu not held; it must not block.
	accept func(s *stream, h *requestHeaders)
	// onClose runs once when the connection has closed.
	onClose func(*conn)
	// logger receives protocol errors that end the connection; nil logs
	// nothing.
	logger *slog.Logger
	// peer is the client's verified view of the server's SPIFFE ID (the
	// server passes each stream its peer instead).
	peer spiffeid.ID
	// trust is the peer as the handshake verified it, for Reverify; nil
	// leaves the connection out of it.
	trust *peerTrust
	// gather, when set, is the socket under the TLS connection: a stream's
	// Write holds its records there and sends them with one system call
	// (rawsock.Conn's Hold and Release).
	gather gatherer
}

// gatherer gathers writes between Hold and Release (rawsock.Conn).
type gatherer interface {
	Hold()
	Release() error
}

// gatherOf returns c as a gatherer, or nil.
func gatherOf(c net.Conn) gatherer {
	g, _ := c.(gatherer)
	return g
}

// requestHeaders are the fields of a CONNECT request the server looks at.
type requestHeaders struct {
	method, authority, scheme, path, protocol, forwarded string
	truncated                                            bool
}

type ctlKind uint8

const (
	ctlSettingsAck ctlKind = iota
	ctlPing
	ctlPingAck
	ctlWindowUpdate
	ctlReset
	ctlGoAway
	ctlTableSize
)

// ctlFrame is a frame queued by code that must not block on the write lock
// (above all the reader goroutine: if it waited for a writer blocked on a
// full TCP send buffer while the peer did the same, neither would read).
type ctlFrame struct {
	kind ctlKind
	id   uint32
	val  uint32
	code http2.ErrCode
	data [8]byte
}

// conn is one HBONE connection.
type conn struct {
	nc  net.Conn
	cfg connConfig
	fr  *http2.Framer
	br  *bufio.Reader

	ctx    context.Context // ends when the connection closes
	cancel context.CancelFunc
	done   chan struct{} // closed when the connection has closed

	// framesRead counts frames read, for the keepalive.
	framesRead atomic.Uint64

	wmu  sync.Mutex // serialises writing: fr's write side, bw, henc, hbuf
	bw   *bufio.Writer
	henc *hpack.Encoder
	hbuf bytes.Buffer

	mu             sync.Mutex
	streams        map[uint32]*stream
	nextStreamID   uint32 // client: the ID of the next stream
	maxPeerStream  uint32 // server: the highest stream ID the client opened
	reserved       int    // client: streams promised to Dials, not yet opened
	peerMaxStreams uint32
	peerWindow     int32  // peer's SETTINGS_INITIAL_WINDOW_SIZE
	peerMaxFrame   uint32 // peer's SETTINGS_MAX_FRAME_SIZE
	sendWindow     int32  // what the peer lets us send on the connection
	recvWindow     int32  // what we let the peer send on the connection
	recvUnacked    int32  // bytes consumed but not yet returned to the peer
	goAwayRecv     bool
	goAwaySent     bool
	closing        bool // close once the last stream ends
	closed         bool
	idleSince      time.Time
	ctl            []ctlFrame
	ctlFlushing    bool

	// Reader goroutine only.
	controlRate, resetRate rateLimit
	// keepalive state, under mu.
	pingOut              bool
	lastFrames, pingMark uint64
	keepalive            *time.Timer
}

func newConn(nc net.Conn, cfg connConfig) *conn {
	now := time.Now()
	c := &conn{
		nc:             nc,
		cfg:            cfg,
		br:             bufio.NewReaderSize(nc, readBufferSize),
		bw:             bufio.NewWriterSize(nc, writeBufferSize),
		done:           make(chan struct{}),
		streams:        make(map[uint32]*stream),
		nextStreamID:   1,
		peerMaxStreams: initialPeerMaxStreams,
		peerWindow:     65535,
		peerMaxFrame:   16 << 10,
		sendWindow:     65535,
		recvWindow:     65535,
		idleSince:      now,
		controlRate:    rateLimit{start: now, max: maxControlFramesPerSecond},
		resetRate:      rateLimit{start: now, max: maxResetsPerSecond},
	}
	if cfg.server {
		c.peerMaxStreams = math.MaxUint32 // a client opens no streams
	}
	c.ctx, c.cancel = context.WithCancel(context.Background())
	c.fr = http2.NewFramer(c.bw, c.br)
	c.fr.SetMaxReadFrameSize(DefaultMaxFrameSize)
	c.fr.SetReuseFrames()
	c.fr.MaxHeaderListSize = maxHeaderListSize
	c.fr.ReadMetaHeaders = hpack.NewDecoder(4096, nil)
	c.henc = hpack.NewEncoder(&c.hbuf)
	return c
}

// start sends the preface (client), our SETTINGS and the connection window.
func (c *conn) start() error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	if !c.cfg.server {
		if _, err := io.WriteString(c.bw, http2.ClientPreface); err != nil {
			return err
		}
	}
	settings := []http2.Setting{
		{ID: http2.SettingInitialWindowSize, Val: uint32(c.cfg.streamWindow)},
		{ID: http2.SettingMaxFrameSize, Val: DefaultMaxFrameSize},
		{ID: http2.SettingMaxHeaderListSize, Val: maxHeaderListSize},
	}
	if c.cfg.server {
		settings = append(settings, http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: c.cfg.maxStreams})
	} else {
		settings = append(settings, http2.Setting{ID: http2.SettingEnablePush, Val: 0})
	}
	if err := c.fr.WriteSettings(settings...); err != nil {
		return err
	}
	if inc := c.cfg.connWindow - 65535; inc > 0 {
		if err := c.fr.WriteWindowUpdate(0, uint32(inc)); err != nil {
			return err
		}
		c.mu.Lock()
		c.recvWindow += inc
		c.mu.Unlock()
	}
	return c.bw.Flush()
}

// readPreface reads the client's connection preface (server side).
func (c *conn) readPreface() error {
	buf := make([]byte, len(http2.ClientPreface))
	if _, err := io.ReadFull(c.br, buf); err != nil {
		return fmt.Errorf("read client preface: %w", err)
	}
	if string(buf) != http2.ClientPreface {
		return errors.New("read client preface: not HTTP/2")
	}
	return nil
}

// readLoop reads frames until the connection fails, then closes it.
func (c *conn) readLoop() {
	err := c.readFrames()
	var ce connError
	if errors.As(err, &ce) {
		if c.cfg.logger != nil {
			c.cfg.logger.Info("hbone connection closed on protocol error", "remote", c.nc.RemoteAddr(), "err", err)
		}
		c.goAwayAndClose(ce.code, err)
		return
	}
	c.close(err)
}

// lingerTimeout bounds how long a connection ended by a protocol error keeps
// reading (and discarding) after its GOAWAY, so that closing with unread
// bytes does not reset the TCP connection before the peer read the GOAWAY.
const lingerTimeout = time.Second

func (c *conn) readFrames() error {
	for {
		f, err := c.fr.ReadFrame()
		if err != nil {
			var se http2.StreamError
			if errors.As(err, &se) {
				if err := c.streamFailed(se.StreamID, se.Code); err != nil {
					return err
				}
				continue
			}
			var ce http2.ConnectionError
			switch {
			case errors.As(err, &ce):
				return connError{http2.ErrCode(ce), "read frame: " + err.Error()}
			case errors.Is(err, http2.ErrFrameTooLarge):
				return connError{http2.ErrCodeFrameSize, "frame too large"}
			}
			return err
		}
		c.framesRead.Add(1)
		switch f := f.(type) {
		case *http2.DataFrame:
			err = c.onData(f)
		case *http2.MetaHeadersFrame:
			err = c.onHeaders(f)
		case *http2.WindowUpdateFrame:
			err = c.onWindowUpdate(f)
		case *http2.RSTStreamFrame:
			err = c.onReset(f)
		case *http2.SettingsFrame:
			err = c.onSettings(f)
		case *http2.PingFrame:
			err = c.onPing(f)
		case *http2.GoAwayFrame:
			c.onGoAway(f)
		case *http2.PriorityFrame:
			err = c.calm(&c.controlRate, "PRIORITY")
		case *http2.PushPromiseFrame:
			err = connError{http2.ErrCodeProtocol, "PUSH_PROMISE received"}
		default:
			// Unknown frame types are ignored (RFC 9113 §4.1); CONTINUATION
			// out of order is caught by the Framer.
		}
		if err != nil {
			return err
		}
	}
}

// rateLimit bounds events to max per second: n counts events since start,
// and only when it passes max is the clock read, to open a new window if
// the old one is over a second old or refuse if it is not.
type rateLimit struct {
	start time.Time
	n     int
	max   int
}

func (r *rateLimit) allow() bool {
	r.n++
	if r.n <= r.max {
		return true
	}
	now := time.Now()
	if now.Sub(r.start) > time.Second {
		r.start, r.n = now, 1
		return true
	}
	return false
}

func (c *conn) calm(r *rateLimit, what string) error {
	if r.allow() {
		return nil
	}
	return connError{http2.ErrCodeEnhanceYourCalm, what + " flood"}
}

// idleStream reports whether id names a stream that was never opened, on
// which any frame but HEADERS (from a client) is a protocol error.
// c.mu held.
func (c *conn) idleStream(id uint32) bool {
	if c.cfg.server {
		return id%2 == 0 || id > c.maxPeerStream
	}
	return id%2 == 0 || id >= c.nextStreamID
}

func (c *conn) onData(f *http2.DataFrame) error {
	id := f.StreamID
	size := int32(f.Header().Length) // padding counts against the window
	data := f.Data()
	empty := len(data) == 0 // data shrinks as the sink takes it
	c.mu.Lock()
	if size > c.recvWindow {
		c.mu.Unlock()
		return connError{http2.ErrCodeFlowControl, "connection receive window exceeded"}
	}
	c.recvWindow -= size
	s := c.streams[id]
	if s == nil || s.closed || s.resetErr != nil || s.recvEnd {
		if s == nil && c.idleStream(id) {
			c.mu.Unlock()
			return connError{http2.ErrCodeProtocol, "DATA on idle stream"}
		}
		// A stream we ended or reset: its frames may still be in flight.
		// Their bytes go back to the connection window at once.
		c.creditConnLocked(size)
		if s != nil && s.recvEnd && s.resetErr == nil && !s.closed {
			c.resetLocked(s, http2.ErrCodeStreamClosed)
		}
		c.mu.Unlock()
		c.flushCtl()
		return nil
	}
	if size > s.recvWindow {
		c.creditConnLocked(size)
		c.resetLocked(s, http2.ErrCodeFlowControl)
		c.mu.Unlock()
		c.flushCtl()
		return nil
	}
	s.recvWindow -= size
	if pad := size - int32(len(data)); pad > 0 {
		c.creditLocked(s, pad)
	}
	if len(data) > 0 && s.sink != nil && s.buf.n == 0 && !s.sinking {
		if !c.sinkLocked(s, &data) {
			pending := len(c.ctl) > 0
			c.mu.Unlock()
			if pending {
				c.flushCtl()
			}
			return nil
		}
	}
	if len(data) > 0 {
		s.buf.write(data)
		s.readCond.Signal()
	}
	end := f.StreamEnded()
	if end {
		s.recvEnd = true
		s.readCond.Broadcast()
		c.maybeRemoveLocked(s)
	}
	pending := len(c.ctl) > 0
	c.mu.Unlock()
	if pending {
		c.flushCtl()
	}
	if empty && !end {
		return c.calm(&c.controlRate, "empty DATA")
	}
	return nil
}

// sinkLocked hands *data to the writer of s's waiting WriteTo (s.sink)
// from the reader goroutine, without waiting on it, and leaves in *data
// what it did not take, for the buffer. It reports false when s can take
// no more data (a failed writer, a stream ended meanwhile), having given
// what is left back to the connection window. c.mu held; it is released
// while the writer runs.
//
// Why: WriteTo waking for every frame puts a goroutine hand-off (a wake-up,
// often of another thread) on each received chunk of every proxied
// connection, on both nodes, in the request's and in the response's way.
func (c *conn) sinkLocked(s *stream, data *[]byte) bool {
	sink := s.sink
	s.sinking = true
	c.mu.Unlock()
	n, err := sink.TryWrite(*data)
	c.mu.Lock()
	s.sinking = false
	s.sunk += int64(n)
	c.creditLocked(s, int32(n))
	*data = (*data)[n:]
	// WriteTo sets s.sink only while it waits; nil now means it woke
	// meanwhile, found the sink busy and waits again, for this signal.
	wake := s.sink == nil
	ok := true
	switch {
	case err != nil:
		s.sinkErr, ok = err, false
	case s.closed || s.resetErr != nil:
		ok = false
	}
	if !ok {
		c.creditConnLocked(int32(len(*data)))
		*data = nil
	}
	if wake || !ok || len(*data) > 0 {
		s.readCond.Signal()
	}
	return ok
}

func (c *conn) onHeaders(f *http2.MetaHeadersFrame) error {
	id := f.StreamID
	c.mu.Lock()
	s := c.streams[id]
	if s != nil {
		// Client: the response (after any 1xx). Either end: trailers, which
		// must end the stream.
		if !c.cfg.server && !s.responded {
			st, err := strconv.Atoi(f.PseudoValue("status"))
			if err != nil || st < 100 || st > 999 || f.Truncated {
				c.resetLocked(s, http2.ErrCodeProtocol)
				c.mu.Unlock()
				c.flushCtl()
				return nil
			}
			if st < 200 && !f.StreamEnded() {
				c.mu.Unlock()
				return nil
			}
			s.status, s.responded = st, true
		} else if !f.StreamEnded() {
			c.resetLocked(s, http2.ErrCodeProtocol)
			c.mu.Unlock()
			c.flushCtl()
			return nil
		}
		if f.StreamEnded() {
			s.recvEnd = true
			c.maybeRemoveLocked(s)
		}
		s.readCond.Broadcast()
		c.mu.Unlock()
		return nil
	}
	if !c.cfg.server || id%2 == 0 {
		idle := c.idleStream(id)
		c.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "HEADERS on a stream the peer may not open"}
		}
		return nil // a stream we already closed
	}
	if id <= c.maxPeerStream {
		// A stream we reset or finished: frames in flight are ignored
		// (RFC 9113 §5.1); the Framer has kept the HPACK state.
		c.mu.Unlock()
		return nil
	}
	c.maxPeerStream = id
	if c.goAwaySent || c.closed || uint32(len(c.streams)) >= c.cfg.maxStreams {
		c.queueLocked(ctlFrame{kind: ctlReset, id: id, code: http2.ErrCodeRefusedStream})
		c.mu.Unlock()
		c.flushCtl()
		return c.calm(&c.resetRate, "refused stream")
	}
	s = c.newStreamLocked(id)
	s.recvEnd = f.StreamEnded()
	s.ctx, s.cancel = context.WithCancel(c.ctx)
	c.mu.Unlock()
	h := &requestHeaders{
		method:    f.PseudoValue("method"),
		authority: f.PseudoValue("authority"),
		scheme:    f.PseudoValue("scheme"),
		path:      f.PseudoValue("path"),
		protocol:  f.PseudoValue("protocol"),
		truncated: f.Truncated,
	}
	for _, hf := range f.RegularFields() {
		if hf.Name == "forwarded" {
			h.forwarded = hf.Value
			break
		}
	}
	c.cfg.accept(s, h)
	return nil
}

// streamFailed handles a stream error the Framer found (a malformed header
// block or frame): the stream is reset, the connection lives on.
func (c *conn) streamFailed(id uint32, code http2.ErrCode) error {
	c.mu.Lock()
	if c.cfg.server && id%2 == 1 && id > c.maxPeerStream {
		c.maxPeerStream = id
	}
	if s := c.streams[id]; s != nil {
		c.resetLocked(s, code)
	} else {
		c.queueLocked(ctlFrame{kind: ctlReset, id: id, code: code})
	}
	c.mu.Unlock()
	c.flushCtl()
	return c.calm(&c.resetRate, "malformed stream")
}

func (c *conn) onWindowUpdate(f *http2.WindowUpdateFrame) error {
	inc := int64(f.Increment)
	c.mu.Lock()
	defer c.mu.Unlock()
	if f.StreamID == 0 {
		if int64(c.sendWindow)+inc > math.MaxInt32 {
			return connError{http2.ErrCodeFlowControl, "connection send window overflow"}
		}
		wake := c.sendWindow <= 0
		c.sendWindow += int32(inc)
		if wake {
			for _, s := range c.streams {
				s.writeCond.Broadcast()
			}
		}
		return nil
	}
	s := c.streams[f.StreamID]
	if s == nil {
		if c.idleStream(f.StreamID) {
			return connError{http2.ErrCodeProtocol, "WINDOW_UPDATE on idle stream"}
		}
		return nil
	}
	if int64(s.sendWindow)+inc > math.MaxInt32 {
		c.resetLocked(s, http2.ErrCodeFlowControl)
		go c.flushCtl()
		return nil
	}
	wake := s.sendWindow <= 0
	s.sendWindow += int32(inc)
	if wake {
		s.writeCond.Broadcast()
	}
	return nil
}

func (c *conn) onReset(f *http2.RSTStreamFrame) error {
	c.mu.Lock()
	s := c.streams[f.StreamID]
	if s == nil {
		idle := c.idleStream(f.StreamID)
		c.mu.Unlock()
		if idle {
			return connError{http2.ErrCodeProtocol, "RST_STREAM on idle stream"}
		}
		return c.calm(&c.resetRate, "RST_STREAM")
	}
	if s.resetErr == nil {
		s.resetErr = streamError{code: f.ErrCode, remote: true}
	}
	c.endStreamLocked(s)
	c.mu.Unlock()
	return c.calm(&c.resetRate, "RST_STREAM")
}

func (c *conn) onSettings(f *http2.SettingsFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := c.calm(&c.controlRate, "SETTINGS"); err != nil {
		return err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	err := f.ForeachSetting(func(st http2.Setting) error {
		if err := st.Valid(); err != nil {
			var ce http2.ConnectionError
			if errors.As(err, &ce) {
				return connError{http2.ErrCode(ce), "invalid setting " + st.String()}
			}
			return connError{http2.ErrCodeProtocol, "invalid setting " + st.String()}
		}
		switch st.ID {
		case http2.SettingInitialWindowSize:
			delta := int64(st.Val) - int64(c.peerWindow)
			for _, s := range c.streams {
				if w := int64(s.sendWindow) + delta; w > math.MaxInt32 {
					return connError{http2.ErrCodeFlowControl, "stream send window overflow"}
				}
			}
			c.peerWindow = int32(st.Val)
			for _, s := range c.streams {
				s.sendWindow += int32(delta)
				if delta > 0 {
					s.writeCond.Broadcast()
				}
			}
		case http2.SettingMaxFrameSize:
			c.peerMaxFrame = st.Val
		case http2.SettingMaxConcurrentStreams:
			if !c.cfg.server {
				c.peerMaxStreams = st.Val
			}
		case http2.SettingHeaderTableSize:
			c.queueLocked(ctlFrame{kind: ctlTableSize, val: st.Val})
		}
		return nil
	})
	if err != nil {
		return err
	}
	c.queueLocked(ctlFrame{kind: ctlSettingsAck})
	go c.flushCtl() // not under c.mu: flushCtl takes it
	return nil
}

func (c *conn) onPing(f *http2.PingFrame) error {
	if f.IsAck() {
		return nil
	}
	if err := c.calm(&c.controlRate, "PING"); err != nil {
		return err
	}
	c.mu.Lock()
	c.queueLocked(ctlFrame{kind: ctlPingAck, data: f.Data})
	c.mu.Unlock()
	c.flushCtl()
	return nil
}

func (c *conn) onGoAway(f *http2.GoAwayFrame) {
	c.mu.Lock()
	c.goAwayRecv = true
	if !c.cfg.server {
		// Streams above LastStreamID never reached the server's handler:
		// they fail as retryable.
		for id, s := range c.streams {
			if id > f.LastStreamID && s.resetErr == nil {
				s.resetErr = errGoneAway
				c.endStreamLocked(s)
			}
		}
		c.closing = true // retire it once its last stream ends
	}
	closeNow := c.closing && len(c.streams) == 0 && c.reserved == 0
	c.mu.Unlock()
	if closeNow {
		go c.flushAndClose(nil)
	}
}

// queueLocked adds a control frame to be written by flushCtl or by the
// next writer. c.mu held.
func (c *conn) queueLocked(f ctlFrame) { c.ctl = append(c.ctl, f) }

// flushCtl writes queued control frames without blocking: when another
// goroutine holds the write lock, a helper goroutine waits for it.
func (c *conn) flushCtl() {
	if c.wmu.TryLock() {
		err := c.writeCtlLocked(true)
		c.wmu.Unlock()
		if err != nil {
			c.close(err)
		}
		return
	}
	c.mu.Lock()
	if c.ctlFlushing || len(c.ctl) == 0 {
		c.mu.Unlock()
		return
	}
	c.ctlFlushing = true
	c.mu.Unlock()
	go func() {
		c.wmu.Lock()
		c.mu.Lock()
		c.ctlFlushing = false
		c.mu.Unlock()
		err := c.writeCtlLocked(true)
		c.wmu.Unlock()
		if err != nil {
			c.close(err)
		}
	}()
}

// writeCtlLocked writes the queued control frames, and flushes when flush
// is set or anything was written. c.wmu held.
func (c *conn) writeCtlLocked(flush bool) error {
	c.mu.Lock()
	q := c.ctl
	c.ctl = nil
	closed := c.closed
	c.mu.Unlock()
	if closed {
		return nil
	}
	for _, f := range q {
		var err error
		switch f.kind {
		case ctlSettingsAck:
			err = c.fr.WriteSettingsAck()
		case ctlPing:
			err = c.fr.WritePing(false, f.data)
		case ctlPingAck:
			err = c.fr.WritePing(true, f.data)
		case ctlWindowUpdate:
			err = c.fr.WriteWindowUpdate(f.id, f.val)
		case ctlReset:
			err = c.fr.WriteRSTStream(f.id, f.code)
		case ctlGoAway:
			err = c.fr.WriteGoAway(f.id, f.code, nil)
		case ctlTableSize:
			c.henc.SetMaxDynamicTableSizeLimit(f.val)
		}
		if err != nil {
			return err
		}
	}
	if flush || len(q) > 0 {
		if c.bw.Buffered() > 0 {
			return c.bw.Flush()
		}
	}
	return nil
}

// writeHeaders encodes fields and writes them as HEADERS (+CONTINUATION).
// c.wmu held.
func (c *conn) writeHeaders(id uint32, fields []hpack.HeaderField, endStream bool, maxFrame uint32) error {
	c.hbuf.Reset()
	for _, f := range fields {
		if err := c.henc.WriteField(f); err != nil {
			return err
		}
	}
	block := c.hbuf.Bytes()
	for first := true; first || len(block) > 0; first = false {
		frag := block[:min(len(block), int(maxFrame))]
		block = block[len(frag):]
		var err error
		if first {
			err = c.fr.WriteHeaders(http2.HeadersFrameParam{StreamID: id, BlockFragment: frag, EndStream: endStream, EndHeaders: len(block) == 0})
		} else {
			err = c.fr.WriteContinuation(id, len(block) == 0, frag)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// creditConnLocked returns n received bytes to the connection window,
// batching WINDOW_UPDATEs to one per half window. c.mu held.
func (c *conn) creditConnLocked(n int32) {
	c.recvUnacked += n
	if c.recvUnacked >= c.cfg.connWindow/2 && !c.closed {
		c.queueLocked(ctlFrame{kind: ctlWindowUpdate, id: 0, val: uint32(c.recvUnacked)})
		c.recvWindow += c.recvUnacked
		c.recvUnacked = 0
	}
}

// creditLocked returns n bytes consumed from s to the stream's and the
// connection's windows. c.mu held.
func (c *conn) creditLocked(s *stream, n int32) {
	c.creditConnLocked(n)
	if s.recvEnd || s.resetErr != nil || s.closed {
		return
	}
	s.recvUnacked += n
	if s.recvUnacked >= c.cfg.streamWindow/2 {
		c.queueLocked(ctlFrame{kind: ctlWindowUpdate, id: s.id, val: uint32(s.recvUnacked)})
		s.recvWindow += s.recvUnacked
		s.recvUnacked = 0
	}
}

// resetLocked resets s with code (RST_STREAM) unless it already ended.
// c.mu held; the caller then calls flushCtl.
func (c *conn) resetLocked(s *stream, code http2.ErrCode) {
	if s.resetErr == nil {
		s.resetErr = streamError{code: code}
		if !c.closed {
			c.queueLocked(ctlFrame{kind: ctlReset, id: s.id, code: code})
		}
	}
	c.endStreamLocked(s)
}

// endStreamLocked wakes everyone waiting on a stream that can move no more
// data. The client forgets it at once; the server when its handler returns.
// c.mu held.
func (c *conn) endStreamLocked(s *stream) {
	s.readCond.Broadcast()
	s.writeCond.Broadcast()
	if s.cancel != nil {
		s.cancel()
	}
	if !c.cfg.server {
		c.removeLocked(s)
	}
}

// maybeRemoveLocked forgets a client stream both of whose ends are done.
func (c *conn) maybeRemoveLocked(s *stream) {
	if !c.cfg.server && s.recvEnd && s.sentEnd {
		c.removeLocked(s)
	}
}

// removeLocked takes s out of the stream table; a draining connection
// closes after its last stream. c.mu held.
func (c *conn) removeLocked(s *stream) {
	if s.removed {
		return
	}
	s.removed = true
	delete(c.streams, s.id)
	if len(c.streams) == 0 {
		c.idleSince = time.Now()
		if c.closing && c.reserved == 0 && !c.closed {
			go c.flushAndClose(nil)
		}
	}
}

// shutdown sends GOAWAY and closes the connection once its streams end.
func (c *conn) shutdown() {
	c.mu.Lock()
	if c.closed || c.goAwaySent {
		c.mu.Unlock()
		return
	}
	c.goAwaySent, c.closing = true, true
	c.queueLocked(ctlFrame{kind: ctlGoAway, id: c.maxPeerStream, code: http2.ErrCodeNo})
	idle := len(c.streams) == 0 && c.reserved == 0
	c.mu.Unlock()
	if idle {
		go c.flushAndClose(nil)
		return
	}
	c.flushCtl()
}

// goAwayAndClose ends the connection on a connection error, on the reader
// goroutine: GOAWAY goes out, streams fail at once, and reads are drained for
// up to lingerTimeout before the TCP connection closes.
func (c *conn) goAwayAndClose(code http2.ErrCode, err error) {
	c.mu.Lock()
	if !c.closed && !c.goAwaySent {
		c.goAwaySent = true
		c.queueLocked(ctlFrame{kind: ctlGoAway, id: c.maxPeerStream, code: code})
	}
	c.mu.Unlock()
	t := time.AfterFunc(goAwayFlushTimeout, func() { c.close(err) })
	c.wmu.Lock()
	c.writeCtlLocked(true)
	c.wmu.Unlock()
	t.Stop()
	if c.markClosed(err) {
		c.nc.SetReadDeadline(time.Now().Add(lingerTimeout))
		io.Copy(io.Discard, c.nc)
		c.finishClose()
	}
}

// flushAndClose writes queued control frames (a GOAWAY) and closes,
// waiting at most goAwayFlushTimeout for the write lock.
func (c *conn) flushAndClose(err error) {
	t := time.AfterFunc(goAwayFlushTimeout, func() { c.close(err) })
	c.wmu.Lock()
	c.writeCtlLocked(true)
	c.wmu.Unlock()
	t.Stop()
	c.close(err)
}

// close ends the connection and fails every stream on it.
func (c *conn) close(err error) {
	if c.markClosed(err) {
		c.finishClose()
	}
}

// markClosed fails every stream; it reports false when the connection was
// already closed.
func (c *conn) markClosed(err error) bool {
	c.mu.Lock()
	if c.closed {
		c.mu.Unlock()
		return false
	}
	c.closed = true
	if c.keepalive != nil {
		c.keepalive.Stop()
	}
	fail := errConnClosed
	if err != nil && !errors.Is(err, io.EOF) && !errors.Is(err, net.ErrClosed) {
		fail = fmt.Errorf("%w: %w", errConnClosed, err)
	}
	for _, s := range c.streams {
		if s.resetErr == nil {
			s.resetErr = fail
		}
		c.endStreamLocked(s)
	}
	c.ctl = nil
	c.mu.Unlock()
	c.cancel()
	return true
}

// finishClose closes the TCP connection after markClosed.
func (c *conn) finishClose() {
	c.nc.Close()
	close(c.done)
	if c.cfg.onClose != nil {
		c.cfg.onClose(c)
	}
}

// keepaliveDefaults fills the keepalive timeouts left zero: idle with
// idleDefault, read-idle 30s, ping 15s.
func keepaliveDefaults(idle, readIdle, ping *time.Duration, idleDefault time.Duration) {
	if *idle <= 0 {
		*idle = idleDefault
	}
	if *readIdle <= 0 {
		*readIdle = 30 * time.Second
	}
	if *ping <= 0 {
		*ping = 15 * time.Second
	}
}

// startKeepalive pings a connection silent for readIdle, closes it when the
// ping is not answered within pingTimeout, and closes it after idle with no
// stream (GOAWAY, then close once the last stream ends).
func (c *conn) startKeepalive(readIdle, pingTimeout, idle time.Duration) {
	tick := min(readIdle, idle)
	c.mu.Lock()
	c.keepalive = time.AfterFunc(tick, func() {
		next := tick
		c.mu.Lock()
		if c.closed {
			c.mu.Unlock()
			return
		}
		n := c.framesRead.Load()
		var reason string
		switch {
		case len(c.streams) == 0 && c.reserved == 0 && time.Since(c.idleSince) >= idle:
			reason = "idle"
		case c.pingOut && n == c.pingMark:
			reason = "ping timeout"
		case c.pingOut:
			c.pingOut = false
		case n == c.lastFrames:
			c.pingOut, c.pingMark = true, n
			c.queueLocked(ctlFrame{kind: ctlPing, data: [8]byte{'h', 'b', 'o', 'n', 'e'}})
			next = pingTimeout
		}
		c.lastFrames = n
		if reason == "" {
			c.keepalive.Reset(next)
		}
		c.mu.Unlock()
		switch reason {
		case "idle":
			c.shutdown()
		case "":
			c.flushCtl()
		default:
			c.close(errors.New(reason))
		}
	})
	c.mu.Unlock()
}

// stream is one CONNECT stream, either end.
type stream struct {
	c  *conn
	id uint32
	// Both use c.mu.
	readCond, writeCond sync.Cond

	// Server: the handler's context, ended by a reset or the connection's end.
	ctx    context.Context
	cancel context.CancelFunc

	// Guarded by c.mu.
	buf         recvBuffer
	recvWindow  int32 // what the peer may still send
	recvUnacked int32 // read but not yet returned to the peer
	sendWindow  int32
	recvEnd     bool  // END_STREAM received
	sentEnd     bool  // END_STREAM sent
	resetErr    error // RST_STREAM either way, GOAWAY or the connection's end
	closed      bool  // Close called here
	removed     bool  // out of c.streams
	// WriteTo's writer, set while WriteTo waits with nothing buffered:
	// the reader goroutine writes received data to it itself (sinkLocked).
	sink    TryWriter
	sinking bool  // the reader goroutine is in sink.TryWrite, c.mu released
	sunk    int64 // bytes sink took, for WriteTo's count
	sinkErr error // sink's failure, for WriteTo to return
	// Client: the response.
	status    int
	responded bool
}

// newStreamLocked adds a stream to the table. c.mu held.
func (c *conn) newStreamLocked(id uint32) *stream {
	s := &stream{c: c, id: id, recvWindow: c.cfg.streamWindow, sendWindow: c.peerWindow}
	s.readCond.L = &c.mu
	s.writeCond.L = &c.mu
	c.streams[id] = s
	return s
}

// read copies received bytes into p; ctx bounds the wait.
func (s *stream) read(ctx context.Context, p []byte) (int, error) {
	c := s.c
	c.mu.Lock()
	if err := s.waitDataLocked(ctx, len(p) == 0); err != nil || len(p) == 0 {
		c.mu.Unlock()
		return 0, err
	}
	n := s.buf.read(p)
	c.creditLocked(s, int32(n))
	pending := len(c.ctl) > 0
	c.mu.Unlock()
	if pending {
		c.flushCtl()
	}
	return n, nil
}

// waitDataLocked waits until s has received bytes to read, and returns nil
// then; else why there will be none (io.EOF at the peer's clean end). With
// noWait it returns nil at once when there is nothing yet. c.mu held.
func (s *stream) waitDataLocked(ctx context.Context, noWait bool) error {
	for {
		if s.closed {
			return fmt.Errorf("read hbone stream: %w", net.ErrClosed)
		}
		if s.buf.n > 0 {
			return nil
		}
		if s.recvEnd {
			// A peer's error reset after its END_STREAM still fails a
			// reader that has not taken the end yet, as a TCP RST after a
			// FIN does: a handler that half-closed and then failed is not a
			// clean end. RST_STREAM NO_ERROR (RFC 9113 §8.1) is.
			if se, ok := s.resetErr.(streamError); ok && se.remote && se.code != http2.ErrCodeNo {
				return se
			}
			return io.EOF
		}
		if s.resetErr != nil {
			return s.resetErr
		}
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if noWait {
			return nil
		}
		s.readCond.Wait()
	}
}

// writeTo writes received bytes to w as they arrive until the peer ends the
// stream (nil then, as io.WriterTo has it). Each write hands w a received
// chunk itself: no copy, and no buffer held while the stream waits for
// data, where a Read loop keeps its buffer for the connection's life.
func (s *stream) writeTo(w io.Writer) (int64, error) {
	c := s.c
	var total int64
	vw, _ := w.(VectorWriter)
	tw, _ := w.(TryWriter)
	var chunks [maxWritev]*[chunkSize]byte
	for {
		c.mu.Lock()
		if err := s.waitWriteToLocked(tw); err != nil {
			total += s.sunk
			s.sunk = 0
			c.mu.Unlock()
			if err == io.EOF {
				err = nil
			}
			return total, err
		}
		// Every chunk here (up to maxWritev) goes out in one writev when w
		// takes one: one system call and one wake-up of w's reader for what
		// a burst of frames brought, not one per chunk.
		nb := 1
		if vw != nil {
			nb = min(len(s.buf.chunks), maxWritev)
		}
		// The list of buffers comes from a pool, as the chunks do: a
		// stream waiting for data holds neither.
		var bufs *[maxWritev][]byte
		var data []byte
		got := 0
		if nb == 1 {
			chunks[0], data = s.buf.take()
			got = len(data)
		} else {
			bufs = bufsPool.Get().(*[maxWritev][]byte)
			for i := range nb {
				chunks[i], bufs[i] = s.buf.take()
				got += len(bufs[i])
			}
		}
		c.creditLocked(s, int32(got))
		pending := len(c.ctl) > 0
		c.mu.Unlock()
		if pending {
			c.flushCtl()
		}
		var n int
		var err error
		if bufs == nil {
			n, err = w.Write(data)
		} else {
			n, err = vw.Writev(bufs[:nb])
			*bufs = [maxWritev][]byte{}
			bufsPool.Put(bufs)
		}
		for i := range nb {
			chunkPool.Put(chunks[i])
			chunks[i] = nil
		}
		total += int64(n)
		if err != nil {
			return total, err
		}
	}
}

// waitWriteToLocked is waitDataLocked for writeTo: while it waits with
// nothing buffered, the reader goroutine writes what arrives to tw itself
// (sinkLocked), and it returns nil only for bytes left in the buffer. It
// never returns while the reader is in tw, which would let the caller
// close or half-close w under that write. c.mu held.
func (s *stream) waitWriteToLocked(tw TryWriter) error {
	for {
		if s.sinkErr != nil {
			return s.sinkErr
		}
		if !s.sinking {
			if err := s.waitDataLocked(context.Background(), true); err != nil || s.buf.n > 0 {
				return err
			}
			s.sink = tw
		}
		s.readCond.Wait()
		s.sink = nil
	}
}

// TryWriter writes without waiting what it can take of p at once
// (rawsock.Conn): a stream's WriteTo lets the connection's reader hand
// received bytes to it directly while WriteTo waits.
type TryWriter interface {
	TryWrite(p []byte) (int, error)
}

// maxWritev bounds the chunks writeTo hands over in one Writev (256 KiB).
const maxWritev = 16

var bufsPool = sync.Pool{New: func() any { return new([maxWritev][]byte) }}

// VectorWriter writes several buffers at once, in order, as writev does
// (rawsock.Conn). A stream's WriteTo uses it when its writer has it.
type VectorWriter interface {
	Writev(bufs [][]byte) (int, error)
}

// writeErrLocked says why s takes no more writes. c.mu held.
func (s *stream) writeErrLocked() error {
	switch {
	case s.closed || s.sentEnd:
		return fmt.Errorf("write hbone stream: %w", net.ErrClosed)
	case s.resetErr != nil:
		return fmt.Errorf("write hbone stream: %w", s.resetErr)
	case s.c.closed:
		return fmt.Errorf("write hbone stream: %w", errConnClosed)
	}
	return nil
}

// write sends p as DATA frames, blocking while the peer's windows are
// shut, and flushes before it returns.
func (s *stream) write(p []byte) (int, error) {
	c := s.c
	written := 0
	for len(p) > 0 {
		c.mu.Lock()
		for s.writeErrLocked() == nil && (s.sendWindow <= 0 || c.sendWindow <= 0) {
			s.writeCond.Wait()
		}
		if err := s.writeErrLocked(); err != nil {
			c.mu.Unlock()
			return written, err
		}
		n := min(int32(min(len(p), math.MaxInt32)), s.sendWindow, c.sendWindow)
		s.sendWindow -= n
		c.sendWindow -= n
		maxFrame := int(c.peerMaxFrame)
		c.mu.Unlock()

		c.wmu.Lock()
		c.mu.Lock()
		err := s.writeErrLocked() // CloseWrite or a reset may have won the race
		if err != nil {
			// Give the connection window back, or other streams lose it.
			if c.sendWindow <= 0 && c.sendWindow+n > 0 {
				for _, o := range c.streams {
					o.writeCond.Broadcast()
				}
			}
			c.sendWindow += n
		}
		c.mu.Unlock()
		if err != nil {
			c.wmu.Unlock()
			return written, err
		}
		chunk := p[:n]
		if g := c.cfg.gather; g != nil {
			g.Hold()
		}
		for len(chunk) > 0 && err == nil {
			k := min(len(chunk), maxFrame)
			err = c.fr.WriteData(s.id, false, chunk[:k])
			chunk = chunk[k:]
		}
		if err == nil {
			err = c.writeCtlLocked(true)
		}
		if g := c.cfg.gather; g != nil {
			if rerr := g.Release(); err == nil {
				err = rerr
			}
		}
		c.wmu.Unlock()
		if err != nil {
			c.close(err)
			return written, fmt.Errorf("write hbone stream: %w", err)
		}
		written += int(n)
		p = p[n:]
	}
	return written, nil
}

// closeWrite sends END_STREAM.
func (s *stream) closeWrite() error {
	c := s.c
	c.wmu.Lock()
	defer c.wmu.Unlock()
	c.mu.Lock()
	if s.sentEnd && !s.closed {
		c.mu.Unlock()
		return nil
	}
	if err := s.writeErrLocked(); err != nil {
		c.mu.Unlock()
		return err
	}
	s.sentEnd = true
	c.maybeRemoveLocked(s)
	s.writeCond.Broadcast()
	c.mu.Unlock()
	err := c.fr.WriteData(s.id, true, nil)
	if err == nil {
		err = c.writeCtlLocked(true)
	}
	if err != nil {
		c.close(err)
		return fmt.Errorf("close hbone stream for writing: %w", err)
	}
	return nil
}

// dropBufferLocked returns unread bytes to the connection window. c.mu held.
func (s *stream) dropBufferLocked() {
	if s.buf.n > 0 {
		s.c.creditConnLocked(int32(s.buf.n))
	}
	s.buf.reset()
}

// chunkSize is the unit of receive buffers; chunks come from a pool and go
// back as soon as they are read, so an idle stream holds no buffer.
const chunkSize = 16 << 10

var chunkPool = sync.Pool{New: func() any { return new([chunkSize]byte) }}

// recvBuffer is a FIFO of pooled chunks. Flow control bounds it to the
// stream's receive window.
type recvBuffer struct {
	chunks []*[chunkSize]byte
	r, w   int // read offset in chunks[0], write offset in the last chunk
	n      int // bytes buffered
}

func (b *recvBuffer) write(p []byte) {
	for len(p) > 0 {
		if len(b.chunks) == 0 || b.w == chunkSize {
			b.chunks = append(b.chunks, chunkPool.Get().(*[chunkSize]byte))
			b.w = 0
		}
		k := copy(b.chunks[len(b.chunks)-1][b.w:], p)
		b.w += k
		b.n += k
		p = p[k:]
	}
}

func (b *recvBuffer) read(p []byte) int {
	n := 0
	for len(p) > 0 && b.n > 0 {
		end := chunkSize
		if len(b.chunks) == 1 {
			end = b.w
		}
		k := copy(p, b.chunks[0][b.r:end])
		b.r += k
		b.n -= k
		n += k
		p = p[k:]
		if b.r == end {
			b.popChunk()
		}
	}
	return n
}

// take removes the first chunk and returns it with its unread bytes; the
// caller puts it back in chunkPool once done with them. b holds a chunk.
func (b *recvBuffer) take() (*[chunkSize]byte, []byte) {
	chunk := b.chunks[0]
	end := chunkSize
	if len(b.chunks) == 1 {
		end = b.w
	}
	data := chunk[b.r:end]
	b.n -= len(data)
	copy(b.chunks, b.chunks[1:])
	b.chunks[len(b.chunks)-1] = nil
	b.chunks = b.chunks[:len(b.chunks)-1]
	b.r = 0
	if len(b.chunks) == 0 {
		b.w = 0
	}
	return chunk, data
}

// popChunk drops the first chunk (read to its end, or dropped unread).
func (b *recvBuffer) popChunk() {
	chunk, _ := b.take()
	chunkPool.Put(chunk)
}

func (b *recvBuffer) reset() {
	for len(b.chunks) > 0 {
		b.popChunk()
	}
	b.chunks, b.n = nil, 0
}
