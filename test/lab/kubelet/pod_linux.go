package kubelet

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
)

// Restart back-off: shorter than the real kubelet's 10s..5m so that lab tests
// of crashing and liveness-restarted containers finish in seconds; the reason
// shown (CrashLoopBackOff) is the real one.
const (
	backoffBase  = 2 * time.Second
	backoffMax   = 60 * time.Second
	backoffReset = 2 * time.Minute
	// stopGraceMax bounds the grace period when the kubelet itself stops.
	stopGraceMax = 10 * time.Second
)

// container is one container of a running pod.
type container struct {
	spec     corev1.Container
	init     bool // an init container (run to completion before the others)
	cgroup   string
	log      string
	state    corev1.ContainerState
	last     corev1.ContainerState
	ready    bool
	started  bool
	restarts int32
	pid      int
	done     bool          // will not run again
	exited   chan struct{} // closed when the current process exits
	image    string        // resolved binary
}

// podWorker runs one pod from sandbox to cleanup.
type podWorker struct {
	k   *kubelet
	uid types.UID

	mu         sync.Mutex
	pod        *corev1.Pod
	gone       bool // deleted from the API server (or never to be deleted by us)
	stopCh     chan struct{}
	stopOnce   sync.Once
	grace      time.Duration
	netns      string
	sandboxID  string
	cgroup     string
	ip         string
	startTime  metav1.Time
	sandboxErr string
	initDone   bool
	failed     bool // an init container failed for good
	ctrs       []*container
	volPaths   map[string]string // volume name -> source directory or file
	record     string
	recMu      sync.Mutex // orders record writes with the final removal
	recGone    bool
	dirty      chan struct{}
	done       chan struct{}
}

func newPodWorker(k *kubelet, pod *corev1.Pod) *podWorker {
	w := &podWorker{
		k: k, uid: pod.UID, pod: pod,
		stopCh: make(chan struct{}), dirty: make(chan struct{}, 1), done: make(chan struct{}),
		startTime: metav1.Now(),
		cgroup:    filepath.Join(k.cfg.CgroupRoot, "pod"+string(pod.UID)),
		record:    recordPath(k.cfg.NodeRoot, pod.Namespace, pod.Name, string(pod.UID)),
	}
	for _, c := range pod.Spec.InitContainers {
		w.ctrs = append(w.ctrs, w.newContainer(c, true))
	}
	for _, c := range pod.Spec.Containers {
		w.ctrs = append(w.ctrs, w.newContainer(c, false))
	}
	return w
}

func (w *podWorker) newContainer(c corev1.Container, init bool) *container {
	return &container{
		spec: c, init: init,
		cgroup: filepath.Join(w.cgroup, c.Name),
		log:    filepath.Join(w.k.cfg.LogDir, fmt.Sprintf("%s_%s_%s", w.pod.Namespace, w.pod.Name, w.uid), c.Name+".log"),
		state:  corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: "ContainerCreating"}},
	}
}

func (w *podWorker) logf(format string, args ...any) {
	w.k.logf("pod %s/%s: %s", w.pod.Namespace, w.pod.Name, fmt.Sprintf(format, args...))
}

func (w *podWorker) markDirty() {
	select {
	case w.dirty <- struct{}{}:
	default:
	}
}

// update takes a newer version of the pod from the informer.
func (w *podWorker) update(pod *corev1.Pod) {
	w.mu.Lock()
	w.pod = pod
	w.mu.Unlock()
	if pod.DeletionTimestamp != nil {
		g := 30 * time.Second
		if pod.DeletionGracePeriodSeconds != nil {
			g = time.Duration(*pod.DeletionGracePeriodSeconds) * time.Second
		}
		w.stop(g, false)
	}
}

// stop asks the worker to end the pod, with a grace period.
func (w *podWorker) stop(grace time.Duration, gone bool) {
	w.mu.Lock()
	if gone {
		w.gone = true
	}
	w.mu.Unlock()
	w.stopOnce.Do(func() {
		w.mu.Lock()
		w.grace = grace
		w.mu.Unlock()
		close(w.stopCh)
	})
}

