package waypoint

import (
	"bufio"
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httputil"
	"net/url"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

// h1Server serves HTTP/1.x connections for Serve in place of
// net/http.Server, which costs more per request than the rest of the proxy:
// a goroutine per request for its background read, four read deadline
// updates, a flush per response, a header map clone and some twenty
// allocations in ReadRequest. Here one goroutine per connection (h1ServerConn
// below) parses each request head into one string, calls Proxy.ServeHTTP
// with a ResponseWriter that writes into the connection's reused
// bufio.Writer, and flushes only when no further request is already
// buffered (pipelining) or when the handler flushes.
//
// It keeps net/http's server semantics that the proxy and its clients rely
// on: keep-alive and "Connection: close" (HTTP/1.0 keep-alive too),
// Content-Length or chunked framing (a short body whose length is known when
// the handler returns gets a Content-Length), trailers, HEAD, 1xx, 204 and
// 304 without a body, Expect: 100-continue (sent on the first body read),
// Hijack for the WebSocket hand-over, a request context cancelled when the
// handler returns or the client goes away, unread request bodies drained up
// to 256 KiB for keep-alive, and the read timeouts of ServerOptions.
//
// It is stricter than net/http where requests are smuggled: a request with
// both Content-Length and Transfer-Encoding, with a Transfer-Encoding other
// than one "chunked" (501), with Transfer-Encoding on HTTP/1.0, with an
// invalid or conflicting Content-Length, with obs-fold (a header line that
// starts with whitespace), a field name that is not a token or a space before
// the colon, a control character in a value, no or several Host headers
// (HTTP/1.1) or an invalid one is answered 400 and the connection closed;
// headers over MaxHeaderBytes are 431. A refused request never reaches the
// handler. Bare LF line ends are accepted, as net/http does.
type h1Server struct {
	proxy             *Proxy
	maxHeaderBytes    int // head bytes including the request line
	readHeaderTimeout time.Duration
	idleTimeout       time.Duration
	// bgReadDelay is how long a handler runs before the connection is
	// watched for the client going away: shorter requests never pay for it.
	bgReadDelay time.Duration

	misdirected  func(serverName, host string) bool // ServerOptions.Misdirected
	shuttingDown atomic.Bool
	mu           sync.Mutex
	conns        map[*h1ServerConn]struct{}
	wg           sync.WaitGroup
}

// maxPostHandlerReadBytes is how much of a request body the handler left
// unread is drained to keep the connection alive (net/http's value).
const maxPostHandlerReadBytes = 256 << 10

// h1ServerConn is one client connection.
type h1ServerConn struct {
	srv        *h1Server
	conn       net.Conn // the connection as read and written (TLS or plain)
	raw        net.Conn // the accepted connection, for ConnFromContext
	cr         connReader
	headReader // br, and the head being read
	bw         *bufio.Writer
	ctx        context.Context // conn values (ConnFromContext, LocalAddrContextKey)
	remoteAddr string
	tlsState   *tls.ConnectionState

	state atomic.Int32 // connIdle or connActive; see shutdown
	res   h1Response   // reused: a handler must not keep it after it returns
	// idleUntil is the idle read deadline in place, zero when the deadline
	// is another (see setIdleDeadline); every other SetReadDeadline on conn
	// goes through setReadDeadline, which zeroes it.
	idleUntil time.Time

	// Watching for the client going away while a handler runs.
	mu        sync.Mutex
	inHandler bool          // a handler runs; the watch may start
	bodyDone  bool          // the request body was read to its end
	bgDone    chan struct{} // a background read runs until it is closed
	req       *reqContext   // the running request's context
	timer     *time.Timer

	// Expect: 100-continue.
	continueMu sync.Mutex
	canWrite   bool // a 100 Continue may still be written

	hijacked bool
}

const (
	connIdle int32 = iota
	connActive
)

// connReader reads the connection for the bufio.Reader, handing out first a
// byte a background read took, and flushing the response writer before a
// read that may block while a request head is read (so a pipelined
// client's responses are never held back).
type connReader struct {
	c          *h1ServerConn
	hasByte    bool
	byteBuf    [1]byte
	flushFirst bool
}

func (r *connReader) Read(p []byte) (int, error) {
	if len(p) == 0 {
		return 0, nil
	}
	if r.hasByte {
		p[0] = r.byteBuf[0]
		r.hasByte = false
		return 1, nil
	}
	if r.flushFirst && r.c.bw.Buffered() > 0 {
		if err := r.c.bw.Flush(); err != nil {
			return 0, err
		}
	}
	return r.c.conn.Read(p)
}

func newH1Server(p *Proxy, opts *ServerOptions) *h1Server {
	return &h1Server{
		proxy:             p,
		maxHeaderBytes:    opts.MaxHeaderBytes + 4096, // as net/http: the limit plus room for the request line
		readHeaderTimeout: opts.ReadHeaderTimeout,
		idleTimeout:       opts.IdleTimeout,
		bgReadDelay:       50 * time.Millisecond,
		conns:             map[*h1ServerConn]struct{}{},
		misdirected:       opts.Misdirected,
	}
}

// serve runs the connection to its end. conn is what is read and written
// (TLS, or the accepted connection behind the detection's buffer), raw the
// accepted connection, and tlsState is set for TLS connections.
func (s *h1Server) serve(conn, raw net.Conn, tlsState *tls.ConnectionState) {
	c := &h1ServerConn{srv: s, conn: conn, raw: raw, tlsState: tlsState, remoteAddr: conn.RemoteAddr().String()}
	c.cr.c = c
	c.br = bufio.NewReaderSize(&c.cr, 4096)
	c.bw = bufio.NewWriterSize(conn, 4096)
	c.ctx = context.WithValue(context.WithValue(context.Background(), connKey{}, raw), http.LocalAddrContextKey, conn.LocalAddr())
	if tlsState != nil {
		c.ctx = withMisdirected(c.ctx, s.misdirected)
	}
	c.res.c = c
	c.res.header = make(http.Header, 16)
	if !s.track(c, true) {
		conn.Close()
		return
	}
	defer s.track(c, false)
	c.loop()
}

// track adds or removes c from the connections shutdown closes; it reports
// false when the server is already shutting down.
func (s *h1Server) track(c *h1ServerConn, add bool) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if add {
		if s.shuttingDown.Load() {
			return false
		}
		s.conns[c] = struct{}{}
		s.wg.Add(1)
		return true
	}
	delete(s.conns, c)
	s.wg.Done()
	return true
}

