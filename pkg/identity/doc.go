// Package identity holds meshlet's workload identities: SPIFFE IDs of the form
// spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>, in-memory X.509
// SVID and trust bundle sources for crypto/tls (through go-spiffe's tlsconfig),
// the bundles knowing a trust domain's aliases (Istio's trustDomainAliases),
// certificate signing requests for an identity, and the renewal loop that
// keeps an SVID fresh.
//
// It must not write keys to disk, talk to the network itself (renewal calls a
// caller-supplied fetch function), or decide who may hold which identity: that
// is the CA's authorizer.
package identity
