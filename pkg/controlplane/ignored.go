package controlplane

import (
	"strings"

	networkingapi "istio.io/api/networking/v1alpha3"

	"github.com/meshlet/meshlet/pkg/model"
)

// Fields of Istio's traffic APIs that meshlet's proxies do not implement are
// reported where they are set, rather than dropped without a word: the
// object still applies, without them.

// ignoredTrafficPolicy lists the fields of a DestinationRule traffic policy
// that are set and not implemented.
func ignoredTrafficPolicy(tp *networkingapi.TrafficPolicy) []string {
	var out []string
	set := func(cond bool, field string) {
		if cond {
			out = append(out, field)
		}
	}
	set(tp.GetConnectionPool().GetHttp().GetMaxConcurrentStreams() != 0, "connectionPool.http.maxConcurrentStreams")
	lb := tp.GetLoadBalancer()
	set((lb.GetWarmupDurationSecs() != nil || lb.GetWarmup() != nil) && warmup(lb) == nil, "loadBalancer.warmup (with this load balancer, or these values)")
	set(lb.GetZoneAwareLbSetting() != nil, "loadBalancer.zoneAwareLbSetting")
	od := tp.GetOutlierDetection()
	set(!od.GetSplitExternalLocalOriginErrors() && od.GetConsecutiveLocalOriginFailures() != nil, "outlierDetection.consecutiveLocalOriginFailures (without splitExternalLocalOriginErrors, as in Istio)")
	if tn := tp.GetTunnel(); tn != nil {
		set(tn.GetProtocol() != "" && !strings.EqualFold(tn.GetProtocol(), "CONNECT"), "tunnel.protocol "+tn.GetProtocol()+" (CONNECT is)")
		if err := (&model.Tunnel{TargetHost: tn.GetTargetHost(), TargetPort: tn.GetTargetPort()}).Validate(); err != nil {
			set(true, "tunnel ("+err.Error()+")")
		}
	}
	return out
}

// warnIgnoredTrafficPolicy reports the fields of tp at where that meshlet
// does not implement.
func warnIgnoredTrafficPolicy(r *rejections, where string, tp *networkingapi.TrafficPolicy) {
	if fields := ignoredTrafficPolicy(tp); len(fields) > 0 {
		r.warn("%s: %s not implemented by meshlet; ignored (the rest of the policy applies)", where, strings.Join(fields, ", "))
	}
}