// shutdown closes idle connections, lets active ones finish their request
// (they close after it) until ctx ends, then closes what is left.
func (s *h1Server) shutdown(ctx context.Context) {
	s.mu.Lock()
	s.shuttingDown.Store(true)
	for c := range s.conns {
		if c.state.Load() == connIdle {
			c.conn.Close()
		}
	}
	s.mu.Unlock()
	done := make(chan struct{})
	go func() { s.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		s.mu.Lock()
		for c := range s.conns {
			c.conn.Close()
		}
		s.mu.Unlock()
		<-done
	}
}

// requestError is a request refused before it reached the handler.
type requestError struct {
	code int
	msg  string
}

func (e *requestError) Error() string { return e.msg }

func badRequest(msg string) error { return &requestError{http.StatusBadRequest, msg} }

var errHeadTooLarge = &requestError{http.StatusRequestHeaderFieldsTooLarge, "request header fields too large"}

// loop reads and serves requests until the connection ends.
func (c *h1ServerConn) loop() {
	s := c.srv
	c.timer = time.AfterFunc(time.Hour, c.watch)
	c.timer.Stop()
	defer func() {
		c.timer.Stop()
		if !c.hijacked {
			c.conn.Close()
		}
	}()
	for {
		// Wait for the next request; the idle timeout applies until its
		// first byte, then the header timeout unless the whole head is
		// already here (one deadline update per request when busy).
		if c.br.Buffered() == 0 && !c.cr.hasByte {
			if c.bw.Buffered() > 0 {
				if c.bw.Flush() != nil {
					return
				}
				// As in h1Client.send: under load the client's next
				// request is usually here once the others have run.
				runtime.Gosched()
			}
			c.state.Store(connIdle)
			if s.shuttingDown.Load() {
				return
			}
			c.setIdleDeadline(time.Now())
			if _, err := c.br.Peek(1); err != nil {
				return
			}
		}
		c.state.Store(connActive)
		if !headBuffered(c.br) {
			c.setReadDeadline(time.Now().Add(s.readHeaderTimeout))
		}
		c.cr.flushFirst = true
		req, err := c.readRequest()
		c.cr.flushFirst = false
		if err != nil {
			c.refuse(err)
			return
		}
		if req.Body != http.NoBody {
			c.setReadDeadline(time.Time{})
		}
		if !c.serveRequest(&req) {
			return
		}
	}
}

// setIdleDeadline makes the connection's read deadline idleTimeout or more
// from now. A deadline set this way runs to 9/8 of idleTimeout and stays
// while it still has idleTimeout to run: under load it is moved once every
// idleTimeout/8 instead of before every request (a runtime timer update
// each), and an idle connection is closed between idleTimeout and 9/8 of it
// after its last request, never before.
func (c *h1ServerConn) setIdleDeadline(now time.Time) {
	idle := c.srv.idleTimeout
	if !c.idleUntil.IsZero() && c.idleUntil.Sub(now) >= idle {
		return
	}
	c.idleUntil = now.Add(idle + idle/8)
	c.conn.SetReadDeadline(c.idleUntil)
}

