package ca

import (
	"context"
	"errors"
	"fmt"
	"strings"

	authnv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrUnauthenticated is wrapped when a token is missing, invalid or refused.
var ErrUnauthenticated = errors.New("unauthenticated")

// TokenReviewer authenticates service account tokens with the API server's
// TokenReview API.
type TokenReviewer struct {
	// Client talks to the API server; it needs create on tokenreviews. Required.
	Client kubernetes.Interface
	// Audiences the token must be bound to; empty means the API server's
	// default audience.
	Audiences []string
}

// Authenticate reviews token and returns who it belongs to.
func (r *TokenReviewer) Authenticate(ctx context.Context, token string) (Caller, error) {
	if token == "" {
		return Caller{}, fmt.Errorf("%w: no bearer token", ErrUnauthenticated)
	}
	tr := &authnv1.TokenReview{Spec: authnv1.TokenReviewSpec{Token: token, Audiences: r.Audiences}}
	res, err := r.Client.AuthenticationV1().TokenReviews().Create(ctx, tr, metav1.CreateOptions{})
	if err != nil {
		return Caller{}, fmt.Errorf("review token: %w", err)
	}
	if res.Status.Error != "" {
		return Caller{}, fmt.Errorf("%w: %s", ErrUnauthenticated, res.Status.Error)
	}
	if !res.Status.Authenticated {
		return Caller{}, fmt.Errorf("%w: token not authenticated", ErrUnauthenticated)
	}
	if len(r.Audiences) > 0 && !anyIn(res.Status.Audiences, r.Audiences) {
		return Caller{}, fmt.Errorf("%w: token audiences %v do not include %v", ErrUnauthenticated, res.Status.Audiences, r.Audiences)
	}
	return callerFromUser(res.Status.User), nil
}

func callerFromUser(u authnv1.UserInfo) Caller {
	c := Caller{Username: u.Username, UID: u.UID, Groups: u.Groups}
	// system:serviceaccount:<namespace>:<name>
	if rest, ok := strings.CutPrefix(u.Username, "system:serviceaccount:"); ok {
		if ns, name, ok := strings.Cut(rest, ":"); ok && ns != "" && name != "" && !strings.Contains(name, ":") {
			c.Namespace, c.ServiceAccount = ns, name
		}
	}
	if v := u.Extra["authentication.kubernetes.io/pod-name"]; len(v) == 1 {
		c.PodName = v[0]
	}
	if v := u.Extra["authentication.kubernetes.io/node-name"]; len(v) == 1 {
		c.NodeName = v[0]
	}
	return c
}

func anyIn(have, want []string) bool {
	for _, h := range have {
		for _, w := range want {
			if h == w {
				return true
			}
		}
	}
	return false
}