func (w *podWorker) stopping() bool {
	select {
	case <-w.stopCh:
		return true
	default:
		return false
	}
}

// sleep waits d or until the pod stops; false when it stopped.
func (w *podWorker) sleep(d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-w.stopCh:
		return false
	}
}

// run is the worker's life.
func (w *podWorker) run(ctx context.Context) {
	defer close(w.done)
	statusCtx, cancelStatus := context.WithCancel(context.Background())
	statusDone := make(chan struct{})
	go func() { defer close(statusDone); w.statusLoop(statusCtx) }()

	var wg sync.WaitGroup
	if !w.stopping() && w.setupSandbox(ctx) {
		w.writeRecord()
		go w.refreshTokens(ctx)
		w.runContainers(ctx, &wg)
	}
	<-w.stopCh
	w.terminate()
	wg.Wait()
	w.cleanup()
	w.markDirty()
	cancelStatus()
	<-statusDone
	w.finish()
}

// setupSandbox makes the pod's cgroup, network and volumes, retrying until it
// works or the pod stops.
func (w *podWorker) setupSandbox(ctx context.Context) bool {
	for attempt := 0; ; attempt++ {
		err := w.trySandbox(ctx)
		if err == nil {
			w.mu.Lock()
			w.sandboxErr = ""
			w.mu.Unlock()
			w.markDirty()
			return true
		}
		w.logf("sandbox: %v", err)
		w.mu.Lock()
		w.sandboxErr = err.Error()
		w.mu.Unlock()
		w.markDirty()
		if !w.sleep(min(time.Duration(attempt+1)*time.Second, 10*time.Second)) {
			return false
		}
	}
}

func (w *podWorker) trySandbox(ctx context.Context) error {
	pod := w.currentPod()
	if err := os.MkdirAll(w.cgroup, 0o755); err != nil {
		return fmt.Errorf("create pod cgroup: %w", err)
	}
	if !pod.Spec.HostNetwork && w.ip == "" {
		select {
		case <-w.k.cniReady:
		default:
			w.mu.Lock()
			w.sandboxErr = "waiting for the node network (CNI plugins and node.spec.podCIDR)"
			w.mu.Unlock()
			w.markDirty()
		}
		if err := w.k.waitCNI(ctx, w.stopCh); err != nil {
			return err
		}
		if w.netns == "" {
			id := randomID()
			netns := filepath.Join(w.k.cfg.NodeRoot, "var/run/netns", "cni-"+uuidLike(id))
			if err := newNetns(netns); err != nil {
				return err
			}
			w.mu.Lock()
			w.netns, w.sandboxID = netns, id
			w.mu.Unlock()
		}
		if err := applySysctls(w.netns, pod.Spec.SecurityContext); err != nil {
			return err
		}
		cctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		ip, err := w.k.cni.add(cctx, pod.Namespace, pod.Name, string(pod.UID), w.sandboxID, w.netns)
		cancel()
		if err != nil {
			// Undo a half-done ADD before the next try.
			dctx, dcancel := context.WithTimeout(context.Background(), time.Minute)
			w.k.cni.del(dctx, pod.Namespace, pod.Name, string(pod.UID), w.sandboxID, w.netns)
			dcancel()
			return fmt.Errorf("set up pod network: %w", err)
		}
		w.mu.Lock()
		w.ip = ip
		w.mu.Unlock()
	}
	if pod.Spec.HostNetwork {
		w.mu.Lock()
		w.ip = w.k.cfg.NodeIP
		w.mu.Unlock()
	}
	paths, err := w.volumeWriter(pod).write(ctx)
	if err != nil {
		return err
	}
	w.mu.Lock()
	w.volPaths = paths
	w.mu.Unlock()
	return nil
}

func (w *podWorker) volumeWriter(pod *corev1.Pod) *volumeWriter {
	w.mu.Lock()
	ip := w.ip
	w.mu.Unlock()
	return &volumeWriter{client: w.k.client, pod: pod, dir: filepath.Join(w.podDir(), "volumes"),
		nodeRoot: w.k.cfg.NodeRoot, cgroupRoot: w.k.cfg.CgroupRoot, podIP: ip, hostIP: w.k.cfg.NodeIP}
}

