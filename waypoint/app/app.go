// Package app is the waypoint binary's run loop: it obtains the waypoint's
// SVID from meshd's CA and keeps it renewed, subscribes to the waypoint's own
// WaypointConfig (and the workloads it serves) over xDS, applies each push to
// a waypoint.Proxy (NACKing a push the proxy refuses, so the last good config
// keeps serving), accepts HBONE on 15008 and dials upstreams through HBONE,
// expecting the endpoint workload's SPIFFE identity, and serves metrics and
// readiness. Peers of the trust domain aliases meshd pushes with the trust
// bundle pass as the trust domain's, both ways. cmd/waypoint only parses
// flags and calls Run.
//
// It must not read Kubernetes objects itself (meshd is its only source of
// truth) nor serve anything but HBONE on a non-loopback address besides
// metrics and readiness.
package app

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net"
	"net/http"
	"net/netip"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sync/errgroup"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/meshlet/meshlet/pkg/admin"
	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/ca/caclient"
	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/hbone"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/model"
	xdsclient "github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/modelview"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
	"github.com/meshlet/meshlet/waypoint"
)

// HBONEPort is the port every HBONE server (node agent or waypoint) listens on.
const HBONEPort = 15008

// Options configure Run.
type Options struct {
	// MeshdAddress is meshd's host:port (15012), serving both the CA and
	// xDS. Required.
	MeshdAddress string
	// MeshdTLS verifies meshd: RootCAs from the istio-ca-root-cert
	// ConfigMap and ServerName meshd's DNS name; the roots meshd pushes
	// are trusted for it too (identity.MeshdClientTLS). Required.
	MeshdTLS *tls.Config
	// Roots are the mesh's root certificates (the same file as MeshdTLS's
	// RootCAs); they seed the trust bundle that HBONE peers are verified
	// against until meshd pushes a TrustBundle. Required.
	Roots []*x509.Certificate
	// Token returns the current service account token (re-read for each
	// call, so a rotated projected token is used). Required.
	Token func() (string, error)
	// TrustDomain is the mesh's trust domain. Required.
	TrustDomain spiffeid.TrustDomain
	// Namespace and ServiceAccount are the waypoint pod's; they make its
	// SPIFFE ID. Required.
	Namespace, ServiceAccount string
	// GatewayName is the Gateway this waypoint serves (the pod label
	// gateway.networking.k8s.io/gateway-name); with Namespace it is the xDS
	// node id. Required.
	GatewayName string
	// HBONE receives the mesh's CONNECT streams (:15008). Required.
	HBONE net.Listener
	// Metrics, if set, serves Prometheus metrics on /metrics (:15020).
	Metrics net.Listener
	// Ready, if set, serves /healthz/ready (:15021): 200 once the waypoint
	// has an SVID and meshd's first answer (with its config, if any), 503 before and while
	// draining.
	Ready net.Listener
	// UpstreamHBONEPort is the port upstream endpoints' HBONE servers listen
	// on; zero means HBONEPort. Tests set it to reach a loopback server.
	UpstreamHBONEPort uint16
	// DrainTimeout bounds the graceful drain after ctx ends; zero means 5s.
	DrainTimeout time.Duration
	// KeepLean runs admin.KeepLean once the waypoint is ready: the binary's
	// start-up pages, what rare code maps later and the heap a burst
	// leaves go back to the system. The command sets it; tests, which
	// share their binary, do not.
	KeepLean bool
	// CertTTL is the SVID lifetime asked for; zero lets the CA choose.
	CertTTL time.Duration
	// NodeName is the node the waypoint runs on (the downward API's
	// spec.nodeName): its place for locality load balancing. Empty: no
	// locality preference.
	NodeName string
	// ClusterID names the cluster in request metrics (waypoint.Options).
	ClusterID string
	// Registerer receives the proxy's and the process's metrics; nil means a
	// fresh registry served on Metrics.
	Registerer *prometheus.Registry
	// Logger receives events; nil means slog.Default().
	Logger *slog.Logger
	// AccessLog receives the JSON access log (Istio's default fields), one
	// line per request; nil means none. The Telemetry API can turn it off.
	AccessLog io.Writer
	// TraceSampling is the percentage (0–100) of new traces sampled, unless
	// the Telemetry API says otherwise.
	TraceSampling float64
	// ExportSpan receives the sampled spans (e.g. an OTLP exporter's
	// Export); nil means spans are not exported.
	ExportSpan func(waypoint.Span)
	// SpanServiceName and SpanResource name the spans sent to a tracer the
	// config names (a Telemetry's opentelemetry provider): service.name and
	// further resource attributes.
	SpanServiceName string
	SpanResource    map[string]string
	// ServeListeners makes this an ingress gateway: besides HBONE, it
	// listens on every listener port of its pushed config (plain HTTP, for
	// clients outside the mesh), opening and closing ports as the config
	// changes. A waypoint leaves it false: its listener ports are the
	// services' ports, reached only through HBONE.
	ServeListeners bool
	// ListenHost is the address ingress listener ports bind; "" means all.
	ListenHost string
	// AdminAddr, if set, serves the admin endpoints there, loopback only:
	// /config_dump (the config in force and the SVID, what `meshctl
	// proxy-config` shows) and pprof.
	AdminAddr string
}

