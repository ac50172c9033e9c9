package meshtest

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"
	authnv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/meshstatus"
	"github.com/meshlet/meshlet/test/lab"
)

const meshdServerName = "meshd.meshlet-system.svc"

// meshdPod is one ready meshd replica: its pod and the address of its 15012.
func meshdPod(t *testing.T, lb *lab.Lab) corev1.Pod {
	t.Helper()
	var pod corev1.Pod
	lab.WaitFor(t, 2*time.Minute, "a ready meshd replica", func() (bool, error) {
		pods, err := lb.Clientset().CoreV1().Pods("meshlet-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=meshd"})
		if err != nil {
			return false, err
		}
		for _, p := range pods.Items {
			if p.DeletionTimestamp == nil && podReady(&p) {
				pod = p
				return true, nil
			}
		}
		return false, fmt.Errorf("%d meshd pods, none ready", len(pods.Items))
	})
	return pod
}

func podReady(p *corev1.Pod) bool {
	for _, c := range p.Status.Conditions {
		if c.Type == corev1.PodReady {
			return c.Status == corev1.ConditionTrue
		}
	}
	return false
}

// nodeAgentOn is the node agent pod of a node.
func nodeAgentOn(t *testing.T, lb *lab.Lab, node string) corev1.Pod {
	t.Helper()
	pods, err := lb.Clientset().CoreV1().Pods("meshlet-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=meshlet-node-agent"})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range pods.Items {
		if p.Spec.NodeName == node && p.DeletionTimestamp == nil {
			return p
		}
	}
	t.Fatalf("no node agent on %s", node)
	return corev1.Pod{}
}

