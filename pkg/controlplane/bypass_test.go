package controlplane

import (
	"strings"
	"testing"
)

// TestBypassInboundWarned: an enrolled pod annotated
// ambient.istio.io/bypass-inbound-capture under STRICT (or an L4
// AuthorizationPolicy) is warned about — its plaintext inbound escapes
// them — and stays enrolled; without STRICT or policies, no warning.
func TestBypassInboundWarned(t *testing.T) {
	annotated := strings.Replace(pod("app", "a", "10.0.0.1", "n1", ""), "  labels:", "  annotations: {ambient.istio.io/bypass-inbound-capture: \"true\"}\n  labels:", 1)
	const strict = `apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default, namespace: app}
spec: {mtls: {mode: STRICT}}
`
	snap, rej := mustBuild(t, inputs(t, ns("app", "istio.io/dataplane-mode=ambient"), annotated, strict))
	if !workloadByName(t, snap, "app", "a").Enrolled {
		t.Error("the annotated pod is not enrolled; want it in the mesh (outbound captured)")
	}
	if !hasRejection(rej, "annotation ambient.istio.io/bypass-inbound-capture=true: its inbound plaintext reaches the app uncaptured, so neither STRICT", true) {
		t.Errorf("rejections = %v; want the pod warned about under STRICT", rej)
	}
	if _, rej := mustBuild(t, inputs(t, ns("app", "istio.io/dataplane-mode=ambient"), annotated)); len(rej) != 0 {
		t.Errorf("rejections = %v; want none without STRICT or policies", rej)
	}
}
