package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"

	networkingv1 "istio.io/client-go/pkg/apis/networking/v1"

	"github.com/meshlet/meshlet/pkg/controlplane"
	"github.com/meshlet/meshlet/pkg/deployer"
	"github.com/meshlet/meshlet/pkg/model"
)

// describe gateway for an Istio (networking.istio.io) Gateway: its
// servers, the gateway deployments its selector picks (in any namespace,
// as Istio's), the VirtualServices bound to it, what meshd serves on those
// deployments, and the analysis findings about the Gateway and those
// VirtualServices — the questions of a team whose ingress is Istio's
// Gateway and VirtualService.

const istioNetworkingGroup = "networking.istio.io"

// describeIstioGateway prints Istio Gateway ns/name from objs (as listLive
// returns them), snap and findings; found is false when objs hold no such
// Gateway.
func describeIstioGateway(w io.Writer, objs []sourced, snap *model.Snapshot, findings []Finding, ns, name string) (found bool, err error) {
	var gw networkingv1.Gateway
	var vss []*networkingv1.VirtualService
	for _, so := range objs {
		u := so.obj
		if u.GroupVersionKind().Group != istioNetworkingGroup {
			continue
		}
		switch u.GetKind() {
		case "Gateway":
			if u.GetNamespace() != ns || u.GetName() != name {
				continue
			}
			if err := decodeInto(u.Object, &gw); err != nil {
				return true, fmt.Errorf("read gateway %s/%s: %w", ns, name, err)
			}
			found = true
		case "VirtualService":
			vs := &networkingv1.VirtualService{}
			if decodeInto(u.Object, vs) == nil {
				vss = append(vss, vs) // one that does not decode is analyze's to report
			}
		}
	}
	if !found {
		return false, nil
	}
	sel := gw.Spec.GetSelector()
	fmt.Fprintf(w, "Gateway:    %s/%s (Istio networking.istio.io)\n", ns, name)
	fmt.Fprintf(w, "Selector:   %s\n", orDash(labelsText(sel)))

	// The gateway deployments: pods carrying the gateway-name label whose
	// labels the selector matches.
	pods := map[model.NamespacedName]int{}
	for _, wl := range snap.Workloads() {
		if dep := wl.Labels[deployer.GatewayNameLabel]; wl.Kind == model.KindPod && dep != "" && model.SelectorMatches(sel, wl.Labels) {
			pods[model.NamespacedName{Namespace: wl.Namespace, Name: dep}]++
		}
	}
	deps := make([]model.NamespacedName, 0, len(pods))
	for k := range pods {
		deps = append(deps, k)
	}
	slices.SortFunc(deps, func(a, b model.NamespacedName) int { return strings.Compare(a.String(), b.String()) })
	fmt.Fprintln(w, "Gateway deployments (selected pods):")
	if len(deps) == 0 {
		fmt.Fprintln(w, "  none: no gateway pod matches the selector, so nothing serves this Gateway (meshctl install deploys one labelled istio=ingressgateway)")
	}
	for _, k := range deps {
		fmt.Fprintf(w, "  %s (%d pods)\n", k, pods[k])
	}

	fmt.Fprintln(w, "Servers:")
	for _, s := range gw.Spec.GetServers() {
		fmt.Fprintf(w, "  %s\n", istioServerLine(s.GetPort().GetNumber(), s.GetPort().GetProtocol(), s.GetPort().GetName(), s.GetHosts(),
			s.GetTls().GetMode().String(), s.GetTls().GetCredentialName(), s.GetTls() != nil, s.GetTls().GetHttpsRedirect()))
	}
	if len(gw.Spec.GetServers()) == 0 {
		fmt.Fprintln(w, "  none")
	}

	fmt.Fprintln(w, "VirtualServices bound to it (spec.gateways):")
	bound := map[string]bool{}
	for _, vs := range vss {
		if !slices.ContainsFunc(vs.Spec.GetGateways(), func(g string) bool {
			return g == ns+"/"+name || (g == name && vs.Namespace == ns)
		}) {
			continue
		}
		bound[vs.Namespace+"/"+vs.Name] = true
		fmt.Fprintf(w, "  %s/%s: hosts %s\n", vs.Namespace, vs.Name, strings.Join(vs.Spec.GetHosts(), ", "))
	}
	if len(bound) == 0 {
		fmt.Fprintln(w, "  none: a VirtualService serves here when its spec.gateways names this Gateway (\""+name+"\" in namespace "+ns+", or \""+ns+"/"+name+"\")")
	}

	for _, k := range deps {
		fmt.Fprintf(w, "On %s:\n", k)
		printServed(w, snap, k)
	}

	var mine []Finding
	for _, f := range findings {
		if f.Kind == controlplane.KindIstioGateway && f.Namespace == ns && f.Name == name ||
			f.Kind == controlplane.KindVirtualService && bound[f.Namespace+"/"+f.Name] {
			mine = append(mine, f)
		}
	}
	if len(mine) > 0 {
		fmt.Fprintln(w, "Findings (meshctl analyze):")
		for _, f := range mine {
			fmt.Fprintf(w, "  %s %s %s/%s: %s\n", f.Severity, f.Kind, f.Namespace, f.Name, f.Message)
		}
	}
	return true, nil
}

// istioServerLine is one server of an Istio Gateway.
func istioServerLine(port uint32, protocol, portName string, hosts []string, mode, credential string, hasTLS, redirect bool) string {
	line := "port " + strconv.FormatUint(uint64(port), 10) + " " + protocol
	if portName != "" {
		line += " (" + portName + ")"
	}
	line += ", hosts " + orDash(strings.Join(hosts, ", "))
	if hasTLS && (strings.EqualFold(protocol, "HTTPS") || strings.EqualFold(protocol, "TLS")) {
		// The mode of an HTTP server's tls block (httpsRedirect alone) is
		// the enum's default, PASSTHROUGH, and means nothing there.
		line += ", TLS " + mode
		if credential != "" {
			line += " with Secret " + credential
		}
	}
	if redirect {
		line += ", redirects to HTTPS"
	}
	return line
}

// labelsText is a label selector as k=v pairs, sorted.
func labelsText(m map[string]string) string {
	kv := make([]string, 0, len(m))
	for k, v := range m {
		kv = append(kv, k+"="+v)
	}
	slices.Sort(kv)
	return strings.Join(kv, ",")
}

// decodeInto decodes an unstructured object into a typed one through JSON
// (Istio's types decode their specs with protojson).
func decodeInto(obj map[string]any, into any) error {
	b, err := json.Marshal(obj)
	if err != nil {
		return err
	}
	return json.Unmarshal(b, into)
}
