package waypoint

import (
	"bufio"
	"io"
	"net/http"
	"testing"
)

// Heads as the benchmark's peers send them: nginx's answer to fortio's
// request for 1 KiB.
const (
	benchAnswerHead = "HTTP/1.1 200 OK\r\n" +
		"Server: nginx/1.27.3\r\n" +
		"Date: Wed, 02 Dec 2026 15:00:00 GMT\r\n" +
		"Content-Type: application/octet-stream\r\n" +
		"Content-Length: 1024\r\n" +
		"Last-Modified: Tue, 01 Dec 2026 10:00:00 GMT\r\n" +
		"Connection: keep-alive\r\n" +
		"ETag: \"674c3a40-400\"\r\n" +
		"Accept-Ranges: bytes\r\n" +
		"\r\n"
	benchRequestHead = "GET /echo?size=1024 HTTP/1.1\r\n" +
		"Host: nginx.bench.svc.cluster.local:8080\r\n" +
		"User-Agent: fortio.org/fortio-1.66.5\r\n" +
		"Accept: */*\r\n" +
		"Accept-Encoding: gzip\r\n" +
		"X-Request-Id: 5f0c6c1e-8d0a-4c53-9a43-6a1f7c2b9e10\r\n" +
		"Traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n" +
		"\r\n"
)

// segmentReader hands out msg whole on every Read, as a connection hands
// out one segment per message: each head is then whole in the buffer.
type segmentReader struct{ msg []byte }

func (r *segmentReader) Read(p []byte) (int, error) {
	return copy(p, r.msg), nil
}

func BenchmarkReadHead(b *testing.B) {
	for _, bm := range []struct {
		name, head string
		limit      int
		leading    int
	}{
		{"answer", benchAnswerHead, maxResponseHead, 0},
		{"request", benchRequestHead, 64<<10 + 4096, 4},
	} {
		b.Run(bm.name, func(b *testing.B) {
			h := &headReader{br: bufio.NewReaderSize(&segmentReader{msg: []byte(bm.head)}, 4096)}
			b.SetBytes(int64(len(bm.head)))
			b.ReportAllocs()
			for b.Loop() {
				if _, _, err := h.readHead(bm.limit, bm.leading); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkReadMessage reads whole messages as the proxy does: an answer
// (head and 1 KiB body) by readResponse, a request head by readRequest.
func BenchmarkReadMessage(b *testing.B) {
	b.Run("readResponse", func(b *testing.B) {
		h := &headReader{br: bufio.NewReaderSize(&segmentReader{msg: []byte(benchAnswerHead + payload)}, 4096)}
		req := &http.Request{Method: http.MethodGet}
		buf := make([]byte, 2048)
		b.ReportAllocs()
		for b.Loop() {
			resp, _, err := h.readResponse(req, new(answerStore))
			if err != nil {
				b.Fatal(err)
			}
			if _, err := io.ReadFull(resp.Body, buf[:resp.ContentLength]); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("readRequest", func(b *testing.B) {
		c := &h1ServerConn{srv: &h1Server{maxHeaderBytes: 64<<10 + 4096}}
		c.br = bufio.NewReaderSize(&segmentReader{msg: []byte(benchRequestHead)}, 4096)
		b.ReportAllocs()
		for b.Loop() {
			if _, err := c.readRequest(); err != nil {
				b.Fatal(err)
			}
		}
	})
}
