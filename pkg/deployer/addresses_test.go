package deployer

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	kubefake "k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"
	gatewayfake "sigs.k8s.io/gateway-api/pkg/client/clientset/versioned/fake"
)

// addressed returns a Gateway of class with the annotations (key, value
// pairs) and spec.addresses given as "Type=value" ("=value" leaves the
// type unset).
func addressed(class string, annotations []string, addrs ...string) *gatewayv1.Gateway {
	gw := gateway(class, gatewayv1.Listener{Name: "http", Port: 80, Protocol: gatewayv1.HTTPProtocolType})
	for i := 0; i+1 < len(annotations); i += 2 {
		if gw.Annotations == nil {
			gw.Annotations = map[string]string{}
		}
		gw.Annotations[annotations[i]] = annotations[i+1]
	}
	for _, a := range addrs {
		typ, value, _ := strings.Cut(a, "=")
		sa := gatewayv1.GatewaySpecAddress{Value: value}
		if typ != "" {
			sa.Type = ptr(gatewayv1.AddressType(typ))
		}
		gw.Spec.Addresses = append(gw.Spec.Addresses, sa)
	}
	return gw
}

// TestRenderServiceTypeAndAddress: the Service's type follows Istio's
// service-type annotation, under the class defaults' and the Gateway's
// own `service` overlays; an ingress gateway's LoadBalancer Service asks
// for the first requested IP address in spec.loadBalancerIP, a Service of
// another type and a waypoint's for none.
func TestRenderServiceTypeAndAddress(t *testing.T) {
	svcType := []string{ServiceTypeAnnotation}
	tests := []struct {
		name     string
		gw       *gatewayv1.Gateway
		params   Params
		wantType corev1.ServiceType
		wantIP   string
	}{
		{"ingress by default", addressed("meshlet", nil), Params{}, corev1.ServiceTypeLoadBalancer, ""},
		{"waypoint by default", addressed("meshlet-waypoint", nil), Params{}, corev1.ServiceTypeClusterIP, ""},
		{"ingress asks for its address", addressed("istio", nil, "IPAddress=198.51.100.7"), Params{}, corev1.ServiceTypeLoadBalancer, "198.51.100.7"},
		{"type unset is IPAddress", addressed("meshlet", nil, "=198.51.100.7"), Params{}, corev1.ServiceTypeLoadBalancer, "198.51.100.7"},
		{"IPv6 in its canonical form", addressed("meshlet", nil, "IPAddress=2001:DB8:0::7"), Params{}, corev1.ServiceTypeLoadBalancer, "2001:db8::7"},
		{"several: the first with a value", addressed("meshlet", nil, "IPAddress=", "IPAddress=198.51.100.8", "IPAddress=198.51.100.9"), Params{}, corev1.ServiceTypeLoadBalancer, "198.51.100.8"},
		{"empty value: any address", addressed("meshlet", nil, "IPAddress="), Params{}, corev1.ServiceTypeLoadBalancer, ""},
		{"annotation NodePort asks for no address", addressed("meshlet", append(svcType, "NodePort"), "IPAddress=198.51.100.7"), Params{}, corev1.ServiceTypeNodePort, ""},
		{"annotation ClusterIP", addressed("istio", append(svcType, "ClusterIP")), Params{}, corev1.ServiceTypeClusterIP, ""},
		{"annotation LoadBalancer on a waypoint asks for no address", addressed("istio-waypoint", append(svcType, "LoadBalancer"), "IPAddress=198.51.100.7"), Params{}, corev1.ServiceTypeLoadBalancer, ""},
		{"the parametersRef service overlay wins over the annotation", addressed("meshlet", append(svcType, "NodePort")),
			gwParams(map[string]string{"service": "spec: {type: LoadBalancer}"}), corev1.ServiceTypeLoadBalancer, ""},
		{"class defaults win over the annotation too", addressed("meshlet", append(svcType, "LoadBalancer")),
			Params{Class: classDefaults(map[string]string{"service": "spec: {type: NodePort}"})}, corev1.ServiceTypeNodePort, ""},
		{"an overlay's ClusterIP drops the address asked", addressed("meshlet", nil, "IPAddress=198.51.100.7"),
			gwParams(map[string]string{"service": "spec: {type: ClusterIP}"}), corev1.ServiceTypeClusterIP, ""},
		{"an overlay's own loadBalancerIP wins", addressed("meshlet", nil, "IPAddress=198.51.100.7"),
			gwParams(map[string]string{"service": "spec: {loadBalancerIP: 198.51.100.99}"}), corev1.ServiceTypeLoadBalancer, "198.51.100.99"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.params.Gateway != nil {
				tt.gw.Spec.Infrastructure = &gatewayv1.GatewayInfrastructure{ParametersRef: &gatewayv1.LocalParametersReference{Kind: "ConfigMap", Name: "wp-params"}}
			}
			objs, err := Render(tt.gw, opts, tt.params)
			if err != nil {
				t.Fatalf("Render() = %v", err)
			}
			spec := objs.Service.Spec
			var gotType corev1.ServiceType
			if spec.Type != nil {
				gotType = *spec.Type
			}
			var gotIP string
			if spec.LoadBalancerIP != nil {
				gotIP = *spec.LoadBalancerIP
			}
			if gotType != tt.wantType || gotIP != tt.wantIP {
				t.Errorf("Service type %q, loadBalancerIP %q; want %q, %q", gotType, gotIP, tt.wantType, tt.wantIP)
			}
		})
	}
}

