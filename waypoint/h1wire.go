package waypoint

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"math/bits"
	"net/http"
	"net/http/httputil"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
)

// HTTP/1.1 messages as the waypoint reads and writes them on both sides:
// request heads for h1Server, request heads and bodies written and answers
// read for h1Client. A head is read into one reused buffer and turned into
// one string, whose substrings are the header keys (canonicalized in place)
// and values: one allocation for the head instead of one or two per field
// (net/textproto's), and no per-field work beyond a scan.

// headerSpan locates one header field in the head.
type headerSpan struct{ k0, k1, v0, v1 int }

// headReader reads message heads from br.
type headReader struct {
	br     *bufio.Reader
	head   []byte       // the head being read, lines separated by '\n'
	spans  []headerSpan // its fields
	bareLF bool         // the last line read ended with "\n" alone
}

// readHead reads a start line and header fields up to the empty line,
// limited to limit bytes (errHeadTooLarge). The start line is
// head[l0:l1]. At most leading empty lines before the start line are skipped
// (RFC 9112 section 2.2 asks it of a server reading a request line; a
// client reading an answer skips none, as net/http's). Malformed fields are
// a requestError (400): obs-fold, a name that is not a token or has a space
// before the colon, a control character in a value.
func (h *headReader) readHead(limit, leading int) (l0, l1 int, err error) {
	h.head = h.head[:0]
	h.spans = h.spans[:0]
	if h.br.Buffered() == 0 && limit >= 0 {
		// The read the first readLine would do; an error with no byte
		// read is what it returns as is (a negative limit aside: that
		// is errHeadTooLarge, which readHeadLines says).
		if _, err := h.br.Peek(1); err != nil {
			return 0, 0, err
		}
	}
	if l0, l1, ok := h.readBufferedHead(limit, leading); ok {
		return l0, l1, nil
	}
	// The head is not whole in the buffer, or something in it is wrong:
	// line by line from its start, which says what.
	return h.readHeadLines(limit, leading)
}

// readHeadLines is readHead line by line, for any head.
func (h *headReader) readHeadLines(limit, leading int) (l0, l1 int, err error) {
	h.head = h.head[:0]
	h.spans = h.spans[:0]
	l0 = -1
	for empty := 0; ; {
		start := len(h.head)
		line, err := h.readLine(limit, l0 < 0 && empty == 0)
		if err != nil {
			return 0, 0, err
		}
		if l0 < 0 {
			if len(line) == 0 {
				if empty++; empty > leading {
					return 0, 0, badRequest("malformed start line")
				}
				continue
			}
			l0, l1 = start, start+len(line)
			continue
		}
		if len(line) == 0 {
			return l0, l1, nil
		}
		if err := h.addField(line, start); err != nil {
			return 0, 0, err
		}
	}
}