// refreshTokens rewrites the pod's volumes (and so its projected tokens)
// every tokenRefresh until the pod stops.
func (w *podWorker) refreshTokens(ctx context.Context) {
	if !hasToken(w.currentPod()) {
		return
	}
	for w.sleep(tokenRefresh) {
		if _, err := w.volumeWriter(w.currentPod()).write(ctx); err != nil {
			w.logf("refresh volumes: %v", err)
		}
	}
}

func (w *podWorker) currentPod() *corev1.Pod {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.pod
}

func randomID() string {
	b := make([]byte, 32)
	rand.Read(b)
	return hex.EncodeToString(b)
}

func uuidLike(id string) string {
	return id[0:8] + "-" + id[8:12] + "-" + id[12:16] + "-" + id[16:20] + "-" + id[20:32]
}

// podDir is the pod's state directory under NodeRoot.
func (w *podWorker) podDir() string {
	return filepath.Join(w.k.cfg.NodeRoot, "var/lib/kubelet/pods", string(w.uid))
}

// runContainers runs init containers in order, then the others.
func (w *podWorker) runContainers(ctx context.Context, wg *sync.WaitGroup) {
	for _, c := range w.ctrs {
		if !c.init {
			continue
		}
		if c.spec.RestartPolicy != nil && *c.spec.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			wg.Add(1)
			go func() { defer wg.Done(); w.containerLoop(ctx, c) }() // a sidecar
			continue
		}
		w.containerLoop(ctx, c)
		w.mu.Lock()
		ok := c.state.Terminated != nil && c.state.Terminated.ExitCode == 0
		w.mu.Unlock()
		if !ok {
			if !w.stopping() {
				w.mu.Lock()
				w.failed = true
				w.mu.Unlock()
				w.markDirty()
			}
			return
		}
	}
	w.mu.Lock()
	w.initDone = true
	w.mu.Unlock()
	w.markDirty()
	for _, c := range w.ctrs {
		if c.init {
			continue
		}
		wg.Add(1)
		go func() { defer wg.Done(); w.containerLoop(ctx, c) }()
	}
}

// restartPolicy is the container's, or the pod's (init containers restart
// on failure unless the pod's policy is Never).
// w.mu is held.
func (w *podWorker) shouldRestart(c *container, code int32) bool {
	p := w.pod.Spec.RestartPolicy
	if c.init {
		if c.spec.RestartPolicy != nil && *c.spec.RestartPolicy == corev1.ContainerRestartPolicyAlways {
			return true
		}
		return code != 0 && p != corev1.RestartPolicyNever
	}
	switch p {
	case corev1.RestartPolicyNever:
		return false
	case corev1.RestartPolicyOnFailure:
		return code != 0
	}
	return true
}

// containerLoop starts the container and restarts it per policy with
// back-off until the pod stops or it is done for good.
func (w *podWorker) containerLoop(ctx context.Context, c *container) {
	backoff := backoffBase
	for !w.stopping() {
		exited, reason, err := w.startContainer(ctx, c)
		if err != nil {
			w.logf("container %s: %v", c.spec.Name, err)
			w.mu.Lock()
			c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{Reason: reason, Message: err.Error()}}
			w.mu.Unlock()
			w.markDirty()
			if !w.sleep(backoff) {
				return
			}
			backoff = min(backoff*2, backoffMax)
			continue
		}
		started := time.Now()
		pctx, cancelProbes := context.WithCancel(ctx)
		go w.probeLoop(pctx, c)
		select {
		case <-exited:
		case <-w.stopCh:
			// terminate may have run before this process started: stop it here.
			cancelProbes()
			w.mu.Lock()
			grace := w.grace
			w.mu.Unlock()
			w.killContainer(c, grace)
			<-exited
			return
		}
		cancelProbes()
		w.mu.Lock()
		code := c.state.Terminated.ExitCode
		restart := w.shouldRestart(c, code)
		if !restart {
			c.done = true
		}
		w.mu.Unlock()
		w.markDirty()
		if !restart || w.stopping() {
			return
		}
		if time.Since(started) > backoffReset {
			backoff = backoffBase
		}
		w.mu.Lock()
		c.last = c.state
		c.state = corev1.ContainerState{Waiting: &corev1.ContainerStateWaiting{
			Reason:  "CrashLoopBackOff",
			Message: fmt.Sprintf("back-off %s restarting failed container=%s pod=%s_%s(%s)", backoff, c.spec.Name, w.pod.Name, w.pod.Namespace, w.uid),
		}}
		c.restarts++
		w.mu.Unlock()
		w.markDirty()
		if !w.sleep(backoff) {
			return
		}
		backoff = min(backoff*2, backoffMax)
	}
}