func (o *Options) check() error {
	switch {
	case o.MeshdAddress == "":
		return errors.New("meshd address is empty: pass --meshd-address host:15012")
	case o.MeshdTLS == nil:
		return errors.New("no TLS config for meshd: pass the CA root file (istio-ca-root-cert)")
	case len(o.Roots) == 0:
		return errors.New("no mesh root certificates: pass the CA root file (istio-ca-root-cert)")
	case o.Token == nil:
		return errors.New("no service account token source")
	case o.TrustDomain.IsZero():
		return errors.New("trust domain is empty: pass --trust-domain")
	case o.Namespace == "" || o.ServiceAccount == "" || o.GatewayName == "":
		return errors.New("namespace, service account and gateway name are required (downward API env POD_NAMESPACE, SERVICE_ACCOUNT, GATEWAY_NAME)")
	case o.HBONE == nil:
		return errors.New("no HBONE listener")
	}
	return nil
}

// state is what the run loop shares between its goroutines.
type state struct {
	opts   Options
	log    *slog.Logger
	svid   *identity.SVIDSource
	bundle *identity.BundleSource
	proxy  atomic.Pointer[waypoint.Proxy]
	reg    prometheus.Registerer
	conns  *waypoint.ConnListener
	serve  func(*waypoint.Proxy) // starts the proxy's Serve on conns
	// serveOn starts Serve on a listener of the config (ingress), with the
	// port's check for misdirected requests (nil on a plaintext port).
	serveOn func(p *waypoint.Proxy, ln net.Listener, misdirected func(sni, host string) bool)
	// serveTCPOn starts ServeTCP on a listener of the config with a tcp
	// route (ingress).
	serveTCPOn func(*waypoint.Proxy, net.Listener, uint32)
	ports      map[uint32]*ingressPort                   // the config's listener ports this gateway serves
	upstream   atomic.Pointer[map[string]configEndpoint] // the config's endpoints by address (dialUpstream)
	vips       atomic.Pointer[map[netip.Addr]vipService] // service VIP -> its service, from the address resources
	sources    atomic.Pointer[map[netip.Addr]sourceInfo] // workload address -> what is reported of it as a client (connPeer)
	idents     atomic.Pointer[map[netip.Addr]upstreamID] // workload address -> its identity (identityOf)
	xds        *xdsclient.Client
	dialer     *hbone.Dialer
	mu         sync.Mutex // serializes Validate→Update
	draining   atomic.Bool
	applied    atomic.Pointer[appliedConfig] // the config in force, for the config dump
}

// appliedConfig is a waypoint config the proxy took, and when.
type appliedConfig struct {
	cfg *waypoint.Config
	at  time.Time
}

// configDump is the waypoint's /config_dump document.
func (s *state) configDump() any {
	d := &configdump.Waypoint{Gateway: s.opts.Namespace + "/" + s.opts.GatewayName}
	if a := s.applied.Load(); a != nil {
		d.Applied, d.L7, d.Policies = a.at.UTC(), configdump.RedactL7(a.cfg.L7), a.cfg.Policies
	}
	if p := s.proxy.Load(); p != nil {
		d.Endpoints = p.EndpointStates(time.Now())
	}
	if svid, err := s.svid.GetX509SVID(); err == nil {
		if c, ok := configdump.CertificateOf(svid.ID.String(), svid.Certificates); ok {
			d.Certificates = []configdump.Certificate{c}
		}
	}
	return d
}

