package kubelet

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/go-logr/logr"
	"github.com/go-logr/logr/funcr"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/meshlet/meshlet/pkg/testutil"
)

// TestPortForward serves the kubelet API over TLS on a loopback address and
// drives it with client-go's port-forwarder (SPDY, as the API server proxies
// kubectl port-forward): a connection reaches a server listening on
// 127.0.0.1 (or only on [::1]) inside the pod's own network namespace, or,
// for a hostNetwork pod, the node's; a port nothing listens on, an unknown
// pod or uid and a client outside system:masters are refused with errors
// that say why.
func TestPortForward(t *testing.T) {
	testutil.RequireRoot(t)
	dir := t.TempDir()
	pki := newTestPKI(t, dir)

	podNetns := testNetns(t)
	startTaggedEcho(t, podNetns, "127.0.0.1:15000", "web-netns:")
	v6err := func() error {
		_, err := startTaggedEchoErr(t, podNetns, "[::1]:15002", "web-netns-v6:")
		return err
	}()
	hostAddr := startTaggedEcho(t, "", "127.0.0.1:0", "node-netns:")
	_, hostPort, _ := net.SplitHostPort(hostAddr)

	k := &kubelet{
		cfg: Config{NodeName: "mlkt-node", NodeIP: "127.0.0.1", NodeRoot: dir, CgroupRoot: filepath.Join(dir, "cgroup"),
			LogDir: filepath.Join(dir, "logs"), ServingCert: pki.servingCert, ServingKey: pki.servingKey, ClientCA: pki.caFile},
		workers: map[types.UID]*podWorker{},
		log:     log.New(testWriter{t}, "", 0),
	}
	web := newPodWorker(k, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "web", UID: "mlkt-uid-web"},
		Spec: corev1.PodSpec{Containers: []corev1.Container{{Name: "app"}}}})
	web.netns = podNetns
	host := newPodWorker(k, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: "demo", Name: "host", UID: "mlkt-uid-host"},
		Spec: corev1.PodSpec{HostNetwork: true, Containers: []corev1.Container{{Name: "app"}}}})
	k.workers[web.uid], k.workers[host.uid] = web, host

	ctx, cancel := context.WithCancel(context.Background())
	addr, err := k.serveAPIAt(ctx, "127.0.0.1:0")
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	t.Cleanup(func() {
		// Stopping the kubelet API ends its server and every forward.
		cancel()
		waitGroupOrFail(t, &k.wg, 10*time.Second, "kubelet API goroutines after stop")
	})

	masters, nodes := []string{"system:masters"}, []string{"system:nodes"}
	tests := []struct {
		name       string
		orgs       []string // of the client certificate
		method     string
		path       string
		port       string
		skip       error  // why the case cannot run here
		wantTag    string // the echo server that answers
		wantErr    string // from ForwardPorts (the upgrade failed)
		wantStatus int    // of a plain request to path, with wantErr
		wantLog    []string
	}{
		{name: "echo from the pod's netns", orgs: masters, method: "POST", path: "/portForward/demo/web", port: "15000", wantTag: "web-netns:"},
		{name: "GET with the pod's uid", orgs: masters, method: "GET", path: "/portForward/demo/web/mlkt-uid-web", port: "15000", wantTag: "web-netns:"},
		{name: "listening on [::1] only", orgs: masters, method: "POST", path: "/portForward/demo/web", port: "15002", skip: v6err, wantTag: "web-netns-v6:"},
		{name: "hostNetwork pod: the node's netns", orgs: masters, method: "POST", path: "/portForward/demo/host", port: hostPort, wantTag: "node-netns:"},
		{name: "nothing listens on the port", orgs: masters, method: "POST", path: "/portForward/demo/web", port: "15001",
			wantLog: []string{"pod demo/web: dial 127.0.0.1:15001 in its network namespace: connection refused"}},
		{name: "unknown pod", orgs: masters, method: "POST", path: "/portForward/demo/nope", port: "15000",
			wantErr: "pod demo/nope does not run on node mlkt-node", wantStatus: http.StatusNotFound},
		{name: "another uid", orgs: masters, method: "POST", path: "/portForward/demo/web/mlkt-uid-old", port: "15000",
			wantErr: "pod demo/web with uid mlkt-uid-old does not run on node mlkt-node", wantStatus: http.StatusNotFound},
		{name: "client not in system:masters", orgs: nodes, method: "POST", path: "/portForward/demo/web", port: "15000",
			wantErr: "forbidden", wantStatus: http.StatusForbidden},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.skip != nil {
				t.Skipf("cannot listen on [::1] in a new netns: %v", tt.skip)
			}
			cfg := pki.clientConfig(t, "https://"+addr.String(), tt.orgs)
			u, err := url.Parse(cfg.Host + tt.path)
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantErr != "" {
				tlsCfg, err := rest.TLSConfigFor(cfg)
				if err != nil {
					t.Fatal(err)
				}
				tr := &http.Transport{TLSClientConfig: tlsCfg}
				req, _ := http.NewRequest(tt.method, u.String(), nil)
				resp, err := tr.RoundTrip(req)
				if err != nil {
					t.Fatal(err)
				}
				body, _ := io.ReadAll(resp.Body)
				resp.Body.Close()
				tr.CloseIdleConnections()
				if resp.StatusCode != tt.wantStatus {
					t.Errorf("%s %s = %d %q; want %d", tt.method, tt.path, resp.StatusCode, body, tt.wantStatus)
				}
			}

			fw := startForward(t, cfg, tt.method, u, tt.port)
			if tt.wantErr != "" {
				err := fw.wait(5 * time.Second)
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("port-forward error = %v; want one with %q", err, tt.wantErr)
				}
				return
			}
			if fw.local == "" {
				t.Fatalf("port-forward did not start: %v", fw.wait(time.Second))
			}
			if tt.wantTag != "" {
				// Two connections over the one upgraded connection; the
				// second half-closes and reads to the end.
				for i, halfClose := range []bool{false, true} {
					msg := fmt.Sprintf("hello %d from %s\n", i, t.Name())
					got, err := exchange(fw.local, msg, halfClose)
					if want := tt.wantTag + msg; got != want || err != nil {
						t.Errorf("connection %d: got %q, %v; want %q", i, got, err, want)
					}
				}
				fw.stop()
				if err := fw.wait(5 * time.Second); err != nil {
					t.Errorf("port-forward ended with %v; want nil after stop", err)
				}
				return
			}
			// The server refuses the forwarded connection: the local one
			// ends without data, the forwarder logs why and gives up.
			got, _ := exchange(fw.local, "hello\n", false)
			if got != "" {
				t.Errorf("read %q from a forward to a port nothing listens on", got)
			}
			err = fw.wait(10 * time.Second)
			if !errors.Is(err, portforward.ErrLostConnectionToPod) {
				t.Errorf("port-forward ended with %v; want %v", err, portforward.ErrLostConnectionToPod)
			}
			logs := fw.logs.String()
			for _, want := range tt.wantLog {
				if !strings.Contains(logs, want) {
					t.Errorf("port-forward log:\n%s\nwant %q", logs, want)
				}
			}
		})
	}
	// Stopping the kubelet ends a forward in flight: the connection taken
	// over from the HTTP server and the one in the pod are closed.
	t.Run("kubelet stop ends a forward in flight", func(t *testing.T) {
		cfg := pki.clientConfig(t, "https://"+addr.String(), masters)
		u, _ := url.Parse(cfg.Host + "/portForward/demo/web")
		fw := startForward(t, cfg, "POST", u, "15000")
		if fw.local == "" {
			t.Fatalf("port-forward did not start: %v", fw.wait(time.Second))
		}
		c, err := net.DialTimeout("tcp", fw.local, 5*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(10 * time.Second))
		want := "web-netns:in flight\n"
		got := make([]byte, len(want))
		if _, err := io.WriteString(c, "in flight\n"); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(c, got); err != nil || string(got) != want {
			t.Fatalf("read %q, %v; want %q", got, err, want)
		}
		cancel()
		if n, err := c.Read(got); err == nil {
			t.Errorf("read %q after the kubelet stopped; want the connection to end", got[:n])
		}
		if err := fw.wait(10 * time.Second); !errors.Is(err, portforward.ErrLostConnectionToPod) {
			t.Errorf("port-forward ended with %v; want %v", err, portforward.ErrLostConnectionToPod)
		}
		waitGroupOrFail(t, &k.wg, 10*time.Second, "kubelet API goroutines and forwards after stop")
	})
}