// startContainer starts one run of c; it returns a channel closed on exit
// (after c.state is Terminated), or the waiting reason and error.
func (w *podWorker) startContainer(ctx context.Context, c *container) (<-chan struct{}, string, error) {
	pod := w.currentPod()
	bin, err := resolveImage(w.k.cfg.Images, c.spec.Image)
	if err != nil {
		// The table may have grown since the kubelet started (lab build).
		bin, err = resolveImageFile(w.k.cfg.ImagesFile, c.spec.Image, err)
	}
	if err != nil {
		return nil, "ErrImagePull", err
	}
	w.mu.Lock()
	ip, netns := w.ip, w.netns
	w.mu.Unlock()
	env, err := containerEnv(pod, &c.spec, ip, w.k.cfg.NodeIP, w.k.envSources(ctx))
	if err != nil {
		return nil, "CreateContainerConfigError", err
	}
	em := envMap(env)
	path, argv, err := resolveCommand(bin, expandAll(c.spec.Command, em), expandAll(c.spec.Args, em))
	if err != nil {
		return nil, "RunContainerError", err
	}
	mounts, err := w.mounts(pod, &c.spec)
	if err != nil {
		return nil, "CreateContainerConfigError", err
	}
	spec := initSpec{NetNS: netns, Mounts: mounts, Path: path, Args: argv, Env: env, Dir: c.spec.WorkingDir}
	if err := applySecurity(&spec, pod.Spec.SecurityContext, c.spec.SecurityContext); err != nil {
		return nil, "CreateContainerConfigError", err
	}
	// A fresh, empty cgroup for every run.
	if err := removeCgroup(c.cgroup); err != nil {
		return nil, "RunContainerError", err
	}
	if err := os.MkdirAll(c.cgroup, 0o755); err != nil {
		return nil, "RunContainerError", fmt.Errorf("create container cgroup: %w", err)
	}
	if err := os.MkdirAll(filepath.Dir(c.log), 0o755); err != nil {
		return nil, "RunContainerError", fmt.Errorf("create log dir: %w", err)
	}
	logf, err := os.OpenFile(c.log, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return nil, "RunContainerError", fmt.Errorf("open log: %w", err)
	}
	cmd, err := launch(launchOptions{Spec: spec, Cgroup: c.cgroup, Log: logf})
	logf.Close()
	if err != nil {
		return nil, "RunContainerError", err
	}
	now := metav1.Now()
	exited := make(chan struct{})
	w.mu.Lock()
	c.pid, c.image, c.exited = cmd.Process.Pid, bin, exited
	c.started = true
	c.ready = c.spec.ReadinessProbe == nil
	c.state = corev1.ContainerState{Running: &corev1.ContainerStateRunning{StartedAt: now}}
	w.mu.Unlock()
	w.markDirty()
	w.writeRecord()
	go func() {
		err := cmd.Wait()
		code := int32(0)
		reason := "Completed"
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			ws := ee.Sys().(syscall.WaitStatus)
			switch {
			case ws.Signaled():
				code = 128 + int32(ws.Signal())
			default:
				code = int32(ws.ExitStatus())
			}
			reason = "Error"
		} else if err != nil {
			code, reason = 128, "Error"
		}
		w.mu.Lock()
		c.ready = false
		c.pid = 0
		c.state = corev1.ContainerState{Terminated: &corev1.ContainerStateTerminated{
			ExitCode: code, Reason: reason, StartedAt: now, FinishedAt: metav1.Now(),
			ContainerID: "lab://" + fmt.Sprint(cmd.Process.Pid),
		}}
		w.mu.Unlock()
		close(exited)
	}()
	return exited, "", nil
}