// readBufferedHead is readHead for the common case of a head whole in
// br's buffer and well formed: one pass over the buffered bytes, each line
// copied into h.head once, no call per line. It does what readHead's line
// by line reading would and reports ok, or reports !ok having consumed
// nothing from br when it meets the buffer's end before the head's, the
// limit, or anything malformed: readHead then reads the head line by line
// and fails or succeeds as it always has. Only h.head and h.spans (reset
// by readHead) are touched before that.
func (h *headReader) readBufferedHead(limit, leading int) (l0, l1 int, ok bool) {
	buf, _ := h.br.Peek(h.br.Buffered())
	dst := h.head[:cap(h.head)]
	w, p := 0, 0 // bytes written to dst, read from buf
	l0 = -1
	for empty := 0; l0 < 0; {
		// Start line, or empty lines before it.
		nl := bytes.IndexByte(buf[p:], '\n')
		if nl < 0 || w+nl+1 > limit {
			return 0, 0, false
		}
		n := nl
		if n > 0 && buf[p+n-1] == '\r' {
			n--
		}
		if w+n+1 > len(dst) {
			dst = slices.Grow(dst[:w], n+1)
			dst = dst[:cap(dst)]
		}
		if n == 0 {
			if empty++; empty > leading {
				return 0, 0, false
			}
		} else {
			l0, l1 = w, w+n
			copy(dst[w:], buf[p:p+n])
		}
		dst[w+n] = '\n'
		w += n + 1
		p += nl + 1
	}
	for p < len(buf) {
		// The empty line that ends the head.
		if c := buf[p]; c == '\n' || c == '\r' && p+1 < len(buf) && buf[p+1] == '\n' {
			raw := 1
			if c == '\r' {
				raw = 2
			}
			if w+raw > limit {
				return 0, 0, false
			}
			if w+1 > len(dst) {
				dst = slices.Grow(dst[:w], 1)
				dst = dst[:cap(dst)]
			}
			dst[w] = '\n'
			h.head = dst[:w+1]
			h.bareLF = raw == 1
			h.br.Discard(p + raw)
			return l0, l1, true
		}
		// A field: a token, a colon, spaces or tabs, the value up to
		// the line's end, which the first control character found in it
		// must be (tabs aside). An obs-fold's leading space or tab is not
		// a token.
		k1 := p
		for k1 < len(buf) && tokenChars[buf[k1]] {
			k1++
		}
		k := k1 - p
		if k == 0 || k1 == len(buf) || buf[k1] != ':' {
			return 0, 0, false
		}
		v0 := k1 + 1
		for v0 < len(buf) && (buf[v0] == ' ' || buf[v0] == '\t') {
			v0++
		}
		end := v0 // the line's content ends here, its line end follows
		for {
			end += ctlIndex(buf[end:])
			if end == len(buf) {
				return 0, 0, false
			}
			if buf[end] != '\t' {
				break
			}
			end++
		}
		nl := end // the '\n'
		switch {
		case buf[end] == '\n':
		case buf[end] == '\r' && end+1 < len(buf) && buf[end+1] == '\n':
			nl++
		default:
			return 0, 0, false
		}
		v1 := end
		for v1 > v0 && (buf[v1-1] == ' ' || buf[v1-1] == '\t') {
			v1--
		}
		n := end - p
		if w+nl+1-p > limit {
			return 0, 0, false
		}
		if w+n+1 > len(dst) {
			dst = slices.Grow(dst[:w], n+1)
			dst = dst[:cap(dst)]
		}
		copy(dst[w:], buf[p:end])
		canonicalizeToken(dst[w : w+k])
		dst[w+n] = '\n'
		h.spans = append(h.spans, headerSpan{w, w + k1 - p, w + v0 - p, w + v1 - p})
		w += n + 1
		p = nl + 1
	}
	return 0, 0, false
}

// ctlIndex returns the index of the first byte of b that is a control
// character (below ' ', or DEL), or len(b): eight bytes at a time.
func ctlIndex(b []byte) int {
	const ones, highs = 0x0101010101010101, 0x8080808080808080
	i := 0
	for ; i+8 <= len(b); i += 8 {
		x := binary.LittleEndian.Uint64(b[i:])
		y := x ^ (0x7f * ones)
		// A byte's high bit is set where it is below 0x20 or (y) zero,
		// exactly so in the lowest such byte (a borrow only goes up).
		if m := ((x-0x20*ones)&^x | (y-ones)&^y) & highs; m != 0 {
			return i + bits.TrailingZeros64(m)/8
		}
	}
	for ; i < len(b); i++ {
		if b[i] < ' ' || b[i] == 0x7f {
			return i
		}
	}
	return len(b)
}

// addField records the header field line, at start in h.head.
func (h *headReader) addField(line []byte, start int) error {
	if line[0] == ' ' || line[0] == '\t' {
		return badRequest("obsolete line folding")
	}
	colon := bytes.IndexByte(line, ':')
	if colon <= 0 {
		return badRequest("malformed header line")
	}
	if !canonicalizeToken(line[:colon]) {
		return badRequest("invalid header name")
	}
	v0, v1 := colon+1, len(line)
	for v0 < v1 && (line[v0] == ' ' || line[v0] == '\t') {
		v0++
	}
	for v1 > v0 && (line[v1-1] == ' ' || line[v1-1] == '\t') {
		v1--
	}
	for _, b := range line[v0:v1] {
		if (b < ' ' && b != '\t') || b == 0x7f {
			return badRequest("invalid header value")
		}
	}
	h.spans = append(h.spans, headerSpan{start, start + colon, start + v0, start + v1})
	return nil
}

