package meshtest

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/hmac"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"

	"github.com/meshlet/meshlet/test/lab"
)

// jwtSigner makes ES256 tokens and their JWKS.
type jwtSigner struct {
	key *ecdsa.PrivateKey
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

func (s jwtSigner) jwks() string {
	x, y := make([]byte, 32), make([]byte, 32)
	s.key.X.FillBytes(x)
	s.key.Y.FillBytes(y)
	b, _ := json.Marshal(map[string]any{"keys": []any{map[string]string{"kty": "EC", "crv": "P-256", "kid": "k1", "alg": "ES256", "use": "sig", "x": b64(x), "y": b64(y)}}})
	return string(b)
}

func (s jwtSigner) token(header, claims map[string]any) string {
	h, _ := json.Marshal(header)
	c, _ := json.Marshal(claims)
	signed := b64(h) + "." + b64(c)
	d := sha256.Sum256([]byte(signed))
	r, ss, _ := ecdsa.Sign(rand.Reader, s.key, d[:])
	sig := make([]byte, 64)
	r.FillBytes(sig[:32])
	ss.FillBytes(sig[32:])
	return signed + "." + b64(sig)
}

// TestWaypointJWTAndPathPolicy: a RequestAuthentication with an inline JWKS
// and an AuthorizationPolicy requiring a request principal, on the
// waypoint: no token 403, a valid token 200, and every forged or stale
// token 401 (expired, wrong issuer, wrong audience, alg none, HS256 keyed
// with the public key, tampered payload); and an L7 DENY on /admin holds
// against a corpus of path tricks.
func TestWaypointJWTAndPathPolicy(t *testing.T) {
	lb := meshLab(t)
	run := meshctl(t, lb)
	ns := ambientNamespace(t, lb)
	lb.Apply(t, ns, strings.Replace(echoDeployment, "replicas: 3", "replicas: 1", 1))
	lb.WaitPodsReady(t, ns, "app=echo", 1, 2*time.Minute)
	client := clientPod(t, lb, ns, "client", "client")
	svc, err := lb.Clientset().CoreV1().Services(ns).Get(t.Context(), "echo", metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	base := fmt.Sprintf("http://%s:8080", svc.Spec.ClusterIP)
	run("waypoint", "apply", "-n", ns, "--enroll-namespace")
	lb.WaitPodsReady(t, ns, "gateway.networking.k8s.io/gateway-name=waypoint", 1, 3*time.Minute)

	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	signer := jwtSigner{key}
	const issuer, audience = "https://issuer.meshlet.test", "echo"
	lb.Apply(t, ns, fmt.Sprintf(`apiVersion: security.istio.io/v1
kind: RequestAuthentication
metadata: {name: jwt}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  jwtRules:
  - issuer: %q
    audiences: [%q]
    jwks: '%s'
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: require-jwt}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: ALLOW
  rules:
  - from: [{source: {requestPrincipals: ["*"]}}]
---
apiVersion: security.istio.io/v1
kind: AuthorizationPolicy
metadata: {name: no-admin}
spec:
  targetRefs: [{kind: Gateway, group: gateway.networking.k8s.io, name: waypoint}]
  action: DENY
  rules:
  - to: [{operation: {paths: ["/admin", "/admin/*"]}}]
`, issuer, audience, signer.jwks()))

	now := time.Now().Unix()
	claims := func(mod func(map[string]any)) map[string]any {
		c := map[string]any{"iss": issuer, "sub": "alice", "aud": audience, "iat": now, "exp": now + 600}
		if mod != nil {
			mod(c)
		}
		return c
	}
	es := map[string]any{"alg": "ES256", "kid": "k1", "typ": "JWT"}
	valid := signer.token(es, claims(nil))
	status := func(path, token string) string {
		t.Helper()
		args := []string{"-n", "1", base + path}
		if token != "" {
			args = append([]string{"-H", "Authorization: Bearer " + token}, args...)
		}
		s := summary(t, lb, ns, client.Name, args...)
		for code := range s.ByStatus {
			return code
		}
		return fmt.Sprint(s.Errors)
	}
	lab.WaitFor(t, time.Minute, "the policies applied (no token: 403)", func() (bool, error) {
		got := status("/", "")
		return got == "403", fmt.Errorf("status %s", got)
	})
	if got := status("/", valid); got != "200" {
		t.Errorf("valid token: %s; want 200", got)
	}
	parts := strings.Split(valid, ".")
	payload, _ := base64.RawURLEncoding.DecodeString(parts[1])
	tampered := parts[0] + "." + b64([]byte(strings.Replace(string(payload), "alice", "admin", 1))) + "." + parts[2]
	hsHeader, _ := json.Marshal(map[string]any{"alg": "HS256", "kid": "k1", "typ": "JWT"})
	hsClaims, _ := json.Marshal(claims(nil))
	hsSigned := b64(hsHeader) + "." + b64(hsClaims)
	mac := hmac.New(sha256.New, []byte(signer.jwks()))
	mac.Write([]byte(hsSigned))
	noneHeader, _ := json.Marshal(map[string]any{"alg": "none", "typ": "JWT"})
	bad := map[string]string{
		"expired":                   signer.token(es, claims(func(c map[string]any) { c["exp"] = now - 120; c["iat"] = now - 720 })),
		"wrong issuer":              signer.token(es, claims(func(c map[string]any) { c["iss"] = "https://evil.test" })),
		"wrong audience":            signer.token(es, claims(func(c map[string]any) { c["aud"] = "other" })),
		"alg none":                  b64(noneHeader) + "." + b64(hsClaims) + ".",
		"HS256 with the public key": hsSigned + "." + b64(mac.Sum(nil)),
		"tampered payload":          tampered,
	}
	for name, tok := range bad {
		if got := status("/", tok); got != "401" {
			t.Errorf("%s: %s; want 401", name, got)
		}
	}
	for _, p := range []string{"/admin", "//admin", "/./admin", "/x/../admin", "/admin/", "/admin/users", "/%61dmin", "/admin%2Fusers", "/admin?x=1", "/admin#frag"} {
		if got := status(p, valid); got != "403" {
			t.Errorf("DENY /admin, path %q with a valid token: %s; want 403", p, got)
		}
	}
	if got := status("/administrator", valid); got != "200" {
		t.Errorf("/administrator is not /admin: %s; want 200", got)
	}
}
