package lab

import (
	"crypto/tls"
	"crypto/x509"
	"io"
	"os"
	"path/filepath"
	"testing"
)

func TestPKIHandshakeAndIdentities(t *testing.T) {
	l := Layout{Dir: filepath.Join(t.TempDir(), ".lab")}
	if err := ensurePKI(l, 2); err != nil {
		t.Fatal(err)
	}
	caPEM, err := os.ReadFile(l.PKI("ca.crt"))
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("ca.crt holds no certificate")
	}
	server, err := tls.LoadX509KeyPair(l.PKI("apiserver.crt"), l.PKI("apiserver.key"))
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{
		Certificates: []tls.Certificate{server},
		ClientCAs:    pool,
		ClientAuth:   tls.RequireAndVerifyClientCert,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	peers := make(chan *x509.Certificate, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			tc := c.(*tls.Conn)
			if tc.Handshake() == nil {
				peers <- tc.ConnectionState().PeerCertificates[0]
			} else {
				peers <- nil
			}
			_, _ = io.WriteString(c, "ok")
			c.Close()
		}
	}()

	tests := []struct {
		name       string // test case
		client     string // client cert name in .lab/pki
		serverName string // name the client verifies
		wantCN     string // subject the server sees
		wantOrg    string // group the server sees, "" for none
	}{
		{"admin by service DNS name", "admin", "kubernetes.default.svc", "lab-admin", "system:masters"},
		{"admin by cluster domain name", "admin", "kubernetes.default.svc.cluster.local", "lab-admin", "system:masters"},
		{"node 1", "node-lab-node-1", "kubernetes", "system:node:lab-node-1", "system:nodes"},
		{"node 2", "node-lab-node-2", "kubernetes", "system:node:lab-node-2", "system:nodes"},
		{"kube-proxy", "kube-proxy", "kubernetes", "system:kube-proxy", ""},
		{"scheduler", "scheduler", "kubernetes", "system:kube-scheduler", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			cert, err := tls.LoadX509KeyPair(l.PKI(tt.client+".crt"), l.PKI(tt.client+".key"))
			if err != nil {
				t.Fatal(err)
			}
			c, err := tls.Dial("tcp", ln.Addr().String(), &tls.Config{RootCAs: pool, ServerName: tt.serverName, Certificates: []tls.Certificate{cert}})
			if err != nil {
				t.Fatalf("handshake: %v", err)
			}
			_, _ = io.ReadAll(c)
			c.Close()
			peer := <-peers
			if peer == nil {
				t.Fatal("server rejected the client certificate")
			}
			if peer.Subject.CommonName != tt.wantCN {
				t.Errorf("server saw CN %q, want %q", peer.Subject.CommonName, tt.wantCN)
			}
			if tt.wantOrg != "" && (len(peer.Subject.Organization) != 1 || peer.Subject.Organization[0] != tt.wantOrg) {
				t.Errorf("server saw O %v, want %q", peer.Subject.Organization, tt.wantOrg)
			}
		})
	}

	leaf, err := x509.ParseCertificate(server.Certificate[0])
	if err != nil {
		t.Fatal(err)
	}
	for _, ip := range []string{BridgeIP, KubernetesSvc, "127.0.0.1"} {
		if err := leaf.VerifyHostname(ip); err != nil {
			t.Errorf("apiserver cert does not cover %s: %v", ip, err)
		}
	}
	if err := leaf.VerifyHostname("example.com"); err == nil {
		t.Error("apiserver cert covers example.com")
	}

	// A second run keeps the existing credentials.
	before, _ := os.ReadFile(l.PKI("admin.crt"))
	if err := ensurePKI(l, 2); err != nil {
		t.Fatal(err)
	}
	after, _ := os.ReadFile(l.PKI("admin.crt"))
	if string(before) != string(after) {
		t.Error("ensurePKI reissued an existing certificate")
	}
	fi, err := os.Stat(l.PKI("ca.key"))
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode().Perm() != 0o600 {
		t.Errorf("ca.key mode %v, want 0600", fi.Mode().Perm())
	}
}
