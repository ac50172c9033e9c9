package waypoint

import (
	"maps"
	"math/rand/v2"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// proxyPlace is where this proxy runs: its node, and that node's locality
// from the config's ProxyLocalities (zero when unknown).
type proxyPlace struct {
	node string
	loc  model.Locality
}

// overprovision is Envoy's default overprovisioning factor (1.4), in
// percent: a level (or locality) with at least 100/1.4 ≈ 72% of its
// endpoints healthy is taken as fully available.
const overprovision = 140

// localityPicker narrows a pick to the endpoints the cluster's locality
// rules prefer for this proxy, as Envoy does with the priorities and
// locality weights Istio gives it:
//   - priority mode: levels of endpoints, best first. A level takes the
//     share of the traffic its health allows (healthy/total × 1.4, at most
//     100%) and the rest spills to the next; when the levels' health adds
//     up to less than 100%, the shares are scaled up to fill it.
//   - distribute mode: localities with weights; a locality's weight is
//     scaled by its health the same way, and one is drawn by weight.
type localityPicker struct {
	// sets are the levels, best first (priority mode), or the localities
	// (distribute mode); none is empty.
	sets [][]*endpoint
	// weights are the localities' weights; nil in priority mode.
	weights []uint64
}

// newLocalityPicker compiles l for the proxy at self; nil when the rules
// prefer nothing here (no rules, the proxy's place unknown, no distribute
// entry for its locality, or a single level).
func newLocalityPicker(l *model.LocalityLB, eps []*endpoint, self proxyPlace) *localityPicker {
	if l == nil || len(eps) == 0 {
		return nil
	}
	if len(l.Distribute) > 0 {
		return distributePicker(l.Distribute, eps, self)
	}
	// Without a locality of its own, the proxy ranks by node only (a
	// node without topology labels says nothing about zones).
	var keys []string
	for _, k := range l.Priority {
		if k == model.PriorityNode && self.node != "" || k != model.PriorityNode && self.loc != (model.Locality{}) {
			keys = append(keys, k)
		}
	}
	if len(keys) == 0 {
		return nil
	}
	var failoverTo string
	for _, f := range l.Failover {
		if f.From == self.loc.Region {
			failoverTo = f.To
			break
		}
	}
	byLevel := map[int][]*endpoint{}
	for _, e := range eps {
		matched := 0
		for _, k := range keys {
			if !samePlace(k, self, e) {
				break
			}
			matched++
		}
		level := len(keys) - matched
		if matched == 0 && failoverTo != "" && e.loc.Region != failoverTo {
			level++ // the failover region's endpoints come first among the others
		}
		byLevel[level] = append(byLevel[level], e)
	}
	if len(byLevel) < 2 {
		return nil
	}
	p := &localityPicker{}
	for _, lvl := range slices.Sorted(maps.Keys(byLevel)) {
		p.sets = append(p.sets, byLevel[lvl])
	}
	return p
}

func samePlace(key string, self proxyPlace, e *endpoint) bool {
	switch key {
	case model.PriorityRegion:
		return e.loc.Region == self.loc.Region
	case model.PriorityZone:
		return e.loc.Zone == self.loc.Zone
	case model.PrioritySubzone:
		return e.loc.Subzone == self.loc.Subzone
	case model.PriorityNode:
		return e.node == self.node
	}
	return false
}

// distributePicker weights the endpoints' localities by the first entry
// whose From matches the proxy's locality, as Istio turns distribute into
// Envoy locality weights: each To pattern's percentage is shared by the
// localities it matches in proportion to their endpoints' weights, a
// locality taken by the most specific pattern that matches it; localities
// no pattern matches take no traffic.
func distributePicker(rules []model.LocalityDistribute, eps []*endpoint, self proxyPlace) *localityPicker {
	var rule *model.LocalityDistribute
	for i := range rules {
		if model.MatchLocality(rules[i].From, self.loc) {
			rule = &rules[i]
			break
		}
	}
	if rule == nil {
		return nil
	}
	byLoc := map[model.Locality][]*endpoint{}
	for _, e := range eps {
		byLoc[e.loc] = append(byLoc[e.loc], e)
	}
	locs := slices.SortedFunc(maps.Keys(byLoc), func(a, b model.Locality) int { return strings.Compare(a.String(), b.String()) })
	patterns := slices.SortedFunc(maps.Keys(rule.To), func(a, b string) int {
		// More specific first: more parts that are not "*", then longer.
		if sa, sb := specificity(a), specificity(b); sa != sb {
			return sb - sa
		}
		return strings.Compare(a, b)
	})
	weights := map[model.Locality]uint64{}
	for _, pat := range patterns {
		var matched []model.Locality
		var total uint64
		for _, loc := range locs {
			if _, taken := weights[loc]; taken || !model.MatchLocality(pat, loc) {
				continue
			}
			matched = append(matched, loc)
			total += endpointWeight(byLoc[loc])
		}
		for _, loc := range matched {
			// ceil(percentage × share), as Istio rounds.
			weights[loc] = (uint64(rule.To[pat])*endpointWeight(byLoc[loc]) + total - 1) / total
		}
	}
	p := &localityPicker{weights: []uint64{}}
	for _, loc := range locs {
		if w := weights[loc]; w > 0 {
			p.sets = append(p.sets, byLoc[loc])
			p.weights = append(p.weights, w)
		}
	}
	return p
}

func specificity(pattern string) int {
	n := 0
	for _, part := range strings.Split(pattern, "/") {
		if part != "*" {
			n++
		}
	}
	return n
}

func endpointWeight(eps []*endpoint) uint64 {
	var w uint64
	for _, e := range eps {
		w += e.weight
	}
	return w
}

// health is a set's availability in percent: healthy/total × 1.4, at most
// 100.
func health(eps []*endpoint, now time.Time) uint64 {
	healthy := 0
	for _, e := range eps {
		if !e.ejected(now) {
			healthy++
		}
	}
	return min(100, uint64(overprovision*healthy/len(eps)))
}

// choose returns the endpoints a pick draws from: those of one level (or
// locality) drawn by load, not ejected and, when others are left, not
// tried. Nil when every endpoint is ejected (or, distributing, every
// weighted locality's).
func (p *localityPicker) choose(now time.Time, tried, leave []*endpoint, minHealth int) []*endpoint {
	var loads [8]uint64
	load := loads[:0]
	var total, kept uint64
	for i, set := range p.sets {
		l := health(set, now)
		if p.weights != nil {
			l *= p.weights[i]
		}
		load = append(load, l)
		total += l
		if len(leave) > 0 && !slices.ContainsFunc(set, func(e *endpoint) bool { return containsEndpoint(leave, e) }) {
			kept += l
		}
	}
	if len(leave) > 0 && kept > 0 {
		// A retry leaves the levels already tried (Envoy's
		// previous_priorities) while another one has healthy endpoints.
		for i, set := range p.sets {
			if slices.ContainsFunc(set, func(e *endpoint) bool { return containsEndpoint(leave, e) }) {
				load[i] = 0
			}
		}
		total = kept
	}
	if p.weights == nil {
		total = min(total, 100) // what is left past 100% goes nowhere
	}
	if total == 0 {
		return nil
	}
	n := rand.Uint64N(total)
	for i, l := range load {
		if n < l {
			return usable(p.sets[i], now, tried, minHealth)
		}
		n -= l
	}
	return nil // not reached: the loads add up to at least total
}

// describe is e's place in the picker for the config dump: its level, its
// locality's weight, or "none"; "" for a nil picker.
func (p *localityPicker) describe(e *endpoint) string {
	if p == nil {
		return ""
	}
	for i, set := range p.sets {
		if !slices.Contains(set, e) {
			continue
		}
		if p.weights != nil {
			return "weight " + strconv.FormatUint(p.weights[i], 10)
		}
		return strconv.Itoa(i)
	}
	return "none"
}
