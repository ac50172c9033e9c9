// Command relay is the floor the waypoint benchmark measures against: the
// least an HTTP/1.1 keep-alive proxy written in Go does per request on this
// machine. Each client connection gets one upstream connection; a request
// head is read up to its empty line and copied upstream with its
// Content-Length body, and the answer comes back the same way. No routing,
// no policy, no header edits, no telemetry, no chunked bodies: what it
// costs is the Go runtime's and the kernel's share of a proxied request,
// so the waypoint's CPU above it is the waypoint's own work
// (test/scripts/bench-waypoint.sh). Not a proxy to run anywhere else.
//
// Usage: relay LISTEN-ADDR UPSTREAM-ADDR (both loopback in the benchmark).
package main

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"log"
	"net"
	"os"
	"strconv"
)

// maxHead bounds a message head.
const maxHead = 64 << 10

var contentLength = []byte("content-length:")

// copyMessage copies one message (head and Content-Length body) from br to
// bw and flushes it.
func copyMessage(br *bufio.Reader, bw *bufio.Writer) error {
	n, size := int64(0), 0
	for {
		line, err := br.ReadSlice('\n')
		if err != nil {
			return err
		}
		if size += len(line); size > maxHead {
			return errors.New("head too large")
		}
		if _, err := bw.Write(line); err != nil {
			return err
		}
		if len(line) <= 2 { // the empty line
			break
		}
		if len(line) > len(contentLength) && bytes.EqualFold(line[:len(contentLength)], contentLength) {
			v, err := strconv.ParseInt(string(bytes.TrimSpace(line[len(contentLength):])), 10, 64)
			if err != nil || v < 0 {
				return errors.New("bad Content-Length")
			}
			n = v
		}
	}
	if _, err := io.CopyN(bw, br, n); err != nil {
		return err
	}
	return bw.Flush()
}

func serve(c net.Conn, upstream string) {
	defer c.Close()
	u, err := net.Dial("tcp", upstream)
	if err != nil {
		log.Print(err)
		return
	}
	defer u.Close()
	cr, cw := bufio.NewReader(c), bufio.NewWriter(c)
	ur, uw := bufio.NewReader(u), bufio.NewWriter(u)
	for copyMessage(cr, uw) == nil && copyMessage(ur, cw) == nil {
	}
}

func main() {
	if len(os.Args) != 3 {
		log.Fatal("usage: relay LISTEN-ADDR UPSTREAM-ADDR")
	}
	l, err := net.Listen("tcp", os.Args[1])
	if err != nil {
		log.Fatal(err)
	}
	for {
		c, err := l.Accept()
		if err != nil {
			log.Fatal(err)
		}
		go serve(c, os.Args[2])
	}
}
