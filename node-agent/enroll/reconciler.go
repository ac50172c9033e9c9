package enroll

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/listers"
	"k8s.io/client-go/tools/cache"
	"k8s.io/client-go/util/workqueue"

	"github.com/meshlet/meshlet/node-agent/cni"
	"github.com/meshlet/meshlet/node-agent/kube"
	"github.com/meshlet/meshlet/pkg/model"
)

// API is what the reconciler reads from the API server.
type API interface {
	// PodsOnNode lists and watches the pods scheduled to a node.
	PodsOnNode(node string) cache.ListerWatcher
	// Namespaces lists and watches all namespaces.
	Namespaces() cache.ListerWatcher
	GetPod(ctx context.Context, namespace, name string) (*kube.Pod, error)
	GetNamespace(ctx context.Context, name string) (*kube.Namespace, error)
	// AnnotatePod sets (value non-nil) or removes one annotation of a pod
	// whose resourceVersion is still resourceVersion (else a Conflict).
	AnnotatePod(ctx context.Context, namespace, name, resourceVersion, key string, value *string) error
}

// Options configures a Reconciler.
type Options struct {
	// Client reads pods and namespaces from the API server (node-agent/kube).
	// Required.
	Client API
	// NodeName is this node; only its pods are considered. Required.
	NodeName string
	// Enroll puts a pod in the mesh. It is called again with new facts
	// when an enrolled pod's addresses or netns change. Required.
	Enroll func(ctx context.Context, p Pod) error
	// Unenroll takes a pod out of the mesh. Required.
	Unenroll func(ctx context.Context, p Pod) error
	// FindNetns locates a running pod's netns when the CNI plugin did not
	// report it. Nil means FindNetns with FindOptions{NetnsDir: NetnsDir}.
	FindNetns func(uid string, ips []netip.Addr) (string, error)
	// NetnsDir is where the agent sees the runtime's netns bind mounts.
	// A netns path the CNI plugin reports that does not exist in the
	// agent's mount namespace (the node's path differs from the agent's
	// mount) is looked up here by its base name. Empty means /var/run/netns.
	NetnsDir string
	// SnapshotPath is where the enrollment snapshot for the CNI plugin goes.
	// Empty means cni.DefaultStatePath.
	SnapshotPath string
	// Resync is the informers' resync period, a safety net only: a pod
	// whose enrollment failed (its netns not found yet, ...) is retried
	// with backoff, at most retryMax apart. Zero means 5 minutes.
	Resync time.Duration
	// AfterSync is called once, after the informers synced and every pod
	// they delivered was reconciled once (so a restarted agent can drop
	// state no running pod claims). Nil means nothing.
	AfterSync func()
	// SyncGrace bounds the wait for the pods found at start to be
	// enrolled: a pod whose enrollment keeps failing (it is retried) does
	// not hold the agent unready past it. Zero means 30s.
	SyncGrace time.Duration
	// Errorf logs reconcile failures. Nil discards.
	Errorf func(format string, args ...any)
	// Logf logs enrollment changes and readiness. Nil discards.
	Logf func(format string, args ...any)
}

// Reconciler keeps this node's enrollment in step with the API.
type Reconciler struct {
	opts   Options
	pods   listers.ResourceIndexer[*kube.Pod]
	nss    listers.ResourceIndexer[*kube.Namespace]
	podInf cache.SharedIndexInformer
	nsInf  cache.SharedIndexInformer
	queue  workqueue.TypedRateLimitingInterface[string]

	hasSynced []cache.InformerSynced
	synced    atomic.Bool // informers synced and the pods found then reconciled
	syncOnce  sync.Once

	pendingMu sync.Mutex
	pending   map[string]bool // pods found at start, not yet reconciled successfully

	mu       sync.Mutex        // serializes enroll/unenroll and guards below
	enrolled map[string]Pod    // by namespace/name
	cniNetns map[string]string // by pod UID: netns the CNI plugin reported
	// tornDown: by pod key, the UID of a pod whose sandbox the CNI plugin
	// reported deleted (CNI DEL); a terminating pod leaves the mesh then,
	// not before. An entry goes with the pod (or a new sandbox).
	tornDown map[string]string
	snapshot []string // last written ambient namespaces

	// annotateOff is set once the API server refused a pod annotation
	// (the agent's role lacks patch on pods/status): not tried again.
	annotateOff atomic.Bool
}

