package waypoint

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// FuzzJWTVerify: no token is accepted unless its header and payload are
// exactly what the provider's key signed: mutations of valid tokens (their
// header, payload, signature, algorithm, key ID) and whatever else the
// fuzzer makes are refused, and nothing panics. (An ECDSA signature has a
// second valid form for the same signed part, so signatures may differ;
// what was signed may not.)
func FuzzJWTVerify(f *testing.F) {
	s := newSigner(f)
	a := newJWTAuthenticator([]model.JWTProvider{{Name: "example", Issuer: issuer, Audiences: []string{"reviews"}, JWKS: s.jwks}}, nil, &Options{})
	signed := map[string]bool{}
	for _, alg := range []string{"RS256", "ES256", "HS256", "none"} {
		for _, c := range []map[string]any{
			claims(nil),
			claims(func(c map[string]any) { c["exp"] = time.Now().Add(-time.Hour).Unix() }),
			claims(func(c map[string]any) { c["aud"] = []string{"other", "reviews"} }),
		} {
			tok := s.token(f, alg, c)
			if alg == "RS256" || alg == "ES256" {
				signed[tok[:strings.LastIndexByte(tok, '.')]] = true
			}
			f.Add(tok)
		}
	}
	loc := tokenLocation{header: "Authorization", prefix: "Bearer "}
	for _, alg := range []string{"RS256", "ES256"} {
		if _, _, err := a.verify(context.Background(), s.token(f, alg, claims(nil)), loc); err != nil {
			f.Fatalf("a valid %s token refused: %v", alg, err)
		}
	}
	f.Fuzz(func(t *testing.T, tok string) {
		v, _, err := a.verify(context.Background(), tok, loc)
		if err != nil {
			return
		}
		if v.auth == nil || !signed[tok[:strings.LastIndexByte(tok, '.')]] {
			t.Fatalf("token %q accepted (%+v); its header and payload were never signed", tok, v.auth)
		}
	})
}
