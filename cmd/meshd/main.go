// Command meshd is meshlet's control plane (Istio's istiod): it watches the
// cluster and the mesh CRDs, builds the mesh model, serves it to node agents
// and waypoints over delta xDS, and signs workload certificates, both on
// 15012 over TLS with a serving certificate from its own CA. Metrics are on
// 15014, health on 15021, and the xDS client status (/debug/xds) on the admin
// port 15000, which only ever listens on loopback.
//
// Two replicas can run: both serve; they share the CA root through a Secret
// and compute identical resource versions from identical input, so a client
// that fails over to the other replica is sent only what differs.
//
// This command only wires packages together (pkg/controlplane, pkg/xds,
// pkg/ca); it must hold no translation or protocol logic of its own.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"os/signal"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc"
	securityv1alpha1 "istio.io/api/security/v1alpha1"
	istioclient "istio.io/client-go/pkg/clientset/versioned"
	"k8s.io/apimachinery/pkg/util/validation"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	gatewayclient "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned"

	"github.com/meshlet/meshlet/pkg/admin"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/controlplane"
	"github.com/meshlet/meshlet/pkg/crdwatch"
	"github.com/meshlet/meshlet/pkg/deployer"
	"github.com/meshlet/meshlet/pkg/meshstatus"
	"github.com/meshlet/meshlet/pkg/xds"
)

// config is meshd's command line.
type config struct {
	kubeconfig    string
	namespace     string
	trustDomain   string
	rootNamespace string
	clusterDomain string
	grpcAddr      string
	metricsAddr   string
	healthAddr    string
	adminAddr     string
	debounce      time.Duration
	nodeAgentSA   string
	servingDNS    string
	caSecret      string
	caPoll        time.Duration
	rootAckWait   time.Duration
	certTTL       time.Duration
	certMaxTTL    time.Duration
	tokenAudience string
	waypointImage string
	pullSecrets   string
	shutdownDelay time.Duration
}

func parseFlags(args []string) (config, error) {
	var c config
	fs := flag.NewFlagSet("meshd", flag.ContinueOnError)
	ns := os.Getenv("POD_NAMESPACE")
	if ns == "" {
		ns = "meshlet-system"
	}
	fs.StringVar(&c.kubeconfig, "kubeconfig", "", "kubeconfig file; empty means in-cluster config")
	fs.StringVar(&c.namespace, "namespace", ns, "meshd's own namespace (default $POD_NAMESPACE, else meshlet-system): holds the CA Secret")
	fs.StringVar(&c.trustDomain, "trust-domain", "cluster.local", "SPIFFE trust domain")
	fs.StringVar(&c.rootNamespace, "root-namespace", "istio-system", "namespace whose policies without selector apply mesh-wide")
	fs.StringVar(&c.clusterDomain, "cluster-domain", "cluster.local", "DNS suffix of Kubernetes service hostnames")
	fs.StringVar(&c.grpcAddr, "grpc-addr", ":15012", "TLS gRPC address for xDS and certificate signing")
	fs.StringVar(&c.metricsAddr, "metrics-addr", ":15014", "HTTP address for /metrics")
	fs.StringVar(&c.healthAddr, "health-addr", ":15021", "HTTP address for /healthz/ready and /healthz/live")
	fs.StringVar(&c.adminAddr, "admin-addr", "127.0.0.1:15000", "loopback HTTP address for /debug/xds (refused if not loopback)")
	fs.DurationVar(&c.debounce, "debounce", 100*time.Millisecond, "quiet period before pushing a burst of changes")
	fs.StringVar(&c.nodeAgentSA, "node-agent-service-account", "meshlet-system/meshlet-node-agent", "namespace/name of the node agent's service account")
	fs.StringVar(&c.servingDNS, "serving-dns", "", "comma-separated DNS names of meshd's serving certificate; empty means meshd.<namespace>.svc and meshd.<namespace>.svc.<cluster-domain>")
	fs.StringVar(&c.caSecret, "ca-secret", "cacerts", "Secret in --namespace holding the CA (Istio's cacerts layout); generated when absent")
	fs.DurationVar(&c.caPoll, "ca-poll-interval", 15*time.Second, "how often the CA Secret is re-read to pick up a rotated or plugged-in CA")
	fs.DurationVar(&c.rootAckWait, "root-rotation-ack-wait", 30*time.Second, "during a CA rotation, how long to wait for every connected client to acknowledge the new roots before signing with the new key")
	fs.DurationVar(&c.certTTL, "workload-cert-ttl", ca.DefaultTTL, "default workload certificate lifetime")
	fs.DurationVar(&c.certMaxTTL, "max-workload-cert-ttl", ca.DefaultMaxTTL, "longest workload certificate lifetime a client may ask for")
	fs.StringVar(&c.tokenAudience, "token-audience", "", "audience the callers' service account tokens must carry; empty means the API server's default")
	fs.StringVar(&c.waypointImage, "waypoint-image", deployer.DefaultImage, "image of the waypoint Deployments meshd creates for istio-waypoint/meshlet-waypoint (and istio/meshlet ingress) Gateways; empty disables the deployer")
	fs.StringVar(&c.pullSecrets, "image-pull-secrets", "", "comma-separated names of the Secrets the waypoint Deployments' pods pull --waypoint-image with (each in the Gateway's namespace)")
	fs.DurationVar(&c.shutdownDelay, "shutdown-delay", 5*time.Second, "on SIGTERM, how long meshd answers not ready but keeps serving before it stops, so that the Service stops sending it new connections first (no gap in certificate issuance while meshd rolls)")
	if err := fs.Parse(args); err != nil {
		return config{}, err
	}
	if _, _, ok := strings.Cut(c.nodeAgentSA, "/"); !ok {
		return config{}, fmt.Errorf("--node-agent-service-account %q: want namespace/name", c.nodeAgentSA)
	}
	domain, err := admin.ParseClusterDomain(c.clusterDomain)
	if err != nil {
		return config{}, err
	}
	c.clusterDomain = domain
	if err := requireLoopback(c.adminAddr); err != nil {
		return config{}, fmt.Errorf("--admin-addr: %w", err)
	}
	if c.servingDNS == "" {
		c.servingDNS = fmt.Sprintf("meshd.%s.svc,meshd.%s.svc.%s", c.namespace, c.namespace, c.clusterDomain)
	}
	for _, n := range splitNames(c.pullSecrets) {
		if errs := validation.IsDNS1123Subdomain(n); len(errs) > 0 {
			return config{}, fmt.Errorf("--image-pull-secrets: %q is not a Secret name: %s", n, strings.Join(errs, "; "))
		}
	}
	return c, nil
}

