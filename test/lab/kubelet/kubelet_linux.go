package kubelet

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net"
	"os"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
	coordinationv1 "k8s.io/api/coordination/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/api/resource"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/tools/clientcmd"
)

// kubeletVersion is what the Node reports; the control plane is v1.37.
const kubeletVersion = "v1.37.2-lab"

// heartbeat is how often the node's Lease and Ready condition are renewed.
const heartbeat = 10 * time.Second

type kubelet struct {
	cfg    Config
	client kubernetes.Interface
	cni    *cniNet
	log    *log.Logger

	cniMu    sync.Mutex
	cniReady chan struct{} // closed once plugins are installed and the conflist exists
	cniErr   error         // why plugins could not be installed
	binsDone bool
	confDone bool

	mu      sync.Mutex
	workers map[types.UID]*podWorker
	routes  map[string]string // node name -> pod CIDR routed via it
	wg      sync.WaitGroup
}

func (k *kubelet) logf(format string, args ...any) { k.log.Printf(format, args...) }

// Run registers the node and runs its pods until ctx is done, then stops every
// pod (SIGTERM, a grace period of at most 10s, SIGKILL), removes their
// network namespaces, cgroups and records, and returns.
func Run(ctx context.Context, cfg Config) error {
	cfg, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	if err := sameMountNSAsParent(); err != nil {
		return err
	}
	k := &kubelet{cfg: cfg, cniReady: make(chan struct{}), workers: map[types.UID]*podWorker{}, routes: map[string]string{},
		log: log.New(os.Stderr, "kubelet "+cfg.NodeName+": ", log.LstdFlags|log.Lmicroseconds)}
	if err := k.prepareDirs(); err != nil {
		return err
	}
	rc, err := clientcmd.BuildConfigFromFlags("", cfg.Kubeconfig)
	if err != nil {
		return fmt.Errorf("load node kubeconfig %s: %w", cfg.Kubeconfig, err)
	}
	rc.QPS, rc.Burst = 50, 100
	rc.UserAgent = "lab-kubelet/" + cfg.NodeName
	k.client, err = kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("make API client: %w", err)
	}
	k.cni = newCNINet(cfg.CNIConfDir, cfg.CNIBinDir, filepath.Join(cfg.NodeRoot, "var/lib/cni/cache"))
	k.cleanStale()

	go k.installPlugins(ctx)
	if err := k.serveAPI(ctx); err != nil {
		return err
	}
	if err := k.registerNode(ctx); err != nil {
		return err
	}
	k.wg.Add(1)
	go func() { defer k.wg.Done(); k.heartbeatLoop(ctx) }()

	// Our own Node (always readable by its kubelet) for the pod CIDR.
	ownInf := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("metadata.name", cfg.NodeName).String()
	}))
	ownInf.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.nodeChanged(o.(*corev1.Node)) },
		UpdateFunc: func(_, o any) { k.nodeChanged(o.(*corev1.Node)) },
	})
	// Every Node, for the routes to their pod CIDRs; the node authorizer of
	// v1.37 lets a node read only its own Node, so this needs RBAC (list and
	// watch nodes for the group system:nodes), which the lab grants.
	nodeInf := informers.NewSharedInformerFactory(k.client, 0)
	nodeInf.Core().V1().Nodes().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.nodeChanged(o.(*corev1.Node)) },
		UpdateFunc: func(_, o any) { k.nodeChanged(o.(*corev1.Node)) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if n, ok := o.(*corev1.Node); ok {
				k.nodeGone(n.Name)
			}
		},
	})
	podInf := informers.NewSharedInformerFactoryWithOptions(k.client, 0, informers.WithTweakListOptions(func(o *metav1.ListOptions) {
		o.FieldSelector = fields.OneTermEqualSelector("spec.nodeName", cfg.NodeName).String()
	}))
	podInf.Core().V1().Pods().Informer().AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(o any) { k.podChanged(ctx, o.(*corev1.Pod)) },
		UpdateFunc: func(_, o any) { k.podChanged(ctx, o.(*corev1.Pod)) },
		DeleteFunc: func(o any) {
			if d, ok := o.(cache.DeletedFinalStateUnknown); ok {
				o = d.Obj
			}
			if p, ok := o.(*corev1.Pod); ok {
				k.podGone(p)
			}
		},
	})
	stop := make(chan struct{})
	ownInf.Start(stop)
	podInf.Start(stop)
	k.wg.Add(1)
	go func() { defer k.wg.Done(); k.startRoutes(ctx, nodeInf, stop) }()
	k.logf("registered node %s (%s); running pods", cfg.NodeName, cfg.NodeIP)

	<-ctx.Done()
	close(stop)
	ownInf.Shutdown()
	podInf.Shutdown()
	k.logf("stopping: ending every pod")
	k.mu.Lock()
	var workers []*podWorker
	for _, w := range k.workers {
		workers = append(workers, w)
	}
	k.mu.Unlock()
	for _, w := range workers {
		w.stop(min(w.graceOf(), stopGraceMax), true)
	}
	for _, w := range workers {
		<-w.done
	}
	k.wg.Wait()
	k.removeRoutes()
	return nil
}

