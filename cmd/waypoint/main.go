// Command waypoint is meshlet's waypoint proxy, run by meshd's deployer as
// one Deployment per waypoint Gateway. It reads flags and the downward API
// environment, opens its listeners and calls waypoint/app.Run; it must not
// hold logic of its own beyond flags, start-up checks and wiring.
package main

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"log"
	"log/slog"
	"net"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/meshlet/meshlet/pkg/admin"
	xdsclient "github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/waypoint"
	"github.com/meshlet/meshlet/waypoint/app"
)

type flags struct {
	meshdAddress, meshdServerName, rootCert, tokenFile string
	trustDomain, namespace, serviceAccount, gateway    string
	podName, nodeName, clusterID                       string
	hboneAddr, metricsAddr, readyAddr, adminAddr       string
	drainTimeout                                       time.Duration
	accessLog                                          bool
	traceSampling                                      float64
	otlpEndpoint                                       string
	serveListeners                                     bool
	configFile, listen                                 string
	memoryLimit                                        string
	gcMinHeap                                          string
}

func parseFlags() flags {
	var f flags
	flag.StringVar(&f.meshdAddress, "meshd-address", "meshd.meshlet-system.svc:15012", "meshd's xDS and CA address (host:port)")
	flag.StringVar(&f.meshdServerName, "meshd-server-name", "", "name meshd's TLS certificate must carry; empty means the host of --meshd-address")
	flag.StringVar(&f.rootCert, "root-cert", "/var/run/secrets/istio/root-cert.pem", "PEM root certificate of the mesh (the istio-ca-root-cert ConfigMap mount)")
	flag.StringVar(&f.tokenFile, "token-file", "/var/run/secrets/kubernetes.io/serviceaccount/token", "service account token sent to meshd (re-read on every use)")
	flag.StringVar(&f.trustDomain, "trust-domain", envOr("TRUST_DOMAIN", "cluster.local"), "SPIFFE trust domain (default $TRUST_DOMAIN or cluster.local)")
	flag.StringVar(&f.namespace, "namespace", os.Getenv("POD_NAMESPACE"), "the waypoint's namespace (default $POD_NAMESPACE, from the downward API)")
	flag.StringVar(&f.serviceAccount, "service-account", os.Getenv("SERVICE_ACCOUNT"), "the waypoint's service account (default $SERVICE_ACCOUNT, from the downward API)")
	flag.StringVar(&f.gateway, "gateway-name", os.Getenv("GATEWAY_NAME"), "the Gateway this waypoint serves (default $GATEWAY_NAME, from the pod label gateway.networking.k8s.io/gateway-name)")
	flag.StringVar(&f.podName, "pod-name", os.Getenv("POD_NAME"), "this pod's name, for logs (default $POD_NAME)")
	flag.StringVar(&f.nodeName, "node-name", os.Getenv("NODE_NAME"), "the node this pod runs on, for locality load balancing (default $NODE_NAME, from the downward API)")
	flag.StringVar(&f.clusterID, "cluster-id", "Kubernetes", "the cluster's name in request metrics' source_cluster and destination_cluster (Istio's CLUSTER_ID, whose default this is)")
	flag.StringVar(&f.hboneAddr, "hbone-addr", ":15008", "HBONE (mTLS HTTP/2 CONNECT) listen address")
	flag.StringVar(&f.metricsAddr, "metrics-addr", ":15020", "Prometheus /metrics listen address; empty disables")
	flag.StringVar(&f.readyAddr, "readiness-addr", ":15021", "/healthz/ready listen address; empty disables")
	flag.StringVar(&f.adminAddr, "admin-addr", "127.0.0.1:15000", "admin listen address, loopback only: /config_dump (what `meshctl proxy-config` shows) and pprof; empty disables")
	flag.DurationVar(&f.drainTimeout, "drain-timeout", 5*time.Second, "how long open HBONE streams and an ingress gateway's relayed TCP connections may finish after SIGTERM")
	flag.BoolVar(&f.serveListeners, "serve-listeners", false, "run as an ingress gateway: also serve every listener port of the pushed config (meshd's deployer sets it for ingress Gateways)")
	flag.BoolVar(&f.accessLog, "access-log", true, "write Istio's JSON access log to stdout (the Telemetry API can turn it off per waypoint)")
	flag.Float64Var(&f.traceSampling, "trace-sampling", 1, "percentage (0-100) of new traces sampled (the Telemetry API can override it)")
	flag.StringVar(&f.otlpEndpoint, "otlp-endpoint", os.Getenv("OTEL_EXPORTER_OTLP_ENDPOINT"), "OTLP/HTTP collector base URL for sampled spans, e.g. http://otel-collector:4318; empty: spans are not exported (default $OTEL_EXPORTER_OTLP_ENDPOINT)")
	flag.StringVar(&f.configFile, "config-file", "", "serve this static L7 config (JSON) on --listen without meshd: plaintext, no mesh identity; for development and benchmarks only")
	flag.StringVar(&f.listen, "listen", "127.0.0.1:18080", "with --config-file: the plain HTTP listen address")
	flag.StringVar(&f.memoryLimit, "memory-limit", "auto", admin.MemoryLimitUsage)
	flag.StringVar(&f.gcMinHeap, "gc-min-heap", "16MiB", admin.MinHeapGoalUsage)
	flag.Parse()
	return f
}

