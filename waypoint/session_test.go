package waypoint

import (
	"encoding/base64"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// sessionClient sends GETs through h carrying one session token, as a
// browser (cookie) or an API client (header) would, and remembers the token
// each answer gives.
type sessionClient struct {
	t      *testing.T
	h      *harness
	client *http.Client
	cookie string // cookie name; "" for header
	header string
	token  string
	given  *http.Cookie // the last Set-Cookie of the session cookie
}

// get returns the answering backend's name and whether the answer gave a
// new token.
func (c *sessionClient) get(path string) (string, bool) {
	c.t.Helper()
	req, _ := http.NewRequest(http.MethodGet, c.h.url+path, nil)
	if c.token != "" {
		if c.cookie != "" {
			req.AddCookie(&http.Cookie{Name: "other", Value: "x"})
			req.AddCookie(&http.Cookie{Name: c.cookie, Value: c.token})
		} else {
			req.Header.Set(c.header, c.token)
		}
	}
	resp, err := c.client.Do(req)
	if err != nil {
		c.t.Fatal(err)
	}
	b, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		c.t.Fatalf("GET %s = %d %s", path, resp.StatusCode, b)
	}
	given := false
	if c.cookie != "" {
		for _, ck := range resp.Cookies() {
			if ck.Name == c.cookie {
				c.token, c.given, given = ck.Value, ck, true
			}
		}
	} else if v := resp.Header.Get(c.header); v != "" {
		c.token, given = v, true
	}
	return string(b), given
}