// prepareDirs creates the node's directories and mounts its bpffs.
func (k *kubelet) prepareDirs() error {
	c := k.cfg
	for _, d := range []string{c.CNIConfDir, c.CNIBinDir, c.LogDir, c.CgroupRoot,
		filepath.Join(c.NodeRoot, "var/run/netns"), filepath.Join(c.NodeRoot, "var/run/meshlet"),
		filepath.Join(c.NodeRoot, "var/lib/kubelet/pods"), filepath.Join(c.NodeRoot, "pods"),
		filepath.Join(c.NodeRoot, "sys/fs/bpf")} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return fmt.Errorf("create node directory %s: %w", d, err)
		}
	}
	// The node's netns dir is a shared mount, as containerd makes /run/netns:
	// a pod netns pinned here later then propagates into containers that
	// mount the dir with mountPropagation HostToContainer (the node agent's
	// hostPath /var/run/netns); without it they see only empty files.
	netns := filepath.Join(c.NodeRoot, "var/run/netns")
	if !isMountPoint(netns) {
		if err := unix.Mount(netns, netns, "", unix.MS_BIND, ""); err != nil {
			return fmt.Errorf("bind-mount the node's netns dir %s onto itself: %w", netns, err)
		}
	}
	if err := unix.Mount("", netns, "", unix.MS_SHARED, ""); err != nil {
		return fmt.Errorf("make the node's netns dir %s a shared mount: %w", netns, err)
	}
	bpf := filepath.Join(c.NodeRoot, "sys/fs/bpf")
	if !isMountOf(bpf, "bpf") {
		if err := unix.Mount("bpffs-"+c.NodeName, bpf, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount the node's bpffs at %s: %w", bpf, err)
		}
	}
	return nil
}

// isMountPoint reports whether dir is a mount point of any filesystem type.
func isMountPoint(dir string) bool { return isMountOf(dir, "") }

// isMountOf reports whether dir is a mount point of filesystem type fstype
// (any type when fstype is empty).
func isMountOf(dir, fstype string) bool {
	f, err := os.Open("/proc/self/mounts")
	if err != nil {
		return false
	}
	defer f.Close()
	s := bufio.NewScanner(f)
	for s.Scan() {
		fs := strings.Fields(s.Text())
		if len(fs) >= 3 && fs[1] == dir && (fstype == "" || fs[2] == fstype) {
			return true
		}
	}
	return false
}

// cleanStale removes what a previous kubelet of this node left behind after
// a crash: its pods' processes, network namespaces, cgroups and records.
func (k *kubelet) cleanStale() {
	for path, r := range readRecords(k.cfg.NodeRoot) {
		k.logf("removing pod %s/%s left by a previous run", r.Namespace, r.Name)
		if r.Cgroup != "" && strings.HasPrefix(r.Cgroup, k.cfg.CgroupRoot+"/") {
			removeCgroup(r.Cgroup)
		}
		if r.Netns != "" && strings.HasPrefix(r.Netns, k.cfg.NodeRoot+"/") {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			k.cni.del(ctx, r.Namespace, r.Name, r.UID, r.SandboxID, r.Netns)
			cancel()
			removeNetns(r.Netns)
		}
		os.Remove(path)
	}
	// Pod cgroups without a record.
	entries, _ := os.ReadDir(k.cfg.CgroupRoot)
	for _, e := range entries {
		if e.IsDir() && strings.HasPrefix(e.Name(), "pod") {
			removeCgroup(filepath.Join(k.cfg.CgroupRoot, e.Name()))
		}
	}
}