// splitNames is a comma-separated list's names, blanks and spaces left out.
func splitNames(list string) []string {
	var names []string
	for n := range strings.SplitSeq(list, ",") {
		if n = strings.TrimSpace(n); n != "" {
			names = append(names, n)
		}
	}
	return names
}

func main() {
	cfg, err := parseFlags(os.Args[1:])
	if err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return
		}
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, cfg, slog.New(slog.NewTextHandler(os.Stderr, nil))); err != nil {
		fmt.Fprintln(os.Stderr, "meshd:", err)
		os.Exit(1)
	}
}

func restConfig(kubeconfig string) (*rest.Config, error) {
	if kubeconfig != "" {
		return clientcmd.BuildConfigFromFlags("", kubeconfig)
	}
	return rest.InClusterConfig()
}

func run(ctx context.Context, cfg config, log *slog.Logger) error {
	td, err := spiffeid.TrustDomainFromString(cfg.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", cfg.trustDomain, err)
	}
	rc, err := restConfig(cfg.kubeconfig)
	if err != nil {
		return fmt.Errorf("load kubernetes config: %w", err)
	}
	kube, err := kubernetes.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("kubernetes client: %w", err)
	}
	istio, err := istioclient.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("istio client: %w", err)
	}
	gw, err := gatewayclient.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("gateway api client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create dynamic client: %w", err)
	}
	md, err := metadata.NewForConfig(rc)
	if err != nil {
		return fmt.Errorf("create metadata client: %w", err)
	}
	// Refuse to start without the CRDs, naming what is missing.
	if err := controlplane.CheckCRDs(kube); err != nil {
		if errors.Is(err, controlplane.ErrCRDMissing) {
			// HTTPRoute's and Istio's CRDs exceed client-side apply's
			// 256 KiB annotation limit.
			return fmt.Errorf("%w (apply them server-side: kubectl apply --server-side -f deploy/crds/ -f deploy/crds/meshlet/, or meshctl install)", err)
		}
		return err
	}

	reg := prometheus.NewRegistry()
	reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	m := newMetrics(reg)

	// CA: the root lives in a Secret shared by the replicas.
	caStore := &ca.SecretStore{Client: kube, Namespace: cfg.namespace, Name: cfg.caSecret}
	keys, err := ca.LoadOrGenerate(ctx, caStore, td)
	if err != nil {
		return err
	}
	var audiences []string
	if cfg.tokenAudience != "" {
		audiences = []string{cfg.tokenAudience}
	}
	acc := &access{kube: kube, reviewer: &ca.TokenReviewer{Client: kube, Audiences: audiences}, nodeAgentSA: cfg.nodeAgentSA}
	authority, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: acc.authorizeCSR, DefaultTTL: cfg.certTTL, MaxTTL: cfg.certMaxTTL})
	if err != nil {
		return err
	}
	status := &statusPublisher{kube: kube, namespace: cfg.namespace, pod: os.Getenv("POD_NAME"), log: log}
	caSrv, err := ca.NewServer(ca.ServerOptions{CA: authority, Authenticate: acc.reviewer.Authenticate, Logger: log, Observe: m.observeCSR, Issued: status.issued})
	if err != nil {
		return err
	}
	serving := &servingCert{ca: authority, dnsNames: splitNames(cfg.servingDNS)}
	if _, err := serving.get(nil); err != nil {
		return err
	}
	rootPEM := string(ca.EncodePEM(authority.Roots()))

	xsrv, err := xds.New(xds.Options{Authenticate: acc.authenticateXDS, Debounce: cfg.debounce, Registry: reg, Logger: log})
	if err != nil {
		return err
	}
	defer xsrv.Close()
	if err := xsrv.SetTrustBundle(trustBundle(td, authority.Roots())); err != nil {
		return err
	}

	g, err := newGRPCServer(serving, xsrv, caSrv)
	if err != nil {
		return err
	}

	// The sources: every change kicks a rebuild; rebuilds coalesce.
	kick := make(chan struct{}, 1)
	roots := &rootPublisher{kube: kube, log: log, queue: make(chan string, 256), done: make(chan struct{})}
	roots.pem.Store(&rootPEM)
	// Optional CRDs installed while meshd runs are read once heard
	// installed; without the right to watch CRDs, at the next poll.
	crds := crdwatch.New(md, log)
	if err := crds.Start(ctx); err != nil {
		log.Warn("optional CRDs installed later are found by a poll every "+controlplane.DefaultCRDPoll.String(), "err", err)
		crds = nil
	}
	sources, err := controlplane.NewSources(controlplane.SourcesOptions{Kube: kube, Istio: istio, Gateway: gw, Dynamic: dyn, Logger: log, CRDs: crds,
		Listener: controlplane.ListenerFunc(func(c controlplane.Change) {
			select {
			case kick <- struct{}{}:
			default:
			}
			if c.Kind == controlplane.KindNamespace && c.Op != controlplane.OpDelete {
				roots.kick(c.Name)
			}
		})})
	if err != nil {
		return err
	}
	defer sources.Close()
	if err := sources.Start(ctx); err != nil {
		return err
	}
	builder := controlplane.NewBuilder(controlplane.BuilderOptions{TrustDomain: td.Name(), RootNamespace: cfg.rootNamespace, ClusterDomain: cfg.clusterDomain})
	events := &eventRecorder{kube: kube, log: log, queue: make(chan controlplane.Rejection, 100)}
	gwStatus := newGatewayStatusWriter(gw, log)
	seStatus := newServiceEntryStatusWriter(istio, log)
	rb := &rebuilder{sources: sources, builder: builder, xds: xsrv, log: log, rejected: m.rejected, warned: m.warned, seen: map[string]bool{}, event: events.record, status: gwStatus.submit,
		addresses: seStatus.submit}
	if err := rb.rebuild(); err != nil {
		return err
	}
	xsrv.MarkSynced()

	var wg sync.WaitGroup
	errc := make(chan error, 4)
	lis, err := net.Listen("tcp", cfg.grpcAddr)
	if err != nil {
		return fmt.Errorf("listen on %s: %w", cfg.grpcAddr, err)
	}
	wg.Add(1)
	go func() { defer wg.Done(); errc <- g.Serve(lis) }()
	var ready atomic.Bool
	servers := newHTTPServers(cfg, reg, func() any { return xsrv.Clients() }, ready.Load, sources.Pods)
	for _, hs := range servers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := hs.ListenAndServe(); !errors.Is(err, http.ErrServerClosed) {
				errc <- fmt.Errorf("serve %s: %w", hs.Addr, err)
			}
		}()
	}
	ready.Store(true)
	wg.Add(1)
	go func() { defer wg.Done(); roots.run(ctx) }()
	rot := &caRotation{store: caStore, authority: authority, xds: xsrv, publish: roots.setPEM, serving: serving, td: td, ackWait: cfg.rootAckWait, log: log}
	wg.Add(1)
	go func() { defer wg.Done(); rot.run(ctx, cfg.caPoll) }()
	wg.Add(1)
	go func() { defer wg.Done(); events.run(ctx) }()
	status.clients = xsrv.Clients
	wg.Add(1)
	go func() { defer wg.Done(); status.run(ctx, xsrv.Generation) }()
	// Work one replica does at a time, the holder of the leader Lease
	// (lease.go): writing the status of Gateway API objects and
	// ServiceEntries, and deploying waypoints and gateways. A Deployer per
	// term, since Run ends with its queue.
	var depOpts *deployer.Options
	if cfg.waypointImage != "" {
		// Class defaults (gateway.istio.io/defaults-for-class ConfigMaps)
		// are read from meshd's namespace, as Istio reads them from istiod's.
		depOpts = &deployer.Options{Kube: kube, Gateway: gw, Logger: log, CRDs: crds, ClassDefaultsNamespace: cfg.namespace, Render: deployer.RenderOptions{
			Image: cfg.waypointImage, ImagePullSecrets: splitNames(cfg.pullSecrets), TrustDomain: td.Name(), MeshdAddress: fmt.Sprintf("meshd.%s.svc:15012", cfg.namespace)}}
		if _, err := deployer.New(*depOpts); err != nil {
			return err
		}
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		runElected(ctx, kube, cfg.namespace, meshstatus.LeaderLease, leaseIdentity(), defaultLeaseTimes, log.With("component", "leader"),
			func(ctx context.Context) error {
				var writers sync.WaitGroup
				defer writers.Wait()
				ctx, cancel := context.WithCancel(ctx)
				defer cancel() // before the Wait: the writers stop with ctx
				writers.Add(2)
				go func() { defer writers.Done(); gwStatus.run(ctx) }()
				go func() { defer writers.Done(); seStatus.run(ctx) }()
				if depOpts == nil {
					<-ctx.Done()
					return nil
				}
				dep, err := deployer.New(*depOpts)
				if err != nil {
					return err
				}
				return dep.Run(ctx)
			})
	}()
	log.Info("meshd serving", "grpc", cfg.grpcAddr, "metrics", cfg.metricsAddr, "health", cfg.healthAddr, "admin", cfg.adminAddr, "trust-domain", td.Name())

	var runErr error