// TestSessionPersistence: a route with session persistence gives each new
// client a token (cookie with the route's path, HttpOnly, SameSite=Lax, a
// browser-session cookie; or a header), and the client's requests carrying
// it keep reaching the endpoint that first answered, across a 50/50 split
// of two services, after its service's weight drops to 0 and across config
// pushes; an unknown or garbled token, an endpoint gone from the config, an
// endpoint that no longer answers, and an expired session each get a
// balanced pick and a new token. The token does not carry the pod's address.
func TestSessionPersistence(t *testing.T) {
	servers := map[string]*httptest.Server{}
	addr := map[string]string{}
	for _, n := range []string{"a", "b", "c", "d"} {
		s := httptest.NewServer(&named{name: n})
		t.Cleanup(s.Close)
		servers[n], addr[n] = s, s.Listener.Addr().String()
	}
	config := func(w1, w2 uint32, v1 ...string) *Config {
		var eps []string
		for _, n := range v1 {
			eps = append(eps, addr[n])
		}
		split := []model.WeightedDestination{{Cluster: "v1", Weight: w1}, {Cluster: "v2", Weight: w2}}
		return oneRoute([]model.L7Cluster{clusterOf("v1", eps...), clusterOf("v2", addr["c"], addr["d"])},
			model.L7Route{Name: "hdr", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/api"}}}, Destinations: split,
				Session: &model.SessionPersistence{Header: "x-session"}},
			model.L7Route{Name: "timed", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/timed"}}}, Destinations: split,
				Session: &model.SessionPersistence{Cookie: "timed", Timeout: time.Second, Permanent: true}},
			model.L7Route{Name: "shop", Matches: []model.RouteMatch{{URI: &model.StringMatch{PathPrefix: "/shop"}}}, Destinations: split,
				Session: &model.SessionPersistence{Cookie: "shop-session", CookiePath: "/shop"}},
			model.L7Route{Name: "plain", Destinations: split})
	}
	h := start(t, config(50, 50, "a", "b"), nil)
	http1 := newClient(t)
	fresh := func(cookie, header string) *sessionClient {
		return &sessionClient{t: t, h: h, client: http1, cookie: cookie, header: header}
	}

	// New clients: a token each, spread over both services; then stuck.
	seen := map[string]int{}
	var clients []*sessionClient
	for range 24 {
		c := fresh("shop-session", "")
		first, given := c.get("/shop/cart")
		if !given {
			t.Fatalf("a new client's first answer gave no session cookie")
		}
		if g := c.given; g.Path != "/shop" || !g.HttpOnly || g.SameSite != http.SameSiteLaxMode || g.MaxAge != 0 || !g.Expires.IsZero() || g.Secure {
			t.Fatalf("session cookie = %q; want Path=/shop; HttpOnly; SameSite=Lax, no Max-Age or Expires, not Secure over plain HTTP", g.Raw)
		}
		raw, err := base64.RawURLEncoding.DecodeString(c.token)
		if err != nil || strings.Contains(c.token, "127.0.0.1") || strings.Contains(string(raw), "127.0.0.1") {
			t.Fatalf("token %q (%v) shows the endpoint's address or is not base64url", c.token, err)
		}
		for range 5 {
			if got, given := c.get("/shop/item"); got != first || given {
				t.Fatalf("with its session the client reached %s (new token %v); its first answer came from %s", got, given, first)
			}
		}
		seen[first]++
		clients = append(clients, c)
	}
	if seen["a"]+seen["b"] == 0 || seen["c"]+seen["d"] == 0 {
		t.Fatalf("24 new clients reached %v; want both services of the 50/50 split", seen)
	}
	if n, _ := fresh("", "").get("/other"); n == "" {
		t.Fatal("no answer without session persistence")
	}

	// v1's weight drops to 0: its sessions stay (GEP-1619), new clients go
	// to v2 only.
	if err := h.proxy.Update(config(0, 100, "a", "b")); err != nil {
		t.Fatal(err)
	}
	for _, c := range clients {
		before := c.token
		got, given := c.get("/shop")
		if given || c.token != before {
			t.Fatalf("a config push replaced a session's token")
		}
		if got == "" {
			t.Fatal("empty answer")
		}
	}
	for range 10 {
		if got, _ := fresh("shop-session", "").get("/shop"); got != "c" && got != "d" {
			t.Fatalf("a new client reached %s with v1 at weight 0", got)
		}
	}

	// The endpoint of a session leaves: the session moves, with a new token.
	var onA *sessionClient
	for _, c := range clients {
		if got, _ := c.get("/shop"); got == "a" {
			onA = c
			break
		}
	}
	if onA == nil {
		t.Fatal("no session on endpoint a among 24 (12 expected)")
	}
	if err := h.proxy.Update(config(50, 50, "b")); err != nil {
		t.Fatal(err)
	}
	if got, given := onA.get("/shop"); got == "a" || !given {
		t.Fatalf("a session whose endpoint left reached %s (new token %v); want another endpoint and a new token", got, given)
	}
	moved, _ := onA.get("/shop")
	for range 3 {
		if got, given := onA.get("/shop"); got != moved || given {
			t.Fatalf("after moving to %s the session reached %s (new token %v)", moved, got, given)
		}
	}

	// An endpoint that stops answering: the retry's endpoint (of the same
	// service) answers and takes the session.
	if err := h.proxy.Update(config(50, 50, "a", "b")); err != nil {
		t.Fatal(err)
	}
	var onB *sessionClient
	for _, c := range clients {
		if got, _ := c.get("/shop"); got == "b" {
			onB = c
			break
		}
	}
	if onB == nil {
		t.Fatal("no session on endpoint b")
	}
	servers["b"].Close()
	got, given := onB.get("/shop")
	if got == "b" || !given {
		t.Fatalf("a session whose endpoint is down reached %s (new token %v)", got, given)
	}
	if again, given := onB.get("/shop"); again != got || given {
		t.Fatalf("the moved session reached %s then %s (new token %v)", got, again, given)
	}

	// Garbled and foreign tokens are ignored: a balanced pick, a new token.
	for _, tok := range []string{"x", strings.Repeat("A", 34), onB.token[:33] + "_", onB.token + "A"} {
		c := fresh("shop-session", "")
		c.token = tok
		if _, given := c.get("/shop"); !given || c.token == tok {
			t.Fatalf("token %q was taken; want a new one", tok)
		}
	}

	// Header sessions.
	hc := fresh("", "X-Session")
	first, given := hc.get("/api/v1")
	if !given {
		t.Fatal("a new client got no X-Session header")
	}
	for range 5 {
		if got, given := hc.get("/api/v2"); got != first || given {
			t.Fatalf("header session reached %s (new %v), first %s", got, given, first)
		}
	}

	// A permanent cookie lasts Timeout in the browser; the session ends then
	// in the proxy too.
	tc := fresh("timed", "")
	if _, given := tc.get("/timed"); !given || tc.given.MaxAge != 1 || tc.given.Path != "/" {
		t.Fatalf("timed session cookie = %v; want Max-Age=1, Path=/", tc.given)
	}
	tok := tc.token
	if _, given := tc.get("/timed"); given {
		t.Fatal("a live timed session got a new token")
	}
	time.Sleep(2100 * time.Millisecond)
	if _, given := tc.get("/timed"); !given || tc.token == tok {
		t.Fatal("an expired session kept its token; want a new one")
	}
}

