package app_test

import (
	"context"
	"crypto/x509"
	"fmt"
	"net"
	"net/http"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/ca"
	"github.com/meshlet/meshlet/pkg/hbone"
	"github.com/meshlet/meshlet/pkg/identity"
	"github.com/meshlet/meshlet/pkg/testutil"
	"github.com/meshlet/meshlet/waypoint/app"
)

var oldTD = spiffeid.RequireTrustDomainFromString("old.example")

// aliasSVID signs an SVID for ns/sa in trust domain old.example with the
// meshd CA's root: a workload whose certificate still names the trust
// domain the mesh moved away from.
func (m *meshd) aliasSVID(t *testing.T, ns, sa string) *identity.SVIDSource {
	t.Helper()
	old, err := ca.New(ca.Options{TrustDomain: oldTD, Keys: m.keys, Authorizer: func(context.Context, ca.Caller, spiffeid.ID) error { return nil }})
	if err != nil {
		t.Fatal(err)
	}
	id, err := identity.NewID(oldTD, ns, sa)
	if err != nil {
		t.Fatal(err)
	}
	csr, key, err := identity.NewCSR(id)
	if err != nil {
		t.Fatal(err)
	}
	chain, err := old.Sign(context.Background(), ca.Caller{}, csr, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return identity.NewSVIDSource(&x509svid.SVID{ID: id, Certificates: chain, PrivateKey: key})
}

// trustBundle is the mesh's bundle as meshd pushes it, with aliases.
func (m *meshd) trustBundle(aliases ...string) *meshv1.TrustBundle {
	b := &meshv1.TrustBundle{TrustDomain: td.Name(), Aliases: aliases}
	for _, r := range m.ca.Roots() {
		b.RootsPem = append(b.RootsPem, string(ca.EncodePEM([]*x509.Certificate{r})))
	}
	return b
}

// TestWaypointTrustDomainAliases: with the trust domain alias old.example
// pushed in the trust bundle, the waypoint serves a client whose SVID
// still names old.example, and forwards to an upstream whose HBONE server
// presents the expected identity in its old.example form; once meshd
// pushes the bundle without the alias, the alias client's established
// connection is closed (counted as peer_untrusted) and a new one refused,
// and so is the waypoint's pooled connection to the upstream: a client of
// the trust domain is still served, and no longer reaches that upstream.
func TestWaypointTrustDomainAliases(t *testing.T) {
	m := startMeshd(t)
	v1, v2 := namedBackend(t, "v1"), namedBackend(t, "v2")
	// The upstream's certificate names old.example; the model names it in
	// cluster.local.
	node := startBackendNode(t, m, m.aliasSVID(t, "app", "reviews"))
	if err := m.xds.SetWorkload(&meshv1.Workload{
		Uid: "reviews-1", Name: "reviews-1", Namespace: "app", Addresses: []string{"127.0.0.1"},
		ServiceAccount: "reviews", TrustDomain: td.Name(), Identity: spiffeid.RequireFromPath(td, "/ns/app/sa/reviews").String(),
		Waypoint: &meshv1.GatewayAddress{Namespace: wpNS, Name: wpGateway}, Enrolled: true,
	}); err != nil {
		t.Fatal(err)
	}
	if err := m.xds.SetTrustBundle(m.trustBundle(oldTD.Name())); err != nil {
		t.Fatal(err)
	}
	if err := m.xds.SetWaypointConfig(waypointConfig(t, "v1", v1, v2)); err != nil {
		t.Fatal(err)
	}
	m.xds.MarkSynced()

	hboneLn, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	reg := prometheus.NewRegistry()
	runApp(t, ctx, cancel, app.Options{
		MeshdAddress: m.addr, MeshdTLS: m.tls, Roots: m.ca.Roots(),
		Token:       func() (string, error) { return wpToken, nil },
		TrustDomain: td, Namespace: wpNS, ServiceAccount: wpSA, GatewayName: wpGateway,
		HBONE: hboneLn, UpstreamHBONEPort: node.port, Logger: quiet, Registerer: reg,
	})

	// The client's agent verifies the waypoint (cluster.local) with the
	// mesh's roots; what is tested is the waypoint's side.
	d, err := hbone.NewDialer(hbone.DialerOptions{Bundle: identity.NewBundleSource(m.ca.Bundle())})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = d.Close() })
	wpAddr := hboneLn.Addr().(*net.TCPAddr).AddrPort()
	oldClient, client := m.aliasSVID(t, "client", "curl"), m.svid(t, "client", "curl")
	request := func(svid *identity.SVIDSource) (int, string, error) {
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		return get(rctx, d, svid, wpAddr)
	}
	eventually(t, "alias client served through the alias upstream", func() error {
		code, body, err := request(oldClient)
		if err != nil {
			return err
		}
		if code != http.StatusOK || body != "v1" {
			return fmt.Errorf("GET /reviews = %d %q; want 200 v1", code, body)
		}
		return nil
	})
	wpID := spiffeid.RequireFromPath(td, "/ns/"+wpNS+"/sa/"+wpSA)
	if got := node.seen(); !slices.Contains(got, wpID) {
		t.Errorf("upstream saw peers %v; want the waypoint %s", got, wpID)
	}

	// The mesh config drops the alias: meshd pushes the bundle without it.
	// The waypoint verifies its established connections again: the alias
	// client's pooled connection is closed, as a fresh one is refused.
	if d.PooledConns() != 1 {
		t.Fatalf("the alias client pools %d connections to the waypoint; want 1", d.PooledConns())
	}
	if err := m.xds.SetTrustBundle(m.trustBundle()); err != nil {
		t.Fatal(err)
	}
	eventually(t, "the alias client's established connection closed", func() error {
		if n := d.PooledConns(); n != 0 {
			return fmt.Errorf("the alias client still pools %d connections to the waypoint", n)
		}
		return nil
	})
	// Reverify counts the connections it closed once they are closed: the
	// count may lag the client's view.
	eventually(t, "the alias client's connection counted", func() error {
		if closed := testutil.MetricSum(t, reg, "meshlet_waypoint_hbone_connections_refused_total", map[string]string{"reason": hbone.RefusedUntrusted}); closed != 1 {
			return fmt.Errorf("meshlet_waypoint_hbone_connections_refused_total{reason=%q} = %v; want 1, the alias client's connection", hbone.RefusedUntrusted, closed)
		}
		return nil
	})
	fresh := func(svid *identity.SVIDSource) (int, error) {
		fd, err := hbone.NewDialer(hbone.DialerOptions{Bundle: identity.NewBundleSource(m.ca.Bundle())})
		if err != nil {
			t.Fatal(err)
		}
		defer fd.Close()
		rctx, rcancel := context.WithTimeout(ctx, 5*time.Second)
		defer rcancel()
		code, _, err := get(rctx, fd, svid, wpAddr)
		return code, err
	}
	eventually(t, "alias client refused", func() error {
		if code, err := fresh(oldClient); err == nil {
			return fmt.Errorf("alias client got %d; want its handshake refused", code)
		}
		return nil
	})
	// The client learns of the refusal from the handshake's alert, which the
	// waypoint sends before it counts the refusal: the count may lag.
	eventually(t, "the alias client's refusals counted", func() error {
		if refused := testutil.MetricSum(t, reg, "meshlet_waypoint_hbone_connections_refused_total", map[string]string{"reason": "peer_unverified"}); refused < 1 {
			return fmt.Errorf("meshlet_waypoint_hbone_connections_refused_total{reason=\"peer_unverified\"} = %v; want the alias client's refusals counted", refused)
		}
		return nil
	})
	// The upstream presents the identity only in the alias's form: the
	// waypoint's pooled connection to it was closed too, and a new one is
	// refused.
	if code, err := fresh(client); err != nil || code != http.StatusServiceUnavailable {
		t.Errorf("client of the trust domain after the alias went: %d, %v; want 503, its upstream no longer trusted", code, err)
	}
}
