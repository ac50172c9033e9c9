package lab

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"go.etcd.io/etcd/server/v3/embed"
	"golang.org/x/sys/unix"

	"github.com/meshlet/meshlet/pkg/testutil"
	"github.com/meshlet/meshlet/test/lab/kubelet"
)

// SuperviseOptions configures the supervisor process.
type SuperviseOptions struct {
	Layout Layout // the lab's .lab directory
	Nodes  int    // number of nodes, 1..MaxNodes
	Tools  string // directory of the upstream binaries (kube-apiserver, ...)
	Self   string // absolute path of the lab binary, run as `lab kubelet` per node
	// Owner, when set, is the pid of the process the lab was started for
	// (a test binary): once it ends without taking the lab down (a test
	// that panicked, `go test -timeout`), the supervisor runs `lab down`.
	Owner int
}

// child is one process the supervisor keeps running.
type child struct {
	name string   // key in State.Processes and log file base name
	exe  string   // program that finally runs (after nsenter)
	argv []string // full command line
	cmd  *exec.Cmd
	done chan struct{}
}

type supervisor struct {
	opt  SuperviseOptions
	st   *State
	mu   sync.Mutex
	kids []*child
	stop bool
}

// Supervise runs the lab until ctx is done: embedded etcd, the control plane,
// the node network, and per node kube-proxy and the lab kubelet. On return
// every child has been stopped; network and cgroups are left for Down.
func Supervise(ctx context.Context, opt SuperviseOptions) error {
	l := opt.Layout
	st, err := loadState(l)
	if err != nil {
		return err
	}
	var nodes []string
	for i := 1; i <= opt.Nodes; i++ {
		nodes = append(nodes, NodeName(i))
	}
	if err := st.update(func(s *State) { s.Supervisor = os.Getpid(); s.Nodes = nodes }); err != nil {
		return err
	}
	s := &supervisor{opt: opt, st: st}

	log.Printf("starting etcd on %s", EtcdClientURL)
	etcd, err := startEtcd(l)
	if err != nil {
		return err
	}
	defer func() {
		etcd.Close()
		log.Printf("etcd stopped")
	}()

	log.Printf("creating bridge %s and %d node namespaces", BridgeName, opt.Nodes)
	if err := setupBridge(l, st); err != nil {
		return err
	}
	for i := 1; i <= opt.Nodes; i++ {
		if err := setupNodeNet(st, i); err != nil {
			return err
		}
	}
	defer s.stopAll()

	if err := s.startControlPlane(ctx); err != nil {
		return err
	}
	for i := 1; i <= opt.Nodes; i++ {
		if err := s.startNode(i); err != nil {
			return err
		}
	}
	go s.routePods(ctx)
	if opt.Owner > 0 {
		started, err := procStartTime(opt.Owner)
		if err != nil {
			return fmt.Errorf("owner pid %d: %w", opt.Owner, err)
		}
		go watchOwner(ctx, opt.Owner, started, 2*time.Second, func() {
			log.Printf("owner pid %d ended without taking the lab down: running `lab down`", opt.Owner)
			s.downDetached()
		})
	}
	log.Printf("lab running")
	<-ctx.Done()
	log.Printf("stopping lab: %v", context.Cause(ctx))
	return nil
}

func startEtcd(l Layout) (*embed.Etcd, error) {
	cfg := embed.NewConfig()
	cfg.Name = "lab"
	cfg.Dir = l.Path("etcd")
	cfg.Logger = "zap"
	cfg.LogLevel = "warn"
	cfg.LogOutputs = []string{l.Logs("etcd.log")}
	cu, err := parseURL(EtcdClientURL)
	if err != nil {
		return nil, err
	}
	pu, err := parseURL(EtcdPeerURL)
	if err != nil {
		return nil, err
	}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = cu, cu
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = pu, pu
	cfg.InitialCluster = "lab=" + EtcdPeerURL
	cfg.ListenMetricsUrls = nil
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("start embedded etcd on %s (is the port in use by another etcd?): %w", EtcdClientURL, err)
	}
	select {
	case <-e.Server.ReadyNotify():
		return e, nil
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("start embedded etcd: not ready after 60s; see %s", l.Logs("etcd.log"))
	}
}

