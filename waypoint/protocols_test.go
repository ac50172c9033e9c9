package waypoint

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"reflect"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/net/websocket"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	testgrpc "google.golang.org/grpc/interop/grpc_testing"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/testutil"
)

type echoService struct {
	testgrpc.UnimplementedTestServiceServer
}

func (echoService) UnaryCall(ctx context.Context, in *testgrpc.SimpleRequest) (*testgrpc.SimpleResponse, error) {
	if string(in.GetPayload().GetBody()) == "fail" {
		return nil, status.Error(codes.FailedPrecondition, "asked to fail")
	}
	grpc.SetTrailer(ctx, metadata.Pairs("x-trailer", "present"))
	return &testgrpc.SimpleResponse{Payload: in.GetPayload()}, nil
}

func (echoService) FullDuplexCall(stream testgrpc.TestService_FullDuplexCallServer) error {
	for {
		in, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return err
		}
		if err := stream.Send(&testgrpc.StreamingOutputCallResponse{Payload: in.GetPayload()}); err != nil {
			return err
		}
	}
}

func grpcBackend(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	s := grpc.NewServer()
	testgrpc.RegisterTestServiceServer(s, echoService{})
	go s.Serve(l)
	t.Cleanup(s.Stop)
	return l.Addr().String()
}

func TestGRPC(t *testing.T) {
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("grpc", grpcBackend(t))}, model.L7Route{Name: "r", Destinations: to("grpc")}), nil)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	client := testgrpc.NewTestServiceClient(conn)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	var trailer metadata.MD
	resp, err := client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("hello")}}, grpc.Trailer(&trailer))
	if err != nil || string(resp.GetPayload().GetBody()) != "hello" {
		t.Fatalf("UnaryCall = %v, %v; want hello", resp, err)
	}
	if got := trailer.Get("x-trailer"); len(got) != 1 || got[0] != "present" {
		t.Errorf("trailer x-trailer = %v; want [present]", got)
	}
	_, err = client.UnaryCall(ctx, &testgrpc.SimpleRequest{Payload: &testgrpc.Payload{Body: []byte("fail")}})
	if status.Code(err) != codes.FailedPrecondition {
		t.Errorf("UnaryCall(fail) = %v; want FailedPrecondition through the proxy", err)
	}

	stream, err := client.FullDuplexCall(ctx)
	if err != nil {
		t.Fatal(err)
	}
	for i, msg := range []string{"one", "two", "three"} {
		// Each message is answered before the next is sent: the proxy must
		// stream both ways, not buffer.
		if err := stream.Send(&testgrpc.StreamingOutputCallRequest{Payload: &testgrpc.Payload{Body: []byte(msg)}}); err != nil {
			t.Fatal(err)
		}
		got, err := stream.Recv()
		if err != nil || string(got.GetPayload().GetBody()) != msg {
			t.Fatalf("stream message %d = %v, %v; want %q", i, got, err, msg)
		}
	}
	stream.CloseSend()
	if _, err := stream.Recv(); !errors.Is(err, io.EOF) {
		t.Errorf("end of stream = %v; want EOF", err)
	}
	if got := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"request_protocol": "grpc", "grpc_response_status": "0"}); got != 2 {
		t.Errorf("istio_requests_total{grpc, status 0} = %v; want 2 (unary + stream)", got)
	}
	if got := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"grpc_response_status": "9"}); got != 1 {
		t.Errorf("istio_requests_total{grpc_response_status=9} = %v; want 1", got)
	}
}

func TestGRPCDeniedIsPermissionDenied(t *testing.T) {
	cfg := oneRoute([]model.L7Cluster{clusterOf("grpc", grpcBackend(t))}, model.L7Route{Name: "r", Destinations: to("grpc")})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "deny-unary", Action: policy.Deny, Rules: []policy.Rule{{
		To: []policy.Operation{{Paths: []string{"/grpc.testing.TestService/UnaryCall"}}},
	}}}}
	h := start(t, cfg, nil)
	conn, err := grpc.NewClient(h.addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = testgrpc.NewTestServiceClient(conn).UnaryCall(ctx, &testgrpc.SimpleRequest{})
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("UnaryCall under a DENY = %v; want PermissionDenied", err)
	}
}

