package app

import (
	"bufio"
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
	"github.com/meshlet/meshlet/pkg/testutil"
	"github.com/meshlet/meshlet/waypoint"
)

// pemPair is a certificate (signed by parent, or self-signed) and its key.
type pemPair struct {
	cert, key []byte
	x509      *x509.Certificate
	priv      *ecdsa.PrivateKey
}

func newPair(t *testing.T, cn string, parent *pemPair, isCA bool) *pemPair {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, DNSNames: []string{cn},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IsCA: isCA, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth}}
	signer, signerKey := tmpl, k
	if parent != nil {
		signer, signerKey = parent.x509, parent.priv
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, signer, &k.PublicKey, signerKey)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	kd, _ := x509.MarshalPKCS8PrivateKey(k)
	return &pemPair{cert: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), key: pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}), x509: c, priv: k}
}

// servePorts opens the listener ports of l7 as an ingress gateway does,
// serving them with p until ctx ends; they are closed when the test ends.
func servePorts(t *testing.T, ctx context.Context, p *waypoint.Proxy, l7 *model.L7Config) *state {
	t.Helper()
	s := &state{opts: Options{ListenHost: "127.0.0.1"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.serveOn = func(p *waypoint.Proxy, ln net.Listener, m func(string, string) bool) {
		go p.Serve(ctx, ln, waypoint.ServerOptions{Misdirected: m})
	}
	s.serveTCPOn = func(p *waypoint.Proxy, ln net.Listener, port uint32) { go p.ServeTCP(ctx, ln, port, time.Second) }
	byPort, err := ingressTLSConfigs(l7)
	if err != nil {
		t.Fatal(err)
	}
	if err := s.syncPorts(p, l7, byPort); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		for _, ip := range s.ports {
			ip.ln.Close()
		}
	})
	return s
}

// serveEach runs handle on each connection l accepts, in its own goroutine,
// closing it after, until the test ends and closes l.
func serveEach(t *testing.T, l net.Listener, handle func(net.Conn)) {
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				handle(c)
			}()
		}
	}()
}

func freePort(t *testing.T) uint32 {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return uint32(l.Addr().(*net.TCPAddr).Port)
}

