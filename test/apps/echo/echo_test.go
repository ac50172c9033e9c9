package main

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/test/apps/echo/echopb"
)

var testID = Identity{Pod: "echo-abc", Namespace: "demo", Version: "v2", Node: "lab-node-1", PodIP: "198.18.64.5"}

func startHTTP(t *testing.T) *httptest.Server {
	t.Helper()
	hs := newHTTPServer(testID)
	srv := httptest.NewUnstartedServer(hs.Handler)
	srv.Config.Protocols = hs.Protocols
	srv.Start()
	t.Cleanup(srv.Close)
	return srv
}

func getJSON(t *testing.T, hc *http.Client, url string, hdr http.Header) (int, Response) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	for k, v := range hdr {
		req.Header[k] = v
	}
	resp, err := hc.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	var body Response
	if err := json.NewDecoder(resp.Body).Decode(&body); err != nil {
		t.Fatalf("decode answer of %s: %v", url, err)
	}
	return resp.StatusCode, body
}

func TestHTTPEcho(t *testing.T) {
	srv := startHTTP(t)
	tests := []struct {
		name       string
		query      string
		header     http.Header
		wantStatus int
		check      func(t *testing.T, r Response)
	}{
		{name: "plain", query: "/hello", header: http.Header{"X-Test": {"1"}}, wantStatus: 200, check: func(t *testing.T, r Response) {
			if r.Pod != "echo-abc" || r.Namespace != "demo" || r.Version != "v2" || r.Path != "/hello" {
				t.Errorf("identity = %+v; want echo-abc/demo v2 /hello", r)
			}
			if r.Headers["X-Test"] != "1" {
				t.Errorf("headers = %v; want X-Test: 1", r.Headers)
			}
			if host, _, _ := net.SplitHostPort(r.ClientAddr); host != "127.0.0.1" {
				t.Errorf("clientAddr = %q; want 127.0.0.1:port", r.ClientAddr)
			}
			if r.Protocol != "HTTP/1.1" {
				t.Errorf("protocol = %q; want HTTP/1.1", r.Protocol)
			}
		}},
		{name: "status query", query: "/?status=503", wantStatus: 503},
		{name: "status header", query: "/", header: http.Header{"X-Echo-Status": {"418"}}, wantStatus: 418},
		{name: "fail all", query: "/?fail=100", wantStatus: 503, check: func(t *testing.T, r Response) {
			if !strings.Contains(r.Error, "fail=100") {
				t.Errorf("error = %q; want it to name fail=100", r.Error)
			}
		}},
		{name: "fail none", query: "/?fail=0", wantStatus: 200},
		{name: "bad delay", query: "/?delay=soon", wantStatus: 400, check: func(t *testing.T, r Response) {
			if !strings.Contains(r.Error, "delay") {
				t.Errorf("error = %q; want it to name delay", r.Error)
			}
		}},
		{name: "size", query: "/?size=1000", wantStatus: 200, check: func(t *testing.T, r Response) {
			if len(r.Payload) != 1000 {
				t.Errorf("payload = %d bytes; want 1000", len(r.Payload))
			}
		}},
		{name: "size too big", query: "/?size=999999999", wantStatus: 400},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, r := getJSON(t, srv.Client(), srv.URL+tt.query, tt.header)
			if code != tt.wantStatus || r.Status != tt.wantStatus {
				t.Fatalf("GET %s = %d (body status %d); want %d", tt.query, code, r.Status, tt.wantStatus)
			}
			if tt.check != nil {
				tt.check(t, r)
			}
		})
	}
}

func TestHTTPDelayAndBody(t *testing.T) {
	srv := startHTTP(t)
	start := time.Now()
	code, _ := getJSON(t, srv.Client(), srv.URL+"/?delay=150ms", nil)
	if el := time.Since(start); code != 200 || el < 150*time.Millisecond {
		t.Errorf("GET ?delay=150ms = %d after %v; want 200 after >= 150ms", code, el)
	}
	resp, err := srv.Client().Post(srv.URL+"/", "text/plain", bytes.NewReader(make([]byte, 4321)))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var r Response
	json.NewDecoder(resp.Body).Decode(&r)
	if r.BodyBytes != 4321 || r.Method != "POST" {
		t.Errorf("POST 4321 bytes: answer saw %s with %d bytes; want POST 4321", r.Method, r.BodyBytes)
	}
	hr, err := srv.Client().Get(srv.URL + "/healthz")
	if err != nil || hr.StatusCode != 200 {
		t.Fatalf("GET /healthz = %v, %v; want 200", hr, err)
	}
	hr.Body.Close()
}