// boundToken is a service account token bound to a pod, as the kubelet
// projects one into it.
func boundToken(t *testing.T, lb *lab.Lab, pod corev1.Pod) string {
	t.Helper()
	tr, err := lb.Clientset().CoreV1().ServiceAccounts(pod.Namespace).CreateToken(t.Context(), pod.Spec.ServiceAccountName, &authnv1.TokenRequest{
		Spec: authnv1.TokenRequestSpec{
			ExpirationSeconds: new(int64(600)),
			BoundObjectRef:    &authnv1.BoundObjectReference{Kind: "Pod", APIVersion: "v1", Name: pod.Name, UID: pod.UID},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("token for %s/%s: %v", pod.Namespace, pod.Name, err)
	}
	return tr.Status.Token
}

// meshdTLS trusts meshd's root as a client in ns reads it: from the
// istio-ca-root-cert ConfigMap meshd publishes in every namespace.
func meshdTLS(t *testing.T, lb *lab.Lab, ns string) *tls.Config {
	t.Helper()
	var pemRoot string
	lab.WaitFor(t, time.Minute, "istio-ca-root-cert in "+ns, func() (bool, error) {
		cm, err := lb.Clientset().CoreV1().ConfigMaps(ns).Get(t.Context(), "istio-ca-root-cert", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		pemRoot = cm.Data["root-cert.pem"]
		return pemRoot != "", errors.New("no root-cert.pem")
	})
	roots := x509.NewCertPool()
	if !roots.AppendCertsFromPEM([]byte(pemRoot)) {
		t.Fatalf("istio-ca-root-cert in %s holds no certificate", ns)
	}
	return &tls.Config{RootCAs: roots, ServerName: meshdServerName, MinVersion: tls.VersionTLS13}
}

// TestMeshdServesNodeAgentsAndSignsTheirCertificates runs a client of
// meshd in the lab exactly as a node agent is one — the node agent's service
// account token bound to its pod, meshd's root from istio-ca-root-cert — and
// checks what a platform team relies on: the node's workloads arrive and
// follow the cluster (add, change, delete), a config the client refuses is
// NACKed and kept out while the rest flows, an invalid Istio resource is
// reported on the object and skipped, and the CA signs only what the caller
// may hold.
func TestMeshdServesNodeAgentsAndSignsTheirCertificates(t *testing.T) {
	lb := meshLab(t)
	ns := lb.NewNamespace(t)
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	lb.Apply(t, ns, `apiVersion: v1
kind: ServiceAccount
metadata: {name: web}
---
apiVersion: v1
kind: Pod
metadata:
  name: web
  labels: {app: web}
spec:
  serviceAccountName: web
  containers:
  - name: echo
    image: meshlet.dev/echo:latest
    readinessProbe:
      httpGet: {path: /healthz, port: 8080}
      periodSeconds: 1
`)
	web := lb.WaitPodsReady(t, ns, "app=web", 1, 2*time.Minute)[0]
	node := web.Spec.NodeName
	agent := nodeAgentOn(t, lb, node)
	md := meshdPod(t, lb)
	addr := md.Status.PodIP + ":15012"
	metrics := "http://" + md.Status.PodIP + ":15014/metrics"
	tlsCfg := meshdTLS(t, lb, ns)
	agentToken := boundToken(t, lb, agent)

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	types := []string{meshv1.WorkloadType, meshv1.AddressType, meshv1.PeerAuthenticationType, meshv1.AuthorizationType, meshv1.TrustBundleType}
	nacks0 := sumMetric(t, metrics, "meshd_xds_nacks_total")
	// The client refuses (NACKs) any response with an Address of a service
	// called "refused", as a node agent refuses what it cannot apply.
	c, err := dialWireXDS(t.Context(), conn, agentToken, "node-agent~"+node, types, func(typeURL, name string) string {
		if typeURL == meshv1.AddressType && strings.Contains(name, "/refused.") {
			return "test client refuses " + name
		}
		return ""
	})
	if err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, 30*time.Second, "the client of meshd at "+addr+" has every type", func() (bool, error) {
		ok, err := c.state(types)
		return ok && err == nil, err
	})
	workload := func(uid string) (*meshv1.Workload, bool) {
		r, ok := c.get(meshv1.WorkloadType, uid)
		if !ok {
			return nil, false
		}
		w := &meshv1.Workload{}
		if err := proto.Unmarshal(r.Value, w); err != nil {
			t.Fatalf("decode Workload %s: %v", uid, err)
		}
		return w, true
	}

	// The node's workloads in full, and none of another node's.
	w, ok := workload(string(web.UID))
	if !ok {
		t.Fatalf("workload of pod %s/web (uid %s) not pushed to the agent of its node %s", ns, web.UID, node)
	}
	wantID := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/web", ns)
	if !w.GetEnrolled() || w.GetIdentity() != wantID || w.GetNode() != node || !slices.Contains(w.GetAddresses(), web.Status.PodIP) {
		t.Errorf("workload web = enrolled %v, identity %q, node %q, addresses %v; want enrolled, %s, %s, [%s]",
			w.GetEnrolled(), w.GetIdentity(), w.GetNode(), w.GetAddresses(), wantID, node, web.Status.PodIP)
	}
	for _, name := range c.names(meshv1.WorkloadType) {
		if w, _ := workload(name); w.GetNode() != node && w.GetNode() != "" {
			t.Errorf("agent of %s got workload %s of node %s", node, name, w.GetNode())
		}
	}
	if len(c.names(meshv1.TrustBundleType)) == 0 {
		t.Error("no trust bundle pushed")
	}

	// Change: a Service selecting the pod makes the workload back it.
	lb.Apply(t, ns, `apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{name: http, port: 80, targetPort: 8080}]
`)
	svcKey := ns + "/web." + ns + ".svc.cluster.local"
	lab.WaitFor(t, 30*time.Second, "the workload backs the new Service", func() (bool, error) {
		w, _ := workload(string(web.UID))
		_, ok := w.GetServices()[svcKey]
		return ok, fmt.Errorf("services %v", w.GetServices())
	})

	// An invalid resource is reported on the object and skipped; a
	// resource the client NACKs stays out; the rest still flows.
	rejected0 := sumMetric(t, metrics, "meshd_config_rejected_total", "VirtualService")
	lb.Apply(t, ns, `apiVersion: networking.istio.io/v1alpha3
kind: VirtualService
metadata: {name: bad-regex}
spec:
  hosts: [web]
  http:
  - match: [{uri: {regex: "/api/(v1"}}]
    route: [{destination: {host: web}}]
---
apiVersion: v1
kind: Service
metadata: {name: refused}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: after}
spec:
  selector: {app: nothing}
  ports: [{port: 80}]
`)
	lab.WaitFor(t, 30*time.Second, "an event on VirtualService bad-regex", func() (bool, error) {
		evs, err := lb.Clientset().CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=bad-regex"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.Reason == "MeshConfigRejected" && e.Type == corev1.EventTypeWarning && strings.Contains(e.Message, "regex") {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d events, none a MeshConfigRejected warning naming the regex", len(evs.Items))
	})
	lab.WaitFor(t, 30*time.Second, "meshd_config_rejected_total counts the VirtualService", func() (bool, error) {
		d := sumMetric(t, metrics, "meshd_config_rejected_total", "VirtualService") - rejected0
		return d >= 1, fmt.Errorf("+%v", d)
	})
	lab.WaitFor(t, 30*time.Second, "meshd counts the NACK", func() (bool, error) {
		d := sumMetric(t, metrics, "meshd_xds_nacks_total") - nacks0
		return d >= 1, fmt.Errorf("+%v", d)
	})
	if c.count("nack "+meshv1.AddressType) == 0 {
		t.Error("the client never NACKed an Address response")
	}
	if _, ok := c.get(meshv1.AddressType, svcKey); !ok {
		t.Errorf("Address %s lost after a NACK; the last good state must stay", svcKey)
	}
	for _, name := range c.names(meshv1.AddressType) {
		if strings.Contains(name, "/refused.") {
			t.Errorf("NACKed Address %s was applied", name)
		}
	}

	// Delete: the pod's workload goes away.
	if err := lb.Clientset().CoreV1().Pods(ns).Delete(t.Context(), "web", metav1.DeleteOptions{GracePeriodSeconds: new(int64(0))}); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, time.Minute, "the deleted pod's workload removed", func() (bool, error) {
		_, ok := workload(string(web.UID))
		return !ok && c.saw("remove "+meshv1.WorkloadType+" "+string(web.UID)), errors.New("still there")
	})
}