// setReadDeadline sets any other read deadline than the idle one.
func (c *h1ServerConn) setReadDeadline(t time.Time) {
	c.idleUntil = time.Time{}
	c.conn.SetReadDeadline(t)
}

// headBuffered reports whether a whole request head sits in br.
func headBuffered(br *bufio.Reader) bool {
	b, _ := br.Peek(br.Buffered())
	return bytes.Contains(b, crlfcrlf) || bytes.Contains(b, lflf)
}

var (
	crlfcrlf = []byte("\r\n\r\n")
	lflf     = []byte("\n\n")
)

// refuse answers a request that cannot be served and closes the
// connection: 400 or 431 for a malformed or oversized head, nothing when
// the client went away or timed out.
func (c *h1ServerConn) refuse(err error) {
	var re *requestError
	if !errors.As(err, &re) {
		return
	}
	body := strconv.Itoa(re.code) + " " + http.StatusText(re.code)
	if re.code == http.StatusBadRequest && re.msg != "" {
		body += ": " + re.msg
	}
	c.bw.WriteString("HTTP/1.1 " + strconv.Itoa(re.code) + " " + http.StatusText(re.code) + "\r\n" +
		"Content-Type: text/plain; charset=utf-8\r\nConnection: close\r\nContent-Length: " + strconv.Itoa(len(body)) + "\r\n\r\n" + body)
	c.bw.Flush()
	c.closeWriteAndDrain()
}

// closeWriteAndDrain half-closes the connection and reads what the client
// still sends for a moment, so that the answer is not lost to a reset
// (net/http's rstAvoidanceDelay).
func (c *h1ServerConn) closeWriteAndDrain() {
	if cw, ok := c.conn.(interface{ CloseWrite() error }); ok {
		cw.CloseWrite()
	}
	c.setReadDeadline(time.Now().Add(500 * time.Millisecond))
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	for {
		if _, err := c.conn.Read(*buf); err != nil {
			return
		}
	}
}

// readRequest parses one request head and sets up its body.
func (c *h1ServerConn) readRequest() (r http.Request, err error) {
	rl0, rl1, err := c.readHead(c.srv.maxHeaderBytes, 4)
	if err != nil {
		return r, err
	}
	head := string(c.head) // the one allocation for the whole head
	// The request line: method SP request-target SP HTTP-version.
	rl := head[rl0:rl1]
	method, rest, ok1 := strings.Cut(rl, " ")
	uri, proto, ok2 := strings.Cut(rest, " ")
	if !ok1 || !ok2 || method == "" || !isToken(method) {
		return r, badRequest("malformed HTTP request line")
	}
	var major, minor int
	switch proto {
	case "HTTP/1.1":
		proto, major, minor = "HTTP/1.1", 1, 1
	case "HTTP/1.0":
		proto, major, minor = "HTTP/1.0", 1, 0
	default:
		var ok bool
		if major, minor, ok = http.ParseHTTPVersion(proto); !ok {
			return r, badRequest("malformed HTTP version")
		}
		if major != 1 {
			return r, &requestError{http.StatusHTTPVersionNotSupported, "unsupported protocol version"}
		}
	}
	// The fields stay a list (see reqFields): room for the few the proxy
	// adds upstream (X-Forwarded-For, -Proto, X-Request-Id, traceparent).
	f := &c.res.fields
	*f = reqFields{list: make([]field, len(c.spans), len(c.spans)+4)}
	for i, sp := range c.spans {
		f.list[i] = field{head[sp.k0:sp.k1], head[sp.v0:sp.v1]}
	}

	rawurl := uri
	justAuthority := method == http.MethodConnect && !strings.HasPrefix(uri, "/")
	if justAuthority {
		rawurl = "http://" + uri
	}
	u, perr := url.ParseRequestURI(rawurl)
	if perr != nil {
		return r, badRequest("malformed request target")
	}
	if justAuthority {
		u.Scheme = ""
	}

	var vbuf [2]string
	values := func(k string) []string {
		vv, _ := f.appendValues(vbuf[:0], k)
		return vv
	}
	hosts := values("Host")
	if major == 1 && minor >= 1 && len(hosts) == 0 && method != http.MethodConnect {
		return r, badRequest("missing required Host header")
	}
	if len(hosts) > 1 {
		return r, badRequest("too many Host headers")
	}
	host := u.Host
	if len(hosts) == 1 {
		if !validHost(hosts[0]) {
			return r, badRequest("malformed Host header")
		}
		if host == "" {
			host = hosts[0]
		}
		f.del("Host")
	}

	r = http.Request{
		Method: method, URL: u, Proto: proto, ProtoMajor: major, ProtoMinor: minor,
		Host: host, RemoteAddr: c.remoteAddr, RequestURI: uri, TLS: c.tlsState,
		Body: http.NoBody,
	}
	r.Close = wantsClose(values("Connection"), major, minor)

	// Framing (RFC 9112 section 6), strictly: see h1Server.
	haveTE, haveCL := f.has("Transfer-Encoding"), f.has("Content-Length")
	switch {
	case haveTE && haveCL:
		return r, badRequest("both Transfer-Encoding and Content-Length")
	case haveTE && minor == 0:
		return r, badRequest("Transfer-Encoding in an HTTP/1.0 request")
	case haveTE:
		if te := values("Transfer-Encoding"); len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return r, &requestError{http.StatusNotImplemented, "unsupported transfer encoding"}
		}
		f.del("Transfer-Encoding")
		r.TransferEncoding = chunkedEncoding
		r.ContentLength = -1
	case haveCL:
		cls := values("Content-Length")
		for _, v := range cls[1:] {
			if v != cls[0] {
				return r, badRequest("conflicting Content-Length")
			}
		}
		n, ok := parseContentLength(cls[0])
		if !ok {
			return r, badRequest("invalid Content-Length")
		}
		if len(cls) > 1 {
			f.set("Content-Length", cls[0])
		}
		r.ContentLength = n
	}

	// Expect: only 100-continue is known (417 otherwise, as net/http).
	c.canWrite = false
	if ex := values("Expect"); len(ex) > 0 {
		if len(ex) != 1 || !strings.EqualFold(ex[0], "100-continue") {
			return r, &requestError{http.StatusExpectationFailed, "unsupported Expect"}
		}
		f.del("Expect")
		c.canWrite = minor >= 1 && r.ContentLength != 0
	}

	if r.ContentLength != 0 {
		r.Body = newReqBody(c, r.ContentLength)
	}
	return r, nil
}