// Run serves until ctx ends, then drains and returns. It returns an error
// only when it cannot start or a server fails; the end of ctx is a clean
// return.
func Run(ctx context.Context, opts Options) error {
	if err := opts.check(); err != nil {
		return fmt.Errorf("run waypoint: %w", err)
	}
	if opts.UpstreamHBONEPort == 0 {
		opts.UpstreamHBONEPort = HBONEPort
	}
	if opts.DrainTimeout <= 0 {
		opts.DrainTimeout = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	reg := opts.Registerer
	if reg == nil {
		reg = prometheus.NewRegistry()
		reg.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	}
	id, err := identity.NewID(opts.TrustDomain, opts.Namespace, opts.ServiceAccount)
	if err != nil {
		return fmt.Errorf("run waypoint: build SPIFFE ID: %w", err)
	}
	s := &state{opts: opts, log: opts.Logger, svid: identity.NewSVIDSource(nil)}
	// The trust bundle starts as meshd's root (the same CA signs SVIDs) and
	// follows TrustBundle pushes; meshd is verified against both (a CA
	// rotation's new root before the mounted file has it).
	s.bundle = identity.NewBundleSource(x509bundle.FromX509Authorities(opts.TrustDomain, opts.Roots))
	meshdTLS := identity.MeshdClientTLS(opts.MeshdTLS, opts.TrustDomain, s.bundle)

	conn, err := grpc.NewClient(opts.MeshdAddress, grpc.WithTransportCredentials(credentials.NewTLS(meshdTLS)), xdsclient.WithMeshdReconnect())
	if err != nil {
		return fmt.Errorf("run waypoint: dial meshd %s: %w", opts.MeshdAddress, err)
	}
	defer conn.Close()
	issue, err := caclient.New(caclient.Options{Conn: conn, Token: func(context.Context) (string, error) { return opts.Token() }, TTL: opts.CertTTL})
	if err != nil {
		return fmt.Errorf("run waypoint: %w", err)
	}
	renewer, err := identity.NewRenewer(identity.RenewerOptions{
		ID: id, Source: s.svid, Issue: issue,
		OnError: func(err error) { s.log.Warn("renew SVID", "id", id, "err", err) },
	})
	if err != nil {
		return fmt.Errorf("run waypoint: %w", err)
	}
	// The proxy is built from the first config meshd pushes (a proxy
	// needs a valid config); until then HBONE streams wait in the listener.
	defer func() {
		if p := s.proxy.Load(); p != nil {
			_ = p.Close()
		}
	}()
	s.reg = reg

	s.dialer, err = hbone.NewDialer(hbone.DialerOptions{Bundle: s.bundle, TrustDomainAliases: s.bundle.Aliases, Logger: opts.Logger})
	if err != nil {
		return fmt.Errorf("run waypoint: %w", err)
	}
	defer s.dialer.Close()

	node := xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: opts.Namespace, Name: opts.GatewayName}
	s.xds, err = xdsclient.New(xdsclient.Options{
		Address:  opts.MeshdAddress,
		TLS:      meshdTLS,
		Token:    func(context.Context) (string, error) { return opts.Token() },
		NodeID:   node.NodeID(),
		Types:    []string{meshv1.WorkloadType, meshv1.AddressType, meshv1.TrustBundleType, meshv1.WaypointConfigType},
		Validate: s.validate,
		OnChange: s.onChange,
		// A meshd that did not sign it learns our certificate's expiry.
		Metadata: func() *structpb.Struct {
			if exp := s.svid.Expiry(); !exp.IsZero() {
				return xdsnode.CertsMetadata([]xdsnode.NodeCert{{Identity: id.String(), NotAfter: exp}})
			}
			return nil
		},
		Logger: opts.Logger,
	})
	if err != nil {
		return fmt.Errorf("run waypoint: %w", err)
	}

	g, gctx := errgroup.WithContext(ctx)
	s.conns = waypoint.NewConnListener(opts.HBONE.Addr())
	s.serve = func(p *waypoint.Proxy) {
		g.Go(func() error { return ignoreCanceled(p.Serve(gctx, s.conns, waypoint.ServerOptions{})) })
	}
	s.serveOn = func(p *waypoint.Proxy, ln net.Listener, misdirected func(sni, host string) bool) {
		g.Go(func() error {
			if err := p.Serve(gctx, ln, waypoint.ServerOptions{Misdirected: misdirected}); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("ingress listener stopped", "addr", ln.Addr(), "err", err)
			}
			if l, ok := ln.(*sniListener); ok {
				l.drain(s.opts.DrainTimeout) // its TLS passthrough relays
			}
			return nil
		})
	}
	s.serveTCPOn = func(p *waypoint.Proxy, ln net.Listener, port uint32) {
		g.Go(func() error {
			if err := p.ServeTCP(gctx, ln, port, s.opts.DrainTimeout); err != nil && !errors.Is(err, net.ErrClosed) {
				s.log.Warn("ingress tcp listener stopped", "addr", ln.Addr(), "err", err)
			}
			return nil
		})
	}
	if opts.KeepLean {
		go admin.KeepLean(gctx, func() bool { return s.ready() == nil }, func(format string, args ...any) {
			s.log.Info(fmt.Sprintf(format, args...))
		})
	}
	g.Go(func() error { return ignoreCanceled(renewer.Run(gctx)) })
	g.Go(func() error { return ignoreCanceled(s.xds.Run(gctx)) })
	if err := s.serveHBONE(gctx, g); err != nil {
		return err
	}
	if opts.Metrics != nil {
		mux := http.NewServeMux()
		mux.Handle("/metrics", promhttp.HandlerFor(reg, promhttp.HandlerOpts{}))
		serveHTTP(gctx, g, opts.Metrics, mux)
	}
	if opts.AdminAddr != "" {
		if err := admin.Serve(gctx, opts.AdminAddr, admin.Options{Pprof: true, Handlers: map[string]http.Handler{
			configdump.Path: configdump.Handler(s.configDump), configdump.TapPath: http.HandlerFunc(s.tap)}}); err != nil {
			return fmt.Errorf("run waypoint: %w", err)
		}
	}
	if opts.Ready != nil {
		mux := http.NewServeMux()
		mux.HandleFunc("/healthz/ready", func(w http.ResponseWriter, _ *http.Request) {
			if err := s.ready(); err != nil {
				http.Error(w, err.Error(), http.StatusServiceUnavailable)
				return
			}
			_, _ = w.Write([]byte("ok\n"))
		})
		serveHTTP(gctx, g, opts.Ready, mux)
	}
	return g.Wait()
}

// ready says why the waypoint cannot take traffic yet, or nil.
func (s *state) ready() error {
	switch {
	case s.draining.Load():
		return errors.New("draining")
	case s.svid.Expiry().IsZero():
		return errors.New("no SVID yet")
	case !s.synced():
		// Ready once it holds meshd's first answer for every type, which
		// includes its config when the model has one: a waypoint for a
		// namespace with no service yet, or an ingress gateway that no
		// Gateway configures yet, is ready and serves nothing.
		return errors.New("no config received from meshd yet")
	}
	return nil
}

// synced reports whether the xDS client has received meshd's first answer
// for every type.
func (s *state) synced() bool {
	select {
	case <-s.xds.Synced():
		return true
	default:
		return false
	}
}

