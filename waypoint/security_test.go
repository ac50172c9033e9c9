package waypoint

import (
	"bufio"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/netip"
	"path"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

const issuer = "https://issuer.example"

type signer struct {
	rsa  *rsa.PrivateKey
	ec   *ecdsa.PrivateKey
	jwks string
}

func newSigner(t testing.TB) *signer {
	t.Helper()
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	ek, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	ecPub, err := ek.PublicKey.Bytes()
	if err != nil {
		t.Fatal(err)
	}
	set := map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "rsa1", "alg": "RS256", "use": "sig", "n": b64(rk.N.Bytes()), "e": b64(big.NewInt(int64(rk.E)).Bytes())},
		{"kty": "EC", "kid": "ec1", "crv": "P-256", "x": b64(ecPub[1:33]), "y": b64(ecPub[33:])},
	}}
	j, _ := json.Marshal(set)
	return &signer{rsa: rk, ec: ek, jwks: string(j)}
}

func seg(v any) string {
	b, _ := json.Marshal(v)
	return base64.RawURLEncoding.EncodeToString(b)
}

func (s *signer) token(t testing.TB, alg string, claims map[string]any) string {
	t.Helper()
	hdr := map[string]any{"alg": alg, "typ": "JWT"}
	switch alg {
	case "RS256":
		hdr["kid"] = "rsa1"
	case "ES256":
		hdr["kid"] = "ec1"
	}
	input := seg(hdr) + "." + seg(claims)
	digest := sha256.Sum256([]byte(input))
	var sig []byte
	switch alg {
	case "RS256":
		var err error
		if sig, err = rsa.SignPKCS1v15(rand.Reader, s.rsa, crypto.SHA256, digest[:]); err != nil {
			t.Fatal(err)
		}
	case "ES256":
		r, ss, err := ecdsa.Sign(rand.Reader, s.ec, digest[:])
		if err != nil {
			t.Fatal(err)
		}
		sig = append(r.FillBytes(make([]byte, 32)), ss.FillBytes(make([]byte, 32))...)
	case "HS256":
		// The classic confusion attack: HMAC keyed with the public key.
		der, _ := x509.MarshalPKIXPublicKey(&s.rsa.PublicKey)
		mac := hmac.New(sha256.New, pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}))
		mac.Write([]byte(input))
		sig = mac.Sum(nil)
	case "none":
	}
	return input + "." + base64.RawURLEncoding.EncodeToString(sig)
}

func claims(mut func(c map[string]any)) map[string]any {
	c := map[string]any{"iss": issuer, "sub": "alice", "aud": "reviews", "exp": time.Now().Add(time.Hour).Unix(), "groups": []string{"admin"}}
	if mut != nil {
		mut(c)
	}
	return c
}

