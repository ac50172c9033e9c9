// Command node-agent is meshlet's per-node agent (a DaemonSet): it loads the
// eBPF data path, installs meshlet-cni, enrolls the node's mesh pods and runs
// their in-pod proxies. See node-agent/agent for how the parts fit. It must
// not hold logic of its own beyond flags, start-up checks and wiring.
package main

import (
	"bufio"
	"context"
	"errors"
	"flag"
	"fmt"
	"log"
	"net/http"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/meshlet/meshlet/node-agent/agent"
	"github.com/meshlet/meshlet/node-agent/cni"
	"github.com/meshlet/meshlet/node-agent/cni/install"
	"github.com/meshlet/meshlet/node-agent/ebpf"
	"github.com/meshlet/meshlet/node-agent/enroll"
	"github.com/meshlet/meshlet/node-agent/kube"
	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/admin"
	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/model"
	xdsclient "github.com/meshlet/meshlet/pkg/xds/client"
)

type flags struct {
	dnsUpstream, clusterDomain        string
	noDNSCapture                      bool
	nodeName, kubeconfig, trustDomain string
	pinDir, cgroupRoot                string
	cniSocket, cniState               string
	cniPluginSocket, cniPluginState   string
	cniConfDir, cniBinDir, cniBinary  string
	installCNI, uninstallCNIOnExit    bool
	daemonSetName, namespace          string
	metricsAddr, readinessAddr        string
	drainTimeout                      time.Duration
	netnsDir                          string
	meshdAddress, meshdServerName     string
	meshdRootCert, tokenFile          string
	adminAddr, memoryLimit            string
	pprof                             bool
	workerThreads                     int
	removeRedirection                 bool
}