func TestWebSocket(t *testing.T) {
	echo := backend(t, websocket.Handler(func(ws *websocket.Conn) { io.Copy(ws, ws) }))
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("ws", echo)}, model.L7Route{Name: "r", Destinations: to("ws")}), nil)
	ws, err := websocket.Dial("ws://"+h.addr+"/echo", "", "http://"+h.addr)
	if err != nil {
		t.Fatalf("websocket.Dial through the proxy: %v", err)
	}
	defer ws.Close()
	for _, msg := range []string{"ping", "pong", "a longer message"} {
		if err := websocket.Message.Send(ws, msg); err != nil {
			t.Fatal(err)
		}
		var got string
		if err := websocket.Message.Receive(ws, &got); err != nil || got != msg {
			t.Fatalf("echo = %q, %v; want %q", got, err, msg)
		}
	}
}

func TestTCPFallback(t *testing.T) {
	echo := tcpBackend(t, func(c net.Conn) { io.Copy(c, c) })
	cfg := oneRoute([]model.L7Cluster{clusterOf("tcp", echo)}, model.L7Route{Name: "r", DirectResponse: &model.DirectResponse{Status: 200}})
	cfg.TCPCluster = "tcp"
	h := start(t, cfg, nil)
	for _, first := range []string{"hello, not http\n", "\x00\x01binary"} {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		c.SetDeadline(time.Now().Add(5 * time.Second))
		io.WriteString(c, first)
		buf := make([]byte, len(first))
		if _, err := io.ReadFull(c, buf); err != nil || string(buf) != first {
			t.Errorf("TCP echo of %q through the proxy = %q, %v", first, buf, err)
		}
		c.Close()
	}
	// Both connections are counted once closed, with their bytes.
	deadline := time.Now().Add(5 * time.Second)
	for testutil.MetricSum(t, h.reg, "istio_tcp_connections_closed_total", nil) < 2 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	wantBytes := float64(len("hello, not http\n") + len("\x00\x01binary"))
	for name, want := range map[string]float64{
		"istio_tcp_connections_opened_total": 2, "istio_tcp_connections_closed_total": 2,
		"istio_tcp_received_bytes_total": wantBytes, "istio_tcp_sent_bytes_total": wantBytes,
	} {
		if got := testutil.MetricSum(t, h.reg, name, map[string]string{"reporter": "waypoint", "destination_service": "tcp"}); got != want {
			t.Errorf("%s = %v; want %v", name, got, want)
		}
	}
	// And the access log has a line per connection, as Envoy logs a TCP
	// proxy's: no request, the bytes each way, the endpoint.
	lines := h.log.lines(t)
	if len(lines) != 2 {
		t.Fatalf("access log: %d lines for 2 connections: %+v", len(lines), lines)
	}
	byBytes := map[int64]accessLogLine{}
	for _, l := range lines {
		byBytes[l.BytesReceived] = l
	}
	for i, first := range []string{"hello, not http\n", "\x00\x01binary"} {
		l := byBytes[int64(len(first))]
		if l.Method != "-" || l.Path != "-" || l.ResponseCode != 0 || l.BytesReceived != int64(len(first)) || l.BytesSent != int64(len(first)) ||
			l.UpstreamHost != echo || l.UpstreamCluster != "tcp" || l.ResponseFlags != "-" {
			t.Errorf("access log line %d = %+v; want a TCP line with %d bytes each way to %s", i, l, len(first), echo)
		}
	}
	// A server-first client (sends nothing) is forwarded after DetectTimeout.
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	time.Sleep(300 * time.Millisecond)
	io.WriteString(c, "late")
	buf := make([]byte, 4)
	if _, err := io.ReadFull(c, buf); err != nil || string(buf) != "late" {
		t.Errorf("silent client echo = %q, %v; want late", buf, err)
	}
}