// An ingress gateway terminates TLS on a listener with a certificate from
// its config: a client that trusts it gets the route's answer; a pushed
// certificate replaces it for new connections; MUTUAL refuses a client
// without a certificate from the configured CA; a port whose listener is
// removed stops answering.
func TestIngressTLSListener(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	first, second := newPair(t, "shop.example.com", nil, false), newPair(t, "shop.example.com", nil, false)
	clientCA := newPair(t, "client-ca", nil, true)
	client := newPair(t, "client", clientCA, false)
	config := func(tlsCfg *model.ListenerTLS) *model.L7Config {
		return &model.L7Config{Listeners: []model.L7Listener{{Name: "https", Port: port, TLS: tlsCfg, VirtualHosts: []model.VirtualHost{{
			Name: "shop", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "hello", DirectResponse: &model.DirectResponse{Status: 200, Body: "hello over tls"}}},
		}}}}}
	}
	l7 := config(&model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(first.cert), KeyPEM: string(first.key)})
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: l7}})
	if err != nil {
		t.Fatal(err)
	}
	s := &state{opts: Options{ListenHost: "127.0.0.1"}, log: slog.New(slog.NewTextHandler(io.Discard, nil))}
	s.serveOn = func(p *waypoint.Proxy, ln net.Listener, m func(string, string) bool) {
		go p.Serve(ctx, ln, waypoint.ServerOptions{Misdirected: m})
	}
	apply := func(l7 *model.L7Config) {
		t.Helper()
		byPort, err := ingressTLSConfigs(l7)
		if err != nil {
			t.Fatal(err)
		}
		if err := p.Update(&waypoint.Config{L7: l7}); err != nil {
			t.Fatal(err)
		}
		if err := s.syncPorts(p, l7, byPort); err != nil {
			t.Fatal(err)
		}
	}
	t.Cleanup(func() {
		for _, ip := range s.ports {
			ip.ln.Close()
		}
	})
	apply(l7)

	// The config dump (meshctl proxy-config) shows the listener's
	// certificate, never its key.
	s.svid = identity.NewSVIDSource(nil)
	s.applied.Store(&appliedConfig{cfg: &waypoint.Config{L7: l7}, at: time.Now()})
	dump, err := json.Marshal(s.configDump())
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(dump, first.key) || !bytes.Contains(dump, []byte(configdump.Redacted)) || !strings.Contains(string(dump), "BEGIN CERTIFICATE") {
		t.Errorf("config dump of a TLS listener = %s; want its certificate and the key redacted", dump)
	}

	get := func(trust *pemPair, cert *pemPair) (string, error) {
		pool := x509.NewCertPool()
		pool.AddCert(trust.x509)
		cfg := &tls.Config{RootCAs: pool, ServerName: "shop.example.com"}
		if cert != nil {
			pair, err := tls.X509KeyPair(cert.cert, cert.key)
			if err != nil {
				t.Fatal(err)
			}
			cfg.Certificates = []tls.Certificate{pair}
		}
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: true, DisableKeepAlives: true}}
		resp, err := c.Get("https://" + addr + "/")
		if err != nil {
			return "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.Status + " " + string(b), nil
	}
	if got, err := get(first, nil); err != nil || got != "200 OK hello over tls" {
		t.Fatalf("GET with the first certificate trusted = %q, %v; want 200 OK hello over tls", got, err)
	}
	if _, err := get(second, nil); err == nil {
		t.Fatal("a client trusting only the second certificate was served before it was pushed")
	}

	apply(config(&model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(second.cert), KeyPEM: string(second.key)}))
	if got, err := get(second, nil); err != nil || got != "200 OK hello over tls" {
		t.Fatalf("GET after the certificate was rotated = %q, %v; want 200", got, err)
	}

	apply(config(&model.ListenerTLS{Mode: model.TLSModeMutual, CertPEM: string(second.cert), KeyPEM: string(second.key), ClientCAPEM: string(clientCA.cert)}))
	if _, err := get(second, nil); err == nil {
		t.Fatal("MUTUAL: a client without a certificate was served")
	}
	if _, err := get(second, newPair(t, "stranger", nil, false)); err == nil {
		t.Fatal("MUTUAL: a client with a certificate from another CA was served")
	}
	if got, err := get(second, client); err != nil || got != "200 OK hello over tls" {
		t.Fatalf("MUTUAL with a client certificate from the CA = %q, %v; want 200", got, err)
	}

	// OPTIONAL_MUTUAL (Gateway API's AllowInsecureFallback): a client
	// without a certificate is served, one whose certificate does not
	// chain to the CA is refused.
	apply(config(&model.ListenerTLS{Mode: model.TLSModeOptionalMutual, CertPEM: string(second.cert), KeyPEM: string(second.key), ClientCAPEM: string(clientCA.cert)}))
	if got, err := get(second, nil); err != nil || got != "200 OK hello over tls" {
		t.Fatalf("OPTIONAL_MUTUAL without a client certificate = %q, %v; want 200", got, err)
	}
	// (A Go client sends no certificate the server's CAs do not name; this
	// one sends its own whatever the server asks for.)
	stranger := newPair(t, "stranger", nil, false)
	pair, err := tls.X509KeyPair(stranger.cert, stranger.key)
	if err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(second.x509)
	insist := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{
		RootCAs: roots, ServerName: "shop.example.com",
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &pair, nil },
	}}}
	if resp, err := insist.Get("https://" + addr + "/"); err == nil {
		resp.Body.Close()
		t.Fatal("OPTIONAL_MUTUAL: a client with a certificate from another CA was served")
	}
	if got, err := get(second, client); err != nil || got != "200 OK hello over tls" {
		t.Fatalf("OPTIONAL_MUTUAL with a client certificate from the CA = %q, %v; want 200", got, err)
	}

	if _, err := ingressTLSConfigs(config(&model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(first.cert), KeyPEM: string(second.key)})); err == nil {
		t.Error("a certificate with another certificate's key was accepted")
	}

	other := freePort(t)
	moved := config(nil)
	moved.Listeners[0].Port = other
	apply(moved)
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Errorf("port %d still accepts after its listener was removed from the config", port)
	}
	resp, err := http.Get("http://" + net.JoinHostPort("127.0.0.1", strconv.Itoa(int(other))) + "/")
	if err != nil {
		t.Fatalf("plaintext listener on the new port: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != 200 {
		t.Errorf("plaintext listener: %s; want 200", resp.Status)
	}
}

