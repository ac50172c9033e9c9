// Package policy is meshlet's authorization engine: Istio AuthorizationPolicy
// semantics evaluated against one request (at the waypoint, L7) or one
// connection (at the node agent, L4). It is shared so that both halves of the
// mesh agree on every decision.
//
// Evaluation follows Istio exactly
// (https://istio.io/latest/docs/reference/config/security/authorization-policy/):
//
//   - CUSTOM policies come first: the first one whose rules match names the
//     external authorizer (Decision.Check, its provider) that the caller
//     must ask before it acts on the rest of the decision, as Envoy's
//     ext_authz filter runs before its RBAC filters. At L4 (EvaluateL4) a
//     matching CUSTOM policy denies (fails closed): only waypoints ask
//     authorizers, about connections too (EvaluateTCP).
//   - DENY policies are evaluated next: if any matches, the request is denied.
//   - Then ALLOW: if no ALLOW policy applies, the request is allowed; if any
//     applies, the request must match at least one of them.
//   - AUDIT policies never change the decision; a match is reported in
//     Decision.Audit so the caller can log it.
//   - A policy with an empty rules list matches nothing (so an ALLOW policy
//     with no rules denies everything: Istio's "allow-nothing"); a rule with
//     no from/to/when matches everything.
//   - Within a rule, from, to and when are ANDed; the entries of from (and of
//     to) are ORed; the fields of one source or operation are ANDed; the
//     values of one field are ORed; a not-field fails when any value matches.
//   - String values match exactly, or as a prefix ("abc*"), a suffix
//     ("*abc"), or presence ("*": any non-empty value). Hosts match
//     case-insensitively and ignore a port and a trailing dot in the request's
//     host. Principals
//     may be written with or without the "spiffe://" prefix.
//   - Dry-run policies (istio.io/dry-run annotation) are not enforced; the
//     decision with them enforced is reported in Decision.Shadow.
//
// L4 mode (EvaluateL4) follows ztunnel and Istio's "Use Layer 4 security
// policy" page (https://istio.io/latest/docs/ambient/usage/l4-policy/,
// "Allowed policy attributes"): only principals, namespaces, ipBlocks, ports
// and the when keys source.ip, source.namespace, source.principal,
// destination.ip and destination.port can be matched on a connection. A rule
// that uses any other (L7) attribute fails safe: in an ALLOW policy the rule
// matches nothing; in a DENY policy the L7 attributes are ignored, so the
// rule denies every connection its L4 attributes match. Such rules are
// listed in Decision.Unmatchable so the agent can warn.
//
// Paths are matched as given: the caller (the waypoint) normalizes them first.
// This package does no I/O, keeps no state, and must not import Kubernetes or
// Istio API types; pkg/controlplane translates AuthorizationPolicy into these
// types.
package policy

import (
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
)

// Action is what a policy does when a rule matches.
type Action string

// Policy actions, as Istio names them.
const (
	// Allow permits matching requests; any ALLOW policy denies the rest.
	Allow Action = "ALLOW"
	// Deny rejects matching requests.
	Deny Action = "DENY"
	// Audit marks matching requests for auditing; never changes the decision.
	Audit Action = "AUDIT"
	// Custom delegates matching requests to an external authorizer
	// (Policy.Provider).
	Custom Action = "CUSTOM"
)

// Policy is one AuthorizationPolicy, already selected for the workload or
// waypoint that enforces it.
type Policy struct {
	// Name and Namespace identify the policy in decisions and logs.
	Name, Namespace string
	// Action is ALLOW (also when empty), DENY, AUDIT or CUSTOM.
	Action Action
	// Rules are ORed; an empty list matches nothing.
	Rules []Rule
	// DryRun evaluates the policy without enforcing it.
	DryRun bool
	// Provider names the external authorizer of a CUSTOM policy (its
	// provider.name, an extension provider of the mesh config).
	Provider string `json:",omitempty"`
	// Services, when set, limits the policy to requests for these service
	// hostnames (a waypoint policy whose targetRefs name a Service or
	// ServiceEntry); empty means every request the proxy serves (a policy
	// targeting the Gateway itself). The proxy filters on it before
	// Evaluate; Evaluate does not read it.
	Services []string `json:",omitempty"`
}

