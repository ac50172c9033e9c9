package meshtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// TestHBONERefusesForgedAndMisdirectedPeers attacks an enrolled pod's HBONE
// port (15008) from the machine, outside the mesh, with a client written
// from the protocol (HTTP/2 CONNECT over TLS): a certificate of another
// trust domain and no certificate at all fail the handshake, counted as
// peer_unverified; a certificate
// the mesh CA signed is served for the pod's own address — so the client is
// sound — but a CONNECT to another pod's address or to a mesh port is
// refused and counted; a pod dialling its own 15001 or 15006 gets
// nothing; and a certificate of a trust domain alias is served only while
// the mesh config names the alias (trustDomainAliasEndToEnd).
func TestHBONERefusesForgedAndMisdirectedPeers(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	server, _ := echoServer(t, lb, ns)
	other := clientPod(t, lb, ns, "other", "other")

	caCert, caKey, roots := meshCA(t, lb)
	meshCert := spiffeCert(t, fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/attacker", ns), caCert, caKey)
	foreignCA, foreignKey := selfSignedCA(t)
	foreignCert := spiffeCert(t, "spiffe://evil.example/ns/"+ns+"/sa/default", foreignCA, foreignKey)

	hbone := net.JoinHostPort(server.Status.PodIP, "15008")
	own := net.JoinHostPort(server.Status.PodIP, "8080")
	lab.WaitFor(t, 30*time.Second, "a CONNECT to the pod itself with a mesh certificate", func() (bool, error) {
		code, err := connect(hbone, own, roots, &meshCert)
		return err == nil && code == http.StatusOK, fmt.Errorf("status %d, %v", code, err)
	})

	for _, tt := range []struct {
		name      string
		cert      *tls.Certificate
		target    string
		handshake bool   // the TLS handshake is refused (else the CONNECT)
		reason    string // counted with this reason
	}{
		{"a certificate of another trust domain", &foreignCert, own, true, "peer_unverified"},
		{"no client certificate", nil, own, true, "peer_unverified"},
		{"a CONNECT to another pod through this pod's 15008", &meshCert, net.JoinHostPort(other.Status.PodIP, "8080"), false, "not_this_pod"},
		{"a CONNECT to the machine through this pod's 15008", &meshCert, "198.18.0.1:22", false, "not_this_pod"},
		{"a CONNECT to the pod's own inbound mesh port", &meshCert, net.JoinHostPort(server.Status.PodIP, "15006"), false, "mesh_port"},
	} {
		before := refusedMetric(t, server.Status.HostIP, ns, tt.reason)
		code, err := connect(hbone, tt.target, roots, tt.cert)
		switch {
		case tt.handshake && err == nil:
			t.Errorf("%s: CONNECT %s answered %d; want the TLS handshake refused", tt.name, tt.target, code)
			continue
		case !tt.handshake && (err != nil || code == http.StatusOK):
			t.Errorf("%s: CONNECT %s = %d, %v; want refused with an HTTP error status", tt.name, tt.target, code, err)
			continue
		}
		lab.WaitFor(t, 10*time.Second, tt.name+" counted as "+tt.reason, func() (bool, error) {
			d := refusedMetric(t, server.Status.HostIP, ns, tt.reason) - before
			return d >= 1, fmt.Errorf("refused{reason=%q} moved by %v", tt.reason, d)
		})
	}

	// A pod dialling its own mesh listeners directly gets nothing back.
	for _, port := range []string{"15001", "15006"} {
		for _, host := range []string{"127.0.0.1", server.Status.PodIP} {
			u := fmt.Sprintf("http://%s:%s/", host, port)
			if ok, out := request(t, lb, ns, server.Name, u); ok {
				t.Errorf("the pod dialled its own %s and was answered: %s", u, out)
			}
		}
	}

	t.Run("trust domain alias", func(t *testing.T) {
		trustDomainAliasEndToEnd(t, lb, ns, server, caCert, caKey, roots)
	})
}

// connect opens one HBONE stream to target through the HBONE server at
// addr and returns the CONNECT's status; an error means no HTTP answer
// (the TLS handshake or the connection failed).
func connect(addr, target string, roots *x509.CertPool, cert *tls.Certificate) (int, error) {
	tr := hboneTransport(addr, roots, cert)
	defer tr.CloseIdleConnections()
	pr, pw := io.Pipe()
	defer pw.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req := (&http.Request{Method: http.MethodConnect, URL: &url.URL{Scheme: "https", Host: target}, Host: target,
		Header: http.Header{}, Body: pr}).WithContext(ctx)
	resp, err := tr.RoundTrip(req)
	if err != nil {
		return 0, err
	}
	resp.Body.Close()
	return resp.StatusCode, nil
}

// hboneTransport is an HTTP/2 client of the HBONE server at addr, over TLS
// with cert (nil: none), checking the server's chain to roots.
func hboneTransport(addr string, roots *x509.CertPool, cert *tls.Certificate) *http.Transport {
	cfg := &tls.Config{
		NextProtos: []string{"h2"}, MinVersion: tls.VersionTLS13,
		// The server's certificate names a SPIFFE ID, not a host: check its
		// chain to the mesh root here.
		InsecureSkipVerify: true,
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			if len(raw) == 0 {
				return errors.New("no server certificate")
			}
			leaf, err := x509.ParseCertificate(raw[0])
			if err != nil {
				return err
			}
			inter := x509.NewCertPool()
			for _, r := range raw[1:] {
				if c, err := x509.ParseCertificate(r); err == nil {
					inter.AddCert(c)
				}
			}
			_, err = leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}})
			return err
		},
	}
	if cert != nil {
		cfg.Certificates = []tls.Certificate{*cert}
	}
	return &http.Transport{
		ForceAttemptHTTP2: true, TLSClientConfig: cfg,
		DialTLSContext: func(ctx context.Context, _, _ string) (net.Conn, error) {
			d := &tls.Dialer{Config: cfg, NetDialer: &net.Dialer{Timeout: 5 * time.Second}}
			return d.DialContext(ctx, "tcp", addr)
		},
	}
}