// header builds the header map of the fields just read; head is
// string(h.head).
func (h *headReader) header(head string) http.Header {
	return (&rawHeader{head: head, spans: h.spans}).header()
}

// rawHeader is a message's header fields as read: the head as one string
// and each field's span in it, names canonical. An upstream answer's
// fields stay so on their way to an HTTP/1.1 client when nothing edits
// them (the proxy's common case): they are written out as they came,
// hop-by-hop fields dropped, and no header map is built for them unless
// something asks for one (see answerHeader and h1Response.adoptRaw).
type rawHeader struct {
	head  string
	spans []headerSpan
}

// header builds the header map: the values are substrings of the head,
// in one slice.
func (r *rawHeader) header() http.Header {
	return buildHeader(len(r.spans), func(i int) (string, string) {
		sp := r.spans[i]
		return r.head[sp.k0:sp.k1], r.head[sp.v0:sp.v1]
	})
}

// buildHeader returns the header of n fields, field i being at(i) (name
// canonical), in their order. The values share one backing array: a name
// seen once (most are) costs no slice of its own; a repeated name's
// append copies out of it.
func buildHeader(n int, at func(i int) (k, v string)) http.Header {
	hdr := make(http.Header, n)
	values := make([]string, n)
	for i := range n {
		k, v := at(i)
		values[i] = v
		if vv, ok := hdr[k]; ok {
			hdr[k] = append(vv, v)
		} else {
			hdr[k] = values[i : i+1 : i+1]
		}
	}
	return hdr
}

// get returns the first value of the field named k (canonical), or "".
func (r *rawHeader) get(k string) string {
	for _, sp := range r.spans {
		if r.head[sp.k0:sp.k1] == k {
			return r.head[sp.v0:sp.v1]
		}
	}
	return ""
}

// has reports whether a field named k (canonical) is present.
func (r *rawHeader) has(k string) bool {
	for _, sp := range r.spans {
		if r.head[sp.k0:sp.k1] == k {
			return true
		}
	}
	return false
}

// values returns the values of field k (canonical): from r, appended to
// buf, when r is set, else from hdr.
func (r *rawHeader) values(hdr http.Header, buf []string, k string) []string {
	if r == nil {
		return hdr[k]
	}
	return r.appendValues(buf, k)
}

// appendValues appends the values of the fields named k (canonical).
func (r *rawHeader) appendValues(dst []string, k string) []string {
	for _, sp := range r.spans {
		if r.head[sp.k0:sp.k1] == k {
			dst = append(dst, r.head[sp.v0:sp.v1])
		}
	}
	return dst
}

// readLine appends the next line of the head, without its line end, to
// h.head (then a '\n' separator) and returns it. first is set for the
// first line of a message: an end of input before any byte of it is the
// peer closing an idle connection, returned as is.
func (h *headReader) readLine(limit int, first bool) ([]byte, error) {
	start := len(h.head)
	for {
		frag, err := h.br.ReadSlice('\n')
		if len(h.head)+len(frag) > limit {
			return nil, errHeadTooLarge
		}
		h.head = append(h.head, frag...)
		if err == nil {
			break
		}
		if err != bufio.ErrBufferFull {
			if first && len(h.head) == 0 {
				return nil, err
			}
			return nil, fmt.Errorf("read message head: %w", err)
		}
	}
	// Drop "\n" or "\r\n": the line is then what textproto's ReadLine
	// returns (a bare LF ends a line, as it does for net/http).
	end := len(h.head) - 1
	h.bareLF = true
	if end > start && h.head[end-1] == '\r' {
		end--
		h.bareLF = false
	}
	h.head = append(h.head[:end], '\n')
	return h.head[start:end], nil
}

