package xds

import (
	"github.com/envoyproxy/go-control-plane/pkg/cache/types"
	"github.com/envoyproxy/go-control-plane/pkg/cache/v3"
	"github.com/meshlet/meshlet/pkg/xds/xdsnode"

	meshv1 "github.com/meshlet/meshlet/pkg/api/mesh/v1alpha1"
)

// entry is one stored resource and its content hash (its xDS version).
type entry struct {
	msg     types.Resource
	version string
}

// typeSet is the resources of one type: name → entry. It is never modified
// once a view holds it.
type typeSet map[string]entry

// view is one client's snapshot: what it may read, per type URL. It
// implements cache.ResourceSnapshot; all versions are precomputed by the
// store, so building a view never marshals anything.
type view struct {
	version string
	types   map[string]typeSet
}

var _ cache.ResourceSnapshot = (*view)(nil)

func (v *view) GetVersion(typeURL string) string { return v.version }

func (v *view) GetResourcesAndTTL(typeURL string) map[string]types.ResourceWithTTL {
	set := v.types[typeURL]
	out := make(map[string]types.ResourceWithTTL, len(set))
	for name, e := range set {
		out[name] = types.ResourceWithTTL{Resource: e.msg}
	}
	return out
}

func (v *view) GetResources(typeURL string) map[string]types.Resource {
	set := v.types[typeURL]
	out := make(map[string]types.Resource, len(set))
	for name, e := range set {
		out[name] = e.msg
	}
	return out
}

func (v *view) ConstructVersionMap() error { return nil }

func (v *view) GetVersionMap(typeURL string) map[string]string {
	set := v.types[typeURL]
	out := make(map[string]string, len(set))
	for name, e := range set {
		out[name] = e.version
	}
	return out
}

// roleTypes are the type URLs each role may subscribe to.
var roleTypes = map[xdsnode.Role][]string{
	xdsnode.RoleNodeAgent: {meshv1.WorkloadType, meshv1.AddressType, meshv1.AuthorizationType, meshv1.PeerAuthenticationType, meshv1.TrustBundleType},
	xdsnode.RoleWaypoint:  {meshv1.WorkloadType, meshv1.AddressType, meshv1.AuthorizationType, meshv1.PeerAuthenticationType, meshv1.TrustBundleType, meshv1.WaypointConfigType},
}

func allowedType(r xdsnode.Role, typeURL string) bool {
	for _, t := range roleTypes[r] {
		if t == typeURL {
			return true
		}
	}
	return false
}

// buildView selects from the frozen store s what p may read:
//   - a node agent: the workloads on its node in full, their resolved peer
//     authentication, the authorizations that apply to any of them, the whole
//     address index and the trust bundles;
//   - a waypoint: the same, for the workloads whose waypoint it is, and its
//     own WaypointConfig.
func buildView(s *frozen, p xdsnode.Principal, version string) *view {
	var uids map[string]struct{}
	switch p.Role {
	case xdsnode.RoleNodeAgent:
		uids = s.byNode[p.Node]
	case xdsnode.RoleWaypoint:
		uids = s.byWaypoint[p.Namespace+"/"+p.Name]
	}
	workloads := make(typeSet, len(uids))
	peerAuthn := make(typeSet, len(uids))
	namespaces := map[string]bool{}
	for uid := range uids {
		e := s.workloads[uid]
		workloads[uid] = e
		namespaces[e.msg.(*meshv1.Workload).GetNamespace()] = true
		if pa, ok := s.peerAuthn[uid]; ok {
			peerAuthn[uid] = pa
		}
	}
	authz := typeSet{}
	for name, e := range s.authz {
		if appliesTo(e.msg.(*meshv1.Authorization), uids, namespaces) {
			authz[name] = e
		}
	}
	v := &view{version: version, types: map[string]typeSet{
		meshv1.WorkloadType:           workloads,
		meshv1.AddressType:            s.addresses,
		meshv1.AuthorizationType:      authz,
		meshv1.PeerAuthenticationType: peerAuthn,
		meshv1.TrustBundleType:        s.bundles,
	}}
	if p.Role == xdsnode.RoleWaypoint {
		own := typeSet{}
		if e, ok := s.waypoints[p.Namespace+"/"+p.Name]; ok {
			own[p.Namespace+"/"+p.Name] = e
		}
		v.types[meshv1.WaypointConfigType] = own
	}
	return v
}

// appliesTo reports whether policy a selects any of the workloads uids
// (which live in namespaces).
func appliesTo(a *meshv1.Authorization, uids map[string]struct{}, namespaces map[string]bool) bool {
	switch a.GetScope() {
	case meshv1.Authorization_MESH:
		return len(uids) > 0
	case meshv1.Authorization_NAMESPACE:
		return namespaces[a.GetNamespace()]
	case meshv1.Authorization_WORKLOAD:
		for _, uid := range a.GetWorkloadUids() {
			if _, ok := uids[uid]; ok {
				return true
			}
		}
	}
	return false
}
