package kube

import (
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/intstr"
)

// The kinds below are the parts of core/v1 and apps/v1 objects the agent
// reads, with the API's JSON field names; the decoder leaves out every
// other field. Linking k8s.io/api/core/v1 for them cost the agent about
// 2 MB of code and its protobuf decoders, paged in on every pod event, on
// every node. TestTypesDecodeCoreJSON holds the field names against
// k8s.io/api's types. A field the agent starts to read is added here.

// Group versions the agent reads.
var (
	CoreV1 = schema.GroupVersion{Version: "v1"}
	AppsV1 = schema.GroupVersion{Group: "apps", Version: "v1"}
)

// Pod phases the agent tells apart.
const (
	PodPending   = "Pending"
	PodRunning   = "Running"
	PodSucceeded = "Succeeded"
	PodFailed    = "Failed"
)

// Pod is a core/v1 Pod: its metadata, and of its spec and status what
// enrollment, identity and kubelet probes need.
type Pod struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              PodSpec   `json:"spec,omitempty"`
	Status            PodStatus `json:"status,omitempty"`
}

// PodSpec is the part of core/v1 PodSpec the agent reads.
type PodSpec struct {
	NodeName           string      `json:"nodeName,omitempty"`
	HostNetwork        bool        `json:"hostNetwork,omitempty"`
	ServiceAccountName string      `json:"serviceAccountName,omitempty"`
	Containers         []Container `json:"containers,omitempty"`
	// InitContainers by name only: an Istio sidecar may run as one.
	InitContainers []NamedContainer `json:"initContainers,omitempty"`
}

// NamedContainer is a container the agent knows by name only.
type NamedContainer struct {
	Name string `json:"name"`
}

// Container is a container's named ports and its probes.
type Container struct {
	Name           string          `json:"name"`
	Ports          []ContainerPort `json:"ports,omitempty"`
	LivenessProbe  *Probe          `json:"livenessProbe,omitempty"`
	ReadinessProbe *Probe          `json:"readinessProbe,omitempty"`
	StartupProbe   *Probe          `json:"startupProbe,omitempty"`
}

// ContainerPort is a container port and its name, for named probe ports.
type ContainerPort struct {
	Name          string `json:"name,omitempty"`
	ContainerPort int32  `json:"containerPort"`
}

// Probe is a kubelet probe's handler: the network ones by their port (an
// exec probe has none of them set).
type Probe struct {
	HTTPGet   *PortAction `json:"httpGet,omitempty"`
	TCPSocket *PortAction `json:"tcpSocket,omitempty"`
	GRPC      *GRPCAction `json:"grpc,omitempty"`
}

// PortAction is an HTTP GET or TCP socket probe's port, a number or the
// name of a container port.
type PortAction struct {
	Port intstr.IntOrString `json:"port"`
}

// GRPCAction is a gRPC probe's port.
type GRPCAction struct {
	Port int32 `json:"port"`
}

// PodStatus is the pod's phase and addresses.
type PodStatus struct {
	Phase  string  `json:"phase,omitempty"`
	PodIP  string  `json:"podIP,omitempty"`
	PodIPs []PodIP `json:"podIPs,omitempty"`
}

// PodIP is one of the pod's addresses.
type PodIP struct {
	IP string `json:"ip"`
}

// PodList is a list of pods.
type PodList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Pod `json:"items"`
}

// Namespace is a core/v1 Namespace: its metadata (labels) only.
type Namespace struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
}

// NamespaceList is a list of namespaces.
type NamespaceList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []Namespace `json:"items"`
}

// Service is a core/v1 Service: its metadata and cluster IP.
type Service struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              ServiceSpec `json:"spec,omitempty"`
}

// ServiceSpec is the service's cluster IP ("None" when headless).
type ServiceSpec struct {
	ClusterIP string `json:"clusterIP,omitempty"`
}