// onChange keeps the VIP and workload identity indexes current, and closes
// an ingress gateway's listener ports when meshd removes its config (the
// last Gateway selecting it was deleted).
func (s *state) onChange(typeURL string, _, removed []string) {
	switch typeURL {
	case meshv1.AddressType:
		s.indexAddresses()
		s.indexIdentities()
		return
	case meshv1.WorkloadType:
		s.indexIdentities()
		return
	}
	if typeURL != meshv1.WaypointConfigType || !s.opts.ServeListeners || len(removed) == 0 {
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, still := s.xds.Get(typeURL, model.NamespacedName{Namespace: s.opts.Namespace, Name: s.opts.GatewayName}.String()); still {
		return
	}
	if err := s.syncPorts(s.proxy.Load(), &model.L7Config{}, nil); err != nil {
		s.log.Warn("close ingress listeners", "err", err)
	}
}

// validate applies a pushed resource before the xDS client stores it: an
// error NACKs the push and the proxy keeps its last good config.
func (s *state) validate(typeURL, name string, msg proto.Message) error {
	switch typeURL {
	case meshv1.WaypointConfigType:
		wc, ok := msg.(*meshv1.WaypointConfig)
		if !ok {
			return fmt.Errorf("resource %q is a %T, not a WaypointConfig", name, msg)
		}
		if wc.GetNamespace() != s.opts.Namespace || wc.GetName() != s.opts.GatewayName {
			return fmt.Errorf("config %s/%s is not this waypoint's (%s/%s)", wc.GetNamespace(), wc.GetName(), s.opts.Namespace, s.opts.GatewayName)
		}
		l7, policies, err := modelview.DecodeWaypointConfig(wc)
		if err != nil {
			return err
		}
		cfg := &waypoint.Config{L7: l7, Policies: policies}
		var tlsByPort map[uint32]*portTLS
		if s.opts.ServeListeners {
			if tlsByPort, err = ingressTLSConfigs(l7); err != nil {
				return fmt.Errorf("apply waypoint config %s: %w", name, err)
			}
		}
		s.mu.Lock()
		defer s.mu.Unlock()
		// The new endpoints are dialable before the config that routes to
		// them is served; a refused config puts the last good set back.
		upstream, err := configEndpoints(l7)
		if err != nil {
			return fmt.Errorf("apply waypoint config %s: %w", name, err)
		}
		prevUpstream := s.upstream.Swap(&upstream)
		defer func() {
			if err != nil {
				s.upstream.Store(prevUpstream)
			}
		}()
		if p := s.proxy.Load(); p != nil {
			err = p.Update(cfg)
		} else {
			o := waypoint.Options{
				Config:        cfg,
				DialContext:   s.dialUpstream,
				Peer:          s.peerOf,
				ConnPeer:      s.connPeer,
				Registerer:    s.reg,
				Logf:          func(f string, a ...any) { s.log.Warn(fmt.Sprintf(f, a...)) },
				AccessLog:     s.opts.AccessLog,
				TraceSampling: s.opts.TraceSampling,
				ExportSpan:    s.opts.ExportSpan,
				NodeName:      s.opts.NodeName,
				ClusterID:     s.opts.ClusterID,

				SpanServiceName: s.opts.SpanServiceName,
				SpanResource:    s.opts.SpanResource,
			}
			if s.opts.ServeListeners {
				// An ingress gateway reports as Istio's do: as the source
				// of the requests it forwards, itself in source_*.
				o.Reporter, o.Self = "source", s.gatewaySelf()
			}
			p, err = waypoint.New(o)
			if err == nil {
				s.proxy.Store(p)
				s.serve(p)
			}
		}
		if err == nil && s.opts.ServeListeners {
			err = s.syncPorts(s.proxy.Load(), l7, tlsByPort)
		}
		if err != nil {
			s.log.Warn("refuse waypoint config", "name", name, "err", err)
			return fmt.Errorf("apply waypoint config %s: %w", name, err)
		}
		s.applied.Store(&appliedConfig{cfg: cfg, at: time.Now()})
		s.log.Info("applied waypoint config", "name", name)
	case meshv1.TrustBundleType:
		tb, ok := msg.(*meshv1.TrustBundle)
		if !ok {
			return fmt.Errorf("resource %q is a %T, not a TrustBundle", name, msg)
		}
		if tb.GetTrustDomain() != s.opts.TrustDomain.Name() {
			return nil // federation is not served by waypoints yet
		}
		b, err := bundleFromPEM(s.opts.TrustDomain, tb.GetRootsPem())
		if err != nil {
			return fmt.Errorf("trust bundle %s: %w", name, err)
		}
		aliases, err := identity.ParseTrustDomains(tb.GetAliases())
		if err != nil {
			return fmt.Errorf("trust bundle %s: aliases: %w", name, err)
		}
		if err := s.bundle.SetBundle(b); err != nil {
			return fmt.Errorf("set trust bundle %s: %w", name, err)
		}
		// Peers of the aliases pass as the trust domain's, on HBONE in
		// and out (the server's and the dialer's TrustDomainAliases).
		s.bundle.SetAliases(s.opts.TrustDomain, aliases)
	}
	return nil
}

func bundleFromPEM(td spiffeid.TrustDomain, roots []string) (*x509bundle.Bundle, error) {
	var all []byte
	for _, r := range roots {
		all = append(all, r...)
		all = append(all, '\n')
	}
	b, err := x509bundle.Parse(td, all)
	if err != nil {
		return nil, fmt.Errorf("parse roots: %w", err)
	}
	if len(b.X509Authorities()) == 0 {
		return nil, errors.New("no roots")
	}
	return b, nil
}

// serveHBONE accepts CONNECT streams and hands each to the proxy as a
// connection whose local address is the CONNECT target.
func (s *state) serveHBONE(ctx context.Context, g *errgroup.Group) error {
	ln := s.conns
	// Connections refused before any stream (hbone.Refused* reasons: a
	// forged or foreign peer is peer_unverified), or closed once their
	// peer was no longer trusted (peer_untrusted), as node agents count
	// theirs in meshlet_tcp_connections_refused_total.
	refused := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "meshlet_waypoint_hbone_connections_refused_total",
		Help: "HBONE connections the waypoint refused before any stream, or closed when their peer was no longer trusted, by reason.",
	}, []string{"reason"})
	if err := s.reg.Register(refused); err != nil {
		return fmt.Errorf("serve HBONE: %w", err)
	}
	srv, err := hbone.NewServer(hbone.ServerOptions{
		SVID: s.svid, Bundle: s.bundle, TrustDomain: s.opts.TrustDomain, TrustDomainAliases: s.bundle.Aliases, Logger: s.log,
		OnRefusedConn: func(_ net.Addr, reason, _ string) { refused.WithLabelValues(reason).Inc() },
		Handler: func(hctx context.Context, r *hbone.Request) error {
			remote := net.Addr(net.TCPAddrFromAddrPort(r.Source))
			if !r.Source.IsValid() {
				remote = r.RemoteAddr
			}
			c := waypoint.NewStreamConn(r.Stream, net.TCPAddrFromAddrPort(r.Target), remote, r)
			if err := ln.Push(hctx, c); err != nil {
				_ = c.Close()
				return fmt.Errorf("hand stream to proxy: %w", err)
			}
			select {
			case <-c.Done():
			case <-hctx.Done():
				_ = c.Close()
			}
			return nil
		},
	})
	if err != nil {
		return fmt.Errorf("run waypoint: %w", err)
	}
	// A peer no longer trusted (an alias taken back, its root gone from
	// the bundle) loses the connections it has, in (counted above) and
	// out to upstreams, as it would a new handshake.
	g.Go(func() error {
		s.bundle.Watch(ctx, func() {
			if n := srv.Reverify() + s.dialer.Reverify(); n > 0 {
				s.log.Info("trust changed: closed HBONE connections whose peer is no longer trusted", "closed", n)
			}
		})
		return nil
	})
	g.Go(func() error {
		err := srv.Serve(s.opts.HBONE)
		if errors.Is(err, hbone.ErrServerClosed) {
			return nil
		}
		return fmt.Errorf("serve hbone: %w", err)
	})
	g.Go(func() error {
		<-ctx.Done()
		s.draining.Store(true)
		dctx, cancel := context.WithTimeout(context.Background(), s.opts.DrainTimeout)
		defer cancel()
		err := srv.Shutdown(dctx)
		_ = ln.Close()
		_ = srv.Close()
		if err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("drain hbone: %w", err)
		}
		return nil
	})
	return nil
}

