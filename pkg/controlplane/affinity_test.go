package controlplane

import (
	"fmt"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// TestSessionAffinity: a Service's sessionAffinity ClientIP reaches the
// node agents as its timeout (Kubernetes' 3 hours when none is given), and
// a waypoint in front of it hashes the client's address unless a
// DestinationRule chooses the load balancing.
func TestSessionAffinity(t *testing.T) {
	reviews := func(affinity string) string {
		return `apiVersion: v1
kind: Service
metadata: {name: reviews, namespace: bookinfo}
spec:
  clusterIP: 10.96.0.20
  selector: {app: reviews}
  ports: [{name: http, port: 9080, targetPort: 8080}]
` + affinity
	}
	for _, tt := range []struct {
		name, affinity, dr string
		want               time.Duration
		hashSource         bool
	}{
		{"none", "", "", 0, false},
		{"explicit None", "  sessionAffinity: None\n", "", 0, false},
		{"ClientIP, Kubernetes' default timeout", "  sessionAffinity: ClientIP\n", "", 3 * time.Hour, true},
		{"ClientIP with a timeout", "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 60}}\n", "", time.Minute, true},
		{"ClientIP, a timeout out of the API's range", "  sessionAffinity: ClientIP\n  sessionAffinityConfig: {clientIP: {timeoutSeconds: 90000}}\n", "", 3 * time.Hour, true},
		{"ClientIP, a DestinationRule's load balancer wins at the waypoint", "  sessionAffinity: ClientIP\n",
			"{loadBalancer: {simple: ROUND_ROBIN}}", 3 * time.Hour, false},
		{"ClientIP, a DestinationRule without a load balancer keeps the hash", "  sessionAffinity: ClientIP\n",
			"{connectionPool: {tcp: {maxConnections: 10}}}", 3 * time.Hour, true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			docs := bookinfo()
			docs[len(docs)-1] = reviews(tt.affinity)
			if tt.dr != "" {
				docs = append(docs, fmt.Sprintf(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec: {host: reviews, trafficPolicy: %s}
`, tt.dr))
			}
			snap, rej := mustBuild(t, inputs(t, docs...))
			if len(rej) != 0 {
				t.Errorf("rejections = %v; want none", rej)
			}
			svc, ok := snap.Service("bookinfo/reviews")
			if !ok {
				t.Fatal("no service bookinfo/reviews")
			}
			if svc.SessionAffinity != tt.want {
				t.Errorf("session affinity %v; want %v", svc.SessionAffinity, tt.want)
			}
			cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
			if !ok || len(cfg.Clusters) == 0 {
				t.Fatalf("no L7 config with a cluster for bookinfo/waypoint (rejections %v)", rej)
			}
			ch := cfg.Clusters[0].Traffic.LB.ConsistentHash
			if got := ch != nil && ch.SourceIP; got != tt.hashSource {
				t.Errorf("waypoint cluster %s hashes the source address: %v (%+v); want %v", cfg.Clusters[0].Name, got, ch, tt.hashSource)
			}
		})
	}
}