var chunkedEncoding = []string{"chunked"}

// serveRequest runs the handler for req and finishes its response; it
// reports whether the connection can serve another request.
func (c *h1ServerConn) serveRequest(r *http.Request) bool {
	s := c.srv
	ctx := newReqContext(c.ctx)
	defer ctx.cancel(context.Canceled)
	req := r.WithContext(ctx)
	body, _ := req.Body.(*h1ReqBody)

	c.mu.Lock()
	c.inHandler, c.bodyDone, c.req = true, body == nil, ctx
	c.mu.Unlock()
	c.timer.Reset(s.bgReadDelay)
	if c.canWrite && c.bw.Buffered() > 0 {
		// A 100 Continue goes straight to the connection: earlier
		// (pipelined) answers must be out before it.
		if c.bw.Flush() != nil {
			c.endWatch()
			return false
		}
	}
	w := &c.res
	w.reset(req, body)
	ok := c.runHandler(w, req)
	c.endWatch()
	if c.hijacked {
		return false
	}
	if !ok {
		// An aborted response (http.ErrAbortHandler, or a panic): what
		// was written goes out, then the connection is cut so that the
		// client sees a broken body, not a short success.
		c.bw.Flush()
		return false
	}
	w.finish()
	keep := !w.closeAfter
	if keep && body != nil && !body.done.Load() {
		// The answer goes out first: the client may wait for it before it
		// sends the rest of the body, or close.
		if c.bw.Flush() != nil {
			return false
		}
		keep = body.drain()
	}
	if !keep {
		if c.bw.Flush() == nil {
			c.closeWriteAndDrain()
		}
		return false
	}
	return w.err == nil
}

// runHandler calls the proxy; it reports false when the handler panicked.
func (c *h1ServerConn) runHandler(w *h1Response, req *http.Request) (ok bool) {
	defer func() {
		if v := recover(); v != nil {
			ok = false
			if v != http.ErrAbortHandler {
				buf := make([]byte, 16<<10)
				buf = buf[:runtime.Stack(buf, false)]
				c.srv.proxy.logf("waypoint: panic serving %s: %v\n%s", c.remoteAddr, v, buf)
			}
		}
	}()
	c.srv.proxy.serve(w, req, &w.fields)
	return true
}