func selfSigned(t testing.TB) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "waypoint"},
		DNSNames: []string{"reviews.default.svc.cluster.local"}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestHTTP2(t *testing.T) {
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cert := selfSigned(t)
	addr, _ := startWith(t, cfg, ServerOptions{TLSConfig: &tls.Config{Certificates: []tls.Certificate{cert}}})
	pool := x509.NewCertPool()
	leaf, _ := x509.ParseCertificate(cert.Certificate[0])
	pool.AddCert(leaf)

	tests := []struct {
		name   string
		client *http.Client
		url    string
	}{
		{name: "h2 over TLS", url: "https://" + addr, client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, ForceAttemptHTTP2: true}}},
		{name: "h2c prior knowledge", url: "http://" + addr, client: func() *http.Client {
			var protos http.Protocols
			protos.SetUnencryptedHTTP2(true)
			return &http.Client{Transport: &http.Transport{Protocols: &protos}}
		}()},
		{name: "http/1.1 over TLS", url: "https://" + addr, client: &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}, TLSNextProto: map[string]func(string, *tls.Conn) http.RoundTripper{}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			resp, err := tt.client.Get(tt.url + "/x")
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			b, _ := io.ReadAll(resp.Body)
			wantMajor := 2
			if tt.name == "http/1.1 over TLS" {
				wantMajor = 1
			}
			if resp.StatusCode != 200 || string(b) != "app" || resp.ProtoMajor != wantMajor {
				t.Errorf("GET = %d %q over %s; want 200 app over HTTP/%d", resp.StatusCode, b, resp.Proto, wantMajor)
			}
		})
	}
}

// issue signs a leaf for a SPIFFE ID with ca.
func issue(t *testing.T, ca *x509.Certificate, caKey *ecdsa.PrivateKey, spiffeID string, serial int64) tls.Certificate {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	u, _ := url.Parse(spiffeID)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(serial), URIs: []*url.URL{u}, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth}, IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

func TestMutualTLSIngressIdentityAndPolicy(t *testing.T) {
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test ca"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	serverCert := issue(t, ca, caKey, "spiffe://cluster.local/ns/istio-system/sa/ingress", 2)

	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "only-frontend", Rules: []policy.Rule{{
		From: []policy.Source{{Principals: []string{"cluster.local/ns/web/sa/frontend"}}},
	}}}}
	p, err := New(Options{Config: cfg, Peer: func(r *http.Request) Peer {
		// The identity of a mutual TLS client, as an ingress in MUTUAL
		// mode (or the HBONE server) would supply it.
		if r.TLS != nil && len(r.TLS.PeerCertificates) > 0 && len(r.TLS.PeerCertificates[0].URIs) == 1 {
			return Peer{Principal: r.TLS.PeerCertificates[0].URIs[0].String()}
		}
		return Peer{}
	}})
	if err != nil {
		t.Fatal(err)
	}
	addr, _ := serve(t, p, ServerOptions{TLSConfig: &tls.Config{Certificates: []tls.Certificate{serverCert}, ClientCAs: pool, ClientAuth: tls.RequireAndVerifyClientCert, MinVersion: tls.VersionTLS13}})

	tests := []struct {
		name     string
		id       string
		wantCode int
	}{
		{name: "frontend allowed", id: "spiffe://cluster.local/ns/web/sa/frontend", wantCode: 200},
		{name: "other identity denied", id: "spiffe://cluster.local/ns/web/sa/other", wantCode: 403},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert := issue(t, ca, caKey, tt.id, int64(10+i))
			c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}, ForceAttemptHTTP2: true}}
			resp, err := c.Get("https://" + addr + "/")
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != tt.wantCode {
				t.Errorf("GET as %s = %d; want %d", tt.id, resp.StatusCode, tt.wantCode)
			}
		})
	}
	// Without a client certificate the handshake fails.
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp, err := c.Get("https://" + addr + "/"); err == nil {
		resp.Body.Close()
		t.Error("GET without a client certificate succeeded; want a TLS failure")
	}
}