// dialUpstream opens a connection to an endpoint. A workload of the mesh
// is reached over HBONE, its server required to present the workload's
// identity: the waypoint never sends plaintext into the mesh. The config's
// own marks on the endpoint come first (meshd puts them there, so they hold
// even when the workload and service resources, pushed apart from the
// config, have not arrived): a service VIP to reach through its waypoint,
// or the identity of the workload at the address. An endpoint the config
// leaves unmarked is looked up in those resources (a service VIP with a
// waypoint, an enrolled workload by IP); one that is neither (a
// ServiceEntry's address or hostname outside the mesh, a pod not enrolled)
// is dialled directly, as Istio's waypoints reach them (egress through a
// waypoint); with a DestinationRule's TLS origination the proxy wraps that
// connection in TLS. Any other address is refused.
func (s *state) dialUpstream(ctx context.Context, network, addr string) (net.Conn, error) {
	var ep configEndpoint
	inConfig := false
	if eps := s.upstream.Load(); eps != nil {
		ep, inConfig = (*eps)[addr]
	}
	ap, perr := netip.ParseAddrPort(addr)
	if perr == nil {
		if ep.via.IsValid() && !ep.viaSelf(s.opts.Namespace, s.opts.GatewayName) {
			return s.dialHBONE(ctx, hbone.Target{Local: s.svid, Proxy: ep.via, PeerID: ep.viaID, Addr: ap}, nil)
		}
		if !ep.peer.IsZero() {
			return s.dialHBONE(ctx, s.workloadTarget(ap, ep.peer), nil)
		}
		if target, ok, err := s.viaWaypoint(ap); ok {
			return s.dialHBONE(ctx, target, err)
		}
		peer, inMesh, err := s.identityOf(ap.Addr())
		if inMesh {
			return s.dialHBONE(ctx, s.workloadTarget(ap, peer), err)
		}
	}
	if inConfig {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	}
	if perr != nil {
		return nil, fmt.Errorf("dial upstream %s: not an endpoint of this proxy's config and not ip:port", addr)
	}
	return nil, &net.OpError{Op: "dial", Net: "hbone", Addr: net.TCPAddrFromAddrPort(ap),
		Err: fmt.Errorf("no workload with address %s is known to this waypoint, and it is no endpoint of its config", ap.Addr())}
}