// watch runs on the connection's timer once a handler has run for
// bgReadDelay: it reads the connection in the background, as net/http does
// for every request, so that a client that goes away cancels the request's
// context. A byte that arrives instead (the next request) is kept for the
// connection's reader.
func (c *h1ServerConn) watch() {
	c.mu.Lock()
	if !c.inHandler || c.bgDone != nil {
		c.mu.Unlock()
		return
	}
	if !c.bodyDone {
		// The handler still reads the body: look again later.
		c.timer.Reset(100 * time.Millisecond)
		c.mu.Unlock()
		return
	}
	if c.br.Buffered() > 0 || c.cr.hasByte {
		c.mu.Unlock() // the next request is already here
		return
	}
	done := make(chan struct{})
	c.bgDone = done
	c.setReadDeadline(time.Time{}) // the loop reads idleUntil after endWatch, which waits for done
	c.mu.Unlock()
	var b [1]byte
	n, err := c.conn.Read(b[:])
	c.mu.Lock()
	if n == 1 {
		c.cr.byteBuf[0], c.cr.hasByte = b[0], true
	}
	if err != nil && c.inHandler && c.req != nil {
		c.req.cancel(context.Canceled)
	}
	c.bgDone = nil
	c.mu.Unlock()
	close(done)
}

// endWatch stops watching the connection: the handler returned or hijacks
// it.
func (c *h1ServerConn) endWatch() {
	c.timer.Stop()
	c.mu.Lock()
	c.inHandler = false
	c.req = nil
	done := c.bgDone
	c.mu.Unlock()
	if done == nil {
		return
	}
	c.setReadDeadline(aLongTimeAgo)
	t := time.NewTimer(time.Second)
	select {
	case <-done:
		c.setReadDeadline(time.Time{})
	case <-t.C:
		// A connection that ignores deadlines: only closing it ends the
		// read.
		c.conn.Close()
		<-done
	}
	t.Stop()
}

// writeContinue sends "100 Continue" on the first read of a body whose
// client waits for it, unless the response has started.
func (c *h1ServerConn) writeContinue() {
	c.continueMu.Lock()
	defer c.continueMu.Unlock()
	if c.canWrite {
		c.canWrite = false
		io.WriteString(c.conn, "HTTP/1.1 100 Continue\r\n\r\n")
	}
}

// h1ReqBody is a request body read from the connection: Content-Length
// bytes or chunks. Its state is atomic because the connection's watch and
// the response reads it while a transport goroutine may be reading it.
type h1ReqBody struct {
	// mu serializes reads: a transport may still be reading the body (an
	// HTTP/2 upstream's request writer) when the handler has returned and
	// the connection drains what is left.
	mu      sync.Mutex
	c       *h1ServerConn
	remain  atomic.Int64 // Content-Length bytes left; -1: chunked
	chunked io.Reader
	done    atomic.Bool // read to its end
	closed  atomic.Bool
	started bool
	err     error // sticky
}

func newReqBody(c *h1ServerConn, n int64) *h1ReqBody {
	b := &h1ReqBody{c: c}
	b.remain.Store(n)
	if n < 0 {
		b.chunked = httputil.NewChunkedReader(c.br)
	}
	return b
}

func (b *h1ReqBody) Read(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.closed.Load() {
		return 0, http.ErrBodyReadAfterClose
	}
	return b.read(p)
}

// Close marks the body closed; what is left unread is drained by the
// connection after the handler returns.
func (b *h1ReqBody) Close() error {
	b.closed.Store(true)
	return nil
}

func (b *h1ReqBody) read(p []byte) (int, error) {
	if b.done.Load() {
		return 0, io.EOF
	}
	if b.err != nil {
		return 0, b.err
	}
	if !b.started {
		b.started = true
		b.c.writeContinue()
	}
	if len(p) == 0 {
		return 0, nil
	}
	if b.chunked == nil {
		rem := b.remain.Load()
		if int64(len(p)) > rem {
			p = p[:rem]
		}
		n, err := b.c.br.Read(p)
		rem -= int64(n)
		b.remain.Store(rem)
		if rem == 0 {
			b.finish()
			return n, io.EOF
		}
		if err != nil {
			if err == io.EOF {
				err = io.ErrUnexpectedEOF
			}
			b.err = err
		}
		return n, err
	}
	n, err := b.chunked.Read(p)
	if err == io.EOF {
		if terr := b.c.readTrailer(b.c.srv.maxHeaderBytes, nil); terr != nil {
			b.err = &malformedBodyError{terr}
			return n, b.err
		}
		b.finish()
		return n, io.EOF
	}
	if err != nil {
		if !errors.Is(err, io.ErrUnexpectedEOF) && !errors.Is(err, net.ErrClosed) && !errors.As(err, new(net.Error)) {
			// Not the connection failing or ending (a net.Error, a cut):
			// the chunked reader refused the framing.
			err = &malformedBodyError{err}
		}
		b.err = err
	}
	return n, err
}