// TestIngressSNI: servers on one port with their own certificates: a client
// gets the certificate of the host it names in SNI (exact before wildcard),
// and the certificate of the server for "*" for any other name.
func TestIngressSNI(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	shop := newPair(t, "shop.example.com", nil, false)
	api := newPair(t, "api.example.com", nil, false)
	dev := newPair(t, "*.dev.example.com", nil, false)
	special := newPair(t, "special.dev.example.com", nil, false)
	simple := func(p *pemPair, hosts ...string) model.ListenerTLS {
		return model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(p.cert), KeyPEM: string(p.key), SNIHosts: hosts}
	}
	// The listener's own certificate is for one host; "*" falls to shop's.
	def := simple(api, "api.example.com")
	l7 := &model.L7Config{Listeners: []model.L7Listener{{Name: "https", Port: port, TLS: &def,
		SNI: []model.ListenerTLS{simple(dev, "*.dev.example.com"), simple(shop, "shop.example.com", "*"), simple(special, "special.dev.example.com")},
		VirtualHosts: []model.VirtualHost{{Name: "all", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "hello", DirectResponse: &model.DirectResponse{Status: 200, Body: "hello"}}}}}}}}
	if err := l7.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: l7}})
	if err != nil {
		t.Fatal(err)
	}
	servePorts(t, ctx, p, l7)
	served := func(sni string) string {
		c, err := tls.Dial("tcp", addr, &tls.Config{ServerName: sni, InsecureSkipVerify: true})
		if err != nil {
			t.Fatalf("TLS handshake with SNI %q: %v", sni, err)
		}
		defer c.Close()
		return c.ConnectionState().PeerCertificates[0].Subject.CommonName
	}
	for sni, want := range map[string]string{
		"api.example.com":         "api.example.com",
		"API.Example.com":         "api.example.com",
		"a.dev.example.com":       "*.dev.example.com",
		"special.dev.example.com": "special.dev.example.com",
		"shop.example.com":        "shop.example.com",
		"other.example.org":       "shop.example.com",
		"":                        "shop.example.com",
	} {
		if got := served(sni); got != want {
			t.Errorf("SNI %q was served the certificate of %q; want %q", sni, got, want)
		}
	}

	bad := *l7
	bad.Listeners = []model.L7Listener{l7.Listeners[0]}
	bad.Listeners[0].TLS = nil
	if err := bad.Validate(); err == nil {
		t.Error("SNI certificates on a plaintext listener were accepted")
	}
}