// TestMeshdCARefusesWhatACallerMayNotHold: the node agent gets the identity
// of a service account with a pod on its node, and nothing else; a token
// that the API server did not issue is refused outright.
func TestMeshdCARefusesWhatACallerMayNotHold(t *testing.T) {
	lb := meshLab(t)
	ns := lb.NewNamespace(t)
	nodes, err := lb.Clientset().CoreV1().Nodes().List(t.Context(), metav1.ListOptions{})
	if err != nil || len(nodes.Items) < 2 {
		t.Fatalf("want two nodes: %v", err)
	}
	here, there := nodes.Items[0].Name, nodes.Items[1].Name
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: v1
kind: ServiceAccount
metadata: {name: local}
---
apiVersion: v1
kind: ServiceAccount
metadata: {name: remote}
---
apiVersion: v1
kind: Pod
metadata: {name: local, labels: {app: ca-test}}
spec:
  serviceAccountName: local
  nodeName: %s
  containers: [{name: echo, image: meshlet.dev/echo:latest}]
---
apiVersion: v1
kind: Pod
metadata: {name: remote, labels: {app: ca-test}}
spec:
  serviceAccountName: remote
  nodeName: %s
  containers: [{name: echo, image: meshlet.dev/echo:latest}]
`, here, there))
	lb.WaitPodsReady(t, ns, "app=ca-test", 2, 2*time.Minute)

	md := meshdPod(t, lb)
	metrics := "http://" + md.Status.PodIP + ":15014/metrics"
	conn, err := grpc.NewClient(md.Status.PodIP+":15012", grpc.WithTransportCredentials(credentials.NewTLS(meshdTLS(t, lb, ns))))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	agentToken := boundToken(t, lb, nodeAgentOn(t, lb, here))
	issue := func(token, sa string) ([]*x509.Certificate, error) {
		t.Helper()
		id := &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: fmt.Sprintf("/ns/%s/sa/%s", ns, sa)}
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
		if err != nil {
			t.Fatal(err)
		}
		ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
		defer cancel()
		pems, err := createCertificate(ctx, conn, token, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 3600)
		if err != nil {
			return nil, err
		}
		var chain []*x509.Certificate
		for _, p := range pems {
			for rest := []byte(p); ; {
				var b *pem.Block
				if b, rest = pem.Decode(rest); b == nil {
					break
				}
				c, err := x509.ParseCertificate(b.Bytes)
				if err != nil {
					t.Fatalf("certificate from meshd: %v", err)
				}
				chain = append(chain, c)
			}
		}
		if len(chain) == 0 {
			t.Fatal("meshd answered with no certificate")
		}
		return chain, nil
	}
	refused0 := sumMetric(t, metrics, "meshd_csr_refused_total")

	chain, err := issue(agentToken, "local")
	if err != nil {
		t.Fatalf("node agent of %s asking for the identity of a pod on its node: %v", here, err)
	}
	want := fmt.Sprintf("spiffe://cluster.local/ns/%s/sa/local", ns)
	if leaf := chain[0]; len(leaf.URIs) != 1 || leaf.URIs[0].String() != want || leaf.NotAfter.Sub(leaf.NotBefore) > time.Hour+time.Minute {
		t.Errorf("SVID URIs %v, lifetime %v; want exactly [%s], at most the 1h asked", leaf.URIs, leaf.NotAfter.Sub(leaf.NotBefore), want)
	}

	_, err = issue(agentToken, "remote")
	if status.Code(err) != codes.PermissionDenied {
		t.Errorf("node agent of %s asking for %s (its only pod is on %s): %v; want PermissionDenied", here, "remote", there, err)
	}
	_, err = issue(forgedToken(t, ns, "remote"), "remote")
	if status.Code(err) != codes.Unauthenticated {
		t.Errorf("forged service account token: %v; want Unauthenticated", err)
	}
	lab.WaitFor(t, 10*time.Second, "meshd_csr_refused_total counts both refusals", func() (bool, error) {
		d := sumMetric(t, metrics, "meshd_csr_refused_total") - refused0
		return d == 2, fmt.Errorf("+%v; want +2", d)
	})
}

// forgedToken is a well-formed service account JWT for ns/sa, with every
// claim the API server would put in it, signed by a key the API server has
// never seen.
func forgedToken(t *testing.T, ns, sa string) string {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	enc := func(v any) string {
		b, _ := json.Marshal(v)
		return base64.RawURLEncoding.EncodeToString(b)
	}
	now := time.Now().Unix()
	signed := enc(map[string]string{"alg": "ES256", "typ": "JWT", "kid": "forged"}) + "." + enc(map[string]any{
		"iss": "https://kubernetes.default.svc.cluster.local", "aud": []string{"https://kubernetes.default.svc.cluster.local"},
		"sub": "system:serviceaccount:" + ns + ":" + sa, "iat": now, "nbf": now, "exp": now + 600,
		"kubernetes.io": map[string]any{"namespace": ns, "serviceaccount": map[string]string{"name": sa, "uid": "00000000-0000-0000-0000-000000000000"}},
	})
	h := sha256.Sum256([]byte(signed))
	r, s, err := ecdsa.Sign(rand.Reader, key, h[:])
	if err != nil {
		t.Fatal(err)
	}
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	s.FillBytes(sig[32:])
	return signed + "." + base64.RawURLEncoding.EncodeToString(sig)
}

// meshdPods are the ready meshd replicas.
func meshdPods(t *testing.T, lb *lab.Lab) []corev1.Pod {
	t.Helper()
	pods, err := lb.Clientset().CoreV1().Pods("meshlet-system").List(t.Context(), metav1.ListOptions{LabelSelector: "app.kubernetes.io/name=meshd"})
	if err != nil {
		t.Fatal(err)
	}
	var out []corev1.Pod
	for _, p := range pods.Items {
		if p.DeletionTimestamp == nil && podReady(&p) {
			out = append(out, p)
		}
	}
	return out
}

// connectedClients adds meshd_xds_connected_clients over the ready replicas.
func connectedClients(t *testing.T, lb *lab.Lab) (float64, int) {
	t.Helper()
	var sum float64
	pods := meshdPods(t, lb)
	for _, p := range pods {
		sum += sumMetric(t, "http://"+p.Status.PodIP+":15014/metrics", "meshd_xds_connected_clients")
	}
	return sum, len(pods)
}

// TestMeshdReplicasServeAndFailOver: both meshd replicas serve config and
// certificates under one root; when one is deleted, its clients reconnect
// to the other and a pod enrolled right then still gets its certificate.
func TestMeshdReplicasServeAndFailOver(t *testing.T) {
	lb := meshLab(t)
	ns := lb.NewNamespace(t)
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	replicas := meshdPods(t, lb)
	if len(replicas) != 2 {
		t.Fatalf("%d ready meshd replicas; the chart runs 2", len(replicas))
	}
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata: {name: first, labels: {app: failover}}
spec:
  containers: [{name: echo, image: meshlet.dev/echo:latest}]
`)
	first := lb.WaitPodsReady(t, ns, "app=failover", 1, 2*time.Minute)[0]
	tlsCfg := meshdTLS(t, lb, ns)
	rootPool := tlsCfg.RootCAs
	agent := nodeAgentOn(t, lb, first.Spec.NodeName)
	token := boundToken(t, lb, agent)
	types := []string{meshv1.WorkloadType, meshv1.TrustBundleType}
	for _, md := range replicas {
		conn, err := grpc.NewClient(md.Status.PodIP+":15012", grpc.WithTransportCredentials(credentials.NewTLS(tlsCfg)))
		if err != nil {
			t.Fatal(err)
		}
		x, err := dialWireXDS(t.Context(), conn, token, "node-agent~"+first.Spec.NodeName, types, nil)
		if err != nil {
			t.Fatalf("replica %s: %v", md.Name, err)
		}
		lab.WaitFor(t, 30*time.Second, "replica "+md.Name+" serves the node's workloads", func() (bool, error) {
			ok, err := x.state(types)
			_, has := x.get(meshv1.WorkloadType, string(first.UID))
			return ok && has && err == nil, err
		})
		// A certificate from this replica chains to the root every namespace trusts.
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			t.Fatal(err)
		}
		id := &url.URL{Scheme: "spiffe", Host: "cluster.local", Path: "/ns/" + ns + "/sa/default"}
		der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{URIs: []*url.URL{id}}, key)
		if err != nil {
			t.Fatal(err)
		}
		pems, err := createCertificate(t.Context(), conn, token, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), 600)
		if err != nil {
			t.Fatalf("replica %s refused a CSR it should sign: %v", md.Name, err)
		}
		blk, _ := pem.Decode([]byte(pems[0]))
		leaf, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			t.Fatal(err)
		}
		inter := x509.NewCertPool()
		for _, p := range pems[1:] {
			if b, _ := pem.Decode([]byte(p)); b != nil {
				if c, err := x509.ParseCertificate(b.Bytes); err == nil {
					inter.AddCert(c)
				}
			}
		}
		if _, err := leaf.Verify(x509.VerifyOptions{Roots: rootPool, Intermediates: inter}); err != nil {
			t.Errorf("certificate from replica %s does not chain to istio-ca-root-cert: %v", md.Name, err)
		}
		conn.Close()
	}

	before, _ := connectedClients(t, lb)
	if before < 2 {
		t.Fatalf("%v clients connected over both replicas; want at least the 2 node agents", before)
	}
	// One replica deploys waypoints and gateways and writes status: the one
	// holding the leader Lease. It is the one deleted, so that another
	// takes over.
	var victim corev1.Pod
	lab.WaitFor(t, time.Minute, "a ready meshd replica holds the leader Lease", func() (bool, error) {
		holder := leaderLeaseHolder(t, lb)
		for _, p := range replicas {
			if p.Name == holder {
				victim = p
				return true, nil
			}
		}
		return false, fmt.Errorf("Lease meshlet-system/meshd-leader held by %q, not by one of the ready replicas", holder)
	})
	if err := lb.Clientset().CoreV1().Pods("meshlet-system").Delete(t.Context(), victim.Name, metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	// A pod enrolled while a replica is going: its node agent still gets
	// its certificate (the CNI plugin fails the pod's start otherwise).
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata: {name: second, labels: {app: failover-2}}
spec:
  containers: [{name: echo, image: meshlet.dev/echo:latest}]
`)
	lb.WaitPodsReady(t, ns, "app=failover-2", 1, 2*time.Minute)
	lab.WaitFor(t, 2*time.Minute, "every client reconnected after a replica was deleted", func() (bool, error) {
		now, n := connectedClients(t, lb)
		for _, p := range meshdPods(t, lb) {
			if p.Name == victim.Name {
				return false, fmt.Errorf("%s still serving", victim.Name)
			}
		}
		return now >= before && n == 2, fmt.Errorf("%v clients over %d ready replicas; had %v", now, n, before)
	})
	// The work moved (the deleted replica releases the Lease once it
	// stops): a waypoint applied now is deployed, and its listener status
	// written.
	lab.WaitFor(t, time.Minute, "another replica holds the leader Lease", func() (bool, error) {
		holder := leaderLeaseHolder(t, lb)
		return holder != victim.Name && holder != "", fmt.Errorf("held by %q; %s was deleted", holder, victim.Name)
	})
	lb.Apply(t, ns, `apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: waypoint}