func (s *supervisor) startControlPlane(ctx context.Context) error {
	l, tools := s.opt.Layout, s.opt.Tools
	pki := l.PKI
	for _, k := range []struct{ file, name, user string }{
		{l.Path("controller-manager.kubeconfig"), "controller-manager", "system:kube-controller-manager"},
		{l.Path("scheduler.kubeconfig"), "scheduler", "system:kube-scheduler"},
		{l.Path("kube-proxy.kubeconfig"), "kube-proxy", "system:kube-proxy"},
	} {
		if err := writeKubeconfig(l, k.file, k.name, k.user); err != nil {
			return err
		}
	}
	apiserver := filepath.Join(tools, "kube-apiserver")
	if err := s.start("kube-apiserver", apiserver, []string{apiserver,
		"--advertise-address=" + BridgeIP,
		"--bind-address=" + BridgeIP,
		"--secure-port=" + strconv.Itoa(APIPort),
		"--etcd-servers=" + EtcdClientURL,
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--client-ca-file=" + pki("ca.crt"),
		"--tls-cert-file=" + pki("apiserver.crt"),
		"--tls-private-key-file=" + pki("apiserver.key"),
		"--kubelet-client-certificate=" + pki("apiserver-kubelet-client.crt"),
		"--kubelet-client-key=" + pki("apiserver-kubelet-client.key"),
		"--kubelet-preferred-address-types=InternalIP",
		"--kubelet-certificate-authority=" + pki("ca.crt"),
		"--service-account-issuer=https://kubernetes.default.svc." + ClusterDomain,
		"--service-account-key-file=" + pki("sa.pub"),
		"--service-account-signing-key-file=" + pki("sa.key"),
		"--authorization-mode=Node,RBAC",
		"--enable-admission-plugins=NodeRestriction",
		"--allow-privileged=true",
		"--cert-dir=" + l.Path("pki", "apiserver-generated"),
		"--profiling=false",
	}); err != nil {
		return err
	}
	if err := waitAPIServer(ctx, l, 120*time.Second); err != nil {
		return err
	}
	log.Printf("kube-apiserver ready on https://%s:%d", BridgeIP, APIPort)
	kcm := filepath.Join(tools, "kube-controller-manager")
	if err := s.start("kube-controller-manager", kcm, []string{kcm,
		"--kubeconfig=" + l.Path("controller-manager.kubeconfig"),
		"--authentication-kubeconfig=" + l.Path("controller-manager.kubeconfig"),
		"--authorization-kubeconfig=" + l.Path("controller-manager.kubeconfig"),
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--allocate-node-cidrs=true",
		"--cluster-cidr=" + ClusterCIDR,
		"--node-cidr-mask-size=24",
		"--service-cluster-ip-range=" + ServiceCIDR,
		"--service-account-private-key-file=" + pki("sa.key"),
		"--root-ca-file=" + pki("ca.crt"),
		"--cluster-signing-cert-file=" + pki("ca.crt"),
		"--cluster-signing-key-file=" + pki("ca.key"),
		"--use-service-account-credentials=true",
		"--configure-cloud-routes=false",
		"--profiling=false",
	}); err != nil {
		return err
	}
	sched := filepath.Join(tools, "kube-scheduler")
	return s.start("kube-scheduler", sched, []string{sched,
		"--kubeconfig=" + l.Path("scheduler.kubeconfig"),
		"--authentication-kubeconfig=" + l.Path("scheduler.kubeconfig"),
		"--authorization-kubeconfig=" + l.Path("scheduler.kubeconfig"),
		"--bind-address=127.0.0.1",
		"--secure-port=0",
		"--leader-elect=false",
		"--profiling=false",
	})
}