// TestRenderAddressRefused: an address meshlet cannot serve is an
// AddressError, an unknown service-type annotation a ParamsError; each
// message names the value and what to do.
func TestRenderAddressRefused(t *testing.T) {
	tests := []struct {
		name        string
		gw          *gatewayv1.Gateway
		wantAddress bool
		want        []string
	}{
		{"not an IP", addressed("meshlet", nil, "IPAddress=198.51.100"), true,
			[]string{`spec.addresses[0]: IPAddress "198.51.100" is not an IP address`, "IPv4 or IPv6", "leave the value empty"}},
		{"an IP with a zone", addressed("meshlet", nil, "IPAddress=198.51.100.7", "IPAddress=fe80::1%eth0"), true,
			[]string{`spec.addresses[1]: IPAddress "fe80::1%eth0"`, "without a zone"}},
		{"Hostname: Istio's manual deployment", addressed("istio", nil, "Hostname=ingress.istio-system.svc.cluster.local"), true,
			[]string{`Hostname "ingress.istio-system.svc.cluster.local" is not supported`, "existing Service", "manual deployment", "remove the address"}},
		{"NamedAddress", addressed("meshlet", nil, "NamedAddress=my-ip"), true,
			[]string{`type NamedAddress (value "my-ip") is not supported`, "spec.infrastructure.annotations"}},
		{"an implementation's type", addressed("meshlet", nil, "example.com/pool=blue"), true,
			[]string{`type example.com/pool (value "blue") is not supported`}},
		{"a waypoint's Hostname", addressed("istio-waypoint", nil, "Hostname=waypoint"), true,
			[]string{`Hostname "waypoint" is not supported`}},
		{"service type misspelt", addressed("meshlet", []string{ServiceTypeAnnotation, "loadbalancer"}), false,
			[]string{`annotation networking.istio.io/service-type: "loadbalancer"`, "want ClusterIP, NodePort or LoadBalancer", "remove the annotation for LoadBalancer"}},
		{"service type ExternalName", addressed("meshlet-waypoint", []string{ServiceTypeAnnotation, "ExternalName"}), false,
			[]string{`"ExternalName" is not a Service type meshlet deploys`, "remove the annotation for ClusterIP"}},
		{"service type empty", addressed("meshlet", []string{ServiceTypeAnnotation, ""}), false,
			[]string{`annotation networking.istio.io/service-type: ""`}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := Render(tt.gw, opts, Params{})
			var aerr *AddressError
			var perr *ParamsError
			switch {
			case err == nil:
				t.Fatal("Render() succeeded; want it refused")
			case tt.wantAddress && !errors.As(err, &aerr):
				t.Fatalf("Render() = %T %v; want an AddressError", err, err)
			case !tt.wantAddress && !errors.As(err, &perr):
				t.Fatalf("Render() = %T %v; want a ParamsError", err, err)
			}
			for _, w := range tt.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("Render() = %q; want it to contain %q", err, w)
				}
			}
		})
	}
}

