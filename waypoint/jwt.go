package waypoint

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	_ "crypto/sha256" // crypto.SHA256
	_ "crypto/sha512" // crypto.SHA384, crypto.SHA512
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
	"github.com/meshlet/meshlet/pkg/policy"
)

// JWT validation follows Istio's RequestAuthentication: a request without a
// token is unauthenticated (left to AuthorizationPolicy); a request with a
// token that fails any check is answered 401. The asymmetric algorithms
// Envoy's JWT filter accepts are: RS256/384/512 and PS256/384/512 (RSA keys
// of at least 2048 bits), ES256/384/512 (a key on the algorithm's curve);
// "none" and the HS* family are refused whatever the key set holds, so a
// public key can never be used as an HMAC secret. exp and nbf are checked with 60s of clock skew
// (Envoy's default). JWKS from jwksUri are fetched on first use, cached and
// refreshed every JWKSRefresh (Istio's default 20m); when a refresh fails the
// last good key set is kept, and when there has never been one, tokens for
// that issuer are rejected: a fetch failure never weakens the check.

const (
	jwtClockSkew      = 60 * time.Second
	maxTokenLen       = 16 << 10
	maxJWKSBytes      = 1 << 20
	jwksFetchTimeout  = 5 * time.Second
	defaultJWKSExpiry = 20 * time.Minute
)

type jwtAuthenticator struct {
	providers []*jwtProvider
	// scoped is set when some provider applies to some services only.
	scoped bool
	// outputHeaders are headers the proxy sets from tokens; client-supplied
	// values are removed first.
	outputHeaders []string
}

type jwtProvider struct {
	spec model.JWTProvider
	keys *jwks
}

// jwks is a key set, inline or fetched.
type jwks struct {
	uri     string
	client  *http.Client
	refresh time.Duration

	mu       sync.Mutex
	keys     []jwk
	fetched  time.Time
	fetching bool
	lastErr  error
}

type jwk struct {
	kid, alg string
	rsa      *rsa.PublicKey
	ec       *ecdsa.PublicKey
}

func newJWTAuthenticator(specs []model.JWTProvider, old *jwtAuthenticator, opts *Options) *jwtAuthenticator {
	if len(specs) == 0 {
		return nil
	}
	a := &jwtAuthenticator{}
	for _, s := range specs {
		a.scoped = a.scoped || len(s.Services) > 0
		p := &jwtProvider{spec: s}
		if s.JWKS != "" {
			keys, err := parseJWKS([]byte(s.JWKS))
			p.keys = &jwks{keys: keys, lastErr: err, fetched: time.Now()}
		} else {
			if old != nil {
				for _, op := range old.providers {
					if op.keys.uri == s.JWKSURI {
						p.keys = op.keys
					}
				}
			}
			if p.keys == nil {
				client := opts.JWKSClient
				if client == nil {
					client = &http.Client{Timeout: jwksFetchTimeout}
				}
				refresh := opts.JWKSRefresh
				if refresh == 0 {
					refresh = defaultJWKSExpiry
				}
				p.keys = &jwks{uri: s.JWKSURI, client: client, refresh: refresh}
			}
		}
		a.providers = append(a.providers, p)
		if s.OutputPayloadToHeader != "" {
			a.outputHeaders = append(a.outputHeaders, s.OutputPayloadToHeader)
		}
		for _, c := range s.OutputClaimToHeaders {
			a.outputHeaders = append(a.outputHeaders, c.Header)
		}
	}
	return a
}

// tokenLocation is where a token was found, so it can be removed.
type tokenLocation struct {
	header, prefix, param, cookie string
}

