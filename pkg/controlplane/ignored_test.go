package controlplane

import "testing"

// TestIgnoredFieldsWarned: traffic policy and route fields meshlet does not
// implement are named in a warning; the object still applies. Delegation,
// whose routes would be lost, rejects the VirtualService.
func TestIgnoredFieldsWarned(t *testing.T) {
	_, rej := mustBuild(t, inputs(t, bookinfo(`apiVersion: networking.istio.io/v1
kind: DestinationRule
metadata: {name: reviews, namespace: bookinfo}
spec:
  host: reviews
  trafficPolicy:
    connectionPool: {tcp: {maxConnectionDuration: 1h}, http: {h2UpgradePolicy: UPGRADE, maxRetries: 3, maxConcurrentStreams: 10}}
    loadBalancer: {simple: ROUND_ROBIN, warmupDurationSecs: 30s}
  subsets:
  - {name: v1, labels: {version: v1}, trafficPolicy: {outlierDetection: {consecutiveLocalOriginFailures: 3}}}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: reviews, namespace: bookinfo}
spec:
  hosts: [reviews]
  http:
  - route: [{destination: {host: reviews}}]
    retries: {attempts: 2, retryRemoteLocalities: true}
---
apiVersion: networking.istio.io/v1
kind: VirtualService
metadata: {name: delegating, namespace: bookinfo}
spec:
  hosts: [ratings]
  http:
  - delegate: {name: ratings-routes, namespace: bookinfo}
`)...))
	for _, want := range []struct {
		text    string
		warning bool
	}{
		{"trafficPolicy: connectionPool.http.maxConcurrentStreams not implemented", true},
		{"subsets[v1].trafficPolicy: outlierDetection.consecutiveLocalOriginFailures (without splitExternalLocalOriginErrors, as in Istio) not implemented", true},
		{"http[0].delegate: VirtualService delegation is not supported", false},
	} {
		if !hasRejection(rej, want.text, want.warning) {
			t.Errorf("rejections = %v; want %q (warning %v)", rej, want.text, want.warning)
		}
	}
	if hasRejection(rej, "retries", true) {
		t.Errorf("rejections = %v; want none about retries (retryRemoteLocalities is implemented)", rej)
	}
}

// TestOutlierDetectionFields: minHealthPercent and
// outlierDetectionHttpErrorCodes reach the waypoint.
func TestOutlierDetectionFields(t *testing.T) {
	tp := reviewsTraffic(t, "{outlierDetection: {minHealthPercent: 40, outlierDetectionHttpErrorCodes: [429, 503]}}")
	if o := tp.Outlier; o == nil || o.MinHealthPercent != 40 || len(o.ErrorCodes) != 2 || o.ErrorCodes[0] != 429 || o.ErrorCodes[1] != 503 {
		t.Errorf("outlier detection = %+v; want minHealthPercent 40, error codes [429 503]", tp.Outlier)
	}
}
