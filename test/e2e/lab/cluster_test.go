package labtest

import (
	"context"
	"debug/elf"
	"encoding/json"
	"fmt"
	"net/netip"
	"os"
	"strings"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// echoSummary is the JSON `echo client -json` prints.
type echoSummary struct {
	Requests int            `json:"requests"`
	OK       int            `json:"ok"`
	ByPod    map[string]int `json:"byPod"`
	Errors   map[string]int `json:"errors"`
}

func echoClient(t *testing.T, lb *lab.Lab, ns, pod string, n int, url string) echoSummary {
	t.Helper()
	out, err := lb.ExecInPod(ns, pod, lb.Layout.Bin("echo"), "client", "-json", "-n", fmt.Sprint(n), "-timeout", "5s", url)
	if err != nil {
		t.Fatalf("echo client from %s to %s: %v", pod, url, err)
	}
	var s echoSummary
	if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s); err != nil {
		t.Fatalf("parse echo client output %q: %v", out, err)
	}
	return s
}

// echoNodePort exposes the echo pods on every node's address (issue 2: NodePort
// Services work through the real kube-proxy).
const echoNodePort = `apiVersion: v1
kind: Service
metadata:
  name: echo-nodeport
spec:
  type: NodePort
  selector: {app: echo}
  ports:
  - name: http
    port: 8080
    targetPort: 8080
`

const echoDeployment = `apiVersion: apps/v1
kind: Deployment
metadata:
  name: echo
spec:
  replicas: 3
  selector:
    matchLabels: {app: echo}
  template:
    metadata:
      labels: {app: echo, version: v1}
    spec:
      containers:
      - name: echo
        image: meshlet.dev/echo:latest
        env:
        - name: POD_NAME
          valueFrom: {fieldRef: {fieldPath: metadata.name}}
        - name: POD_NAMESPACE
          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}
        - name: POD_IP
          valueFrom: {fieldRef: {fieldPath: status.podIP}}
        - name: NODE_NAME
          valueFrom: {fieldRef: {fieldPath: spec.nodeName}}
        - name: VERSION
          valueFrom: {fieldRef: {fieldPath: "metadata.labels['version']"}}
        ports:
        - {containerPort: 8080, name: http}
        readinessProbe:
          httpGet: {path: /, port: 8080}
          periodSeconds: 1
---
apiVersion: v1
kind: Service
metadata:
  name: echo
spec:
  selector: {app: echo}
  ports:
  - {name: http, port: 8080, targetPort: 8080}
`