// malformedBodyError is a request body whose framing is broken: the proxy
// answers 400 (flag DPE) and closes the connection.
type malformedBodyError struct{ err error }

func (e *malformedBodyError) Error() string { return "malformed request body: " + e.err.Error() }
func (e *malformedBodyError) Unwrap() error { return e.err }

func (b *h1ReqBody) finish() {
	b.done.Store(true)
	c := b.c
	c.mu.Lock()
	c.bodyDone = true
	c.mu.Unlock()
}

// drain reads what the handler left of the body, up to
// maxPostHandlerReadBytes; it reports whether the body ended within that.
func (b *h1ReqBody) drain() bool {
	if b.done.Load() {
		return true
	}
	if rem := b.remain.Load(); rem > maxPostHandlerReadBytes {
		return false
	}
	b.mu.Lock()
	defer b.mu.Unlock()
	buf := bufPool.Get().(*[]byte)
	defer bufPool.Put(buf)
	var total int
	for total <= maxPostHandlerReadBytes {
		n, err := b.read(*buf)
		total += n
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
	}
	return false
}

// h1Response is the http.ResponseWriter of h1ServerConn. The head is written
// into the connection's buffer when the status is final and the framing
// known: at WriteHeader when the handler set Content-Length (the proxy's
// common case), else once 2 KiB of body are buffered, at a flush, or when
// the handler returns (then with a Content-Length, as net/http does).
type h1Response struct {
	c           *h1ServerConn
	req         *http.Request
	body        *h1ReqBody
	header      http.Header
	raw         *rawHeader  // an upstream answer's fields, as read, while header is not built (adoptRaw)
	snapshot    http.Header // the header as of WriteHeader, while the head waits
	snapRaw     *rawHeader  // raw as of WriteHeader, while the head waits
	status      int
	wroteHeader bool
	committed   bool // the head is in the buffer
	noBody      bool // HEAD, 1xx, 204, 304
	chunked     bool
	cl          int64 // declared Content-Length; -1: none
	written     int64
	closeAfter  bool
	pending     []byte // body held while the framing is not known
	trailers    []string
	err         error
	fields      reqFields // the request's (readRequest sets them)
}

func (w *h1Response) reset(req *http.Request, body *h1ReqBody) {
	clear(w.header)
	*w = h1Response{c: w.c, req: req, body: body, header: w.header, cl: -1, pending: w.pending[:0], trailers: w.trailers[:0],
		fields: reqFields{list: w.fields.list, reqs: [2]*http.Request{req}}}
}

func (w *h1Response) Header() http.Header {
	if w.raw != nil {
		// Asked for the fields: they become a map, the hop-by-hop ones
		// dropped as the head drops them.
		w.header = w.raw.header()
		removeHopHeaders(w.header, false)
		w.raw = nil
	}
	return w.header
}

// adoptHeader makes h the response's header (see headerAdopter); the
// connection keeps the map for its next responses.
func (w *h1Response) adoptHeader(h http.Header) { w.header = h }

// adoptRaw makes an upstream answer's fields, as read, the response's
// header (see rawAdopter): the head is written from them, hop-by-hop
// fields and those the Connection field names dropped, and a map is built
// only if Header is called. It refuses (false) once fields are set or the
// head is written.
func (w *h1Response) adoptRaw(r *rawHeader) bool {
	if w.wroteHeader || len(w.header) > 0 || w.raw != nil {
		return false
	}
	w.raw = r
	return true
}

func (w *h1Response) WriteHeader(code int) {
	if w.wroteHeader {
		return
	}
	if code < 100 || code > 999 {
		panic(fmt.Sprintf("invalid WriteHeader code %v", code))
	}
	if code < 200 && code != http.StatusSwitchingProtocols {
		w.writeInterim(code)
		return
	}
	w.wroteHeader = true
	w.status = code
	_, hasCL := w.header["Content-Length"]
	if w.raw != nil {
		hasCL = w.raw.has("Content-Length")
	}
	if hasCL || w.req.Method == http.MethodHead || !bodyAllowed(code) {
		w.commit(w.header, w.raw, false)
		return
	}
	if w.raw != nil {
		w.snapRaw = w.raw // never edited: its own snapshot
		return
	}
	w.snapshot = w.header.Clone()
}

// writeInterim writes a 1xx answer (other than 101) at once.
func (w *h1Response) writeInterim(code int) {
	bw := w.c.bw
	writeStatusLine(bw, code)
	for k, vv := range w.header {
		writeField(bw, k, vv)
	}
	bw.WriteString("\r\n")
	if err := bw.Flush(); err != nil {
		w.err = err
	}
}