// installPlugins builds and installs the CNI plugins.
func (k *kubelet) installPlugins(ctx context.Context) {
	wd, _ := os.Getwd()
	exe, _ := os.Executable()
	mod, err := findTestModule(k.cfg.NodeRoot, wd, filepath.Dir(exe))
	if err == nil {
		cacheDir := filepath.Join(filepath.Dir(mod), ".lab", "cache", "cni-plugins")
		err = installCNIPlugins(ctx, mod, cacheDir, k.cfg.CNIBinDir)
	}
	k.cniMu.Lock()
	defer k.cniMu.Unlock()
	if err != nil {
		k.cniErr = fmt.Errorf("install CNI plugins: %w", err)
		k.logf("%v", k.cniErr)
		return
	}
	k.binsDone = true
	k.maybeCNIReady()
}

// maybeCNIReady closes cniReady once plugins and config are in place;
// k.cniMu is held.
func (k *kubelet) maybeCNIReady() {
	if k.binsDone && k.confDone {
		select {
		case <-k.cniReady:
		default:
			close(k.cniReady)
		}
	}
}

// waitCNI waits until pods can be networked.
func (k *kubelet) waitCNI(ctx context.Context, stop <-chan struct{}) error {
	select {
	case <-k.cniReady:
		return nil
	default:
	}
	k.cniMu.Lock()
	err := k.cniErr
	k.cniMu.Unlock()
	if err != nil {
		return err
	}
	select {
	case <-k.cniReady:
		return nil
	case <-time.After(time.Minute):
		return fmt.Errorf("node network not ready: waiting for the CNI plugins to be built and for node.spec.podCIDR (kube-controller-manager --allocate-node-cidrs)")
	case <-ctx.Done():
		return ctx.Err()
	case <-stop:
		return errors.New("pod stopped")
	}
}

// nodeChanged writes the CNI config for our pod CIDR, and routes other
// nodes' pod CIDRs via their InternalIP.
func (k *kubelet) nodeChanged(n *corev1.Node) {
	if n.Name == k.cfg.NodeName {
		if n.Spec.PodCIDR == "" {
			return
		}
		k.cniMu.Lock()
		defer k.cniMu.Unlock()
		if k.confDone {
			return
		}
		wrote, err := writeConflist(k.cfg.CNIConfDir, n.Spec.PodCIDR, filepath.Join(k.cfg.NodeRoot, "var/lib/cni/networks"))
		if err != nil {
			k.logf("%v", err)
			return
		}
		if wrote {
			k.logf("pod CIDR %s: wrote %s", n.Spec.PodCIDR, filepath.Join(k.cfg.CNIConfDir, conflistName))
		}
		k.confDone = true
		k.maybeCNIReady()
		return
	}
	var ip string
	for _, a := range n.Status.Addresses {
		if a.Type == corev1.NodeInternalIP {
			ip = a.Address
		}
	}
	if n.Spec.PodCIDR == "" || ip == "" {
		return
	}
	_, dst, err := net.ParseCIDR(n.Spec.PodCIDR)
	gw := net.ParseIP(ip)
	if err != nil || gw == nil {
		return
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.routes[n.Name] == n.Spec.PodCIDR {
		return
	}
	if err := netlink.RouteReplace(&netlink.Route{Dst: dst, Gw: gw}); err != nil {
		k.logf("route %s via %s (node %s): %v", dst, gw, n.Name, err)
		return
	}
	k.routes[n.Name] = n.Spec.PodCIDR
}

// startRoutes starts the all-nodes informer once the node may list Nodes,
// checking every 30s and saying once, in words, what is missing.
func (k *kubelet) startRoutes(ctx context.Context, inf informers.SharedInformerFactory, stop <-chan struct{}) {
	defer inf.Shutdown()
	warned := false
	for {
		_, err := k.client.CoreV1().Nodes().List(ctx, metav1.ListOptions{Limit: 1})
		if err == nil {
			inf.Start(stop)
			<-stop
			return
		}
		if !warned && apierrors.IsForbidden(err) {
			k.logf("cannot list Nodes (%v): pods on other nodes stay unreachable until system:nodes may get, list and watch nodes (ClusterRoleBinding); retrying every 30s", err)
			warned = true
		}
		if !sleepCtx(ctx, 30*time.Second) {
			return
		}
	}
}

func (k *kubelet) nodeGone(name string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	if cidr, ok := k.routes[name]; ok {
		if _, dst, err := net.ParseCIDR(cidr); err == nil {
			netlink.RouteDel(&netlink.Route{Dst: dst})
		}
		delete(k.routes, name)
	}
}

func (k *kubelet) removeRoutes() {
	k.mu.Lock()
	names := make([]string, 0, len(k.routes))
	for n := range k.routes {
		names = append(names, n)
	}
	k.mu.Unlock()
	for _, n := range names {
		k.nodeGone(n)
	}
}

// podChanged starts a worker for a new pod or hands it the newer version.
func (k *kubelet) podChanged(ctx context.Context, pod *corev1.Pod) {
	k.mu.Lock()
	w, ok := k.workers[pod.UID]
	if !ok {
		if ctx.Err() != nil {
			k.mu.Unlock()
			return
		}
		if pod.Status.Phase == corev1.PodSucceeded || pod.Status.Phase == corev1.PodFailed {
			k.mu.Unlock()
			if pod.DeletionTimestamp != nil {
				k.deleteNow(pod)
			}
			return
		}
		w = newPodWorker(k, pod)
		k.workers[pod.UID] = w
		k.mu.Unlock()
		if pod.DeletionTimestamp != nil {
			w.update(pod)
		}
		go func() {
			w.run(ctx)
			k.mu.Lock()
			delete(k.workers, pod.UID)
			k.mu.Unlock()
		}()
		return
	}
	k.mu.Unlock()
	w.update(pod)
}

// podGone ends a pod that disappeared from the API server.
func (k *kubelet) podGone(pod *corev1.Pod) {
	k.mu.Lock()
	w, ok := k.workers[pod.UID]
	k.mu.Unlock()
	if ok {
		w.stop(0, true)
	}
}

func (k *kubelet) deleteNow(pod *corev1.Pod) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	zero := int64(0)
	k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID}})
}