// readTrailer reads the trailer section after a last chunk, up to its
// empty line, into *into (nil: the fields are dropped).
func (h *headReader) readTrailer(limit int, into *http.Header) error {
	h.head = h.head[:0]
	h.spans = h.spans[:0]
	for {
		start := len(h.head)
		line, err := h.readLine(limit, false)
		if err != nil {
			return err
		}
		// The chunked framing takes CRLF only (RFC 9112 section 7.1):
		// a bare LF here is where parsers disagree on where a message
		// ends (net/http accepts it only when a CRLF CRLF follows
		// somewhere in its buffer), the ground for smuggling a request.
		if h.bareLF {
			return errors.New("malformed trailer: a line ends with a bare LF, not CRLF")
		}
		if len(line) == 0 {
			break
		}
		if err := h.addField(line, start); err != nil {
			return fmt.Errorf("malformed trailer: %w", err)
		}
	}
	if into == nil || len(h.spans) == 0 {
		return nil
	}
	if *into == nil {
		*into = http.Header{}
	}
	for k, vv := range h.header(string(h.head)) {
		(*into)[k] = vv
	}
	return nil
}

// maxResponseHead bounds an upstream answer's head.
const maxResponseHead = 1 << 20

// readResponse reads an answer's head from h.br and sets up its body, as
// http.ReadResponse does for the waypoint's uses. The header fields of an
// answer with a body framed by its Content-Length or by the connection's
// end (no Transfer-Encoding, no Trailer) are left as read: resp.Header is
// then nil and raw holds them (raw.head is "" otherwise).
//
// What it allocates beside the head's string lives in st (see answerStore).
func (h *headReader) readResponse(req *http.Request, st *answerStore) (resp *http.Response, raw rawHeader, err error) {
	l0, l1, err := h.readHead(maxResponseHead, 0)
	if err != nil {
		var re *requestError
		if errors.As(err, &re) {
			return nil, raw, fmt.Errorf("malformed HTTP response: %s", re.msg)
		}
		return nil, raw, err
	}
	head := string(h.head)
	line := head[l0:l1]
	proto, status, ok := strings.Cut(line, " ")
	if !ok {
		return nil, raw, fmt.Errorf("malformed HTTP response %q", line)
	}
	resp = &st.resp
	*resp = http.Response{Request: req, Status: strings.TrimLeft(status, " ")}
	switch proto {
	case "HTTP/1.1":
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	case "HTTP/1.0":
		resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.0", 1, 0
	default:
		return nil, raw, fmt.Errorf("malformed HTTP version %q", proto)
	}
	code, _, _ := strings.Cut(resp.Status, " ")
	if len(code) != 3 {
		return nil, raw, fmt.Errorf("malformed HTTP status code %q", code)
	}
	resp.StatusCode, err = strconv.Atoi(code)
	if err != nil || resp.StatusCode < 100 {
		return nil, raw, fmt.Errorf("malformed HTTP status code %q", code)
	}
	fields := rawHeader{head: head, spans: h.spans}
	var hdr http.Header // nil while the fields stay raw
	if fields.has("Transfer-Encoding") || fields.has("Trailer") {
		hdr = fields.header()
		resp.Header = hdr
	}
	var vbuf [2]string
	src := &fields // nil once the map is built
	if hdr != nil {
		src = nil
	}
	values := func(k string) []string { return src.values(hdr, vbuf[:0], k) }
	resp.Close = wantsClose(values("Connection"), resp.ProtoMajor, resp.ProtoMinor)

	noBody := req.Method == http.MethodHead || resp.StatusCode < 200 ||
		resp.StatusCode == http.StatusNoContent || resp.StatusCode == http.StatusNotModified
	// A Content-Length must be valid whatever else frames the answer (as
	// net/http checks it), even where no body follows.
	cl := int64(-1)
	if cls := values("Content-Length"); len(cls) > 0 {
		for _, v := range cls[1:] {
			if v != cls[0] {
				return nil, raw, fmt.Errorf("conflicting Content-Length %q", slices.Clone(cls))
			}
		}
		n, ok := parseContentLength(cls[0])
		if !ok {
			return nil, raw, fmt.Errorf("invalid Content-Length %q", cls[0])
		}
		cl = n
	}
	te, chunked := hdr["Transfer-Encoding"]
	if chunked {
		if len(te) != 1 || !strings.EqualFold(te[0], "chunked") {
			return nil, raw, fmt.Errorf("unsupported transfer encoding %q", te)
		}
		delete(hdr, "Transfer-Encoding")
		if resp.ProtoMinor == 0 {
			chunked = false
		} else {
			delete(hdr, "Content-Length")
		}
	}
	resp.ContentLength = -1
	if !chunked {
		resp.ContentLength = cl
	}
	switch {
	case noBody:
		if req.Method != http.MethodHead || resp.StatusCode < 200 {
			resp.ContentLength = 0 // as http.ReadResponse: Response.Write then adds no "Connection: close"
		}
		resp.Body = http.NoBody
	case chunked:
		resp.TransferEncoding = chunkedEncoding
		if tr, ok := hdr["Trailer"]; ok {
			delete(hdr, "Trailer")
			resp.Trailer = http.Header{}
			for _, v := range tr {
				for _, k := range strings.Split(v, ",") {
					if k = strings.TrimSpace(k); k != "" {
						resp.Trailer[http.CanonicalHeaderKey(k)] = nil
					}
				}
			}
		}
		st.wire = wireBody{h: h, remain: -1, chunked: httputil.NewChunkedReader(h.br), trailer: &resp.Trailer}
		resp.Body = &st.wire
	case resp.ContentLength == 0:
		resp.Body = http.NoBody
	case resp.ContentLength > 0:
		st.wire = wireBody{h: h, remain: resp.ContentLength}
		resp.Body = &st.wire
	default:
		// Delimited by the end of the connection.
		resp.Close = true
		st.wire = wireBody{h: h, remain: -1}
		resp.Body = &st.wire
	}
	if hdr == nil {
		if _, ok := resp.Body.(*wireBody); ok {
			// The span list is the reader's, reused by the next head.
			fields.spans = append(st.spans[:0], fields.spans...)
			return resp, fields, nil
		}
		resp.Header = fields.header()
	}
	return resp, raw, nil
}

