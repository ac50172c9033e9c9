package controlplane

import (
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"

	"github.com/meshlet/meshlet/pkg/model"
)

// trafficPolicyDoc is an XBackendTrafficPolicy of bookinfo named name, with
// the spec fields given as YAML lines.
func trafficPolicyDoc(name, created, spec string) string {
	return `apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: ` + name + `, namespace: bookinfo, generation: 2, creationTimestamp: "` + created + `"}
spec:
` + spec
}

// reviewsCluster returns the waypoint's cluster for reviews.
func reviewsCluster(t *testing.T, cfg *model.L7Config) model.L7Cluster {
	t.Helper()
	for _, c := range cfg.Clusters {
		if strings.Contains(c.Name, "reviews.bookinfo") {
			return c
		}
	}
	t.Fatalf("no reviews cluster in %v", cfg.Clusters)
	return model.L7Cluster{}
}

// TestBackendTrafficPolicy: an XBackendTrafficPolicy on reviews gives the
// waypoint's reviews cluster Gateway API's retry budget, a rate (defaults
// filled in), and every route to reviews the policy's session persistence
// unless its rule has its own.
func TestBackendTrafficPolicy(t *testing.T) {
	cfg := bookinfoWaypoint(t, trafficPolicyDoc("reviews-traffic", "2026-01-01T00:00:00Z", `  targetRefs: [{group: "", kind: Service, name: reviews}]
  retryConstraint: {budget: {percent: 30}, minRetryRate: {count: 2, interval: 500ms}}
  sessionPersistence: {sessionName: reviews-session, type: Header}
`))
	want := &model.RetryBudget{Percent: 30, Interval: 10 * time.Second, MinRetries: 2, MinRetryInterval: 500 * time.Millisecond}
	if diff := cmp.Diff(want, reviewsCluster(t, cfg).Traffic.RetryBudget); diff != "" {
		t.Errorf("reviews retry budget (-want +got):\n%s", diff)
	}
	for _, c := range cfg.Clusters {
		if !strings.Contains(c.Name, "reviews.bookinfo") && c.Traffic.RetryBudget != nil {
			t.Errorf("cluster %s has budget %+v; the policy targets reviews only", c.Name, c.Traffic.RetryBudget)
		}
	}
	if diff := cmp.Diff(&model.SessionPersistence{Header: "reviews-session"}, cfg.Listeners[0].VirtualHosts[0].Routes[0].Session); diff != "" {
		t.Errorf("route to reviews: session (-want +got):\n%s", diff)
	}
}

// TestBackendTrafficPolicyPrecedence: a DestinationRule's retryBudget wins
// over the policy's (warned); the policy's session wins over the
// Service's label (warned); a rule's own session wins over the policy's.
func TestBackendTrafficPolicyPrecedence(t *testing.T) {
	policy := trafficPolicyDoc("reviews-traffic", "2026-01-01T00:00:00Z", `  targetRefs: [{group: "", kind: Service, name: reviews}]
  retryConstraint: {}
  sessionPersistence: {sessionName: policy-session}
`)
	dr := `apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy: {retryBudget: {percent: 5}}
`
	snap, rej := mustBuild(t, inputs(t, bookinfo(policy, dr)...))
	if !hasRejection(rej, "sets trafficPolicy.retryBudget for Service bookinfo/reviews, which takes precedence over retryConstraint", true) {
		t.Errorf("rejections %v; want the shadowed retryConstraint warned", rej)
	}
	cfg, _ := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if b := reviewsCluster(t, cfg).Traffic.RetryBudget; b == nil || b.Percent != 5 || b.Interval != 0 {
		t.Errorf("retry budget %+v; want the DestinationRule's (5%%, concurrent)", b)
	}
	cfg = labelledBookinfoWarned(t, "istio.io/persistent-session: label-session", "the session persistence of XBackendTrafficPolicy bookinfo/reviews-traffic takes precedence", policy, reviewsHTTPRoute(`  - matches: [{path: {type: PathPrefix, value: /own}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: own}
  - matches: [{path: {type: PathPrefix, value: /policy}}]
    backendRefs: [{name: reviews, port: 9080}]
`))
	got := sessionsByPath(t, cfg)
	if got["/own"] == nil || got["/own"].Cookie != "own" || got["/policy"] == nil || got["/policy"].Cookie != "policy-session" {
		t.Errorf("sessions = /own %+v, /policy %+v; want the rule's own, then the policy's (not the label's)", got["/own"], got["/policy"])
	}
}

// TestBackendTrafficPolicyStatus: what `kubectl get xbackendtrafficpolicy
// -o yaml` shows: one ancestor per Service target, Accepted; a newer
// policy for the same Service Conflicted; a missing Service
// TargetNotFound; an unusable field Invalid, the other fields applied.
func TestBackendTrafficPolicyStatus(t *testing.T) {
	b := NewBuilder(BuilderOptions{})
	b.Build(inputs(t, bookinfo(
		trafficPolicyDoc("older", "2026-01-01T00:00:00Z", `  targetRefs: [{group: "", kind: Service, name: reviews}, {group: "", kind: Service, name: nowhere}]
  retryConstraint: {budget: {percent: 10}}
`),
		trafficPolicyDoc("newer", "2026-02-01T00:00:00Z", `  targetRefs: [{group: "", kind: Service, name: reviews}, {group: "", kind: Service, name: ratings}]
  retryConstraint: {budget: {interval: soon}}
  sessionPersistence: {}
`), `apiVersion: v1
kind: Service
metadata: {name: ratings, namespace: bookinfo}
spec: {clusterIP: 10.96.0.21, selector: {app: ratings}, ports: [{name: http, port: 9080}]}
`)...))
	type anc struct{ name, status, reason string }
	ancestors := func(name string) []anc {
		var out []anc
		for _, a := range statusOf(t, b, KindXBackendTrafficPolicy, "bookinfo", name).Ancestors {
			c := meta.FindStatusCondition(a.Conditions, "Accepted")
			out = append(out, anc{string(a.AncestorRef.Name), string(c.Status), c.Reason})
		}
		return out
	}
	if diff := cmp.Diff([]anc{{"reviews", "True", "Accepted"}, {"nowhere", "False", "TargetNotFound"}}, ancestors("older"), cmp.AllowUnexported(anc{})); diff != "" {
		t.Errorf("older's ancestors (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff([]anc{{"reviews", "False", "Conflicted"}, {"ratings", "False", "Invalid"}}, ancestors("newer"), cmp.AllowUnexported(anc{})); diff != "" {
		t.Errorf("newer's ancestors (-want +got):\n%s", diff)
	}
	msg := statusOf(t, b, KindXBackendTrafficPolicy, "bookinfo", "newer").Ancestors[1].Conditions[0].Message
	if !strings.Contains(msg, `budget.interval "soon" is not a positive duration`) {
		t.Errorf("Invalid message %q; want the interval named", msg)
	}
}