func TestJWT(t *testing.T) {
	s := newSigner(t)
	var fetches atomic.Int64
	jwksAddr := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		fetches.Add(1)
		io.WriteString(w, s.jwks)
	}))
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.JWTProviders = []model.JWTProvider{{
		Name: "example", Issuer: issuer, Audiences: []string{"reviews"}, JWKSURI: "http://" + jwksAddr + "/jwks.json",
		OutputClaimToHeaders:  []model.ClaimToHeader{{Header: "X-Jwt-Sub", Claim: "sub"}},
		OutputPayloadToHeader: "X-Jwt-Payload",
	}}
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "require-jwt", Rules: []policy.Rule{{
		From: []policy.Source{{RequestPrincipals: []string{"*"}}},
	}}}}
	h := start(t, cfg, nil)
	client := newClient(t)

	valid := s.token(t, "RS256", claims(nil))
	tampered := strings.Split(valid, ".")
	tampered[1] = seg(claims(func(c map[string]any) { c["sub"] = "mallory" }))
	tests := []struct {
		name     string
		hdr      map[string]string
		path     string
		wantCode int
	}{
		{name: "valid RS256", hdr: map[string]string{"Authorization": "Bearer " + valid}, wantCode: 200},
		{name: "valid ES256", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "ES256", claims(nil))}, wantCode: 200},
		{name: "valid token in access_token param", path: "/?access_token=" + valid, wantCode: 200},
		{name: "expired", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() }))}, wantCode: 401},
		{name: "not yet valid", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(func(c map[string]any) { c["nbf"] = time.Now().Add(time.Hour).Unix() }))}, wantCode: 401},
		{name: "wrong issuer", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(func(c map[string]any) { c["iss"] = "https://evil.example" }))}, wantCode: 401},
		{name: "wrong audience", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(func(c map[string]any) { c["aud"] = []string{"ratings"} }))}, wantCode: 401},
		{name: "alg none", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "none", claims(nil))}, wantCode: 401},
		{name: "HS256 signed with the public key", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "HS256", claims(nil))}, wantCode: 401},
		{name: "tampered payload", hdr: map[string]string{"Authorization": "Bearer " + strings.Join(tampered, ".")}, wantCode: 401},
		{name: "nbf beyond int64", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(func(c map[string]any) { c["nbf"] = 1e300 }))}, wantCode: 401},
		{name: "exp as a string", hdr: map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(func(c map[string]any) { c["exp"] = "tomorrow" }))}, wantCode: 401},
		{name: "garbage", hdr: map[string]string{"Authorization": "Bearer not.a.jwt"}, wantCode: 401},
		{name: "missing token is anonymous, denied by requestPrincipals", wantCode: 403},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			p := tt.path
			if p == "" {
				p = "/"
			}
			code, body := h.get(t, client, p, tt.hdr)
			if code != tt.wantCode {
				t.Errorf("GET = %d %q; want %d", code, body, tt.wantCode)
			}
		})
	}
	// Outputs: the token is not forwarded, the claim is, and a spoofed
	// claim header from the client never reaches the app.
	h.get(t, client, "/", map[string]string{"Authorization": "Bearer " + valid})
	last := app.lastRequest()
	if last.Header.Get("Authorization") != "" || last.Header.Get("X-Jwt-Sub") != "alice" {
		t.Errorf("app saw Authorization %q, X-Jwt-Sub %q; want none and alice", last.Header.Get("Authorization"), last.Header.Get("X-Jwt-Sub"))
	}
	var payload map[string]any
	if err := decodeSegment(last.Header.Get("X-Jwt-Payload"), &payload); err != nil || payload["sub"] != "alice" {
		t.Errorf("app saw X-Jwt-Payload %q (%v); want the token's payload", last.Header.Get("X-Jwt-Payload"), err)
	}
	h.get(t, client, "/", map[string]string{"Authorization": "Bearer " + valid, "X-Jwt-Sub": "root"})
	if got := app.lastRequest().Header.Values("X-Jwt-Sub"); len(got) != 1 || got[0] != "alice" {
		t.Errorf("app saw X-Jwt-Sub %q with a spoofed header; want [alice]", got)
	}
	if n := fetches.Load(); n != 1 {
		t.Errorf("JWKS fetched %d times; want 1 (cached)", n)
	}
}

func TestJWKSFetchFailureRejects(t *testing.T) {
	s := newSigner(t)
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, &named{name: "app"}))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.JWTProviders = []model.JWTProvider{{Issuer: issuer, JWKSURI: "http://" + backend(t, failing(500)) + "/jwks"}}
	h := start(t, cfg, nil)
	if code, _ := h.get(t, newClient(t), "/", map[string]string{"Authorization": "Bearer " + s.token(t, "RS256", claims(nil))}); code != 401 {
		t.Errorf("GET with a token whose JWKS cannot be fetched = %d; want 401", code)
	}
}