// testPKI is a CA with a serving certificate for 127.0.0.1, and client
// certificates it signs on demand.
type testPKI struct {
	ca                              *x509.Certificate
	caKey                           *ecdsa.PrivateKey
	caPEM                           []byte
	caFile, servingCert, servingKey string
}

func newTestPKI(t *testing.T, dir string) *testPKI {
	t.Helper()
	caKey := newKey(t)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "mlkt-test-ca"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign | x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, err := x509.ParseCertificate(der)
	if err != nil {
		t.Fatal(err)
	}
	p := &testPKI{ca: ca, caKey: caKey, caPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		caFile: filepath.Join(dir, "ca.crt"), servingCert: filepath.Join(dir, "kubelet.crt"), servingKey: filepath.Join(dir, "kubelet.key")}
	cert, key := p.sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "mlkt-node"}, IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}})
	for f, b := range map[string][]byte{p.caFile: p.caPEM, p.servingCert: cert, p.servingKey: key} {
		if err := os.WriteFile(f, b, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	return p
}

func newKey(t *testing.T) *ecdsa.PrivateKey {
	t.Helper()
	k, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	return k
}

// sign issues tmpl from the CA with a new key; both PEM.
func (p *testPKI) sign(t *testing.T, tmpl *x509.Certificate) (cert, key []byte) {
	t.Helper()
	k := newKey(t)
	serial, _ := rand.Int(rand.Reader, big.NewInt(1<<62))
	tmpl.SerialNumber = serial
	tmpl.NotBefore, tmpl.NotAfter = time.Now().Add(-time.Hour), time.Now().Add(time.Hour)
	tmpl.KeyUsage = x509.KeyUsageDigitalSignature
	der, err := x509.CreateCertificate(rand.Reader, tmpl, p.ca, &k.PublicKey, p.caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(k)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd})
}