// TestNotPrefaceNotHTTP1 checks that a connection that starts like the
// HTTP/2 preface but is not one reaches no HTTP/1 parser but h1Server's:
// net/http, which gets it, serves HTTP/2 only and closes it.
func TestNotPrefaceNotHTTP1(t *testing.T) {
	addr, _ := startWith(t, oneRoute(nil), ServerOptions{})
	tests := []string{
		"PRI * HTTP/1.1\r\nHost: x\r\n\r\n",
		"PRI * HTTP/1.0\r\n\r\n",
		"PRI * HTTP/2.0\r\nHost: x\r\n\r\n",
	}
	for _, in := range tests {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		io.WriteString(c, in)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		got, err := io.ReadAll(c)
		c.Close()
		if len(got) > 0 || err != nil {
			t.Errorf("%q: answered %q, %v; want the connection closed without an answer", in, got, err)
		}
	}
}

// TestRemoveHopHeaders: every hop-by-hop field goes, and those named in
// Connection (in any case, over several Connection lines); end-to-end
// fields stay, even one whose name starts with a listed one; a WebSocket
// upgrade keeps Upgrade.
func TestRemoveHopHeaders(t *testing.T) {
	fresh := func() http.Header {
		return http.Header{
			"Connection": {"x-PRIVATE ,, upgrade", "X-Other"}, "Proxy-Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"},
			"X-Other": {"2"}, "X-Private-Not": {"3"},
			"Proxy-Authenticate": {"Basic"}, "Proxy-Authorization": {"Basic eA=="}, "Te": {"trailers"},
			"Trailer": {"X-T"}, "Transfer-Encoding": {"chunked"}, "Upgrade": {"websocket"},
			"X-Private": {"1"}, "Content-Type": {"text/plain"}, "X-Request-Id": {"r1"},
		}
	}
	for _, keepUpgrade := range []bool{false, true} {
		h := fresh()
		removeHopHeaders(h, keepUpgrade)
		var keys []string
		for k := range h {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		want := []string{"Content-Type", "X-Private-Not", "X-Request-Id"}
		if keepUpgrade {
			want = []string{"Content-Type", "Upgrade", "X-Private-Not", "X-Request-Id"}
		}
		if !slices.Equal(keys, want) {
			t.Errorf("keepUpgrade=%v: left %v; want %v", keepUpgrade, keys, want)
		}
	}
}

