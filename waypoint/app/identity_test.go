package app

import (
	"fmt"
	"net"
	"net/netip"
	"reflect"
	"strings"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/hbone"
	"github.com/meshlet/meshlet/pkg/identity"
	xdsclient "github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/waypoint"
)

var meshTD = spiffeid.RequireTrustDomainFromString("cluster.local")

// workloadResources are pushed WorkloadType resources, by name, as the xDS
// client lists them.
func workloadResources(ws map[string]*meshv1.Workload) map[string]xdsclient.Resource {
	out := map[string]xdsclient.Resource{}
	for name, w := range ws {
		out[name] = xdsclient.Resource{Version: "1", Message: w}
	}
	return out
}

// addressResources are pushed AddressType resources of workloads, by name.
func addressResources(ws map[string]*meshv1.WorkloadAddress) map[string]xdsclient.Resource {
	out := map[string]xdsclient.Resource{}
	for name, w := range ws {
		out[name] = xdsclient.Resource{Version: "1", Message: &meshv1.Address{Type: &meshv1.Address_Workload{Workload: w}}}
	}
	return out
}

// push indexes the resources as indexIdentities does after a push
// (without the xDS client it lists them from).
func push(s *state, workloads, addresses map[string]xdsclient.Resource) {
	idx := identityIndex(s.opts.TrustDomain, workloads, addresses)
	s.idents.Store(&idx)
}

