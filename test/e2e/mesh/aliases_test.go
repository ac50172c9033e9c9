package meshtest

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// trustDomainAliasEndToEnd drives Istio's trust domain migration through
// meshd and a node agent, against server's HBONE port: a client whose
// certificate (signed by the mesh CA) names old.example is refused until
// the mesh config names old.example among its trustDomainAliases, then
// served; once the alias is taken back, the tunnel it holds is closed
// (counted as peer_untrusted) and a new handshake is refused again. It
// runs inside TestHBONERefusesForgedAndMisdirectedPeers, whose namespace,
// server and CA it shares: a test of its own cost make test a minute of
// setting them up and tearing them down.
func trustDomainAliasEndToEnd(t *testing.T, lb *lab.Lab, ns string, server corev1.Pod, caCert *x509.Certificate, caKey any, roots *x509.CertPool) {
	aliasCert := spiffeCert(t, fmt.Sprintf("spiffe://old.example/ns/%s/sa/legacy", ns), caCert, caKey)
	hbone := net.JoinHostPort(server.Status.PodIP, "15008")
	app := net.JoinHostPort(server.Status.PodIP, "8080")

	if code, err := connect(hbone, app, roots, &aliasCert); err == nil {
		t.Fatalf("before the alias: CONNECT with an old.example certificate = %d; want the handshake refused", code)
	}

	setAliases := func(aliases string) {
		lb.Apply(t, "istio-system", `apiVersion: v1
kind: ConfigMap
metadata: {name: istio}
data:
  mesh: |
    trustDomainAliases: `+aliases+"\n")
	}
	began := time.Now()
	setAliases("[old.example]")
	t.Cleanup(func() { _, _ = lb.Kubectl("-n", "istio-system", "delete", "configmap", "istio", "--ignore-not-found") })

	var held *heldStream
	lab.WaitFor(t, time.Minute, "an old.example client served once the alias is pushed", func() (bool, error) {
		s, err := openStream(hbone, app, roots, &aliasCert)
		if err != nil {
			return false, err
		}
		if err := s.get(); err != nil {
			s.close()
			return false, err
		}
		held = s
		return true, nil
	})
	defer held.close()
	t.Logf("served %v after the alias was applied", time.Since(began).Round(time.Millisecond))

	before := refusedMetric(t, server.Status.HostIP, ns, "peer_untrusted")
	began = time.Now()
	setAliases("[]")
	lab.WaitFor(t, time.Minute, "the held tunnel closed once the alias is taken back", func() (bool, error) {
		err := held.get()
		return err != nil, fmt.Errorf("a request on the held stream still answered")
	})
	t.Logf("held tunnel closed %v after the alias was taken back", time.Since(began).Round(time.Millisecond))
	lab.WaitFor(t, 10*time.Second, "the closed tunnel counted as peer_untrusted", func() (bool, error) {
		d := refusedMetric(t, server.Status.HostIP, ns, "peer_untrusted") - before
		return d >= 1, fmt.Errorf("refused{reason=peer_untrusted} moved by %v", d)
	})
	if code, err := connect(hbone, app, roots, &aliasCert); err == nil {
		t.Errorf("after the alias was taken back: CONNECT = %d; want the handshake refused", code)
	}
}

// heldStream is one HBONE stream to an HTTP app, kept open to send
// requests on.
type heldStream struct {
	tr     *http.Transport
	cancel context.CancelFunc
	resp   *http.Response
	br     *bufio.Reader
	w      *io.PipeWriter
	host   string
}

// openStream opens a CONNECT stream to target through the HBONE server at
// addr (see connect), failing unless it is answered 200 within 10 s.
func openStream(addr, target string, roots *x509.CertPool, cert *tls.Certificate) (*heldStream, error) {
	tr := hboneTransport(addr, roots, cert)
	pr, pw := io.Pipe()
	// The stream lives as long as the request's context: cancelled by
	// close, or when no answer came in time.
	ctx, cancel := context.WithCancel(context.Background())
	late := time.AfterFunc(10*time.Second, cancel)
	req := (&http.Request{Method: http.MethodConnect, URL: &url.URL{Scheme: "https", Host: target}, Host: target,
		Header: http.Header{}, Body: pr}).WithContext(ctx)
	resp, err := tr.RoundTrip(req)
	late.Stop()
	s := &heldStream{tr: tr, cancel: cancel, resp: resp, w: pw, host: target}
	if err == nil && resp.StatusCode != http.StatusOK {
		err = fmt.Errorf("CONNECT %s: status %d", target, resp.StatusCode)
	}
	if err != nil {
		s.close()
		return nil, err
	}
	s.br = bufio.NewReader(resp.Body)
	return s, nil
}

// get sends one GET on the stream and reads its answer, within 10 s.
func (s *heldStream) get() error {
	done := make(chan error, 1)
	go func() {
		if _, err := fmt.Fprintf(s.w, "GET / HTTP/1.1\r\nHost: %s\r\n\r\n", s.host); err != nil {
			done <- err
			return
		}
		resp, err := http.ReadResponse(s.br, nil)
		if err != nil {
			done <- err
			return
		}
		_, err = io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if err == nil && resp.StatusCode != http.StatusOK {
			err = fmt.Errorf("GET through the stream: status %d", resp.StatusCode)
		}
		done <- err
	}()
	select {
	case err := <-done:
		return err
	case <-time.After(10 * time.Second):
		s.close() // ends the goroutine's read
		return fmt.Errorf("GET through the stream: no answer in 10s")
	}
}

func (s *heldStream) close() {
	if s == nil {
		return
	}
	s.cancel()
	s.w.Close()
	if s.resp != nil {
		s.resp.Body.Close()
	}
	s.tr.CloseIdleConnections()
}