// AppliesTo reports whether p applies to a request for service (a
// hostname; empty when the destination is no service).
func (p *Policy) AppliesTo(service string) bool {
	return len(p.Services) == 0 || slices.Contains(p.Services, service)
}

// ID is "namespace/name".
func (p *Policy) ID() string { return p.Namespace + "/" + p.Name }

func (p *Policy) action() Action {
	if p.Action == "" {
		return Allow
	}
	return p.Action
}

// Rule is one entry of spec.rules.
type Rule struct {
	// From sources are ORed; empty matches any source.
	From []Source
	// To operations are ORed; empty matches any operation.
	To []Operation
	// When conditions are ANDed.
	When []Condition
}

// Source is rule.from[].source. Empty fields are not checked.
type Source struct {
	// Principals match the peer identity ("td/ns/<ns>/sa/<sa>").
	Principals, NotPrincipals []string
	// RequestPrincipals match the JWT's "iss/sub" (L7 only).
	RequestPrincipals, NotRequestPrincipals []string
	// Namespaces match the peer's namespace.
	Namespaces, NotNamespaces []string
	// IPBlocks match the direct peer address (IP or CIDR).
	IPBlocks, NotIPBlocks []string
	// RemoteIPBlocks match the original client address (L7 only).
	RemoteIPBlocks, NotRemoteIPBlocks []string
}

// Operation is rule.to[].operation. Empty fields are not checked.
type Operation struct {
	// Hosts match Host/:authority, case-insensitively (L7 only).
	Hosts, NotHosts []string
	// Ports match the destination port, as decimal strings.
	Ports, NotPorts []string
	// Methods match the HTTP method (L7 only).
	Methods, NotMethods []string
	// Paths match the normalized path without query (L7 only).
	Paths, NotPaths []string
}

// Condition is rule.when[]: Key must have one of Values (if any) and none of
// NotValues.
type Condition struct {
	// Key is an Istio condition key, e.g. "request.headers[x-user]".
	Key string
	// Values: the attribute must match one of them, if any are given.
	Values []string
	// NotValues: the attribute must match none of them.
	NotValues []string
}

// Request is what a decision is made about. L7 fields are ignored at L4.
type Request struct {
	// SourcePrincipal is the peer's SPIFFE identity, with or without
	// "spiffe://"; empty for a plaintext peer.
	SourcePrincipal string
	// SourceNamespace is the peer's namespace (from its identity).
	SourceNamespace string
	// SourceIP is the direct peer address.
	SourceIP netip.Addr
	// RemoteIP is the original client (X-Forwarded-For as trusted); zero
	// means SourceIP.
	RemoteIP netip.Addr
	// DestinationIP and DestinationPort are the address the client reached.
	DestinationIP   netip.Addr
	DestinationPort uint32
	// SNI is the TLS server name, if any.
	SNI string

	// Host is the request's Host/:authority (L7).
	Host string
	// Method is the HTTP method (L7).
	Method string
	// Path is the normalized path without the query string (L7).
	Path string
	// Headers are the request headers (L7): an http.Header, or anything
	// that reads a field's values as its Values does. Nil: none.
	Headers interface{ Values(key string) []string }
	// Auth is the validated JWT, nil when the request carried none (L7).
	Auth *Auth
}

// Auth is a validated request credential (RequestAuthentication).
type Auth struct {
	// Principal is "iss/sub".
	Principal string
	// Audiences is the token's aud claim.
	Audiences []string
	// Presenter is the azp claim.
	Presenter string
	// Claims are all claims as decoded from JSON.
	Claims map[string]any
}

// Decision is the outcome of an evaluation.
type Decision struct {
	// Allow is the enforced result.
	Allow bool
	// Policy is the ID of the policy that decided ("" when no policy
	// applied, or when the default deny of ALLOW policies decided).
	Policy string
	// Reason explains the decision for logs and the access log.
	Reason string
	// Audit names the first AUDIT policy that matched, if any.
	Audit string
	// Shadow is the decision with dry-run policies enforced; nil when no
	// dry-run policy was given.
	Shadow *Decision
	// Unmatchable lists "policy/rule[i]" rules that used L7 attributes in
	// L4 mode.
	Unmatchable []string
	// Check names the external authorizer (a CUSTOM policy's provider)
	// that must allow the request too; CheckPolicy is that policy's ID.
	// Empty when no CUSTOM policy matched (and always at L4).
	Check, CheckPolicy string
}

