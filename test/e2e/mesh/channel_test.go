package meshtest

import (
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// TestGatewayAPIExperimentalChannel: `meshctl upgrade --gateway-api-channel
// experimental` moves the cluster to Gateway API's experimental CRDs (the
// routes' experimental fields, XBackendTrafficPolicy); going back to
// standard, which would prune those fields from stored routes, is refused.
// meshd, not restarted, then reads XBackendTrafficPolicies (it hears
// optional CRDs installed since it started): one on a Service
// with a waypoint gives its clients session persistence (a token in a
// header, then the pod that answered it), and its status says so.
func TestGatewayAPIExperimentalChannel(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	out := run("upgrade", "-y", "--timeout", "3m", "--gateway-api-channel", "experimental")
	if !strings.Contains(out, "experimental") {
		t.Errorf("upgrade output does not name the experimental channel:\n%s", out)
	}
	channel, err := lb.Kubectl("get", "crd", "httproutes.gateway.networking.k8s.io", "-o", `jsonpath={.metadata.annotations.gateway\.networking\.k8s\.io/channel}`)
	if err != nil || channel != "experimental" {
		t.Fatalf("HTTPRoute CRD channel %q (%v); want experimental", channel, err)
	}
	if _, err := lb.Kubectl("get", "crd", "xbackendtrafficpolicies.gateway.networking.x-k8s.io"); err != nil {
		t.Fatalf("XBackendTrafficPolicy CRD: %v", err)
	}
	refused, err := runMeshctl(lb, "upgrade", "-y", "--timeout", "3m", "--gateway-api-channel", "standard")
	if err == nil || !strings.Contains(refused, "experimental") {
		t.Errorf("upgrade back to the standard channel: %v\n%s\nwant it refused, naming what would be lost", err, refused)
	}
	if channel, _ := lb.Kubectl("get", "crd", "httproutes.gateway.networking.k8s.io", "-o", `jsonpath={.metadata.annotations.gateway\.networking\.k8s\.io/channel}`); channel != "experimental" {
		t.Errorf("after the refused upgrade the HTTPRoute CRD's channel is %q; want experimental still", channel)
	}

	ns := ambientNamespace(t, lb)
	client, url := echoVersions(t, lb, ns)
	applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	lb.Apply(t, ns, `apiVersion: gateway.networking.x-k8s.io/v1alpha1
kind: XBackendTrafficPolicy
metadata: {name: echo-traffic}
spec:
  targetRefs: [{group: "", kind: Service, name: echo}]
  retryConstraint: {budget: {percent: 20, interval: 10s}, minRetryRate: {count: 5, interval: 1s}}
  sessionPersistence: {sessionName: x-echo-session, type: Header}
`)
	wantSessionPins(t, lb, ns, client.Name, url, "x-echo-session", 2*time.Minute)
	lab.WaitFor(t, 30*time.Second, "the policy's status", func() (bool, error) {
		out, err := lb.Kubectl("-n", ns, "get", "xbackendtrafficpolicy", "echo-traffic", "-o",
			`jsonpath={.status.ancestors[0].ancestorRef.name} {.status.ancestors[0].conditions[?(@.type=="Accepted")].status}`)
		return err == nil && out == "echo True", fmt.Errorf("ancestors %q (%v)", out, err)
	})
}
