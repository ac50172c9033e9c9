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
	"net/http"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// edgeGateway is a Gateway API Gateway of meshlet's ingress class, "edge",
// listening for HTTP on port 80.
const edgeGateway = `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: http, port: 80, protocol: HTTP}
`

// TestIngressGatewayAPI: a Gateway API Gateway of meshlet's ingress class
// makes meshd deploy an ingress gateway; an HTTPRoute bound to it by
// parentRefs exposes /api/v1/echo of a mesh Service to clients outside the
// mesh — a pod in a plain namespace through the gateway's Service, and the
// machine itself through a node port — while other paths get 404. The
// listener is on port 80: the gateway runs as a non-root user with no
// capability, and binds it through the pod's unprivileged-port sysctl. A
// second HTTP listener on port 80 with its own hostname serves its own
// route for that host, and an HTTPS listener on 443 terminates TLS with the
// certificate of its kubernetes.io/tls Secret, verified by the client; a TLS
// passthrough listener on the same port hands its host's connections,
// untouched, to a TLSRoute's backend, which has its own certificate; a TCP
// listener relays whole connections to a TCPRoute's backend. Another
// team's ListenerSet adds listeners, and the Gateway serves them while it
// admits the team's namespace. Istio's networking.istio.io/service-type
// annotation switches the Service between NodePort, ClusterIP and
// LoadBalancer, and a spec.addresses IP is asked of the Service, the
// Gateway not Programmed (AddressNotAssigned) while the lab, which has no
// load balancer controller, does not assign it.
func TestIngressGatewayAPI(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	const secureHost = "secure.example.com"
	certPEM, keyPEM, roots := servingCert(t, secureHost)
	if _, err := lb.Clientset().CoreV1().Secrets(ns).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "secure-cert"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	passBackend, passRoots := tlsBackend(t)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1)+passBackend+"---\n"+edgeGateway+`  - {name: http-other, port: 80, protocol: HTTP, hostname: other.example.com}
  - {name: https, port: 443, protocol: HTTPS, hostname: `+secureHost+`, tls: {certificateRefs: [{name: secure-cert}]}}
  - {name: tls-pass, port: 443, protocol: TLS, hostname: `+passHost+`, tls: {mode: Passthrough}}
  - {name: tcp, port: 9000, protocol: TCP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: TLSRoute
metadata: {name: echo-tls}
spec:
  parentRefs: [{name: edge, sectionName: tls-pass}]
  hostnames: [`+passHost+`]
  rules: [{backendRefs: [{name: echo-tls, port: 8443}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: TCPRoute
metadata: {name: echo-tcp}
spec:
  parentRefs: [{name: edge, sectionName: tcp}]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-api}
spec:
  parentRefs: [{name: edge, sectionName: http}, {name: edge, sectionName: https}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api/v1/echo}}]
    backendRefs: [{name: echo, port: 8080}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-other}
spec:
  parentRefs: [{name: edge, sectionName: http-other}]
  rules:
  - filters: [{type: RequestHeaderModifier, requestHeaderModifier: {set: [{name: x-listener, value: http-other}]}}]
    backendRefs: [{name: echo, port: 8080}]
`)
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "app=echo-tls", 1, 2*time.Minute)
	gwPod := lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=edge", 1, 3*time.Minute)[0]
	var svcIP string
	var nodePort, tlsNodePort, tcpNodePort int32
	lab.WaitFor(t, time.Minute, "the gateway's Service", func() (bool, error) {
		svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "edge", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range svc.Spec.Ports {
			switch p.Port {
			case 80:
				svcIP, nodePort = svc.Spec.ClusterIP, p.NodePort
			case 443:
				tlsNodePort = p.NodePort
			case 9000:
				tcpNodePort = p.NodePort
			}
		}
		return svcIP != "" && nodePort != 0 && tlsNodePort != 0 && tcpNodePort != 0, fmt.Errorf("no ports 80, 443 and 9000 with node ports yet")
	})
	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")
	lab.WaitFor(t, time.Minute, "the route through the gateway from a pod outside the mesh", func() (bool, error) {
		s := summary(t, lb, plain, outsider.Name, "-n", "3", fmt.Sprintf("http://%s/api/v1/echo/list", svcIP))
		return s.ByStatus["200"] == 3, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})
	if s := summary(t, lb, plain, outsider.Name, "-n", "1", fmt.Sprintf("http://%s/other", svcIP)); s.ByStatus["404"] != 1 {
		t.Errorf("a path no route matches: %v; want 404", s.ByStatus)
	}
	// The gateway counts them as Istio's gateways do: the source, itself.
	gwMetrics := "http://" + gwPod.Status.PodIP + ":15020/metrics"
	if n := sumMetric(t, gwMetrics, "istio_requests_total", `reporter="source"`, `source_workload="edge"`, fmt.Sprintf(`source_workload_namespace=%q`, ns),
		`response_code="200"`, fmt.Sprintf(`destination_service="echo.%s.svc.cluster.local"`, ns)); n < 3 {
		t.Errorf("the gateway reported %v requests to echo as their source; want at least the 3 answered", n)
	}
	// From the machine, through the node port on a node's address.
	url := fmt.Sprintf("http://%s:%d/api/v1/echo", lab.NodeIP(1), nodePort)
	client := &http.Client{Timeout: 5 * time.Second}
	lab.WaitFor(t, 30*time.Second, "the node port "+url, func() (bool, error) {
		resp, err := client.Get(url)
		if err != nil {
			return false, err
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return resp.StatusCode == 200 && strings.Contains(string(b), ns), fmt.Errorf("%s: %.200s", resp.Status, b)
	})
	// The second listener of port 80: its host gets its route (the
	// header its filter sets, seen by the app), the first's hosts do not.
	if code, body, _, err := fetch(client, url, "other.example.com"); err != nil || code != 200 || !strings.Contains(strings.ToLower(body), "x-listener") {
		t.Errorf("Host other.example.com on port 80: %d %.300s (%v); want its listener's route (x-listener set)", code, body, err)
	}
	if _, body, _, _ := fetch(client, url, ""); strings.Contains(strings.ToLower(body), "x-listener") {
		t.Errorf("a Host without a listener of its own got the other listener's route: %.300s", body)
	}
	// HTTPS on 443: the Secret's certificate, verified; one not trusted fails.
	tlsURL := fmt.Sprintf("https://%s:%d/api/v1/echo", lab.NodeIP(2), tlsNodePort)
	tlsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: secureHost}}}
	lab.WaitFor(t, 30*time.Second, "HTTPS through the node port "+tlsURL, func() (bool, error) {
		code, body, _, err := fetch(tlsClient, tlsURL, secureHost)
		return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
	})
	untrusted := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool(), ServerName: secureHost}}}
	if _, _, _, err := fetch(untrusted, tlsURL, secureHost); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("HTTPS with no trusted root: %v; want a certificate verification error", err)
	}
	// TLS passthrough on the same port, by SNI.
	wantPassthrough(t, tlsURL, passRoots)
	// TCP: whole connections to echo's HTTP port, any path answered by echo.
	tcpURL := fmt.Sprintf("http://%s:%d/any/path", lab.NodeIP(1), tcpNodePort)
	lab.WaitFor(t, 30*time.Second, "a TCPRoute's connections through "+tcpURL, func() (bool, error) {
		code, body, _, err := fetch(client, tcpURL, "")
		return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
	})
	// The listeners' and routes' status say they are served.
	lab.WaitFor(t, 30*time.Second, "every listener Programmed", func() (bool, error) {
		out, err := lb.Kubectl("-n", ns, "get", "gateway", "edge", "-o",
			`jsonpath={range .status.listeners[*]}{.name}={.conditions[?(@.type=="Programmed")].status} {end}`)
		return err == nil && out == "http=True http-other=True https=True tls-pass=True tcp=True ", fmt.Errorf("listeners %q (%v)", out, err)
	})
	for _, kind := range []string{"tlsroute/echo-tls", "tcproute/echo-tcp"} {
		lab.WaitFor(t, 30*time.Second, kind+" Accepted", func() (bool, error) {
			out, err := lb.Kubectl("-n", ns, "get", kind, "-o", `jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
			return err == nil && out == "True", fmt.Errorf("%q (%v)", out, err)
		})
	}

	// Client certificates (Gateway spec.tls.frontend, GEP-91): port 443's
	// HTTPS listener then serves only clients whose certificate chains to
	// the ConfigMap's CA; with AllowInsecureFallback, clients without one
	// too, and the Gateway says so in a condition.
	clientCert, clientKey, clientCA := issuedCert(t, "client.example.com", x509.ExtKeyUsageClientAuth)
	if _, err := lb.Clientset().CoreV1().ConfigMaps(ns).Create(t.Context(), &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: "client-ca"},
		Data: map[string]string{"ca.crt": string(clientCA)}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	frontend := func(mode string) {
		t.Helper()
		patch := `{"spec":{"tls":{"frontend":{"default":{"validation":{"mode":"` + mode + `","caCertificateRefs":[{"group":"","kind":"ConfigMap","name":"client-ca"}]}}}}}}`
		if _, err := lb.Kubectl("-n", ns, "patch", "gateway", "edge", "--type=merge", "-p", patch); err != nil {
			t.Fatal(err)
		}
	}
	pair, err := tls.X509KeyPair(clientCert, clientKey)
	if err != nil {
		t.Fatal(err)
	}
	// New connections each time: an open one keeps the TLS it began with.
	withCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: secureHost, Certificates: []tls.Certificate{pair}}}}
	noCert := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true,
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: secureHost}}}
	frontend("AllowValidOnly")
	lab.WaitFor(t, time.Minute, "HTTPS refused without a client certificate", func() (bool, error) {
		_, _, _, err := fetch(noCert, tlsURL, secureHost)
		return err != nil, fmt.Errorf("a client without a certificate was served")
	})
	if code, body, _, err := fetch(withCert, tlsURL, secureHost); err != nil || code != 200 || !strings.Contains(body, ns) {
		t.Errorf("HTTPS with a client certificate of the CA: %d %.200s %v; want 200", code, body, err)
	}
	wantPassthrough(t, tlsURL, passRoots) // TLS passthrough on the port is not terminated: no client certificate asked
	frontend("AllowInsecureFallback")
	lab.WaitFor(t, time.Minute, "HTTPS served without a client certificate, the Gateway saying it is insecure", func() (bool, error) {
		code, _, _, err := fetch(noCert, tlsURL, secureHost)
		out, kerr := lb.Kubectl("-n", ns, "get", "gateway", "edge", "-o", `jsonpath={.status.conditions[?(@.type=="InsecureFrontendValidationMode")].status} {.status.conditions[?(@.type=="Programmed")].status}`)
		return err == nil && code == 200 && kerr == nil && out == "True True", fmt.Errorf("%d %v; conditions InsecureFrontendValidationMode and Programmed %q (%v)", code, err, out, kerr)
	})

	// ListenerSets (GEP-1713): another team adds listeners to the Gateway
	// from its own namespace once the Gateway admits that namespace (by
	// label): a host on port 8080 and HTTPS on 8443 with the team's own
	// Secret, and a route, in the team's namespace, whose parent is the
	// ListenerSet. The gateway's Service opens the ports, the set and the
	// Gateway say it is attached, and the namespace losing its label
	// detaches it.
	team := lb.NewNamespace(t)
	const teamHost = "team.example.com"
	teamCert, teamKey, teamRoots := servingCert(t, teamHost)
	if _, err := lb.Clientset().CoreV1().Secrets(team).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: "team-cert"}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: teamCert, corev1.TLSPrivateKeyKey: teamKey},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if out, err := lb.Kubectl("label", "namespace", team, "meshlet-test/gateway-access=yes"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	if _, err := lb.Kubectl("-n", ns, "patch", "gateway", "edge", "--type=merge", "-p",
		`{"spec":{"allowedListeners":{"namespaces":{"from":"Selector","selector":{"matchLabels":{"meshlet-test/gateway-access":"yes"}}}}}}`); err != nil {
		t.Fatal(err)
	}
	lb.Apply(t, ns, `apiVersion: gateway.networking.k8s.io/v1
kind: ReferenceGrant
metadata: {name: team-routes}
spec:
  from: [{group: gateway.networking.k8s.io, kind: HTTPRoute, namespace: `+team+`}]
  to: [{group: "", kind: Service, name: echo}]
`)
	lb.Apply(t, team, `apiVersion: gateway.networking.k8s.io/v1
kind: ListenerSet
metadata: {name: team-listeners}
spec:
  parentRef: {name: edge, namespace: `+ns+`}
  listeners:
  - {name: http, port: 8080, protocol: HTTP, hostname: `+teamHost+`}
  - {name: https, port: 8443, protocol: HTTPS, hostname: `+teamHost+`, tls: {certificateRefs: [{name: team-cert}]}}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: team-route}
spec:
  parentRefs: [{group: gateway.networking.k8s.io, kind: ListenerSet, name: team-listeners}]
  rules: [{backendRefs: [{name: echo, namespace: `+ns+`, port: 8080}]}]
`)
	setPorts := func() map[int32]int32 {
		out := map[int32]int32{}
		if svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "edge", metav1.GetOptions{}); err == nil {
			for _, p := range svc.Spec.Ports {
				out[p.Port] = p.NodePort
			}
		}
		return out
	}
	var teamPorts map[int32]int32
	lab.WaitFor(t, time.Minute, "the ListenerSet's ports on the gateway's Service", func() (bool, error) {
		teamPorts = setPorts()
		return teamPorts[8080] != 0 && teamPorts[8443] != 0, fmt.Errorf("ports %v", teamPorts)
	})
	teamURL := fmt.Sprintf("http://%s:%d/api/v1/echo", lab.NodeIP(1), teamPorts[8080])
	lab.WaitFor(t, time.Minute, "the team's host through its ListenerSet's listener "+teamURL, func() (bool, error) {
		code, body, _, err := fetch(client, teamURL, teamHost)
		return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
	})
	teamTLS := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{DisableKeepAlives: true, TLSClientConfig: &tls.Config{RootCAs: teamRoots, ServerName: teamHost}}}
	teamTLSURL := fmt.Sprintf("https://%s:%d/api/v1/echo", lab.NodeIP(2), teamPorts[8443])
	lab.WaitFor(t, 30*time.Second, "HTTPS with the team's certificate through "+teamTLSURL, func() (bool, error) {
		code, body, _, err := fetch(teamTLS, teamTLSURL, teamHost)
		return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
	})
	lab.WaitFor(t, 30*time.Second, "the ListenerSet, its route and the Gateway saying it is attached", func() (bool, error) {
		set, err1 := lb.Kubectl("-n", team, "get", "listenerset", "team-listeners", "-o",
			`jsonpath={.status.conditions[?(@.type=="Accepted")].status} {.status.conditions[?(@.type=="Programmed")].status} {range .status.listeners[*]}{.name}={.attachedRoutes} {end}`)
		route, err2 := lb.Kubectl("-n", team, "get", "httproute", "team-route", "-o", `jsonpath={.status.parents[0].conditions[?(@.type=="Accepted")].status}`)
		gw, err3 := lb.Kubectl("-n", ns, "get", "gateway", "edge", "-o", `jsonpath={.status.attachedListenerSets}`)
		return errors.Join(err1, err2, err3) == nil && set == "True True http=1 https=1 " && route == "True" && gw == "1",
			fmt.Errorf("set %q, route %q, gateway attachedListenerSets %q (%v)", set, route, gw, errors.Join(err1, err2, err3))
	})
	// As a platform team debugging it reads it: the set's listener, where it
	// comes from, and the route it serves.
	desc := meshctl(t, lb)("describe", "gateway", "edge", "-n", ns)
	if !containsAll(desc, "Attached ListenerSets: 1", "(ListenerSet "+team+"/team-listeners): port 8080 HTTP, hostname "+teamHost, "HTTPRoute "+team+"/team-route") {
		t.Errorf("meshctl describe gateway edge:\n%s\nwant the ListenerSet's listener and its route", desc)
	}
	if out, err := lb.Kubectl("label", "namespace", team, "meshlet-test/gateway-access-"); err != nil {
		t.Fatalf("unlabel namespace: %v: %s", err, out)
	}
	lab.WaitFor(t, time.Minute, "the ListenerSet detached once its namespace is no longer admitted", func() (bool, error) {
		set, err := lb.Kubectl("-n", team, "get", "listenerset", "team-listeners", "-o", `jsonpath={.status.conditions[?(@.type=="Accepted")].reason}`)
		ports := setPorts()
		return err == nil && set == "NotAllowed" && ports[8080] == 0 && ports[8443] == 0, fmt.Errorf("Accepted reason %q (%v), Service ports %v", set, err, ports)
	})

	// The Service's type by Istio's annotation, and a requested address.
	// NodePort serves through its node port; ClusterIP has none; back to
	// LoadBalancer (server-side apply across the type changes) with an
	// address the lab, which has no load balancer controller, never
	// assigns: the Service asks for it, the Gateway is not Programmed
	// (AddressNotAssigned, naming it) and still serves through its node
	// port; without the address it is Programmed again.
	const wantAddr = "198.19.255.250"
	svcState := func() (typ corev1.ServiceType, lbIP string, nodePort int32) {
		svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "edge", metav1.GetOptions{})
		if err != nil {
			return "", "", 0
		}
		for _, p := range svc.Spec.Ports {
			if p.Port == 80 {
				nodePort = p.NodePort
			}
		}
		return svc.Spec.Type, svc.Spec.LoadBalancerIP, nodePort
	}
	programmed := func() string {
		out, _ := lb.Kubectl("-n", ns, "get", "gateway", "edge", "-o", `jsonpath={.status.conditions[?(@.type=="Programmed")].status} {.status.conditions[?(@.type=="Programmed")].reason}: {.status.conditions[?(@.type=="Programmed")].message}`)
		return out
	}
	servesOn := func(nodePort int32) {
		t.Helper()
		u := fmt.Sprintf("http://%s:%d/api/v1/echo", lab.NodeIP(1), nodePort)
		lab.WaitFor(t, 30*time.Second, "the gateway through node port "+u, func() (bool, error) {
			code, body, _, err := fetch(client, u, "")
			return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
		})
	}
	if _, err := lb.Kubectl("-n", ns, "annotate", "--overwrite", "gateway", "edge", "networking.istio.io/service-type=NodePort"); err != nil {
		t.Fatal(err)
	}
	var np int32
	lab.WaitFor(t, time.Minute, "the gateway's Service of type NodePort", func() (bool, error) {
		typ, ip, p := svcState()
		np = p
		return typ == corev1.ServiceTypeNodePort && ip == "" && p != 0, fmt.Errorf("type %q, loadBalancerIP %q, node port %d", typ, ip, p)
	})
	servesOn(np)
	if _, err := lb.Kubectl("-n", ns, "annotate", "--overwrite", "gateway", "edge", "networking.istio.io/service-type=ClusterIP"); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, time.Minute, "the gateway's Service of type ClusterIP, without node ports", func() (bool, error) {
		typ, _, p := svcState()
		return typ == corev1.ServiceTypeClusterIP && p == 0, fmt.Errorf("type %q, node port %d", typ, p)
	})
	if _, err := lb.Kubectl("-n", ns, "patch", "gateway", "edge", "--type=merge", "-p",
		`{"metadata":{"annotations":{"networking.istio.io/service-type":null}},"spec":{"addresses":[{"type":"IPAddress","value":"`+wantAddr+`"}]}}`); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, time.Minute, "a LoadBalancer Service asking for "+wantAddr+", the Gateway waiting for it", func() (bool, error) {
		typ, ip, p := svcState()
		np = p
		prog := programmed()
		return typ == corev1.ServiceTypeLoadBalancer && ip == wantAddr && p != 0 && strings.HasPrefix(prog, "False AddressNotAssigned: requested address "+wantAddr),
			fmt.Errorf("type %q, loadBalancerIP %q, node port %d; Programmed %q", typ, ip, p, prog)
	})
	servesOn(np)
	if _, err := lb.Kubectl("-n", ns, "patch", "gateway", "edge", "--type=json", "-p", `[{"op":"remove","path":"/spec/addresses"}]`); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, time.Minute, "the Gateway Programmed without a requested address", func() (bool, error) {
		_, ip, _ := svcState()
		prog := programmed()
		return ip == "" && strings.HasPrefix(prog, "True Programmed"), fmt.Errorf("loadBalancerIP %q; Programmed %q", ip, prog)
	})
}

// passHost is the server name TLS passthrough tests route by.
const passHost = "passthrough.example.com"

// tlsBackend is an echo pod, echo-tls, serving HTTPS on 8443 with its own
// certificate for passHost (which no gateway holds), and its Service; roots
// verify that certificate.
func tlsBackend(t *testing.T) (manifests string, roots *x509.CertPool) {
	certPEM, keyPEM, roots := servingCert(t, passHost)
	return "---\n" + httpsEchoPod("echo-tls", certPEM, keyPEM) + `---
apiVersion: v1
kind: Service
metadata: {name: echo-tls}
spec:
  selector: {app: echo-tls}
  ports: [{name: https, port: 8443}]
`, roots
}

// wantPassthrough waits until a TLS connection to url for passHost gets
// echo-tls's own certificate, verified with roots (the gateway passed it
// through untouched), and its answer.
func wantPassthrough(t *testing.T, url string, roots *x509.CertPool) {
	t.Helper()
	c := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: passHost}}}
	lab.WaitFor(t, 30*time.Second, "TLS passthrough to echo-tls through "+url, func() (bool, error) {
		code, body, _, err := fetch(c, url, passHost)
		return err == nil && code == 200 && strings.Contains(body, "echo-tls"), fmt.Errorf("%d %.200s %v", code, body, err)
	})
}

// meshSystem is the namespace meshctl installs the mesh into.
const meshSystem = "meshlet-system"

// TestIngressIstioGateway: the tutorial's way in. An Istio Gateway selecting
// the chart's ingress gateway (istio: ingressgateway) and a VirtualService
// bound to it expose /api/v1/echo of a mesh Service: over HTTP on port 80
// from a pod outside the mesh (the gateway's Service) and from the machine
// (node port), over HTTPS on 443 with the certificate of a kubernetes.io/tls
// Secret in the gateway's namespace, verified by the client; a host whose
// server sets httpsRedirect gets a 301 to https; a PASSTHROUGH server on
// the same port 443 hands connections for its host, untouched, to a mesh
// pod that terminates TLS with its own certificate (a VirtualService's tls
// route); a TCP server relays whole connections to a VirtualService's tcp
// route; an AuthorizationPolicy selecting the gateway's pods denies at the
// gateway.
func TestIngressIstioGateway(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	const host = "echo.example.com"
	certPEM, keyPEM, roots := servingCert(t, host)
	secretName := "echo-cert-" + ns
	if _, err := lb.Clientset().CoreV1().Secrets(meshSystem).Create(t.Context(), &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: secretName}, Type: corev1.SecretTypeTLS,
		Data: map[string][]byte{corev1.TLSCertKey: certPEM, corev1.TLSPrivateKeyKey: keyPEM},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatalf("create the credential Secret: %v", err)
	}
	t.Cleanup(func() {
		_ = lb.Clientset().CoreV1().Secrets(meshSystem).Delete(context.Background(), secretName, metav1.DeleteOptions{})
	})
	passBackend, passRoots := tlsBackend(t)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1)+passBackend+fmt.Sprintf(`---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: echo-passthrough}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 443, name: tls-passthrough, protocol: TLS}
    hosts: [%[2]s]
    tls: {mode: PASSTHROUGH}
  - port: {number: 31400, name: tcp, protocol: TCP}
    hosts: ["*"]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-tcp}
