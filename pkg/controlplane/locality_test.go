package controlplane

import (
	"testing"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
)

const zonedNodes = `apiVersion: v1
kind: Node
metadata: {name: n1, labels: {topology.kubernetes.io/region: west, topology.kubernetes.io/zone: west-a}}
---
apiVersion: v1
kind: Node
metadata: {name: n2, labels: {topology.kubernetes.io/region: west, topology.kubernetes.io/zone: west-b}}
`

// TestWaypointLocalityLB: what a waypoint is told to do by locality, from a
// DestinationRule's localityLbSetting, Istio's default failover with
// outlierDetection, or the service's traffic distribution; the endpoints
// and the waypoint's own pods carry their places only then.
func TestWaypointLocalityLB(t *testing.T) {
	dr := func(tp string) string {
		return `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: ` + tp + "\n"
	}
	failover := &model.LocalityLB{Priority: model.LocalityPriority}
	for _, tt := range []struct {
		name, doc string
		want      *model.LocalityLB
		warned    string
	}{
		{"nothing asked", "", nil, ""},
		{"load balancer only", dr("{loadBalancer: {simple: RANDOM}}"), nil, ""},
		{"outlier detection: Istio's default failover", dr("{outlierDetection: {consecutive5xxErrors: 3}}"), failover, ""},
		{"disabled", dr("{loadBalancer: {localityLbSetting: {enabled: false}}, outlierDetection: {consecutive5xxErrors: 3}}"), nil, ""},
		{"failover regions", dr("{loadBalancer: {localityLbSetting: {failover: [{from: west, to: east}]}}, outlierDetection: {consecutive5xxErrors: 3}}"),
			&model.LocalityLB{Priority: model.LocalityPriority, Failover: []model.LocalityFailover{{From: "west", To: "east"}}}, ""},
		{"failover priority labels", dr("{loadBalancer: {localityLbSetting: {failoverPriority: [topology.istio.io/network, topology.kubernetes.io/region, kubernetes.io/hostname, app]}}, outlierDetection: {consecutive5xxErrors: 3}}"),
			&model.LocalityLB{Priority: []string{model.PriorityRegion, model.PriorityNode}}, `failoverPriority "app"`},
		{"failover without outlier detection", dr("{loadBalancer: {localityLbSetting: {failover: [{from: west, to: east}]}}}"), nil, "needs outlierDetection"},
		{"distribute", dr("{loadBalancer: {localityLbSetting: {distribute: [{from: 'west/west-a/*', to: {'west/west-a/*': 70, 'west/west-b/*': 30}}]}}}"),
			&model.LocalityLB{Distribute: []model.LocalityDistribute{{From: "west/west-a/*", To: map[string]uint32{"west/west-a/*": 70, "west/west-b/*": 30}}}}, ""},
		{"traffic distribution on the service", `apiVersion: v1
kind: Namespace
metadata: {name: bookinfo, labels: {istio.io/dataplane-mode: ambient, istio.io/use-waypoint: waypoint}, annotations: {networking.istio.io/traffic-distribution: PreferSameNode}}
`, &model.LocalityLB{Priority: []string{model.PriorityNode}}, ""},
	} {
		t.Run(tt.name, func(t *testing.T) {
			docs := append(bookinfo(zonedNodes, pod("bookinfo", "waypoint-1", "10.0.0.50", "n2", "gateway.networking.k8s.io/gateway-name=waypoint")), tt.doc)
			if tt.name == "traffic distribution on the service" {
				docs = append(docs[1:len(docs)-1], tt.doc) // its namespace replaces bookinfo's
			}
			snap, rej := mustBuild(t, inputs(t, docs...))
			if tt.warned != "" && !hasRejection(rej, tt.warned, true) {
				t.Errorf("rejections = %v; want a warning %q", rej, tt.warned)
			}
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok || len(cfg.Clusters) == 0 {
				t.Fatalf("no L7 config with a cluster for bookinfo/waypoint (rejections %v)", rej)
			}
			c := cfg.Clusters[0]
			if d := cmp.Diff(tt.want, c.Traffic.LB.Locality); d != "" {
				t.Errorf("locality LB (-want +got):\n%s", d)
			}
			for _, e := range c.Endpoints {
				if placed := e.Node == "n1" && e.Locality == "west/west-a/"; placed != (tt.want != nil) {
					t.Errorf("endpoint %s at node %q locality %q; want n1, west/west-a/ only with locality load balancing", e.Address, e.Node, e.Locality)
				}
			}
			wantPlaces := map[string]string(nil)
			if tt.want != nil {
				wantPlaces = map[string]string{"n2": "west/west-b/"}
			}
			if d := cmp.Diff(wantPlaces, cfg.ProxyLocalities); d != "" {
				t.Errorf("proxy localities (-want +got):\n%s", d)
			}
		})
	}
}

// TestLocalityLBInvalid: a localityLbSetting Istio's validation refuses
// makes the DestinationRule rejected, named with the reason.
func TestLocalityLBInvalid(t *testing.T) {
	for _, tt := range []struct{ name, tp, reason string }{
		{"weights", "{loadBalancer: {localityLbSetting: {distribute: [{from: west, to: {west: 50}}]}}}", "add up to 50"},
		{"both", "{loadBalancer: {localityLbSetting: {distribute: [{from: west, to: {west: 100}}], failover: [{from: west, to: east}]}}}", "cannot be combined"},
		{"port level", "{portLevelSettings: [{port: {number: 9080}, loadBalancer: {localityLbSetting: {failover: [{from: west, to: west}]}}}]}", "port 9080"},
	} {
		t.Run(tt.name, func(t *testing.T) {
			_, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: `+tt.tp+"\n")...))
			if !hasRejection(rej, tt.reason, false) {
				t.Errorf("rejections = %v; want the DestinationRule rejected for %q", rej, tt.reason)
			}
		})
	}
}