func TestH2CAndClientSummary(t *testing.T) {
	srv := startHTTP(t)
	tests := []struct {
		name     string
		h2c, ws  bool
		url      string
		wantProt string
		wantOK   int
	}{
		{name: "http1", url: srv.URL + "/", wantProt: "HTTP/1.1", wantOK: 20},
		{name: "h2c", h2c: true, url: srv.URL + "/", wantProt: "h2c", wantOK: 20},
		{name: "failing", url: srv.URL + "/?status=500", wantProt: "HTTP/1.1", wantOK: 0},
		{name: "websocket", ws: true, url: srv.URL + "/ws", wantProt: "websocket", wantOK: 20},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s, err := runRequests(context.Background(), clientOptions{URL: tt.url, N: 20, Concurrency: 4, H2C: tt.h2c, WebSocket: tt.ws})
			if err != nil {
				t.Fatal(err)
			}
			if s.Requests != 20 || s.OK != tt.wantOK || s.ByPod["echo-abc"] != 20 || s.ByVersion["v2"] != 20 || s.Protocols[tt.wantProt] != 20 {
				t.Errorf("summary = %+v; want 20 requests, %d ok, all from echo-abc v2 over %s", s, tt.wantOK, tt.wantProt)
			}
		})
	}
	var out bytes.Buffer
	if err := runClient(context.Background(), []string{"-n", "3", "-url", srv.URL}, &out); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(out.String(), "requests 3 ok 3 failed 0") || !strings.Contains(out.String(), `"v2"`) {
		t.Errorf("client output:\n%s\nwant 3 ok requests by version v2", out.String())
	}
	// A WebSocket client against a path that does not upgrade fails.
	if s, err := runRequests(context.Background(), clientOptions{URL: srv.URL + "/", N: 1, WebSocket: true}); err != nil || s.OK != 0 || s.Errors["no websocket upgrade"] != 1 {
		t.Errorf("websocket to a plain path: %+v, %v; want 1 failure, no websocket upgrade", s, err)
	}
	if err := runClient(context.Background(), []string{"-n", "3"}, &out); err == nil {
		t.Error("client with no -url/-grpc: want an error")
	}
}

func startGRPC(t *testing.T) echopb.EchoClient {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newGRPCServer(testID)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	conn, err := grpc.NewClient(l.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return echopb.NewEchoClient(conn)
}

func TestGRPC(t *testing.T) {
	c := startGRPC(t)
	ctx := metadata.AppendToOutgoingContext(context.Background(), "x-test", "yes")
	tests := []struct {
		name     string
		req      *echopb.EchoRequest
		wantCode codes.Code
	}{
		{name: "ok", req: &echopb.EchoRequest{Message: "hi"}, wantCode: codes.OK},
		{name: "status", req: &echopb.EchoRequest{Status: int32(codes.PermissionDenied)}, wantCode: codes.PermissionDenied},
		{name: "fail all", req: &echopb.EchoRequest{FailPercent: 100}, wantCode: codes.Unavailable},
		{name: "bad delay", req: &echopb.EchoRequest{DelayMs: -1}, wantCode: codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := c.Echo(ctx, tt.req)
			if got := status.Code(err); got != tt.wantCode {
				t.Fatalf("Echo(%v) code = %v (%v); want %v", tt.req, got, err, tt.wantCode)
			}
			if err != nil {
				return
			}
			if resp.GetPod() != "echo-abc" || resp.GetVersion() != "v2" || resp.GetMessage() != "hi" || resp.GetProtocol() != "grpc" {
				t.Errorf("Echo = %v; want pod echo-abc v2 message hi over grpc", resp)
			}
			if !strings.Contains(resp.GetHeaders()["x-test"], "yes") || !strings.HasPrefix(resp.GetClientAddr(), "127.0.0.1:") {
				t.Errorf("Echo saw headers %v from %q; want x-test and 127.0.0.1", resp.GetHeaders(), resp.GetClientAddr())
			}
		})
	}
	stream, err := c.EchoStream(ctx, &echopb.EchoStreamRequest{Request: &echopb.EchoRequest{Message: "s"}, Count: 3, IntervalMs: 5})
	if err != nil {
		t.Fatal(err)
	}
	var seqs []int32
	for {
		r, err := stream.Recv()
		if err != nil {
			break
		}
		seqs = append(seqs, r.GetSeq())
	}
	if len(seqs) != 3 || seqs[2] != 2 {
		t.Errorf("EchoStream count 3 gave seqs %v; want [0 1 2]", seqs)
	}
}

func TestGRPCClientSummary(t *testing.T) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := newGRPCServer(testID)
	go s.Serve(l)
	t.Cleanup(s.Stop)
	sum, err := runRequests(context.Background(), clientOptions{GRPC: l.Addr().String(), N: 10, Concurrency: 2})
	if err != nil {
		t.Fatal(err)
	}
	if sum.OK != 10 || sum.ByVersion["v2"] != 10 || sum.ByStatus["OK"] != 10 {
		t.Errorf("grpc summary = %+v; want 10 OK from v2", sum)
	}
}