// meshCA is the mesh CA's certificate and key and the mesh root, from the
// cacerts Secret: what a test needs to sign certificates meshd would.
func meshCA(t *testing.T, lb *lab.Lab) (*x509.Certificate, any, *x509.CertPool) {
	t.Helper()
	sec, err := lb.Clientset().CoreV1().Secrets(meshSystem).Get(t.Context(), "cacerts", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the mesh CA Secret: %v", err)
	}
	caCert, caKey := parseCA(t, sec.Data["ca-cert.pem"], sec.Data["ca-key.pem"])
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM(sec.Data["root-cert.pem"]) {
		t.Fatal("cacerts has no root-cert.pem")
	}
	return caCert, caKey, roots
}

func parseCA(t *testing.T, certPEM, keyPEM []byte) (*x509.Certificate, any) {
	t.Helper()
	cb, _ := pem.Decode(certPEM)
	kb, _ := pem.Decode(keyPEM)
	if cb == nil || kb == nil {
		t.Fatal("cacerts: ca-cert.pem or ca-key.pem is not PEM")
	}
	c, err := x509.ParseCertificate(cb.Bytes)
	if err != nil {
		t.Fatal(err)
	}
	var k any
	switch {
	case strings.Contains(kb.Type, "EC"):
		k, err = x509.ParseECPrivateKey(kb.Bytes)
	case kb.Type == "RSA PRIVATE KEY":
		k, err = x509.ParsePKCS1PrivateKey(kb.Bytes)
	default:
		k, err = x509.ParsePKCS8PrivateKey(kb.Bytes)
	}
	if err != nil {
		t.Fatalf("cacerts: ca-key.pem (%s): %v", kb.Type, err)
	}
	return c, k
}

func selfSignedCA(t *testing.T) (*x509.Certificate, any) {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "evil root"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &k.PublicKey, k)
	if err != nil {
		t.Fatal(err)
	}
	c, _ := x509.ParseCertificate(der)
	return c, k
}

// spiffeCert makes a client/server certificate for a SPIFFE ID signed by ca.
func spiffeCert(t *testing.T, id string, ca *x509.Certificate, caKey any) tls.Certificate {
	t.Helper()
	u, err := url.Parse(id)
	if err != nil {
		t.Fatal(err)
	}
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(time.Now().UnixNano()), URIs: []*url.URL{u},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth, x509.ExtKeyUsageServerAuth},
		NotBefore: time.Now().Add(-time.Minute), NotAfter: time.Now().Add(time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &k.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: k}
}
