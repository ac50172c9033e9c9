package waypoint

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"log"
	"math/big"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// testCA issues certificates for TLS origination tests.
type testCA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	pem  string
}

func newTestCA(t *testing.T, name string) *testCA {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: name},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	cert, _ := x509.ParseCertificate(der)
	return &testCA{cert: cert, key: key, pem: string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))}
}

// issue returns a leaf for dnsNames (server and client use), as a
// tls.Certificate and as PEM.
func (ca *testCA) issue(t *testing.T, cn string, dnsNames ...string) (tls.Certificate, string, string) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: big.NewInt(time.Now().UnixNano()), Subject: pkix.Name{CommonName: cn}, DNSNames: dnsNames,
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		KeyUsage:    x509.KeyUsageDigitalSignature,
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		t.Fatal(err)
	}
	kder, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	certPEM := string(pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}))
	keyPEM := string(pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}))
	pair, err := tls.X509KeyPair([]byte(certPEM), []byte(keyPEM))
	if err != nil {
		t.Fatal(err)
	}
	return pair, certPEM, keyPEM
}

// TestTLSOrigination: a cluster with a DestinationRule's TLS origination
// speaks TLS to its endpoint, which serves only TLS: the server's
// certificate is verified (CA, then SNI or subjectAltNames), a client
// certificate is presented under MUTUAL, HTTP/2 is negotiated by ALPN; a
// server that fails verification gets no request (503, UF), never one in the
// clear.
func TestTLSOrigination(t *testing.T) {
	ca, otherCA := newTestCA(t, "partner root"), newTestCA(t, "someone else")
	serverCert, _, _ := ca.issue(t, "api", "api.partner.example")
	_, clientPEM, clientKey := ca.issue(t, "waypoint-client")

	type seen struct {
		sni, proto, client string
	}
	tlsBackend := func(t *testing.T, requireClient, h2 bool) (string, chan seen) {
		got := make(chan seen, 16)
		s := httptest.NewUnstartedServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			v := seen{sni: r.TLS.ServerName, proto: r.Proto}
			if len(r.TLS.PeerCertificates) > 0 {
				v.client = r.TLS.PeerCertificates[0].Subject.CommonName
			}
			got <- v
			fmt.Fprint(w, "over tls")
		}))
		s.Config.ErrorLog = log.New(io.Discard, "", 0) // the refused handshakes are the point
		s.TLS = &tls.Config{Certificates: []tls.Certificate{serverCert}}
		if requireClient {
			pool := x509.NewCertPool()
			pool.AddCert(ca.cert)
			s.TLS.ClientCAs, s.TLS.ClientAuth = pool, tls.RequireAndVerifyClientCert
		}
		s.EnableHTTP2 = h2
		s.StartTLS()
		t.Cleanup(s.Close)
		return s.Listener.Addr().String(), got
	}

	tests := []struct {
		name          string
		tls           model.UpstreamTLS
		requireClient bool
		h2            bool
		wantCode      int
		wantClient    string
		resetAfter    bool // TLS 1.3: the server refuses the client after the handshake: a reset, not UF
	}{
		{name: "simple", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", CAPEM: ca.pem}, wantCode: 200},
		{name: "simple over HTTP/2", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", CAPEM: ca.pem}, h2: true, wantCode: 200},
		{name: "subjectAltNames match", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "gateway.partner.example", SubjectAltNames: []string{"other.example", "api.partner.example"}, CAPEM: ca.pem}, wantCode: 200},
		{name: "mutual", tls: model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "api.partner.example", CAPEM: ca.pem, ClientCertPEM: clientPEM, ClientKeyPEM: clientKey}, requireClient: true, wantCode: 200, wantClient: "waypoint-client"},
		{name: "insecureSkipVerify", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", InsecureSkipVerify: true}, wantCode: 200},
		{name: "another CA", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", CAPEM: otherCA.pem}, wantCode: 503},
		{name: "system roots", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example"}, wantCode: 503},
		{name: "SNI not in the certificate", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "evil.example", CAPEM: ca.pem}, wantCode: 503},
		{name: "subjectAltNames mismatch", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", SubjectAltNames: []string{"spiffe://partner/ns/x/sa/y"}, CAPEM: ca.pem}, wantCode: 503},
		{name: "no client certificate for a server that requires one", tls: model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "api.partner.example", CAPEM: ca.pem}, requireClient: true, wantCode: 503, resetAfter: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addr, got := tlsBackend(t, tt.requireClient, tt.h2)
			cl := clusterOf("partner", addr)
			cl.Traffic.TLS = &tt.tls
			if tt.h2 {
				cl.Protocol = model.UpstreamHTTP2
			}
			cfg := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("partner"), Retries: &model.RetryPolicy{}})
			if err := cfg.L7.Validate(); err != nil {
				t.Fatalf("config: %v", err)
			}
			h := start(t, cfg, nil)
			code, body := h.get(t, newClient(t), "/", map[string]string{"Host": "api.partner.example"})
			if code != tt.wantCode {
				t.Fatalf("GET = %d %q; want %d", code, body, tt.wantCode)
			}
			if code != 200 {
				if n := h.log.countFlag(t, "UF"); n != 1 && !tt.resetAfter {
					t.Errorf("access log lines flagged UF: %d; want 1 (a failed TLS origination is a connection failure)", n)
				}
				select {
				case v := <-got:
					t.Errorf("the backend served a request (%+v) although the TLS origination should fail", v)
				default:
				}
				return
			}
			v := <-got
			wantProto := "HTTP/1.1"
			if tt.h2 {
				wantProto = "HTTP/2.0"
			}
			if body != "over tls" || v.sni != tt.tls.SNI || v.proto != wantProto || v.client != tt.wantClient {
				t.Errorf("backend saw SNI %q, %s, client %q, answered %q; want SNI %q, %s, client %q", v.sni, v.proto, v.client, body, tt.tls.SNI, wantProto, tt.wantClient)
			}
		})
	}
}

// TestUpstreamTLSValidate: TLS origination the proxy cannot carry out is
// refused with the config, so the last good one keeps serving.
func TestUpstreamTLSValidate(t *testing.T) {
	ca := newTestCA(t, "root")
	_, certPEM, keyPEM := ca.issue(t, "client")
	for _, tt := range []struct {
		name string
		tls  model.UpstreamTLS
		ok   bool
	}{
		{"simple", model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "a.example"}, true},
		{"mutual", model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "a.example", ClientCertPEM: certPEM, ClientKeyPEM: keyPEM}, true},
		{"no name to verify", model.UpstreamTLS{Mode: model.TLSModeSimple}, false},
		{"bad CA", model.UpstreamTLS{Mode: model.TLSModeSimple, SNI: "a.example", CAPEM: "not pem"}, false},
		{"mutual without a key", model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "a.example", ClientCertPEM: certPEM}, false},
		{"mutual with a mismatched key", model.UpstreamTLS{Mode: model.TLSModeMutual, SNI: "a.example", ClientCertPEM: certPEM, ClientKeyPEM: keyPEM[:len(keyPEM)/2]}, false},
		{"unknown mode", model.UpstreamTLS{Mode: "ISTIO_MUTUAL", SNI: "a.example"}, false},
	} {
		cl := clusterOf("c", "127.0.0.1:1")
		cl.Traffic.TLS = &tt.tls
		err := oneRoute([]model.L7Cluster{cl}, model.L7Route{Name: "r", Destinations: to("c")}).L7.Validate()
		if (err == nil) != tt.ok {
			t.Errorf("%s: Validate() = %v; want ok=%v", tt.name, err, tt.ok)
		}
	}
}