// TestAnswerFieldsPassedThrough: an upstream answer's fields reach an
// HTTP/1.1 client as the upstream sent them, repeated fields in order, but
// the hop-by-hop ones and those its Connection field names, whether the
// waypoint edits the answer (a route's response header operation: the
// fields go through a header map) or not (they are written as read). The
// upstream's "Connection: close" is its own connection's: the client's
// stays open for its next request.
func TestAnswerFieldsPassedThrough(t *testing.T) {
	const answer = "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nSet-Cookie: a=1\r\nConnection: close, X-Private\r\n" +
		"X-Private: secret\r\nKeep-Alive: timeout=5\r\nProxy-Connection: keep-alive\r\nSet-Cookie: b=2\r\n" +
		"Date: Mon, 07 Dec 2026 04:00:00 GMT\r\nx-app: 1\r\nContent-Length: 2\r\n\r\nok"
	app := tcpBackend(t, func(c net.Conn) {
		br := bufio.NewReader(c)
		if _, err := http.ReadRequest(br); err == nil {
			io.WriteString(c, answer)
		}
	})
	for _, edited := range []bool{false, true} {
		rt := model.L7Route{Name: "all", Destinations: to("app")}
		if edited {
			rt.ResponseHeaders = model.HeaderOps{Set: map[string]string{"X-Added": "yes"}}
		}
		h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", app)}, rt), nil)
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		br := bufio.NewReader(c)
		for i := range 2 {
			io.WriteString(c, "GET /x HTTP/1.1\r\nHost: reviews\r\n\r\n")
			resp, err := http.ReadResponse(br, nil)
			if err != nil {
				t.Fatalf("edited=%v: answer %d: %v (the client's connection must stay open)", edited, i, err)
			}
			body, _ := io.ReadAll(resp.Body)
			want := http.Header{
				"Content-Type": {"text/plain"}, "Set-Cookie": {"a=1", "b=2"}, "X-App": {"1"},
				"Date": {"Mon, 07 Dec 2026 04:00:00 GMT"}, "Content-Length": {"2"},
			}
			if edited {
				want["X-Added"] = []string{"yes"}
			}
			if resp.StatusCode != 200 || string(body) != "ok" || resp.Close || !reflect.DeepEqual(resp.Header, want) {
				t.Errorf("edited=%v: answer %d: %d %q close=%v %v; want 200 \"ok\" on an open connection with %v",
					edited, i, resp.StatusCode, body, resp.Close, resp.Header, want)
			}
		}
	}
}

// TestTCPByServiceRoute: a waypoint forwards the connections to a service
// that are not HTTP (here a server-first protocol and TLS the client
// originates) by the tcp route of that service's virtual host, by weight;
// a service whose virtual host has none gets its connections closed, and
// an HTTP request to the same service is still routed at L7, unless the
// service's port is declared TCP (opaque).
func TestTCPByServiceRoute(t *testing.T) {
	greeter := func(name string) string {
		return tcpBackend(t, func(c net.Conn) {
			io.WriteString(c, name+"\n") // speaks first, like a database
			io.Copy(c, c)
		})
	}
	a, b := greeter("a"), greeter("b")
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "http") }))
	cfg := &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "p", VirtualHosts: []model.VirtualHost{
			{Name: "db.shop.svc.cluster.local", Domains: []string{"db"}, Routes: []model.L7Route{{Name: "default", Destinations: to("http")}},
				TCP: &model.TCPRoute{Name: "shop/db", Destinations: []model.WeightedDestination{{Cluster: "a", Weight: 75}, {Cluster: "b", Weight: 25}}}},
			{Name: "web.shop.svc.cluster.local", Domains: []string{"web"}, Routes: []model.L7Route{{Name: "default", Destinations: to("http")}}},
			{Name: "cache.shop.svc.cluster.local", Domains: []string{"cache"}, Routes: []model.L7Route{{Name: "default", Destinations: to("http")}},
				TCP: &model.TCPRoute{Name: "default", Destinations: to("a")}, Opaque: true},
		}}},
		Clusters: []model.L7Cluster{clusterOf("a", a), clusterOf("b", b), clusterOf("http", app)},
	}}
	var service atomic.Value
	h := start(t, cfg, func(o *Options) {
		o.ConnPeer = func(c net.Conn) Peer {
			// The app's ConnPeer reads the HBONE stream it accepted: it
			// must get that connection, not a wrapper.
			if _, ok := c.(*net.TCPConn); !ok {
				t.Errorf("ConnPeer got a %T; want the accepted *net.TCPConn", c)
			}
			return Peer{DestinationService: service.Load().(string)}
		}
	})
	greeting := func() (string, error) {
		c, err := net.Dial("tcp", h.addr)
		if err != nil {
			return "", err
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(3 * time.Second))
		line, err := bufio.NewReader(c).ReadString('\n')
		return strings.TrimSpace(line), err
	}
	service.Store("db.shop.svc.cluster.local")
	counts := map[string]int{}
	const n = 40
	var mu sync.Mutex
	var wg sync.WaitGroup
	for range n { // at once: each waits out the proxy's detection timeout
		wg.Go(func() {
			g, err := greeting()
			mu.Lock()
			defer mu.Unlock()
			if err != nil {
				t.Errorf("server-first connection to db: %v", err)
			}
			counts[g]++
		})
	}
	wg.Wait()
	if counts["a"]+counts["b"] != n || counts["a"] < counts["b"] || counts["b"] == 0 {
		t.Errorf("greetings by backend %v; want all %d answered, by a and b about 3:1", counts, n)
	}
	// A client that sends first (a TLS ClientHello) is relayed as it is.
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	hello := "\x16\x03\x01\x00\x05hello"
	io.WriteString(c, hello)
	got := make([]byte, 2+len(hello)) // "a\n" or "b\n", then the echo
	if _, err := io.ReadFull(c, got); err != nil || !strings.HasSuffix(string(got), hello) {
		t.Errorf("client-first bytes through the tcp route = %q, %v; want the greeting then %q", got, err, hello)
	}
	c.Close()

	service.Store("web.shop.svc.cluster.local")
	if g, err := greeting(); err == nil || g != "" {
		t.Errorf("web (no tcp route) answered %q, %v; want the connection closed", g, err)
	}
	if code, body := h.get(t, newClient(t), "/", map[string]string{"Host": "db"}); code != 200 || body != "http" {
		t.Errorf("HTTP to db = %d %q; want 200 from its L7 route", code, body)
	}

	// A port declared TCP (opaque) is never read as HTTP: even an HTTP
	// request goes to its tcp route as bytes.
	service.Store("cache.shop.svc.cluster.local")
	c, err = net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(3 * time.Second))
	req := "GET / HTTP/1.1\r\nHost: cache\r\n\r\n"
	io.WriteString(c, req)
	got = make([]byte, 2+len(req))
	if _, err := io.ReadFull(c, got); err != nil || string(got) != "a\n"+req {
		t.Errorf("HTTP bytes to an opaque port = %q, %v; want a's greeting and the request echoed", got, err)
	}
}