// New builds a Reconciler; Run starts it.
func New(opts Options) (*Reconciler, error) {
	if opts.Client == nil || opts.NodeName == "" || opts.Enroll == nil || opts.Unenroll == nil {
		return nil, errors.New("enroll: Options.Client, NodeName, Enroll and Unenroll are required")
	}
	if opts.NetnsDir == "" {
		opts.NetnsDir = "/var/run/netns"
	}
	if opts.FindNetns == nil {
		opts.FindNetns = func(uid string, ips []netip.Addr) (string, error) {
			return FindNetns(FindOptions{NetnsDir: opts.NetnsDir}, uid, ips)
		}
	}
	if opts.SnapshotPath == "" {
		opts.SnapshotPath = cni.DefaultStatePath
	}
	if opts.Resync == 0 {
		// Every resync reconciles every pod and namespace again and
		// rewrites the enrollment snapshot: with a 30 s period, the
		// code it runs kept megabytes of the binary's pages resident in
		// an idle agent (the lab, 50 pods), to find nothing to do.
		opts.Resync = 5 * time.Minute
	}
	if opts.SyncGrace == 0 {
		opts.SyncGrace = 30 * time.Second
	}
	if opts.Errorf == nil {
		opts.Errorf = func(string, ...any) {}
	}
	if opts.Logf == nil {
		opts.Logf = func(string, ...any) {}
	}
	podInf := cache.NewSharedIndexInformer(opts.Client.PodsOnNode(opts.NodeName), &kube.Pod{}, opts.Resync,
		cache.Indexers{cache.NamespaceIndex: cache.MetaNamespaceIndexFunc})
	nsInf := cache.NewSharedIndexInformer(opts.Client.Namespaces(), &kube.Namespace{}, opts.Resync, cache.Indexers{})
	for _, inf := range []cache.SharedIndexInformer{podInf, nsInf} {
		if err := inf.SetTransform(kube.DropUnread); err != nil {
			return nil, err
		}
	}
	r := &Reconciler{
		opts:   opts,
		pods:   listers.New[*kube.Pod](podInf.GetIndexer(), schema.GroupResource{Resource: "pods"}),
		nss:    listers.New[*kube.Namespace](nsInf.GetIndexer(), schema.GroupResource{Resource: "namespaces"}),
		podInf: podInf,
		nsInf:  nsInf,
		queue: workqueue.NewTypedRateLimitingQueue(workqueue.NewTypedItemExponentialFailureRateLimiter[string](
			5*time.Millisecond, retryMax)),
		enrolled: map[string]Pod{},
		cniNetns: map[string]string{},
		tornDown: map[string]string{},
	}
	enqueuePod := func(obj any) {
		if key, err := cache.DeletionHandlingMetaNamespaceKeyFunc(obj); err == nil {
			r.queue.Add(key)
		}
	}
	podReg, err := r.podInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueuePod, DeleteFunc: enqueuePod,
		UpdateFunc: func(_, obj any) { enqueuePod(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watch pods: %w", err)
	}
	enqueueNS := func(obj any) {
		ns, ok := obj.(*kube.Namespace)
		if !ok {
			if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
				ns, _ = d.Obj.(*kube.Namespace)
			}
		}
		if ns == nil {
			return
		}
		r.queue.Add(nsKey(ns.Name))
	}
	nsReg, err := r.nsInf.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc: enqueueNS, DeleteFunc: enqueueNS,
		UpdateFunc: func(_, obj any) { enqueueNS(obj) },
	})
	if err != nil {
		return nil, fmt.Errorf("watch namespaces: %w", err)
	}
	// Synced once every initial object reached the handlers (and the queue).
	r.hasSynced = []cache.InformerSynced{podReg.HasSynced, nsReg.HasSynced}
	return r, nil
}