// workloadTarget is the HBONE stream to ap through the HBONE server of the
// workload at ap's address, which must present peer.
func (s *state) workloadTarget(ap netip.AddrPort, peer spiffeid.ID) hbone.Target {
	return hbone.Target{Local: s.svid, Proxy: netip.AddrPortFrom(ap.Addr(), s.opts.UpstreamHBONEPort), PeerID: peer, Addr: ap}
}

// dialHBONE opens an HBONE stream to target unless finding it failed (err).
// Errors are a net.OpError "dial": the proxy reports them as a connection
// failure (UF), not a reset of an established upstream.
func (s *state) dialHBONE(ctx context.Context, target hbone.Target, err error) (net.Conn, error) {
	var c *hbone.Conn
	if err == nil {
		c, err = s.dialer.Dial(ctx, target)
	}
	remote := net.TCPAddrFromAddrPort(target.Addr)
	if err != nil {
		return nil, &net.OpError{Op: "dial", Net: "hbone", Addr: remote, Err: err}
	}
	return &hboneConn{Conn: c, local: s.opts.HBONE.Addr(), remote: remote}, nil
}

// configEndpoint is what a config says of one of its endpoint addresses.
type configEndpoint struct {
	peer    spiffeid.ID          // a workload of the mesh with this identity; zero when unmarked
	via     netip.AddrPort       // valid: a service VIP reached through this waypoint
	viaID   spiffeid.ID          // the identity that waypoint must present
	viaName model.NamespacedName // that waypoint's Gateway
}

func (e configEndpoint) viaSelf(ns, name string) bool {
	return e.viaName.Namespace == ns && e.viaName.Name == name
}

// configEndpoints indexes a config's endpoints by address, for
// dialUpstream: every one may be dialled (how, its marks say). Two
// endpoints of one address (in two clusters) merge, a mark winning over
// none; a mark that does not parse refuses the config.
func configEndpoints(l7 *model.L7Config) (map[string]configEndpoint, error) {
	out := map[string]configEndpoint{}
	for _, c := range l7.Clusters {
		for _, e := range c.Endpoints {
			ce := out[e.Address]
			if e.Identity != "" && ce.peer.IsZero() {
				id, err := spiffeid.FromString(e.Identity)
				if err != nil {
					return nil, fmt.Errorf("cluster %q: endpoint %s: identity %q: %w", c.Name, e.Address, e.Identity, err)
				}
				ce.peer = id
			}
			if v := e.Via; v != nil && !ce.via.IsValid() {
				ap, err := netip.ParseAddrPort(v.Address)
				if err != nil {
					return nil, fmt.Errorf("cluster %q: endpoint %s: waypoint %s address %q: %w", c.Name, e.Address, v.Waypoint, v.Address, err)
				}
				id, err := spiffeid.FromString(v.Identity)
				if err != nil {
					return nil, fmt.Errorf("cluster %q: endpoint %s: waypoint %s identity %q: %w", c.Name, e.Address, v.Waypoint, v.Identity, err)
				}
				ce.via, ce.viaID, ce.viaName = netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), id, v.Waypoint
			}
			out[e.Address] = ce
		}
	}
	return out, nil
}

// identityOf finds the SPIFFE ID of the workload of the mesh holding ip;
// inMesh is false when no enrolled workload holds it. It runs for every new
// upstream connection, so it reads an index rather than the workloads.
func (s *state) identityOf(ip netip.Addr) (id spiffeid.ID, inMesh bool, err error) {
	idx := s.idents.Load()
	if idx == nil {
		return spiffeid.ID{}, false, nil
	}
	u, inMesh := (*idx)[ip]
	return u.id, inMesh, u.err
}

// upstreamID is the identity an enrolled workload's HBONE server must
// present, or why its resource gives none usable (then the dial fails for
// that workload's addresses only).
type upstreamID struct {
	id  spiffeid.ID
	err error
}

// indexIdentities rebuilds the index identityOf reads from the workload and
// address resources meshd pushed. It runs on the xDS stream's goroutine
// only; the index it replaces is never changed, so connections read it
// without a lock.
func (s *state) indexIdentities() {
	idx := identityIndex(s.opts.TrustDomain, s.xds.List(meshv1.WorkloadType), s.xds.List(meshv1.AddressType))
	s.idents.Store(&idx)
}

// identityIndex maps each address of an enrolled workload to its identity.
// The workloads this waypoint serves (workloads, the WorkloadType
// resources) come first; an address none of them holds takes its identity
// from the mesh-wide address resources (addresses): an ingress gateway
// routes to any Service. Of two resources of one type holding an address,
// the first by name wins, so that the choice does not change from one
// rebuild to the next. Addresses are keyed as they parse (not unmapped), as
// dialUpstream looks them up; the workloads' network is not part of the key
// because a dial names only an address.
func identityIndex(td spiffeid.TrustDomain, workloads, addresses map[string]xdsclient.Resource) map[netip.Addr]upstreamID {
	idx := map[netip.Addr]upstreamID{}
	add := func(addrs []string, u upstreamID) {
		for _, a := range addrs {
			ip, err := netip.ParseAddr(a)
			if err != nil {
				continue
			}
			if _, taken := idx[ip]; !taken {
				idx[ip] = u
			}
		}
	}
	for _, name := range slices.Sorted(maps.Keys(workloads)) {
		w, ok := workloads[name].Message.(*meshv1.Workload)
		if !ok || !w.GetEnrolled() {
			continue
		}
		add(w.GetAddresses(), workloadID(td, name, w))
	}
	for _, name := range slices.Sorted(maps.Keys(addresses)) {
		a, ok := addresses[name].Message.(*meshv1.Address)
		w := a.GetWorkload()
		if !ok || w == nil || !w.GetEnrolled() {
			continue
		}
		id, err := spiffeid.FromString(w.GetIdentity())
		if err != nil {
			err = fmt.Errorf("workload %s has a bad identity %q: %w", name, w.GetIdentity(), err)
		}
		add(w.GetAddresses(), upstreamID{id: id, err: err})
	}
	return idx
}

