package meshtest

import (
	"bytes"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// capture records TCP traffic on ports 8080 and 15008 on the lab bridge
// (every packet between nodes crosses it) until stop is called, bounded to
// two minutes and 20000 packets; stop returns the pcap file's bytes.
func capture(t *testing.T) (stop func() []byte) {
	t.Helper()
	path := filepath.Join(t.TempDir(), "mlab0.pcap")
	cmd := exec.Command("timeout", "120", "tcpdump", "-i", lab.BridgeName, "-n", "-U", "-s", "0", "-c", "20000", "-w", path, "tcp port 8080 or tcp port 15008")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatalf("start tcpdump: %v", err)
	}
	// tcpdump says "listening on" once the capture is armed.
	deadline := time.Now().Add(10 * time.Second)
	for !strings.Contains(stderr.String(), "listening on") && time.Now().Before(deadline) {
		time.Sleep(50 * time.Millisecond)
	}
	stopped := false
	stop = func() []byte {
		if !stopped {
			stopped = true
			_ = cmd.Process.Signal(syscall.SIGINT)
			_ = cmd.Wait()
		}
		b, err := os.ReadFile(path)
		if err != nil {
			t.Fatalf("read capture: %v (tcpdump: %s)", err, stderr.String())
		}
		return b
	}
	t.Cleanup(func() { stop() })
	return stop
}

func marker() string {
	b := make([]byte, 12)
	_, _ = rand.Read(b)
	return "meshlet-marker-" + hex.EncodeToString(b)
}

// podOn runs an echo server pod pinned to node, as service account sa.
func podOn(t *testing.T, lb *lab.Lab, ns, name, sa, node string) corev1.Pod {
	t.Helper()
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: %[2]s}
---
apiVersion: v1
kind: Pod
metadata: {name: %[1]s, labels: {role: wire-%[1]s}}
spec:
  serviceAccountName: %[2]s
  nodeName: %[3]s
  containers:
  - name: echo
    image: meshlet.dev/echo:latest
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`, name, sa, node))
	return lb.WaitPodsReady(t, ns, "role=wire-"+name, 1, 2*time.Minute)[0]
}

// TestMutualTLSOnTheWire: traffic between enrolled pods on two nodes is TLS
// on the wire — a capture on the link between the nodes shows HBONE on
// 15008 and never the request's plaintext — and the destination presents
// the SPIFFE identity of its service account; the same request between two
// pods outside the mesh is seen in the clear, so the capture would have
// caught it.
func TestMutualTLSOnTheWire(t *testing.T) {
	lb := meshLab(t)
	nodes, err := lb.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		t.Fatalf("want two nodes: %v", err)
	}
	n1, n2 := nodes.Items[0].Name, nodes.Items[1].Name
	mesh := ambientNamespace(t, lb)
	plain := lb.NewNamespace(t)
	meshServer := podOn(t, lb, mesh, "server", "wire-server", n2)
	meshClient := podOn(t, lb, mesh, "client", "wire-client", n1)
	plainServer := podOn(t, lb, plain, "server", "wire-server", n2)
	plainClient := podOn(t, lb, plain, "client", "wire-client", n1)

	waitTunnelled(t, lb, mesh, meshClient, fmt.Sprintf("http://%s:8080/", meshServer.Status.PodIP), mesh)

	secret, clear := marker(), marker()
	stop := capture(t)
	url := fmt.Sprintf("http://%s:8080/%s", meshServer.Status.PodIP, secret)
	if ok, out := request(t, lb, mesh, meshClient.Name, url); !ok {
		t.Fatalf("mesh pod to mesh pod across nodes: %s", out)
	}
	if ok, out := request(t, lb, plain, plainClient.Name, fmt.Sprintf("http://%s:8080/%s", plainServer.Status.PodIP, clear)); !ok {
		t.Fatalf("plain pod to plain pod across nodes: %s", out)
	}
	time.Sleep(time.Second) // let the last packets reach the capture
	pcap := stop()
	if bytes.Contains(pcap, []byte(secret)) {
		t.Errorf("the mesh request's path %s crossed the node link in plaintext", secret)
	}
	if !bytes.Contains(pcap, []byte(clear)) {
		t.Fatalf("the capture did not see the plain request %s either: it proves nothing", clear)
	}
	if n := packetsOnPort(t, pcap, 15008); n == 0 {
		t.Errorf("no packet on port 15008 in the capture: the mesh traffic did not take the HBONE tunnel")
	}

	// The destination's HBONE port presents its workload identity.
	var leaf *x509.Certificate
	conn, err := tls.DialWithDialer(&net.Dialer{Timeout: 5 * time.Second}, "tcp", net.JoinHostPort(meshServer.Status.PodIP, "15008"), &tls.Config{
		InsecureSkipVerify: true, // the chain is checked below; we only read what it presents
		NextProtos:         []string{"h2"},
		VerifyPeerCertificate: func(raw [][]byte, _ [][]*x509.Certificate) error {
			c, err := x509.ParseCertificate(raw[0])
			leaf = c
			return err
		},
	})
	if conn != nil {
		conn.Close()
	}
	if leaf == nil {
		t.Fatalf("no certificate from %s:15008: %v", meshServer.Status.PodIP, err)
	}
	want := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/wire-server", mesh)
	if len(leaf.URIs) != 1 || leaf.URIs[0].String() != want {
		t.Errorf("15008 of %s presents URI SANs %v; want exactly [%s]", meshServer.Name, leaf.URIs, want)
	}
}

// packetsOnPort counts the IPv4 TCP packets of a pcap (Ethernet link type)
// whose source or destination port is port.
func packetsOnPort(t *testing.T, pcap []byte, port uint16) int {
	t.Helper()
	if len(pcap) < 24 {
		t.Fatalf("capture of %d bytes: no pcap header", len(pcap))
	}
	var le bool
	switch binary.BigEndian.Uint32(pcap[:4]) {
	case 0xa1b2c3d4, 0xa1b23c4d:
	case 0xd4c3b2a1, 0x4d3cb2a1:
		le = true
	default:
		t.Fatalf("not a pcap file")
	}
	u32 := func(b []byte) uint32 {
		if le {
			return binary.LittleEndian.Uint32(b)
		}
		return binary.BigEndian.Uint32(b)
	}
	n := 0
	for rec := pcap[24:]; len(rec) >= 16; {
		incl := int(u32(rec[8:12]))
		if len(rec) < 16+incl {
			break
		}
		pkt := rec[16 : 16+incl]
		rec = rec[16+incl:]
		if len(pkt) < 14+20 || binary.BigEndian.Uint16(pkt[12:14]) != 0x0800 {
			continue
		}
		ip := pkt[14:]
		ihl := int(ip[0]&0x0f) * 4
		if ip[9] != 6 || len(ip) < ihl+4 {
			continue
		}
		tcp := ip[ihl:]
		if binary.BigEndian.Uint16(tcp[0:2]) == port || binary.BigEndian.Uint16(tcp[2:4]) == port {
			n++
		}
	}
	return n
}
