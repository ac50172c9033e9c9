package app_test

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/configdump"
	"github.com/meshlet/meshlet/pkg/hbone"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"
	"github.com/meshlet/meshlet/waypoint/app"

	securityv1alpha1 "istio.io/api/security/v1alpha1"
)

var (
	td    = spiffeid.RequireTrustDomainFromString("cluster.local")
	quiet = slog.New(slog.NewTextHandler(io.Discard, nil))
)

const (
	wpNS, wpSA, wpGateway = "app", "waypoint", "waypoint"
	wpToken               = "waypoint-token"
	meshdName             = "meshd.meshlet-system.svc"
)

// meshd is a real CA and xDS server on one loopback gRPC port, with a static
// authenticator: only wpToken is accepted, as the waypoint's service account.
type meshd struct {
	ca   *ca.CA
	keys *ca.KeyMaterial // the CA's root, to sign under other trust domains
	xds  *xds.Server
	addr string
	tls  *tls.Config
}

func startMeshd(t *testing.T) *meshd {
	t.Helper()
	keys, err := ca.GenerateRoot(td, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := ca.New(ca.Options{TrustDomain: td, Keys: keys, Authorizer: func(_ context.Context, caller ca.Caller, id spiffeid.ID) error {
		want, err := identity.NewID(td, caller.Namespace, caller.ServiceAccount)
		if err != nil || want != id {
			return fmt.Errorf("caller %s/%s may not hold %s", caller.Namespace, caller.ServiceAccount, id)
		}
		return nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	caSrv, err := ca.NewServer(ca.ServerOptions{CA: c, Logger: quiet, Authenticate: func(_ context.Context, tok string) (ca.Caller, error) {
		if tok != wpToken {
			return ca.Caller{}, errors.New("unknown token")
		}
		return ca.Caller{Username: "system:serviceaccount:app:waypoint", Namespace: wpNS, ServiceAccount: wpSA}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	xs, err := xds.New(xds.Options{Debounce: -1, Logger: quiet, Authenticate: func(_ context.Context, tok string) (xdsnode.Principal, error) {
		if tok != wpToken {
			return xdsnode.Principal{}, errors.New("unknown token")
		}
		return xdsnode.Principal{Role: xdsnode.RoleWaypoint, Namespace: wpNS, Name: wpGateway}, nil
	}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = xs.Close() })
	cert, err := c.ServingCertificate([]string{meshdName}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	gs, err := xds.NewGRPCServer(&tls.Config{Certificates: []tls.Certificate{*cert}})
	if err != nil {
		t.Fatal(err)
	}
	xs.Register(gs)
	securityv1alpha1.RegisterIstioCertificateServiceServer(gs, caSrv)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = gs.Serve(ln) }()
	t.Cleanup(gs.Stop)
	pool := x509.NewCertPool()
	for _, r := range c.Roots() {
		pool.AddCert(r)
	}
	return &meshd{ca: c, keys: keys, xds: xs, addr: ln.Addr().String(), tls: &tls.Config{RootCAs: pool, ServerName: meshdName}}
}

// svid signs an SVID for ns/sa with the meshd CA directly.
func (m *meshd) svid(t *testing.T, ns, sa string) *identity.SVIDSource {
	t.Helper()
	id, err := identity.NewID(td, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	csr, key, err := identity.NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := m.ca.Sign(context.Background(), ca.Caller{Namespace: ns, ServiceAccount: sa}, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewSVIDSource(&x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key})
}

// backendNode is an HBONE server (as a node agent would run) in front of
// loopback HTTP backends; it records the identities that connected.
type backendNode struct {
	port  uint16
	mu    sync.Mutex
	peers []spiffeid.ID
}

func startBackendNode(t *testing.T, m *meshd, svid *identity.SVIDSource) *backendNode {
	t.Helper()
	b := &backendNode{}
	srv, err := hbone.NewServer(hbone.ServerOptions{
		SVID: svid, Bundle: identity.NewBundleSource(m.ca.Bundle()), TrustDomain: td, Logger: quiet,
		Handler: func(ctx context.Context, r *hbone.Request) error {
			b.mu.Lock()
			b.peers = append(b.peers, r.Peer)
			b.mu.Unlock()
			var d net.Dialer
			c, err := d.DialContext(ctx, "tcp", r.Target.String())
			if err != nil {
				return err
			}
			defer c.Close()
			return hbone.Relay(r.Stream, c.(*net.TCPConn))
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	b.port = uint16(ln.Addr().(*net.TCPAddr).Port)
	// The same server also answers on 127.0.0.2, for an endpoint whose
	// workload claims another identity, and on 127.0.0.4, for an endpoint
	// only the config marks as a workload of the mesh.
	go func() { _ = srv.Serve(ln) }()
	for _, ip := range []string{"127.0.0.2", "127.0.0.4"} {
		more, err := net.Listen("tcp", fmt.Sprintf("%s:%d", ip, b.port))
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = srv.Serve(more) }()
	}
	t.Cleanup(func() { _ = srv.Close() })
	return b
}

func (b *backendNode) seen() []spiffeid.ID {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]spiffeid.ID(nil), b.peers...)
}

func namedBackend(t *testing.T, name string) string {
	t.Helper()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, name)
	}))
	t.Cleanup(srv.Close)
	return strings.TrimPrefix(srv.URL, "http://")
}

// plainBackend serves HTTP on ip (a loopback address), answering name.
func plainBackend(t *testing.T, ip, name string) string {
	t.Helper()
	ln, err := net.Listen("tcp", ip+":0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, name)
	})}
	go func() { _ = srv.Serve(ln) }()
	t.Cleanup(func() { _ = srv.Close() })
	return ln.Addr().String()
}

// waypointConfig routes every request to cluster and defines v1 and v2 (and
// v3, v1's port on 127.0.0.2), and "outside" when that address is set: an
// endpoint that is no workload of the mesh.
func waypointConfig(t *testing.T, cluster, v1, v2 string, outside ...string) *meshv1.WaypointConfig {
	t.Helper()
	l7 := model.L7Config{
		Listeners: []model.L7Listener{{Name: "hbone", VirtualHosts: []model.VirtualHost{{
			Name: "reviews", Domains: []string{"*"},
			Routes: []model.L7Route{{Name: "all", Destinations: []model.WeightedDestination{{Cluster: cluster}}}},
		}}}},
		Clusters: []model.L7Cluster{
			{Name: "v1", Endpoints: []model.L7Endpoint{{Address: v1}}},
			{Name: "v2", Endpoints: []model.L7Endpoint{{Address: v2}}},
			// v3 is v1's port on 127.0.0.2, a workload with another identity.
			{Name: "v3", Endpoints: []model.L7Endpoint{{Address: "127.0.0.2:" + v1[strings.LastIndex(v1, ":")+1:]}}},
		},
	}
	for _, a := range outside {
		l7.Clusters = append(l7.Clusters, model.L7Cluster{Name: "outside", Endpoints: []model.L7Endpoint{{Address: a}}})
	}
	b, err := json.Marshal(l7)
	if err != nil {
		t.Fatal(err)
	}
	return &meshv1.WaypointConfig{Namespace: wpNS, Name: wpGateway, L7Json: b}
}

// markEndpoints rewrites a config's endpoints of cluster with mark, as
// meshd marks them (the identity of a workload of the mesh, or the waypoint
// a service VIP is reached through).
func markEndpoints(t *testing.T, wc *meshv1.WaypointConfig, cluster string, mark func(*model.L7Endpoint)) *meshv1.WaypointConfig {
	t.Helper()
	var l7 model.L7Config
	if err := json.Unmarshal(wc.L7Json, &l7); err != nil {
		t.Fatal(err)
	}
	for i := range l7.Clusters {
		if l7.Clusters[i].Name == cluster {
			for j := range l7.Clusters[i].Endpoints {
				mark(&l7.Clusters[i].Endpoints[j])
			}
		}
	}
	b, err := json.Marshal(l7)
	if err != nil {
		t.Fatal(err)
	}
	return &meshv1.WaypointConfig{Namespace: wc.Namespace, Name: wc.Name, L7Json: b}
}

// get sends one HTTP request inside an HBONE CONNECT to the waypoint.
func get(ctx context.Context, d *hbone.Dialer, client *identity.SVIDSource, waypoint netip.AddrPort) (int, string, error) {
	c, err := d.Dial(ctx, hbone.Target{
		Local: client, Proxy: waypoint, PeerID: spiffeid.RequireFromPath(td, "/ns/"+wpNS+"/sa/"+wpSA),
		Addr: netip.MustParseAddrPort("127.0.0.1:9080"),
	})
	if err != nil {
		return 0, "", err
	}
	defer c.Close()
	if _, err := io.WriteString(c, "GET /reviews HTTP/1.1\r\nHost: reviews.app.svc.cluster.local:9080\r\nConnection: close\r\n\r\n"); err != nil {
		return 0, "", err
	}
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body), err
}

// eventually retries f until it returns nil, for at most 10s.
func eventually(t *testing.T, what string, f func() error) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		err := f()
		if err == nil {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: %v", what, err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWaypointRoutesPerPushedConfig(t *testing.T) {
	m := startMeshd(t)
	v1, v2 := namedBackend(t, "v1"), namedBackend(t, "v2")
	backendID := spiffeid.RequireFromPath(td, "/ns/app/sa/reviews")
	node := startBackendNode(t, m, m.svid(t, "app", "reviews"))
	if err := m.xds.SetWorkload(&meshv1.Workload{
		Uid: "reviews-1", Name: "reviews-1", Namespace: "app", Addresses: []string{"127.0.0.1"},
		ServiceAccount: "reviews", TrustDomain: td.Name(), Identity: backendID.String(),
		Waypoint: &meshv1.GatewayAddress{Namespace: wpNS, Name: wpGateway}, Enrolled: true,
	}); err != nil {
		t.Fatal(err)
	}
	m.xds.MarkSynced()

	hboneLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	readyLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	metricsLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	adminAddr := adminLn.Addr().String()
	adminLn.Close()
	ctx, cancel := context.WithCancel(context.Background())
	runApp(t, ctx, cancel, app.Options{
		MeshdAddress: m.addr, MeshdTLS: m.tls, Roots: m.ca.Roots(),
		Token:       func() (string, error) { return wpToken, nil },
		TrustDomain: td, Namespace: wpNS, ServiceAccount: wpSA, GatewayName: wpGateway,
		HBONE: hboneLn, Ready: readyLn, Metrics: metricsLn, AdminAddr: adminAddr,
		UpstreamHBONEPort: node.port, Logger: quiet,
	})

	hc := &http.Client{Timeout: 5 * time.Second}
	readyURL := "http://" + readyLn.Addr().String() + "/healthz/ready"
	// With its SVID and meshd's first answer the waypoint is ready even
	// before meshd has a config for it (a namespace with no service yet).
	eventually(t, "ready without a config", func() error {
		resp, err := hc.Get(readyURL)
		if err != nil {
			return err
		}
		body, _ := io.ReadAll(resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("ready = %d %q; want 200", resp.StatusCode, body)
		}
		return nil
	})
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "v1", v1, v2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "waypoint ready", func() error {
		resp, err := hc.Get(readyURL)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return fmt.Errorf("ready status %d", resp.StatusCode)
		}
		return nil
	})

	clientSVID := m.svid(t, "client", "curl")
	d, err := hbone.NewDialer(hbone.DialerOptions{Bundle: identity.NewBundleSource(m.ca.Bundle())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	wpAddr := hboneLn.Addr().(*net.TCPAddr).AddrPort()
	expect := func(want string) func() error {
		return func() error {
			rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
			defer rcancel()
			code, body, err := get(rctx, d, clientSVID, wpAddr)
			if err != nil {
				return err
			}
			if code != http.StatusOK || body != want {
				return fmt.Errorf("GET /reviews = %d %q; want 200 %q", code, body, want)
			}
			return nil
		}
	}

	if err := expect("v1")(); err != nil {
		t.Fatalf("first config: %v", err)
	}
	wpID := spiffeid.RequireFromPath(td, "/ns/"+wpNS+"/sa/"+wpSA)
	if got := node.seen(); len(got) == 0 || got[0] != wpID {
		t.Fatalf("backend node saw peers %v; want the waypoint's %s (HBONE upstream with the waypoint SVID)", got, wpID)
	}

	// A push moves the route to v2.
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "v2", v1, v2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "route moved to v2", expect("v2"))

	// An invalid push (route to an unknown cluster) is NACKed; v2 keeps serving.
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "missing", v1, v2)); err != nil {
		t.Fatal(err)
	}
	eventually(t, "invalid config NACKed", func() error {
		for _, c := range m.xds.Clients() {
			if c.LastNACK != nil && c.LastNACK.TypeURL == meshv1.WaypointConfigType {
				return nil
			}
		}
		return errors.New("no NACK of the WaypointConfig yet")
	})
	if err := expect("v2")(); err != nil {
		t.Fatalf("after the NACKed push: %v", err)
	}
	// The config dump (meshctl proxy-config) shows the config in force,
	// the last good one, and the waypoint's own certificate.
	resp, err := hc.Get("http://" + adminAddr + configdump.Path)
	if err != nil {
		t.Fatal(err)
	}
	var dump configdump.Waypoint
	err = json.NewDecoder(resp.Body).Decode(&dump)
	resp.Body.Close()
	if err != nil {
		t.Fatalf("decode config dump: %v", err)
	}
	if dump.Gateway != wpNS+"/"+wpGateway || dump.L7 == nil || len(dump.L7.Listeners) != 1 ||
		dump.L7.Listeners[0].VirtualHosts[0].Routes[0].Destinations[0].Cluster != "v2" {
		t.Errorf("config dump = gateway %q, L7 %+v; want %s/%s routing to v2 (the last good config)", dump.Gateway, dump.L7, wpNS, wpGateway)
	}
	if len(dump.Certificates) != 1 || dump.Certificates[0].Identity != spiffeid.RequireFromPath(td, "/ns/"+wpNS+"/sa/"+wpSA).String() ||
		dump.Certificates[0].State(time.Now()) != "valid" {
		t.Errorf("config dump certificates = %+v; want the waypoint's valid SVID", dump.Certificates)
	}

	// The upstream must present the identity xDS says the endpoint has:
	// 127.0.0.2 is claimed by a "ratings" workload, but its HBONE server
	// (the same node) presents the reviews SVID, so the waypoint refuses it.
	if err := m.xds.SetWorkload(&meshv1.Workload{
		Uid: "ratings-1", Name: "ratings-1", Namespace: "app", Addresses: []string{"127.0.0.2"},
		ServiceAccount: "ratings", TrustDomain: td.Name(), Identity: "spiffe://cluster.local/ns/app/sa/ratings",
		Waypoint: &meshv1.GatewayAddress{Namespace: wpNS, Name: wpGateway}, Enrolled: true,
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "v3", v1, v2)); err != nil {
		t.Fatal(err)
	}
	before := len(node.seen())
	eventually(t, "upstream with the wrong identity refused", func() error {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		code, body, err := get(rctx, d, clientSVID, wpAddr)
		if err != nil {
			return err
		}
		if code < 500 {
			return fmt.Errorf("GET /reviews = %d %q; want a 5xx (upstream identity mismatch)", code, body)
		}
		return nil
	})

	if got := len(node.seen()); got != before {
		t.Errorf("backend node accepted %d streams for the mis-identified endpoint; want 0", got-before)
	}

	// An endpoint of the config that is no workload of the mesh (a
	// ServiceEntry's, outside it) is dialled directly, as Istio's waypoints
	// do for egress; an address that is neither a workload nor an endpoint
	// of the config is never dialled.
	outside := plainBackend(t, "127.0.0.3", "outside")
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "outside", v1, v2, outside)); err != nil {
		t.Fatal(err)
	}
	before = len(node.seen())
	eventually(t, "endpoint outside the mesh dialled directly", expect("outside"))
	if got := len(node.seen()); got != before {
		t.Errorf("backend node got %d HBONE streams for the endpoint outside the mesh; want 0", got-before)
	}

	// An endpoint the config marks as a workload of the mesh goes over
	// HBONE with the identity the mark names, before (here: without) any
	// workload resource for its address: the first request the new config
	// routes is already on HBONE, never plaintext.
	marked := plainBackend(t, "127.0.0.4", "marked")
	before = len(node.seen())
	if err := m.xds.SetWaypointConfig(markEndpoints(t, waypointConfig(t, "outside", v1, v2, marked), "outside",
		func(e *model.L7Endpoint) { e.Identity = backendID.String() })); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the marked endpoint served", expect("marked"))
	if got := node.seen(); len(got) != before+1 || got[len(got)-1] != wpID {
		t.Errorf("backend node saw peers %v after the marked endpoint's first answer; want exactly one new HBONE stream from %s (the endpoint dialled in plaintext?)", got[before:], wpID)
	}

	// A service VIP the config marks as reached through its waypoint (an
	// ingress gateway's route to a service labelled
	// istio.io/ingress-use-waypoint) goes over HBONE to that waypoint,
	// CONNECT to the VIP, the waypoint verified by its identity, with no
	// Service resource for the VIP (it may come later: the VIP must never
	// be dialled directly meanwhile). The backend node plays the waypoint.
	viaWP := plainBackend(t, "127.0.0.5", "via-waypoint")
	before = len(node.seen())
	if err := m.xds.SetWaypointConfig(markEndpoints(t, waypointConfig(t, "outside", v1, v2, viaWP), "outside", func(e *model.L7Endpoint) {
		e.Via = &model.L7Via{Waypoint: model.NamespacedName{Namespace: "app", Name: "ratings-waypoint"},
			Address: fmt.Sprintf("127.0.0.1:%d", node.port), Identity: backendID.String()}
	})); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the VIP marked via its waypoint served", expect("via-waypoint"))
	if got := node.seen(); len(got) != before+1 || got[len(got)-1] != wpID {
		t.Errorf("the service's waypoint saw peers %v after the VIP's first answer; want exactly one new HBONE stream from %s (the VIP dialled directly?)", got[before:], wpID)
	}

	// A config that leaves the VIP unmarked (from a meshd before the marks)
	// still reaches it through the waypoint the Service resource names.
	viaWP = plainBackend(t, "127.0.0.6", "via-service-resource")
	if err := m.xds.SetService(&meshv1.Service{
		Name: "ratings", Namespace: "app", Hostname: "ratings.app.svc.cluster.local", Vips: []string{"127.0.0.6"},
		Waypoint: &meshv1.GatewayAddress{Namespace: "app", Name: "ratings-waypoint", Address: "127.0.0.1", HbonePort: uint32(node.port), Identity: backendID.String()},
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "outside", v1, v2, viaWP)); err != nil {
		t.Fatal(err)
	}
	before = len(node.seen())
	// Unmarked, the VIP depends on the Service resource, pushed apart from
	// the config: until the waypoint holds both, the VIP is an endpoint
	// outside the mesh and is dialled directly (the window the marks
	// close); once it does, the request goes through the service's waypoint.
	eventually(t, "a service VIP reached through its waypoint", func() error {
		if err := expect("via-service-resource")(); err != nil {
			return err
		}
		if got := node.seen(); len(got) <= before || got[len(got)-1] != wpID {
			before = len(got)
			return fmt.Errorf("the service's waypoint saw peers %v; want a new HBONE stream from %s", got, wpID)
		}
		return nil
	})

	resp, err = hc.Get("http://" + metricsLn.Addr().String() + "/metrics")
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if !strings.Contains(string(body), "istio_requests_total") {
		t.Errorf("/metrics has no istio_requests_total after requests")
	}
}

// runApp runs the waypoint app with opts until the test ends: then it
// cancels ctx and wants Run to return nil within 10 s.
func runApp(t *testing.T, ctx context.Context, cancel context.CancelFunc, opts app.Options) {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- app.Run(ctx, opts) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("Run() = %v; want nil after cancel", err)
			}
		case <-time.After(10 * time.Second):
			t.Error("Run did not return within 10s of cancel")
		}
	})
}