// DaemonSet is an apps/v1 DaemonSet: its metadata (the deletion mark).
type DaemonSet struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
}

// DaemonSetList is a list of daemonsets.
type DaemonSetList struct {
	metav1.TypeMeta `json:",inline"`
	metav1.ListMeta `json:"metadata,omitempty"`
	Items           []DaemonSet `json:"items"`
}

func addKnownTypes(s *runtime.Scheme) {
	s.AddKnownTypes(CoreV1, &Pod{}, &PodList{}, &Namespace{}, &NamespaceList{}, &Service{})
	s.AddKnownTypes(AppsV1, &DaemonSet{}, &DaemonSetList{})
	for _, gv := range []schema.GroupVersion{CoreV1, AppsV1} {
		// ListOptions, WatchEvent, Status and friends, as the generated
		// AddToScheme of each group does.
		metav1.AddToGroupVersion(s, gv)
	}
}

// DeepCopyObject copies the pod (runtime.Object).
func (in *Pod) DeepCopyObject() runtime.Object { return in.DeepCopy() }

// DeepCopy copies the pod.
func (in *Pod) DeepCopy() *Pod {
	if in == nil {
		return nil
	}
	out := &Pod{TypeMeta: in.TypeMeta, Spec: in.Spec, Status: in.Status}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	if in.Spec.Containers != nil {
		out.Spec.Containers = make([]Container, len(in.Spec.Containers))
		for i, c := range in.Spec.Containers {
			c.Ports = append([]ContainerPort(nil), c.Ports...)
			c.LivenessProbe, c.ReadinessProbe, c.StartupProbe = c.LivenessProbe.deepCopy(), c.ReadinessProbe.deepCopy(), c.StartupProbe.deepCopy()
			out.Spec.Containers[i] = c
		}
	}
	out.Spec.InitContainers = append([]NamedContainer(nil), in.Spec.InitContainers...)
	out.Status.PodIPs = append([]PodIP(nil), in.Status.PodIPs...)
	return out
}

func (in *Probe) deepCopy() *Probe {
	if in == nil {
		return nil
	}
	out := &Probe{}
	if in.HTTPGet != nil {
		out.HTTPGet = &PortAction{Port: in.HTTPGet.Port}
	}
	if in.TCPSocket != nil {
		out.TCPSocket = &PortAction{Port: in.TCPSocket.Port}
	}
	if in.GRPC != nil {
		out.GRPC = &GRPCAction{Port: in.GRPC.Port}
	}
	return out
}

// DeepCopyObject copies the list (runtime.Object).
func (in *PodList) DeepCopyObject() runtime.Object {
	out := &PodList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].DeepCopy())
	}
	return out
}

// DeepCopyObject copies the namespace (runtime.Object).
func (in *Namespace) DeepCopyObject() runtime.Object {
	out := &Namespace{TypeMeta: in.TypeMeta}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject copies the list (runtime.Object).
func (in *NamespaceList) DeepCopyObject() runtime.Object {
	out := &NamespaceList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].DeepCopyObject().(*Namespace))
	}
	return out
}

// DeepCopyObject copies the service (runtime.Object).
func (in *Service) DeepCopyObject() runtime.Object {
	out := &Service{TypeMeta: in.TypeMeta, Spec: in.Spec}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject copies the daemonset (runtime.Object).
func (in *DaemonSet) DeepCopyObject() runtime.Object {
	out := &DaemonSet{TypeMeta: in.TypeMeta}
	in.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	return out
}

// DeepCopyObject copies the list (runtime.Object).
func (in *DaemonSetList) DeepCopyObject() runtime.Object {
	out := &DaemonSetList{TypeMeta: in.TypeMeta}
	in.ListMeta.DeepCopyInto(&out.ListMeta)
	for i := range in.Items {
		out.Items = append(out.Items, *in.Items[i].DeepCopyObject().(*DaemonSet))
	}
	return out
}