func parseFlags() flags {
	var f flags
	exe, _ := os.Executable()
	flag.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "this node's name (default $NODE_NAME, from the downward API)")
	flag.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster config")
	flag.StringVar(&f.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	flag.StringVar(&f.pinDir, "bpf-pin-dir", ebpf.DefaultPinDir, "bpffs directory for pinned maps and links")
	flag.StringVar(&f.cgroupRoot, "cgroup-root", "", "cgroup v2 directory the cgroup programs attach to; empty means the cgroup2 mount from /proc/mounts")
	flag.StringVar(&f.cniSocket, "cni-socket", cni.DefaultSocketPath, "unix socket meshlet-cni talks to")
	flag.StringVar(&f.cniState, "cni-state", cni.DefaultStatePath, "enrollment snapshot meshlet-cni reads when the agent is away")
	flag.StringVar(&f.cniPluginSocket, "cni-plugin-socket", "", "--cni-socket as the node (the runtime running meshlet-cni) sees it; empty means the same path")
	flag.StringVar(&f.cniPluginState, "cni-plugin-state", "", "--cni-state as the node sees it; empty means the same path")
	flag.StringVar(&f.cniConfDir, "cni-conf-dir", "/etc/cni/net.d", "the node's CNI configuration directory")
	flag.StringVar(&f.cniBinDir, "cni-bin-dir", "/opt/cni/bin", "the node's CNI binary directory")
	flag.StringVar(&f.cniBinary, "cni-binary", filepath.Join(filepath.Dir(exe), cni.PluginType), "the meshlet-cni binary to install")
	flag.BoolVar(&f.installCNI, "install-cni", true, "install meshlet-cni into the node's CNI configuration and keep it there")
	flag.StringVar(&f.daemonSetName, "daemonset-name", "meshlet-node-agent", "the agent's own DaemonSet: when it is being deleted at exit, the agent removes its eBPF programs and CNI entry (uninstall); otherwise they stay for the next agent")
	flag.StringVar(&f.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the agent's namespace (default $POD_NAMESPACE)")
	flag.BoolVar(&f.uninstallCNIOnExit, "uninstall-cni-on-exit", false, "remove meshlet-cni on exit (for uninstalling meshlet; a restart keeps it so new mesh pods fail closed)")
	flag.StringVar(&f.metricsAddr, "metrics-addr", ":15020", "Prometheus metrics listen address")
	flag.StringVar(&f.readinessAddr, "readiness-addr", ":15021", "readiness (/healthz/ready) listen address")
	flag.DurationVar(&f.drainTimeout, "drain-timeout", 30*time.Second, "how long open connections may finish on shutdown or unenrollment")
	flag.StringVar(&f.netnsDir, "netns-dir", "/var/run/netns", "the runtime's netns bind mounts, searched for running pods")
	flag.StringVar(&f.dnsUpstream, "dns-upstream", "", "resolver (host:port) the DNS proxy forwards names the mesh does not know to when the pod's own resolver is unknown; empty: the kube-dns Service of kube-system")
	flag.StringVar(&f.clusterDomain, "cluster-domain", "cluster.local", "DNS domain of the cluster (the kubelet's --cluster-domain): the DNS proxy answers a mesh name with a pod's search domains <namespace>.svc.<domain>, svc.<domain> and <domain> appended")
	flag.BoolVar(&f.noDNSCapture, "no-dns-capture", false, "leave enrolled pods' DNS alone (no DNS proxy: ServiceEntry hosts without cluster DNS records do not resolve)")
	flag.StringVar(&f.meshdAddress, "meshd-address", "", "meshd's xDS and CA address (host:port, 15012); empty runs without the mesh: enrolled traffic passes through unencrypted (data path testing only)")
	flag.StringVar(&f.meshdServerName, "meshd-server-name", "", "name meshd's TLS certificate must carry; empty means the host of --meshd-address")
	flag.StringVar(&f.meshdRootCert, "meshd-root-cert", "/var/run/secrets/meshlet/root-cert.pem", "PEM root certificate of the mesh (meshd's TLS and workload certificates)")
	flag.StringVar(&f.tokenFile, "token-file", "/var/run/secrets/kubernetes.io/serviceaccount/token", "service account token sent to meshd")
	// The agent runs in the host's network namespace, whose loopback every
	// host process and hostNetwork pod shares: the admin port answers root
	// only (admin.Options.RootPeersOnly), and pprof is off unless asked for
	// (a heap profile holds private keys).
	flag.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:15000", "admin listen address, loopback only: /config_dump (what `meshctl agent-config` shows), /debug/tap (`meshctl tap node/<node>`), and pprof with --pprof; empty disables")
	flag.BoolVar(&f.pprof, "pprof", false, "serve pprof on --admin-addr too (heap profile sampling costs ~0.4 MB)")
	flag.StringVar(&f.memoryLimit, "memory-limit", "auto", admin.MemoryLimitUsage)
	flag.IntVar(&f.workerThreads, "worker-threads", 1, admin.WorkerThreadsUsage)
	flag.BoolVar(&f.removeRedirection, "remove-redirection-annotations", false, "do not run the agent: once no pod of --daemonset-name in --namespace is left, remove the "+model.AnnotationRedirection+" annotation the agents wrote from every pod, and exit (the chart's Helm post-delete hook)")
	flag.Parse()
	return f
}

func main() {
	// Microseconds: a rolling update's handoff happens within one second.
	log.SetFlags(log.LstdFlags | log.Lmicroseconds)
	f := parseFlags()
	if f.removeRedirection {
		if err := runRemoveRedirection(f); err != nil {
			log.Fatalf("node-agent --remove-redirection-annotations: %v", err)
		}
		return
	}
	if f.adminAddr == "" || !f.pprof {
		// Without pprof no one can read a heap profile:
		// sampling would only fill the profiler's bucket table (1.4 MB
		// reserved, a page of it resident for about every call stack
		// sampled), measured at ~0.4 MB of the agent's RSS with 50 pods.
		runtime.MemProfileRate = 0
	}
	xdsclient.SetMeshdResolution()
	if err := run(f); err != nil {
		log.Fatalf("node-agent: %v", err)
	}
}

func run(f flags) error {
	if f.nodeName == "" {
		return errors.New("no node name: pass --node-name or set NODE_NAME (fieldRef spec.nodeName)")
	}
	domain, err := admin.ParseClusterDomain(f.clusterDomain)
	if err != nil {
		return err
	}
	f.clusterDomain = domain
	if _, err := admin.ApplyMemoryLimit(f.memoryLimit); err != nil {
		return err
	}
	threads, from, err := admin.ApplyWorkerThreads(f.workerThreads)
	if err != nil {
		return err
	}
	gc, gcFrom := admin.ApplyGCPercent(agentGCPercent)
	log.Printf("worker threads: %d (%s); GOGC %d (%s)", threads, from, gc, gcFrom)
	if f.adminAddr != "" {
		if err := admin.CheckAddr(f.adminAddr); err != nil {
			return fmt.Errorf("--admin-addr: %w", err)
		}
	}
	// Claimed first of all: until this agent listens on the readiness port,
	// the kubelet's probes of its pod reach the older agent on this node
	// (the port is shared), which from now on answers them "not ready"
	// (agent.Succession); claimed later, the old agent would make the new
	// pod ready before it enrolled a single pod.
	succ, err := agent.ClaimSuccession(filepath.Join(filepath.Dir(f.cniState), "agent.pid"))
	if err != nil {
		return err
	}
	if err := ebpf.CheckKernel(); err != nil {
		return fmt.Errorf("kernel check (see README for the kernel floor): %w", err)
	}
	if f.cgroupRoot == "" {
		root, err := cgroup2Mount()
		if err != nil {
			return err
		}
		f.cgroupRoot = root
	}
	dpOpts := ebpf.Options{PinDir: f.pinDir, CgroupPath: f.cgroupRoot, AgentMark: agent.DefaultAgentMark,
		IngressSkipMark: agent.DefaultAgentMark}
	dp, err := ebpf.Adopt(dpOpts)
	if errors.Is(err, ebpf.ErrNothingPinned) {
		dp, err = ebpf.Load(dpOpts)
	}
	if err != nil {
		return fmt.Errorf("load data path: %w", err)
	}
	defer dp.Close() // pins stay: the next agent adopts them

	client, err := kubeClient(f.kubeconfig)
	if err != nil {
		return err
	}

	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()

	var m agent.Mesh
	configured := func() error { return nil }
	dumpMesh := func(*configdump.Agent) {}
	if f.meshdAddress != "" {
		mm, cfgd, dump, stopMesh, err := startMesh(ctx, f)
		if err != nil {
			return err
		}
		defer stopMesh()
		m, configured, dumpMesh = mm, cfgd, dump
	} else {
		log.Printf("no --meshd-address: enrolled traffic passes through the proxies without the tunnel")
	}

	reg := prometheus.NewRegistry()
	taps := &proxy.Tap{} // `meshctl tap`, on the admin port
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	ag, err := agent.New(agent.Options{
		NodeName: f.nodeName, TrustDomain: f.trustDomain, Datapath: dp,
		Metrics: proxy.NewMetrics(reg), Tap: taps, DrainTimeout: f.drainTimeout, Errorf: log.Printf, Mesh: m,
		DNS: dnsProxies(m, dp, client, f.dnsUpstream, f.clusterDomain, f.noDNSCapture),
	})
	if err != nil {
		return err
	}
	reg.MustRegister(ag.NewKernelCollector(dp))
	go func() {
		if err := ag.WatchHostAddrs(ctx, ""); err != nil {
			log.Printf("%v: an address the node gains from now on reaches the data path's probe sources only at the next enrollment of a pod with probes", err)
		}
	}()
	rec, err := enroll.New(enroll.Options{
		Client: client, NodeName: f.nodeName, SnapshotPath: f.cniState,
		Enroll: ag.Enroll, Unenroll: ag.Unenroll, Errorf: log.Printf, Logf: log.Printf, NetnsDir: f.netnsDir,
		AfterSync: func() {
			res, err := ag.ReconcileDatapath()
			if err != nil {
				log.Printf("%v", err)
				return
			}
			log.Printf("data path reconciled: %d pods written, %d stale removed, %d stale connections dropped",
				len(res.Upserted), len(res.Removed), res.RemovedConns)
		},
	})
	if err != nil {
		return err
	}
	srv, err := cni.Listen(cni.ServerOptions{SocketPath: f.cniSocket, Add: rec.CNIAdd, Del: rec.CNIDel})
	if err != nil {
		return err
	}
	go func() {
		if err := srv.Serve(); err != nil {
			log.Printf("cni socket: %v", err)
		}
	}()
	defer srv.Close()

	instOpts := install.Options{ConfDir: f.cniConfDir, BinDir: f.cniBinDir, Binary: f.cniBinary,
		SocketPath: or(f.cniPluginSocket, f.cniSocket), StatePath: or(f.cniPluginState, f.cniState)}
	if f.installCNI {
		go install.Watch(ctx, instOpts, func(err error) { log.Printf("install meshlet-cni: %v", err) })
	}

	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
	metricsSrv := &http.Server{Addr: f.metricsAddr, Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	go serveHTTP(metricsSrv)
	defer metricsSrv.Close()
	// Ready once every running pod is enrolled and meshd's first config is
	// in: until then a rolling update keeps the old agent, which can decide
	// for its pods.
	starting := func() error {
		if !rec.Synced() {
			return errors.New("pods not synced yet")
		}
		return configured()
	}
	readySrv := &http.Server{Addr: f.readinessAddr, Handler: ag.ReadinessHandler(starting, succ.Newest), ReadHeaderTimeout: 10 * time.Second}
	go serveHTTP(readySrv)
	defer readySrv.Close()

	if f.adminAddr != "" {
		// Not fatal: during a rolling update the agent being replaced
		// holds the port until it exits; this one takes it over then.
		dump := configdump.Handler(func() any {
			d := &configdump.Agent{Node: f.nodeName, TrustDomain: f.trustDomain, Enrolled: ag.Enrolled()}
			slices.Sort(d.Enrolled)
			dumpMesh(d)
			return d
		})
		go func() {
			logged := false
			for {
				// The node's loopback is every process's and every
				// hostNetwork pod's on the node: root only.
				err := admin.Serve(ctx, f.adminAddr, admin.Options{Pprof: f.pprof, RootPeersOnly: true,
					Handlers: map[string]http.Handler{configdump.Path: dump, configdump.TapPath: proxy.TapHandler(taps)}})
				if err == nil {
					return
				}
				if !logged {
					log.Printf("admin endpoint not served yet, retrying every 2s: %v", err)
					logged = true
				}
				select {
				case <-ctx.Done():
					return
				case <-time.After(2 * time.Second):
				}
			}
		}()
	}
	own := watchOwnDaemonSet(ctx, client, f.namespace, f.daemonSetName)
	recErr := make(chan error, 1)
	go func() { recErr <- rec.Run(ctx) }()
	// Once this node's pods are enrolled (and certificates and the first
	// config are in), the binary's start-up pages go, then what rare code
	// maps and the heap bursts leave, for the life of the agent.
	go admin.KeepLean(ctx, rec.Synced, log.Printf)
	log.Printf("node-agent on %s: data path loaded (pins %s, cgroup %s)", f.nodeName, f.pinDir, f.cgroupRoot)
	select {
	case <-ctx.Done():
	case err := <-recErr:
		if err != nil {
			return err
		}
	}
	log.Printf("draining (up to %s)", f.drainTimeout)
	// Not ready from now on. The readiness port is shared (SO_REUSEPORT)
	// with a surging new agent on this node: closing ours leaves every probe
	// to it, instead of answering the new pod's probes with our 503.
	readySrv.Close()
	uninstall := own.uninstalling()
	if uninstall {
		// The mesh is being removed: stop capturing first, so that enrolled
		// pods' new connections go directly again instead of to listeners
		// about to close (connections the proxies carry finish below).
		if err := dp.Uninstall(); err != nil {
			log.Printf("remove the eBPF data path: %v", err)
		} else {
			log.Printf("meshlet is being uninstalled: eBPF programs and pins removed")
		}
	}
	dctx, cancel := context.WithTimeout(context.Background(), f.drainTimeout)
	defer cancel()
	drain := ag.Drain
	if !uninstall {
		// A rolling update (or a restart): each pod keeps our listeners
		// until the successor's are beside them, within half the drain.
		drain = func(ctx context.Context) error { return ag.Handoff(ctx, f.drainTimeout/2) }
	}
	if err := drain(dctx); err != nil {
		log.Printf("drain: %v", err)
	}
	log.Printf("drained")
	if f.uninstallCNIOnExit || uninstall {
		if err := install.Uninstall(instOpts); err != nil {
			log.Printf("uninstall meshlet-cni: %v", err)
		}
	}
	return nil
}

func or(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// serveHTTP serves s on its address with SO_REUSEPORT, so during a rolling
// update (maxSurge) the new agent binds 15020/15021 on the node while the
// old one still drains.
func serveHTTP(s *http.Server) {
	ln, err := listenReusePort(s.Addr)
	if err != nil {
		log.Printf("listen on %s: %v", s.Addr, err)
		return
	}
	if err := s.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
		log.Printf("serve %s: %v", s.Addr, err)
	}
}

// kubeClient is the agent's Kubernetes client, from kubeconfig (empty:
// in-cluster).
func kubeClient(kubeconfig string) (*kube.Client, error) {
	cfg, err := restConfig(kubeconfig)
	if err != nil {
		return nil, err
	}
	return kube.New(cfg)
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		c, err := clientcmd.BuildConfigFromFlags("", kubeconfig)
		if err != nil {
			return nil, fmt.Errorf("load kubeconfig %s: %w", kubeconfig, err)
		}
		return c, nil
	}
	c, err := rest.InClusterConfig()
	if err != nil {
		return nil, fmt.Errorf("in-cluster config (or pass --kubeconfig): %w", err)
	}
	return c, nil
}

// cgroup2Mount finds the cgroup v2 mount in /proc/mounts; hybrid hosts mount
// it away from /sys/fs/cgroup.
func cgroup2Mount() (string, error) {
	fh, err := os.Open("/proc/mounts")
	if err != nil {
		return "", fmt.Errorf("read /proc/mounts: %w", err)
	}
	defer fh.Close()
	s := bufio.NewScanner(fh)
	for s.Scan() {
		if fs := strings.Fields(s.Text()); len(fs) >= 3 && fs[2] == "cgroup2" {
			return fs[1], nil
		}
	}
	return "", errors.New("no cgroup2 mount in /proc/mounts: mount the cgroup v2 hierarchy into the agent (hostPath) or pass --cgroup-root")
}

// decisionWait bounds how long a connection waits for the mesh config its
// decision needs: the first config after the agent starts, or a new local
// pod that meshd has not pushed yet (its push trails the CNI's enrollment by
// up to meshd's debounce). Longer than that lag under load, shorter than a
// client's connect timeout.
const decisionWait = 5 * time.Second

// agentGCPercent is the agent's GOGC unless $GOGC is set (see
// admin.ApplyGCPercent). Below Go's 100: the agent's live heap is small
// (~3 MB with 50 pods) and it allocates little per connection (pooled
// buffers), so collecting at 50% growth costs a collection every tens of
// seconds at 1000 requests/s and keeps ~1 MB less heap resident (lab, 50
// pods after a load: 10.2 -> 9.2 MB anonymous).
const agentGCPercent = 50