// TestStatusAddresses: Programmed waits for every requested address to be
// among the Service's load balancer addresses (AddressNotAssigned, naming
// those missing), then follows readiness; an address a Service of another
// type or a waypoint cannot take is AddressNotUsable; status.addresses
// lists what the Service got; a rejected address is Accepted False
// UnsupportedAddress.
func TestStatusAddresses(t *testing.T) {
	ready := &appsv1.Deployment{Status: appsv1.DeploymentStatus{ReadyReplicas: 1}}
	svc := func(typ corev1.ServiceType, lbIPs ...string) *corev1.Service {
		s := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "waypoint"},
			Spec: corev1.ServiceSpec{Type: typ, ClusterIP: "10.96.0.10", ClusterIPs: []string{"10.96.0.10"}}}
		for _, ip := range lbIPs {
			s.Status.LoadBalancer.Ingress = append(s.Status.LoadBalancer.Ingress, corev1.LoadBalancerIngress{IP: ip})
		}
		return s
	}
	lb := corev1.ServiceTypeLoadBalancer
	type cond struct{ Status, Reason string }
	tests := []struct {
		name       string
		gw         *gatewayv1.Gateway
		dep        *appsv1.Deployment
		svc        *corev1.Service
		rejected   error
		accepted   cond
		programmed cond
		// wantMsg are in the message of Programmed (Accepted when
		// rejected).
		wantMsg   []string
		wantAddrs []string
	}{
		{"pending load balancer", addressed("meshlet", nil, "IPAddress=198.18.0.50"), ready, svc(lb),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotAssigned"},
			[]string{"requested address 198.18.0.50 not (yet) among the load balancer addresses of Service bookinfo/waypoint (none yet)", "spec.loadBalancerIP"},
			[]string{"10.96.0.10"}},
		{"assigned", addressed("meshlet", nil, "IPAddress=198.18.0.50"), ready, svc(lb, "198.18.0.50"),
			nil, cond{"True", "Accepted"}, cond{"True", "Programmed"}, nil, []string{"198.18.0.50"}},
		{"assigned, pod not ready", addressed("meshlet", nil, "IPAddress=198.18.0.50"), &appsv1.Deployment{}, svc(lb, "198.18.0.50"),
			nil, cond{"True", "Accepted"}, cond{"False", "Pending"}, []string{"waiting for a ready waypoint pod"}, []string{"198.18.0.50"}},
		{"pending and pod not ready: the address first", addressed("meshlet", nil, "IPAddress=198.18.0.50"), &appsv1.Deployment{}, svc(lb),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotAssigned"}, []string{"198.18.0.50", "and waiting for a ready waypoint pod"}, []string{"10.96.0.10"}},
		{"the load balancer gave another", addressed("meshlet", nil, "IPAddress=198.18.0.50"), ready, svc(lb, "198.18.0.99"),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotAssigned"}, []string{"198.18.0.50", "(198.18.0.99)"}, []string{"198.18.0.99"}},
		{"one of two assigned", addressed("meshlet", nil, "IPAddress=198.18.0.50", "IPAddress=198.18.0.51"), ready, svc(lb, "198.18.0.50"),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotAssigned"},
			[]string{"requested address 198.18.0.51 not", "asks for 198.18.0.50 through spec.loadBalancerIP", "your load balancer's annotation in spec.infrastructure.annotations"},
			[]string{"198.18.0.50"}},
		{"both assigned", addressed("meshlet", nil, "IPAddress=198.18.0.50", "IPAddress=2001:db8::50"), ready, svc(lb, "2001:DB8::50", "198.18.0.50"),
			nil, cond{"True", "Accepted"}, cond{"True", "Programmed"}, nil, []string{"2001:DB8::50", "198.18.0.50"}},
		{"any address, pending", addressed("meshlet", nil, "IPAddress="), ready, svc(lb),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotAssigned"}, []string{"an IP address (empty value: any)", "asks for no particular one"}, []string{"10.96.0.10"}},
		{"any address, assigned", addressed("meshlet", nil, "IPAddress="), ready, svc(lb, "198.18.0.7"),
			nil, cond{"True", "Accepted"}, cond{"True", "Programmed"}, nil, []string{"198.18.0.7"}},
		{"no address requested, pending: as before", addressed("meshlet", nil), ready, svc(lb),
			nil, cond{"True", "Accepted"}, cond{"True", "Programmed"}, nil, []string{"10.96.0.10"}},
		{"NodePort ingress", addressed("meshlet", []string{ServiceTypeAnnotation, "NodePort"}, "IPAddress=198.18.0.50"), ready, svc(corev1.ServiceTypeNodePort),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotUsable"},
			[]string{"198.18.0.50", "is of type NodePort", "set annotation networking.istio.io/service-type: LoadBalancer, or remove the address"}, []string{"10.96.0.10"}},
		{"waypoint asking for another address", addressed("meshlet-waypoint", nil, "IPAddress=198.18.0.50"), ready, svc(corev1.ServiceTypeClusterIP),
			nil, cond{"True", "Accepted"}, cond{"False", "AddressNotUsable"},
			[]string{"198.18.0.50", "a waypoint is reached at its Service's cluster IPs (10.96.0.10)", "remove spec.addresses"}, []string{"10.96.0.10"}},
		{"waypoint asking for its cluster IP", addressed("istio-waypoint", nil, "IPAddress=10.96.0.10"), ready, svc(corev1.ServiceTypeClusterIP),
			nil, cond{"True", "Accepted"}, cond{"True", "Programmed"}, nil, []string{"10.96.0.10"}},
		{"waypoint LoadBalancer keeps its cluster IPs", addressed("istio-waypoint", []string{ServiceTypeAnnotation, "LoadBalancer"}), ready, svc(lb, "198.18.0.7"),
			nil, cond{"True", "Accepted"}, cond{"True", "Programmed"}, nil, []string{"10.96.0.10"}},
		{"rejected address: what runs keeps its addresses", addressed("meshlet", nil, "Hostname=ingress"), ready, svc(lb, "198.18.0.7"),
			&AddressError{msg: `spec.addresses[0]: Hostname "ingress" is not supported`}, cond{"False", "UnsupportedAddress"}, cond{"False", "Invalid"},
			[]string{`Hostname "ingress" is not supported`}, []string{"198.18.0.7"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			st := Status(tt.gw, tt.dep, tt.svc, time.Date(2026, 11, 23, 22, 0, 0, 0, time.UTC), tt.rejected).Status
			var acc, prog cond
			var msg string
			for _, c := range st.Conditions {
				switch *c.Type {
				case "Accepted":
					acc = cond{string(*c.Status), *c.Reason}
					if tt.rejected != nil {
						msg = *c.Message
					}
				case "Programmed":
					prog = cond{string(*c.Status), *c.Reason}
					if tt.rejected == nil {
						msg = *c.Message
					}
				}
			}
			if acc != tt.accepted || prog != tt.programmed {
				t.Errorf("Accepted %v, Programmed %v; want %v, %v (message %q)", acc, prog, tt.accepted, tt.programmed, msg)
			}
			for _, w := range tt.wantMsg {
				if !strings.Contains(msg, w) {
					t.Errorf("message %q; want it to contain %q", msg, w)
				}
			}
			var addrs []string
			for _, a := range st.Addresses {
				addrs = append(addrs, *a.Value)
			}
			if strings.Join(addrs, " ") != strings.Join(tt.wantAddrs, " ") {
				t.Errorf("status.addresses %v; want %v", addrs, tt.wantAddrs)
			}
		})
	}
}

// TestReconcileAddressRejected: a Gateway asking for an address meshlet
// cannot serve, or a Service type it does not deploy, is not accepted and
// the Deployment that runs for it is left as it was.
func TestReconcileAddressRejected(t *testing.T) {
	running := &appsv1.Deployment{ObjectMeta: metav1.ObjectMeta{Namespace: "bookinfo", Name: "waypoint"},
		Spec: appsv1.DeploymentSpec{Template: corev1.PodTemplateSpec{ObjectMeta: metav1.ObjectMeta{Labels: map[string]string{"last": "good"}}}}}
	tests := []struct {
		name       string
		gw         *gatewayv1.Gateway
		wantReason gatewayv1.GatewayConditionReason
		want       string
	}{
		{"Hostname", addressed("meshlet", nil, "Hostname=ingress"), gatewayv1.GatewayReasonUnsupportedAddress, `spec.addresses[0]: Hostname "ingress" is not supported`},
		{"not an IP", addressed("meshlet", nil, "IPAddress=not-an-ip"), gatewayv1.GatewayReasonUnsupportedAddress, `IPAddress "not-an-ip" is not an IP address`},
		{"service type", addressed("meshlet", []string{ServiceTypeAnnotation, "Internal"}), gatewayv1.GatewayReasonInvalidParameters, `annotation networking.istio.io/service-type: "Internal"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tmpl, acc := reconcileWith(t, tt.gw, []runtime.Object{running.DeepCopy()}...)
			if acc.Status != metav1.ConditionFalse || acc.Reason != string(tt.wantReason) || !strings.Contains(acc.Message, tt.want) {
				t.Errorf("Accepted %s %s %q; want False %s %q", acc.Status, acc.Reason, acc.Message, tt.wantReason, tt.want)
			}
			if tmpl == nil || tmpl.Labels["last"] != "good" || tmpl.Labels[GatewayNameLabel] != "" {
				t.Errorf("the running Deployment's pod labels became %v; want it left as it was (last=good)", tmpl)
			}
		})
	}
}

// TestRunProgrammedOnceAddressAssigned: Run watches the Services it made,
// so that a load balancer assigning the requested address moves the
// Gateway's Programmed off AddressNotAssigned without waiting for a
// resync.
func TestRunProgrammedOnceAddressAssigned(t *testing.T) {
	t.Setenv("KUBE_FEATURE_WatchListClient", "false") // the fakes predate streaming lists
	kube := kubefake.NewClientset()
	// The fake's apply writes a new version each time, which the
	// Deployment watch would answer with another reconcile, and so on;
	// a real API server leaves an unchanged object alone: so here, once
	// the Deployment is there.
	kube.PrependReactor("patch", "deployments", func(a k8stesting.Action) (bool, runtime.Object, error) {
		p := a.(k8stesting.PatchAction)
		obj, err := kube.Tracker().Get(appsv1.SchemeGroupVersion.WithResource("deployments"), p.GetNamespace(), p.GetName())
		return err == nil, obj, nil
	})
	gw := addressed("meshlet", nil, "IPAddress=198.18.0.50")
	// The simple fake, as in TestRunListenerSetCRDInstalledLater; status
	// applies are recorded, not stored.
	gwc := gatewayfake.NewSimpleClientset()
	var mu sync.Mutex
	var reasons []string
	gwc.PrependReactor("patch", "gateways", func(a k8stesting.Action) (bool, runtime.Object, error) {
		var st gatewayv1.Gateway
		if err := json.Unmarshal(a.(k8stesting.PatchAction).GetPatch(), &st); err != nil {
			t.Error(err)
		}
		if c := meta.FindStatusCondition(st.Status.Conditions, string(gatewayv1.GatewayConditionProgrammed)); c != nil {
			mu.Lock()
			reasons = append(reasons, c.Reason)
			mu.Unlock()
		}
		return true, &gatewayv1.Gateway{}, nil
	})
	if _, err := gwc.GatewayV1().Gateways(gw.Namespace).Create(context.Background(), gw, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	ctx := runDeployer(t, Options{Kube: kube, Gateway: gwc, Render: opts, Resync: time.Hour})
	last := func() string {
		mu.Lock()
		defer mu.Unlock()
		if len(reasons) == 0 {
			return ""
		}
		return reasons[len(reasons)-1]
	}
	waitReason := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for last() != want {
			if time.Now().After(deadline) {
				t.Fatalf("Programmed reason %q; want %q within 10s", last(), want)
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitReason(string(gatewayv1.GatewayReasonAddressNotAssigned))
	svc, err := kube.CoreV1().Services(gw.Namespace).Get(ctx, gw.Name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	if svc.Spec.LoadBalancerIP != "198.18.0.50" {
		t.Errorf("Service loadBalancerIP %q; want the requested 198.18.0.50", svc.Spec.LoadBalancerIP)
	}
	svc.Status.LoadBalancer.Ingress = []corev1.LoadBalancerIngress{{IP: "198.18.0.50"}}
	if _, err := kube.CoreV1().Services(gw.Namespace).UpdateStatus(ctx, svc, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	// The address assigned, readiness decides: the fake's pods never are.
	waitReason(string(gatewayv1.GatewayReasonPending))
}