// TestIdentityOf: the identity expected of an upstream address is the
// enrolled workload's that holds it — a workload this waypoint serves (its
// Identity, else trust domain, namespace and service account) before the
// mesh-wide address resources — and follows each push: an update replaces
// it, a removed or unenrolled workload's address is no workload's. A bad
// identity fails that address only.
func TestIdentityOf(t *testing.T) {
	s := &state{opts: Options{TrustDomain: meshTD}}
	if id, inMesh, err := s.identityOf(netip.MustParseAddr("10.0.0.1")); inMesh || err != nil {
		t.Fatalf("identityOf before any push = %v, %v, %v; want not in the mesh", id, inMesh, err)
	}

	type lookup struct {
		ip      string
		want    string // "" for not in the mesh
		wantErr string // a part of the error; "" for none
	}
	tests := []struct {
		name      string
		workloads map[string]*meshv1.Workload
		addresses map[string]*meshv1.WorkloadAddress
		lookups   []lookup
	}{
		{
			name: "first push",
			workloads: map[string]*meshv1.Workload{
				"app/reviews-1": &meshv1.Workload{Name: "reviews-1", Namespace: "app", Addresses: []string{"10.0.0.1", "fd00::1"},
					Identity: "spiffe://cluster.local/ns/app/sa/reviews", Enrolled: true},
				"app/ratings-1": &meshv1.Workload{Name: "ratings-1", Namespace: "app", Addresses: []string{"10.0.0.2"},
					ServiceAccount: "ratings", Enrolled: true},
				"app/partner-1": &meshv1.Workload{Name: "partner-1", Namespace: "app", Addresses: []string{"10.0.0.3"},
					ServiceAccount: "partner", TrustDomain: "partner.example", Enrolled: true},
				"app/legacy-1": &meshv1.Workload{Name: "legacy-1", Namespace: "app", Addresses: []string{"10.0.0.4"},
					ServiceAccount: "legacy", Enrolled: false},
				"app/broken-1": &meshv1.Workload{Name: "broken-1", Namespace: "app", Addresses: []string{"10.0.0.5"},
					Identity: "not a spiffe id", Enrolled: true},
				// Holds 10.0.0.6, which the address resources give another identity.
				"app/details-1": &meshv1.Workload{Name: "details-1", Namespace: "app", Addresses: []string{"10.0.0.6"},
					ServiceAccount: "details", Enrolled: true},
			},
			addresses: map[string]*meshv1.WorkloadAddress{
				"shop/cart-1": &meshv1.WorkloadAddress{Name: "cart-1", Namespace: "shop", Addresses: []string{"10.0.1.1"},
					Identity: "spiffe://cluster.local/ns/shop/sa/cart", Enrolled: true},
				"app/details-1": &meshv1.WorkloadAddress{Name: "details-1", Namespace: "app", Addresses: []string{"10.0.0.6"},
					Identity: "spiffe://cluster.local/ns/app/sa/impostor", Enrolled: true},
				"shop/plain-1": &meshv1.WorkloadAddress{Name: "plain-1", Namespace: "shop", Addresses: []string{"10.0.1.2"},
					Identity: "spiffe://cluster.local/ns/shop/sa/plain", Enrolled: false},
				"shop/broken-2": &meshv1.WorkloadAddress{Name: "broken-2", Namespace: "shop", Addresses: []string{"10.0.1.3"},
					Identity: "", Enrolled: true},
			},
			lookups: []lookup{
				{ip: "10.0.0.1", want: "spiffe://cluster.local/ns/app/sa/reviews"},
				{ip: "fd00::1", want: "spiffe://cluster.local/ns/app/sa/reviews"},
				{ip: "10.0.0.2", want: "spiffe://cluster.local/ns/app/sa/ratings"},
				{ip: "10.0.0.3", want: "spiffe://partner.example/ns/app/sa/partner"},
				{ip: "10.0.0.4"}, // not enrolled
				{ip: "10.0.0.5", wantErr: `workload app/broken-1 has a bad identity "not a spiffe id"`},
				{ip: "10.0.0.6", want: "spiffe://cluster.local/ns/app/sa/details"}, // WorkloadType first
				{ip: "10.0.1.1", want: "spiffe://cluster.local/ns/shop/sa/cart"},
				{ip: "10.0.1.2"}, // not enrolled
				{ip: "10.0.1.3", wantErr: `workload shop/broken-2 has a bad identity ""`},
				{ip: "10.0.9.9"},
				{ip: "::ffff:10.0.0.1"}, // looked up as dialled, as the scan compared
			},
		},
		{
			name: "update, removal, unenrollment",
			workloads: map[string]*meshv1.Workload{
				// reviews-1 now runs as another service account.
				"app/reviews-1": &meshv1.Workload{Name: "reviews-1", Namespace: "app", Addresses: []string{"10.0.0.1", "fd00::1"},
					Identity: "spiffe://cluster.local/ns/app/sa/reviews-v2", Enrolled: true},
				// ratings-1 left the mesh; partner-1, broken-1, details-1 are gone.
				"app/ratings-1": &meshv1.Workload{Name: "ratings-1", Namespace: "app", Addresses: []string{"10.0.0.2"},
					ServiceAccount: "ratings", Enrolled: false},
				// legacy-1 joined it.
				"app/legacy-1": &meshv1.Workload{Name: "legacy-1", Namespace: "app", Addresses: []string{"10.0.0.4"},
					ServiceAccount: "legacy", Enrolled: true},
			},
			addresses: map[string]*meshv1.WorkloadAddress{
				"app/details-1": &meshv1.WorkloadAddress{Name: "details-1", Namespace: "app", Addresses: []string{"10.0.0.6"},
					Identity: "spiffe://cluster.local/ns/app/sa/details", Enrolled: true},
			},
			lookups: []lookup{
				{ip: "10.0.0.1", want: "spiffe://cluster.local/ns/app/sa/reviews-v2"},
				{ip: "fd00::1", want: "spiffe://cluster.local/ns/app/sa/reviews-v2"},
				{ip: "10.0.0.2"},
				{ip: "10.0.0.3"},
				{ip: "10.0.0.4", want: "spiffe://cluster.local/ns/app/sa/legacy"},
				{ip: "10.0.0.5"},
				{ip: "10.0.0.6", want: "spiffe://cluster.local/ns/app/sa/details"}, // from the address resources now
				{ip: "10.0.1.1"},
			},
		},
		{
			name: "everything removed",
			lookups: []lookup{
				{ip: "10.0.0.1"},
				{ip: "10.0.0.6"},
			},
		},
	}
	for _, tt := range tests {
		push(s, workloadResources(tt.workloads), addressResources(tt.addresses))
		for _, l := range tt.lookups {
			id, inMesh, err := s.identityOf(netip.MustParseAddr(l.ip))
			switch {
			case l.wantErr != "":
				if !inMesh || err == nil || !strings.Contains(err.Error(), l.wantErr) {
					t.Errorf("%s: identityOf(%s) = %v, %v, %v; want in the mesh with an error containing %q", tt.name, l.ip, id, inMesh, err, l.wantErr)
				}
			case l.want == "":
				if inMesh || err != nil {
					t.Errorf("%s: identityOf(%s) = %v, %v, %v; want no workload of the mesh", tt.name, l.ip, id, inMesh, err)
				}
			default:
				if !inMesh || err != nil || id.String() != l.want {
					t.Errorf("%s: identityOf(%s) = %v, %v, %v; want %s", tt.name, l.ip, id, inMesh, err, l.want)
				}
			}
		}
	}
}

