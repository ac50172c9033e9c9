package mesh

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/meshlet/meshlet/node-agent/proxy"
	"github.com/meshlet/meshlet/pkg/model"
)

// affinitySnapshot is a service api (VIP 198.19.5.100:80, round robin) with
// the given session affinity and ready endpoints e0..e2 (those not in
// notReady), and two client pods.
func affinitySnapshot(timeout time.Duration, notReady ...int) *model.Snapshot {
	ws := []*model.Workload{
		{UID: "uid-a", Kind: model.KindPod, Name: "a", Namespace: "shop", IPs: []netip.Addr{ip("198.19.5.1")}, Identity: idCart, Enrolled: true, Ready: true},
		{UID: "uid-b", Kind: model.KindPod, Name: "b", Namespace: "shop", IPs: []netip.Addr{ip("198.19.5.2")}, Identity: idCart, Enrolled: true, Ready: true},
	}
	svc := &model.Service{Name: "api", Namespace: "shop", Hostnames: []string{"api.shop.svc.cluster.local"},
		VIPs: []netip.Addr{ip("198.19.5.100")}, Ports: []model.ServicePort{{Port: 80, TargetPort: 8080, Protocol: "TCP"}},
		LoadBalancing: model.LBRoundRobin, SessionAffinity: timeout}
	for i := range 3 {
		ready := true
		for _, n := range notReady {
			ready = ready && n != i
		}
		a := netip.AddrFrom4([4]byte{198, 19, 5, byte(10 + i)})
		ws = append(ws, &model.Workload{UID: fmt.Sprintf("uid-e%d", i), Kind: model.KindPod, Name: fmt.Sprintf("e%d", i), Namespace: "shop",
			IPs: []netip.Addr{a}, Identity: idDB, Enrolled: true, Ready: ready})
		svc.Endpoints = append(svc.Endpoints, model.Endpoint{WorkloadUID: fmt.Sprintf("uid-e%d", i), Addresses: []netip.Addr{a},
			Ports: map[uint32]uint32{80: 8080}, Ready: ready})
	}
	return model.NewSnapshot(model.SnapshotInput{Workloads: ws, Services: []*model.Service{svc}})
}

func TestResolveSessionAffinity(t *testing.T) {
	vip := netip.MustParseAddrPort("198.19.5.100:80")
	endpoint := func(t *testing.T, m *Mesh, client string) string {
		t.Helper()
		d, ok := m.Resolve(proxy.Pod{UID: client}, vip)
		if !ok {
			t.Fatalf("Resolve(%s) = %+v; want an endpoint", client, d)
		}
		return fmt.Sprintf("e%d", d.Target.Addr().As4()[3]-10)
	}

	t.Run("without affinity a client goes round the endpoints", func(t *testing.T) {
		s := affinitySnapshot(0)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		seen := map[string]bool{}
		for range 3 {
			seen[endpoint(t, m, "uid-a")] = true
		}
		if len(seen) != 3 {
			t.Errorf("3 connections went to %v; want all three endpoints", seen)
		}
	})

	t.Run("a client keeps its endpoint, renewed by each connection, until the timeout", func(t *testing.T) {
		s := affinitySnapshot(10 * time.Second)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		clock := time.Unix(1_000_000, 0)
		m.now = func() time.Time { return clock }

		first := endpoint(t, m, "uid-a") // e0: the round robin's first
		for i := range 5 {
			clock = clock.Add(8 * time.Second) // within the timeout of the last one: renewed each time
			if got := endpoint(t, m, "uid-a"); got != first {
				t.Fatalf("connection %d of client a went to %s; want %s (its affinity)", i+2, got, first)
			}
		}
		other := endpoint(t, m, "uid-b") // a client of its own: the next endpoint
		if other == first {
			t.Fatalf("client b went to %s, a's endpoint; want the round robin's next", other)
		}
		if got := endpoint(t, m, "uid-b"); got != other {
			t.Fatalf("client b's second connection went to %s; want %s", got, other)
		}
		clock = clock.Add(11 * time.Second) // a's affinity runs out
		if got := endpoint(t, m, "uid-a"); got == first {
			t.Fatalf("client a after its timeout went to %s again; want the round robin's next", got)
		}
	})

	t.Run("an endpoint that is no longer ready loses its clients to another, which they keep", func(t *testing.T) {
		s := affinitySnapshot(time.Hour)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		first := endpoint(t, m, "uid-a")
		s = affinitySnapshot(time.Hour, int(first[1]-'0'))
		moved := endpoint(t, m, "uid-a")
		if moved == first {
			t.Fatalf("client a still went to %s after it became unready", moved)
		}
		for range 3 {
			if got := endpoint(t, m, "uid-a"); got != moved {
				t.Fatalf("client a went to %s; want %s, its new affinity", got, moved)
			}
		}
		s = affinitySnapshot(time.Hour) // back: the client stays where it is
		if got := endpoint(t, m, "uid-a"); got != moved {
			t.Fatalf("client a went to %s when %s came back; want %s", got, first, moved)
		}
	})

	t.Run("a pod that leaves the mesh is forgotten", func(t *testing.T) {
		s := affinitySnapshot(time.Hour)
		m := New(Options{Snapshot: func() *model.Snapshot { return s }})
		endpoint(t, m, "uid-a")
		endpoint(t, m, "uid-b")
		m.Forget(proxy.Pod{UID: "uid-a"})
		if _, ok := m.sticky.m[affinityKey{"uid-a", vip}]; ok {
			t.Errorf("client a's affinity kept after Forget")
		}
		if _, ok := m.sticky.m[affinityKey{"uid-b", vip}]; !ok {
			t.Errorf("client b's affinity dropped with a's")
		}
	})
}

func TestAffinitiesBound(t *testing.T) {
	var a affinities
	now := time.Unix(1_000_000, 0)
	ep := netip.MustParseAddrPort("198.19.5.10:8080")
	svc := netip.MustParseAddrPort("198.19.5.100:80")
	for i := range maxAffinities {
		a.put(affinityKey{fmt.Sprint(i), svc}, ep, now, time.Hour)
	}
	a.put(affinityKey{"late", svc}, ep, now, time.Hour)
	if _, ok := a.get(affinityKey{"late", svc}, now, time.Hour); ok {
		t.Fatalf("a client beyond %d live entries was remembered", maxAffinities)
	}
	if _, ok := a.get(affinityKey{"0", svc}, now, time.Hour); !ok {
		t.Fatalf("an earlier live entry was dropped at the bound")
	}
	later := now.Add(2 * time.Hour) // every entry expired
	a.put(affinityKey{"late", svc}, ep, later, time.Hour)
	if _, ok := a.get(affinityKey{"late", svc}, later, time.Hour); !ok {
		t.Fatalf("a new client was not remembered once the others expired")
	}
	if n := len(a.m); n != 1 {
		t.Errorf("%d entries after the sweep; want 1", n)
	}
}