// TestSessionPersistenceValidate: the config a proxy refuses names the
// field and the fix.
func TestSessionPersistenceValidate(t *testing.T) {
	for _, tc := range []struct {
		s    model.SessionPersistence
		want string
	}{
		{model.SessionPersistence{}, "set cookie or header"},
		{model.SessionPersistence{Cookie: "a", Header: "b"}, "set cookie or header"},
		{model.SessionPersistence{Cookie: "a b"}, "not a token"},
		{model.SessionPersistence{Cookie: strings.Repeat("c", 129)}, "not a token"},
		{model.SessionPersistence{Header: "x:y"}, "not a valid field name"},
		{model.SessionPersistence{Cookie: "a", CookiePath: "shop"}, "starting with /"},
		{model.SessionPersistence{Cookie: "a", CookiePath: "/a;Domain=evil"}, "starting with /"},
		{model.SessionPersistence{Header: "h", CookiePath: "/"}, "cookies only"},
		{model.SessionPersistence{Cookie: "a", Timeout: -time.Second}, "negative"},
		{model.SessionPersistence{Cookie: "a", Permanent: true}, "needs a cookie and a timeout"},
	} {
		err := tc.s.Validate()
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%+v: Validate() = %v; want %q", tc.s, err, tc.want)
		}
	}
	ok := model.SessionPersistence{Cookie: "JSESSIONID", CookiePath: "/app", Timeout: time.Hour, Permanent: true}
	if err := ok.Validate(); err != nil {
		t.Errorf("%+v: Validate() = %v", ok, err)
	}
	cfg := oneRoute([]model.L7Cluster{clusterOf("c", "127.0.0.1:1")},
		model.L7Route{Name: "r", Destinations: to("c"), Session: &model.SessionPersistence{Cookie: "bad name"}})
	if _, err := New(Options{Config: cfg}); err == nil || !strings.Contains(err.Error(), "session: cookie name") {
		t.Errorf("New with a bad session cookie name = %v; want the field named", err)
	}
}

// TestSessionDraining: an endpoint marked draining (its pod terminating
// while it still serves) takes no balanced request, but the sessions
// pinned to it still reach it, until it leaves the config; the proxy's
// endpoint states show it draining.
func TestSessionDraining(t *testing.T) {
	a := backend(t, &named{name: "a"})
	b := backend(t, &named{name: "b"})
	config := func(bDraining bool, eps ...string) *Config {
		c := model.L7Cluster{Name: "web"}
		for _, e := range eps {
			c.Endpoints = append(c.Endpoints, model.L7Endpoint{Address: e, Draining: bDraining && e == b})
		}
		return oneRoute([]model.L7Cluster{c}, model.L7Route{Name: "web", Destinations: to("web"),
			Session: &model.SessionPersistence{Cookie: "s"}})
	}
	h := start(t, config(false, a, b), nil)
	client := newClient(t)
	var onB *sessionClient
	for range 50 {
		c := &sessionClient{t: t, h: h, client: client, cookie: "s"}
		if got, _ := c.get("/"); got == "b" {
			onB = c
			break
		}
	}
	if onB == nil {
		t.Fatal("50 new sessions, none on b")
	}
	if err := h.proxy.Update(config(true, a, b)); err != nil {
		t.Fatal(err)
	}
	for range 20 {
		if got, _ := (&sessionClient{t: t, h: h, client: client, cookie: "s"}).get("/"); got != "a" {
			t.Fatalf("a new session reached %s while b drains", got)
		}
		if got, given := onB.get("/"); got != "b" || given {
			t.Fatalf("the session pinned to draining b reached %s (new token %v)", got, given)
		}
	}
	states := h.proxy.EndpointStates(time.Now())
	drains := 0
	for _, s := range states {
		if s.Address == b && s.Draining {
			drains++
		}
	}
	if drains == 0 {
		t.Errorf("endpoint states %+v; want b shown draining", states)
	}
	if err := h.proxy.Update(config(true, a)); err != nil {
		t.Fatal(err)
	}
	if got, given := onB.get("/"); got != "a" || !given {
		t.Fatalf("after b left its session reached %s (new token %v); want a, re-pinned", got, given)
	}
}