// answerStore is the storage of one upstream answer beside its head's
// string: its Response, its body's reader and its field spans (when they
// stay raw), in one allocation with the h1Body that wraps them instead of
// one each.
type answerStore struct {
	resp  http.Response
	wire  wireBody
	spans [16]headerSpan // more are appended elsewhere
}

// wireBody is an answer's body read from the connection: Content-Length
// bytes, chunks, or everything up to the connection's end.
type wireBody struct {
	h       *headReader
	remain  int64 // -1: chunked or up to the end
	chunked io.Reader
	trailer *http.Header
	err     error
}

func (b *wireBody) Read(p []byte) (int, error) {
	if b.err != nil {
		return 0, b.err
	}
	if len(p) == 0 {
		return 0, nil
	}
	var n int
	var err error
	switch {
	case b.chunked != nil:
		n, err = b.chunked.Read(p)
		if err == io.EOF {
			if terr := b.h.readTrailer(maxResponseHead, b.trailer); terr != nil {
				err = terr
			}
		}
	case b.remain >= 0:
		if int64(len(p)) > b.remain {
			p = p[:b.remain]
		}
		n, err = b.h.br.Read(p)
		b.remain -= int64(n)
		if b.remain == 0 {
			err = io.EOF
		} else if err == io.EOF {
			err = io.ErrUnexpectedEOF
		}
	default:
		n, err = b.h.br.Read(p)
	}
	b.err = err
	return n, err
}

func (b *wireBody) Close() error { return nil }