// retryMax bounds the backoff between retries of a pod whose enrollment
// fails (client-go's default grows to 1000 s; the resync, once every 30 s,
// used to cut it short).
const retryMax = 30 * time.Second

// nsKey marks a queue key as a namespace (pod keys always contain "/").
func nsKey(name string) string { return "ns:" + name }

// Run watches until ctx ends. It unenrolls nothing on the way out: the
// datapath state outlives the agent, and the next agent adopts it.
func (r *Reconciler) Run(ctx context.Context) error {
	ictx, stopInformers := context.WithCancel(ctx)
	var informers sync.WaitGroup
	for _, inf := range []cache.SharedIndexInformer{r.podInf, r.nsInf} {
		informers.Go(func() { inf.RunWithContext(ictx) })
	}
	defer func() {
		r.queue.ShutDown()
		stopInformers()
		informers.Wait()
	}()
	if !cache.WaitForCacheSync(ctx.Done(), r.hasSynced...) {
		return fmt.Errorf("sync pod and namespace informers: %w", ctx.Err())
	}
	r.writeSnapshot()
	go func() {
		<-ctx.Done()
		r.queue.ShutDown()
	}()
	// Every pod that runs when the agent starts must be enrolled (its
	// listeners open) before the agent is ready: a rolling update stops
	// the old agent then, and a pod without a listener of the new one would
	// refuse its connections. A pod whose enrollment failed is retried
	// with backoff; it counts as done only when it succeeds (or after
	// SyncGrace, so that one broken pod does not stall the roll forever).
	r.pendingMu.Lock()
	r.pending = map[string]bool{}
	if pods, err := r.pods.List(labels.Everything()); err == nil {
		for _, p := range pods {
			if r.wanted(p) {
				r.pending[p.Namespace+"/"+p.Name] = true
			}
		}
	}
	empty := len(r.pending) == 0
	r.pendingMu.Unlock()
	if empty {
		r.finishSync()
	} else {
		grace := time.AfterFunc(r.opts.SyncGrace, func() {
			r.pendingMu.Lock()
			left := slices.Sorted(maps.Keys(r.pending))
			r.pendingMu.Unlock()
			if len(left) > 0 {
				r.opts.Errorf("ready after %s with %d pods not yet enrolled (retried; their connections are refused until then): %s",
					r.opts.SyncGrace, len(left), strings.Join(left, ", "))
			}
			r.finishSync()
		})
		defer grace.Stop()
	}
	for {
		key, quit := r.queue.Get()
		if quit {
			return nil
		}
		err := r.reconcileKey(ctx, key)
		if err != nil {
			r.opts.Errorf("reconcile %s: %v", key, err)
			r.queue.AddRateLimited(key)
		} else {
			r.queue.Forget(key)
			r.settled(key)
		}
		r.queue.Done(key)
	}
}

// settled records that key, one of the pods found at start, is reconciled;
// the last one makes the reconciler synced.
func (r *Reconciler) settled(key string) {
	r.pendingMu.Lock()
	if !r.pending[key] {
		r.pendingMu.Unlock()
		return
	}
	delete(r.pending, key)
	done := len(r.pending) == 0
	r.pendingMu.Unlock()
	if done {
		r.finishSync()
	}
}

// finishSync marks the reconciler synced and runs AfterSync, once.
func (r *Reconciler) finishSync() {
	r.syncOnce.Do(func() {
		r.mu.Lock()
		n := len(r.enrolled)
		r.mu.Unlock()
		r.opts.Logf("synced: %d pods enrolled; ready", n)
		r.synced.Store(true)
		if r.opts.AfterSync != nil {
			r.opts.AfterSync()
		}
	})
}