// rawGet sends a request line exactly as written, bypassing client-side
// path cleaning.
func rawGet(t testing.TB, addr, target string, headers ...string) (int, string) {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(5 * time.Second))
	fmt.Fprintf(c, "GET %s HTTP/1.1\r\nHost: app.default.svc.cluster.local\r\nConnection: close\r\n", target)
	for _, h := range headers {
		fmt.Fprintf(c, "%s\r\n", h)
	}
	io.WriteString(c, "\r\n")
	resp, err := http.ReadResponse(bufio.NewReader(c), nil)
	if err != nil {
		return 0, ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func TestDenyCannotBeBypassed(t *testing.T) {
	// A lenient backend: it decodes, cleans and unifies slashes, so any
	// path the proxy lets through that means /admin reaches the secret.
	var leaked atomic.Int64
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		p := path.Clean("/" + strings.ReplaceAll(r.URL.Path, "\\", "/"))
		if p == "/admin" || strings.HasPrefix(p, "/admin/") || r.Header.Get("X-User") == "evil" {
			leaked.Add(1)
			io.WriteString(w, "SECRET")
			return
		}
		io.WriteString(w, "public")
	}))
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "deny-admin", Action: policy.Deny, Rules: []policy.Rule{
		{To: []policy.Operation{{Paths: []string{"/admin", "/admin/*"}}}},
		{When: []policy.Condition{{Key: "request.headers[x-user]", Values: []string{"evil"}}}},
	}}}
	h := start(t, cfg, nil)
	paths := []string{
		"/admin", "/admin/", "/admin/users", "//admin", "///admin/users", "/./admin", "/public/../admin",
		"/public/../../admin", "/admin%2F", "/admin%2fusers", "/public%2F..%2Fadmin", "/%61dmin", "/%2561dmin",
		"/admin%2e", "/public/%2e%2e/admin", "/public/%2E%2E%2Fadmin", "/public\\..\\admin", "/%5Cadmin",
		"/admin;jsessionid=1", "/admin?x=1", "/admin#frag", "/admin%00", "/admin%", "/admin%zz", "admin",
		"/public/.%2e/admin", "/admin/.", "/admin/..;/", "/ADMIN",
	}
	for _, p := range paths {
		code, body := rawGet(t, h.addr, p)
		if strings.Contains(body, "SECRET") {
			t.Errorf("GET %q = %d %q: reached /admin past the DENY", p, code, body)
		}
	}
	headers := [][]string{
		{"X-User: evil"}, {"x-user: evil"}, {"X-USER: evil"}, {"X-User: good", "X-User: evil"}, {"X-User:  evil  "},
	}
	for _, hs := range headers {
		code, body := rawGet(t, h.addr, "/public", hs...)
		if strings.Contains(body, "SECRET") || code != 403 {
			t.Errorf("GET /public with %q = %d %q; want 403", hs, code, body)
		}
	}
	if n := leaked.Load(); n != 0 {
		t.Errorf("backend served the secret %d times", n)
	}
	// The corpus must not be vacuous: a plain public path gets through.
	if code, body := rawGet(t, h.addr, "/public"); code != 200 || body != "public" {
		t.Errorf("GET /public = %d %q; want 200 public", code, body)
	}
}

func TestInternalHeadersStripped(t *testing.T) {
	app := &named{name: "app"}
	h := start(t, oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")}), nil)
	h.get(t, newClient(t), "/", map[string]string{"X-Forwarded-Client-Cert": "By=spiffe://cluster.local/ns/x/sa/admin", "X-Envoy-Peer-Metadata": "x"})
	last := app.lastRequest()
	if last.Header.Get("X-Forwarded-Client-Cert") != "" || last.Header.Get("X-Envoy-Peer-Metadata") != "" {
		t.Errorf("app saw client-supplied internal headers: %v", last.Header)
	}
}

func TestNormalizePath(t *testing.T) {
	tests := []struct {
		in, want string
		wantErr  bool
	}{
		{in: "/", want: "/"},
		{in: "/a/b", want: "/a/b"},
		{in: "//a///b/", want: "/a/b/"},
		{in: "/a/./b/../c", want: "/a/c"},
		{in: "/../../a", want: "/a"},
		{in: "/a/..", want: "/"},
		{in: "/a%2Fb", want: "/a/b"},
		{in: "/a%5cb", want: "/a/b"},
		{in: "/a\\b", want: "/a/b"},
		{in: "/%61%62", want: "/ab"},
		{in: "/a%2e%2e/b", want: "/a../b"},
		{in: "/x/%2e%2e/b", want: "/b"},
		{in: "/a%20b", want: "/a%20b"},
		{in: "/a%3fb", want: "/a%3Fb"},
		{in: "/%2561", want: "/%2561"},
		{in: "/ADMIN", want: "/ADMIN"},
		{in: "/a%00", wantErr: true},
		{in: "/a%", wantErr: true},
		{in: "/a%g1", wantErr: true},
		{in: "a", wantErr: true},
		{in: "/a#b", wantErr: true},
	}
	for _, tt := range tests {
		got, err := normalizePath(tt.in)
		if (err != nil) != tt.wantErr || got != tt.want {
			t.Errorf("normalizePath(%q) = %q, %v; want %q, error %v", tt.in, got, err, tt.want, tt.wantErr)
		}
	}
}

func TestSpoofedClaimHeaderCannotSteerRouting(t *testing.T) {
	s := newSigner(t)
	admin, user := &named{name: "admin"}, &named{name: "user"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("admin", backend(t, admin)), clusterOf("user", backend(t, user))},
		model.L7Route{Name: "admins", Matches: []model.RouteMatch{{Headers: []model.HeaderMatch{{Name: "X-Jwt-Group", Value: model.StringMatch{Exact: "admin"}}}}}, Destinations: to("admin")},
		model.L7Route{Name: "default", Destinations: to("user")})
	cfg.L7.JWTProviders = []model.JWTProvider{{Issuer: issuer, JWKS: s.jwks, OutputClaimToHeaders: []model.ClaimToHeader{{Header: "X-Jwt-Group", Claim: "groups"}}}}
	h := start(t, cfg, nil)
	client := newClient(t)
	if _, body := h.get(t, client, "/", map[string]string{"X-Jwt-Group": "admin"}); body != "user" {
		t.Errorf("spoofed X-Jwt-Group routed to %q; want user", body)
	}
	tok := s.token(t, "RS256", claims(nil)) // groups: [admin]
	if _, body := h.get(t, client, "/", map[string]string{"Authorization": "Bearer " + tok}); body != "admin" {
		t.Errorf("validated admin claim routed to %q; want admin", body)
	}
}

