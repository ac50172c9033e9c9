package controlplane

import (
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/google/go-cmp/cmp"

	"github.com/meshlet/meshlet/pkg/model"
)

// sessionsByPath maps each route of the waypoint's reviews virtual host to
// its session persistence, by the route's path match ("" for none).
func sessionsByPath(t *testing.T, cfg *model.L7Config) map[string]*model.SessionPersistence {
	t.Helper()
	out := map[string]*model.SessionPersistence{}
	for _, r := range cfg.Listeners[0].VirtualHosts[0].Routes {
		key := ""
		if len(r.Matches) == 1 && r.Matches[0].URI != nil {
			u := r.Matches[0].URI
			key = u.Exact + u.PathPrefix + u.Prefix + u.Regex
		}
		out[key] = r.Session
	}
	return out
}

// labelledBookinfo builds bookinfo (with extra documents) whose reviews
// Service carries labels (a YAML flow map's entries), wanting no rejection,
// and returns the waypoint's L7 config.
func labelledBookinfo(t *testing.T, labels string, extra ...string) *model.L7Config {
	t.Helper()
	return labelledBookinfoWarned(t, labels, "", extra...)
}

// labelledBookinfoWarned is labelledBookinfo wanting the one warning
// containing warned (none when it is "").
func labelledBookinfoWarned(t *testing.T, labels, warned string, extra ...string) *model.L7Config {
	t.Helper()
	docs := bookinfo(extra...)
	const svc = 4 // bookinfo's reviews Service
	docs[svc] = strings.Replace(docs[svc], "metadata: {name: reviews, namespace: bookinfo}",
		"metadata: {name: reviews, namespace: bookinfo, labels: {"+labels+"}}", 1)
	snap, rej := mustBuild(t, inputs(t, docs...))
	switch {
	case warned == "" && len(rej) != 0:
		t.Errorf("rejections = %v; want none", rej)
	case warned != "" && (len(rej) != 1 || !hasRejection(rej, warned, true)):
		t.Errorf("rejections = %v; want one warning %q", rej, warned)
	}
	cfg, ok := snap.L7Config(model.NamespacedName{Namespace: "bookinfo", Name: "waypoint"})
	if !ok {
		t.Fatal("no L7 config for bookinfo/waypoint")
	}
	return cfg
}

// TestHTTPRouteSessionPersistence: a rule's sessionPersistence reaches each
// route split from it, with the cookie Path GEP-1619 reads from its path
// match; without a sessionName each rule gets its own generated name;
// Header type, absoluteTimeout and a Permanent cookie are carried.
func TestHTTPRouteSessionPersistence(t *testing.T) {
	cfg := bookinfoWaypoint(t, reviewsHTTPRoute(`  - matches: [{path: {type: PathPrefix, value: /shop/}}, {path: {type: Exact, value: /login}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {}
  - matches: [{path: {type: RegularExpression, value: "/p1/p2/[a-z]+/p3"}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: JSESSIONID, absoluteTimeout: 1h, cookieConfig: {lifetimeType: Permanent}}
  - matches: [{path: {type: PathPrefix, value: /api}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: X-Session, type: Header, absoluteTimeout: 30m}
  - matches: [{path: {type: PathPrefix, value: /other}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {type: Cookie}
  - matches: [{path: {type: PathPrefix, value: /plain}}]
    backendRefs: [{name: reviews, port: 9080}]
`))
	got := sessionsByPath(t, cfg)
	gen := got["/shop/"]
	if gen == nil || !regexp.MustCompile(`^meshlet-session-[0-9a-f]{10}$`).MatchString(gen.Cookie) {
		t.Fatalf("rule 0's session = %+v; want a generated cookie name", gen)
	}
	want := map[string]*model.SessionPersistence{
		"/shop/":           {Cookie: gen.Cookie, CookiePath: "/shop"},
		"/login":           {Cookie: gen.Cookie, CookiePath: "/login"},
		"/p1/p2/[a-z]+/p3": {Cookie: "JSESSIONID", CookiePath: "/p1/p2", Timeout: time.Hour, Permanent: true},
		"/api":             {Header: "X-Session", Timeout: 30 * time.Minute},
		"/other":           got["/other"],
		"/plain":           nil,
	}
	if diff := cmp.Diff(want, got); diff != "" {
		t.Errorf("sessions by path (-want +got):\n%s", diff)
	}
	if o := got["/other"]; o == nil || o.Cookie == gen.Cookie || o.CookiePath != "/other" {
		t.Errorf("rule 3's session = %+v; want its own generated cookie (not rule 0's %q) with Path /other", o, gen.Cookie)
	}
}

// TestHTTPRouteSessionPersistenceInvalid: a sessionPersistence meshlet
// cannot apply is reported on the route, and the rule balances without it
// (its routing stays).
func TestHTTPRouteSessionPersistenceInvalid(t *testing.T) {
	for _, tc := range []struct{ sp, warned string }{
		{`{absoluteTimeout: soon}`, `rules[0].sessionPersistence: absoluteTimeout "soon" is not a positive duration`},
		{`{cookieConfig: {lifetimeType: Permanent}}`, `rules[0].sessionPersistence: a Permanent cookie needs absoluteTimeout`},
		{`{sessionName: "bad name"}`, `rules[0].sessionPersistence: session: cookie name "bad name" is not a token`},
	} {
		cfg := bookinfoWaypointWarned(t, reviewsHTTPRoute(`  - backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: `)+tc.sp+"\n", "HTTPRoute bookinfo/reviews: "+tc.warned)
		r := cfg.Listeners[0].VirtualHosts[0].Routes[0]
		if r.Session != nil || len(r.Destinations) != 1 {
			t.Errorf("%s: route = %+v; want its destination and no session", tc.sp, r)
		}
	}
}

