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

// TestGatewayAPIRouteStatus: meshd reports what `kubectl get` users and
// tools (Argo CD, Flagger) wait for. An HTTPRoute bound to a Service is
// Accepted once the Service's waypoint applies it, and ResolvedRefs turns
// False with BackendNotFound for a backend that does not exist, each at the
// route's current generation, and the requests the route sends to that
// backend are answered 500. meshlet's GatewayClasses are installed and
// Accepted; a route bound to an ingress Gateway counts in its listener's
// attachedRoutes, one whose hostnames the listener does not take is not
// Accepted (NoMatchingListenerHostname) and counts nowhere, and the
// waypoint's HBONE listener, which takes no route itself, counts none.
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
	// The edge listener takes *.example.com: edge-echo's name is among
	// them, edge-elsewhere's is not.
	lb.Apply(t, ns, route("echo")+"---\n"+strings.Replace(edgeGateway, "protocol: HTTP}", "protocol: HTTP, hostname: '*.example.com'}", 1)+`---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge-echo}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.com]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
---
apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: edge-elsewhere}
spec:
  parentRefs: [{name: edge}]
  hostnames: [shop.example.org]
  rules: [{backendRefs: [{name: echo, port: 8080}]}]
`)
	applyWaypoint(t, lb, run, ns, "--enroll-namespace")
	lab.WaitFor(t, time.Minute, "the route accepted with its backends resolved", func() (bool, error) {
		gen, conds, err := meshletStatus(t, lb, "httproute", ns, "echo")
		if err != nil {
			return false, err
		}
		err = wantConditions(gen, conds, map[string]string{"echo/Accepted": "True Accepted", "echo/ResolvedRefs": "True ResolvedRefs"})
		return err == nil, err
	})

	lab.WaitFor(t, time.Minute, "the ingress route attached to the edge Gateway's listener", func() (bool, error) {
		gen, conds, err := meshletStatus(t, lb, "httproute", ns, "edge-echo")
		if err == nil {
			err = wantConditions(gen, conds, map[string]string{"edge/Accepted": "True Accepted", "edge/ResolvedRefs": "True ResolvedRefs"})
		}
		if err == nil {
			gen, conds, err = meshletStatus(t, lb, "httproute", ns, "edge-elsewhere")
			if err == nil {
				err = wantConditions(gen, conds, map[string]string{"edge/Accepted": "False NoMatchingListenerHostname"})
			}
		}
		if err == nil {
			err = wantListener(t, lb, ns, "edge", "http", 1) // edge-echo only
		}
		if err == nil {
			err = wantListener(t, lb, ns, "waypoint", "mesh", 0)
		}
		return err == nil, err
	})
	for _, class := range []string{"meshlet", "meshlet-waypoint"} {
		lab.WaitFor(t, time.Minute, "GatewayClass "+class+" accepted", func() (bool, error) {
			out, err := lb.Kubectl("get", "gatewayclass", class, "-o", "json")
			if err != nil {
				return false, fmt.Errorf("kubectl get gatewayclass %s: %v: %s", class, err, out)
			}
			var gc struct {
				Spec   struct{ ControllerName string }
				Status struct{ Conditions []statusCondition }
			}
			if err := json.Unmarshal([]byte(out), &gc); err != nil {
				return false, err
			}
			for _, c := range gc.Status.Conditions {
				if c.Type == "Accepted" {
					ok := c.Status == "True" && gc.Spec.ControllerName == meshletController
					return ok, fmt.Errorf("controller %q, Accepted %s %s (%q)", gc.Spec.ControllerName, c.Status, c.Reason, c.Message)
				}
			}
			return false, fmt.Errorf("no Accepted condition: %+v", gc.Status.Conditions)
		})
	}

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
	// What the route sends to a backend that does not exist is answered
	// 500 by the waypoint, as Gateway API asks.
	client := clientPod(t, lb, ns, "client", "client")
	lab.WaitFor(t, time.Minute, "requests for the missing backend answered 500", func() (bool, error) {
		s := summary(t, lb, ns, client.Name, "-n", "4", "http://echo."+ns+".svc.cluster.local:8080/")
		return s.ByStatus["500"] == 4, fmt.Errorf("status %v, errors %v", s.ByStatus, s.Errors)
	})
}

// wantListener checks a Gateway's status for listener name: accepted and
// programmed at the Gateway's generation, with attached routes.
func wantListener(t *testing.T, lb *lab.Lab, ns, gateway, name string, attached int) error {
	t.Helper()
	out, err := lb.Kubectl("get", "gateway", gateway, "-n", ns, "-o", "json")
	if err != nil {
		return fmt.Errorf("kubectl get gateway %s/%s: %v: %s", ns, gateway, err, out)
	}
	var gw struct {
		Metadata struct{ Generation int64 }
		Status   struct {
			Listeners []struct {
				Name           string
				AttachedRoutes int
				Conditions     []statusCondition
			}
		}
	}
	if err := json.Unmarshal([]byte(out), &gw); err != nil {
		return fmt.Errorf("decode gateway %s/%s: %v", ns, gateway, err)
	}
	for _, l := range gw.Status.Listeners {
		if l.Name != name {
			continue
		}
		conds := map[string]statusCondition{}
		for _, c := range l.Conditions {
			conds[c.Type] = c
		}
		if err := wantConditions(gw.Metadata.Generation, conds, map[string]string{"Accepted": "True Accepted", "Programmed": "True Programmed"}); err != nil {
			return fmt.Errorf("gateway %s listener %s: %v", gateway, name, err)
		}
		if l.AttachedRoutes != attached {
			return fmt.Errorf("gateway %s listener %s: %d attached routes; want %d", gateway, name, l.AttachedRoutes, attached)
		}
		return nil
	}
	return fmt.Errorf("gateway %s: no status for listener %s (listeners %+v)", gateway, name, gw.Status.Listeners)
}
