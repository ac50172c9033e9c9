package main

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/kubernetes"

	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
)

// gatewayNameLabel marks the pods of a Gateway API gateway (and so of an
// Istio waypoint) with the Gateway's name.
const gatewayNameLabel = "gateway.networking.k8s.io/gateway-name"

// access decides who a caller is to meshd: the node agent (by its service
// account) acting for one node, a waypoint (by its pod's gateway label), or
// nobody.
type access struct {
	kube        kubernetes.Interface
	reviewer    *ca.TokenReviewer
	nodeAgentSA string // "<namespace>/<name>"
}

func (a *access) podOf(ctx context.Context, c ca.Caller) (*corev1.Pod, error) {
	if c.PodName == "" {
		return nil, errors.New("token is not bound to a pod: mount a projected service account token")
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pod, err := a.kube.CoreV1().Pods(c.Namespace).Get(ctx, c.PodName, metav1.GetOptions{})
	if err != nil {
		return nil, fmt.Errorf("look up the caller's pod %s/%s: %w", c.Namespace, c.PodName, err)
	}
	return pod, nil
}

// authenticateXDS is the xds.Authenticator.
func (a *access) authenticateXDS(ctx context.Context, token string) (xdsnode.Principal, error) {
	c, err := a.reviewer.Authenticate(ctx, token)
	if err != nil {
		return xdsnode.Principal{}, err
	}
	var pod *corev1.Pod
	if c.NodeName == "" || c.Namespace+"/"+c.ServiceAccount != a.nodeAgentSA {
		if pod, err = a.podOf(ctx, c); err != nil {
			return xdsnode.Principal{}, err
		}
	}
	return principalFor(c, pod, a.nodeAgentSA)
}

// principalFor maps an authenticated caller (and its pod, when looked up)
// to the xDS view it may read.
func principalFor(c ca.Caller, pod *corev1.Pod, nodeAgentSA string) (xdsnode.Principal, error) {
	if c.ServiceAccount == "" {
		return xdsnode.Principal{}, fmt.Errorf("caller %q is not a service account", c.Username)
	}
	if pod != nil && (pod.Namespace != c.Namespace || pod.Spec.ServiceAccountName != c.ServiceAccount) {
		return xdsnode.Principal{}, fmt.Errorf("pod %s/%s does not run as service account %s/%s", pod.Namespace, pod.Name, c.Namespace, c.ServiceAccount)
	}
	if c.Namespace+"/"+c.ServiceAccount == nodeAgentSA {
		node := c.NodeName
		if node == "" && pod != nil {
			node = pod.Spec.NodeName
		}
		if node == "" {
			return xdsnode.Principal{}, fmt.Errorf("node agent %s has no node yet", c.Username)
		}
		return xdsnode.Principal{Role: xdsnode.RoleNodeAgent, Node: node}, nil
	}
	if pod != nil && pod.Labels[gatewayNameLabel] != "" {
		return xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: pod.Namespace, Name: pod.Labels[gatewayNameLabel]}, nil
	}
	return xdsnode.Principal{}, fmt.Errorf("service account %s/%s is neither the node agent's (%s) nor a waypoint's (pod label %s)", c.Namespace, c.ServiceAccount, nodeAgentSA, gatewayNameLabel)
}

// authorizeCSR is the ca.Authorizer: any service account may hold its own
// identity; the node agent may also hold the identity of every service
// account that has a pod scheduled on its node.
func (a *access) authorizeCSR(ctx context.Context, c ca.Caller, id spiffeid.ID) error {
	ns, sa, err := parseIdentityPath(id)
	if err != nil {
		return err
	}
	if c.ServiceAccount != "" && ns == c.Namespace && sa == c.ServiceAccount {
		return nil
	}
	if c.Namespace+"/"+c.ServiceAccount != a.nodeAgentSA {
		return fmt.Errorf("%s may only hold its own identity, not %s", c.Username, id)
	}
	node := c.NodeName
	if node == "" {
		pod, err := a.podOf(ctx, c)
		if err != nil {
			return err
		}
		node = pod.Spec.NodeName
	}
	if node == "" {
		return fmt.Errorf("node agent %s: cannot tell its node", c.Username)
	}
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	pods, err := a.kube.CoreV1().Pods(ns).List(ctx, metav1.ListOptions{FieldSelector: fields.OneTermEqualSelector("spec.nodeName", node).String()})
	if err != nil {
		return fmt.Errorf("list pods of %s on node %s: %w", ns, node, err)
	}
	for _, p := range pods.Items {
		if saOf(&p) == sa && p.Status.Phase != corev1.PodSucceeded && p.Status.Phase != corev1.PodFailed {
			return nil
		}
	}
	return fmt.Errorf("no running pod on node %s uses service account %s/%s", node, ns, sa)
}

func saOf(p *corev1.Pod) string {
	if p.Spec.ServiceAccountName == "" {
		return "default"
	}
	return p.Spec.ServiceAccountName
}

// parseIdentityPath splits /ns/<ns>/sa/<sa>.
func parseIdentityPath(id spiffeid.ID) (ns, sa string, err error) {
	parts := strings.Split(strings.TrimPrefix(id.Path(), "/"), "/")
	if len(parts) != 4 || parts[0] != "ns" || parts[2] != "sa" || parts[1] == "" || parts[3] == "" {
		return "", "", fmt.Errorf("identity %s is not spiffe://<td>/ns/<namespace>/sa/<service-account>", id)
	}
	return parts[1], parts[3], nil
}
