package mesh

import (
	"context"
	"net/netip"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/node-agent/proxy"
	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/xds"
	"github.com/meshlet/meshlet/pkg/xds/client"
	"github.com/meshlet/meshlet/pkg/xds/modelview"
)

// store holds resources as an xDS client's store does, by type URL and by
// the names meshd gives them.
type store map[string]map[string]client.Resource

func (s store) List(typeURL string) map[string]client.Resource { return s[typeURL] }

func storeOf(t *testing.T, res map[string][]proto.Message) store {
	s := store{}
	for typeURL, msgs := range res {
		s[typeURL] = map[string]client.Resource{}
		for _, m := range msgs {
			var name string
			switch m := m.(type) {
			case *meshv1.Address:
				if svc := m.GetService(); svc != nil {
					name = xds.ServiceKey(svc)
				} else {
					name = m.GetWorkload().GetUid()
				}
			case *meshv1.Workload:
				name = m.GetUid()
			case *meshv1.PeerAuthentication:
				name = m.GetWorkloadUid()
			case *meshv1.Authorization:
				name = m.GetNamespace() + "/" + m.GetName()
			default:
				t.Fatalf("no resource name for %T", m)
			}
			s[typeURL][name] = client.Resource{Message: m}
		}
	}
	return s
}

// TestModelFromResources feeds what meshd pushes to a node agent through
// the conversion the agent uses (pkg/xds/modelview) and asks the resulting
// Mesh the proxies' questions.
func TestModelFromResources(t *testing.T) {
	dbPorts := map[string]*meshv1.PortList{"shop/db.shop.svc.cluster.local": {Ports: []*meshv1.Port{{ServicePort: 80, TargetPort: 8080}}}}
	res := map[string][]proto.Message{
		meshv1.AddressType: {
			&meshv1.Address{Type: &meshv1.Address_Workload{Workload: &meshv1.WorkloadAddress{
				Uid: "uid-cart", Name: "cart-0", Namespace: "shop", Addresses: []string{"198.19.3.50"}, Identity: idCart, Enrolled: true, CanonicalName: "cart"}}},
			&meshv1.Address{Type: &meshv1.Address_Workload{Workload: &meshv1.WorkloadAddress{
				Uid: "uid-db", Name: "db-0", Namespace: "shop", Addresses: []string{"198.19.3.51"}, Identity: idDB, Enrolled: true, CanonicalName: "db", Services: dbPorts}}},
			// A second db pod on another node that is not ready: no endpoint.
			&meshv1.Address{Type: &meshv1.Address_Workload{Workload: &meshv1.WorkloadAddress{
				Uid: "uid-db-1", Name: "db-1", Namespace: "shop", Addresses: []string{"198.19.3.52"}, Identity: idDB, Enrolled: true, CanonicalName: "db", Services: dbPorts,
				Status: meshv1.WorkloadStatus_UNHEALTHY}}},
			// A pod on another node with a workload waypoint.
			&meshv1.Address{Type: &meshv1.Address_Workload{Workload: &meshv1.WorkloadAddress{
				Uid: "uid-pay", Name: "pay-0", Namespace: "shop", Addresses: []string{"198.19.3.60"}, Identity: idDB, Enrolled: true, CanonicalName: "pay",
				Waypoint: &meshv1.GatewayAddress{Namespace: "shop", Name: "pay-waypoint", Address: "198.19.3.201", HbonePort: 15008, Identity: idWP, WaypointFor: "workload"}}}},
			&meshv1.Address{Type: &meshv1.Address_Service{Service: &meshv1.Service{
				Name: "db", Namespace: "shop", Hostname: "db.shop.svc.cluster.local", Vips: []string{"198.19.3.100"},
				Ports: []*meshv1.ServicePort{{Port: 80, TargetPort: 8080}}}}},
			&meshv1.Address{Type: &meshv1.Address_Service{Service: &meshv1.Service{
				Name: "private", Namespace: "shop", Hostname: "private.shop.svc.cluster.local", Vips: []string{"198.19.3.103"}, ExportTo: []string{"."}}}},
			&meshv1.Address{Type: &meshv1.Address_Service{Service: &meshv1.Service{
				Name: "reviews", Namespace: "shop", Hostname: "reviews.shop.svc.cluster.local", Vips: []string{"198.19.3.102"},
				Waypoint: &meshv1.GatewayAddress{Namespace: "shop", Name: "waypoint", Address: "198.19.3.200", HbonePort: 15008, Identity: idWP, WaypointFor: "service"}}}},
		},
		meshv1.WorkloadType: {
			&meshv1.Workload{Uid: "uid-cart", Name: "cart-0", Namespace: "shop", Addresses: []string{"198.19.3.50"}, ServiceAccount: "cart", Identity: idCart, Enrolled: true},
		},
		meshv1.PeerAuthenticationType: {
			&meshv1.PeerAuthentication{WorkloadUid: "uid-cart", Mode: meshv1.PeerAuthentication_STRICT,
				PortModes: map[uint32]meshv1.PeerAuthentication_Mode{8081: meshv1.PeerAuthentication_PERMISSIVE}},
		},
		meshv1.AuthorizationType: {
			&meshv1.Authorization{Name: "allow-db", Namespace: "shop", Scope: meshv1.Authorization_WORKLOAD, WorkloadUids: []string{"uid-cart"},
				Action: meshv1.Authorization_ALLOW, Rules: []*meshv1.Rule{{From: []*meshv1.SourceMatch{{Principals: []string{"cluster.local/ns/shop/sa/db"}}}}}},
			&meshv1.Authorization{Name: "deny-ip", Namespace: "shop", Scope: meshv1.Authorization_NAMESPACE,
				Action: meshv1.Authorization_DENY, Rules: []*meshv1.Rule{{From: []*meshv1.SourceMatch{{IpBlocks: []string{"198.19.3.66/32"}}}}}},
			&meshv1.Authorization{Name: "deny-db-7070", Namespace: "shop", Scope: meshv1.Authorization_NAMESPACE,
				Action: meshv1.Authorization_DENY, Rules: []*meshv1.Rule{{To: []*meshv1.DestinationMatch{{Ports: []uint32{7070}, IpBlocks: []string{"198.19.3.51/32"}}}}}},
			&meshv1.Authorization{Name: "deny-9000", Namespace: "istio-system", Scope: meshv1.Authorization_MESH,
				Action: meshv1.Authorization_DENY, Rules: []*meshv1.Rule{{To: []*meshv1.DestinationMatch{{Ports: []uint32{9000}}}}}},
		},
	}
	s := modelview.BuildIn("cluster.local", storeOf(t, res), 1)
	m := New(Options{Snapshot: func() *model.Snapshot { return s }})
	if _, ok := m.LookupHost("shop", "private.shop.svc.cluster.local"); !ok {
		t.Error("a service exported to its own namespace is not answered there")
	}
	if _, ok := m.LookupHost("billing", "private.shop.svc.cluster.local"); ok {
		t.Error("a service exported to its own namespace is answered in another (exportTo lost on the way)")
	}

	for _, tt := range []struct {
		dst, wantVia, wantTarget, wantID string
	}{
		{"198.19.3.51:8080", "198.19.3.51:15008", "198.19.3.51:8080", idDB},
		{"198.19.3.100:80", "198.19.3.51:15008", "198.19.3.51:8080", idDB},
		{"198.19.3.102:9080", "198.19.3.200:15008", "198.19.3.102:9080", idWP},
		// The remote pod's own waypoint is known from the address index.
		{"198.19.3.60:8080", "198.19.3.201:15008", "198.19.3.60:8080", idWP},
	} {
		d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort(tt.dst))
		if !ok || d.Via.String() != tt.wantVia || d.Target.String() != tt.wantTarget || d.Identity != tt.wantID {
			t.Errorf("Resolve(%s) = %+v, %v; want via %s target %s identity %s", tt.dst, d, ok, tt.wantVia, tt.wantTarget, tt.wantID)
		}
	}
	// The service VIP only ever goes to the ready pod.
	for range 8 {
		if d, ok := m.Resolve(proxy.Pod{}, netip.MustParseAddrPort("198.19.3.100:80")); !ok || d.Target.String() != "198.19.3.51:8080" {
			t.Fatalf("Resolve(db VIP) = %+v, %v; want the ready pod 198.19.3.51:8080 every time (db-1 is not ready)", d, ok)
		}
	}
	if got := m.PeerAuth(proxy.Pod{UID: "uid-cart"}, 8080); got != proxy.ModeStrict {
		t.Errorf("PeerAuth(cart, 8080) = %v; want STRICT", got)
	}
	if got := m.PeerAuth(proxy.Pod{UID: "uid-cart"}, 8081); got != proxy.ModePermissive {
		t.Errorf("PeerAuth(cart, 8081) = %v; want PERMISSIVE (port override)", got)
	}
	cart := proxy.Pod{UID: "uid-cart", IPs: []netip.Addr{ip("198.19.3.50")}}
	db := proxy.Pod{UID: "uid-db", IPs: []netip.Addr{ip("198.19.3.51")}}
	for _, tt := range []struct {
		name      string
		pod       proxy.Pod
		principal string
		src       string
		port      uint16
		want      bool
	}{
		{"workload ALLOW matches", cart, idDB, "198.19.3.51", 8080, true},
		{"workload ALLOW other principal", cart, idBad, "198.19.3.51", 8080, false},
		{"namespace DENY wins", cart, idDB, "198.19.3.66", 8080, false},
		{"namespace DENY on another workload", db, idBad, "198.19.3.66", 8080, false},
		{"no ALLOW on db", db, idBad, "198.19.3.50", 8080, true},
		{"mesh DENY port", db, idCart, "198.19.3.50", 9000, false},
		{"DENY to destination IP", db, idCart, "198.19.3.50", 7070, false},
		{"DENY to another destination IP", cart, idDB, "198.19.3.51", 7070, true},
	} {
		d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: tt.pod, Principal: tt.principal, Source: ip(tt.src), Port: tt.port})
		if d.Allow != tt.want {
			t.Errorf("%s: Authorize = %+v; want allow=%v", tt.name, d, tt.want)
		}
	}
	if w, _ := s.Workload("uid-cart"); w.ServiceAccount != "cart" {
		t.Errorf("cart's service account = %q; want cart (from the Workload resource)", w.ServiceAccount)
	}
}