// writeRequest writes req as http.Request.Write does for a proxy: the
// request line with the URL's path and query, Host, the header fields (CR
// and LF in values become spaces), the framing from ContentLength (chunked
// when unknown, "Content-Length: 0" for an empty body of a method other
// than GET and HEAD), "Connection: close" for req.Close, then the body and
// trailers. fields, when set, are the header fields (a reqFields list),
// else req.Header. Unlike net/http it adds no User-Agent: a proxy passes the
// client's on, or none. The body is closed after.
func writeRequest(bw *bufio.Writer, req *http.Request, fields []field) error {
	host := req.Host
	if host == "" {
		host = req.URL.Host
	}
	if !validHost(host) {
		return fmt.Errorf("invalid Host %q", host)
	}
	body := req.Body
	hasBody := body != nil && body != http.NoBody
	cl := req.ContentLength
	switch {
	case !hasBody:
		cl = 0
	case cl == 0:
		cl = -1
	}
	if hasBody {
		defer body.Close()
	}
	method := req.Method
	if method == "" {
		method = http.MethodGet
	}
	bw.WriteString(method)
	bw.WriteByte(' ')
	if req.URL.Opaque != "" {
		bw.WriteString(req.URL.RequestURI())
	} else {
		p := req.URL.EscapedPath()
		if p == "" {
			p = "/"
		}
		bw.WriteString(p)
		if req.URL.ForceQuery || req.URL.RawQuery != "" {
			bw.WriteByte('?')
			bw.WriteString(req.URL.RawQuery)
		}
	}
	bw.WriteString(" HTTP/1.1\r\nHost: ")
	bw.WriteString(host)
	bw.WriteString("\r\n")
	if fields != nil {
		writeFields(bw, fields)
	} else {
		for k, vv := range req.Header {
			switch k {
			case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
				continue
			}
			writeField(bw, k, vv)
		}
	}
	switch {
	case cl > 0:
		var b [20]byte
		bw.WriteString("Content-Length: ")
		bw.Write(strconv.AppendInt(b[:0], cl, 10))
		bw.WriteString("\r\n")
	case cl == 0 && method != http.MethodGet && method != http.MethodHead:
		bw.WriteString("Content-Length: 0\r\n")
	case cl < 0:
		bw.WriteString("Transfer-Encoding: chunked\r\n")
		if len(req.Trailer) > 0 {
			keys := make([]string, 0, len(req.Trailer))
			for k := range req.Trailer {
				keys = append(keys, k)
			}
			bw.WriteString("Trailer: ")
			bw.WriteString(strings.Join(keys, ","))
			bw.WriteString("\r\n")
		}
	}
	if req.Close && !hasToken(req.Header["Connection"], "close") && !listHasToken(fields, "Connection", "close") { // one of the two is empty
		bw.WriteString("Connection: close\r\n")
	}
	if _, err := bw.WriteString("\r\n"); err != nil {
		return err
	}
	switch {
	case cl > 0:
		n, err := io.Copy(bw, io.LimitReader(body, cl))
		if err != nil {
			return err
		}
		if n != cl {
			return fmt.Errorf("http: ContentLength=%d with Body length %d", cl, n)
		}
	case cl < 0:
		cw := httputil.NewChunkedWriter(bw)
		if _, err := io.Copy(cw, body); err != nil {
			return err
		}
		if err := cw.Close(); err != nil {
			return err
		}
		for k, vv := range req.Trailer {
			writeField(bw, k, vv)
		}
		if _, err := bw.WriteString("\r\n"); err != nil {
			return err
		}
	}
	return nil
}

func writeStatusLine(bw *bufio.Writer, code int) {
	bw.WriteString("HTTP/1.1 ")
	// The code's three digits (WriteHeader takes 100 to 999) a byte at a
	// time: a slice of a local array passed to Write escapes, an
	// allocation per answer.
	bw.WriteByte(byte('0' + code/100))
	bw.WriteByte(byte('0' + code/10%10))
	bw.WriteByte(byte('0' + code%10))
	bw.WriteByte(' ')
	text := http.StatusText(code)
	if text == "" {
		text = "status code " + strconv.Itoa(code)
	}
	bw.WriteString(text)
	bw.WriteString("\r\n")
}