// TestIdentityIndexFirstByName: of two workloads of one type holding an
// address, the first by name gives its identity, whatever order the map of
// resources iterates in.
func TestIdentityIndexFirstByName(t *testing.T) {
	workloads := workloadResources(map[string]*meshv1.Workload{
		"app/b": &meshv1.Workload{Namespace: "app", Addresses: []string{"10.0.0.1"}, ServiceAccount: "b", Enrolled: true},
		"app/a": &meshv1.Workload{Namespace: "app", Addresses: []string{"10.0.0.1"}, ServiceAccount: "a", Enrolled: true},
		"app/c": &meshv1.Workload{Namespace: "app", Addresses: []string{"10.0.0.1"}, ServiceAccount: "c", Enrolled: true},
	})
	for range 20 {
		u := identityIndex(meshTD, workloads, nil)[netip.MustParseAddr("10.0.0.1")]
		if got, want := u.id.String(), "spiffe://cluster.local/ns/app/sa/a"; got != want || u.err != nil {
			t.Fatalf("identity of 10.0.0.1 = %s, %v; want %s (app/a, first by name)", got, u.err, want)
		}
	}
}

// BenchmarkIdentityOf: the lookup on each new upstream connection does not
// grow with the number of workloads pushed.
func BenchmarkIdentityOf(b *testing.B) {
	for _, n := range []int{100, 10000} {
		b.Run(fmt.Sprintf("workloads=%d", n), func(b *testing.B) {
			workloads := map[string]xdsclient.Resource{}
			for i := range n {
				name := fmt.Sprintf("app/w-%d", i)
				workloads[name] = xdsclient.Resource{Message: &meshv1.Workload{Name: name, Namespace: "app",
					Addresses:      []string{netip.AddrFrom4([4]byte{10, byte(i >> 16), byte(i >> 8), byte(i)}).String()},
					ServiceAccount: fmt.Sprintf("sa-%d", i), Enrolled: true}}
			}
			s := &state{opts: Options{TrustDomain: meshTD}}
			push(s, workloads, nil)
			last := netip.AddrFrom4([4]byte{10, byte((n - 1) >> 16), byte((n - 1) >> 8), byte(n - 1)})
			b.ReportAllocs()
			for b.Loop() {
				if _, inMesh, err := s.identityOf(last); !inMesh || err != nil {
					b.Fatalf("identityOf(%s) = %v, %v; want a workload", last, inMesh, err)
				}
			}
		})
	}
}

// TestConnPeerMemo: an HBONE stream's peer (identity, namespace, original
// destination and its service) is worked out once per stream, not per
// request, and again when the service VIP index changes.
func TestConnPeerMemo(t *testing.T) {
	s := &state{opts: Options{TrustDomain: meshTD}}
	target := netip.MustParseAddrPort("10.96.0.10:8080")
	s.vips.Store(&map[netip.Addr]vipService{target.Addr(): {hostname: "cart.shop.svc.cluster.local"}})
	req := &hbone.Request{Peer: spiffeid.RequireFromString("spiffe://cluster.local/ns/shop/sa/web"), Target: target}
	c := waypoint.NewStreamConn(nil, net.TCPAddrFromAddrPort(target), &net.TCPAddr{IP: net.IPv4(10, 244, 1, 5), Port: 43210}, req)
	want := waypoint.Peer{IP: netip.MustParseAddr("10.244.1.5"), Principal: "spiffe://cluster.local/ns/shop/sa/web", Namespace: "shop",
		DestinationIP: target.Addr(), DestinationPort: 8080, DestinationService: "cart.shop.svc.cluster.local"}
	if got := s.connPeer(c); !reflect.DeepEqual(got, want) {
		t.Fatalf("connPeer = %+v; want %+v", got, want)
	}
	if n := testing.AllocsPerRun(100, func() { s.connPeer(c) }); n != 0 {
		t.Errorf("connPeer on the stream's next requests: %v allocations; want none (kept with the stream)", n)
	}
	s.vips.Store(&map[netip.Addr]vipService{target.Addr(): {hostname: "cart-v2.shop.svc.cluster.local"}})
	if got := s.connPeer(c).DestinationService; got != "cart-v2.shop.svc.cluster.local" {
		t.Errorf("after a new VIP index: destination service %q; want cart-v2.shop.svc.cluster.local", got)
	}
}