spec:
  hosts: ["*"]
  gateways: [echo-passthrough]
  tcp:
  - match: [{port: 31400}]
    route: [{destination: {host: echo, port: {number: 8080}}}]
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-tls}
spec:
  hosts: [%[2]s]
  gateways: [echo-passthrough]
  tls:
  - match: [{port: 443, sniHosts: [%[2]s]}]
    route: [{destination: {host: echo-tls, port: {number: 8443}}}]
---
apiVersion: networking.istio.io/v1
kind: Gateway
metadata: {name: echo-gateway}
spec:
  selector: {istio: ingressgateway}
  servers:
  - port: {number: 80, name: http-secure-only, protocol: HTTP}
    hosts: ["secure.example.com"]
    tls: {httpsRedirect: true}
  - port: {number: 80, name: http, protocol: HTTP}
    hosts: ["*"]
  - port: {number: 443, name: https, protocol: HTTPS}
    hosts: ["*"]
    tls: {mode: SIMPLE, credentialName: %[1]s}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: echo-api}
spec:
  hosts: ["*"]
  gateways: [echo-gateway]
  http:
  - match: [{uri: {prefix: /api/v1/echo}}]
    route: [{destination: {host: echo, port: {number: 8080}}}]
`, secretName, passHost))
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "app=echo-tls", 1, 2*time.Minute)
	lb.WaitPodsReady(t, meshSystem, "istio=ingressgateway", 1, 2*time.Minute)
	svc, err := lb.Clientset().CoreV1().Services(meshSystem).Get(t.Context(), "istio-ingressgateway", metav1.GetOptions{})
	if err != nil {
		t.Fatalf("the chart's ingress gateway Service: %v", err)
	}
	nodePorts := map[int32]int32{}
	for _, p := range svc.Spec.Ports {
		nodePorts[p.Port] = p.NodePort
	}
	if nodePorts[80] == 0 || nodePorts[443] == 0 {
		t.Fatalf("ingress gateway Service ports %v; want node ports for 80 and 443", svc.Spec.Ports)
	}

	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")
	lab.WaitFor(t, time.Minute, "the route through the gateway's Service from a pod outside the mesh", func() (bool, error) {
		s := summary(t, lb, plain, outsider.Name, "-n", "3", fmt.Sprintf("http://%s/api/v1/echo/list", svc.Spec.ClusterIP))
		return s.ByStatus["200"] == 3, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})
	if s := summary(t, lb, plain, outsider.Name, "-n", "1", fmt.Sprintf("http://%s/other", svc.Spec.ClusterIP)); s.ByStatus["404"] != 1 {
		t.Errorf("a path no route matches: %v; want 404", s.ByStatus)
	}
	// The TCP server (port 31400, no Service port: straight to the
	// gateway pod) relays whole connections to echo's HTTP port, so any
	// path is answered by echo itself, not routed.
	gwPods, err := lb.Clientset().CoreV1().Pods(meshSystem).List(t.Context(), metav1.ListOptions{LabelSelector: "istio=ingressgateway"})
	if err != nil || len(gwPods.Items) == 0 {
		t.Fatalf("the ingress gateway's pods: %v", err)
	}
	lab.WaitFor(t, time.Minute, "a TCP server's connections relayed to echo", func() (bool, error) {
		s := summary(t, lb, plain, outsider.Name, "-n", "3", fmt.Sprintf("http://%s:31400/other", gwPods.Items[0].Status.PodIP))
		return s.ByStatus["200"] == 3, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})

	noRedirect := func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	httpClient := &http.Client{Timeout: 5 * time.Second, CheckRedirect: noRedirect}
	plainURL := fmt.Sprintf("http://%s:%d/api/v1/echo", lab.NodeIP(1), nodePorts[80])
	lab.WaitFor(t, 30*time.Second, "HTTP through the node port "+plainURL, func() (bool, error) {
		code, body, _, err := fetch(httpClient, plainURL, "")
		return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
	})
	code, _, hdr, err := fetch(httpClient, plainURL, "secure.example.com")
	if err != nil || code != http.StatusMovedPermanently || hdr.Get("Location") != "https://secure.example.com/api/v1/echo" {
		t.Errorf("Host secure.example.com over HTTP: %d Location %q (%v); want 301 to https://secure.example.com/api/v1/echo", code, hdr.Get("Location"), err)
	}

	tlsClient := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: roots, ServerName: host}, ForceAttemptHTTP2: true}}
	tlsURL := fmt.Sprintf("https://%s:%d/api/v1/echo", lab.NodeIP(2), nodePorts[443])
	lab.WaitFor(t, 30*time.Second, "HTTPS through the node port "+tlsURL, func() (bool, error) {
		code, body, _, err := fetch(tlsClient, tlsURL, "")
		return err == nil && code == 200 && strings.Contains(body, ns), fmt.Errorf("%d %.200s %v", code, body, err)
	})
	// The client verified the Secret's certificate; one it does not trust fails.
	untrusted := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: x509.NewCertPool(), ServerName: host}}}
	if _, _, _, err := fetch(untrusted, tlsURL, ""); err == nil || !strings.Contains(err.Error(), "certificate") {
		t.Errorf("HTTPS with no trusted root: %v; want a certificate verification error", err)
	}

	// TLS passthrough on the same port, by SNI.
	wantPassthrough(t, tlsURL, passRoots)

	// meshctl describe gateway reads the Istio Gateway: its servers, the
	// chart's gateway deployment its selector picks, the VirtualService
	// bound to it and what meshd serves there.
	desc := meshctl(t, lb)("describe", "gateway", "echo-gateway", "-n", ns)
	for _, want := range []string{
		"Gateway:    " + ns + "/echo-gateway (Istio networking.istio.io)\n",
		"  " + meshSystem + "/istio-ingressgateway (",
		"  port 443 HTTPS (https), hosts *, TLS SIMPLE with Secret " + secretName + "\n",
		"  port 80 HTTP (http-secure-only), hosts secure.example.com, redirects to HTTPS\n",
		"  " + ns + "/echo-api: hosts *\n",
		"VirtualService " + ns + "/echo-api rule 0 [path prefix /api/v1/echo]",
	} {
		if !strings.Contains(desc, want) {
			t.Errorf("meshctl describe gateway echo-gateway does not say %q:\n%s", want, desc)
		}
	}

	// An AuthorizationPolicy selecting the gateway's pods applies at the
	// gateway, as Istio applies it to its ingress gateway's Envoy.
	policyName := "edge-deny-" + ns
	lb.Apply(t, meshSystem, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %s}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{to: [{operation: {paths: ["/api/v1/echo/private*"]}}]}]
`, policyName))
	t.Cleanup(func() {
		_, _ = lb.Kubectl("-n", meshSystem, "delete", "authorizationpolicy", policyName, "--ignore-not-found")
	})
	lab.WaitFor(t, time.Minute, "the gateway denies what the policy selecting its pods denies", func() (bool, error) {
		s := summary(t, lb, plain, outsider.Name, "-n", "3", fmt.Sprintf("http://%s/api/v1/echo/private/x", svc.Spec.ClusterIP))
		return s.ByStatus["403"] == 3, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})
	if s := summary(t, lb, plain, outsider.Name, "-n", "3", fmt.Sprintf("http://%s/api/v1/echo/list", svc.Spec.ClusterIP)); s.ByStatus["200"] != 3 {
		t.Errorf("a path the policy does not deny: %v; want 200", s.ByStatus)
	}

	// JWT at ingress (Istio's task): a RequestAuthentication selecting the
	// gateway's pods and a DENY of requests without a request principal to
	// /api/v1/echo/secure.
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer := jwtSigner{key}
	const issuer = "https://ingress-issuer.meshlet.test"
	raName := "edge-jwt-" + ns
	lb.Apply(t, meshSystem, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: %[1]s}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  jwtRules: [{issuer: %[2]q, jwks: '%[3]s'}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: %[1]s}
