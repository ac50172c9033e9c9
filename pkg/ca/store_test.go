package ca

import (
	"context"
	"sync"
	"testing"

	authnv1 "k8s.io/api/authentication/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// The lab's API server is not available to unit tests, so these use client-go's
// fake clientset, which keeps the same Create/AlreadyExists semantics.

func TestLoadOrGenerateSharesOneRoot(t *testing.T) {
	client := fake.NewClientset()
	const replicas = 4
	roots := make([]string, replicas)
	var wg sync.WaitGroup
	for i := range replicas {
		wg.Add(1)
		go func() {
			defer wg.Done()
			k, err := LoadOrGenerate(context.Background(), &SecretStore{Client: client, Namespace: "meshlet-system"}, td)
			if err != nil {
				t.Errorf("replica %d: LoadOrGenerate() = %v", i, err)
				return
			}
			roots[i] = string(k.RootCert)
		}()
	}
	wg.Wait()
	for i := 1; i < replicas; i++ {
		if roots[i] != roots[0] {
			t.Fatalf("replica %d uses another root than replica 0", i)
		}
	}
	// A restart loads the stored root.
	k, err := LoadOrGenerate(context.Background(), &SecretStore{Client: client, Namespace: "meshlet-system"}, td)
	if err != nil || string(k.RootCert) != roots[0] {
		t.Fatalf("after restart: err %v, same root %v", err, err == nil && string(k.RootCert) == roots[0])
	}
}

func TestTokenReviewer(t *testing.T) {
	client := fake.NewClientset()
	client.PrependReactor("create", "tokenreviews", func(a k8stesting.Action) (bool, runtime.Object, error) {
		tr := a.(k8stesting.CreateAction).GetObject().(*authnv1.TokenReview)
		switch tr.Spec.Token {
		case "good":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: tr.Spec.Audiences, User: authnv1.UserInfo{
				Username: "system:serviceaccount:meshlet-system:node-agent",
				Extra: map[string]authnv1.ExtraValue{
					"authentication.kubernetes.io/pod-name":  {"node-agent-x"},
					"authentication.kubernetes.io/node-name": {"node-1"},
				},
			}}
		case "other-audience":
			tr.Status = authnv1.TokenReviewStatus{Authenticated: true, Audiences: []string{"api"}, User: authnv1.UserInfo{Username: "x"}}
		default:
			tr.Status = authnv1.TokenReviewStatus{Error: "invalid bearer token"}
		}
		return true, tr, nil
	})
	r := &TokenReviewer{Client: client, Audiences: []string{"istio-ca"}}
	c, err := r.Authenticate(context.Background(), "good")
	if err != nil {
		t.Fatal(err)
	}
	want := Caller{Username: "system:serviceaccount:meshlet-system:node-agent", Namespace: "meshlet-system", ServiceAccount: "node-agent", PodName: "node-agent-x", NodeName: "node-1"}
	if c.Username != want.Username || c.Namespace != want.Namespace || c.ServiceAccount != want.ServiceAccount || c.PodName != want.PodName || c.NodeName != want.NodeName {
		t.Errorf("Authenticate() = %+v; want %+v", c, want)
	}
	for _, tok := range []string{"", "forged", "other-audience"} {
		if _, err := r.Authenticate(context.Background(), tok); err == nil {
			t.Errorf("Authenticate(%q) succeeded; want refusal", tok)
		}
	}
}
