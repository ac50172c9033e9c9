package controlplane

import (
	"slices"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
	"k8s.io/apimachinery/pkg/api/meta"
	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

func TestRouteDomains(t *testing.T) {
	tests := []struct {
		listener  string // "" for none
		hostnames []gatewayv1.Hostname
		want      []string
	}{
		{"", nil, []string{"*"}},
		{"", []gatewayv1.Hostname{"a.example.com", "*.example.org"}, []string{"a.example.com", "*.example.org"}},
		{"*.example.com", nil, []string{"*.example.com"}},
		{"foo.example.com", nil, []string{"foo.example.com"}},
		{"foo.example.com", []gatewayv1.Hostname{"foo.example.com"}, []string{"foo.example.com"}},
		{"foo.example.com", []gatewayv1.Hostname{"bar.example.com"}, nil},
		// A wildcard listener takes one or more labels in front, not the bare domain.
		{"*.example.com", []gatewayv1.Hostname{"foo.example.com", "a.b.example.com", "example.com", "foo.example.net", "fooexample.com"}, []string{"foo.example.com", "a.b.example.com"}},
		{"*.example.com", []gatewayv1.Hostname{"example.com"}, nil},
		// A wildcard route on an exact listener serves the listener's name.
		{"foo.example.com", []gatewayv1.Hostname{"*.example.com"}, []string{"foo.example.com"}},
		{"a.foo.example.com", []gatewayv1.Hostname{"*.example.com"}, []string{"a.foo.example.com"}},
		{"example.com", []gatewayv1.Hostname{"*.example.com"}, nil},
		// Two wildcards: the more specific one.
		{"*.example.com", []gatewayv1.Hostname{"*.foo.example.com"}, []string{"*.foo.example.com"}},
		{"*.foo.example.com", []gatewayv1.Hostname{"*.example.com"}, []string{"*.foo.example.com"}},
		{"*.example.com", []gatewayv1.Hostname{"*.example.com"}, []string{"*.example.com"}},
		// Two route hostnames giving the same name: once.
		{"a.foo.example.com", []gatewayv1.Hostname{"*.example.com", "*.foo.example.com"}, []string{"a.foo.example.com"}},
	}
	for _, tt := range tests {
		l := gatewayv1.Listener{Name: "l", Port: 80, Protocol: gatewayv1.HTTPProtocolType}
		if tt.listener != "" {
			l.Hostname = ptrTo(gatewayv1.Hostname(tt.listener))
		}
		if got := routeDomains(tt.hostnames, l); !cmp.Equal(got, tt.want) {
			t.Errorf("routeDomains(%q, listener hostname %q) = %q; want %q", tt.hostnames, tt.listener, got, tt.want)
		}
	}
}

// TestListenerHostnameMatching: a route whose hostnames meet none of the
// hostnames of the listeners it names is not Accepted (reason
// NoMatchingListenerHostname), counts in no listener's attachedRoutes and
// serves nothing through the Gateway; a route that meets one serves the
// names both have in common there.
func TestListenerHostnameMatching(t *testing.T) {
	route := func(name, hostnames, parentRefs string) string {
		return `apiVersion: gateway.networking.k8s.io/v1
kind: HTTPRoute
metadata: {name: ` + name + `, namespace: bookinfo, generation: 3}
spec:
  parentRefs: ` + parentRefs + `
  hostnames: ` + hostnames + `
  rules: [{backendRefs: [{name: reviews, port: 9080}]}]
---
`
	}
	b := NewBuilder(BuilderOptions{})
	snap, _ := b.Build(inputs(t, bookinfo(`apiVersion: gateway.networking.k8s.io/v1
kind: Gateway
metadata: {name: ingress, namespace: bookinfo}
spec:
  gatewayClassName: meshlet
  listeners:
  - {name: wild, port: 80, protocol: HTTP, hostname: "*.example.com"}
  - {name: exact, port: 8080, protocol: HTTP, hostname: foo.example.org}
---
`+route("elsewhere", `[foo.example.net]`, `[{name: ingress}]`)+
		route("bare", `[example.com]`, `[{name: ingress}]`)+
		route("sub", `[a.b.example.com, foo.example.net]`, `[{name: ingress}]`)+
		route("any", `[]`, `[{name: ingress}]`)+
		route("wildroute", `["*.example.org"]`, `[{name: ingress, sectionName: exact}]`)+
		route("sectioned", `[foo.example.com]`, `[{name: ingress, sectionName: exact}]`))...))

	for _, tt := range []struct {
		route  string
		ok     bool
		reason string
	}{
		{"elsewhere", false, "NoMatchingListenerHostname"},
		{"bare", false, "NoMatchingListenerHostname"},
		{"sub", true, "Accepted"},
		{"any", true, "Accepted"},
		{"wildroute", true, "Accepted"},
		{"sectioned", false, "NoMatchingListenerHostname"},
	} {
		st := statusOf(t, b, KindHTTPRoute, "bookinfo", tt.route)
		if len(st.Parents) != 1 {
			t.Fatalf("route %s: %d status.parents entries; want 1", tt.route, len(st.Parents))
		}
		c := meta.FindStatusCondition(st.Parents[0].Conditions, "Accepted")
		if c == nil || (c.Status == "True") != tt.ok || c.Reason != tt.reason {
			t.Errorf("route %s: Accepted = %+v; want ok %v, reason %s", tt.route, c, tt.ok, tt.reason)
		}
	}
	msg := meta.FindStatusCondition(statusOf(t, b, KindHTTPRoute, "bookinfo", "sectioned").Parents[0].Conditions, "Accepted").Message
	for _, want := range []string{`"foo.example.com"`, `"foo.example.org" (listener "exact")`} {
		if !strings.Contains(msg, want) {
			t.Errorf("Accepted message %q; want it to name %s", msg, want)
		}
	}

	gw := statusOf(t, b, KindGateway, "bookinfo", "ingress")
	attached := map[string]int32{}
	for _, l := range gw.Listeners {
		attached[string(l.Name)] = l.AttachedRoutes
	}
	if want := map[string]int32{"wild": 2, "exact": 2}; !cmp.Equal(attached, want) {
		t.Errorf("attachedRoutes = %v; want %v (wild: sub and any; exact: any and wildroute)", attached, want)
	}

	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "ingress"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/ingress")
	}
	// listener -> "domains: routes" per virtual host, sorted (the proxy
	// picks a host by exact name, then longest wildcard, whatever the order)
	got := map[string][]string{}
	for _, l := range cfg.Listeners {
		for _, vh := range l.VirtualHosts {
			var names []string
			for _, r := range vh.Routes {
				names = append(names, r.Name)
			}
			got[l.Name] = append(got[l.Name], strings.Join(vh.Domains, ",")+": "+strings.Join(names, ","))
		}
	}
	want := map[string][]string{
		"wild":  {"*.example.com: any.bookinfo.0", "a.b.example.com: sub.bookinfo.0"},
		"exact": {"foo.example.org: any.bookinfo.0,wildroute.bookinfo.0"},
	}
	for _, v := range got {
		slices.Sort(v)
	}
	if d := cmp.Diff(want, got); d != "" {
		t.Errorf("virtual hosts (-want +got):\n%s", d)
	}
}
