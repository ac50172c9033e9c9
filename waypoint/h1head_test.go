package waypoint

import (
	"bufio"
	"errors"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"testing/iotest"

	gocmp "github.com/google/go-cmp/cmp"
)

// headResult is what reading one head left: its return values and the
// reader's state.
type headResult struct {
	L0, L1   int
	Err      string
	TooLarge bool
	Head     string
	Spans    []headerSpan
	BareLF   bool
}

// readHeads reads heads from h with read until one fails (at most a few)
// and returns what each left and the bytes after the last.
func readHeads(h *headReader, read func(limit, leading int) (int, int, error), limit, leading int) ([]headResult, string) {
	var rs []headResult
	for range 3 {
		l0, l1, err := read(limit, leading)
		r := headResult{L0: l0, L1: l1, Head: string(h.head), Spans: append([]headerSpan(nil), h.spans...), BareLF: h.bareLF}
		if err != nil {
			r.Err, r.TooLarge = err.Error(), errors.Is(err, errHeadTooLarge)
		}
		rs = append(rs, r)
		if err != nil {
			break
		}
	}
	rest, _ := io.ReadAll(h.br)
	return rs, string(rest)
}

// splitReader returns its input in two reads, split at s.
func splitReader(in string, s int) io.Reader {
	return io.MultiReader(strings.NewReader(in[:s]), strings.NewReader(in[s:]))
}

// sameHeads fails t unless readHead, which takes heads whole in the
// buffer in one pass, does what readHeadLines, line by line, does with
// the same input read the same way.
func sameHeads(t *testing.T, newReader func() io.Reader, limit, leading int, what string) {
	t.Helper()
	fast := &headReader{br: bufio.NewReaderSize(newReader(), 4096)}
	lines := &headReader{br: bufio.NewReaderSize(newReader(), 4096)}
	got, gotRest := readHeads(fast, fast.readHead, limit, leading)
	want, wantRest := readHeads(lines, lines.readHeadLines, limit, leading)
	if diff := gocmp.Diff(want, got, gocmp.AllowUnexported(headerSpan{})); diff != "" {
		t.Fatalf("%s: readHead differs from readHeadLines (-want +got):\n%s", what, diff)
	}
	if gotRest != wantRest {
		t.Fatalf("%s: readHead left %q; readHeadLines %q", what, gotRest, wantRest)
	}
}