// TestWorkloadAddressedTraffic: a waypoint for workloads forwards what is
// addressed to one of its workloads by its own address (not a service) to
// that address and port, HTTP and TCP alike, reported with the workload as
// destination_workload; an address that is none of its workloads is
// refused (404 for HTTP, closed for TCP), so a client cannot make the
// waypoint dial elsewhere. Such a waypoint needs no listener.
func TestWorkloadAddressedTraffic(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "pod "+r.URL.Path) }))
	echo := tcpBackend(t, func(c net.Conn) { io.WriteString(c, "tcp\n"); io.Copy(c, c) })
	cfg := &Config{L7: &model.L7Config{Workloads: []model.L7Workload{{Addresses: []string{"127.0.0.1"}, Name: "db", Namespace: "shop", Labels: map[string]string{"app": "db"},
		Identity: "spiffe://cluster.local/ns/shop/sa/db"}}}}
	var target atomic.Value
	// The HBONE CONNECT target, as the waypoint app reports it for a
	// connection (ConnPeer) and its requests (Peer).
	dialled := func() Peer {
		ap := netip.MustParseAddrPort(target.Load().(string))
		return Peer{DestinationIP: ap.Addr(), DestinationPort: uint32(ap.Port())}
	}
	h := start(t, cfg, func(o *Options) {
		o.ConnPeer = func(net.Conn) Peer { return dialled() }
		o.Peer = func(*http.Request) Peer { return dialled() }
	})
	target.Store(app)
	client := newClient(t)
	if code, body := h.get(t, client, "/orders", nil); code != http.StatusOK || body != "pod /orders" {
		t.Errorf("GET to the workload's own address = %d %q; want 200 from the pod", code, body)
	}
	if n := testutil.MetricSum(t, h.reg, "istio_requests_total", map[string]string{"destination_workload": "db", "destination_workload_namespace": "shop", "destination_app": "db",
		"destination_principal": "spiffe://cluster.local/ns/shop/sa/db", "response_code": "200"}); n != 1 {
		t.Errorf("istio_requests_total{destination_workload=db} = %v; want 1", n)
	}
	client.CloseIdleConnections()

	target.Store(echo)
	c, err := net.Dial("tcp", h.addr)
	if err != nil {
		t.Fatal(err)
	}
	c.SetDeadline(time.Now().Add(3 * time.Second))
	line, err := bufio.NewReader(c).ReadString('\n')
	c.Close()
	if err != nil || line != "tcp\n" {
		t.Errorf("TCP to the workload's own address = %q, %v; want the server's greeting", line, err)
	}

	// Istio's default retries apply to workload-addressed requests too: a
	// 503 is retried.
	var calls atomic.Int32
	flaky := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if calls.Add(1) == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "second try")
	}))
	target.Store(flaky)
	if code, body := h.get(t, newClient(t), "/orders", nil); code != http.StatusOK || body != "second try" || calls.Load() != 2 {
		t.Errorf("GET to a workload answering 503 once = %d %q after %d tries; want 200 from the retry", code, body, calls.Load())
	}

	// Not one of its workloads: refused.
	_, port, _ := net.SplitHostPort(app)
	target.Store("127.0.0.2:" + port)
	if code, _ := h.get(t, newClient(t), "/orders", nil); code != http.StatusNotFound {
		t.Errorf("GET to an address that is no workload of the waypoint = %d; want 404", code)
	}
}