func TestJWTForwardOriginalToken(t *testing.T) {
	s := newSigner(t)
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.JWTProviders = []model.JWTProvider{{Issuer: issuer, JWKS: s.jwks, ForwardOriginalToken: true,
		FromHeaders: []model.JWTHeader{{Name: "X-Token", Prefix: "Token "}}}}
	h := start(t, cfg, nil)
	tok := s.token(t, "ES256", claims(nil))
	if code, _ := h.get(t, newClient(t), "/", map[string]string{"X-Token": "Token " + tok}); code != 200 {
		t.Fatalf("GET with a token in X-Token = %d; want 200", code)
	}
	if got := app.lastRequest().Header.Get("X-Token"); got != "Token "+tok {
		t.Errorf("app saw X-Token %q; want the original token forwarded", got)
	}
	// The default location is not read when fromHeaders is set.
	if code, _ := h.get(t, newClient(t), "/", map[string]string{"Authorization": "Bearer garbage"}); code != 200 {
		t.Errorf("GET with garbage in an unconfigured location = %d; want 200 (not a token location)", code)
	}
}

// A policy whose targetRefs name a Service applies to requests for that
// service only — chosen by the address the client dialled, never by the
// Host header — while a policy on the waypoint itself applies to all.
func TestServiceScopedPolicies(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{
		{Namespace: "shop", Name: "booking-only-jwt", Action: policy.Allow, Services: []string{"booking.shop.svc.cluster.local"},
			Rules: []policy.Rule{{From: []policy.Source{{RequestPrincipals: []string{"*"}}}}}},
		{Namespace: "shop", Name: "no-delete", Action: policy.Deny, Rules: []policy.Rule{{To: []policy.Operation{{Methods: []string{"DELETE"}}}}}},
	}
	var dialled atomic.Value
	dialled.Store("")
	h := start(t, cfg, func(o *Options) {
		o.Peer = func(*http.Request) Peer { return Peer{DestinationService: dialled.Load().(string)} }
	})
	tests := []struct {
		service, method, host string
		want                  int
	}{
		{"booking.shop.svc.cluster.local", http.MethodGet, "", http.StatusForbidden},
		{"booking.shop.svc.cluster.local", http.MethodGet, "order.shop.svc.cluster.local", http.StatusForbidden},
		{"order.shop.svc.cluster.local", http.MethodGet, "", http.StatusOK},
		{"order.shop.svc.cluster.local", http.MethodGet, "booking.shop.svc.cluster.local", http.StatusOK},
		{"", http.MethodGet, "", http.StatusOK},
		{"order.shop.svc.cluster.local", http.MethodDelete, "", http.StatusForbidden},
	}
	for _, tt := range tests {
		dialled.Store(tt.service)
		req, _ := http.NewRequest(tt.method, h.url+"/", nil)
		if tt.host != "" {
			req.Host = tt.host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("%s to service %q with Host %q = %d; want %d", tt.method, tt.service, tt.host, resp.StatusCode, tt.want)
		}
	}
}