func TestReadBufferedHead(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		leading int
		fast    bool        // the first head is read in one pass
		want    http.Header // the first head's fields, when set
	}{
		{name: "nginx answer", in: benchAnswerHead + "hello", fast: true},
		{name: "request", in: benchRequestHead, leading: 4, fast: true},
		{name: "pipelined", in: benchRequestHead + benchRequestHead + "GET / HTTP/1.1\r\nHost: a\r\n", leading: 4, fast: true},
		{name: "no fields", in: "GET / HTTP/1.1\r\n\r\nbody", fast: true, want: http.Header{}},
		{name: "leading empty lines", in: "\r\n\n\r\n\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", leading: 4, fast: true,
			want: http.Header{"Host": {"a"}}},
		{name: "too many leading empty lines", in: "\r\n\r\n\r\n\r\n\r\nGET / HTTP/1.1\r\nHost: a\r\n\r\n", leading: 4},
		{name: "empty line before an answer", in: "\r\nHTTP/1.1 200 OK\r\n\r\n"},
		{name: "bare LF mixed with CRLF", in: "GET / HTTP/1.1\nHost: a\r\nX-A: b\n\r\n", fast: true,
			want: http.Header{"Host": {"a"}, "X-A": {"b"}}},
		{name: "bare LF at the end", in: "HTTP/1.1 200 OK\r\nX-A: b\r\n\nrest", fast: true, want: http.Header{"X-A": {"b"}}},
		{name: "bare LF only", in: "HTTP/1.1 200 OK\nX-A: b\n\n", fast: true, want: http.Header{"X-A": {"b"}}},
		{name: "names canonicalized", in: "GET / HTTP/1.1\r\nx-forwarded-FOR: 1\r\nCONTENT-type: a\r\netag: e\r\n!#$%&'*+-.^_`|~09z: x\r\n-a--b-: y\r\n\r\n", fast: true,
			want: http.Header{"X-Forwarded-For": {"1"}, "Content-Type": {"a"}, "Etag": {"e"}, "!#$%&'*+-.^_`|~09z": {"x"}, "-A--B-": {"y"}}},
		{name: "values trimmed", in: "GET / HTTP/1.1\r\nA: \t a b \t \r\nB:\r\nC: \r\nD:\t\t\nE:x\r\n\r\n", fast: true,
			want: http.Header{"A": {"a b"}, "B": {""}, "C": {""}, "D": {""}, "E": {"x"}}},
		{name: "tabs and high bytes in values", in: "GET / HTTP/1.1\r\nA: a\tb\t\tc\r\nB: caf\xc3\xa9 \x80\xff\r\nC: 0123456789\t0123456789\t\r\n\r\n", fast: true,
			want: http.Header{"A": {"a\tb\t\tc"}, "B": {"caf\xc3\xa9 \x80\xff"}, "C": {"0123456789\t0123456789"}}},
		{name: "repeated field", in: "GET / HTTP/1.1\r\nA: 1\r\na: 2\r\n\r\n", fast: true, want: http.Header{"A": {"1", "2"}}},
		{name: "CR in the start line", in: "GET /\r HTTP/1.1\r\r\n\r\n", fast: true},
		{name: "obs-fold", in: "GET / HTTP/1.1\r\nA: a\r\n b\r\n\r\n"},
		{name: "obs-fold with a tab", in: "GET / HTTP/1.1\r\nA: a\r\n\tb\r\n\r\n"},
		{name: "no colon", in: "GET / HTTP/1.1\r\nA\r\n\r\n"},
		{name: "space before the colon", in: "GET / HTTP/1.1\r\nA : a\r\n\r\n"},
		{name: "empty name", in: "GET / HTTP/1.1\r\n: a\r\n\r\n"},
		{name: "name not a token", in: "GET / HTTP/1.1\r\nA@B: a\r\n\r\n"},
		{name: "name with a high byte", in: "GET / HTTP/1.1\r\nA\xc3\xa9: a\r\n\r\n"},
		{name: "control character in a value", in: "GET / HTTP/1.1\r\nA: a\x01b\r\n\r\n"},
		{name: "NUL in a value", in: "GET / HTTP/1.1\r\nA: \x00\r\n\r\n"},
		{name: "DEL in a value", in: "GET / HTTP/1.1\r\nA: 0123456789\x7f\r\n\r\n"},
		{name: "DEL late in a long value", in: "GET / HTTP/1.1\r\nA: 0123456789abcdef0123\x7f\r\n\r\n"},
		{name: "control character late in a long value", in: "GET / HTTP/1.1\r\nA: 0123456789abcdef01234\x1f5\r\n\r\n"},
		{name: "CR in a value", in: "GET / HTTP/1.1\r\nA: a\rb\r\n\r\n"},
		{name: "CR CR LF", in: "GET / HTTP/1.1\r\nA: a\r\r\n\r\n"},
		{name: "CR at a line's start", in: "GET / HTTP/1.1\r\n\rA: a\r\n\r\n"},
		{name: "CR alone at the end", in: "GET / HTTP/1.1\r\nA: a\r\n\r"},
		{name: "nothing", in: ""},
		{name: "end in the start line", in: "GET / HTT"},
		{name: "end in a field", in: "GET / HTTP/1.1\r\nHost: a"},
		{name: "end before the empty line", in: "GET / HTTP/1.1\r\nHost: a\r\n"},
		{name: "longer than the buffer", in: "GET / HTTP/1.1\r\nA: " + strings.Repeat("a", 5000) + "\r\nB: b\r\n\r\n"},
		{name: "fills the buffer", in: "GET / HTTP/1.1\r\nA: " + strings.Repeat("a", 4096-len("GET / HTTP/1.1\r\nA: \r\n\r\n")) + "\r\n\r\n", fast: true},
	}
	const noLimit = 1 << 20
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			// Whether the first head takes the one pass.
			h := &headReader{br: bufio.NewReaderSize(strings.NewReader(tt.in), 4096)}
			h.br.Peek(1)
			if _, _, ok := h.readBufferedHead(noLimit, tt.leading); ok != tt.fast {
				t.Errorf("readBufferedHead(%q) ok = %v; want %v", tt.in, ok, tt.fast)
			}
			if tt.want != nil {
				h := &headReader{br: bufio.NewReaderSize(strings.NewReader(tt.in), 4096)}
				if _, _, err := h.readHead(noLimit, tt.leading); err != nil {
					t.Fatalf("readHead(%q) = %v", tt.in, err)
				}
				if diff := gocmp.Diff(tt.want, h.header(string(h.head))); diff != "" {
					t.Errorf("readHead(%q) fields (-want +got):\n%s", tt.in, diff)
				}
			}
			// Every split of the input between two reads: heads whole
			// in the buffer, ending at its end, or cut anywhere.
			for s := range len(tt.in) + 1 {
				sameHeads(t, func() io.Reader { return splitReader(tt.in, s) }, noLimit, tt.leading, "split at "+strconv.Itoa(s))
			}
			// Every limit around the input's size, the head whole in the
			// buffer.
			for limit := range len(tt.in) + 3 {
				sameHeads(t, func() io.Reader { return strings.NewReader(tt.in) }, limit, tt.leading, "limit "+strconv.Itoa(limit))
			}
			// Line by line, a byte at a time: what the one pass reads
			// as readHead always read it.
			if len(tt.in) < 4096 {
				oneByte := &headReader{br: bufio.NewReaderSize(iotest.OneByteReader(strings.NewReader(tt.in)), 16)}
				whole := &headReader{br: bufio.NewReaderSize(strings.NewReader(tt.in), 4096)}
				want, wantRest := readHeads(oneByte, oneByte.readHead, noLimit, tt.leading)
				got, gotRest := readHeads(whole, whole.readHead, noLimit, tt.leading)
				if diff := gocmp.Diff(want, got, gocmp.AllowUnexported(headerSpan{})); diff != "" || gotRest != wantRest {
					t.Errorf("readHead(%q) whole in the buffer differs from a byte at a time (-want +got):\n%s\nrest %q; want %q", tt.in, diff, gotRest, wantRest)
				}
			}
		})
	}
}

