package model

import (
	"errors"
	"fmt"
	"strings"
)

// ParseLocality reads Istio's locality form "region/zone/subzone" (any
// trailing part may be left out).
func ParseLocality(s string) Locality {
	parts := strings.SplitN(s, "/", 3)
	parts = append(parts, "", "")
	return Locality{Region: parts[0], Zone: parts[1], Subzone: parts[2]}
}

// String is Istio's locality form "region/zone/subzone"; "" for the zero
// Locality.
func (l Locality) String() string {
	if l == (Locality{}) {
		return ""
	}
	return l.Region + "/" + l.Zone + "/" + l.Subzone
}

// MatchLocality reports whether loc matches an Istio locality pattern of
// a DestinationRule's localityLbSetting: "region", "region/zone" or
// "region/zone/subzone", where a part may be "*" (anything) and the parts
// left out match anything.
func MatchLocality(pattern string, loc Locality) bool {
	if pattern == "*" {
		return true
	}
	have := []string{loc.Region, loc.Zone, loc.Subzone}
	for i, p := range strings.SplitN(pattern, "/", 3) {
		if p != "*" && p != have[i] {
			return false
		}
	}
	return true
}

// LocalityLB is a cluster's locality-aware load balancing at L7, which
// each proxy applies from its own place (L7Config.ProxyLocalities): from a
// DestinationRule's loadBalancer.localityLbSetting, from Istio's default
// failover (on when the policy has outlierDetection), or from the
// service's traffic distribution. Distribute and Priority are exclusive.
type LocalityLB struct {
	// Distribute weights localities: the first entry whose From matches
	// the proxy's locality decides the share of each locality; endpoints
	// in a locality that none of its To patterns match take no traffic.
	Distribute []LocalityDistribute `json:",omitempty"`
	// Priority sorts endpoints into failover levels by how many of these
	// keys, in order, they share with the proxy (all of them: the first
	// level). A level takes traffic by Envoy's priority load: its share of
	// healthy (not ejected) endpoints times 1.4, the rest spilling over to
	// the next level. Keys: PriorityRegion, PriorityZone, PrioritySubzone,
	// PriorityNode.
	Priority []string `json:",omitempty"`
	// Failover puts the endpoints of a proxy region's failover region in
	// a level of their own, after those that share the proxy's region and
	// before the other regions (localityLbSetting.failover).
	Failover []LocalityFailover `json:",omitempty"`
}

// Priority keys of LocalityLB.Priority.
const (
	PriorityRegion  = "region"
	PriorityZone    = "zone"
	PrioritySubzone = "subzone"
	PriorityNode    = "node"
)

// LocalityPriority is Istio's default locality failover order (and that of
// the PreferClose traffic distribution): same region, zone and subzone,
// then same region and zone, then same region, then any.
var LocalityPriority = []string{PriorityRegion, PriorityZone, PrioritySubzone}

// LocalityDistribute is one localityLbSetting.distribute entry.
type LocalityDistribute struct {
	// From is the proxy locality pattern the entry applies to.
	From string
	// To maps locality patterns to their percentage of the traffic.
	To map[string]uint32
}

// LocalityFailover is one localityLbSetting.failover entry: regions.
type LocalityFailover struct {
	From, To string
}

// Validate checks the rules: patterns, weights adding up to 100, keys.
func (l *LocalityLB) Validate() error {
	if len(l.Distribute) > 0 && (len(l.Priority) > 0 || len(l.Failover) > 0) {
		return errors.New("localityLbSetting: distribute cannot be combined with failover or a failover priority")
	}
	for i, d := range l.Distribute {
		if err := checkLocalityPattern(d.From); err != nil {
			return fmt.Errorf("localityLbSetting: distribute[%d].from: %w", i, err)
		}
		var sum uint32
		for to, w := range d.To {
			if err := checkLocalityPattern(to); err != nil {
				return fmt.Errorf("localityLbSetting: distribute[%d].to: %w", i, err)
			}
			sum += w
		}
		if sum != 100 {
			return fmt.Errorf("localityLbSetting: distribute[%d] (from %q): the weights add up to %d, not 100", i, d.From, sum)
		}
	}
	for i, k := range l.Priority {
		switch k {
		case PriorityRegion, PriorityZone, PrioritySubzone, PriorityNode:
		default:
			return fmt.Errorf("localityLbSetting: priority[%d] %q: want region, zone, subzone or node", i, k)
		}
	}
	for i, f := range l.Failover {
		if f.From == "" || f.To == "" || f.From == f.To || strings.Contains(f.From+f.To, "/") {
			return fmt.Errorf("localityLbSetting: failover[%d] %q to %q: want two different regions", i, f.From, f.To)
		}
	}
	return nil
}

// checkLocalityPattern accepts "*" and "region[/zone[/subzone]]" whose parts
// are not empty; "*" may stand for a whole part.
func checkLocalityPattern(p string) error {
	if p == "" {
		return errors.New("empty locality: want region, region/zone or region/zone/subzone (\"*\" matches any part)")
	}
	parts := strings.Split(p, "/")
	if len(parts) > 3 {
		return fmt.Errorf("locality %q has more than three parts (region/zone/subzone)", p)
	}
	for _, part := range parts {
		if part == "" || (strings.Contains(part, "*") && part != "*") {
			return fmt.Errorf("locality %q: a part is empty or holds \"*\" beside other characters", p)
		}
	}
	return nil
}