// A RequestAuthentication targeting a Service checks only that service's
// requests: a bad token sent to another service of the same waypoint is
// not this provider's business (its own policies decide), while the
// targeted service answers 401, whatever the Host header says.
func TestServiceScopedJWT(t *testing.T) {
	s := newSigner(t)
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.JWTProviders = []model.JWTProvider{{Name: "booking-jwt", Issuer: issuer, JWKS: s.jwks, Services: []string{"booking.shop.svc.cluster.local"}}}
	var dialled atomic.Value
	h := start(t, cfg, func(o *Options) {
		o.Peer = func(*http.Request) Peer { return Peer{DestinationService: dialled.Load().(string)} }
	})
	valid := s.token(t, "RS256", claims(nil))
	tests := []struct {
		service, host, token string
		want                 int
	}{
		{"booking.shop.svc.cluster.local", "", "not.a.token", http.StatusUnauthorized},
		{"booking.shop.svc.cluster.local", "order.shop.svc.cluster.local", "not.a.token", http.StatusUnauthorized},
		{"booking.shop.svc.cluster.local", "", valid, http.StatusOK},
		{"order.shop.svc.cluster.local", "", "not.a.token", http.StatusOK},
		{"order.shop.svc.cluster.local", "booking.shop.svc.cluster.local", "not.a.token", http.StatusOK},
	}
	for _, tt := range tests {
		dialled.Store(tt.service)
		req, _ := http.NewRequest(http.MethodGet, h.url+"/", nil)
		req.Header.Set("Authorization", "Bearer "+tt.token)
		if tt.host != "" {
			req.Host = tt.host
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("token %.10q to service %q (Host %q) = %d; want %d", tt.token, tt.service, tt.host, resp.StatusCode, tt.want)
		}
	}
}

// TestDestinationIPPolicy: destination.ip conditions match the address the
// client dialled (the HBONE target, here set by Options.Peer), so an ALLOW
// for a VIP lets its requests in and a DENY "when destination.ip notValues"
// denies only the others (it was never set: the ALLOW matched nothing and
// the DENY everything).
func TestDestinationIPPolicy(t *testing.T) {
	app := backend(t, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { io.WriteString(w, "ok") }))
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", app)}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.Policies = []*policy.Policy{
		{Namespace: "shop", Name: "allow-vip", Action: policy.Allow, Rules: []policy.Rule{{When: []policy.Condition{{Key: "destination.ip", Values: []string{"198.19.9.0/24"}}}}}},
		{Namespace: "shop", Name: "deny-other-vips", Action: policy.Deny, Rules: []policy.Rule{{When: []policy.Condition{{Key: "destination.ip", NotValues: []string{"198.19.9.10"}}}}}},
	}
	var dialled atomic.Value
	h := start(t, cfg, func(o *Options) {
		o.Peer = func(*http.Request) Peer { return Peer{DestinationIP: dialled.Load().(netip.Addr)} }
	})
	for _, tt := range []struct {
		dst  string
		want int
	}{
		{"198.19.9.10", http.StatusOK},
		{"198.19.9.11", http.StatusForbidden}, // allowed by the ALLOW, denied by the DENY
		{"198.19.8.10", http.StatusForbidden}, // no ALLOW matches
	} {
		dialled.Store(netip.MustParseAddr(tt.dst))
		resp, err := http.Get(h.url + "/")
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != tt.want {
			t.Errorf("request to %s = %d; want %d", tt.dst, resp.StatusCode, tt.want)
		}
	}
}