// Validate checks a policy: known action, parsable IP blocks and ports,
// known when keys.
func (p *Policy) Validate() error {
	switch p.action() {
	case Allow, Deny, Audit:
	case Custom:
		if p.Provider == "" {
			return fmt.Errorf("policy %s: action CUSTOM needs provider.name: the extension provider (meshConfig.extensionProviders) to ask", p.ID())
		}
	default:
		return fmt.Errorf("policy %s: unknown action %q: want ALLOW, DENY, AUDIT or CUSTOM", p.ID(), p.Action)
	}
	for i, r := range p.Rules {
		for j, s := range r.From {
			for _, b := range concat(s.IPBlocks, s.NotIPBlocks, s.RemoteIPBlocks, s.NotRemoteIPBlocks) {
				if _, err := parseBlock(b); err != nil {
					return fmt.Errorf("policy %s: rules[%d].from[%d]: %w", p.ID(), i, j, err)
				}
			}
		}
		for j, o := range r.To {
			for _, port := range concat(o.Ports, o.NotPorts) {
				if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
					return fmt.Errorf("policy %s: rules[%d].to[%d]: port %q: want a number 1-65535", p.ID(), i, j, port)
				}
			}
			for _, path := range concat(o.Paths, o.NotPaths) {
				if strings.Contains(path, "{") {
					return fmt.Errorf("policy %s: rules[%d].to[%d]: path %q: path templates ({*}, {**}) are not supported: use a prefix or suffix wildcard", p.ID(), i, j, path)
				}
			}
		}
		for j, c := range r.When {
			if _, _, err := parseKey(c.Key); err != nil {
				return fmt.Errorf("policy %s: rules[%d].when[%d]: %w", p.ID(), i, j, err)
			}
			if len(c.Values) == 0 && len(c.NotValues) == 0 {
				return fmt.Errorf("policy %s: rules[%d].when[%d] %q: set values or notValues", p.ID(), i, j, c.Key)
			}
			if c.Key == "source.ip" || c.Key == "remote.ip" || c.Key == "destination.ip" {
				for _, b := range concat(c.Values, c.NotValues) {
					if _, err := parseBlock(b); err != nil {
						return fmt.Errorf("policy %s: rules[%d].when[%d]: %w", p.ID(), i, j, err)
					}
				}
			}
		}
	}
	return nil
}

// Evaluate decides an L7 request.
func Evaluate(policies []*Policy, req *Request) Decision {
	return evaluate(policies, req, false, true)
}

// EvaluateL4 decides a connection: only L4 attributes are matched, and rules
// using L7 attributes fail safe (see the package doc). A matching CUSTOM
// policy denies: a node agent asks no external authorizer.
func EvaluateL4(policies []*Policy, req *Request) Decision {
	return evaluate(policies, req, true, false)
}

// EvaluateTCP is EvaluateL4 for a proxy that asks external authorizers about
// connections (a waypoint relaying TCP, as Envoy's network ext_authz
// filter): a matching CUSTOM policy sets Check, as Evaluate does.
func EvaluateTCP(policies []*Policy, req *Request) Decision {
	return evaluate(policies, req, true, true)
}

func evaluate(policies []*Policy, req *Request, l4, checks bool) Decision {
	d := decide(policies, req, l4, checks, false)
	for _, p := range policies {
		if p.DryRun {
			s := decide(policies, req, l4, checks, true)
			s.Unmatchable = nil
			d.Shadow = &s
			break
		}
	}
	return d
}