// Synced reports whether the informers have synced and every pod found
// then that belongs in the mesh has been enrolled (or SyncGrace passed).
func (r *Reconciler) Synced() bool { return r.synced.Load() }

// Enrolled returns the enrolled pods, sorted by namespace/name.
func (r *Reconciler) Enrolled() []Pod {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []Pod
	for _, p := range r.enrolled {
		out = append(out, p)
	}
	slices.SortFunc(out, func(a, b Pod) int {
		if c := strings.Compare(a.Namespace, b.Namespace); c != 0 {
			return c
		}
		return strings.Compare(a.Name, b.Name)
	})
	return out
}

func (r *Reconciler) reconcileKey(ctx context.Context, key string) error {
	if ns, ok := strings.CutPrefix(key, "ns:"); ok {
		r.writeSnapshot()
		pods, err := listers.NewNamespaced(r.pods, ns).List(labels.Everything())
		if err != nil {
			return err
		}
		for _, p := range pods {
			r.queue.Add(p.Namespace + "/" + p.Name)
		}
		return nil
	}
	ns, name, err := cache.SplitMetaNamespaceKey(key)
	if err != nil {
		return err
	}
	pod, err := listers.NewNamespaced(r.pods, ns).Get(name)
	if apierrors.IsNotFound(err) {
		pod = nil
	} else if err != nil {
		return err
	}
	err = r.reconcile(ctx, key, pod, nil)
	r.syncAnnotation(ctx, key, pod)
	return err
}

// syncAnnotation makes a pod's ambient.istio.io/redirection annotation say
// whether this agent has it in the mesh, as Istio's CNI agent does (Kiali,
// istioctl and scripts read it): "enabled" while enrolled, removed once it
// leaves. Another value (a user's "disabled") is never touched. The write
// is made outside r.mu (an API call must not hold up a pod's CNI ADD) with
// the pod's resourceVersion as precondition, so a change made in between
// is not overwritten: the pod is reconciled again with it. A pod being
// deleted is left as it is.
func (r *Reconciler) syncAnnotation(ctx context.Context, key string, pod *kube.Pod) {
	if pod == nil || pod.DeletionTimestamp != nil || r.annotateOff.Load() {
		return
	}
	r.mu.Lock()
	e, ok := r.enrolled[key]
	r.mu.Unlock()
	enrolled := ok && e.UID == string(pod.UID)
	var value *string
	switch cur, has := pod.Annotations[model.AnnotationRedirection]; {
	case enrolled && !has:
		v := model.AnnotationRedirectionEnabled
		value = &v
	case !enrolled && cur == model.AnnotationRedirectionEnabled:
		// removed: value nil
	default:
		return
	}
	err := r.opts.Client.AnnotatePod(ctx, pod.Namespace, pod.Name, pod.ResourceVersion, model.AnnotationRedirection, value)
	switch {
	case err == nil, apierrors.IsNotFound(err):
	case apierrors.IsForbidden(err):
		if r.annotateOff.CompareAndSwap(false, true) {
			r.opts.Errorf("annotate pod %s: %v: pods are not annotated %s from now on (the agent's ClusterRole needs patch on pods/status)",
				key, err, model.AnnotationRedirection)
		}
	case apierrors.IsConflict(err):
		r.queue.AddRateLimited(key) // changed since the informer saw it: again with the update
	default:
		r.opts.Errorf("annotate pod %s: %v (tried again)", key, err)
		r.queue.AddRateLimited(key)
	}
}

