// Package meshv1alpha1 holds meshlet's own protobuf resources: the workloads,
// address index, services, L4 authorizations, resolved peer authentication and
// trust bundles that meshd distributes over delta xDS (see pkg/xds).
//
// The Go code is generated from mesh.proto by protoc (Debian's 3.21) with the
// protoc-gen-go pinned in the root go.mod, and committed so that `go build`
// needs no protoc. This package must hold no logic beyond the generated code
// and the type URLs: translation lives in pkg/model and pkg/controlplane.
package meshv1alpha1

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(go tool -n protoc-gen-go) --go_out=. --go_opt=paths=source_relative mesh.proto"

// Type URLs of the resources, as carried in xDS requests and in the Any
// wrapping each resource.
const (
	WorkloadType           = "type.googleapis.com/meshlet.mesh.v1alpha1.Workload"
	AddressType            = "type.googleapis.com/meshlet.mesh.v1alpha1.Address"
	AuthorizationType      = "type.googleapis.com/meshlet.mesh.v1alpha1.Authorization"
	PeerAuthenticationType = "type.googleapis.com/meshlet.mesh.v1alpha1.PeerAuthentication"
	TrustBundleType        = "type.googleapis.com/meshlet.mesh.v1alpha1.TrustBundle"
	WaypointConfigType     = "type.googleapis.com/meshlet.mesh.v1alpha1.WaypointConfig"
)