func decide(policies []*Policy, req *Request, l4, checks, withDryRun bool) Decision {
	var d Decision
	enforced := func(p *Policy) bool { return withDryRun || !p.DryRun }
	for _, p := range policies {
		if !enforced(p) || p.action() != Custom || !matchPolicy(p, req, l4, &d) {
			continue
		}
		if !checks {
			d.Reason = fmt.Sprintf("policy %s asks an external authorizer (CUSTOM), which only waypoints do: denying (fail closed); attach it to a waypoint with targetRefs", p.ID())
			d.Policy = p.ID()
			return d
		}
		d.Check, d.CheckPolicy = p.Provider, p.ID()
		break
	}
	for _, p := range policies {
		if p.action() == Audit && d.Audit == "" && matchPolicy(p, req, l4, &d) {
			d.Audit = p.ID()
		}
	}
	for _, p := range policies {
		if enforced(p) && p.action() == Deny && matchPolicy(p, req, l4, &d) {
			d.Policy = p.ID()
			d.Reason = "denied by DENY policy " + p.ID()
			return d
		}
	}
	anyAllow := false
	for _, p := range policies {
		if !enforced(p) || p.action() != Allow {
			continue
		}
		anyAllow = true
		if matchPolicy(p, req, l4, &d) {
			d.Allow = true
			d.Policy = p.ID()
			d.Reason = "allowed by ALLOW policy " + p.ID()
			return d
		}
	}
	if anyAllow {
		d.Reason = "denied: ALLOW policies apply and none matched"
		return d
	}
	d.Allow = true
	d.Reason = "allowed: no ALLOW or DENY policy applies"
	return d
}

func matchPolicy(p *Policy, req *Request, l4 bool, d *Decision) bool {
	// At L4, a CUSTOM policy denies what it would send to its authorizer
	// (fail closed), so it matches as DENY does.
	deny := p.action() == Deny || p.action() == Custom
	for i := range p.Rules {
		r := &p.Rules[i]
		if l4 && ruleUsesL7(r) {
			d.Unmatchable = appendUnique(d.Unmatchable, fmt.Sprintf("%s/rules[%d]", p.ID(), i))
			if !deny {
				continue // ALLOW/AUDIT: a rule that cannot be checked matches nothing
			}
		}
		m := matcher{req: req, l4: l4}
		if m.rule(r) {
			return true
		}
	}
	return false
}

// matcher matches one request; in L4 mode an L7 attribute counts as matched
// (only reached for DENY rules: see matchPolicy).
type matcher struct {
	req *Request
	l4  bool
}

