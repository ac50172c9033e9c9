// Package lab runs a real multi-node Kubernetes cluster on one Linux machine
// and gives tests a handle on it.
//
// The cluster is the upstream control plane built from the pinned
// k8s.io/kubernetes module (kube-apiserver, kube-controller-manager,
// kube-scheduler, kube-proxy, kubectl), an embedded etcd, CoreDNS built from
// its Go module, and the lab's own kubelet (package lab/kubelet). A node is a
// network namespace on the lab bridge mlab0; every address is inside
// 198.18.0.0/15 and exists only on links the lab made.
//
// Up starts a detached supervisor process that owns every lab process; Down
// stops it and removes everything recorded in .lab/state.json, then sweeps by
// the mlab / meshlet-lab prefixes so a crashed lab is cleaned up too. Shared,
// NewNamespace, Apply, WaitPodsReady, ExecInPod and PodLogs are the test API.
//
// It must not route lab traffic off the machine, change the root namespace's
// default route or NAT, forward DNS to a real resolver, or stop any process,
// link, namespace or cgroup it did not record or name with its prefixes.
package lab