spec:
  selector: {matchLabels: {istio: ingressgateway}}
  action: DENY
  rules: [{from: [{source: {notRequestPrincipals: ["*"]}}], to: [{operation: {paths: ["/api/v1/echo/secure*"]}}]}]
`, raName, issuer, signer.jwks()))
	t.Cleanup(func() {
		_, _ = lb.Kubectl("-n", meshSystem, "delete", "requestauthentication,authorizationpolicy", raName, "--ignore-not-found")
	})
	now := time.Now().Unix()
	token := signer.token(map[string]any{"alg": "ES256", "typ": "JWT", "kid": "k1"}, map[string]any{"iss": issuer, "sub": "carol", "iat": now, "exp": now + 600})
	secure := fmt.Sprintf("http://%s/api/v1/echo/secure", svc.Spec.ClusterIP)
	lab.WaitFor(t, time.Minute, "JWT at the gateway: no token 403, a valid one 200", func() (bool, error) {
		none := summary(t, lb, plain, outsider.Name, "-n", "2", secure)
		valid := summary(t, lb, plain, outsider.Name, "-n", "2", "-H", "Authorization: Bearer "+token, secure)
		return none.ByStatus["403"] == 2 && valid.ByStatus["200"] == 2, fmt.Errorf("without a token %v, with a valid one %v", none.ByStatus, valid.ByStatus)
	})
	forged := token[:strings.LastIndex(token, ".")] + ".AAAA"
	if s := summary(t, lb, plain, outsider.Name, "-n", "2", "-H", "Authorization: Bearer "+forged, secure); s.ByStatus["401"] != 2 {
		t.Errorf("a forged token at the gateway: %v; want 401", s.ByStatus)
	}
}

// fetch GETs url (with Host set when host is not empty) and returns the
// status, up to 4 KiB of the body and the headers.
func fetch(c *http.Client, url, host string) (int, string, http.Header, error) {
	req, err := http.NewRequest(http.MethodGet, url, nil)
	if err != nil {
		return 0, "", nil, err
	}
	if host != "" {
		req.Host = host
	}
	resp, err := c.Do(req)
	if err != nil {
		return 0, "", nil, err
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
	return resp.StatusCode, string(b), resp.Header, nil
}

// servingCert makes a CA and a server certificate for host signed by it; it
// returns the server's certificate and key in PEM and a pool with the CA.
func servingCert(t *testing.T, host string) (certPEM, keyPEM []byte, roots *x509.CertPool) {
	t.Helper()
	certPEM, keyPEM, caPEM := servingCertCA(t, host)
	roots = x509.NewCertPool()
	roots.AppendCertsFromPEM(caPEM)
	return certPEM, keyPEM, roots
}

// servingCertCA is servingCert with the CA certificate in PEM.
func servingCertCA(t *testing.T, host string) (certPEM, keyPEM, caPEM []byte) {
	t.Helper()
	return issuedCert(t, host, x509.ExtKeyUsageServerAuth)
}

// issuedCert is a key and a certificate for name, of a new CA, for usage.
func issuedCert(t *testing.T, name string, usage x509.ExtKeyUsage) (certPEM, keyPEM, caPEM []byte) {
	t.Helper()
	caKey, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "meshlet test ingress CA"}, IsCA: true, BasicConstraintsValid: true,
		KeyUsage: x509.KeyUsageCertSign, NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caCert, _ := x509.ParseCertificate(caDER)
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		KeyUsage: x509.KeyUsageDigitalSignature, ExtKeyUsage: []x509.ExtKeyUsage{usage},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(24 * time.Hour)}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, caCert, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	kd, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		t.Fatal(err)
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kd}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER})
}

// TestIngressUseWaypoint: an ingress gateway reaches a mesh service's pods
// directly, so the L7 policy of the service's waypoint does not see ingress
// requests (Istio's default); labelled istio.io/ingress-use-waypoint=true,
// the service gets its ingress requests through its waypoint, whose DENY on
// a path then answers 403 for them too.
func TestIngressUseWaypoint(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1)+"---\n"+edgeGateway+`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo}
spec:
  parentRefs: [{name: edge}]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  targetRefs: [{kind: Service, group: "", name: echo}]
  action: DENY
  rules: [{to: [{operation: {paths: ["/admin*"]}}]}]
