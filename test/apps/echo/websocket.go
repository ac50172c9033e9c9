package main

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/sha1"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
)

// A minimal WebSocket (RFC 6455) echo, enough to check that a proxy passes
// an HTTP/1.1 Upgrade through: the handshake, then text frames both ways.
// GET /ws upgrades; each text frame the client sends is answered with one
// text frame holding a Response whose Path is the message.

const (
	wsGUID       = "258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
	wsMaxPayload = 64 << 10
	opText       = 0x1
	opClose      = 0x8
)

func wsAccept(key string) string {
	h := sha1.Sum([]byte(key + wsGUID))
	return base64.StdEncoding.EncodeToString(h[:])
}

// serveWebSocket upgrades and echoes until the client closes (or 30 s idle).
func serveWebSocket(id Identity) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		key := r.Header.Get("Sec-WebSocket-Key")
		if !strings.EqualFold(r.Header.Get("Upgrade"), "websocket") || key == "" {
			http.Error(w, "want a WebSocket upgrade (Upgrade: websocket, Sec-WebSocket-Key)", http.StatusBadRequest)
			return
		}
		hj, ok := w.(http.Hijacker)
		if !ok {
			http.Error(w, "this connection cannot be upgraded (HTTP/2?)", http.StatusHTTPVersionNotSupported)
			return
		}
		conn, rw, err := hj.Hijack()
		if err != nil {
			return
		}
		defer conn.Close()
		fmt.Fprintf(rw, "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n\r\n", wsAccept(key))
		if rw.Flush() != nil {
			return
		}
		for {
			_ = conn.SetDeadline(time.Now().Add(30 * time.Second))
			op, payload, err := readFrame(rw.Reader)
			if err != nil || op == opClose {
				return
			}
			b, _ := json.Marshal(Response{Pod: id.Pod, Namespace: id.Namespace, Version: id.Version, Node: id.Node, PodIP: id.PodIP,
				Protocol: "websocket", Path: string(payload), ClientAddr: r.RemoteAddr, Status: http.StatusSwitchingProtocols})
			if writeFrame(rw.Writer, opText, b, false) != nil || rw.Flush() != nil {
				return
			}
		}
	}
}

// readFrame reads one unfragmented frame, unmasking it.
func readFrame(r *bufio.Reader) (byte, []byte, error) {
	var h [2]byte
	if _, err := io.ReadFull(r, h[:]); err != nil {
		return 0, nil, err
	}
	op, masked, n := h[0]&0x0f, h[1]&0x80 != 0, uint64(h[1]&0x7f)
	switch n {
	case 126:
		var b [2]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = uint64(binary.BigEndian.Uint16(b[:]))
	case 127:
		var b [8]byte
		if _, err := io.ReadFull(r, b[:]); err != nil {
			return 0, nil, err
		}
		n = binary.BigEndian.Uint64(b[:])
	}
	if n > wsMaxPayload {
		return 0, nil, fmt.Errorf("websocket frame of %d bytes: over %d", n, wsMaxPayload)
	}
	var mask [4]byte
	if masked {
		if _, err := io.ReadFull(r, mask[:]); err != nil {
			return 0, nil, err
		}
	}
	p := make([]byte, n)
	if _, err := io.ReadFull(r, p); err != nil {
		return 0, nil, err
	}
	if masked {
		for i := range p {
			p[i] ^= mask[i%4]
		}
	}
	return op, p, nil
}

// writeFrame writes one final frame; clients mask, servers do not.
func writeFrame(w io.Writer, op byte, p []byte, mask bool) error {
	hdr := []byte{0x80 | op}
	m := byte(0)
	if mask {
		m = 0x80
	}
	switch n := len(p); {
	case n < 126:
		hdr = append(hdr, m|byte(n))
	case n <= 0xffff:
		hdr = append(hdr, m|126, byte(n>>8), byte(n))
	default:
		hdr = binary.BigEndian.AppendUint64(append(hdr, m|127), uint64(n))
	}
	body := p
	if mask {
		var key [4]byte
		if _, err := rand.Read(key[:]); err != nil {
			return err
		}
		hdr = append(hdr, key[:]...)
		body = make([]byte, len(p))
		for i := range p {
			body[i] = p[i] ^ key[i%4]
		}
	}
	if _, err := w.Write(hdr); err != nil {
		return err
	}
	_, err := w.Write(body)
	return err
}

// wsCall opens a WebSocket to rawURL (http://host:port/ws), sends one
// message and reads the echo.
func wsCall(ctx context.Context, rawURL string, hdr http.Header) result {
	u, err := url.Parse(rawURL)
	if err != nil {
		return result{err: "bad url"}
	}
	var d net.Dialer
	conn, err := d.DialContext(ctx, "tcp", u.Host)
	if err != nil {
		return result{err: shortErr(err)}
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	}
	var k [16]byte
	_, _ = rand.Read(k[:])
	key := base64.StdEncoding.EncodeToString(k[:])
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, rawURL, nil)
	for name, v := range hdr {
		req.Header[name] = v
	}
	req.Header.Set("Upgrade", "websocket")
	req.Header.Set("Connection", "Upgrade")
	req.Header.Set("Sec-WebSocket-Key", key)
	req.Header.Set("Sec-WebSocket-Version", "13")
	if err := req.Write(conn); err != nil {
		return result{err: shortErr(err)}
	}
	br := bufio.NewReader(conn)
	resp, err := http.ReadResponse(br, req)
	if err != nil {
		return result{err: shortErr(err)}
	}
	status := fmt.Sprint(resp.StatusCode)
	if resp.StatusCode != http.StatusSwitchingProtocols || resp.Header.Get("Sec-WebSocket-Accept") != wsAccept(key) {
		return result{status: status, err: "no websocket upgrade"}
	}
	const msg = "hello through the mesh"
	if err := writeFrame(conn, opText, []byte(msg), true); err != nil {
		return result{status: status, err: shortErr(err)}
	}
	op, p, err := readFrame(br)
	if err != nil || op != opText {
		return result{status: status, err: "no echo frame"}
	}
	var got Response
	if err := json.Unmarshal(p, &got); err != nil || got.Path != msg {
		return result{status: status, err: "wrong echo"}
	}
	_ = writeFrame(conn, opClose, nil, true)
	return result{ok: true, status: status, pod: got.Pod, version: got.Version, protocol: "websocket"}
}