// workloadID is the identity of the workload resource w named name: its
// Identity field, else the one its trust domain (td when it names none),
// namespace and service account make.
func workloadID(td spiffeid.TrustDomain, name string, w *meshv1.Workload) upstreamID {
	if w.GetIdentity() != "" {
		id, err := spiffeid.FromString(w.GetIdentity())
		if err != nil {
			return upstreamID{err: fmt.Errorf("workload %s has a bad identity %q: %w", name, w.GetIdentity(), err)}
		}
		return upstreamID{id: id}
	}
	if w.GetTrustDomain() != "" {
		var err error
		if td, err = spiffeid.TrustDomainFromString(w.GetTrustDomain()); err != nil {
			return upstreamID{err: fmt.Errorf("workload %s: %w", name, err)}
		}
	}
	id, err := identity.NewID(td, w.GetNamespace(), w.GetServiceAccount())
	if err != nil {
		return upstreamID{err: fmt.Errorf("workload %s: %w", name, err)}
	}
	return upstreamID{id: id}
}

// peerOf takes the verified HBONE client identity from the stream, and the
// service it dialled from the stream's target address.
func (s *state) peerOf(r *http.Request) waypoint.Peer {
	c, ok := waypoint.ConnFromContext(r.Context())
	if !ok {
		return waypoint.Peer{}
	}
	return s.connPeer(c)
}

// peerMemo is an HBONE stream's Peer, computed at its first request and
// kept for the next ones (~1 us and 7 allocations a request otherwise) while
// the VIP and source indexes it was computed with are current.
type peerMemo struct {
	vips    *map[netip.Addr]vipService
	sources *map[netip.Addr]sourceInfo
	peer    waypoint.Peer
}

// gatewaySelf is an ingress gateway as the source of what it forwards: its
// Deployment (named after its Gateway), namespace, identity and app.
func (s *state) gatewaySelf() *waypoint.Peer {
	self := &waypoint.Peer{Workload: s.opts.GatewayName, Namespace: s.opts.Namespace,
		Labels: map[string]string{"app": s.opts.GatewayName, "service.istio.io/canonical-name": s.opts.GatewayName}}
	if id, err := identity.NewID(s.opts.TrustDomain, s.opts.Namespace, s.opts.ServiceAccount); err == nil {
		self.Principal = id.String()
	}
	return self
}

// sourceInfo is what a waypoint reports of a client workload (Istio's
// source_workload, source_app, source_version, source_canonical_* metric
// labels) and what a route's sourceLabels match: its workload name and the
// labels meshd sends (model: pkg/xds workloadLabelKeys), with its
// canonical name and revision under Istio's label keys. id is the identity
// the workload presents: the information is used only for an HBONE peer
// that proved it (or its form in a trust domain alias), never on the
// source address alone.
type sourceInfo struct {
	id       spiffeid.ID
	workload string
	labels   map[string]string
}

// indexAddresses rebuilds, in one pass over the address resources meshd
// pushed, the service VIP index and the index of client workloads (from
// the mesh-wide resources: a waypoint's workload resources are only the
// ones it serves).
func (s *state) indexAddresses() {
	vips, sources := addressIndexes(s.xds.List(meshv1.AddressType))
	s.vips.Store(&vips)
	s.sources.Store(&sources)
}

// addressIndexes maps each service VIP to its service, and each address of
// a workload with an identity to what is reported of it as a client. Of two
// resources holding an address (pods on the host's network share its), the
// first by name wins, so that the choice does not change from one rebuild
// to the next; a client gets it only with that workload's identity
// (connPeer).
func addressIndexes(addresses map[string]xdsclient.Resource) (map[netip.Addr]vipService, map[netip.Addr]sourceInfo) {
	vips, idx := map[netip.Addr]vipService{}, map[netip.Addr]sourceInfo{}
	for _, name := range slices.Sorted(maps.Keys(addresses)) {
		a, ok := addresses[name].Message.(*meshv1.Address)
		if svc := a.GetService(); ok && svc != nil {
			v := vipService{hostname: svc.GetHostname(), waypoint: svc.GetWaypoint()}
			for _, vip := range svc.GetVips() {
				if ip, err := netip.ParseAddr(vip); err == nil {
					if _, taken := vips[ip.Unmap()]; !taken {
						vips[ip.Unmap()] = v
					}
				}
			}
			continue
		}
		w := a.GetWorkload()
		if !ok || w == nil || w.GetIdentity() == "" {
			continue
		}
		id, err := spiffeid.FromString(w.GetIdentity())
		if err != nil {
			continue
		}
		info := sourceInfo{id: id, workload: w.GetWorkloadName(), labels: maps.Clone(w.GetLabels())}
		if info.workload == "" {
			info.workload = w.GetName()
		}
		for k, v := range map[string]string{"service.istio.io/canonical-name": w.GetCanonicalName(), "service.istio.io/canonical-revision": w.GetCanonicalRevision()} {
			if v != "" {
				if info.labels == nil {
					info.labels = map[string]string{}
				}
				info.labels[k] = v
			}
		}
		for _, a := range w.GetAddresses() {
			if ip, err := netip.ParseAddr(a); err == nil {
				if _, taken := idx[ip.Unmap()]; !taken {
					idx[ip.Unmap()] = info
				}
			}
		}
	}
	return vips, idx
}