// mounts are a container's bind mounts: its volumeMounts and resolv.conf.
func (w *podWorker) mounts(pod *corev1.Pod, c *corev1.Container) ([]mountSpec, error) {
	w.mu.Lock()
	paths := w.volPaths
	w.mu.Unlock()
	var out []mountSpec
	for _, m := range c.VolumeMounts {
		src, ok := paths[m.Name]
		if !ok {
			return nil, fmt.Errorf("volumeMount %s: the pod has no volume %q", m.MountPath, m.Name)
		}
		if m.SubPath != "" {
			src = filepath.Join(src, filepath.Clean("/"+m.SubPath))
			if _, err := os.Stat(src); os.IsNotExist(err) {
				if err := os.MkdirAll(src, 0o755); err != nil {
					return nil, fmt.Errorf("volumeMount %s: create subPath: %w", m.MountPath, err)
				}
			}
		}
		out = append(out, mountSpec{Source: src, Target: m.MountPath, ReadOnly: m.ReadOnly})
	}
	clusterDNS := pod.Spec.DNSPolicy == corev1.DNSClusterFirstWithHostNet ||
		(!pod.Spec.HostNetwork && (pod.Spec.DNSPolicy == "" || pod.Spec.DNSPolicy == corev1.DNSClusterFirst))
	if clusterDNS {
		p := filepath.Join(w.podDir(), "resolv.conf")
		if err := writeFiles(filepath.Dir(p), map[string][]byte{"resolv.conf": []byte(resolvConf(pod.Namespace, w.k.cfg.ClusterDNS, w.k.cfg.ClusterDomain))}, 0o644); err != nil {
			return nil, fmt.Errorf("write resolv.conf: %w", err)
		}
		out = append(out, mountSpec{Source: p, Target: "/etc/resolv.conf", ReadOnly: true})
	}
	return out, nil
}

// applySecurity maps the pod's and container's securityContext onto spec.
func applySecurity(spec *initSpec, psc *corev1.PodSecurityContext, sc *corev1.SecurityContext) error {
	if psc != nil {
		spec.UID, spec.GID = psc.RunAsUser, psc.RunAsGroup
		spec.Groups = psc.SupplementalGroups
		if psc.FSGroup != nil {
			spec.Groups = append(spec.Groups, *psc.FSGroup)
		}
	}
	var drop, add []string
	if sc != nil {
		if sc.RunAsUser != nil {
			spec.UID = sc.RunAsUser
		}
		if sc.RunAsGroup != nil {
			spec.GID = sc.RunAsGroup
		}
		spec.Privileged = sc.Privileged != nil && *sc.Privileged
		spec.NoNewPrivs = sc.AllowPrivilegeEscalation != nil && !*sc.AllowPrivilegeEscalation
		if sc.Capabilities != nil {
			for _, c := range sc.Capabilities.Drop {
				drop = append(drop, string(c))
			}
			for _, c := range sc.Capabilities.Add {
				add = append(add, string(c))
			}
		}
	}
	caps, err := effectiveCaps(drop, add)
	if err != nil {
		return err
	}
	spec.Caps = caps
	return nil
}

// probeLoop runs the startup, readiness and liveness probes of one run of c.
func (w *podWorker) probeLoop(ctx context.Context, c *container) {
	w.mu.Lock()
	// Dialled from the node's netns (netns ""), as a real kubelet does.
	target := probeTarget{podIP: w.ip, pid: c.pid, cgroup: c.cgroup, ports: c.spec.Ports}
	w.mu.Unlock()
	if target.podIP == "" {
		target.podIP = "127.0.0.1"
	}
	if p := c.spec.StartupProbe; p != nil {
		if !w.probeUntil(ctx, p, target, true) {
			if ctx.Err() == nil {
				w.logf("container %s: startup probe failed %d times; killing it", c.spec.Name, threshold(p.FailureThreshold, 3))
				w.killContainer(c, w.graceOf())
			}
			return
		}
	}
	if p := c.spec.ReadinessProbe; p != nil {
		go w.readiness(ctx, c, p, target)
	}
	if p := c.spec.LivenessProbe; p != nil {
		if !w.probeUntil(ctx, p, target, false) && ctx.Err() == nil {
			w.logf("container %s: liveness probe failed %d times; restarting it", c.spec.Name, threshold(p.FailureThreshold, 3))
			w.killContainer(c, w.graceOf())
		}
	}
}

