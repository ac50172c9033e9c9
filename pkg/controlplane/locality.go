package controlplane

import (
	"slices"

	networkingapi "istio.io/api/networking/v1alpha3"

	"github.com/meshlet/meshlet/pkg/model"
)

// Locality load balancing at L7 (waypoints and ingress gateways), as Istio
// configures Envoy:
//   - a DestinationRule's loadBalancer.localityLbSetting: distribute
//     (weights per locality), failover (a region's next region) and
//     failoverPriority (the topology labels that rank endpoints);
//     enabled: false turns locality load balancing off for the host;
//   - without one, Istio's mesh-wide default: failover by locality (same
//     zone, then region, then any) when the policy has outlierDetection,
//     which is what moves traffic away from a failing locality;
//   - the service's traffic distribution (PreferClose, PreferSameZone,
//     PreferSameNode), which the node agents apply to services without a
//     waypoint: the same order, without outlier detection needed.
//
// Failover and failoverPriority need outlierDetection in Istio (Envoy
// never leaves a level it thinks healthy); without it they are warned
// about and left out, as Istio leaves them out.

// failoverPriorityKeys maps the failoverPriority labels meshlet ranks by to
// model.LocalityLB priority keys. The network and cluster labels are
// dropped: every endpoint a waypoint reaches is on the proxy's network and
// cluster, so they rank nothing.
var failoverPriorityKeys = map[string]string{
	model.LabelRegion:             model.PriorityRegion,
	model.LabelZone:               model.PriorityZone,
	model.LabelSubzone:            model.PrioritySubzone,
	"kubernetes.io/hostname":      model.PriorityNode,
	"topology.istio.io/network":   "",
	"topology.istio.io/cluster":   "",
	"topology.kubernetes.io/node": model.PriorityNode,
}

// checkLocalityLB reports what a traffic policy's localityLbSetting asks for
// that cannot be done; false means the DestinationRule is invalid (Istio's
// validation refuses it too).
func checkLocalityLB(r *rejections, where string, tp *networkingapi.TrafficPolicy) bool {
	set := tp.GetLoadBalancer().GetLocalityLbSetting()
	if set == nil {
		return true
	}
	if err := toLocalityLB(set).Validate(); err != nil {
		r.reject("%s.loadBalancer.%v", where, err)
		return false
	}
	for _, label := range set.GetFailoverPriority() {
		if _, ok := failoverPriorityKeys[label]; !ok {
			r.warn("%s.loadBalancer.localityLbSetting.failoverPriority %q: waypoints rank endpoints by the topology labels %s, %s, %s and kubernetes.io/hostname only; ignored",
				where, label, model.LabelRegion, model.LabelZone, model.LabelSubzone)
		}
	}
	if (len(set.GetFailover()) > 0 || len(set.GetFailoverPriority()) > 0) && tp.GetOutlierDetection() == nil {
		r.warn("%s.loadBalancer.localityLbSetting: failover needs outlierDetection (without it no endpoint is ever found unhealthy); ignored until the policy has one", where)
	}
	return true
}

// toLocalityLB translates a localityLbSetting as written, for validation.
func toLocalityLB(set *networkingapi.LocalityLoadBalancerSetting) *model.LocalityLB {
	out := &model.LocalityLB{}
	for _, d := range set.GetDistribute() {
		out.Distribute = append(out.Distribute, model.LocalityDistribute{From: d.GetFrom(), To: d.GetTo()})
	}
	for _, f := range set.GetFailover() {
		out.Failover = append(out.Failover, model.LocalityFailover{From: f.GetFrom(), To: f.GetTo()})
	}
	if len(set.GetFailoverPriority()) > 0 {
		out.Priority = priorityKeys(set.GetFailoverPriority())
		if len(out.Priority) == 0 {
			out.Priority = slices.Clone(model.LocalityPriority)
		}
	}
	return out
}

// priorityKeys are the priority keys of the failoverPriority labels meshlet
// knows, in order; unknown labels (warned about) are left out.
func priorityKeys(labels []string) []string {
	var keys []string
	for _, l := range labels {
		if k := failoverPriorityKeys[l]; k != "" && !slices.Contains(keys, k) {
			keys = append(keys, k)
		}
	}
	return keys
}

// localityLB is the locality load balancing of service ms's cluster under
// traffic policy tp (nil without a DestinationRule); nil for none.
func localityLB(ms *model.Service, tp *networkingapi.TrafficPolicy) *model.LocalityLB {
	set := tp.GetLoadBalancer().GetLocalityLbSetting()
	if set.GetEnabled() != nil && !set.GetEnabled().GetValue() {
		return nil
	}
	if len(set.GetDistribute()) > 0 {
		return toLocalityLB(set)
	}
	outlier := tp.GetOutlierDetection() != nil
	if outlier && (len(set.GetFailover()) > 0 || len(set.GetFailoverPriority()) > 0) {
		lb := toLocalityLB(set)
		if len(lb.Priority) == 0 {
			lb.Priority = slices.Clone(model.LocalityPriority)
		}
		return lb
	}
	switch ms.TrafficDistribution {
	case model.TrafficPreferClose, model.TrafficPreferSameZone:
		return &model.LocalityLB{Priority: slices.Clone(model.LocalityPriority)}
	case model.TrafficPreferSameNode:
		return &model.LocalityLB{Priority: []string{model.PriorityNode}}
	}
	if outlier {
		return &model.LocalityLB{Priority: slices.Clone(model.LocalityPriority)}
	}
	return nil
}

// applyProxyLocalities tells each proxy whose clusters balance by locality
// where its pods run: the localities of their nodes, by node name.
func (bd *build) applyProxyLocalities(l7 map[model.NamespacedName]*model.L7Config) {
	for key, cfg := range l7 {
		if !usesLocality(cfg) {
			continue
		}
		for _, w := range bd.proxyPods(key) {
			if w.Node == "" {
				continue
			}
			if cfg.ProxyLocalities == nil {
				cfg.ProxyLocalities = map[string]string{}
			}
			cfg.ProxyLocalities[w.Node] = w.Locality.String()
		}
	}
}

func usesLocality(cfg *model.L7Config) bool {
	return slices.ContainsFunc(cfg.Clusters, func(c model.L7Cluster) bool { return clusterUsesLocality(&c) })
}

func clusterUsesLocality(c *model.L7Cluster) bool {
	return c.Traffic.LB.Locality != nil || slices.ContainsFunc(c.Subsets, func(s model.Subset) bool {
		return s.Traffic != nil && s.Traffic.LB.Locality != nil
	})
}

// unplaceEndpoints drops the endpoints' nodes and localities from a
// cluster that does not balance by locality: they would only make the
// config bigger.
func unplaceEndpoints(c *model.L7Cluster) {
	if clusterUsesLocality(c) {
		return
	}
	for i := range c.Endpoints {
		c.Endpoints[i].Node, c.Endpoints[i].Locality = "", ""
	}
}