func (s *state) connPeer(c net.Conn) waypoint.Peer {
	sc, ok := c.(*waypoint.StreamConn)
	if !ok {
		return waypoint.Peer{IP: waypoint.RemoteIP(c)}
	}
	idx, srcs := s.vips.Load(), s.sources.Load()
	if m, ok := sc.Memo().(*peerMemo); ok && m.vips == idx && m.sources == srcs {
		return m.peer
	}
	p := waypoint.Peer{IP: waypoint.RemoteIP(c)}
	if req, ok := sc.Meta.(*hbone.Request); ok {
		p.Principal = req.Peer.String()
		p.DestinationIP, p.DestinationPort = req.Target.Addr().Unmap(), uint32(req.Target.Port())
		if w, err := identity.FromID(req.Peer); err == nil {
			p.Namespace = w.Namespace
		}
		if idx != nil {
			p.DestinationService = (*idx)[req.Target.Addr().Unmap()].hostname
		}
		if srcs != nil {
			if si, ok := (*srcs)[p.IP.Unmap()]; ok && (si.id == req.Peer || s.bundle != nil && s.bundle.SameWorkload(req.Peer, si.id)) {
				p.Workload, p.Labels = si.workload, si.labels
			}
		}
	}
	sc.SetMemo(&peerMemo{vips: idx, sources: srcs, peer: p})
	return p
}

// vipService is what the address resources say of a service VIP.
type vipService struct {
	hostname string
	waypoint *meshv1.GatewayAddress // nil when the service has none
}

// viaWaypoint is the HBONE dial that sends a request for a service VIP to
// the service's waypoint (an ingress gateway's route to a service labelled
// istio.io/ingress-use-waypoint: meshd makes the VIP the cluster's
// endpoint); ok is false when ip is no VIP of a service with a waypoint.
func (s *state) viaWaypoint(ap netip.AddrPort) (hbone.Target, bool, error) {
	idx := s.vips.Load()
	if idx == nil {
		return hbone.Target{}, false, nil
	}
	wp := (*idx)[ap.Addr().Unmap()].waypoint
	if wp == nil || wp.GetAddress() == "" {
		return hbone.Target{}, false, nil
	}
	if wp.GetNamespace() == s.opts.Namespace && wp.GetName() == s.opts.GatewayName {
		return hbone.Target{}, false, nil // this proxy is that waypoint
	}
	addr, err := netip.ParseAddr(wp.GetAddress())
	if err != nil {
		return hbone.Target{Addr: ap}, true, fmt.Errorf("waypoint %s/%s of %s has a bad address %q", wp.GetNamespace(), wp.GetName(), ap.Addr(), wp.GetAddress())
	}
	id, err := spiffeid.FromString(wp.GetIdentity())
	if err != nil {
		return hbone.Target{Addr: ap}, true, fmt.Errorf("waypoint %s/%s of %s has a bad identity %q: %w", wp.GetNamespace(), wp.GetName(), ap.Addr(), wp.GetIdentity(), err)
	}
	port := uint16(wp.GetHbonePort())
	if port == 0 {
		port = s.opts.UpstreamHBONEPort
	}
	return hbone.Target{Local: s.svid, Proxy: netip.AddrPortFrom(addr.Unmap(), port), PeerID: id, Addr: ap}, true, nil
}

// hboneConn gives an hbone.Conn the net.Conn methods the proxy's HTTP
// transport needs; HBONE streams have no deadlines of their own.
type hboneConn struct {
	*hbone.Conn
	local, remote net.Addr
}

func (c *hboneConn) LocalAddr() net.Addr              { return c.local }
func (c *hboneConn) RemoteAddr() net.Addr             { return c.remote }
func (c *hboneConn) SetDeadline(time.Time) error      { return nil }
func (c *hboneConn) SetReadDeadline(time.Time) error  { return nil }
func (c *hboneConn) SetWriteDeadline(time.Time) error { return nil }

func serveHTTP(ctx context.Context, g *errgroup.Group, ln net.Listener, h http.Handler) {
	srv := &http.Server{Handler: h, ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := srv.Serve(ln); !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("serve %s: %w", ln.Addr(), err)
		}
		return nil
	})
	g.Go(func() error {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		defer cancel()
		_ = srv.Shutdown(sctx)
		return nil
	})
}

func ignoreCanceled(err error) error {
	if err == nil || errors.Is(err, context.Canceled) {
		return nil
	}
	return err
}

// tap serves configdump.TapPath from the proxy, made with meshd's first config.
func (s *state) tap(w http.ResponseWriter, r *http.Request) {
	p := s.proxy.Load()
	if p == nil {
		http.Error(w, "tap: no config from meshd yet, so no request to tap", http.StatusServiceUnavailable)
		return
	}
	p.TapHandler().ServeHTTP(w, r)
}
