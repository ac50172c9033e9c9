package meshtest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// TestDNSProxy: an enrolled pod's DNS goes through the node agent's DNS
// proxy — cluster names still resolve (forwarded to CoreDNS), a ServiceEntry
// host that CoreDNS does not know resolves to the entry's address, and the
// kernel metrics count the captured queries; asked over TCP the host resolves
// the same (the pod's TCP connection to port 53 goes to the DNS proxy); a
// pod outside the mesh cannot resolve that host, so the answer came from the
// mesh. A ServiceEntry exported only to its own namespace (exportTo: ["."])
// resolves there and not in another mesh namespace, where one exported
// everywhere does.
func TestDNSProxy(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	host := "api." + ns + ".partner.example"
	private := "private." + ns + ".partner.example"
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: partner}
spec:
  hosts: [%s]
  addresses: [198.19.200.10]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 198.19.200.11}]
---
apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: private}
spec:
  hosts: [%s]
  addresses: [198.19.200.20]
  ports: [{number: 443, name: https, protocol: TLS}]
  resolution: STATIC
  endpoints: [{address: 198.19.200.21}]
  exportTo: ["."]
`, host, private))
	c := clientPod(t, lb, ns, "resolver", "resolver")
	metrics := "http://" + c.Status.HostIP + ":15020/metrics"
	captured0 := sumMetric(t, metrics, "meshlet_kernel_redirect_decisions_total", `decision="captured_dns"`, fmt.Sprintf(`namespace=%q`, ns))

	getent := func(ns, pod, name string) (string, error) {
		return lb.ExecInPod(ns, pod, "/usr/bin/getent", "ahostsv4", name)
	}
	out, err := getent(ns, c.Name, "kubernetes.default.svc.cluster.local")
	if err != nil || !strings.Contains(out, "198.18.128.1") {
		t.Fatalf("enrolled pod resolving kubernetes.default: %v %q; want 198.18.128.1 through the proxy", err, out)
	}
	lab.WaitFor(t, 30*time.Second, "the ServiceEntry host resolves in the enrolled pod", func() (bool, error) {
		out, err := getent(ns, c.Name, host)
		return err == nil && strings.Contains(out, "198.19.200.10"), fmt.Errorf("%v %q", err, out)
	})
	if d := sumMetric(t, metrics, "meshlet_kernel_redirect_decisions_total", `decision="captured_dns"`, fmt.Sprintf(`namespace=%q`, ns)) - captured0; d < 2 {
		t.Errorf("captured DNS queries moved by %v; want at least the 2 lookups", d)
	}
	// Over TCP too (glibc's use-vc option, as dig +tcp or a resolver
	// retrying over TCP): the cluster DNS does not know the host, so only
	// the pod's DNS proxy answers it.
	if out, err := lb.ExecInPod(ns, c.Name, "/usr/bin/env", "RES_OPTIONS=use-vc", "/usr/bin/getent", "ahostsv4", host); err != nil || !strings.Contains(out, "198.19.200.10") {
		t.Errorf("the ServiceEntry host asked over TCP: %v %q; want 198.19.200.10 from the DNS proxy", err, out)
	}
	if out, err := lb.ExecInPod(ns, c.Name, "/usr/bin/env", "RES_OPTIONS=use-vc", "/usr/bin/getent", "ahostsv4", "kubernetes.default.svc.cluster.local"); err != nil || !strings.Contains(out, "198.18.128.1") {
		t.Errorf("kubernetes.default asked over TCP: %v %q; want 198.18.128.1", err, out)
	}

	lab.WaitFor(t, 30*time.Second, "the ServiceEntry exported to its own namespace resolves there", func() (bool, error) {
		out, err := getent(ns, c.Name, private)
		return err == nil && strings.Contains(out, "198.19.200.20"), fmt.Errorf("%v %q", err, out)
	})
	other := ambientNamespace(t, lb)
	neighbour := clientPod(t, lb, other, "neighbour", "neighbour")
	lab.WaitFor(t, 30*time.Second, "the ServiceEntry exported everywhere resolves in another mesh namespace", func() (bool, error) {
		out, err := getent(other, neighbour.Name, host)
		return err == nil && strings.Contains(out, "198.19.200.10"), fmt.Errorf("%v %q", err, out)
	})
	if out, err := getent(other, neighbour.Name, private); err == nil {
		t.Errorf("a pod of another mesh namespace resolved %s (%q); its ServiceEntry is exported only to %s", private, out, ns)
	}

	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")
	if out, err := getent(plain, outsider.Name, host); err == nil {
		t.Errorf("a pod outside the mesh resolved %s (%q): the cluster DNS knows it, so the test proves nothing", host, out)
	}
	if out, err := lb.ExecInPod(plain, outsider.Name, "/usr/bin/env", "RES_OPTIONS=use-vc", "/usr/bin/getent", "ahostsv4", host); err == nil {
		t.Errorf("a pod outside the mesh resolved %s over TCP (%q): the cluster DNS knows it, so the TCP check proves nothing", host, out)
	}
}

// TestServiceEntryStaticEndpoint: an enrolled pod reaches a ServiceEntry
// host — resolved by the mesh's DNS proxy to the entry's address, which
// nothing serves — at the entry's static endpoint, an echo server outside
// the mesh, on the endpoint's own port; the source node agent counts the
// connection under the entry's host, without mutual TLS (the endpoint is
// not in the mesh).
func TestServiceEntryStaticEndpoint(t *testing.T) {
	lb := meshLab(t)
	plain := lb.NewNamespace(t)
	backend, _ := echoServer(t, lb, plain)
	ns := ambientNamespace(t, lb)
	host := "legacy." + ns + ".partner.example"
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy}
spec:
  hosts: [%s]
  addresses: [198.19.201.10]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: STATIC
  endpoints: [{address: %s, ports: {http: 8080}}]
`, host, backend.Status.PodIP))
	c := clientPod(t, lb, ns, "caller", "caller")
	metrics := "http://" + c.Status.HostIP + ":15020/metrics"
	counted := func() float64 { return plaintextConnections(t, metrics, ns, host) }
	before := counted()
	waitAnswered(t, lb, ns, c.Name, "http://"+host+"/", true, "the ServiceEntry host answered by its static endpoint")
	if d := counted() - before; d < 1 {
		t.Errorf("source agent's connections to %s (no mutual TLS) moved by %v; want at least 1", host, d)
	}
}