func (p *jwtProvider) locations() []tokenLocation {
	if len(p.spec.FromHeaders) == 0 && len(p.spec.FromParams) == 0 && len(p.spec.FromCookies) == 0 {
		return []tokenLocation{{header: "Authorization", prefix: "Bearer "}, {param: "access_token"}}
	}
	var out []tokenLocation
	for _, h := range p.spec.FromHeaders {
		out = append(out, tokenLocation{header: h.Name, prefix: h.Prefix})
	}
	for _, q := range p.spec.FromParams {
		out = append(out, tokenLocation{param: q})
	}
	for _, c := range p.spec.FromCookies {
		out = append(out, tokenLocation{cookie: c})
	}
	return out
}

func (l tokenLocation) extract(r *http.Request) (string, bool) {
	if l.cookie != "" {
		c, err := r.Cookie(l.cookie)
		if err != nil || c.Value == "" {
			return "", false
		}
		return c.Value, true
	}
	if l.header != "" {
		v := r.Header.Get(l.header)
		if v == "" {
			return "", false
		}
		if l.prefix != "" {
			if len(v) < len(l.prefix) || !strings.EqualFold(v[:len(l.prefix)], l.prefix) {
				return "", false
			}
			v = v[len(l.prefix):]
		}
		return strings.TrimSpace(v), true
	}
	q := r.URL.Query()
	if !q.Has(l.param) {
		return "", false
	}
	return q.Get(l.param), true
}

// authenticate validates the request's token(s). It returns nil, nil when no
// token is present, and an error (answer 401) when a token is invalid. It
// applies the providers' header outputs to r.
// forService returns the authenticator for a request to service: only the
// providers that apply to it, and still every output header to strip.
func (a *jwtAuthenticator) forService(service string) *jwtAuthenticator {
	if !a.scoped {
		return a
	}
	out := &jwtAuthenticator{outputHeaders: a.outputHeaders}
	for _, p := range a.providers {
		if p.spec.AppliesTo(service) {
			out.providers = append(out.providers, p)
		}
	}
	return out
}

func (a *jwtAuthenticator) authenticate(ctx context.Context, r *http.Request) (*policy.Auth, error) {
	for _, h := range a.outputHeaders {
		r.Header.Del(h)
	}
	var auth *policy.Auth
	seen := map[tokenLocation]bool{}
	for _, p := range a.providers {
		for _, loc := range p.locations() {
			if seen[loc] {
				continue
			}
			tok, ok := loc.extract(r)
			if !ok {
				continue
			}
			seen[loc] = true
			got, payload, err := a.verify(ctx, tok, loc)
			if err != nil {
				return nil, err
			}
			if auth == nil {
				auth = got.auth
			}
			got.provider.output(r, loc, payload, got.auth.Claims)
		}
	}
	return auth, nil
}

type verified struct {
	provider *jwtProvider
	auth     *policy.Auth
}

// verify checks one token against the providers whose issuer it names and
// that read tokens from loc.
func (a *jwtAuthenticator) verify(ctx context.Context, tok string, loc tokenLocation) (verified, string, error) {
	if tok == "" || len(tok) > maxTokenLen {
		return verified{}, "", errors.New("jwt: empty or oversized token")
	}
	parts := strings.Split(tok, ".")
	if len(parts) != 3 {
		return verified{}, "", errors.New("jwt: malformed token")
	}
	var hdr struct {
		Alg  string   `json:"alg"`
		Kid  string   `json:"kid"`
		Crit []string `json:"crit"`
	}
	if err := decodeSegment(parts[0], &hdr); err != nil {
		return verified{}, "", fmt.Errorf("jwt: header: %w", err)
	}
	if _, ok := jwsAlgs[hdr.Alg]; !ok {
		return verified{}, "", fmt.Errorf("jwt: algorithm %q is not accepted (RS, PS and ES 256/384/512 only)", hdr.Alg)
	}
	if len(hdr.Crit) > 0 {
		return verified{}, "", errors.New("jwt: crit header extensions are not supported")
	}
	var claims map[string]any
	if err := decodeSegment(parts[1], &claims); err != nil {
		return verified{}, "", fmt.Errorf("jwt: payload: %w", err)
	}
	sig, err := base64.RawURLEncoding.Strict().DecodeString(parts[2])
	if err != nil {
		return verified{}, "", fmt.Errorf("jwt: signature encoding: %w", err)
	}
	iss, _ := claims["iss"].(string)
	var lastErr error = fmt.Errorf("jwt: issuer %q is not configured", iss)
	for _, p := range a.providers {
		if p.spec.Issuer != iss || !containsLocation(p.locations(), loc) {
			continue
		}
		keys, err := p.keys.get(ctx)
		if err != nil {
			lastErr = err
			continue
		}
		if err := verifySignature(hdr.Alg, hdr.Kid, keys, parts[0]+"."+parts[1], sig); err != nil {
			lastErr = err
			continue
		}
		if err := checkClaims(&p.spec, claims, time.Now()); err != nil {
			lastErr = err
			continue
		}
		sub, _ := claims["sub"].(string)
		azp, _ := claims["azp"].(string)
		return verified{provider: p, auth: &policy.Auth{
			Principal: iss + "/" + sub,
			Audiences: audiences(claims),
			Presenter: azp,
			Claims:    claims,
		}}, parts[1], nil
	}
	return verified{}, "", lastErr
}

