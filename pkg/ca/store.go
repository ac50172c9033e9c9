package ca

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// ErrNotFound is returned by a Store that holds no key material yet.
var ErrNotFound = errors.New("no CA key material stored")

// ErrExists is returned by Store.Create when key material is already stored
// (another replica won the race).
var ErrExists = errors.New("CA key material already stored")

// Store keeps the CA's key material where every meshd replica finds it.
type Store interface {
	// Load returns the stored material, or ErrNotFound.
	Load(ctx context.Context) (*KeyMaterial, error)
	// Create stores k if nothing is stored yet, else returns ErrExists.
	Create(ctx context.Context, k *KeyMaterial) error
}

// LoadOrGenerate returns the stored key material, generating and storing a
// new root for td when there is none. When two replicas start at once, the
// one whose Create loses reloads and uses the winner's root, so both sign
// under the same root.
func LoadOrGenerate(ctx context.Context, s Store, td spiffeid.TrustDomain) (*KeyMaterial, error) {
	k, err := s.Load(ctx)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, ErrNotFound) {
		return nil, fmt.Errorf("load CA key material: %w", err)
	}
	k, err = GenerateRoot(td, 0)
	if err != nil {
		return nil, err
	}
	err = s.Create(ctx, k)
	if err == nil {
		return k, nil
	}
	if !errors.Is(err, ErrExists) {
		return nil, fmt.Errorf("store CA key material: %w", err)
	}
	k, err = s.Load(ctx)
	if err != nil {
		return nil, fmt.Errorf("load CA key material after losing the create race: %w", err)
	}
	return k, nil
}

// SecretStore keeps key material in one Kubernetes Secret, keyed by Istio's
// cacerts file names, so a plugged-in `cacerts` Secret and a generated one
// look the same.
type SecretStore struct {
	// Client talks to the API server. Required.
	Client kubernetes.Interface
	// Namespace of the Secret, e.g. meshlet-system. Required.
	Namespace string
	// Name of the Secret; empty means "cacerts" as in Istio.
	Name string
	// Timeout bounds each API call; zero means 10s.
	Timeout time.Duration
}

func (s *SecretStore) name() string {
	if s.Name == "" {
		return "cacerts"
	}
	return s.Name
}

func (s *SecretStore) ctx(ctx context.Context) (context.Context, context.CancelFunc) {
	t := s.Timeout
	if t <= 0 {
		t = 10 * time.Second
	}
	return context.WithTimeout(ctx, t)
}

// Load implements Store.
func (s *SecretStore) Load(ctx context.Context) (*KeyMaterial, error) {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	sec, err := s.Client.CoreV1().Secrets(s.Namespace).Get(ctx, s.name(), metav1.GetOptions{})
	if apierrors.IsNotFound(err) {
		return nil, ErrNotFound
	}
	if err != nil {
		return nil, fmt.Errorf("get secret %s/%s: %w", s.Namespace, s.name(), err)
	}
	k, err := FromSecretData(sec.Data)
	if err != nil {
		return nil, fmt.Errorf("secret %s/%s: %w", s.Namespace, s.name(), err)
	}
	return k, nil
}

// Create implements Store.
func (s *SecretStore) Create(ctx context.Context, k *KeyMaterial) error {
	ctx, cancel := s.ctx(ctx)
	defer cancel()
	sec := &corev1.Secret{
		ObjectMeta: metav1.ObjectMeta{Name: s.name(), Namespace: s.Namespace, Labels: map[string]string{"app.kubernetes.io/managed-by": "meshd"}},
		Type:       corev1.SecretTypeOpaque,
		Data:       k.SecretData(),
	}
	_, err := s.Client.CoreV1().Secrets(s.Namespace).Create(ctx, sec, metav1.CreateOptions{})
	if apierrors.IsAlreadyExists(err) {
		return ErrExists
	}
	if err != nil {
		return fmt.Errorf("create secret %s/%s: %w", s.Namespace, s.name(), err)
	}
	return nil
}