// wanted reports whether pod belongs in the mesh on this node now. A pod
// being deleted stays in until its sandbox is torn down (CNI DEL, after its
// containers have exited), it ends, or it is gone from the API: its traffic
// during the grace period (draining, preStop hooks) is still the mesh's, as
// Istio's ztunnel has it. r.mu held.
func (r *Reconciler) wanted(pod *kube.Pod) bool {
	if pod == nil || pod.Spec.NodeName != r.opts.NodeName {
		return false
	}
	if pod.DeletionTimestamp != nil && r.tornDown[pod.Namespace+"/"+pod.Name] == string(pod.UID) {
		return false
	}
	if pod.Status.Phase == kube.PodSucceeded || pod.Status.Phase == kube.PodFailed {
		return false
	}
	var nsLabels map[string]string
	if ns, err := r.nss.Get(pod.Namespace); err == nil {
		nsLabels = ns.Labels
	}
	return InMesh(nsLabels, pod)
}

// reconcile brings one pod's enrollment to what the API says. cniEv, when
// set, carries the CNI plugin's facts (netns, IPs) for a starting pod.
func (r *Reconciler) reconcile(ctx context.Context, key string, pod *kube.Pod, cniEv *cni.PodEvent) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	cur, isEnrolled := r.enrolled[key]
	if !r.wanted(pod) {
		if pod == nil {
			delete(r.tornDown, key)
			if cur.UID != "" {
				delete(r.cniNetns, cur.UID)
			}
		}
		if !isEnrolled {
			return nil
		}
		if err := r.opts.Unenroll(ctx, cur); err != nil {
			return fmt.Errorf("unenroll %s: %w", key, err)
		}
		delete(r.enrolled, key)
		r.opts.Logf("unenrolled %s", key)
		return nil
	}
	want := Pod{
		UID: string(pod.UID), Namespace: pod.Namespace, Name: pod.Name,
		ServiceAccount: pod.Spec.ServiceAccountName, Workload: WorkloadName(pod),
		IPs: podIPs(pod), ProbePorts: ProbePorts(pod),
		BypassInbound: pod.Annotations[model.AnnotationBypassInbound] == "true",
	}
	if want.ServiceAccount == "" {
		want.ServiceAccount = "default"
	}
	if isEnrolled && cur.UID == want.UID {
		want.IfName = cur.IfName
	}
	if cniEv != nil {
		delete(r.tornDown, key) // a new sandbox
		r.cniNetns[want.UID] = r.localNetns(cniEv.Netns)
		want.IfName = cniEv.IfName
		want.IPs = nil
		for _, s := range cniEv.IPs {
			if a, err := netip.ParseAddr(s); err == nil {
				want.IPs = append(want.IPs, a.Unmap())
			}
		}
	}
	if len(want.IPs) == 0 {
		return nil // not started yet: the CNI plugin or a later update brings it
	}
	if p, ok := r.cniNetns[want.UID]; ok && exists(p) {
		want.Netns = p
	} else if isEnrolled && cur.UID == want.UID && exists(cur.Netns) {
		want.Netns = cur.Netns
	} else {
		p, err := r.opts.FindNetns(want.UID, want.IPs)
		if err != nil {
			return fmt.Errorf("enroll %s: %w", key, err)
		}
		want.Netns = p
	}
	if isEnrolled && samePod(cur, want) {
		return nil
	}
	if isEnrolled {
		// A new sandbox (new UID, addresses or netns): drop the old first
		// so no entry outlives the pod it was made for.
		if err := r.opts.Unenroll(ctx, cur); err != nil {
			return fmt.Errorf("unenroll stale %s: %w", key, err)
		}
		delete(r.enrolled, key)
	}
	if err := r.opts.Enroll(ctx, want); err != nil {
		return fmt.Errorf("enroll %s: %w", key, err)
	}
	r.enrolled[key] = want
	r.opts.Logf("enrolled %s (%s, service account %s)", key, want.IPs, want.ServiceAccount)
	return nil
}

// localNetns maps a netns path as the node sees it to one the agent can open.
func (r *Reconciler) localNetns(p string) string {
	if exists(p) {
		return p
	}
	if alt := filepath.Join(r.opts.NetnsDir, filepath.Base(p)); exists(alt) {
		return alt
	}
	return p
}