spec:
  gatewayClassName: meshlet-waypoint
  listeners: [{name: mesh, port: 15008, protocol: HBONE}]
`)
	lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint", 1, 2*time.Minute)
	lab.WaitFor(t, time.Minute, "the new waypoint's listener status", func() (bool, error) {
		out, err := lb.Kubectl("get", "gateway", "waypoint", "-n", ns, "-o", `jsonpath={.status.listeners[0].name}`)
		return strings.TrimSpace(out) == "mesh", fmt.Errorf("status.listeners[0].name %q (%v)", out, err)
	})
}

// leaderLeaseHolder is the pod whose meshd holds the leader Lease ("" when
// none does).
func leaderLeaseHolder(t *testing.T, lb *lab.Lab) string {
	t.Helper()
	l, err := lb.Clientset().CoordinationV1().Leases("meshlet-system").Get(t.Context(), meshstatus.LeaderLease, metav1.GetOptions{})
	if err != nil || l.Spec.HolderIdentity == nil {
		return ""
	}
	return meshstatus.LeaderPod(*l.Spec.HolderIdentity)
}

// TestLocalRateLimitPolicyInTheCluster: meshlet's own CRD is installed with
// the mesh; the API server refuses a malformed policy with a message that
// names the field, and meshd reports a valid one whose target does not
// exist (a Warning event on it) while it keeps serving.
func TestLocalRateLimitPolicyInTheCluster(t *testing.T) {
	lb := meshLab(t)
	ns := lb.NewNamespace(t)
	bad := `apiVersion: policy.meshlet.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: bad}