// TestIngressTLSPassthrough: one port both terminates TLS and passes it
// through, by SNI. A connection for nginx.example.com reaches the backend
// untouched — the client completes its handshake with the backend's own
// certificate and talks HTTP to it — with the connection counted by the
// TCP metrics; one for shop.example.com is terminated with the port's
// certificate and routed as HTTP; a server name no route and no
// certificate claims, and a client that sends no TLS, are closed. A
// passthrough-only port closes what it cannot route.
func TestIngressTLSPassthrough(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	// The backend terminates TLS itself, with a certificate the gateway
	// never holds.
	backendCA := newPair(t, "backend CA", nil, true)
	backendCert := newPair(t, "nginx.example.com", backendCA, false)
	pair, err := tls.X509KeyPair(backendCert.cert, backendCert.key)
	if err != nil {
		t.Fatal(err)
	}
	bl, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	bsrv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { io.WriteString(w, "from the backend over its own TLS") })}
	go bsrv.Serve(bl)
	t.Cleanup(func() { bsrv.Close() })

	port, passOnly := freePort(t), freePort(t)
	shop := newPair(t, "shop.example.com", nil, false)
	term := model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(shop.cert), KeyPEM: string(shop.key), SNIHosts: []string{"shop.example.com"}}
	pass := []model.PassthroughRoute{{Name: "nginx", SNIHosts: []string{"nginx.example.com"},
		Destinations: []model.WeightedDestination{{Cluster: "nginx", Weight: 100}}}}
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{
			{Name: "https", Port: port, TLS: &term, Passthrough: pass, VirtualHosts: []model.VirtualHost{{Name: "shop", Domains: []string{"*"},
				Routes: []model.L7Route{{Name: "hello", DirectResponse: &model.DirectResponse{Status: 200, Body: "terminated at the gateway"}}}}}},
			{Name: "tls-only", Port: passOnly, Passthrough: pass},
		},
		Clusters: []model.L7Cluster{{Name: "nginx", Endpoints: []model.L7Endpoint{{Address: bl.Addr().String()}}}},
	}
	if err := l7.Validate(); err != nil {
		t.Fatal(err)
	}
	reg := prometheus.NewRegistry()
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: l7}, Registerer: reg})
	if err != nil {
		t.Fatal(err)
	}
	servePorts(t, ctx, p, l7)
	roots := x509.NewCertPool()
	roots.AddCert(backendCA.x509)
	get := func(port uint32, sni string, roots *x509.CertPool) (string, string, error) {
		c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{ServerName: sni, RootCAs: roots, InsecureSkipVerify: roots == nil}}}
		resp, err := c.Get("https://127.0.0.1:" + strconv.Itoa(int(port)) + "/")
		if err != nil {
			return "", "", err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return string(b), resp.TLS.PeerCertificates[0].Subject.CommonName, nil
	}
	for _, pt := range []uint32{port, passOnly} {
		body, cn, err := get(pt, "nginx.example.com", roots)
		if err != nil || body != "from the backend over its own TLS" || cn != "nginx.example.com" {
			t.Errorf("port %d, SNI nginx.example.com: %q from %q (%v); want the backend's answer over its own certificate", pt, body, cn, err)
		}
	}
	if body, cn, err := get(port, "shop.example.com", nil); err != nil || body != "terminated at the gateway" || cn != "shop.example.com" {
		t.Errorf("SNI shop.example.com: %q from %q (%v); want the gateway's route with its certificate", body, cn, err)
	}
	if _, _, err := get(passOnly, "shop.example.com", nil); err == nil {
		t.Error("a passthrough-only port served a server name no route claims")
	}
	c, err := net.Dial("tcp", "127.0.0.1:"+strconv.Itoa(int(port)))
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "GET / HTTP/1.1\r\nHost: x\r\n\r\n")
	c.SetReadDeadline(time.Now().Add(peekTimeout + 5*time.Second))
	if n, _ := c.Read(make([]byte, 64)); n != 0 {
		t.Error("plaintext HTTP on a TLS port got an answer; want the connection closed")
	}
	c.Close()
	if opened := testutil.MetricSum(t, reg, "istio_tcp_connections_opened_total", nil); opened != 2 {
		t.Errorf("istio_tcp_connections_opened_total = %v; want the 2 connections passed through", opened)
	}
}

// TestIngressTCP: a port with a tcp route forwards each connection whole to
// its destinations by weight (two backends at 50/50 both get connections
// in 40), the bytes both ways untouched; a DENY policy on the client closes
// its connections; a push that drops the route closes the port.
func TestIngressTCP(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	backend := func(name string) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		serveEach(t, l, func(c net.Conn) {
			line, _ := bufio.NewReader(c).ReadString('\n')
			io.WriteString(c, name+" got "+line)
		})
		return l.Addr().String()
	}
	v1, v2 := backend("v1"), backend("v2")
	port := freePort(t)
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "tcp", Port: port, TCP: &model.TCPRoute{Name: "tcp-echo", Destinations: []model.WeightedDestination{
			{Cluster: "v1", Weight: 50}, {Cluster: "v2", Weight: 50}}}}},
		Clusters: []model.L7Cluster{{Name: "v1", Endpoints: []model.L7Endpoint{{Address: v1}}}, {Name: "v2", Endpoints: []model.L7Endpoint{{Address: v2}}}},
	}
	if err := l7.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: l7}})
	if err != nil {
		t.Fatal(err)
	}
	s := servePorts(t, ctx, p, l7)
	addr := "127.0.0.1:" + strconv.Itoa(int(port))
	seen := map[string]int{}
	for i := range 40 {
		c, err := net.Dial("tcp", addr)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(c, "hello %d\n", i)
		c.SetReadDeadline(time.Now().Add(5 * time.Second))
		b, _ := io.ReadAll(c)
		c.Close()
		who, rest, _ := strings.Cut(string(b), " got ")
		if rest != fmt.Sprintf("hello %d\n", i) {
			t.Fatalf("connection %d answered %q; want a backend's echo of hello %d", i, b, i)
		}
		seen[who]++
	}
	if seen["v1"] == 0 || seen["v2"] == 0 {
		t.Errorf("40 connections went to %v; want both backends", seen)
	}
	// A DENY policy on the client's address (one selecting the gateway's
	// pods, as meshd sends it) closes its connections before any backend.
	deny := []*policy.Policy{{Namespace: "istio-system", Name: "deny-local", Action: policy.Deny,
		Rules: []policy.Rule{{From: []policy.Source{{IPBlocks: []string{"127.0.0.1/32"}}}}}}}
	if err := p.Update(&waypoint.Config{L7: l7, Policies: deny}); err != nil {
		t.Fatal(err)
	}
	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	io.WriteString(c, "hello denied\n")
	c.SetReadDeadline(time.Now().Add(5 * time.Second))
	if b, _ := io.ReadAll(c); len(b) != 0 {
		t.Errorf("a connection the policy denies was answered %q; want it closed", b)
	}
	c.Close()
	if err := s.syncPorts(p, &model.L7Config{}, nil); err != nil {
		t.Fatal(err)
	}
	if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
		c.Close()
		t.Error("the port still accepts after its listener was removed")
	}
}