// TestGRPCRouteSessionPersistence: a GRPCRoute rule's header session, on
// its method's route.
func TestGRPCRouteSessionPersistence(t *testing.T) {
	cfg := bookinfoWaypoint(t, `apiVersion: gateway.networking.k8s.io/v1
kind: GRPCRoute
metadata: {name: reviews, namespace: bookinfo}
spec:
  parentRefs: [{group: "", kind: Service, name: reviews, port: 9080}]
  rules:
  - matches: [{method: {service: shop.Cart, method: Add}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: cart-session, type: Header}
`)
	got := sessionsByPath(t, cfg)
	if diff := cmp.Diff(&model.SessionPersistence{Header: "cart-session"}, got["/shop.Cart/Add"]); diff != "" {
		t.Errorf("GRPCRoute session (-want +got):\n%s", diff)
	}
}

// TestLabelSessionPersistence: Istio's istio.io/persistent-session (cookie)
// and istio.io/persistent-session-header labels on a Service give its
// routes session persistence, VirtualService routes and the default route
// alike; a route rule's own sessionPersistence wins.
func TestLabelSessionPersistence(t *testing.T) {
	cfg := labelledBookinfo(t, `istio.io/persistent-session: bookinfo-session`)
	if diff := cmp.Diff(&model.SessionPersistence{Cookie: "bookinfo-session"}, cfg.Listeners[0].VirtualHosts[0].Routes[0].Session); diff != "" {
		t.Errorf("default route's session (-want +got):\n%s", diff)
	}
	cfg = labelledBookinfo(t, `istio.io/persistent-session-header: x-session`, reviewsRouting)
	for _, r := range cfg.Listeners[0].VirtualHosts[0].Routes {
		if diff := cmp.Diff(&model.SessionPersistence{Header: "x-session"}, r.Session); diff != "" {
			t.Errorf("VirtualService route %s's session (-want +got):\n%s", r.Name, diff)
		}
	}
	cfg = labelledBookinfo(t, `istio.io/persistent-session: bookinfo-session`, reviewsHTTPRoute(`  - matches: [{path: {type: PathPrefix, value: /own}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: own}
  - matches: [{path: {type: PathPrefix, value: /label}}]
    backendRefs: [{name: reviews, port: 9080}]
`))
	got := sessionsByPath(t, cfg)
	if got["/own"] == nil || got["/own"].Cookie != "own" || got["/label"] == nil || got["/label"].Cookie != "bookinfo-session" {
		t.Errorf("sessions = /own %+v, /label %+v; want the rule's own, then the label's", got["/own"], got["/label"])
	}
	if s := labelledBookinfo(t, `app: reviews`).Listeners[0].VirtualHosts[0].Routes[0].Session; s != nil {
		t.Errorf("a Service without the labels got session %+v", s)
	}
}

// TestDrainingEndpointsForSessions: a pod being deleted while still ready
// stays in its Service's cluster, marked draining, when a session route
// sends there (Istio's draining endpoints for persistent sessions), and is
// left out of every other cluster; a pod not ready is left out of both.
func TestDrainingEndpointsForSessions(t *testing.T) {
	terminating := strings.Replace(pod("bookinfo", "reviews-v3", "10.0.0.3", "n1", "app=reviews,version=v3"),
		"  uid: uid-bookinfo-reviews-v3\n", "  uid: uid-bookinfo-reviews-v3\n  deletionTimestamp: \"2026-12-06T10:00:00Z\"\n", 1)
	notReady := strings.Replace(pod("bookinfo", "reviews-v4", "10.0.0.4", "n1", "app=reviews,version=v4"),
		`status: "True"`, `status: "False"`, 1)
	endpoints := func(labels string) map[string]bool {
		t.Helper()
		cfg := labelledBookinfo(t, labels, terminating, notReady)
		out := map[string]bool{} // address -> draining
		for _, e := range cfg.Clusters[0].Endpoints {
			out[e.Address] = e.Draining
		}
		return out
	}
	if diff := cmp.Diff(map[string]bool{"10.0.0.1:8080": false, "10.0.0.2:8080": false, "10.0.0.3:8080": true},
		endpoints(`istio.io/persistent-session: s`)); diff != "" {
		t.Errorf("a session Service's cluster endpoints -> draining (-want +got):\n%s", diff)
	}
	if diff := cmp.Diff(map[string]bool{"10.0.0.1:8080": false, "10.0.0.2:8080": false},
		endpoints(`app: reviews`)); diff != "" {
		t.Errorf("another Service's cluster endpoints -> draining (-want +got):\n%s", diff)
	}
}

// TestSessionNameShared: two rules giving one sessionName are warned
// about (GEP-1619: rules never share sessions); both keep their sessions.
func TestSessionNameShared(t *testing.T) {
	cfg := bookinfoWaypointWarned(t, reviewsHTTPRoute(`  - matches: [{path: {type: PathPrefix, value: /a}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: shared}
  - matches: [{path: {type: PathPrefix, value: /b}}]
    backendRefs: [{name: reviews, port: 9080}]
    sessionPersistence: {sessionName: shared}
`), `HTTPRoute bookinfo/reviews: rules[1].sessionPersistence: sessionName "shared" is also HTTPRoute bookinfo/reviews rules[0]'s`)
	got := sessionsByPath(t, cfg)
	if got["/a"] == nil || got["/b"] == nil {
		t.Errorf("sessions = %v; want both rules' kept", got)
	}
}
