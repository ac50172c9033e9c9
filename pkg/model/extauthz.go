package model

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"golang.org/x/net/http/httpguts"
)

// ExtAuthz is an external authorization provider of the mesh config
// (Istio's meshConfig.extensionProviders envoyExtAuthzHttp and
// envoyExtAuthzGrpc) that a CUSTOM AuthorizationPolicy names: the proxy asks
// it about each request the policy's rules match, before its own DENY and
// ALLOW policies, as Envoy's ext_authz filter runs before its RBAC filters.
type ExtAuthz struct {
	// Name is the provider's name, which CUSTOM policies give as
	// provider.name.
	Name string
	// GRPC selects Envoy's gRPC Authorization service
	// (envoy.service.auth.v3.Authorization/Check); false asks over HTTP.
	GRPC bool `json:",omitempty"`
	// Cluster is the L7 cluster of the provider's service and port (its
	// endpoints, reached over HBONE when they are in the mesh). Empty when
	// the service is unknown: every check fails (StatusOnError, FailOpen).
	Cluster string
	// Authority is the provider's "host:port", the :authority of gRPC
	// checks.
	Authority string
	// Timeout bounds one check; zero means Istio's 600s.
	Timeout time.Duration `json:",omitempty"`
	// FailOpen lets requests through when the provider cannot be reached
	// or answers HTTP 5xx (gRPC: an error).
	FailOpen bool `json:",omitempty"`
	// StatusOnError is the status the client gets when the check fails
	// and FailOpen is not set; zero means 403.
	StatusOnError int `json:",omitempty"`
	// IncludeBody, when set, sends the request body (up to MaxBytes)
	// with the check.
	IncludeBody *ExtAuthzBody `json:",omitempty"`

	// HTTP providers only:

	// PathPrefix is put before the request's path in the check request.
	PathPrefix string `json:",omitempty"`
	// IncludeRequestHeaders are the client headers sent with the check,
	// besides Host, Method, Path and Content-Length: names, "prefix*" or
	// "*suffix", case-insensitive. For a gRPC provider, when set, the
	// only headers the check carries (else all of them).
	IncludeRequestHeaders []string `json:",omitempty"`
	// AdditionalHeaders are fixed headers added to the check request.
	AdditionalHeaders map[string]string `json:",omitempty"`
	// HeadersToUpstreamOnAllow are the provider's response headers copied
	// into the request sent upstream when it allows (patterns as above;
	// "*" is every header but the answer's own framing and representation,
	// as Gateway API's ExternalAuth filter asks without a list).
	HeadersToUpstreamOnAllow []string `json:",omitempty"`
	// HeadersToDownstreamOnAllow are the provider's response headers added
	// to the response to the client when it allows.
	HeadersToDownstreamOnAllow []string `json:",omitempty"`
	// HeadersToDownstreamOnDeny are the provider's response headers sent
	// to the client with a denial; empty means all of them.
	HeadersToDownstreamOnDeny []string `json:",omitempty"`
}

// ExtAuthzBody is includeRequestBodyInCheck.
type ExtAuthzBody struct {
	// MaxBytes is the most of the body sent; zero means 1 MiB.
	MaxBytes int64 `json:",omitempty"`
	// AllowPartial sends the first MaxBytes of a larger body; otherwise a
	// larger body is refused with 413.
	AllowPartial bool `json:",omitempty"`
}

// ExtAuthzDefaultTimeout is Istio's default check timeout.
const ExtAuthzDefaultTimeout = 600 * time.Second

// Validate checks a provider.
func (e *ExtAuthz) Validate() error {
	if e.Name == "" {
		return errors.New("ext authz provider has no name")
	}
	if e.Timeout < 0 {
		return fmt.Errorf("ext authz provider %q: negative timeout", e.Name)
	}
	if e.StatusOnError != 0 && (e.StatusOnError < 200 || e.StatusOnError > 599 || http.StatusText(e.StatusOnError) == "") {
		return fmt.Errorf("ext authz provider %q: statusOnError %d is not an HTTP status", e.Name, e.StatusOnError)
	}
	if e.IncludeBody != nil && e.IncludeBody.MaxBytes < 0 {
		return fmt.Errorf("ext authz provider %q: includeRequestBodyInCheck.maxRequestBytes is negative", e.Name)
	}
	if e.PathPrefix != "" && !strings.HasPrefix(e.PathPrefix, "/") {
		return fmt.Errorf("ext authz provider %q: pathPrefix %q must start with /", e.Name, e.PathPrefix)
	}
	if k := invalidHeader(e.AdditionalHeaders); k != "" {
		return fmt.Errorf("ext authz provider %q: includeAdditionalHeadersInCheck %q: not a valid header", e.Name, k)
	}
	return nil
}

// invalidHeader returns the name of a header of h whose name or value is
// not valid HTTP, "" when all are.
func invalidHeader(h map[string]string) string {
	for k, v := range h {
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(v) {
			return k
		}
	}
	return ""
}