// envSources reads ConfigMaps and Secrets from the API server.
func (k *kubelet) envSources(ctx context.Context) envSources {
	return envSources{
		configMap: func(ns, name string) (map[string]string, error) {
			cm, err := k.client.CoreV1().ConfigMaps(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			out := map[string]string{}
			for k, v := range cm.Data {
				out[k] = v
			}
			for k, v := range cm.BinaryData {
				out[k] = string(v)
			}
			return out, nil
		},
		secret: func(ns, name string) (map[string][]byte, error) {
			s, err := k.client.CoreV1().Secrets(ns).Get(ctx, name, metav1.GetOptions{})
			if err != nil {
				return nil, err
			}
			return s.Data, nil
		},
	}
}

// memTotal reads the machine's memory from /proc/meminfo.
func memTotal() resource.Quantity {
	b, _ := os.ReadFile("/proc/meminfo")
	for _, l := range strings.Split(string(b), "\n") {
		if f := strings.Fields(l); len(f) >= 2 && f[0] == "MemTotal:" {
			if kb, err := strconv.ParseInt(f[1], 10, 64); err == nil {
				return *resource.NewQuantity(kb*1024, resource.BinarySI)
			}
		}
	}
	return resource.MustParse("4Gi")
}

func kernelVersion() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

// nodeStatus is the node's status as of now.
func (k *kubelet) nodeStatus() corev1.NodeStatus {
	now := metav1.Now()
	res := corev1.ResourceList{
		corev1.ResourceCPU:              *resource.NewQuantity(int64(runtime.NumCPU()), resource.DecimalSI),
		corev1.ResourceMemory:           memTotal(),
		corev1.ResourcePods:             resource.MustParse("110"),
		corev1.ResourceEphemeralStorage: resource.MustParse("20Gi"),
	}
	cond := func(t corev1.NodeConditionType, s corev1.ConditionStatus, reason, msg string) corev1.NodeCondition {
		return corev1.NodeCondition{Type: t, Status: s, Reason: reason, Message: msg, LastHeartbeatTime: now, LastTransitionTime: now}
	}
	boot, _ := os.ReadFile("/proc/sys/kernel/random/boot_id")
	return corev1.NodeStatus{
		Capacity:    res,
		Allocatable: res,
		Conditions: []corev1.NodeCondition{
			cond(corev1.NodeMemoryPressure, corev1.ConditionFalse, "KubeletHasSufficientMemory", "kubelet has sufficient memory available"),
			cond(corev1.NodeDiskPressure, corev1.ConditionFalse, "KubeletHasNoDiskPressure", "kubelet has no disk pressure"),
			cond(corev1.NodePIDPressure, corev1.ConditionFalse, "KubeletHasSufficientPID", "kubelet has sufficient PID available"),
			cond(corev1.NodeReady, corev1.ConditionTrue, "KubeletReady", "lab kubelet is posting ready status"),
		},
		Addresses: []corev1.NodeAddress{
			{Type: corev1.NodeInternalIP, Address: k.cfg.NodeIP},
			{Type: corev1.NodeHostName, Address: k.cfg.NodeName},
		},
		DaemonEndpoints: corev1.NodeDaemonEndpoints{KubeletEndpoint: corev1.DaemonEndpoint{Port: APIPort}},
		NodeInfo: corev1.NodeSystemInfo{
			MachineID: k.cfg.NodeName, SystemUUID: k.cfg.NodeName, BootID: strings.TrimSpace(string(boot)),
			KernelVersion: kernelVersion(), OSImage: "meshlet lab node", ContainerRuntimeVersion: "lab://" + kubeletVersion,
			KubeletVersion: kubeletVersion, OperatingSystem: "linux", Architecture: runtime.GOARCH,
		},
	}
}

// registerNode creates the Node (or takes over an existing one) and posts
// its status.
func (k *kubelet) registerNode(ctx context.Context) error {
	node := &corev1.Node{
		ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Labels: map[string]string{
			"kubernetes.io/hostname": k.cfg.NodeName, "kubernetes.io/os": "linux", "kubernetes.io/arch": runtime.GOARCH,
			"beta.kubernetes.io/os": "linux", "beta.kubernetes.io/arch": runtime.GOARCH,
		}},
	}
	var err error
	for attempt := 0; attempt < 60; attempt++ {
		_, err = k.client.CoreV1().Nodes().Create(ctx, node, metav1.CreateOptions{})
		if err == nil || apierrors.IsAlreadyExists(err) {
			err = k.postNodeStatus(ctx)
			if err == nil {
				return nil
			}
		}
		k.logf("register node: %v (retrying)", err)
		if !sleepCtx(ctx, time.Second) {
			break
		}
	}
	return fmt.Errorf("register node %s with the API server: %w", k.cfg.NodeName, err)
}