// TestConnPeerSource: a client workload's name and labels (what the
// waypoint's metrics report as source_* and its routes' sourceLabels
// match) come from the address resources, for an HBONE peer that presents
// that workload's identity only: another identity from the same address
// gets none of it.
func TestConnPeerSource(t *testing.T) {
	s := &state{opts: Options{TrustDomain: meshTD}}
	target := netip.MustParseAddrPort("10.96.0.10:8080")
	web := "spiffe://cluster.local/ns/shop/sa/web"
	_, srcs := addressIndexes(addressResources(map[string]*meshv1.WorkloadAddress{"uid-web": {
		Name: "web-5d4f-abcde", Namespace: "shop", Addresses: []string{"10.244.1.5"}, Identity: web, WorkloadName: "web",
		CanonicalName: "web", CanonicalRevision: "v2", Labels: map[string]string{"app": "web", "version": "v2", "team": "blue"},
	}}))
	s.sources.Store(&srcs)
	stream := func(peer string) *waypoint.StreamConn {
		req := &hbone.Request{Peer: spiffeid.RequireFromString(peer), Target: target}
		return waypoint.NewStreamConn(nil, net.TCPAddrFromAddrPort(target), &net.TCPAddr{IP: net.IPv4(10, 244, 1, 5), Port: 43210}, req)
	}
	got := s.connPeer(stream(web))
	wantLabels := map[string]string{"app": "web", "version": "v2", "team": "blue",
		"service.istio.io/canonical-name": "web", "service.istio.io/canonical-revision": "v2"}
	if got.Workload != "web" || !reflect.DeepEqual(got.Labels, wantLabels) {
		t.Errorf("client web: workload %q, labels %v; want web, %v", got.Workload, got.Labels, wantLabels)
	}
	if got := s.connPeer(stream("spiffe://cluster.local/ns/shop/sa/other")); got.Workload != "" || got.Labels != nil {
		t.Errorf("another identity from web's address: workload %q, labels %v; want none", got.Workload, got.Labels)
	}
	// web with a certificate still in the trust domain alias old.example
	// is web, and presents itself as it is.
	s.bundle = identity.NewBundleSource()
	s.bundle.SetAliases(meshTD, []spiffeid.TrustDomain{spiffeid.RequireTrustDomainFromString("old.example")})
	if got := s.connPeer(stream("spiffe://old.example/ns/shop/sa/web")); got.Workload != "web" || got.Principal != "spiffe://old.example/ns/shop/sa/web" {
		t.Errorf("web in the alias trust domain: workload %q, principal %q; want web, as presented", got.Workload, got.Principal)
	}
	if got := s.connPeer(stream("spiffe://elsewhere.example/ns/shop/sa/web")); got.Workload != "" {
		t.Errorf("web's path in a trust domain that is no alias: workload %q; want none", got.Workload)
	}
	c := stream(web)
	s.connPeer(c)
	_, next := addressIndexes(addressResources(map[string]*meshv1.WorkloadAddress{"uid-web": {
		Addresses: []string{"10.244.1.5"}, Identity: web, WorkloadName: "web", Labels: map[string]string{"version": "v3"}}}))
	s.sources.Store(&next)
	if got := s.connPeer(c).Labels["version"]; got != "v3" {
		t.Errorf("after a new source index: version %q; want v3", got)
	}
}