spec:
  targetRefs: [{group: gateway.networking.k8s.io, kind: Service, name: web}]
  limit: {requests: 0, interval: soon}
`
	out, err := lb.KubectlStdin(bad, "apply", "-n", ns, "-f", "-")
	if err == nil {
		t.Fatalf("the API server accepted a malformed LocalRateLimitPolicy:\n%s", out)
	}
	for _, want := range []string{"spec.limit.requests", "spec.limit.interval", "group"} {
		if !strings.Contains(out, want) {
			t.Errorf("refusal %q does not name %s", out, want)
		}
	}
	md := meshdPod(t, lb)
	metrics := "http://" + md.Status.PodIP + ":15014/metrics"
	warned0 := sumMetric(t, metrics, "meshd_config_warnings_total", "LocalRateLimitPolicy")
	lb.Apply(t, ns, `apiVersion: policy.meshlet.dev/v1alpha1
kind: LocalRateLimitPolicy
metadata: {name: orphan}
spec:
  targetRefs: [{group: "", kind: Service, name: nothing-here}]
  limit: {requests: 10, interval: 1s}
  key: {type: Header, header: x-user}
`)
	lab.WaitFor(t, 30*time.Second, "a Warning event on LocalRateLimitPolicy orphan", func() (bool, error) {
		evs, err := lb.Clientset().CoreV1().Events(ns).List(t.Context(), metav1.ListOptions{FieldSelector: "involvedObject.name=orphan"})
		if err != nil {
			return false, err
		}
		for _, e := range evs.Items {
			if e.Type == corev1.EventTypeWarning && e.Reason == "MeshConfigWarning" && strings.Contains(e.Message, "match no route") {
				return true, nil
			}
		}
		return false, fmt.Errorf("%d events, none the warning", len(evs.Items))
	})
	if d := sumMetric(t, metrics, "meshd_config_warnings_total", "LocalRateLimitPolicy") - warned0; d != 1 {
		t.Errorf("meshd_config_warnings_total{kind=LocalRateLimitPolicy} moved by %v; want 1", d)
	}
}

// TestMeshdRollKeepsIssuingCertificates: while `kubectl rollout restart`
// rolls meshd, pods make their first connection through the mesh one after
// the other, each as a service account of its own, so each needs a
// certificate that its node agent asks meshd for right then. Every one is
// answered: a replica going away hands its callers to the other without a
// failed issuance.
func TestMeshdRollKeepsIssuingCertificates(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	_, url := echoServer(t, lb, ns)
	const n = 24
	var yaml strings.Builder
	for i := range n {
		fmt.Fprintf(&yaml, `apiVersion: v1