func threshold(v int32, def int32) int32 {
	if v <= 0 {
		return def
	}
	return v
}

func period(p *corev1.Probe) time.Duration {
	return time.Duration(threshold(p.PeriodSeconds, 10)) * time.Second
}

// probeUntil runs p every period. With untilSuccess it returns true on the
// first success; otherwise it runs until failureThreshold consecutive
// failures (false) or ctx ends.
func (w *podWorker) probeUntil(ctx context.Context, p *corev1.Probe, t probeTarget, untilSuccess bool) bool {
	if !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return true
	}
	fails := int32(0)
	for {
		err := runProbe(ctx, p, t)
		if ctx.Err() != nil {
			return true
		}
		if err == nil {
			fails = 0
			if untilSuccess {
				return true
			}
		} else if fails++; fails >= threshold(p.FailureThreshold, 3) {
			return false
		}
		if !sleepCtx(ctx, period(p)) {
			return true
		}
	}
}

// readiness keeps c.ready up to date.
func (w *podWorker) readiness(ctx context.Context, c *container, p *corev1.Probe, t probeTarget) {
	if !sleepCtx(ctx, time.Duration(p.InitialDelaySeconds)*time.Second) {
		return
	}
	succ, fails := int32(0), int32(0)
	for {
		err := runProbe(ctx, p, t)
		if ctx.Err() != nil {
			return
		}
		w.mu.Lock()
		was := c.ready
		if err == nil {
			succ, fails = succ+1, 0
			if succ >= threshold(p.SuccessThreshold, 1) {
				c.ready = true
			}
		} else {
			succ, fails = 0, fails+1
			if fails >= threshold(p.FailureThreshold, 3) {
				c.ready = false
			}
		}
		changed := was != c.ready
		w.mu.Unlock()
		if changed {
			w.markDirty()
		}
		if !sleepCtx(ctx, period(p)) {
			return
		}
	}
}

func sleepCtx(ctx context.Context, d time.Duration) bool {
	if d <= 0 {
		return ctx.Err() == nil
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return true
	case <-ctx.Done():
		return false
	}
}

func (w *podWorker) graceOf() time.Duration {
	if g := w.currentPod().Spec.TerminationGracePeriodSeconds; g != nil {
		return time.Duration(*g) * time.Second
	}
	return 30 * time.Second
}

// killContainer sends SIGTERM, waits up to grace, then kills the container's
// whole cgroup.
func (w *podWorker) killContainer(c *container, grace time.Duration) {
	w.mu.Lock()
	pid, exited := c.pid, c.exited
	w.mu.Unlock()
	if exited == nil {
		return
	}
	if pid > 0 {
		syscall.Kill(pid, syscall.SIGTERM)
	}
	t := time.NewTimer(grace)
	defer t.Stop()
	select {
	case <-exited:
	case <-t.C:
	}
	os.WriteFile(filepath.Join(c.cgroup, "cgroup.kill"), []byte("1"), 0)
	select {
	case <-exited:
	case <-time.After(10 * time.Second):
		w.logf("container %s: pid %d did not exit after SIGKILL", c.spec.Name, pid)
	}
}

// terminate stops every container: SIGTERM, the grace period, SIGKILL.
func (w *podWorker) terminate() {
	w.mu.Lock()
	grace := w.grace
	w.mu.Unlock()
	var wg sync.WaitGroup
	for _, c := range w.ctrs {
		wg.Add(1)
		go func() { defer wg.Done(); w.killContainer(c, grace) }()
	}
	wg.Wait()
}

