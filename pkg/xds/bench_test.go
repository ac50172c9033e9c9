package xds_test

import (
	"fmt"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/xds/client"
)

// BenchmarkPushLatency1000Clients measures the time from a change (a new
// service in the address index, which every client receives) to its arrival
// in each of 1000 node-agent clients connected over TLS on loopback, with
// debouncing off. Reported: p50-ms and p99-ms over all clients and rounds.
func BenchmarkPushLatency1000Clients(b *testing.B) {
	const clients = 1000
	ts := startServer(b, newPKI(b), -1)

	var mu sync.Mutex
	var (
		want    string
		start   time.Time
		pending int
		done    chan struct{}
		lat     []time.Duration
	)
	onChange := func(typeURL string, updated, _ []string) {
		if typeURL != meshv1.AddressType {
			return
		}
		mu.Lock()
		defer mu.Unlock()
		if want == "" || !slices.Contains(updated, want) {
			return
		}
		lat = append(lat, time.Since(start))
		if pending--; pending == 0 {
			close(done)
		}
	}
	cs := make([]*client.Client, clients)
	for i := range clients {
		node := fmt.Sprintf("node-%d", i)
		cs[i], _ = startClient(b, ts, clientOpts{token: "node:" + node, nodeID: nodeID(node), onChange: onChange})
	}
	deadline := time.After(3 * time.Minute)
	for _, c := range cs {
		select {
		case <-c.Synced():
		case <-deadline:
			b.Fatalf("clients did not sync within 3 minutes (last error: %v)", c.LastError())
		}
	}

	round := 0
	for b.Loop() {
		round++
		svc := &meshv1.Service{Name: fmt.Sprintf("svc-%d", round), Namespace: "bench", Hostname: fmt.Sprintf("svc-%d.bench.svc.cluster.local", round), Vips: []string{"198.18.200.1"}}
		mu.Lock()
		want, pending, done, start = "bench/"+svc.Hostname, clients, make(chan struct{}), time.Now()
		ch := done
		mu.Unlock()
		if err := ts.SetService(svc); err != nil {
			b.Fatal(err)
		}
		select {
		case <-ch:
		case <-time.After(time.Minute):
			b.Fatalf("round %d: only %d of %d clients got the change within a minute", round, clients-pending, clients)
		}
	}
	b.StopTimer()
	slices.Sort(lat)
	pct := func(p float64) float64 { return float64(lat[int(p*float64(len(lat)-1))]) / float64(time.Millisecond) }
	b.ReportMetric(pct(0.50), "p50-ms")
	b.ReportMetric(pct(0.99), "p99-ms")
	b.ReportMetric(float64(clients), "clients")
}

// BenchmarkApply10kWorkloads measures meshd's cost of handing a rebuilt
// model (10k pods on 100 nodes, 1k services) to the xDS server when one pod
// changed. As pkg/controlplane's builder does, consecutive snapshots share
// the unchanged *Workload and *Service values, so only the change is
// translated, hashed and pushed.
func BenchmarkApply10kWorkloads(b *testing.B) {
	const pods, services = 10000, 1000
	var svcs []*model.Service
	for i := range services {
		svcs = append(svcs, &model.Service{
			Name: fmt.Sprintf("svc-%d", i), Namespace: "bench", Source: model.SourceKubernetes,
			Hostnames: []string{fmt.Sprintf("svc-%d.bench.svc.cluster.local", i)},
			VIPs:      []netip.Addr{netip.AddrFrom4([4]byte{198, 19, byte(i >> 8), byte(i)})},
			Ports:     []model.ServicePort{{Name: "http", Port: 80, TargetPort: 8080, Protocol: "TCP"}},
		})
	}
	pod := func(i int, ip netip.Addr) *model.Workload {
		return &model.Workload{
			UID: fmt.Sprintf("uid-%d", i), Name: fmt.Sprintf("pod-%d", i), Namespace: "bench", Node: fmt.Sprintf("node-%d", i%100),
			IPs: []netip.Addr{ip}, ServiceAccount: "default", Identity: "spiffe://cluster.local/ns/bench/sa/default", Enrolled: true, Ready: true,
			Services:           []model.ServiceBinding{{Service: model.NamespacedName{Namespace: "bench", Name: fmt.Sprintf("svc-%d", i%services)}, Hostname: fmt.Sprintf("svc-%d.bench.svc.cluster.local", i%services), Ports: map[uint32]uint32{80: 8080}}},
			PeerAuthentication: model.PeerAuthResult{Mode: model.MTLSStrict},
		}
	}
	var wls []*model.Workload
	for i := range pods {
		wls = append(wls, pod(i, netip.AddrFrom4([4]byte{198, 18, byte(i >> 8), byte(i)})))
	}
	moved := pod(42, netip.AddrFrom4([4]byte{198, 18, 255, 255}))
	snap := func(v uint64) *model.Snapshot {
		w := slices.Clone(wls)
		if v%2 == 0 {
			w[42] = moved
		}
		return model.NewSnapshot(model.SnapshotInput{Version: v, Workloads: w, Services: slices.Clone(svcs)})
	}
	ts := startServer(b, newPKI(b), 10*time.Millisecond)
	snaps := []*model.Snapshot{snap(1), snap(2)}
	if err := ts.Apply(snaps[0]); err != nil {
		b.Fatal(err)
	}
	i := 0
	for b.Loop() {
		i++
		if err := ts.Apply(snaps[i%2]); err != nil {
			b.Fatal(err)
		}
	}
}