// TestJWTAlgorithmsAndCookies: the other asymmetric algorithms Envoy's JWT
// filter takes (RS384, PS256, PS512, ES384) verify against their keys, an
// ES384 token against a P-256 key does not, and a provider with fromCookies
// finds the token in its cookie and removes just that cookie.
func TestJWTAlgorithmsAndCookies(t *testing.T) {
	rk, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		t.Fatal(err)
	}
	p384, err := ecdsa.GenerateKey(elliptic.P384(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	p256, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	b64 := base64.RawURLEncoding.EncodeToString
	ecJWK := func(kid, crv string, k *ecdsa.PrivateKey) map[string]string {
		pub, err := k.PublicKey.Bytes()
		if err != nil {
			t.Fatal(err)
		}
		n := (len(pub) - 1) / 2
		return map[string]string{"kty": "EC", "kid": kid, "crv": crv, "x": b64(pub[1 : 1+n]), "y": b64(pub[1+n:])}
	}
	set, _ := json.Marshal(map[string]any{"keys": []map[string]string{
		{"kty": "RSA", "kid": "rsa", "n": b64(rk.N.Bytes()), "e": b64(big.NewInt(int64(rk.E)).Bytes())},
		ecJWK("p384", "P-384", p384), ecJWK("p256", "P-256", p256),
	}})
	sign := func(alg, kid string) string {
		input := seg(map[string]any{"alg": alg, "kid": kid}) + "." + seg(claims(nil))
		hash := map[string]crypto.Hash{"256": crypto.SHA256, "384": crypto.SHA384, "512": crypto.SHA512}[alg[2:]]
		h := hash.New()
		h.Write([]byte(input))
		digest := h.Sum(nil)
		var sig []byte
		switch alg[:2] {
		case "RS":
			sig, err = rsa.SignPKCS1v15(rand.Reader, rk, hash, digest)
		case "PS":
			sig, err = rsa.SignPSS(rand.Reader, rk, hash, digest, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash})
		case "ES":
			k := map[string]*ecdsa.PrivateKey{"p384": p384, "p256": p256}[kid]
			var r, s *big.Int
			r, s, err = ecdsa.Sign(rand.Reader, k, digest)
			n := (k.Curve.Params().BitSize + 7) / 8
			sig = append(r.FillBytes(make([]byte, n)), s.FillBytes(make([]byte, n))...)
		}
		if err != nil {
			t.Fatal(err)
		}
		return input + "." + b64(sig)
	}
	app := &named{name: "app"}
	cfg := oneRoute([]model.L7Cluster{clusterOf("app", backend(t, app))}, model.L7Route{Name: "r", Destinations: to("app")})
	cfg.L7.JWTProviders = []model.JWTProvider{
		{Name: "header", Issuer: issuer, JWKS: string(set)},
		{Name: "cookie", Issuer: issuer, JWKS: string(set), FromCookies: []string{"session"}},
	}
	cfg.Policies = []*policy.Policy{{Namespace: "default", Name: "require-jwt", Rules: []policy.Rule{{
		From: []policy.Source{{RequestPrincipals: []string{"*"}}},
	}}}}
	h := start(t, cfg, nil)
	client := newClient(t)
	for _, tt := range []struct {
		alg, kid string
		want     int
	}{
		{"RS384", "rsa", 200}, {"PS256", "rsa", 200}, {"PS512", "rsa", 200}, {"ES384", "p384", 200},
		{"ES384", "p256", 401}, // the right algorithm, a key on another curve
	} {
		if code, body := h.get(t, client, "/", map[string]string{"Authorization": "Bearer " + sign(tt.alg, tt.kid)}); code != tt.want {
			t.Errorf("%s token (key %s) = %d %q; want %d", tt.alg, tt.kid, code, body, tt.want)
		}
	}
	code, body := h.get(t, client, "/", map[string]string{"Cookie": "theme=dark; session=" + sign("ES384", "p384") + "; lang=en"})
	if code != 200 {
		t.Fatalf("token in the session cookie = %d %q; want 200", code, body)
	}
	if got := app.lastRequest().Header.Get("Cookie"); got != "theme=dark; lang=en" {
		t.Errorf("app saw Cookie %q; want the other cookies only (the token is not forwarded)", got)
	}
	if code, _ := h.get(t, client, "/", map[string]string{"Cookie": "session=" + sign("ES384", "p256")}); code != 401 {
		t.Errorf("a bad token in the session cookie = %d; want 401", code)
	}
}