func containsLocation(list []tokenLocation, l tokenLocation) bool {
	for _, x := range list {
		if x == l {
			return true
		}
	}
	return false
}

func decodeSegment(seg string, v any) error {
	b, err := base64.RawURLEncoding.Strict().DecodeString(seg)
	if err != nil {
		return fmt.Errorf("decode base64url: %w", err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("decode json: %w", err)
	}
	return nil
}

// jwsAlg is a JWS signature algorithm (RFC 7518 §3): its hash, its scheme
// ('R' RSASSA-PKCS1-v1_5, 'P' RSASSA-PSS, 'E' ECDSA) and, for ECDSA, the
// curve its key must be on.
type jwsAlg struct {
	hash   crypto.Hash
	scheme byte
	curve  elliptic.Curve
}

var jwsAlgs = map[string]jwsAlg{
	"RS256": {crypto.SHA256, 'R', nil}, "RS384": {crypto.SHA384, 'R', nil}, "RS512": {crypto.SHA512, 'R', nil},
	"PS256": {crypto.SHA256, 'P', nil}, "PS384": {crypto.SHA384, 'P', nil}, "PS512": {crypto.SHA512, 'P', nil},
	"ES256": {crypto.SHA256, 'E', elliptic.P256()}, "ES384": {crypto.SHA384, 'E', elliptic.P384()}, "ES512": {crypto.SHA512, 'E', elliptic.P521()},
}

func verifySignature(alg, kid string, keys []jwk, signed string, sig []byte) error {
	a, ok := jwsAlgs[alg]
	if !ok {
		return fmt.Errorf("jwt: algorithm %q is not accepted", alg)
	}
	h := a.hash.New()
	h.Write([]byte(signed))
	digest := h.Sum(nil)
	tried := 0
	for _, k := range keys {
		if kid != "" && k.kid != kid {
			continue
		}
		if k.alg != "" && k.alg != alg {
			continue
		}
		switch {
		case a.scheme == 'R' && k.rsa != nil:
			tried++
			if rsa.VerifyPKCS1v15(k.rsa, a.hash, digest, sig) == nil {
				return nil
			}
		case a.scheme == 'P' && k.rsa != nil:
			tried++
			// RFC 7518 §3.5: the salt is as long as the hash.
			if rsa.VerifyPSS(k.rsa, a.hash, digest, sig, &rsa.PSSOptions{SaltLength: rsa.PSSSaltLengthEqualsHash}) == nil {
				return nil
			}
		case a.scheme == 'E' && k.ec != nil && k.ec.Curve == a.curve:
			tried++
			// RFC 7518 §3.4: R and S, each as long as the curve's order.
			n := (a.curve.Params().BitSize + 7) / 8
			if len(sig) == 2*n {
				r, s := new(big.Int).SetBytes(sig[:n]), new(big.Int).SetBytes(sig[n:])
				if ecdsa.Verify(k.ec, digest, r, s) {
					return nil
				}
			}
		}
	}
	if tried == 0 {
		return fmt.Errorf("jwt: no %s key with kid %q in the key set", alg, kid)
	}
	return errors.New("jwt: signature verification failed")
}

func checkClaims(p *model.JWTProvider, claims map[string]any, now time.Time) error {
	if exp, ok := claims["exp"]; ok {
		f, ok := exp.(float64)
		if !ok {
			return errors.New("jwt: exp is not a number")
		}
		if now.After(unixTime(f).Add(jwtClockSkew)) {
			return errors.New("jwt: token is expired")
		}
	}
	if nbf, ok := claims["nbf"]; ok {
		f, ok := nbf.(float64)
		if !ok {
			return errors.New("jwt: nbf is not a number")
		}
		if now.Add(jwtClockSkew).Before(unixTime(f)) {
			return errors.New("jwt: token is not yet valid")
		}
	}
	if len(p.Audiences) > 0 {
		aud := audiences(claims)
		for _, want := range p.Audiences {
			for _, got := range aud {
				if got == want {
					return nil
				}
			}
		}
		return errors.New("jwt: audience not allowed")
	}
	return nil
}

// unixTime converts a NumericDate, clamping values that do not fit in an
// int64 (a float64 conversion would wrap them).
func unixTime(f float64) time.Time {
	const limit = 1 << 53
	switch {
	case f > limit:
		f = limit
	case f < -limit:
		f = -limit
	}
	return time.Unix(int64(f), 0)
}

func audiences(claims map[string]any) []string {
	switch v := claims["aud"].(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, a := range v {
			if s, ok := a.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// output applies forwardOriginalToken, outputPayloadToHeader and
// outputClaimToHeaders.
func (p *jwtProvider) output(r *http.Request, loc tokenLocation, payload string, claims map[string]any) {
	if !p.spec.ForwardOriginalToken {
		switch {
		case loc.cookie != "":
			removeCookie(r, loc.cookie)
		case loc.header != "":
			r.Header.Del(loc.header)
		default:
			q := r.URL.Query()
			q.Del(loc.param)
			r.URL.RawQuery = q.Encode()
		}
	}
	if h := p.spec.OutputPayloadToHeader; h != "" {
		r.Header.Set(h, payload)
	}
	for _, c := range p.spec.OutputClaimToHeaders {
		vals := claimStrings(claims, c.Claim)
		if len(vals) > 0 {
			r.Header.Set(c.Header, strings.Join(vals, ","))
		}
	}
}

// removeCookie drops the cookie name from r's Cookie headers, keeping the
// others as they were sent.
func removeCookie(r *http.Request, name string) {
	var keep []string
	for _, line := range r.Header.Values("Cookie") {
		for part := range strings.SplitSeq(line, ";") {
			if n, _, _ := strings.Cut(strings.TrimSpace(part), "="); n != name && strings.TrimSpace(part) != "" {
				keep = append(keep, strings.TrimSpace(part))
			}
		}
	}
	r.Header.Del("Cookie")
	if len(keep) > 0 {
		r.Header.Set("Cookie", strings.Join(keep, "; "))
	}
}

func claimStrings(claims map[string]any, path string) []string {
	var cur any = claims
	for _, p := range strings.Split(path, ".") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[p]
	}
	switch v := cur.(type) {
	case string:
		return []string{v}
	case bool, float64:
		return []string{fmt.Sprint(v)}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	}
	return nil
}

// get returns the key set, fetching it when missing and refreshing it in the
// background when stale.
func (k *jwks) get(ctx context.Context) ([]jwk, error) {
	k.mu.Lock()
	if k.uri == "" {
		defer k.mu.Unlock()
		if k.lastErr != nil {
			return nil, fmt.Errorf("jwt: inline jwks: %w", k.lastErr)
		}
		return k.keys, nil
	}
	keys, stale := k.keys, time.Since(k.fetched) > k.refresh
	if keys != nil {
		if stale && !k.fetching {
			k.fetching = true
			go k.fetch(context.WithoutCancel(ctx))
		}
		k.mu.Unlock()
		return keys, nil
	}
	k.mu.Unlock()
	k.fetch(ctx)
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.keys == nil {
		return nil, fmt.Errorf("jwt: fetch jwks %s: %w", k.uri, k.lastErr)
	}
	return k.keys, nil
}

func (k *jwks) fetch(ctx context.Context) {
	ctx, cancel := context.WithTimeout(ctx, jwksFetchTimeout)
	defer cancel()
	keys, err := func() ([]jwk, error) {
		req, err := http.NewRequestWithContext(ctx, http.MethodGet, k.uri, nil)
		if err != nil {
			return nil, err
		}
		resp, err := k.client.Do(req)
		if err != nil {
			return nil, err
		}
		defer resp.Body.Close()
		if resp.StatusCode != http.StatusOK {
			return nil, fmt.Errorf("status %d", resp.StatusCode)
		}
		b, err := io.ReadAll(io.LimitReader(resp.Body, maxJWKSBytes))
		if err != nil {
			return nil, err
		}
		return parseJWKS(b)
	}()
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fetching = false
	k.lastErr = err
	if err == nil {
		k.keys, k.fetched = keys, time.Now()
	}
}

// jwkCurves are the EC curves of the ES algorithms, by JWK "crv" name.
var jwkCurves = map[string]elliptic.Curve{"P-256": elliptic.P256(), "P-384": elliptic.P384(), "P-521": elliptic.P521()}

// parseJWKS reads RSA and P-256/384/521 EC signing keys; other keys are
// skipped.
func parseJWKS(b []byte) ([]jwk, error) {
	var set struct {
		Keys []struct {
			Kty, Kid, Alg, Use, N, E, Crv, X, Y string
		} `json:"keys"`
	}
	if err := json.Unmarshal(b, &set); err != nil {
		return nil, fmt.Errorf("parse jwks: %w", err)
	}
	var out []jwk
	for _, k := range set.Keys {
		if k.Use != "" && k.Use != "sig" {
			continue
		}
		switch k.Kty {
		case "RSA":
			n, err1 := base64.RawURLEncoding.DecodeString(k.N)
			e, err2 := base64.RawURLEncoding.DecodeString(k.E)
			if err1 != nil || err2 != nil || len(e) == 0 || len(e) > 4 {
				continue
			}
			pub := &rsa.PublicKey{N: new(big.Int).SetBytes(n), E: int(new(big.Int).SetBytes(e).Int64())}
			if pub.N.BitLen() < 2048 {
				continue
			}
			out = append(out, jwk{kid: k.Kid, alg: k.Alg, rsa: pub})
		case "EC":
			curve, ok := jwkCurves[k.Crv]
			if !ok {
				continue
			}
			size := (curve.Params().BitSize + 7) / 8
			x, err1 := base64.RawURLEncoding.DecodeString(k.X)
			y, err2 := base64.RawURLEncoding.DecodeString(k.Y)
			if err1 != nil || err2 != nil || len(x) != size || len(y) != size {
				continue
			}
			pub, err := ecdsa.ParseUncompressedPublicKey(curve, append(append([]byte{4}, x...), y...))
			if err != nil {
				continue
			}
			out = append(out, jwk{kid: k.Kid, alg: k.Alg, ec: pub})
		}
	}
	if len(out) == 0 {
		return nil, errors.New("parse jwks: no usable RSA or EC signing keys")
	}
	return out, nil
}