// TestServeTCPDrains: when a gateway stops (its context ends), its TCP
// listener closes at once, the connections it relays keep working for the
// drain window and ServeTCP returns when they end; one still open when the
// window ends is cut.
func TestServeTCPDrains(t *testing.T) {
	echo := tcpBackend(t, func(c net.Conn) { io.Copy(c, c) })
	cfg := &Config{L7: &model.L7Config{
		Listeners: []model.L7Listener{{Name: "tcp", Port: 9000, TCP: &model.TCPRoute{Name: "echo", Destinations: to("echo")}}},
		Clusters:  []model.L7Cluster{clusterOf("echo", echo)},
	}}
	p, err := New(Options{Config: cfg})
	if err != nil {
		t.Fatal(err)
	}
	serve := func(drain time.Duration) (addr string, cancel func(), done chan error) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done = make(chan error, 1)
		go func() { done <- p.ServeTCP(ctx, ln, 9000, drain) }()
		return ln.Addr().String(), cancel, done
	}
	roundTrip := func(c net.Conn, msg string) error {
		c.SetDeadline(time.Now().Add(3 * time.Second))
		if _, err := io.WriteString(c, msg); err != nil {
			return err
		}
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			return fmt.Errorf("echo of %q = %q, %v", msg, got, err)
		}
		return nil
	}

	addr, cancel, done := serve(time.Minute)
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	if err := roundTrip(c, "before"); err != nil {
		t.Fatal(err)
	}
	cancel()
	if err := roundTrip(c, "draining"); err != nil {
		t.Errorf("a relayed connection after the stop, within the drain window: %v", err)
	}
	if nc, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		nc.Close()
		t.Error("a new connection was accepted after the stop")
	}
	select {
	case err := <-done:
		t.Fatalf("ServeTCP returned (%v) with a connection still relayed", err)
	case <-time.After(100 * time.Millisecond):
	}
	c.Close()
	select {
	case err := <-done:
		if err != nil {
			t.Errorf("ServeTCP = %v; want nil after its context ended", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("ServeTCP did not return once its last connection ended")
	}

	addr, cancel, done = serve(200 * time.Millisecond)
	c, err = net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if err := roundTrip(c, "before"); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("ServeTCP did not return when the drain window ended")
	}
	c.SetReadDeadline(time.Now().Add(3 * time.Second))
	if _, err := c.Read(make([]byte, 1)); err == nil {
		t.Error("a connection still open when the drain window ended was not cut")
	}
}