// TestIngressMisdirectedRequest: on a port whose servers have different
// TLS settings, a request's Host must be served by the settings the
// handshake chose by SNI. A client without a certificate that connects for
// shop.example.com and asks for secure.example.com (whose server is
// MUTUAL) gets 421 over HTTP/1.1 and HTTP/2, never the secure host's
// answer; a client with a certificate that connects for secure asks for
// shop and gets 421 too; hosts whose servers share settings (alias) are
// served on each other's connections, as a browser coalesces them. The
// backend sees X-Forwarded-Proto https.
func TestIngressMisdirectedRequest(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	t.Cleanup(cancel)
	port := freePort(t)
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(int(port)))
	shop, secure := newPair(t, "shop.example.com", nil, false), newPair(t, "secure.example.com", nil, false)
	clientCA := newPair(t, "client-ca", nil, true)
	client := newPair(t, "client", clientCA, false)
	shopTLS := model.ListenerTLS{Mode: model.TLSModeSimple, CertPEM: string(shop.cert), KeyPEM: string(shop.key), SNIHosts: []string{"shop.example.com"}}
	aliasTLS := shopTLS
	aliasTLS.SNIHosts = []string{"alias.example.com"}
	secureTLS := model.ListenerTLS{Mode: model.TLSModeMutual, CertPEM: string(secure.cert), KeyPEM: string(secure.key),
		ClientCAPEM: string(clientCA.cert), SNIHosts: []string{"secure.example.com"}}
	vhost := func(host string) model.VirtualHost {
		return model.VirtualHost{Name: host, Domains: []string{host},
			Routes: []model.L7Route{{Name: host, DirectResponse: &model.DirectResponse{Status: 200, Body: "from " + host}}}}
	}
	// shop's backend says what scheme the gateway forwarded.
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fmt.Fprintf(w, "from %s over %s", r.Host, r.Header.Get("X-Forwarded-Proto"))
	}))
	t.Cleanup(backend.Close)
	shopHost := vhost("shop.example.com")
	shopHost.Routes[0].DirectResponse = nil
	shopHost.Routes[0].Destinations = []model.WeightedDestination{{Cluster: "shop", Weight: 100}}
	l7 := &model.L7Config{Listeners: []model.L7Listener{{Name: "https", Port: port, TLS: &shopTLS,
		SNI:          []model.ListenerTLS{secureTLS, aliasTLS},
		VirtualHosts: []model.VirtualHost{shopHost, vhost("secure.example.com"), vhost("alias.example.com")}}},
		Clusters: []model.L7Cluster{{Name: "shop", Endpoints: []model.L7Endpoint{{Address: backend.Listener.Addr().String()}}}}}
	if err := l7.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: l7}})
	if err != nil {
		t.Fatal(err)
	}
	servePorts(t, ctx, p, l7)
	clientCert, err := tls.X509KeyPair(client.cert, client.key)
	if err != nil {
		t.Fatal(err)
	}
	get := func(sni, host string, withCert, h2 bool) (int, string) {
		t.Helper()
		cfg := &tls.Config{ServerName: sni, InsecureSkipVerify: true}
		if withCert {
			cfg.Certificates = []tls.Certificate{clientCert}
		}
		tr := &http.Transport{TLSClientConfig: cfg, ForceAttemptHTTP2: h2}
		defer tr.CloseIdleConnections()
		req, _ := http.NewRequest("GET", "https://"+addr+"/", nil)
		req.Host = host
		resp, err := (&http.Client{Transport: tr, Timeout: 5 * time.Second}).Do(req)
		if err != nil {
			t.Fatalf("SNI %s, Host %s: %v", sni, host, err)
		}
		defer resp.Body.Close()
		if h2 != (resp.ProtoMajor == 2) {
			t.Fatalf("SNI %s, Host %s: answered over %s", sni, host, resp.Proto)
		}
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	for _, h2 := range []bool{false, true} {
		for _, c := range []struct {
			sni, host string
			cert      bool
			code      int
			body      string
		}{
			{"shop.example.com", "shop.example.com", false, 200, "from shop.example.com over https"},
			{"shop.example.com", "secure.example.com", false, 421, ""},
			{"shop.example.com", "SECURE.example.com:443", false, 421, ""},
			{"", "secure.example.com", false, 421, ""},
			{"secure.example.com", "secure.example.com", true, 200, "from secure.example.com"},
			{"secure.example.com", "shop.example.com", true, 421, ""},
			{"shop.example.com", "alias.example.com:443", false, 200, "from alias.example.com"},
			{"alias.example.com", "shop.example.com", false, 200, "from shop.example.com over https"},
		} {
			code, body := get(c.sni, c.host, c.cert, h2)
			if code != c.code || (c.body != "" && body != c.body) || strings.Contains(body, "from secure") && c.code != 200 {
				t.Errorf("h2=%v SNI %q, Host %q: %d %q; want %d %q", h2, c.sni, c.host, code, body, c.code, c.body)
			}
		}
	}
}

