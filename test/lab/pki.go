package lab

import (
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/rsa"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// certValidity is how long lab certificates last; a lab is short-lived.
const certValidity = 365 * 24 * time.Hour

// ca is the lab certificate authority.
type ca struct {
	cert *x509.Certificate
	key  crypto.Signer
}

// certSpec is one leaf certificate to issue.
type certSpec struct {
	Name   string   // file base name in .lab/pki: <name>.crt and <name>.key
	CN     string   // subject common name (the user for client certs)
	Orgs   []string // subject organizations (the groups for client certs)
	DNS    []string // DNS SANs (server certs)
	IPs    []string // IP SANs (server certs)
	Server bool     // serverAuth usage instead of clientAuth
}

// ensurePKI creates the lab CA, the control-plane certificates and the
// service-account key pair in .lab/pki when missing; existing files are kept so
// a restarted lab keeps its credentials.
func ensurePKI(l Layout, nodes int) error {
	dir := l.Path("pki")
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create pki dir: %w", err)
	}
	c, err := loadOrCreateCA(dir)
	if err != nil {
		return err
	}
	specs := []certSpec{
		{Name: "apiserver", CN: "kube-apiserver", Server: true,
			DNS: []string{"kubernetes", "kubernetes.default", "kubernetes.default.svc", "kubernetes.default.svc." + ClusterDomain, "localhost"},
			IPs: []string{BridgeIP, KubernetesSvc, "127.0.0.1"}},
		{Name: "apiserver-kubelet-client", CN: "kube-apiserver-kubelet-client", Orgs: []string{"system:masters"}},
		{Name: "admin", CN: "lab-admin", Orgs: []string{"system:masters"}},
		{Name: "controller-manager", CN: "system:kube-controller-manager"},
		{Name: "scheduler", CN: "system:kube-scheduler"},
		{Name: "kube-proxy", CN: "system:kube-proxy"},
	}
	for i := 1; i <= nodes; i++ {
		n := NodeName(i)
		specs = append(specs, certSpec{Name: "node-" + n, CN: "system:node:" + n, Orgs: []string{"system:nodes"}},
			certSpec{Name: "kubelet-" + n, CN: n, Server: true, DNS: []string{n}, IPs: []string{NodeIP(i)}})
	}
	for _, s := range specs {
		if exists(filepath.Join(dir, s.Name+".crt")) && exists(filepath.Join(dir, s.Name+".key")) {
			continue
		}
		if err := c.issue(dir, s); err != nil {
			return err
		}
	}
	if !exists(filepath.Join(dir, "sa.key")) {
		k, err := rsa.GenerateKey(rand.Reader, 2048)
		if err != nil {
			return fmt.Errorf("generate service-account key: %w", err)
		}
		if err := writeKey(filepath.Join(dir, "sa.key"), k); err != nil {
			return err
		}
		pub, err := x509.MarshalPKIXPublicKey(&k.PublicKey)
		if err != nil {
			return fmt.Errorf("marshal service-account public key: %w", err)
		}
		if err := writePEM(filepath.Join(dir, "sa.pub"), "PUBLIC KEY", pub, 0o644); err != nil {
			return err
		}
	}
	return nil
}

func loadOrCreateCA(dir string) (*ca, error) {
	crtPath, keyPath := filepath.Join(dir, "ca.crt"), filepath.Join(dir, "ca.key")
	if exists(crtPath) && exists(keyPath) {
		cert, err := readCert(crtPath)
		if err != nil {
			return nil, err
		}
		key, err := readKey(keyPath)
		if err != nil {
			return nil, err
		}
		return &ca{cert: cert, key: key}, nil
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "meshlet-lab-ca", Organization: []string{"meshlet lab"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, fmt.Errorf("parse CA certificate: %w", err)
	}
	if err := writeKey(keyPath, key); err != nil {
		return nil, err
	}
	if err := writePEM(crtPath, "CERTIFICATE", der, 0o644); err != nil {
		return nil, err
	}
	return &ca{cert: cert, key: key}, nil
}

func (c *ca) issue(dir string, s certSpec) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return fmt.Errorf("generate %s key: %w", s.Name, err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: s.CN, Organization: s.Orgs},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature | x509.KeyUsageKeyEncipherment,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
		DNSNames:     s.DNS,
	}
	if s.Server {
		tmpl.ExtKeyUsage = []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}
	}
	for _, ip := range s.IPs {
		tmpl.IPAddresses = append(tmpl.IPAddresses, net.ParseIP(ip))
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, c.cert, &key.PublicKey, c.key)
	if err != nil {
		return fmt.Errorf("issue %s certificate: %w", s.Name, err)
	}
	if err := writeKey(filepath.Join(dir, s.Name+".key"), key); err != nil {
		return err
	}
	return writePEM(filepath.Join(dir, s.Name+".crt"), "CERTIFICATE", der, 0o644)
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		panic(fmt.Sprintf("read random serial: %v", err))
	}
	return n
}

func writeKey(path string, key crypto.Signer) error {
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return fmt.Errorf("marshal key %s: %w", path, err)
	}
	return writePEM(path, "PRIVATE KEY", der, 0o600)
}

func writePEM(path, typ string, der []byte, mode os.FileMode) error {
	b := pem.EncodeToMemory(&pem.Block{Type: typ, Bytes: der})
	if err := os.WriteFile(path, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("read %s: no PEM block; delete .lab/pki to regenerate", path)
	}
	cert, err := x509.ParseCertificate(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	return cert, nil
}

func readKey(path string) (crypto.Signer, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	blk, _ := pem.Decode(b)
	if blk == nil {
		return nil, fmt.Errorf("read %s: no PEM block; delete .lab/pki to regenerate", path)
	}
	k, err := x509.ParsePKCS8PrivateKey(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	s, ok := k.(crypto.Signer)
	if !ok {
		return nil, errors.New("parse " + path + ": not a signing key")
	}
	return s, nil
}

func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// writeKubeconfig writes a kubeconfig for the client cert <name> in .lab/pki.
func writeKubeconfig(l Layout, path, name, user string) error {
	server := fmt.Sprintf("https://%s:%d", BridgeIP, APIPort)
	text := fmt.Sprintf(`apiVersion: v1
kind: Config
clusters:
- name: lab
  cluster:
    server: %s
    certificate-authority: %s
users:
- name: %s
  user:
    client-certificate: %s
    client-key: %s
contexts:
- name: lab
  context:
    cluster: lab
    user: %s
current-context: lab
`, server, l.PKI("ca.crt"), user, l.PKI(name+".crt"), l.PKI(name+".key"), user)
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create dir for %s: %w", path, err)
	}
	if err := os.WriteFile(path, []byte(text), 0o600); err != nil {
		return fmt.Errorf("write kubeconfig %s: %w", path, err)
	}
	return nil
}
