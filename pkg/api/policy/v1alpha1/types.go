// Package v1alpha1 is meshlet's own policy API (group policy.meshlet.dev):
// what Istio and the Gateway API have no resource for. Today that is
// LocalRateLimitPolicy, a token bucket in the waypoint or ingress gateway,
// attached with Gateway API policy targetRefs.
//
// The package holds types and their validation only; it must not talk to
// a cluster. Its CRD is deploy/crds/meshlet/.
package v1alpha1

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
)

// GroupVersion is policy.meshlet.dev/v1alpha1.
var GroupVersion = schema.GroupVersion{Group: "policy.meshlet.dev", Version: "v1alpha1"}

// LocalRateLimitPolicyResource is the resource for dynamic clients.
var LocalRateLimitPolicyResource = GroupVersion.WithResource("localratelimitpolicies")

// LocalRateLimitPolicy limits the requests a waypoint or ingress gateway
// lets through to what it targets, with a local token bucket: requests
// beyond it are answered 429 at once (response flag RL) and never reach the
// backend.
type LocalRateLimitPolicy struct {
	metav1.TypeMeta   `json:",inline"`
	metav1.ObjectMeta `json:"metadata,omitempty"`
	Spec              LocalRateLimitPolicySpec `json:"spec"`
}

// LocalRateLimitPolicySpec is what to limit and how.
type LocalRateLimitPolicySpec struct {
	// TargetRefs are what the limit applies to, in the policy's namespace:
	// a Service (every route of it, in its waypoint), a Gateway (every route
	// of that waypoint or ingress gateway), or an HTTPRoute (its rules).
	TargetRefs []TargetRef `json:"targetRefs"`
	// Limit is the bucket.
	Limit Limit `json:"limit"`
	// Key splits the bucket; absent means one bucket per route (an
	// HTTPRoute rule with several matches is one route).
	Key *Key `json:"key,omitempty"`
}

// TargetRef is a Gateway API LocalPolicyTargetReference.
type TargetRef struct {
	// Group is "" for a Service, gateway.networking.k8s.io for a Gateway or
	// an HTTPRoute.
	Group string `json:"group"`
	// Kind is Service, Gateway or HTTPRoute.
	Kind string `json:"kind"`
	// Name is the target's name.
	Name string `json:"name"`
}

// Limit is a token bucket: Requests tokens are added every Interval, up to
// Burst; each request takes one.
type Limit struct {
	// Requests per Interval; at least 1.
	Requests int32 `json:"requests"`
	// Interval is the refill period, e.g. 1s or 1m; at least 1ms.
	Interval metav1.Duration `json:"interval"`
	// Burst is the bucket size; absent means Requests.
	Burst *int32 `json:"burst,omitempty"`
}

// Key kinds.
const (
	// KeyPrincipal gives each client identity (SPIFFE ID) its own bucket.
	KeyPrincipal = "Principal"
	// KeyHeader gives each value of a request header its own bucket.
	KeyHeader = "Header"
)

// Key splits the bucket by client.
type Key struct {
	// Type is Principal or Header.
	Type string `json:"type"`
	// Header names the header when Type is Header.
	Header string `json:"header,omitempty"`
	// MaxKeys bounds the buckets kept (least recently used are dropped);
	// absent means 10000.
	MaxKeys *int32 `json:"maxKeys,omitempty"`
}

// Validate reports the first fault of the spec, naming the field and the fix.
func (s *LocalRateLimitPolicySpec) Validate() error {
	if len(s.TargetRefs) == 0 {
		return fmt.Errorf("spec.targetRefs is empty: name a Service, Gateway or HTTPRoute")
	}
	for i, t := range s.TargetRefs {
		switch {
		case t.Kind == "Service" && t.Group == "":
		case (t.Kind == "Gateway" || t.Kind == "HTTPRoute") && t.Group == "gateway.networking.k8s.io":
		default:
			return fmt.Errorf("spec.targetRefs[%d] %s/%s (group %q): want kind Service (group \"\"), or Gateway or HTTPRoute (group gateway.networking.k8s.io)", i, t.Kind, t.Name, t.Group)
		}
		if t.Name == "" {
			return fmt.Errorf("spec.targetRefs[%d].name is empty", i)
		}
	}
	if s.Limit.Requests < 1 {
		return fmt.Errorf("spec.limit.requests %d: want at least 1", s.Limit.Requests)
	}
	if s.Limit.Interval.Duration < time.Millisecond {
		return fmt.Errorf("spec.limit.interval %s: want at least 1ms, e.g. 1s", s.Limit.Interval.Duration)
	}
	if b := s.Limit.Burst; b != nil && *b < 1 {
		return fmt.Errorf("spec.limit.burst %d: want at least 1, or leave it out to use requests", *b)
	}
	if k := s.Key; k != nil {
		switch k.Type {
		case KeyPrincipal:
			if k.Header != "" {
				return fmt.Errorf("spec.key.header is set for type Principal: remove it, or use type Header")
			}
		case KeyHeader:
			if k.Header == "" || strings.ContainsAny(k.Header, " :\t\r\n") || http.CanonicalHeaderKey(k.Header) == "" {
				return fmt.Errorf("spec.key.header %q: want a header name such as x-user-id", k.Header)
			}
		default:
			return fmt.Errorf("spec.key.type %q: want Principal or Header", k.Type)
		}
		if m := k.MaxKeys; m != nil && (*m < 1 || *m > 1000000) {
			return fmt.Errorf("spec.key.maxKeys %d: want 1 to 1000000", *m)
		}
	}
	return nil
}

// DeepCopyObject implements runtime.Object.
func (p *LocalRateLimitPolicy) DeepCopyObject() runtime.Object {
	if p == nil {
		return nil
	}
	out := &LocalRateLimitPolicy{TypeMeta: p.TypeMeta, Spec: p.Spec}
	p.ObjectMeta.DeepCopyInto(&out.ObjectMeta)
	out.Spec.TargetRefs = append([]TargetRef(nil), p.Spec.TargetRefs...)
	if b := p.Spec.Limit.Burst; b != nil {
		out.Spec.Limit.Burst = new(*b)
	}
	if k := p.Spec.Key; k != nil {
		kc := *k
		if k.MaxKeys != nil {
			kc.MaxKeys = new(*k.MaxKeys)
		}
		out.Spec.Key = &kc
	}
	return out
}