loop:
	for {
		select {
		case <-ctx.Done():
			break loop
		case err := <-errc:
			runErr = err
			break loop
		case <-kick:
			if err := rb.rebuild(); err != nil {
				log.Error("rebuild failed; serving the previous config", "err", err)
			}
		}
	}
	ready.Store(false)
	if runErr == nil && cfg.shutdownDelay > 0 {
		// Not ready, still serving: the endpoints controller and the
		// nodes' service proxies take the replica out of the Service
		// before its listener closes, so callers reach the other replica
		// instead of a refused connection.
		log.Info("stopping: not ready, serving for the shutdown delay", "delay", cfg.shutdownDelay)
		time.Sleep(cfg.shutdownDelay)
	}
	shutdown, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for _, hs := range servers {
		_ = hs.Shutdown(shutdown)
	}
	xsrv.Close() // ends the xDS streams, so GracefulStop need not wait for them
	stopped := make(chan struct{})
	go func() { g.GracefulStop(); close(stopped) }()
	select {
	case <-stopped:
	case <-shutdown.Done():
		g.Stop()
	}
	roots.stop()
	wg.Wait()
	return runErr
}

// newGRPCServer serves xDS and certificate signing on one TLS server whose
// certificate comes from meshd's own CA.
func newGRPCServer(serving *servingCert, xsrv *xds.Server, caSrv *ca.Server) (*grpc.Server, error) {
	g, err := xds.NewGRPCServer(&tls.Config{GetCertificate: serving.get})
	if err != nil {
		return nil, err
	}
	xsrv.Register(g)
	securityv1alpha1.RegisterIstioCertificateServiceServer(g, caSrv)
	return g, nil
}