// TestIngressPassthroughDrains: when a TLS passthrough port closes (the
// gateway stops, or a push removes it), the connections it relays keep
// working for the drain window and are cut after it; a connection that
// ends earlier ends the drain at once.
func TestIngressPassthroughDrains(t *testing.T) {
	backend := newPair(t, "echo.example.com", nil, false)
	pair, err := tls.X509KeyPair(backend.cert, backend.key)
	if err != nil {
		t.Fatal(err)
	}
	bl, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{pair}})
	if err != nil {
		t.Fatal(err)
	}
	serveEach(t, bl, func(c net.Conn) { io.Copy(c, c) })
	const port = 8443
	l7 := &model.L7Config{
		Listeners: []model.L7Listener{{Name: "tls", Port: port, Passthrough: []model.PassthroughRoute{{Name: "echo",
			SNIHosts: []string{"echo.example.com"}, Destinations: []model.WeightedDestination{{Cluster: "echo", Weight: 100}}}}}},
		Clusters: []model.L7Cluster{{Name: "echo", Endpoints: []model.L7Endpoint{{Address: bl.Addr().String()}}}},
	}
	if err := l7.Validate(); err != nil {
		t.Fatal(err)
	}
	p, err := waypoint.New(waypoint.Options{Config: &waypoint.Config{L7: l7}})
	if err != nil {
		t.Fatal(err)
	}
	// open serves the port and relays one connection through it.
	open := func() (*sniListener, *tls.Conn) {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		l := newSNIListener(ln, p, port, nil)
		c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{ServerName: "echo.example.com", InsecureSkipVerify: true})
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return l, c
	}
	echo := func(c net.Conn, msg string) error {
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
	drained := func(l *sniListener, d time.Duration) chan struct{} {
		done := make(chan struct{})
		go func() { l.drain(d); close(done) }()
		return done
	}

	l, c := open()
	if err := echo(c, "before"); err != nil {
		t.Fatal(err)
	}
	l.Close()
	done := drained(l, time.Minute)
	if err := echo(c, "draining"); err != nil {
		t.Errorf("a relayed connection after the port closed, within the drain window: %v", err)
	}
	select {
	case <-done:
		t.Fatal("the drain ended with a connection still relayed")
	case <-time.After(100 * time.Millisecond):
	}
	c.Close()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the drain did not end once the last connection did")
	}

	l, c = open()
	if err := echo(c, "before"); err != nil {
		t.Fatal(err)
	}
	l.Close()
	start := time.Now()
	done = drained(l, 200*time.Millisecond)
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("the drain did not cut the connection after its window")
	}
	if waited := time.Since(start); waited < 150*time.Millisecond {
		t.Errorf("the drain ended after %v; want the 200ms window", waited)
	}
	if err := echo(c, "after"); err == nil {
		t.Error("a relayed connection still worked after the drain window")
	}
}