// TestDecisionsWaitForTrailingConfig: meshd's types come in separate
// responses, so a local pod's address can arrive before its full resource,
// and its full resource before its PeerAuthentication or a policy it names.
// Inbound decisions for the pod wait for all of it.
func TestDecisionsWaitForTrailingConfig(t *testing.T) {
	cartAddr := &meshv1.Address{Type: &meshv1.Address_Workload{Workload: &meshv1.WorkloadAddress{
		Uid: "uid-cart", Name: "cart-0", Namespace: "shop", Addresses: []string{"198.19.3.50"}, Identity: idCart, Enrolled: true}}}
	cartFull := &meshv1.Workload{Uid: "uid-cart", Name: "cart-0", Namespace: "shop", Addresses: []string{"198.19.3.50"}, ServiceAccount: "cart",
		Identity: idCart, Enrolled: true, AuthorizationPolicies: []string{"shop/deny-intruder"}}
	pa := &meshv1.PeerAuthentication{WorkloadUid: "uid-cart", Mode: meshv1.PeerAuthentication_PERMISSIVE}
	deny := &meshv1.Authorization{Name: "deny-intruder", Namespace: "shop", Scope: meshv1.Authorization_WORKLOAD, WorkloadUids: []string{"uid-cart"},
		Action: meshv1.Authorization_DENY, Rules: []*meshv1.Rule{{From: []*meshv1.SourceMatch{{Principals: []string{"cluster.local/ns/other/sa/intruder"}}}}}}
	stages := []map[string][]proto.Message{
		{meshv1.AddressType: {cartAddr}},
		{meshv1.AddressType: {cartAddr}, meshv1.WorkloadType: {cartFull}},
		{meshv1.AddressType: {cartAddr}, meshv1.WorkloadType: {cartFull}, meshv1.PeerAuthenticationType: {pa}},
		{meshv1.AddressType: {cartAddr}, meshv1.WorkloadType: {cartFull}, meshv1.PeerAuthenticationType: {pa}, meshv1.AuthorizationType: {deny}},
	}
	st := NewStore()
	m := New(Options{Snapshot: st.Load, Changed: st.Changed, Wait: 10 * time.Second})
	st.Set(modelview.BuildIn("cluster.local", storeOf(t, stages[0]), 1))
	go func() {
		for i, res := range stages[1:] {
			time.Sleep(30 * time.Millisecond)
			st.Set(modelview.BuildIn("cluster.local", storeOf(t, res), uint64(i+2)))
		}
	}()
	cart := proxy.Pod{UID: "uid-cart", IPs: []netip.Addr{ip("198.19.3.50")}}
	if d := m.Authorize(context.Background(), proxy.AuthzRequest{Pod: cart, Principal: idBad, Source: ip("198.19.3.66"), Port: 8080}); d.Allow {
		t.Errorf("decided before the pod's DENY policy arrived: %+v; want the DENY (the decision waits for it)", d)
	}
}