func bodyAllowed(code int) bool {
	return code >= 200 && code != http.StatusNoContent && code != http.StatusNotModified
}

// commit writes the head from hdr, or from raw when set (an upstream
// answer's fields as read: hop-by-hop ones are dropped here). final is set
// when the handler has returned: a body not yet framed then gets a
// Content-Length.
func (w *h1Response) commit(hdr http.Header, raw *rawHeader, final bool) {
	w.committed = true
	c, req := w.c, w.req
	code := w.status
	if !bodyAllowed(code) || req.Method == http.MethodHead {
		w.noBody = true
	}
	if code == http.StatusSwitchingProtocols {
		w.closeAfter = true // the handler did not hijack: nothing more can follow
	}
	if w.body != nil && !w.body.done.Load() {
		// The body is still unread: drain it after the handler or, when
		// it is too large or of unknown length, close.
		if rem := w.body.remain.Load(); rem < 0 || rem > maxPostHandlerReadBytes {
			w.closeAfter = true
		}
		if c.canWrite {
			c.continueMu.Lock()
			if c.canWrite {
				// The client waits for a 100 Continue that will not come: its
				// body may or may not follow the answer.
				c.canWrite = false
				w.closeAfter = true
			}
			c.continueMu.Unlock()
		}
	}
	if req.Close || c.srv.shuttingDown.Load() {
		w.closeAfter = true
	}
	// A raw answer's Connection field is its own hop's, never this one's
	// (as removeHopHeaders drops it from a map).
	var rawListed []string // the fields a raw answer's Connection names
	var vbuf, lbuf [2]string
	values := func(k string) []string { return raw.values(hdr, vbuf[:0], k) }
	if raw != nil {
		rawListed = raw.appendValues(lbuf[:0], "Connection")
	} else if hasToken(hdr["Connection"], "close") {
		w.closeAfter = true
	}

	// Framing.
	skipCL := false
	var clLine string
	if vv := values("Content-Length"); len(vv) > 0 {
		if n, ok := parseContentLength(vv[0]); ok {
			w.cl = n
		} else {
			skipCL = true
		}
	}
	if t := values("Trailer"); raw == nil && len(t) > 0 && !w.noBody && req.ProtoAtLeast(1, 1) {
		for _, v := range t {
			for _, k := range strings.Split(v, ",") {
				if k = strings.TrimSpace(k); k != "" {
					w.trailers = append(w.trailers, http.CanonicalHeaderKey(k))
				}
			}
		}
	}
	switch {
	case w.noBody:
	case len(w.trailers) > 0:
		w.chunked, w.cl, skipCL = true, -1, true
	case w.cl >= 0:
	case final:
		w.cl = int64(len(w.pending))
		clLine = strconv.Itoa(len(w.pending))
	case req.ProtoAtLeast(1, 1):
		w.chunked = true
	default:
		w.closeAfter = true // the body ends with the connection
	}

	bw := c.bw
	writeStatusLine(bw, code)
	if raw != nil {
		w.writeRawFields(raw, rawListed, skipCL)
	}
	for k, vv := range hdr {
		switch k {
		case "Content-Length":
			if skipCL {
				continue
			}
		case "Transfer-Encoding":
			continue
		}
		if strings.HasPrefix(k, http.TrailerPrefix) {
			continue
		}
		writeField(bw, k, vv)
	}
	if clLine != "" && !w.noBody {
		bw.WriteString("Content-Length: ")
		bw.WriteString(clLine)
		bw.WriteString("\r\n")
	}
	if w.chunked {
		bw.WriteString("Transfer-Encoding: chunked\r\n")
	}
	if _, ok := hdr["Date"]; !ok && (raw == nil || !raw.has("Date")) {
		bw.WriteString("Date: ")
		bw.WriteString(httpDate())
		bw.WriteString("\r\n")
	}
	if _, ok := hdr["Content-Type"]; !ok && (raw == nil || !raw.has("Content-Type")) && !w.noBody && len(w.pending) > 0 {
		bw.WriteString("Content-Type: ")
		bw.WriteString(http.DetectContentType(w.pending))
		bw.WriteString("\r\n")
	}
	switch {
	case w.closeAfter && (raw != nil || !hasToken(hdr["Connection"], "close")):
		bw.WriteString("Connection: close\r\n")
	case !w.closeAfter && req.ProtoMinor == 0:
		bw.WriteString("Connection: keep-alive\r\n")
	}
	bw.WriteString("\r\n")
	if len(w.pending) > 0 {
		p := w.pending
		w.pending = w.pending[:0]
		w.written -= int64(len(p))
		w.writeBody(p)
	}
}