// startNode prepares node i's directories, cgroup, bpffs and credentials and
// starts kube-proxy and the lab kubelet inside its netns.
func (s *supervisor) startNode(i int) error {
	l := s.opt.Layout
	node := NodeName(i)
	ns := NodeNetns(node)
	root := l.NodeRoot(node)
	for _, d := range []string{"etc/cni/net.d", "opt/cni/bin", "var/run/netns", "var/run/meshlet", "sys/fs/bpf", "var/lib/kubelet", "var/log/pods", "pods"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			return fmt.Errorf("create node dir %s: %w", d, err)
		}
	}
	cg, err := testutil.Cgroup2Root()
	if err != nil {
		return fmt.Errorf("find the cgroup v2 mount (the lab needs cgroup v2): %w", err)
	}
	slice := filepath.Join(cg, CgroupSlice)
	nodeCg := filepath.Join(slice, node)
	if err := s.st.update(func(st *State) {
		st.Cgroups = addUnique(st.Cgroups, slice)
		st.Cgroups = addUnique(st.Cgroups, nodeCg)
	}); err != nil {
		return err
	}
	if err := os.MkdirAll(nodeCg, 0o755); err != nil {
		return fmt.Errorf("create cgroup %s: %w", nodeCg, err)
	}
	bpffs := filepath.Join(root, "sys/fs/bpf")
	if !isMountPoint(bpffs) {
		if err := s.st.update(func(st *State) { st.Mounts = addUnique(st.Mounts, bpffs) }); err != nil {
			return err
		}
		if err := unix.Mount("bpf", bpffs, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("mount a bpffs instance on %s: %w", bpffs, err)
		}
	}
	kc := filepath.Join(root, "kubeconfig")
	if err := writeKubeconfig(l, kc, "node-"+node, "system:node:"+node); err != nil {
		return err
	}
	images := map[string]string{}
	if b, err := os.ReadFile(l.Path("images.json")); err == nil {
		if err := json.Unmarshal(b, &images); err != nil {
			return fmt.Errorf("parse %s: %w", l.Path("images.json"), err)
		}
	}
	cfg := kubelet.Config{
		NodeName:      node,
		NodeIP:        NodeIP(i),
		Kubeconfig:    kc,
		NodeRoot:      root,
		CgroupRoot:    nodeCg,
		CNIConfDir:    filepath.Join(root, "etc/cni/net.d"),
		CNIBinDir:     filepath.Join(root, "opt/cni/bin"),
		ClusterDNS:    ClusterDNS,
		ClusterDomain: ClusterDomain,
		Images:        images,
		ImagesFile:    l.Path("images.json"),
		ServingCert:   l.PKI("kubelet-" + node + ".crt"),
		ServingKey:    l.PKI("kubelet-" + node + ".key"),
		ClientCA:      l.PKI("ca.crt"),
		LogDir:        filepath.Join(root, "var/log/pods"),
	}
	b, err := json.MarshalIndent(cfg, "", "  ")
	if err != nil {
		return fmt.Errorf("encode kubelet config: %w", err)
	}
	cfgPath := filepath.Join(root, "kubelet.json")
	if err := os.WriteFile(cfgPath, b, 0o644); err != nil {
		return fmt.Errorf("write %s: %w", cfgPath, err)
	}
	kp := filepath.Join(s.opt.Tools, "kube-proxy")
	if err := s.start("kube-proxy-"+node, kp, []string{"nsenter", "--net=/var/run/netns/" + ns, "--", kp,
		"--kubeconfig=" + l.Path("kube-proxy.kubeconfig"),
		"--hostname-override=" + node,
		"--bind-address=" + NodeIP(i),
		"--cluster-cidr=" + ClusterCIDR,
		"--proxy-mode=iptables",
		"--conntrack-max-per-core=0",
		"--metrics-bind-address=127.0.0.1:10249",
		"--healthz-bind-address=127.0.0.1:10256",
		"--nodeport-addresses=" + NodeIP(i) + "/32",
		"--profiling=false",
	}); err != nil {
		return err
	}
	return s.start("kubelet-"+node, s.opt.Self, []string{"nsenter", "--net=/var/run/netns/" + ns, "--", s.opt.Self, "kubelet", "--config", cfgPath})
}

// start launches a child and keeps it running (restarting after exits with a
// backoff) until stopAll.
func (s *supervisor) start(name, exe string, argv []string) error {
	c := &child{name: name, exe: exe, argv: argv, done: make(chan struct{})}
	if err := s.spawn(c); err != nil {
		return err
	}
	s.mu.Lock()
	s.kids = append(s.kids, c)
	s.mu.Unlock()
	go s.keep(c)
	return nil
}

func (s *supervisor) spawn(c *child) error {
	logPath := s.opt.Layout.Logs(c.name + ".log")
	f, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644)
	if err != nil {
		return fmt.Errorf("open log %s: %w", logPath, err)
	}
	defer f.Close()
	path, err := exec.LookPath(c.argv[0])
	if err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	cmd := exec.Command(path, c.argv[1:]...)
	cmd.Stdout, cmd.Stderr = f, f
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", c.name, err)
	}
	c.cmd = cmd
	log.Printf("started %s pid %d (log %s)", c.name, cmd.Process.Pid, logPath)
	return s.st.update(func(st *State) { st.Processes[c.name] = Proc{Pid: cmd.Process.Pid, Exe: c.exe} })
}

// keep waits for c and restarts it until the supervisor stops; restarts are
// spaced by a growing backoff capped at 30s.
func (s *supervisor) keep(c *child) {
	backoff := time.Second
	for {
		err := c.cmd.Wait()
		s.mu.Lock()
		stopping := s.stop
		s.mu.Unlock()
		if stopping {
			close(c.done)
			return
		}
		log.Printf("%s exited (%v); restarting in %s, see %s", c.name, err, backoff, s.opt.Layout.Logs(c.name+".log"))
		time.Sleep(backoff)
		backoff = min(backoff*2, 30*time.Second)
		s.mu.Lock()
		stopping = s.stop
		s.mu.Unlock()
		if stopping {
			close(c.done)
			return
		}
		if err := s.spawn(c); err != nil {
			log.Printf("restart %s: %v", c.name, err)
			close(c.done)
			return
		}
	}
}