// rebuilder turns the sources' current objects into a snapshot and hands it
// to the xDS server, reporting each new rejection once.
type rebuilder struct {
	sources  *controlplane.Sources
	builder  *controlplane.Builder
	xds      *xds.Server
	log      *slog.Logger
	rejected *prometheus.CounterVec
	warned   *prometheus.CounterVec // nil: warnings are only logged
	seen     map[string]bool
	// event records a rejection on its object; nil records none.
	event func(controlplane.Rejection)
	// status hands the build's Gateway API status to its writer without
	// blocking; nil writes none.
	status func([]controlplane.ObjectStatus, *controlplane.Inputs)
	// addresses hands the build's ServiceEntry addresses to their writer
	// without blocking; nil writes none.
	addresses func([]controlplane.ServiceEntryAddresses, *controlplane.Inputs)
}

func (r *rebuilder) rebuild() error {
	in, err := r.sources.Inputs()
	if err != nil {
		return fmt.Errorf("read inputs: %w", err)
	}
	snap, rejections := r.builder.Build(in)
	seen := make(map[string]bool, len(rejections))
	for _, rej := range rejections {
		key := rej.String()
		seen[key] = true
		if r.seen[key] {
			continue
		}
		if rej.Warning {
			r.log.Warn("config warning", "kind", rej.Kind, "namespace", rej.Namespace, "name", rej.Name, "reason", rej.Reason)
			if r.warned != nil {
				r.warned.WithLabelValues(rej.Kind).Inc()
			}
		} else {
			r.log.Warn("config rejected", "kind", rej.Kind, "namespace", rej.Namespace, "name", rej.Name, "reason", rej.Reason)
			r.rejected.WithLabelValues(rej.Kind).Inc()
		}
		if r.event != nil {
			r.event(rej)
		}
	}
	r.seen = seen
	if err := r.xds.Apply(snap); err != nil {
		return fmt.Errorf("serve snapshot: %w", err)
	}
	if r.status != nil {
		r.status(r.builder.Status(), in)
	}
	if r.addresses != nil {
		r.addresses(r.builder.ServiceEntryStatus(), in)
	}
	return nil
}

