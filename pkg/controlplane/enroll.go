package controlplane

import (
	"istio.io/api/label"
	corev1 "k8s.io/api/core/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// Label values Istio defines for ambient mode.
const (
	dataplaneModeAmbient = "ambient"
	dataplaneModeNone    = "none"
	useWaypointNone      = "none"
	// gatewayNameLabel is set by the Gateway API controller on a gateway's own pods and service.
	gatewayNameLabel = "gateway.networking.k8s.io/gateway-name"
)

// enrollment decides whether a pod's traffic is captured, following Istio:
// a pod is in the ambient mesh when it or its namespace carries
// istio.io/dataplane-mode=ambient, unless the pod says istio.io/dataplane-mode=none.
// Host-network pods share the node's network namespace and are never enrolled;
// pods with an Istio sidecar are left to their sidecar; finished pods are not enrolled.
func enrollment(pod *corev1.Pod, ns *corev1.Namespace) (bool, string) {
	podMode := pod.Labels[label.IoIstioDataplaneMode.Name]
	switch {
	case pod.Spec.HostNetwork:
		return false, "pod uses the host network"
	case podMode == dataplaneModeNone:
		return false, "pod label " + label.IoIstioDataplaneMode.Name + "=none"
	case model.RedirectionDisabled(pod.Annotations):
		return false, "pod annotation " + model.AnnotationRedirection + "=" + model.AnnotationRedirectionDisabled
	case pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed:
		return false, "pod has finished (" + string(pod.Status.Phase) + ")"
	case hasSidecar(pod):
		return false, "pod has an istio-proxy sidecar"
	case podMode == dataplaneModeAmbient:
		return true, "pod label " + label.IoIstioDataplaneMode.Name + "=ambient"
	case ns != nil && ns.Labels[label.IoIstioDataplaneMode.Name] == dataplaneModeAmbient:
		return true, "namespace label " + label.IoIstioDataplaneMode.Name + "=ambient"
	case podMode != "":
		return false, "pod label " + label.IoIstioDataplaneMode.Name + "=" + podMode + " is not a known mode"
	default:
		return false, "neither pod nor namespace has " + label.IoIstioDataplaneMode.Name + "=ambient"
	}
}

func hasSidecar(pod *corev1.Pod) bool {
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

// waypointLabel returns the use-waypoint binding an object's labels ask for:
// name and namespace (istio.io/use-waypoint-namespace, else defaultNS), and
// whether the label is present at all. A value of "none" is returned as is.
func waypointLabel(labels map[string]string, defaultNS string) (name, ns string, ok bool) {
	name, ok = labels[label.IoIstioUseWaypoint.Name]
	if !ok || name == "" {
		return "", "", false
	}
	ns = labels[label.IoIstioUseWaypointNamespace.Name]
	if ns == "" {
		ns = defaultNS
	}
	return name, ns, true
}