// stopAll stops children in reverse start order (kubelets first, so they
// clean up their pods; the API server last): SIGTERM, then SIGKILL.
func (s *supervisor) stopAll() {
	s.mu.Lock()
	s.stop = true
	kids := append([]*child(nil), s.kids...)
	s.mu.Unlock()
	for i := len(kids) - 1; i >= 0; i-- {
		c := kids[i]
		if c.cmd == nil || c.cmd.Process == nil {
			continue
		}
		grace := 10 * time.Second
		if len(c.name) > 7 && c.name[:7] == "kubelet" {
			grace = 60 * time.Second
		}
		_ = c.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-c.done:
		case <-time.After(grace):
			log.Printf("%s did not stop within %s; killing it", c.name, grace)
			_ = c.cmd.Process.Kill()
			<-c.done
		}
		log.Printf("stopped %s", c.name)
		_ = s.st.update(func(st *State) { delete(st.Processes, c.name) })
	}
}

// routePods installs routes to each node's pod CIDR once the controller
// manager has allocated it.
func (s *supervisor) routePods(ctx context.Context) {
	cs, err := clientsetFor(s.opt.Layout.Kubeconfig())
	if err != nil {
		log.Printf("pod routes: %v", err)
		return
	}
	done := map[string]string{}
	t := time.NewTicker(time.Second)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for i := 1; i <= s.opt.Nodes; i++ {
			node := NodeName(i)
			cidr, err := podCIDR(ctx, cs, node)
			if err != nil || cidr == "" || done[node] == cidr {
				continue
			}
			if err := routePodCIDR(s.opt.Nodes, i, cidr); err != nil {
				log.Printf("route pod CIDR of %s: %v", node, err)
				continue
			}
			done[node] = cidr
			log.Printf("routed %s pod CIDR %s via %s", node, cidr, NodeIP(i))
		}
	}
}

// waitAPIServer polls /readyz with the admin credentials.
func waitAPIServer(ctx context.Context, l Layout, timeout time.Duration) error {
	caPEM, err := os.ReadFile(l.PKI("ca.crt"))
	if err != nil {
		return fmt.Errorf("read lab CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	cert, err := tls.LoadX509KeyPair(l.PKI("admin.crt"), l.PKI("admin.key"))
	if err != nil {
		return fmt.Errorf("load admin credentials: %w", err)
	}
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool, Certificates: []tls.Certificate{cert}}}}
	deadline := time.Now().Add(timeout)
	var last error
	for time.Now().Before(deadline) {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		resp, err := hc.Get(fmt.Sprintf("https://%s:%d/readyz", BridgeIP, APIPort))
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("readyz: %s", resp.Status)
		}
		last = err
		time.Sleep(500 * time.Millisecond)
	}
	return fmt.Errorf("kube-apiserver not ready after %s (last: %v); see %s", timeout, last, l.Logs("kube-apiserver.log"))
}

// isMountPoint reports whether path is listed as a mount point in
// /proc/self/mountinfo.
func isMountPoint(path string) bool {
	for _, m := range mountsUnder(path) {
		if m == path {
			return true
		}
	}
	return false
}

var errNotRoot = errors.New("the lab needs root: run it with sudo (it creates network namespaces, a bridge, cgroups and bpffs mounts)")

// procStartTime returns when process pid started (the 22nd field of its
// /proc stat, in clock ticks since boot): with the pid, it names one
// process, whatever reuses the pid later.
func procStartTime(pid int) (string, error) {
	stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return "", err
	}
	// The command name (field 2) may hold spaces and parentheses: the
	// fields after it follow the last ')'.
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	f := strings.Fields(string(stat[i+1:]))
	if len(f) < 20 {
		return "", fmt.Errorf("malformed /proc/%d/stat", pid)
	}
	if f[0] == "Z" {
		return "", fmt.Errorf("process %d has exited", pid)
	}
	return f[19], nil
}

// watchOwner checks every period that process pid, started at started
// (procStartTime), still runs, and calls gone once it does not (ended, a
// zombie, or its pid taken by another process), unless ctx ends first.
func watchOwner(ctx context.Context, pid int, started string, every time.Duration, gone func()) {
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if now, err := procStartTime(pid); err != nil || now != started {
			gone()
			return
		}
	}
}

// downDetached starts `lab down` for this lab in a session of its own: it
// stops this supervisor (SIGTERM) and then removes what the lab made.
func (s *supervisor) downDetached() {
	l := s.opt.Layout
	cmd := exec.Command(s.opt.Self, "down")
	cmd.Env = append(os.Environ(), "MESHLET_LAB_DIR="+l.Dir)
	cmd.Dir = l.Repo()
	if logf, err := os.OpenFile(l.Logs("down.log"), os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o644); err == nil {
		defer logf.Close()
		cmd.Stdout, cmd.Stderr = logf, logf
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		log.Printf("start `lab down`: %v; run it by hand", err)
		return
	}
	_ = cmd.Process.Release()
}
