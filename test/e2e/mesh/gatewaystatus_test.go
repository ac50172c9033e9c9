package meshtest

import (
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/test/lab"
)

// meshletController is the controllerName meshd writes its Gateway API
// status entries under.
const meshletController = "meshlet.dev/gateway-controller"

// statusCondition is one condition of a Gateway API status entry.
type statusCondition struct {
	Type, Status, Reason, Message string
	ObservedGeneration            int64
}

// meshletStatus reads a Gateway API object with kubectl and returns its
// generation and the conditions of meshlet's entries in status.parents
// (routes) or status.ancestors (policies), keyed "<parent name>/<type>".
func meshletStatus(t *testing.T, lb *lab.Lab, resource, ns, name string) (int64, map[string]statusCondition, error) {
	t.Helper()
	out, err := lb.Kubectl("get", resource, name, "-n", ns, "-o", "json")
	if err != nil {
		return 0, nil, fmt.Errorf("kubectl get %s %s/%s: %v: %s", resource, ns, name, err, out)
	}
	type entry struct {
		ParentRef, AncestorRef struct{ Kind, Name string }
		ControllerName         string
		Conditions             []statusCondition
	}
	var obj struct {
		Metadata struct{ Generation int64 }
		Status   struct{ Parents, Ancestors []entry }
	}
	if err := json.Unmarshal([]byte(out), &obj); err != nil {
		return 0, nil, fmt.Errorf("decode %s %s/%s: %v", resource, ns, name, err)
	}
	conds := map[string]statusCondition{}
	for _, e := range append(obj.Status.Parents, obj.Status.Ancestors...) {
		if e.ControllerName != meshletController {
			continue
		}
		ref := e.ParentRef.Name + e.AncestorRef.Name
		for _, c := range e.Conditions {
			conds[ref+"/"+c.Type] = c
		}
	}
	return obj.Metadata.Generation, conds, nil
}

// wantConditions checks conds against want ("<ref>/<type>" -> "Status
// Reason") and that each was observed at generation gen.
func wantConditions(gen int64, conds map[string]statusCondition, want map[string]string) error {
	var bad []string
	for k, w := range want {
		c, ok := conds[k]
		if !ok {
			bad = append(bad, k+": missing")
			continue
		}
		if got := c.Status + " " + c.Reason; got != w || c.ObservedGeneration != gen {
			bad = append(bad, fmt.Sprintf("%s: %s at generation %d (%q); want %s at %d", k, got, c.ObservedGeneration, c.Message, w, gen))
		}
	}
	if len(bad) > 0 {
		return fmt.Errorf("%s (all: %v)", strings.Join(bad, "; "), conds)
	}
	return nil
}

// TestGatewayAPIRouteStatus: meshd reports on an HTTPRoute bound to a
// Service what `kubectl get httproute -o yaml` users and tools (Argo CD,
// Flagger) wait for: Accepted once the Service's waypoint applies it,
// ResolvedRefs False with BackendNotFound for a backend that does not
// exist, each at the route's current generation.
func TestGatewayAPIRouteStatus(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1))
	route := func(backend string) string {
		return fmt.Sprintf(`apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: echo}
spec:
  parentRefs: [{group: "", kind: Service, name: echo, port: 8080}]
  rules: [{backendRefs: [{name: %s, port: 8080}]}]
`, backend)
	}
	lb.Apply(t, ns, route("echo"))
	applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	lab.WaitFor(t, time.Minute, "the route accepted with its backends resolved", func() (bool, error) {
		gen, conds, err := meshletStatus(t, lb, "httproute", ns, "echo")
		if err != nil {
			return false, err
		}
		err = wantConditions(gen, conds, map[string]string{"echo/Accepted": "True Accepted", "echo/ResolvedRefs": "True ResolvedRefs"})
		return err == nil, err
	})

	lb.Apply(t, ns, route("nosuch"))
	lab.WaitFor(t, time.Minute, "the missing backend reported", func() (bool, error) {
		gen, conds, err := meshletStatus(t, lb, "httproute", ns, "echo")
		if err != nil {
			return false, err
		}
		err = wantConditions(gen, conds, map[string]string{"echo/Accepted": "True Accepted", "echo/ResolvedRefs": "False BackendNotFound"})
		if err == nil && !strings.Contains(conds["echo/ResolvedRefs"].Message, "nosuch") {
			err = fmt.Errorf("ResolvedRefs message %q does not name the missing Service nosuch", conds["echo/ResolvedRefs"].Message)
		}
		return err == nil, err
	})
}
