// Package ca is meshd's certificate authority: it signs workload X.509 SVIDs
// (spiffe://<td>/ns/<ns>/sa/<sa>) from CSRs after checking them with
// go-spiffe and asking an Authorizer whether the authenticated caller may hold
// the identity; it keeps its signing key in a Kubernetes Secret shared by
// replicas (generated, or plugged in as Istio's cacerts); and it serves Istio's
// IstioCertificateService over gRPC so istio-agent clients work unchanged.
//
// It must not trust anything in a CSR but the key and the one SAN it checks,
// must not decide policy itself (who may hold which identity is the
// Authorizer's call, made by meshd), and must not write keys to local disk.
package ca