// writeField writes one header field: fields with invalid names are
// dropped, CR and LF in values become spaces (as net/http does).
func writeField(bw *bufio.Writer, k string, vv []string) {
	if !isToken(k) {
		return
	}
	for _, v := range vv {
		writeFieldValue(bw, k, v)
	}
}

// writeFieldValue writes field k (a token) with value v, CR and LF in it
// made spaces.
func writeFieldValue(bw *bufio.Writer, k, v string) {
	bw.WriteString(k)
	bw.WriteString(": ")
	if strings.IndexByte(v, '\r') >= 0 || strings.IndexByte(v, '\n') >= 0 {
		v = strings.NewReplacer("\r\n", " ", "\r", " ", "\n", " ").Replace(v)
	}
	bw.WriteString(v)
	bw.WriteString("\r\n")
}

// Date header values, formatted once a second.
type dateValue struct {
	sec int64
	s   string
}

var dateCache atomic.Pointer[dateValue]

func httpDate() string {
	now := time.Now()
	if d := dateCache.Load(); d != nil && d.sec == now.Unix() {
		return d.s
	}
	d := &dateValue{sec: now.Unix(), s: now.UTC().Format(http.TimeFormat)}
	dateCache.Store(d)
	return d.s
}

// tokenChars are RFC 9110's tchar.
var tokenChars = func() (t [256]bool) {
	for c := '0'; c <= '9'; c++ {
		t[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		t[c], t[c-'a'+'A'] = true, true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		t[c] = true
	}
	return t
}()

func isToken(s string) bool {
	if s == "" {
		return false
	}
	for i := 0; i < len(s); i++ {
		if !tokenChars[s[i]] {
			return false
		}
	}
	return true
}

// canonicalizeToken checks that b is a token and rewrites it in place in
// canonical MIME form (textproto.CanonicalMIMEHeaderKey), so that the
// header map's keys are substrings of the head.
func canonicalizeToken(b []byte) bool {
	upper := true
	for i, c := range b {
		if !tokenChars[c] {
			return false
		}
		if upper && 'a' <= c && c <= 'z' {
			b[i] = c - ('a' - 'A')
		} else if !upper && 'A' <= c && c <= 'Z' {
			b[i] = c + ('a' - 'A')
		}
		upper = c == '-'
	}
	return true
}

// hostChars are httpguts.ValidHostHeader's.
var hostChars = func() (t [256]bool) {
	for c := 0; c < 256; c++ {
		t[c] = tokenChars[c] && c != '#' && c != '^' && c != '`' && c != '|'
	}
	for _, c := range "()*,:;=[]" {
		t[c] = true
	}
	return t
}()

func validHost(h string) bool {
	for i := 0; i < len(h); i++ {
		if !hostChars[h[i]] {
			return false
		}
	}
	return true
}

// parseContentLength accepts only digits (no sign, no spaces, no list).
func parseContentLength(s string) (int64, bool) {
	if s == "" || len(s) > 18 {
		return 0, false
	}
	var n int64
	for i := 0; i < len(s); i++ {
		if s[i] < '0' || s[i] > '9' {
			return 0, false
		}
		n = n*10 + int64(s[i]-'0')
	}
	return n, true
}

// wantsClose is whether the client asked for the connection to end after
// this request (HTTP/1.0 without keep-alive, or "Connection: close").
func wantsClose(conn []string, major, minor int) bool {
	if major == 1 && minor == 0 {
		return !hasToken(conn, "keep-alive") || hasToken(conn, "close")
	}
	return hasToken(conn, "close")
}

// hasToken reports whether a comma-separated header contains token.
func hasToken(vv []string, token string) bool {
	for _, v := range vv {
		for v != "" {
			var f string
			f, v, _ = strings.Cut(v, ",")
			if strings.EqualFold(strings.TrimSpace(f), token) {
				return true
			}
		}
	}
	return false
}