func (k *kubelet) postNodeStatus(ctx context.Context) error {
	st := k.nodeStatus()
	// Keep transition times of unchanged conditions.
	if old, err := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{}); err == nil {
		for i := range st.Conditions {
			for _, oc := range old.Status.Conditions {
				if oc.Type == st.Conditions[i].Type && oc.Status == st.Conditions[i].Status {
					st.Conditions[i].LastTransitionTime = oc.LastTransitionTime
				}
			}
		}
	}
	patch, err := json.Marshal(map[string]any{"status": st})
	if err != nil {
		return err
	}
	_, err = k.client.CoreV1().Nodes().Patch(ctx, k.cfg.NodeName, types.StrategicMergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		return fmt.Errorf("post node status: %w", err)
	}
	return nil
}

// heartbeatLoop renews the node's Lease and status.
func (k *kubelet) heartbeatLoop(ctx context.Context) {
	for {
		if err := k.renewLease(ctx); err != nil && ctx.Err() == nil {
			k.logf("%v", err)
		}
		if err := k.postNodeStatus(ctx); err != nil && ctx.Err() == nil {
			k.logf("%v", err)
		}
		if !sleepCtx(ctx, heartbeat) {
			return
		}
	}
}

func (k *kubelet) renewLease(ctx context.Context) error {
	leases := k.client.CoordinationV1().Leases(corev1.NamespaceNodeLease)
	now := metav1.NewMicroTime(time.Now())
	dur := int32(40)
	holder := k.cfg.NodeName
	l, err := leases.Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		node, nerr := k.client.CoreV1().Nodes().Get(ctx, k.cfg.NodeName, metav1.GetOptions{})
		if nerr != nil {
			return fmt.Errorf("get node for its lease: %w", nerr)
		}
		l = &coordinationv1.Lease{
			ObjectMeta: metav1.ObjectMeta{Name: k.cfg.NodeName, Namespace: corev1.NamespaceNodeLease,
				OwnerReferences: []metav1.OwnerReference{{APIVersion: "v1", Kind: "Node", Name: node.Name, UID: node.UID}}},
			Spec: coordinationv1.LeaseSpec{HolderIdentity: &holder, LeaseDurationSeconds: &dur, RenewTime: &now},
		}
		_, err = leases.Create(ctx, l, metav1.CreateOptions{})
		if err != nil {
			return fmt.Errorf("create node lease: %w", err)
		}
		return nil
	}
	if err != nil {
		return fmt.Errorf("get node lease: %w", err)
	}
	l.Spec.HolderIdentity, l.Spec.LeaseDurationSeconds, l.Spec.RenewTime = &holder, &dur, &now
	if _, err := leases.Update(ctx, l, metav1.UpdateOptions{}); err != nil {
		return fmt.Errorf("renew node lease: %w", err)
	}
	return nil
}
