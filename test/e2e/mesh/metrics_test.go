package meshtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// TestTCPMetricsCountTheBytesSent: a client in the mesh fetches answers of a
// known size from a pod on the other node, each on its own connection. The
// source node agent's Istio TCP metrics and kernel metrics, and the
// destination node agent's Istio TCP metrics (naming the source workload),
// move by those amounts: at least what was sent, and no more than the HTTP
// framing around it (no double counting).
func TestTCPMetricsCountTheBytesSent(t *testing.T) {
	lb := meshLab(t)
	ns := lb.NewNamespace(t)
	if out, err := lb.Kubectl("label", "namespace", ns, "istio.io/dataplane-mode=ambient"); err != nil {
		t.Fatalf("label namespace: %v: %s", err, out)
	}
	lb.Apply(t, ns, echoDeployment)
	pods := lb.WaitPodsReady(t, ns, "app=echo", 3, 3*time.Minute)
	from := pods[0]
	var to corev1.Pod
	for _, p := range pods {
		if p.Spec.NodeName != from.Spec.NodeName {
			to = p
			break
		}
	}
	if to.Name == "" {
		t.Fatalf("no echo pod on a node other than %s's (%s)", from.Name, from.Spec.NodeName)
	}

	const (
		requests = 3
		size     = 1 << 20 // the echo app's largest answer
		// Per request: the request line and headers one way; the status
		// line, headers and JSON around the payload the other way.
		framing = 4 << 10
	)
	srcMetrics := fmt.Sprintf("http://%s:15020/metrics", from.Status.HostIP)
	dstMetrics := fmt.Sprintf("http://%s:15020/metrics", to.Status.HostIP)
	srcNS := fmt.Sprintf(`source_workload_namespace=%q`, ns)
	dstNS := fmt.Sprintf(`destination_workload_namespace=%q`, ns)
	type reading struct{ srcSent, srcReceived, dstSent, dstReceived, kernelSent, kernelReceived float64 }
	read := func() reading {
		return reading{
			srcSent:        sumMetric(t, srcMetrics, "istio_tcp_received_bytes_total", `reporter="source"`, srcNS, dstNS),
			srcReceived:    sumMetric(t, srcMetrics, "istio_tcp_sent_bytes_total", `reporter="source"`, srcNS, dstNS),
			dstSent:        sumMetric(t, dstMetrics, "istio_tcp_sent_bytes_total", `reporter="destination"`, srcNS, dstNS, `source_workload="echo"`),
			dstReceived:    sumMetric(t, dstMetrics, "istio_tcp_received_bytes_total", `reporter="destination"`, srcNS, dstNS, `source_workload="echo"`),
			kernelSent:     sumMetric(t, srcMetrics, "meshlet_kernel_tcp_bytes_total", fmt.Sprintf(`namespace=%q`, ns), `direction="sent"`),
			kernelReceived: sumMetric(t, srcMetrics, "meshlet_kernel_tcp_bytes_total", fmt.Sprintf(`namespace=%q`, ns), `direction="received"`),
		}
	}
	// Counted from the moment the mesh knows both pods.
	waitTunnelled(t, lb, ns, from, fmt.Sprintf("http://%s:8080/", to.Status.PodIP), ns)
	before := read()
	url := fmt.Sprintf("http://%s:8080/?size=%d", to.Status.PodIP, size)
	// Each request is at least its request line.
	requestLine := float64(requests * len(fmt.Sprintf("GET /?size=%d HTTP/1.1\r\n", size)))
	for range requests {
		out, err := lb.ExecInPod(ns, from.Name, lb.Layout.Bin("echo"), "client", "-json", "-n", "1", "-timeout", "10s", url)
		if err != nil {
			t.Fatalf("request from %s to %s: %v: %s", from.Name, url, err, out)
		}
		var s struct{ OK int }
		if err := json.Unmarshal([]byte(out[strings.Index(out, "{"):]), &s); err != nil || s.OK != 1 {
			t.Fatalf("echo client output %q (%v): want one answered request", out, err)
		}
	}
	// Within [want, want + framing per request].
	within := func(name string, got, want float64) error {
		if got < want || got > want+requests*framing {
			return fmt.Errorf("%s moved by %.0f bytes; want %.0f to %.0f", name, got, want, want+requests*framing)
		}
		return nil
	}
	var last reading
	lab.WaitFor(t, 15*time.Second, "byte counters move by what was sent", func() (bool, error) {
		now := read()
		last = now
		// A closed connection's kernel counters land when the socket is
		// destroyed; the proxies' as the bytes pass.
		for _, c := range []struct {
			name      string
			got, want float64
		}{
			{"source istio_tcp_sent_bytes_total (answers to the client)", now.srcReceived - before.srcReceived, requests * size},
			{"source istio_tcp_received_bytes_total (requests from the client)", now.srcSent - before.srcSent, requestLine},
			{`destination istio_tcp_sent_bytes_total{source_workload="echo"}`, now.dstSent - before.dstSent, requests * size},
			{`destination istio_tcp_received_bytes_total{source_workload="echo"}`, now.dstReceived - before.dstReceived, requestLine},
			{`meshlet_kernel_tcp_bytes_total{direction="received"} on the client's node`, now.kernelReceived - before.kernelReceived, requests * size},
			{`meshlet_kernel_tcp_bytes_total{direction="sent"} on the client's node`, now.kernelSent - before.kernelSent, requestLine},
		} {
			if err := within(c.name, c.got, c.want); err != nil {
				return false, err
			}
		}
		return true, nil
	})
	t.Logf("moved: source sent %.0f received %.0f; destination sent %.0f received %.0f; kernel sent %.0f received %.0f",
		last.srcSent-before.srcSent, last.srcReceived-before.srcReceived, last.dstSent-before.dstSent,
		last.dstReceived-before.dstReceived, last.kernelSent-before.kernelSent, last.kernelReceived-before.kernelReceived)
}