// TestReadHeadExactLimit: a head of exactly limit bytes, counted as
// readHead counts them (the lines read so far without their CR, and the
// current line as sent), is read; one byte less is too large.
func TestReadHeadExactLimit(t *testing.T) {
	const in = "GET / HTTP/1.1\r\nHost: a\nX-A: b\r\n\r\n"
	size := len(in) - 2 // the CRs of the lines before the last
	for _, tt := range []struct {
		limit   int
		tooBig  bool
		readOne bool
	}{{size, false, true}, {size - 1, true, false}} {
		h := &headReader{br: bufio.NewReaderSize(strings.NewReader(in), 4096)}
		_, _, err := h.readHead(tt.limit, 0)
		if errors.Is(err, errHeadTooLarge) != tt.tooBig || (err == nil) != tt.readOne {
			t.Errorf("readHead(%q, limit %d) = %v; want too large %v", in, tt.limit, err, tt.tooBig)
		}
	}
}

// TestReadHeadEOF: an end of input before any byte of a head is returned
// as is, an end inside one wrapped.
func TestReadHeadEOF(t *testing.T) {
	for _, tt := range []struct {
		in   string
		asIs bool
	}{{"", true}, {"GET", false}, {"GET / HTTP/1.1\r\n", false}} {
		h := &headReader{br: bufio.NewReaderSize(strings.NewReader(tt.in), 4096)}
		_, _, err := h.readHead(1<<20, 4)
		if !errors.Is(err, io.EOF) || (err == io.EOF) != tt.asIs {
			t.Errorf("readHead(%q) = %v; want io.EOF, as is: %v", tt.in, err, tt.asIs)
		}
	}
}

// FuzzReadHead: readHead's one pass over a head whole in the buffer
// does what reading it line by line does, whatever the input, the split of
// its reads, the limit and the empty lines allowed before the start line.
func FuzzReadHead(f *testing.F) {
	for _, s := range []string{benchAnswerHead, benchRequestHead, "\r\n\nGET / HTTP/1.1\nA: a\tb \r\nb: \r\n\r\n", "GET / HTTP/1.1\r\nA: a\r\n b\r\n\r\n"} {
		f.Add([]byte(s), uint16(0), uint16(1024), uint8(4))
	}
	f.Fuzz(func(t *testing.T, data []byte, split, limit uint16, leading uint8) {
		in := string(data)
		s := int(split) % (len(in) + 1)
		sameHeads(t, func() io.Reader { return splitReader(in, s) }, int(limit), int(leading%6), "fuzz")
	})
}