func TestNodesReady(t *testing.T) {
	lb := lab.Shared(t)
	if lb.Started {
		t.Logf("lab up (this process) took %s", lb.UpTime.Round(time.Millisecond))
	}
	// The binaries the lab runs are built as releases are: static, with no
	// program interpreter (meshlet-cni runs on the host, whatever libc
	// it has).
	for _, b := range []string{"meshd", "node-agent", "waypoint", "meshlet-cni"} {
		f, err := elf.Open(lb.Layout.Path("bin", b))
		if err != nil {
			t.Fatal(err)
		}
		for _, p := range f.Progs {
			if p.Type == elf.PT_INTERP {
				t.Errorf("%s is dynamically linked (has a program interpreter); want static (CGO_ENABLED=0, lab.ProductBuildEnv)", b)
			}
		}
		f.Close()
	}
	nodes, err := lb.Clientset().CoreV1().Nodes().List(context.Background(), metav1.ListOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if len(nodes.Items) != 2 {
		t.Fatalf("got %d nodes, want 2", len(nodes.Items))
	}
	cluster := netip.MustParsePrefix(lab.ClusterCIDR)
	seen := map[string]bool{}
	for i, n := range nodes.Items {
		ready := false
		for _, c := range n.Status.Conditions {
			if c.Type == corev1.NodeReady && c.Status == corev1.ConditionTrue {
				ready = true
			}
		}
		if !ready {
			t.Errorf("node %s not Ready: %+v", n.Name, n.Status.Conditions)
		}
		p, err := netip.ParsePrefix(n.Spec.PodCIDR)
		if err != nil || !cluster.Contains(p.Addr()) || p.Bits() != 24 {
			t.Errorf("node %s podCIDR %q: want a /24 inside %s", n.Name, n.Spec.PodCIDR, lab.ClusterCIDR)
		}
		if seen[n.Spec.PodCIDR] {
			t.Errorf("podCIDR %s given to two nodes", n.Spec.PodCIDR)
		}
		seen[n.Spec.PodCIDR] = true
		var internal string
		for _, a := range n.Status.Addresses {
			if a.Type == corev1.NodeInternalIP {
				internal = a.Address
			}
		}
		if want := lab.NodeIP(i + 1); n.Name == lab.NodeName(i+1) && internal != want {
			t.Errorf("node %s InternalIP %q, want %s", n.Name, internal, want)
		}
	}
	t.Logf("lab memory (RSS of lab processes): %d MiB", labRSS(t)/1024)
}

// labRSS sums VmRSS (KiB) of the supervisor and every recorded process.
func labRSS(t *testing.T) int {
	t.Helper()
	b, err := os.ReadFile(lab.Shared(t).Layout.StateFile())
	if err != nil {
		return 0
	}
	var st struct {
		Supervisor int                 `json:"supervisor"`
		Processes  map[string]lab.Proc `json:"processes"`
	}
	if json.Unmarshal(b, &st) != nil {
		return 0
	}
	pids := []int{st.Supervisor}
	for _, p := range st.Processes {
		pids = append(pids, p.Pid)
	}
	total := 0
	for _, pid := range pids {
		status, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
		if err != nil {
			continue
		}
		for _, line := range strings.Split(string(status), "\n") {
			var kb int
			if _, err := fmt.Sscanf(line, "VmRSS: %d kB", &kb); err == nil {
				total += kb
			}
		}
	}
	return total
}

func TestEchoDeploymentAcrossNodes(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	start := time.Now()
	lb.Apply(t, ns, echoDeployment)
	pods := lb.WaitPodsReady(t, ns, "app=echo", 3, 3*time.Minute)
	t.Logf("3 echo pods Ready %s after apply", time.Since(start).Round(time.Millisecond))

	byNode := map[string][]corev1.Pod{}
	for _, p := range pods {
		byNode[p.Spec.NodeName] = append(byNode[p.Spec.NodeName], p)
	}
	if len(byNode) != 2 {
		t.Fatalf("echo pods on nodes %v, want both nodes used", keys(byNode))
	}

	t.Run("EndpointSlices", func(t *testing.T) {
		want := map[string]bool{}
		for _, p := range pods {
			want[p.Status.PodIP] = true
		}
		lab.WaitFor(t, time.Minute, "3 ready endpoints of service echo", func() (bool, error) {
			slices, err := lb.Clientset().DiscoveryV1().EndpointSlices(ns).List(context.Background(), metav1.ListOptions{LabelSelector: discoveryv1.LabelServiceName + "=echo"})
			if err != nil {
				return false, err
			}
			got := map[string]bool{}
			for _, s := range slices.Items {
				for _, e := range s.Endpoints {
					if e.Conditions.Ready != nil && *e.Conditions.Ready {
						for _, a := range e.Addresses {
							got[a] = true
						}
					}
				}
			}
			if len(got) != len(want) {
				return false, fmt.Errorf("ready endpoints %v, want %v", got, want)
			}
			for a := range want {
				if !got[a] {
					return false, fmt.Errorf("ready endpoints %v miss %s", got, a)
				}
			}
			return true, nil
		})
	})

	var nodes []string
	for n := range byNode {
		nodes = append(nodes, n)
	}
	from, to := byNode[nodes[0]][0], byNode[nodes[1]][0]

	t.Run("PodToPodAcrossNodes", func(t *testing.T) {
		s := echoClient(t, lb, ns, from.Name, 3, fmt.Sprintf("http://%s:8080/", to.Status.PodIP))
		if s.OK != 3 || s.ByPod[to.Name] != 3 {
			t.Fatalf("%s -> %s (%s): %+v, want 3 answers from %s", from.Name, to.Name, to.Status.PodIP, s, to.Name)
		}
	})

	svc, err := lb.Clientset().CoreV1().Services(ns).Get(context.Background(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Run("PodToClusterIP", func(t *testing.T) {
		// kube-proxy balances connections, and one client keeps its
		// connection alive, so each round runs fresh clients; kube-proxy
		// programs new endpoints within a sync period or two.
		start := time.Now()
		url := fmt.Sprintf("http://%s:8080/", svc.Spec.ClusterIP)
		lab.WaitFor(t, time.Minute, "12 of 12 connections to the ClusterIP answered, by more than one pod", func() (bool, error) {
			byPod := map[string]int{}
			for range 12 {
				s := echoClient(t, lb, ns, from.Name, 1, url)
				if s.OK != 1 {
					return false, fmt.Errorf("ClusterIP %s: %+v", svc.Spec.ClusterIP, s)
				}
				for p, n := range s.ByPod {
					byPod[p] += n
				}
			}
			return len(byPod) >= 2, fmt.Errorf("ClusterIP %s answered only by %v", svc.Spec.ClusterIP, byPod)
		})
		t.Logf("ClusterIP answered by more than one pod %s after the pods were Ready", time.Since(start).Round(time.Millisecond))
	})

	t.Run("NodePort", func(t *testing.T) {
		lb.Apply(t, ns, echoNodePort)
		np, err := lb.Clientset().CoreV1().Services(ns).Get(context.Background(), "echo-nodeport", metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		port := np.Spec.Ports[0].NodePort
		// Every node answers on its own address, whichever node the pod
		// that serves it runs on (kube-proxy forwards and SNATs).
		for _, node := range nodes {
			n, err := lb.Clientset().CoreV1().Nodes().Get(context.Background(), node, metav1.GetOptions{})
			if err != nil {
				t.Fatal(err)
			}
			var ip string
			for _, a := range n.Status.Addresses {
				if a.Type == corev1.NodeInternalIP {
					ip = a.Address
				}
			}
			url := fmt.Sprintf("http://%s:%d/", ip, port)
			lab.WaitFor(t, time.Minute, "NodePort "+url+" answers from pod "+from.Name, func() (bool, error) {
				out, err := lb.ExecInPod(ns, from.Name, lb.Layout.Bin("echo"), "client", "-json", "-n", "1", "-timeout", "5s", url)
				if err != nil {
					return false, fmt.Errorf("echo client to %s: %v: %s", url, err, out)
				}
				var s echoSummary
				if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s); err != nil {
					return false, fmt.Errorf("parse echo client output %q: %v", out, err)
				}
				return s.OK == 1, fmt.Errorf("NodePort %s: %+v", url, s)
			})
		}
	})

	t.Run("DNS", func(t *testing.T) {
		for _, name := range []string{"echo", "echo." + ns, "echo." + ns + ".svc.cluster.local"} {
			s := echoClient(t, lb, ns, from.Name, 2, "http://"+name+":8080/")
			if s.OK != 2 {
				t.Errorf("requests to %s: %+v", name, s)
			}
		}
		out, err := lb.ExecInPod(ns, from.Name, "getent", "hosts", "echo."+ns+".svc.cluster.local")
		if err != nil || !strings.Contains(out, svc.Spec.ClusterIP) {
			t.Errorf("resolve echo.%s.svc.cluster.local: %q %v, want %s", ns, out, err, svc.Spec.ClusterIP)
		}
		// Cluster DNS has no upstream: outside names do not resolve.
		if out, err := lb.ExecInPod(ns, from.Name, "getent", "hosts", "example.com"); err == nil {
			t.Errorf("example.com resolved inside the lab (%q); cluster DNS must not forward outside", out)
		}
	})

	t.Run("PodLogs", func(t *testing.T) {
		logs, err := lb.PodLogs(ns, to.Name, "echo")
		if err != nil {
			t.Fatal(err)
		}
		// The echo app logs its identity (from the downward API) at start.
		if want := fmt.Sprintf("echo %s/%s version \"v1\"", ns, to.Name); !strings.Contains(logs, want) {
			t.Errorf("log of %s = %q, want it to contain %q", to.Name, logs, want)
		}
	})
}

func keys[V any](m map[string]V) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}

func TestDaemonSetOnePodPerNode(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	lb.Apply(t, ns, `apiVersion: apps/v1
kind: DaemonSet
metadata:
  name: ds
spec:
  selector:
    matchLabels: {app: ds}
  template:
    metadata:
      labels: {app: ds}
    spec:
      containers:
      - name: echo
        image: meshlet.dev/echo
        readinessProbe:
          tcpSocket: {port: 8080}
          periodSeconds: 1
`)
	pods := lb.WaitPodsReady(t, ns, "app=ds", 2, 3*time.Minute)
	seen := map[string]int{}
	for _, p := range pods {
		seen[p.Spec.NodeName]++
	}
	for i := 1; i <= 2; i++ {
		if seen[lab.NodeName(i)] != 1 {
			t.Errorf("DaemonSet pods per node %v, want one on each of lab-node-1 and lab-node-2", seen)
		}
	}
}

func TestPodDeleteCleansUp(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: p
  labels: {app: p}
spec:
  terminationGracePeriodSeconds: 5
  containers:
  - name: echo
    image: meshlet.dev/echo
`)
	lb.WaitPodsReady(t, ns, "app=p", 1, 2*time.Minute)
	rec, err := lb.PodRecord(ns, "p")
	if err != nil {
		t.Fatal(err)
	}
	pid := rec.Containers["echo"].Pid
	if _, err := os.Stat(fmt.Sprintf("/proc/%d", pid)); err != nil {
		t.Fatalf("container process %d not running: %v", pid, err)
	}
	if err := lb.Clientset().CoreV1().Pods(ns).Delete(context.Background(), "p", metav1.DeleteOptions{}); err != nil {
		t.Fatal(err)
	}
	lab.WaitFor(t, time.Minute, "pod p gone from the API", func() (bool, error) {
		_, err := lb.Clientset().CoreV1().Pods(ns).Get(context.Background(), "p", metav1.GetOptions{})
		return err != nil, err
	})
	lab.WaitFor(t, 30*time.Second, "pod p's process, netns, cgroup and record removed", func() (bool, error) {
		for what, path := range map[string]string{"process": fmt.Sprintf("/proc/%d/cmdline", pid), "netns": rec.Netns, "cgroup": rec.Cgroup} {
			if _, err := os.Stat(path); err == nil {
				return false, fmt.Errorf("%s %s still there", what, path)
			}
		}
		if _, err := lb.PodRecord(ns, "p"); err == nil {
			return false, fmt.Errorf("pod record still there")
		}
		return true, nil
	})
}

func TestBadInputs(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	lb.Apply(t, ns, `apiVersion: v1
kind: Pod
metadata:
  name: unknown-image
spec:
  containers:
  - name: c
    image: example.com/no-such-image:1.0
---
apiVersion: v1
kind: Pod
metadata:
  name: exits
spec:
  containers:
  - name: c
    image: meshlet.dev/echo
    command: ["false"]
---
apiVersion: v1
kind: Pod
metadata:
  name: bad-probe
spec:
  containers:
  - name: c
    image: meshlet.dev/echo
    readinessProbe:
      httpGet: {path: /, port: 9999}
      periodSeconds: 1
`)
	get := func(name string) (*corev1.Pod, error) {
		return lb.Clientset().CoreV1().Pods(ns).Get(context.Background(), name, metav1.GetOptions{})
	}
	t.Run("UnknownImage", func(t *testing.T) {
		lab.WaitFor(t, time.Minute, "ErrImagePull naming the image and the image table", func() (bool, error) {
			p, err := get("unknown-image")
			if err != nil {
				return false, err
			}
			for _, cs := range p.Status.ContainerStatuses {
				if w := cs.State.Waiting; w != nil && w.Reason == "ErrImagePull" &&
					strings.Contains(w.Message, "example.com/no-such-image") && strings.Contains(w.Message, "images.json") {
					return true, nil
				}
			}
			return false, fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
		})
	})
	t.Run("ExitingCommandRestarts", func(t *testing.T) {
		lab.WaitFor(t, 2*time.Minute, "restarts of a container that exits 1", func() (bool, error) {
			p, err := get("exits")
			if err != nil {
				return false, err
			}
			for _, cs := range p.Status.ContainerStatuses {
				if cs.RestartCount >= 1 && !cs.Ready {
					return true, nil
				}
			}
			return false, fmt.Errorf("statuses %+v", p.Status.ContainerStatuses)
		})
	})
	t.Run("FailingProbeNeverReady", func(t *testing.T) {
		lab.WaitFor(t, time.Minute, "bad-probe running", func() (bool, error) {
			p, err := get("bad-probe")
			if err != nil {
				return false, err
			}
			return p.Status.Phase == corev1.PodRunning, fmt.Errorf("phase %s", p.Status.Phase)
		})
		time.Sleep(5 * time.Second)
		p, err := get("bad-probe")
		if err != nil {
			t.Fatal(err)
		}
		if lab.PodReady(p) {
			t.Fatalf("pod with a readiness probe on a closed port is Ready")
		}
	})
}

func TestServiceAccountTokenReview(t *testing.T) {
	lb := lab.Shared(t)
	ns := lb.NewNamespace(t)
	ctx := context.Background()
	cs := lb.Clientset()
	lab.WaitFor(t, time.Minute, "default service account", func() (bool, error) {
		_, err := cs.CoreV1().ServiceAccounts(ns).Get(ctx, "default", metav1.GetOptions{})
		return err == nil, err
	})
	tr, err := cs.CoreV1().ServiceAccounts(ns).CreateToken(ctx, "default", &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{"meshlet-test"}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("request a service account token: %v", err)
	}
	tests := []struct {
		name     string // test case
		token    string // token to review
		audience string // audience the reviewer expects
		wantAuth bool   // authenticated
	}{
		{"issued token, its audience", tr.Status.Token, "meshlet-test", true},
		{"issued token, other audience", tr.Status.Token, "someone-else", false},
		{"tampered token", tr.Status.Token[:len(tr.Status.Token)-4] + "AAAA", "meshlet-test", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rev, err := cs.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
				Spec: authenticationv1.TokenReviewSpec{Token: tt.token, Audiences: []string{tt.audience}},
			}, metav1.CreateOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if rev.Status.Authenticated != tt.wantAuth {
				t.Fatalf("authenticated=%v (%s), want %v", rev.Status.Authenticated, rev.Status.Error, tt.wantAuth)
			}
			if want := "system:serviceaccount:" + ns + ":default"; tt.wantAuth && rev.Status.User.Username != want {
				t.Errorf("user %q, want %q", rev.Status.User.Username, want)
			}
		})
	}
}