`)
	applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=edge", 1, 3*time.Minute)
	var edgeIP string
	lab.WaitFor(t, time.Minute, "the gateway's Service", func() (bool, error) {
		svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "edge", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		edgeIP = svc.Spec.ClusterIP
		return edgeIP != "", errors.New("no cluster IP yet")
	})
	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")
	status := func(path string) map[string]int {
		return summary(t, lb, plain, outsider.Name, "-n", "2", "http://"+edgeIP+path).ByStatus
	}
	inMesh := clientPod(t, lb, ns, "client", "client")
	lab.WaitFor(t, time.Minute, "the waypoint's DENY for mesh clients", func() (bool, error) {
		s := summary(t, lb, ns, inMesh.Name, "-n", "2", "http://echo:8080/admin")
		return s.ByStatus["403"] == 2, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})
	lab.WaitFor(t, time.Minute, "ingress requests bypass the waypoint by default", func() (bool, error) {
		s := status("/admin")
		return s["200"] == 2, fmt.Errorf("status %v", s)
	})

	lb.Apply(t, ns, `apiVersion: v1
kind: Service
metadata:
  name: echo
  labels: {istio.io/ingress-use-waypoint: "true"}
spec:
  selector: {app: echo}
  ports: [{name: http, port: 8080}]
`)
	lab.WaitFor(t, time.Minute, "ingress requests through the waypoint, its DENY applied", func() (bool, error) {
		s := status("/admin")
		return s["403"] == 2, fmt.Errorf("status %v", s)
	})
	if s := status("/api"); s["200"] != 2 {
		t.Errorf("an allowed path through the gateway and the waypoint: %v; want 200", s)
	}
}