// servingCert keeps meshd's TLS certificate fresh: reissued by the CA at
// half its lifetime.
type servingCert struct {
	ca       *ca.CA
	dnsNames []string

	mu   sync.Mutex
	cert *tls.Certificate
}

// reset drops the cached certificate so the next handshake gets one from
// the CA's current key (after a rotation).
func (s *servingCert) reset() {
	s.mu.Lock()
	s.cert = nil
	s.mu.Unlock()
}

func (s *servingCert) get(*tls.ClientHelloInfo) (*tls.Certificate, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cert != nil {
		l := s.cert.Leaf
		if time.Now().Before(l.NotBefore.Add(l.NotAfter.Sub(l.NotBefore) / 2)) {
			return s.cert, nil
		}
	}
	c, err := s.ca.ServingCertificate(s.dnsNames, 0)
	if err != nil {
		if s.cert != nil && time.Now().Before(s.cert.Leaf.NotAfter) {
			return s.cert, nil // keep serving the still-valid one
		}
		return nil, fmt.Errorf("issue serving certificate: %w", err)
	}
	s.cert = c
	return c, nil
}

// metrics are meshd's own series beside pkg/xds's.
type metrics struct {
	rejected   *prometheus.CounterVec
	warned     *prometheus.CounterVec
	csrSigned  prometheus.Counter
	csrRefused prometheus.Counter
}

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		rejected: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_config_rejected_total", Help: "Invalid configuration objects skipped, by kind (each fault counted once).",
		}, []string{"kind"}),
		warned: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "meshd_config_warnings_total", Help: "Configuration objects used but probably not as meant (a selector or target that matches nothing, a shadowed host), by kind (each counted once).",
		}, []string{"kind"}),
		csrSigned:  prometheus.NewCounter(prometheus.CounterOpts{Name: "meshd_csr_signed_total", Help: "Certificate requests signed."}),
		csrRefused: prometheus.NewCounter(prometheus.CounterOpts{Name: "meshd_csr_refused_total", Help: "Certificate requests refused."}),
	}
	reg.MustRegister(m.rejected, m.warned, m.csrSigned, m.csrRefused)
	return m
}

func (m *metrics) observeCSR(err error) {
	if err != nil {
		m.csrRefused.Inc()
		return
	}
	m.csrSigned.Inc()
}