// TestServiceEntryDNSEndpoint: an enrolled pod reaches a ServiceEntry host
// whose endpoint is a hostname (resolution DNS): the entry's address is
// served by nothing, so the answer shows the source node agent resolved the
// endpoint's name (a Service of a namespace outside the mesh, through the
// cluster DNS) and sent the connection there; the agent counts it under the
// entry's host, without mutual TLS.
func TestServiceEntryDNSEndpoint(t *testing.T) {
	lb := meshLab(t)
	plain := lb.NewNamespace(t)
	echoServer(t, lb, plain)
	ns := ambientNamespace(t, lb)
	host := "legacy-dns." + ns + ".partner.example"
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: legacy-dns}
spec:
  hosts: [%s]
  addresses: [198.19.201.11]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: echo.%s.svc.cluster.local, ports: {http: 8080}}]
`, host, plain))
	c := clientPod(t, lb, ns, "caller", "caller")
	metrics := "http://" + c.Status.HostIP + ":15020/metrics"
	counted := func() float64 { return plaintextConnections(t, metrics, ns, host) }
	before := counted()
	waitAnswered(t, lb, ns, c.Name, "http://"+host+"/", true, "the ServiceEntry host answered by its endpoint found through DNS")
	if d := counted() - before; d < 1 {
		t.Errorf("source agent's connections to %s (no mutual TLS) moved by %v; want at least 1", host, d)
	}
}

// plaintextConnections is what a source node agent counts of connections
// from namespace ns to service host without mutual TLS.
func plaintextConnections(t *testing.T, metrics, ns, host string) float64 {
	t.Helper()
	return sumMetric(t, metrics, "istio_tcp_connections_opened_total", `reporter="source"`,
		fmt.Sprintf(`source_workload_namespace=%q`, ns), fmt.Sprintf(`destination_service=%q`, host),
		`connection_security_policy="none"`)
}

// TestServiceEntryAutoAllocatedAddress: a ServiceEntry with resolution DNS
// and no addresses (the usual way to declare an external API) gets an
// address from meshd (240.240.0.0/16, Istio's automatic allocation), which
// the mesh's DNS proxy answers for its host; an enrolled pod's request to
// the host then reaches what the entry's endpoint resolves to, and the
// source node agent counts it under the entry's host.
func TestServiceEntryAutoAllocatedAddress(t *testing.T) {
	lb := meshLab(t)
	plain := lb.NewNamespace(t)
	echoServer(t, lb, plain)
	ns := ambientNamespace(t, lb)
	host := "auto." + ns + ".partner.example"
	entry := func(spec string) string { // spec: more fields, indented
		return fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: ServiceEntry
metadata: {name: auto}
spec:
  hosts: [%s]
  ports: [{number: 80, name: http, protocol: HTTP}]
  resolution: DNS
  endpoints: [{address: echo.%s.svc.cluster.local, ports: {http: 8080}}]
%s`, host, plain, spec)
	}
	lb.Apply(t, ns, entry(""))
	c := clientPod(t, lb, ns, "caller", "caller")
	var answered string
	lab.WaitFor(t, 30*time.Second, "the host resolves to an allocated address in the enrolled pod", func() (bool, error) {
		out, err := lb.ExecInPod(ns, c.Name, "/usr/bin/getent", "ahostsv4", host)
		answered, _, _ = strings.Cut(strings.TrimSpace(out), " ")
		return err == nil && strings.HasPrefix(answered, "240.240."), fmt.Errorf("%v %q", err, out)
	})
	// As with Istio, the entry's status says which address its host got.
	want := fmt.Sprintf(`[{"host":%q,"value":%q}]`, host, answered)
	lab.WaitFor(t, 30*time.Second, "the allocated address in the ServiceEntry's status", func() (bool, error) {
		out, err := lb.Kubectl("-n", ns, "get", "serviceentry", "auto", "-o", "jsonpath={.status.addresses}")
		return err == nil && strings.TrimSpace(out) == want, fmt.Errorf("status.addresses %q (%v); want %s", out, err, want)
	})
	metrics := "http://" + c.Status.HostIP + ":15020/metrics"
	before := plaintextConnections(t, metrics, ns, host)
	waitAnswered(t, lb, ns, c.Name, "http://"+host+"/", true, "the host answered through its allocated address")
	if d := plaintextConnections(t, metrics, ns, host) - before; d < 1 {
		t.Errorf("source agent's connections to %s moved by %v; want at least 1", host, d)
	}

	// An address of its own replaces the allocated one, in the status too.
	lb.Apply(t, ns, entry("  addresses: [198.19.250.1]\n"))
	lab.WaitFor(t, 30*time.Second, "the allocated address gone from the status", func() (bool, error) {
		out, err := lb.Kubectl("-n", ns, "get", "serviceentry", "auto", "-o", "jsonpath={.status.addresses}")
		o := strings.TrimSpace(out)
		return err == nil && (o == "" || o == "[]"), fmt.Errorf("status.addresses %q (%v); want none", out, err)
	})
}