func envOr(k, def string) string {
	if v := os.Getenv(k); v != "" {
		return v
	}
	return def
}

func main() {
	f := parseFlags()
	xdsclient.SetMeshdResolution()
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, os.Interrupt)
	defer stop()
	_, err := admin.ApplyMemoryLimit(f.memoryLimit)
	if err != nil {
		log.Fatalf("waypoint: %v", err)
	}
	// The waypoint allocates a few KiB per request around a live heap of a
	// few MB: see admin.MinHeapGoal for what the floor saves.
	stopGC, _, err := admin.ApplyMinHeapGoal(f.gcMinHeap)
	if err != nil {
		log.Fatalf("waypoint: %v", err)
	}
	defer stopGC()
	if f.configFile != "" {
		err = runStatic(ctx, f)
	} else {
		err = run(ctx, f)
	}
	if err != nil {
		log.Fatalf("waypoint: %v", err)
	}
}

func run(ctx context.Context, f flags) error {
	logger := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("pod", f.podName, "gateway", f.namespace+"/"+f.gateway)
	td, err := spiffeid.TrustDomainFromString(f.trustDomain)
	if err != nil {
		return fmt.Errorf("--trust-domain %q: %w", f.trustDomain, err)
	}
	roots, err := readRoots(f.rootCert)
	if err != nil {
		return err
	}
	serverName := f.meshdServerName
	if serverName == "" {
		host, _, err := net.SplitHostPort(f.meshdAddress)
		if err != nil {
			return fmt.Errorf("--meshd-address %q is not host:port: %w", f.meshdAddress, err)
		}
		serverName = host
	}
	pool := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	opts := app.Options{
		MeshdAddress: f.meshdAddress,
		MeshdTLS:     &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS13},
		Roots:        roots,
		Token: func() (string, error) {
			b, err := os.ReadFile(f.tokenFile)
			if err != nil {
				return "", fmt.Errorf("read --token-file: %w", err)
			}
			return strings.TrimSpace(string(b)), nil
		},
		TrustDomain: td, Namespace: f.namespace, ServiceAccount: f.serviceAccount, GatewayName: f.gateway,
		DrainTimeout: f.drainTimeout,
		NodeName:     f.nodeName,
		ClusterID:    f.clusterID,
		KeepLean:     true,
		Logger:       logger,
	}
	var lns []net.Listener
	defer func() {
		for _, ln := range lns {
			_ = ln.Close()
		}
	}()
	listen := func(what, addr string) (net.Listener, error) {
		if addr == "" {
			return nil, nil
		}
		ln, err := net.Listen("tcp", addr)
		if err != nil {
			return nil, fmt.Errorf("listen for %s on %s: %w", what, addr, err)
		}
		lns = append(lns, ln)
		return ln, nil
	}
	if opts.HBONE, err = listen("HBONE", f.hboneAddr); err != nil {
		return err
	}
	if opts.HBONE == nil {
		return errors.New("--hbone-addr is empty: the waypoint needs its HBONE port")
	}
	if opts.Metrics, err = listen("metrics", f.metricsAddr); err != nil {
		return err
	}
	if opts.Ready, err = listen("readiness", f.readyAddr); err != nil {
		return err
	}
	opts.AdminAddr = f.adminAddr
	if f.traceSampling < 0 || f.traceSampling > 100 {
		return fmt.Errorf("--trace-sampling %v: want a percentage between 0 and 100", f.traceSampling)
	}
	opts.TraceSampling = f.traceSampling
	opts.ServeListeners = f.serveListeners
	if f.accessLog {
		opts.AccessLog = os.Stdout
	}
	// Spans name the proxy as Istio names a waypoint's: <name>.<namespace>.
	opts.SpanServiceName = f.gateway + "." + f.namespace
	opts.SpanResource = map[string]string{"k8s.namespace.name": f.namespace, "k8s.pod.name": f.podName, "meshlet.gateway.name": f.gateway}
	if f.otlpEndpoint != "" {
		exp, err := waypoint.NewOTLPExporter(waypoint.OTLPOptions{
			Endpoint:    f.otlpEndpoint,
			ServiceName: opts.SpanServiceName,
			Resource:    opts.SpanResource,
			Logf:        func(format string, a ...any) { logger.Warn(fmt.Sprintf(format, a...)) },
		})
		if err != nil {
			return fmt.Errorf("--otlp-endpoint: %w", err)
		}
		opts.ExportSpan = exp.Export
		ectx, stop := context.WithCancel(ctx)
		defer stop()
		go func() { _ = exp.Run(ectx) }()
	}
	return app.Run(ctx, opts)
}

func readRoots(path string) ([]*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("read mesh root certificate (--root-cert): %w", err)
	}
	var roots []*x509.Certificate
	for {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type != "CERTIFICATE" {
			continue
		}
		c, err := x509.ParseCertificate(blk.Bytes)
		if err != nil {
			return nil, fmt.Errorf("parse --root-cert %s: %w", path, err)
		}
		roots = append(roots, c)
	}
	if len(roots) == 0 {
		return nil, fmt.Errorf("--root-cert %s holds no PEM certificate: mount the istio-ca-root-cert ConfigMap there", path)
	}
	return roots, nil
}
