// Package enroll decides which pods on this node are in the mesh and keeps
// the node agent's enrollment in step with the Kubernetes API, live: a label
// change on a namespace or a pod enrolls or unenrolls running pods with no
// restart.
//
// A pod is in the mesh when it runs on this node, is not hostNetwork, has no
// Istio sidecar, is not finished, does not carry
// istio.io/dataplane-mode=none, and it or its namespace carries
// istio.io/dataplane-mode=ambient. Its network namespace
// comes from the CNI plugin's report when there is one, else from the
// kubelet's netns dir (/var/run/netns) or /proc: the netns whose interfaces
// hold the pod's IP — for /proc only among processes whose cgroup names the
// pod's UID, so another pod that copies the IP cannot claim the enrollment.
//
// The package decides and calls the Enroll and Unenroll hooks; it must not
// know how a pod is enrolled (datapath maps, listeners, certificates).
package enroll

import (
	"net/netip"
	"slices"

	"k8s.io/apimachinery/pkg/util/intstr"

	"github.com/meshlet/meshlet/node-agent/kube"
	"github.com/meshlet/meshlet/pkg/model"
)

// Label is the dataplane-mode label on namespaces and pods.
const Label = "istio.io/dataplane-mode"

// Label values.
const (
	ModeAmbient = "ambient"
	ModeNone    = "none"
)

// Pod is what enrolling a pod needs to know.
type Pod struct {
	// UID, Namespace and Name identify the pod.
	UID, Namespace, Name string
	// ServiceAccount is the pod's service account (its identity).
	ServiceAccount string
	// Workload is the owning workload's name (Deployment, StatefulSet, …)
	// or the pod's own name.
	Workload string
	// IPs are the pod's addresses.
	IPs []netip.Addr
	// Netns is the path of its network namespace.
	Netns string
	// ProbePorts are the container ports the kubelet probes (HTTP, TCP and
	// gRPC probes), sorted; they stay reachable for the kubelet under STRICT.
	ProbePorts []uint16
	// IfName is the pod's interface in Netns, as the CNI plugin reported
	// it; empty when unknown (eth0 by convention).
	IfName string
	// BypassInbound leaves the pod's inbound plaintext connections to the
	// app, uncaptured (model.AnnotationBypassInbound "true"); its outbound
	// traffic and HBONE inbound stay the mesh's.
	BypassInbound bool
}

// InMesh applies the enrollment rule (see the package doc) to a pod and its
// namespace's labels; node placement and the pod's phase are the caller's.
func InMesh(nsLabels map[string]string, pod *kube.Pod) bool {
	if pod.Spec.HostNetwork || hasSidecar(pod) || model.RedirectionDisabled(pod.Annotations) {
		return false
	}
	switch pod.Labels[Label] {
	case ModeNone:
		return false
	case ModeAmbient:
		return true
	}
	return nsLabels[Label] == ModeAmbient
}

// hasSidecar reports an Istio sidecar (an istio-proxy container or native
// sidecar init container): the pod's traffic is its sidecar's, and its
// ports 15001/15006/15008 are Envoy's. meshd applies the same rule.
func hasSidecar(pod *kube.Pod) bool {
	for _, c := range pod.Spec.Containers {
		if c.Name == model.IstioSidecarContainer {
			return true
		}
	}
	for _, c := range pod.Spec.InitContainers {
		if c.Name == model.IstioSidecarContainer {
			return true
		}
	}
	return false
}

// WorkloadName names the pod's workload for identity and metrics: the
// Deployment behind a ReplicaSet, else the owning controller, else the pod.
func WorkloadName(pod *kube.Pod) string {
	for _, o := range pod.OwnerReferences {
		if o.Controller != nil && *o.Controller {
			return model.WorkloadName(pod.Name, o.Kind, o.Name, pod.Labels["pod-template-hash"])
		}
	}
	return pod.Name
}

// podIPs returns the pod's addresses from its status.
func podIPs(pod *kube.Pod) []netip.Addr {
	var ips []netip.Addr
	for _, ip := range pod.Status.PodIPs {
		if a, err := netip.ParseAddr(ip.IP); err == nil {
			ips = append(ips, a.Unmap())
		}
	}
	if len(ips) == 0 && pod.Status.PodIP != "" {
		if a, err := netip.ParseAddr(pod.Status.PodIP); err == nil {
			ips = append(ips, a.Unmap())
		}
	}
	return ips
}

// ProbePorts returns the ports of the pod's HTTP, TCP and gRPC probes,
// resolving named ports against the container's ports, sorted and unique.
func ProbePorts(pod *kube.Pod) []uint16 {
	var out []uint16
	add := func(p uint16) {
		if p != 0 && !slices.Contains(out, p) {
			out = append(out, p)
		}
	}
	for _, c := range pod.Spec.Containers {
		named := func(port intstr.IntOrString) uint16 {
			if port.Type == intstr.Int {
				return uint16(port.IntVal)
			}
			for _, cp := range c.Ports {
				if cp.Name == port.StrVal {
					return uint16(cp.ContainerPort)
				}
			}
			return 0
		}
		for _, pr := range []*kube.Probe{c.LivenessProbe, c.ReadinessProbe, c.StartupProbe} {
			switch {
			case pr == nil:
			case pr.HTTPGet != nil:
				add(named(pr.HTTPGet.Port))
			case pr.TCPSocket != nil:
				add(named(pr.TCPSocket.Port))
			case pr.GRPC != nil:
				add(uint16(pr.GRPC.Port))
			}
		}
	}
	slices.Sort(out)
	return out
}