func (m matcher) rule(r *Rule) bool {
	if len(r.From) > 0 {
		ok := false
		for i := range r.From {
			if m.source(&r.From[i]) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	if len(r.To) > 0 {
		ok := false
		for i := range r.To {
			if m.operation(&r.To[i]) {
				ok = true
				break
			}
		}
		if !ok {
			return false
		}
	}
	for i := range r.When {
		if !m.condition(&r.When[i]) {
			return false
		}
	}
	return true
}

// field checks one positive/negative pair with fn as the value test.
func field(values, notValues []string, fn func(string) bool) bool {
	if len(values) > 0 && !anyOf(values, fn) {
		return false
	}
	return !anyOf(notValues, fn)
}

func anyOf(values []string, fn func(string) bool) bool {
	for _, v := range values {
		if fn(v) {
			return true
		}
	}
	return false
}

func (m matcher) source(s *Source) bool {
	req := m.req
	principal := strings.TrimPrefix(req.SourcePrincipal, "spiffe://")
	if !field(s.Principals, s.NotPrincipals, func(v string) bool {
		return matchValue(strings.TrimPrefix(v, "spiffe://"), principal)
	}) {
		return false
	}
	if !field(s.Namespaces, s.NotNamespaces, func(v string) bool { return matchValue(v, req.SourceNamespace) }) {
		return false
	}
	if !field(s.IPBlocks, s.NotIPBlocks, func(v string) bool { return inBlock(v, req.SourceIP) }) {
		return false
	}
	if m.l4 {
		return true // requestPrincipals and remoteIpBlocks are L7 attributes
	}
	reqPrincipal := ""
	if req.Auth != nil {
		reqPrincipal = req.Auth.Principal
	}
	if !field(s.RequestPrincipals, s.NotRequestPrincipals, func(v string) bool { return matchValue(v, reqPrincipal) }) {
		return false
	}
	remote := req.RemoteIP
	if !remote.IsValid() {
		remote = req.SourceIP
	}
	return field(s.RemoteIPBlocks, s.NotRemoteIPBlocks, func(v string) bool { return inBlock(v, remote) })
}

func (m matcher) operation(o *Operation) bool {
	req := m.req
	if len(o.Ports)+len(o.NotPorts) > 0 {
		// Formatted only when asked for: most operations name no port,
		// and this runs for every request a policy sees.
		port := strconv.FormatUint(uint64(req.DestinationPort), 10)
		if !field(o.Ports, o.NotPorts, func(v string) bool { return v == port }) {
			return false
		}
	}
	if m.l4 {
		return true // hosts, methods and paths are L7 attributes
	}
	if !field(o.Hosts, o.NotHosts, func(v string) bool { return matchHost(v, req.Host) }) {
		return false
	}
	if !field(o.Methods, o.NotMethods, func(v string) bool { return matchValue(v, req.Method) }) {
		return false
	}
	return field(o.Paths, o.NotPaths, func(v string) bool { return matchValue(v, req.Path) })
}

func (m matcher) condition(c *Condition) bool {
	kind, arg, err := parseKey(c.Key)
	if err != nil {
		return false // Validate rejects these; an unknown key never matches
	}
	if m.l4 && !l4Keys[c.Key] {
		return true // only reached for DENY rules: ignore the L7 part
	}
	vals := m.attribute(kind, arg)
	test := func(pattern string) bool {
		for _, v := range vals {
			switch kind {
			case "source.ip", "remote.ip", "destination.ip":
				if a, err := netip.ParseAddr(v); err == nil && inBlock(pattern, a) {
					return true
				}
			default:
				if matchValue(pattern, v) {
					return true
				}
			}
		}
		return false
	}
	return field(c.Values, c.NotValues, test)
}

// attribute returns the request's values for a when key.
func (m matcher) attribute(kind string, arg []string) []string {
	req := m.req
	one := func(s string) []string {
		if s == "" {
			return nil
		}
		return []string{s}
	}
	ip := func(a netip.Addr) []string {
		if !a.IsValid() {
			return nil
		}
		return []string{a.String()}
	}
	switch kind {
	case "source.ip":
		return ip(req.SourceIP)
	case "remote.ip":
		if req.RemoteIP.IsValid() {
			return ip(req.RemoteIP)
		}
		return ip(req.SourceIP)
	case "source.namespace":
		return one(req.SourceNamespace)
	case "source.principal":
		return one(strings.TrimPrefix(req.SourcePrincipal, "spiffe://"))
	case "destination.ip":
		return ip(req.DestinationIP)
	case "destination.port":
		return []string{strconv.FormatUint(uint64(req.DestinationPort), 10)}
	case "connection.sni":
		return one(req.SNI)
	case "request.headers":
		if req.Headers == nil {
			return nil
		}
		return req.Headers.Values(arg[0])
	case "request.auth.principal":
		if req.Auth != nil {
			return one(req.Auth.Principal)
		}
	case "request.auth.audiences":
		if req.Auth != nil {
			return req.Auth.Audiences
		}
	case "request.auth.presenter":
		if req.Auth != nil {
			return one(req.Auth.Presenter)
		}
	case "request.auth.claims":
		if req.Auth != nil {
			return claimValues(req.Auth.Claims, arg)
		}
	}
	return nil
}

// claimValues walks nested claims; a string or a list of strings yields values.
func claimValues(claims map[string]any, path []string) []string {
	var cur any = claims
	for _, p := range path {
		obj, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = obj[p]
	}
	switch v := cur.(type) {
	case string:
		return []string{v}
	case []any:
		var out []string
		for _, e := range v {
			if s, ok := e.(string); ok {
				out = append(out, s)
			}
		}
		return out
	case bool:
		return []string{strconv.FormatBool(v)}
	case float64:
		return []string{strconv.FormatFloat(v, 'f', -1, 64)}
	}
	return nil
}

var l4Keys = map[string]bool{
	"source.ip": true, "source.namespace": true, "source.principal": true,
	"destination.ip": true, "destination.port": true,
}

// parseKey splits a when key into its kind and bracketed arguments.
func parseKey(key string) (kind string, args []string, err error) {
	switch key {
	case "source.ip", "remote.ip", "source.namespace", "source.principal",
		"destination.ip", "destination.port", "connection.sni",
		"request.auth.principal", "request.auth.audiences", "request.auth.presenter":
		return key, nil, nil
	}
	for _, prefix := range []string{"request.headers", "request.auth.claims"} {
		rest, ok := strings.CutPrefix(key, prefix)
		if !ok {
			continue
		}
		for rest != "" {
			if rest[0] != '[' {
				return "", nil, fmt.Errorf("when key %q: want %s[name]", key, prefix)
			}
			end := strings.IndexByte(rest, ']')
			if end < 2 {
				return "", nil, fmt.Errorf("when key %q: want %s[name]", key, prefix)
			}
			args = append(args, rest[1:end])
			rest = rest[end+1:]
		}
		if len(args) == 0 || (prefix == "request.headers" && len(args) != 1) {
			return "", nil, fmt.Errorf("when key %q: want %s[name]", key, prefix)
		}
		return prefix, args, nil
	}
	return "", nil, fmt.Errorf("when key %q is not supported: see https://istio.io/latest/docs/reference/config/security/conditions/", key)
}

// ruleUsesL7 reports whether a rule uses attributes ztunnel cannot see.
func ruleUsesL7(r *Rule) bool {
	for _, s := range r.From {
		if len(s.RequestPrincipals)+len(s.NotRequestPrincipals)+len(s.RemoteIPBlocks)+len(s.NotRemoteIPBlocks) > 0 {
			return true
		}
	}
	for _, o := range r.To {
		if len(o.Hosts)+len(o.NotHosts)+len(o.Methods)+len(o.NotMethods)+len(o.Paths)+len(o.NotPaths) > 0 {
			return true
		}
	}
	for _, c := range r.When {
		if !l4Keys[c.Key] {
			return true
		}
	}
	return false
}

// matchValue is Istio's string match: "*" presence, "abc*" prefix, "*abc"
// suffix, otherwise exact.
func matchValue(pattern, v string) bool {
	switch {
	case pattern == "*":
		return v != ""
	case strings.HasSuffix(pattern, "*"):
		return strings.HasPrefix(v, pattern[:len(pattern)-1])
	case strings.HasPrefix(pattern, "*"):
		return strings.HasSuffix(v, pattern[1:])
	}
	return pattern == v
}

// matchHost matches case-insensitively, with and without the request's port
// and a trailing dot.
func matchHost(pattern, host string) bool {
	pattern, host = strings.ToLower(pattern), strings.ToLower(host)
	if matchValue(pattern, host) {
		return true
	}
	if i := strings.LastIndexByte(host, ':'); i > 0 && !strings.HasSuffix(host, "]") {
		host = host[:i]
	}
	// "example.com." is the same name as "example.com".
	return matchValue(pattern, strings.TrimSuffix(host, "."))
}

func parseBlock(s string) (netip.Prefix, error) {
	if strings.Contains(s, "/") {
		p, err := netip.ParsePrefix(s)
		if err != nil {
			return netip.Prefix{}, fmt.Errorf("ip block %q: %w", s, err)
		}
		return p.Masked(), nil
	}
	a, err := netip.ParseAddr(s)
	if err != nil {
		return netip.Prefix{}, fmt.Errorf("ip block %q: want an IP or CIDR: %w", s, err)
	}
	return netip.PrefixFrom(a, a.BitLen()), nil
}

func inBlock(block string, a netip.Addr) bool {
	if !a.IsValid() {
		return false
	}
	p, err := parseBlock(block)
	if err != nil {
		return false
	}
	return p.Contains(a.Unmap())
}

func concat(lists ...[]string) []string {
	var out []string
	for _, l := range lists {
		out = append(out, l...)
	}
	return out
}

func appendUnique(list []string, s string) []string {
	for _, x := range list {
		if x == s {
			return list
		}
	}
	return append(list, s)
}
