package meshtest

import (
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// TestIngressGatewayAPI: a Gateway API Gateway of meshlet's ingress class
// makes meshd deploy an ingress gateway; an HTTPRoute bound to it by
// parentRefs exposes /api/v1/echo of a mesh Service to clients outside the
// mesh — a pod in a plain namespace through the gateway's Service, and the
// machine itself through a node port — while other paths get 404.
func TestIngressGatewayAPI(t *testing.T) {
	lb := meshLab(t)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1)+`---
apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: edge}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: http, port: 8080, protocol: HTTP}
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo-api}
spec:
  parentRefs: [{name: edge}]
  rules:
  - matches: [{path: {type: PathPrefix, value: /api/v1/echo}}]
    backendRefs: [{name: echo, port: 8080}]
`)
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=edge", 1, 3*time.Minute)
	var svcIP string
	var nodePort int32
	lab.WaitFor(t, time.Minute, "the gateway's Service", func() (bool, error) {
		svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "edge", metav1.GetOptions{})
		if err != nil {
			return false, err
		}
		for _, p := range svc.Spec.Ports {
			if p.Port == 8080 {
				svcIP, nodePort = svc.Spec.ClusterIP, p.NodePort
			}
		}
		return svcIP != "" && nodePort != 0, fmt.Errorf("no port 8080 with a node port yet")
	})
	plain := lb.NewNamespace(t)
	outsider := clientPod(t, lb, plain, "outsider", "outsider")
	lab.WaitFor(t, time.Minute, "the route through the gateway from a pod outside the mesh", func() (bool, error) {
		s := summary(t, lb, plain, outsider.Name, "-n", "3", fmt.Sprintf("http://%s:8080/api/v1/echo/list", svcIP))
		return s.ByStatus["200"] == 3, fmt.Errorf("status %v errors %v", s.ByStatus, s.Errors)
	})
	if s := summary(t, lb, plain, outsider.Name, "-n", "1", fmt.Sprintf("http://%s:8080/other", svcIP)); s.ByStatus["404"] != 1 {
		t.Errorf("a path no route matches: %v; want 404", s.ByStatus)
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
}