// clientConfig is a client of host with a certificate in the groups orgs.
func (p *testPKI) clientConfig(t *testing.T, host string, orgs []string) *rest.Config {
	cert, key := p.sign(t, &x509.Certificate{Subject: pkix.Name{CommonName: "mlkt-client", Organization: orgs},
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth}})
	return &rest.Config{Host: host, Timeout: 10 * time.Second,
		TLSClientConfig: rest.TLSClientConfig{CAData: p.caPEM, CertData: cert, KeyData: key}}
}

// startTaggedEcho listens on addr inside netns ("" for where the test runs)
// and answers each connection with tag and then everything it reads; it
// returns the address. Cleanup closes the listener and every connection and
// waits for their goroutines.
func startTaggedEcho(t *testing.T, netns, addr, tag string) string {
	t.Helper()
	a, err := startTaggedEchoErr(t, netns, addr, tag)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func startTaggedEchoErr(t *testing.T, netns, addr, tag string) (string, error) {
	var l net.Listener
	if err := inNetns(netns, func() error {
		var err error
		l, err = net.Listen("tcp", addr)
		return err
	}); err != nil {
		return "", err
	}
	var (
		wg    sync.WaitGroup
		mu    sync.Mutex
		conns = map[net.Conn]bool{}
	)
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			mu.Lock()
			conns[c] = true
			mu.Unlock()
			wg.Add(1)
			go func() {
				defer wg.Done()
				defer func() { mu.Lock(); delete(conns, c); mu.Unlock(); c.Close() }()
				if _, err := io.WriteString(c, tag); err == nil {
					io.Copy(c, c)
				}
			}()
		}
	}()
	t.Cleanup(func() {
		l.Close()
		mu.Lock()
		for c := range conns {
			c.Close()
		}
		mu.Unlock()
		wg.Wait()
	})
	return l.Addr().String(), nil
}

// forward is a running client-go port-forwarder.
type forward struct {
	local string // where it listens; "" when it did not start
	stop  func()
	done  chan error
	logs  *testutil.Buffer
}

// wait returns what ForwardPorts returned, or a timeout error.
func (f *forward) wait(d time.Duration) error {
	select {
	case err := <-f.done:
		f.done <- err // for a later wait
		return err
	case <-time.After(d):
		return fmt.Errorf("port-forward still running after %v", d)
	}
}

// startForward forwards a local port on 127.0.0.1 to port of the pod at u,
// as kubectl port-forward does through the API server. Cleanup stops it and
// waits for it.
func startForward(t *testing.T, cfg *rest.Config, method string, u *url.URL, port string) *forward {
	t.Helper()
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		t.Fatal(err)
	}
	dialer := spdy.NewDialer(upgrader, &http.Client{Transport: rt}, method, u)
	logs := &testutil.Buffer{}
	ctx, cancel := context.WithCancel(logr.NewContext(context.Background(), funcr.New(func(prefix, args string) {
		logs.WriteString(prefix + " " + args + "\n")
	}, funcr.Options{})))
	ready := make(chan struct{})
	pf, err := portforward.NewOnAddressesWithContext(ctx, dialer, []string{"127.0.0.1"}, []string{"0:" + port}, ready, io.Discard, logs)
	if err != nil {
		cancel()
		t.Fatal(err)
	}
	f := &forward{stop: cancel, done: make(chan error, 1), logs: logs}
	go func() { f.done <- pf.ForwardPorts() }()
	t.Cleanup(func() {
		cancel()
		if err := f.wait(10 * time.Second); err != nil && strings.Contains(err.Error(), "still running") {
			t.Error(err)
		}
	})
	select {
	case <-ready:
		ports, err := pf.GetPorts()
		if err != nil {
			t.Fatal(err)
		}
		f.local = net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local)))
	case err := <-f.done:
		f.done <- err
	case <-time.After(10 * time.Second):
		t.Fatal("port-forward not ready after 10s")
	}
	return f
}

// exchange connects to addr, sends msg (then, with halfClose, ends its
// side) and reads what comes back: len(answer) bytes at most, or to the end.
func exchange(addr, msg string, halfClose bool) (string, error) {
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		return "", err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.WriteString(c, msg); err != nil {
		return "", err
	}
	if halfClose {
		c.(*net.TCPConn).CloseWrite()
		b, err := io.ReadAll(c)
		return string(b), err
	}
	var got bytes.Buffer
	buf := make([]byte, 4096)
	for {
		n, err := c.Read(buf)
		got.Write(buf[:n])
		if err != nil || strings.HasSuffix(got.String(), msg) {
			if errors.Is(err, io.EOF) {
				err = nil
			}
			return got.String(), err
		}
	}
}

// waitGroupOrFail waits for wg, failing t after d.
func waitGroupOrFail(t *testing.T, wg *sync.WaitGroup, d time.Duration, what string) {
	t.Helper()
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(d):
		t.Errorf("%s: still running after %v", what, d)
	}
}