// cleanup removes everything the pod had on the node.
func (w *podWorker) cleanup() {
	pod := w.currentPod()
	w.mu.Lock()
	netns, id := w.netns, w.sandboxID
	w.mu.Unlock()
	if netns != "" {
		ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
		if err := w.k.cni.del(ctx, pod.Namespace, pod.Name, string(pod.UID), id, netns); err != nil {
			w.logf("%v", err)
		}
		cancel()
		if err := removeNetns(netns); err != nil {
			w.logf("%v", err)
		}
	}
	if err := removeCgroup(w.cgroup); err != nil {
		w.logf("%v", err)
	}
	os.RemoveAll(w.podDir())
	w.recMu.Lock()
	w.recGone = true
	os.Remove(w.record)
	w.recMu.Unlock()
}

// finish deletes a pod that was being deleted, now that it has stopped.
func (w *podWorker) finish() {
	w.mu.Lock()
	pod, gone := w.pod, w.gone
	w.mu.Unlock()
	if gone || pod.DeletionTimestamp == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	zero := int64(0)
	err := w.k.client.CoreV1().Pods(pod.Namespace).Delete(ctx, pod.Name, metav1.DeleteOptions{
		GracePeriodSeconds: &zero, Preconditions: &metav1.Preconditions{UID: &pod.UID},
	})
	if err != nil && !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
		w.logf("delete: %v", err)
	}
}

// writeRecord writes the pod's record file for the lab's test helpers.
func (w *podWorker) writeRecord() {
	pod := w.currentPod()
	w.mu.Lock()
	r := &podRecord{Namespace: pod.Namespace, Name: pod.Name, UID: string(pod.UID), Node: w.k.cfg.NodeName,
		Netns: w.netns, Cgroup: w.cgroup, IP: w.ip, SandboxID: w.sandboxID, Containers: map[string]containerRecord{}}
	for _, c := range w.ctrs {
		r.Containers[c.spec.Name] = containerRecord{PID: c.pid, Log: c.log, Restarts: c.restarts}
	}
	w.mu.Unlock()
	w.recMu.Lock()
	defer w.recMu.Unlock()
	if w.recGone {
		return
	}
	if err := writeRecord(w.record, r); err != nil {
		w.logf("%v", err)
	}
}

// statusLoop writes the pod's status whenever it changes.
func (w *podWorker) statusLoop(ctx context.Context) {
	var last []byte
	for {
		select {
		case <-w.dirty:
		case <-ctx.Done():
			// One last write with the final state.
			w.pushStatus(&last)
			return
		}
		time.Sleep(100 * time.Millisecond) // coalesce bursts
		w.pushStatus(&last)
		w.writeRecord()
	}
}