func samePod(a, b Pod) bool {
	return a.UID == b.UID && a.Netns == b.Netns && a.ServiceAccount == b.ServiceAccount &&
		a.Workload == b.Workload && slices.Equal(a.IPs, b.IPs) && slices.Equal(a.ProbePorts, b.ProbePorts) &&
		a.BypassInbound == b.BypassInbound
}

func exists(path string) bool {
	if path == "" {
		return false
	}
	_, err := os.Stat(path)
	return err == nil
}

// CNIAdd answers the CNI plugin's ADD for a starting pod: enroll it now, if
// it belongs in the mesh, with the netns and IPs the plugin reported.
func (r *Reconciler) CNIAdd(ctx context.Context, ev cni.PodEvent) cni.Verdict {
	pod, err := r.getPod(ctx, ev.Namespace, ev.Name)
	if err != nil {
		// Without the pod we cannot tell; decide by its namespace alone.
		ns, nerr := r.getNamespace(ctx, ev.Namespace)
		if nerr != nil || ns.Labels[Label] != ModeAmbient {
			return cni.Verdict{}
		}
		return cni.Verdict{MustEnroll: true, Error: fmt.Sprintf("look up pod %s/%s: %v", ev.Namespace, ev.Name, err)}
	}
	if ev.UID != "" && string(pod.UID) != ev.UID {
		return cni.Verdict{Error: fmt.Sprintf("pod %s/%s has UID %s, the runtime reported %s", ev.Namespace, ev.Name, pod.UID, ev.UID)}
	}
	if _, err := r.nss.Get(pod.Namespace); err != nil {
		if ns, err := r.getNamespace(ctx, pod.Namespace); err == nil {
			_ = r.nsInf.GetStore().Add(ns) // let wanted see it before the watch does
		}
	}
	if !r.wanted(pod) {
		return cni.Verdict{}
	}
	if err := r.reconcile(ctx, ev.Namespace+"/"+ev.Name, pod, &ev); err != nil {
		return cni.Verdict{MustEnroll: true, Error: err.Error()}
	}
	return cni.Verdict{MustEnroll: true, Enrolled: true}
}

// CNIDel forgets the netns the plugin reported and notes the sandbox gone:
// a terminating pod leaves the mesh now (see wanted); the pod watch
// unenrolls a deleted one.
func (r *Reconciler) CNIDel(_ context.Context, ev cni.PodEvent) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if ev.UID != "" {
		delete(r.cniNetns, ev.UID)
		r.tornDown[ev.Namespace+"/"+ev.Name] = ev.UID
	}
	r.queue.Add(ev.Namespace + "/" + ev.Name)
}

func (r *Reconciler) getPod(ctx context.Context, ns, name string) (*kube.Pod, error) {
	if p, err := listers.NewNamespaced(r.pods, ns).Get(name); err == nil {
		return p, nil
	}
	return r.opts.Client.GetPod(ctx, ns, name)
}

func (r *Reconciler) getNamespace(ctx context.Context, name string) (*kube.Namespace, error) {
	if ns, err := r.nss.Get(name); err == nil {
		return ns, nil
	}
	return r.opts.Client.GetNamespace(ctx, name)
}

// writeSnapshot records the ambient namespaces for the CNI plugin, when
// they changed.
func (r *Reconciler) writeSnapshot() {
	nss, err := r.nss.List(labels.SelectorFromSet(labels.Set{Label: ModeAmbient}))
	if err != nil {
		return
	}
	var names []string
	for _, ns := range nss {
		names = append(names, ns.Name)
	}
	slices.Sort(names)
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.snapshot != nil && slices.Equal(names, r.snapshot) {
		return
	}
	if names == nil {
		names = []string{}
	}
	if err := cni.WriteSnapshot(r.opts.SnapshotPath, cni.Snapshot{AmbientNamespaces: names}); err != nil {
		r.opts.Errorf("write enrollment snapshot: %v", err)
		return
	}
	r.snapshot = names
}