kind: ServiceAccount
metadata: {name: roll-%[1]d}
---
apiVersion: v1
kind: Pod
metadata: {name: roll-%[1]d, labels: {app: roll-probe}}
spec:
  serviceAccountName: roll-%[1]d
  containers:
  - name: main
    image: meshlet.dev/echo:latest
    command: [/bin/sh, -c, "exec sleep 3600"]
---
`, i)
	}
	lb.Apply(t, ns, yaml.String())
	lb.WaitPodsReady(t, ns, "app=roll-probe", n, 3*time.Minute)
	before := meshdPods(t, lb)
	if len(before) == 0 {
		t.Fatal("no ready meshd replica")
	}
	// The roll lasts until every old replica is gone, not only until the
	// new ones are ready (what rollout status waits for).
	rolling := func() bool {
		for _, p := range before {
			if _, err := lb.Clientset().CoreV1().Pods(p.Namespace).Get(t.Context(), p.Name, metav1.GetOptions{}); err == nil {
				return true
			}
		}
		return false
	}

	if out, err := lb.Kubectl("-n", "meshlet-system", "rollout", "restart", "deployment/meshd"); err != nil {
		t.Fatalf("rollout restart meshd: %v: %s", err, out)
	}
	var failures []string
	during, i := 0, 0
	for ; i < n; i++ {
		still := rolling()
		if !still && i > during+1 {
			break // two probes after the roll ended
		}
		if still {
			during++
		}
		if ok, out := request(t, lb, ns, fmt.Sprintf("roll-%d", i), url); !ok {
			failures = append(failures, fmt.Sprintf("roll-%d: %s", i, strings.Join(strings.Fields(out), " ")))
		}
		time.Sleep(200 * time.Millisecond)
	}
	t.Logf("%d first connections (each a new certificate), %d of them while meshd rolled: %d failed", i, during, len(failures))
	if len(failures) > 0 {
		t.Errorf("first connections refused while meshd rolled (a certificate not issued): %s", strings.Join(failures, "; "))
	}
	if during < 4 {
		t.Errorf("only %d first connections while meshd rolled: too few to show anything", during)
	}
	if rolling() {
		lab.WaitFor(t, 2*time.Minute, "the old meshd replicas gone", func() (bool, error) { return !rolling(), errors.New("still there") })
	}
}