func (w *podWorker) pushStatus(last *[]byte) {
	w.mu.Lock()
	gone := w.gone
	st := w.buildStatus()
	pod := w.pod
	w.mu.Unlock()
	if gone {
		return
	}
	patch, err := json.Marshal(map[string]any{"metadata": map[string]any{"uid": pod.UID}, "status": st})
	if err != nil || string(patch) == string(*last) {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = w.k.client.CoreV1().Pods(pod.Namespace).Patch(ctx, pod.Name, types.MergePatchType, patch, metav1.PatchOptions{}, "status")
	if err != nil {
		if !apierrors.IsNotFound(err) && !apierrors.IsConflict(err) {
			w.logf("write status: %v", err)
		}
		return
	}
	*last = patch
}

// buildStatus computes the pod's status; w.mu is held.
func (w *podWorker) buildStatus() corev1.PodStatus {
	pod := w.pod
	now := metav1.Now()
	st := corev1.PodStatus{
		HostIP:    w.k.cfg.NodeIP,
		HostIPs:   []corev1.HostIP{{IP: w.k.cfg.NodeIP}},
		StartTime: &w.startTime,
		QOSClass:  pod.Status.QOSClass,
	}
	if w.ip != "" {
		st.PodIP = w.ip
		st.PodIPs = []corev1.PodIP{{IP: w.ip}}
	}
	allReady, anyRunning, anyStarted := true, false, false
	mainDone, mainFailed := true, false
	for _, c := range w.ctrs {
		cs := corev1.ContainerStatus{
			Name: c.spec.Name, Image: c.spec.Image, ImageID: "lab://" + c.image,
			State: c.state, LastTerminationState: c.last, Ready: c.ready, RestartCount: c.restarts,
		}
		started := c.state.Running != nil
		cs.Started = &started
		if c.state.Running != nil {
			cs.ContainerID = fmt.Sprintf("lab://%d", c.pid)
		} else if c.state.Terminated != nil {
			cs.ContainerID = c.state.Terminated.ContainerID
		}
		if c.init {
			st.InitContainerStatuses = append(st.InitContainerStatuses, cs)
			continue
		}
		st.ContainerStatuses = append(st.ContainerStatuses, cs)
		allReady = allReady && c.ready
		anyRunning = anyRunning || c.state.Running != nil
		anyStarted = anyStarted || c.started
		if !c.done {
			mainDone = false
		} else if c.state.Terminated != nil && c.state.Terminated.ExitCode != 0 {
			mainFailed = true
		}
	}
	switch {
	case w.failed:
		st.Phase = corev1.PodFailed
	case w.initDone && mainDone && mainFailed:
		st.Phase = corev1.PodFailed
	case w.initDone && mainDone:
		st.Phase = corev1.PodSucceeded
	case anyRunning || anyStarted:
		st.Phase = corev1.PodRunning
	default:
		st.Phase = corev1.PodPending
	}
	if w.sandboxErr != "" {
		st.Message = w.sandboxErr
		st.Reason = "SandboxNotReady"
	}
	cond := func(t corev1.PodConditionType, ok bool, reason string) corev1.PodCondition {
		s := corev1.ConditionFalse
		if ok {
			s = corev1.ConditionTrue
			reason = ""
		}
		return corev1.PodCondition{Type: t, Status: s, Reason: reason, LastTransitionTime: now}
	}
	ready := allReady && anyRunning && w.initDone
	st.Conditions = []corev1.PodCondition{
		cond(corev1.PodReadyToStartContainers, w.ip != "" && w.sandboxErr == "", ""),
		cond(corev1.PodInitialized, w.initDone, "ContainersNotInitialized"),
		cond(corev1.ContainersReady, ready, "ContainersNotReady"),
		cond(corev1.PodReady, ready, "ContainersNotReady"),
		cond(corev1.PodScheduled, true, ""),
	}
	// Keep transition times stable: only a changed status moves them.
	for i := range st.Conditions {
		for _, old := range pod.Status.Conditions {
			if old.Type == st.Conditions[i].Type && old.Status == st.Conditions[i].Status {
				st.Conditions[i].LastTransitionTime = old.LastTransitionTime
			}
		}
	}
	return st
}

// safeSysctls are the namespaced sysctls the kubelet allows a pod to set
// without --allowed-unsafe-sysctls (Kubernetes' safe set, network part).
var safeSysctls = map[string]bool{
	"net.ipv4.ip_local_port_range":        true,
	"net.ipv4.ip_local_reserved_ports":    true,
	"net.ipv4.ip_unprivileged_port_start": true,
	"net.ipv4.ping_group_range":           true,
	"net.ipv4.tcp_syncookies":             true,
	"net.ipv4.tcp_keepalive_time":         true,
	"net.ipv4.tcp_fin_timeout":            true,
	"net.ipv4.tcp_keepalive_intvl":        true,
	"net.ipv4.tcp_keepalive_probes":       true,
}

// applySysctls sets the pod's securityContext.sysctls in its network
// namespace; a sysctl outside the safe set fails the sandbox as the kubelet
// does (SysctlForbidden).
func applySysctls(netns string, psc *corev1.PodSecurityContext) error {
	if psc == nil || len(psc.Sysctls) == 0 {
		return nil
	}
	for _, s := range psc.Sysctls {
		if !safeSysctls[s.Name] {
			return fmt.Errorf("SysctlForbidden: sysctl %q is not in the safe set this kubelet allows", s.Name)
		}
	}
	return inNetns(netns, func() error {
		for _, s := range psc.Sysctls {
			p := "/proc/sys/" + strings.ReplaceAll(s.Name, ".", "/")
			if err := os.WriteFile(p, []byte(s.Value), 0o644); err != nil {
				return fmt.Errorf("sysctl %s=%s: %w", s.Name, s.Value, err)
			}
		}
		return nil
	})
}