// writeRawFields writes an upstream answer's fields as read but the
// hop-by-hop ones, those its Connection field lists, and the framing ones
// this head sets itself (Transfer-Encoding; Content-Length when skipCL). Names were checked and canonicalized, and values
// checked for control characters, when the answer was read.
func (w *h1Response) writeRawFields(raw *rawHeader, listed []string, skipCL bool) {
	bw := w.c.bw
	for _, sp := range raw.spans {
		k := raw.head[sp.k0:sp.k1]
		switch {
		case isHopHeader(k), k == "Content-Length" && skipCL:
			continue
		case len(listed) > 0 && hasToken(listed, k):
			continue
		}
		bw.WriteString(k)
		bw.WriteString(": ")
		bw.WriteString(raw.head[sp.v0:sp.v1])
		bw.WriteString("\r\n")
	}
}

func (w *h1Response) Write(p []byte) (int, error) {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if w.err != nil {
		return 0, w.err
	}
	if w.noBody || (!w.committed && !bodyAllowed(w.status)) {
		if w.req.Method == http.MethodHead {
			return len(p), nil
		}
		return 0, http.ErrBodyNotAllowed
	}
	if !w.committed {
		if len(w.pending)+len(p) <= pendingMax {
			if w.pending == nil {
				w.pending = make([]byte, 0, pendingMax)
			}
			w.pending = append(w.pending, p...)
			w.written += int64(len(p))
			return len(p), nil
		}
		w.commit(w.snapshot, w.snapRaw, false)
	}
	if w.cl >= 0 && w.written+int64(len(p)) > w.cl {
		return 0, http.ErrContentLength
	}
	return w.writeBody(p)
}

// pendingMax is how much body is held before the head is written without a
// Content-Length (net/http's bufferBeforeChunkingSize).
const pendingMax = 2048

func (w *h1Response) writeBody(p []byte) (int, error) {
	bw := w.c.bw
	if w.chunked && len(p) > 0 {
		var b [16]byte
		bw.Write(strconv.AppendInt(b[:0], int64(len(p)), 16))
		bw.WriteString("\r\n")
	}
	n, err := bw.Write(p)
	if w.chunked && err == nil && len(p) > 0 {
		_, err = bw.WriteString("\r\n")
	}
	w.written += int64(n)
	if err != nil {
		w.err = err
	}
	return n, err
}

func (w *h1Response) WriteString(s string) (int, error) {
	return w.Write([]byte(s))
}

// FlushError writes the head if it is not yet out and sends what is
// buffered (http.ResponseController.Flush).
func (w *h1Response) FlushError() error {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(w.snapshot, w.snapRaw, false)
	}
	if w.err != nil {
		return w.err
	}
	if err := w.c.bw.Flush(); err != nil {
		w.err = err
		return err
	}
	return nil
}

func (w *h1Response) Flush() { w.FlushError() }

// Hijack hands the connection over (the proxy does after a 101); the
// buffered bytes of the client come in the ReadWriter's Reader.
func (w *h1Response) Hijack() (net.Conn, *bufio.ReadWriter, error) {
	c := w.c
	if w.committed {
		return nil, nil, errors.New("hijack after the response started")
	}
	c.endWatch()
	c.hijacked = true
	if c.cr.hasByte {
		if _, err := c.br.Peek(c.br.Buffered() + 1); err != nil {
			return nil, nil, err
		}
	}
	if err := c.bw.Flush(); err != nil {
		return nil, nil, err
	}
	c.conn.SetDeadline(time.Time{})
	return c.conn, bufio.NewReadWriter(c.br, c.bw), nil
}

// finish completes the response once the handler returned.
func (w *h1Response) finish() {
	if !w.wroteHeader {
		w.WriteHeader(http.StatusOK)
	}
	if !w.committed {
		w.commit(w.snapshot, w.snapRaw, true)
	}
	bw := w.c.bw
	if w.chunked {
		bw.WriteString("0\r\n")
		for _, k := range w.trailers {
			if vv := w.header[k]; len(vv) > 0 {
				writeField(bw, k, vv)
			}
		}
		for k, vv := range w.header {
			if strings.HasPrefix(k, http.TrailerPrefix) {
				writeField(bw, k[len(http.TrailerPrefix):], vv)
			}
		}
		bw.WriteString("\r\n")
	}
	if !w.noBody && w.cl >= 0 && w.written < w.cl {
		w.closeAfter = true // a short body: only closing can end it
	}
	if w.err != nil {
		w.closeAfter = true
	}
}
