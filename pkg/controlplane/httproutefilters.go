package controlplane

import (
	"fmt"
	"regexp"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// applyHTTPRouteRule adds to r what an HTTPRoute rule says beyond matches
// and backends: its filters (Gateway API's core and extended ones: header
// modifiers, redirect, URL rewrite, mirror, CORS), the backends' own header
// filters, and the rule's retry policy. A filter meshlet cannot honour
// (ExtensionRef, ExternalAuth, a prefix redirect with a non-prefix match)
// fails the rule: the route is rejected and reported rather than served
// without what its author asked for.
func (lb *l7Builder) applyHTTPRouteRule(rt *gatewayv1.HTTPRoute, rule gatewayv1.HTTPRouteRule, r *model.L7Route, resolved []int, defaultPort uint32) error {
	for i, f := range rule.Filters {
		if err := lb.applyHTTPFilter(routeRef{KindHTTPRoute, rt.Namespace, rt.Name}, f, r, defaultPort); err != nil {
			return fmt.Errorf("filters[%d] (%s): %w", i, f.Type, err)
		}
	}
	if r.Redirect != nil {
		// A redirect answers by itself; the 500 for "no backends" and any
		// backends do not apply (Gateway API: RequestRedirect with backendRefs
		// is invalid, but implementations answer with the redirect).
		r.Destinations, r.DirectResponse = nil, nil
	}
	// Backend-level header filters ride on the destination they belong to;
	// resolved[i] is the index in rule.BackendRefs of r.Destinations[i].
	for i, bi := range resolved {
		b := rule.BackendRefs[bi]
		for k, f := range b.Filters {
			switch f.Type {
			case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
				r.Destinations[i].RequestHeaders = headerFilter(f.RequestHeaderModifier)
			case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
				r.Destinations[i].ResponseHeaders = headerFilter(f.ResponseHeaderModifier)
			default:
				return fmt.Errorf("backendRefs[%d].filters[%d]: %s is not supported on a backend (only RequestHeaderModifier and ResponseHeaderModifier)", bi, k, f.Type)
			}
		}
	}
	if rule.Retry != nil {
		rp := &model.RetryPolicy{Attempts: 1}
		if rule.Retry.Attempts != nil {
			rp.Attempts = *rule.Retry.Attempts
		}
		if rule.Retry.Backoff != nil {
			d, err := time.ParseDuration(string(*rule.Retry.Backoff))
			if err != nil || d < 0 {
				return fmt.Errorf("retry.backoff %q is not a duration (want one such as \"100ms\")", *rule.Retry.Backoff)
			}
			rp.Backoff = d // "0s": no minimum, the waypoint's default backoff
		}
		// Gateway API: implementations SHOULD retry connection errors
		// (disconnect, reset, timeout, TCP failure) under any retry
		// stanza; "reset" also retries a try cut by backendRequest.
		rp.RetryOn = []string{"connect-failure", "refused-stream", "reset"}
		if len(rule.Retry.Codes) > 0 {
			rp.RetryOn = append(rp.RetryOn, "retriable-status-codes")
			for _, c := range rule.Retry.Codes {
				rp.RetriableStatusCodes = append(rp.RetriableStatusCodes, int(c))
			}
		}
		r.Retries = rp
	}
	return nil
}

// routeRef names the route a filter belongs to.
type routeRef struct{ kind, namespace, name string }

func (lb *l7Builder) applyHTTPFilter(rt routeRef, f gatewayv1.HTTPRouteFilter, r *model.L7Route, defaultPort uint32) error {
	switch f.Type {
	case gatewayv1.HTTPRouteFilterRequestHeaderModifier:
		if f.RequestHeaderModifier == nil {
			return fmt.Errorf("requestHeaderModifier is missing")
		}
		r.RequestHeaders = mergeHeaderOps(r.RequestHeaders, headerFilter(f.RequestHeaderModifier))
	case gatewayv1.HTTPRouteFilterResponseHeaderModifier:
		if f.ResponseHeaderModifier == nil {
			return fmt.Errorf("responseHeaderModifier is missing")
		}
		r.ResponseHeaders = mergeHeaderOps(r.ResponseHeaders, headerFilter(f.ResponseHeaderModifier))
	case gatewayv1.HTTPRouteFilterRequestRedirect:
		rd := f.RequestRedirect
		if rd == nil {
			return fmt.Errorf("requestRedirect is missing")
		}
		red := &model.Redirect{Code: 302} // Gateway API's default
		if rd.StatusCode != nil {
			red.Code = *rd.StatusCode
		}
		if rd.Scheme != nil {
			red.Scheme = *rd.Scheme
		}
		if rd.Hostname != nil {
			red.Authority = string(*rd.Hostname)
		}
		if rd.Port != nil {
			red.Port = uint32(*rd.Port)
		}
		if rd.Path != nil {
			switch rd.Path.Type {
			case gatewayv1.FullPathHTTPPathModifier:
				if rd.Path.ReplaceFullPath == nil {
					return fmt.Errorf("path.replaceFullPath is missing")
				}
				red.URI = *rd.Path.ReplaceFullPath
			case gatewayv1.PrefixMatchHTTPPathModifier:
				// Only the whole path is replaced by a redirect in this
				// model; with an exact match the two mean the same.
				if rd.Path.ReplacePrefixMatch == nil {
					return fmt.Errorf("path.replacePrefixMatch is missing")
				}
				if !allExact(r.Matches) {
					return fmt.Errorf("a redirect with replacePrefixMatch is supported only on rules whose path matches are Exact; use ReplaceFullPath or a URLRewrite")
				}
				red.URI = *rd.Path.ReplacePrefixMatch
			default:
				return fmt.Errorf("path.type %q is not one of ReplaceFullPath, ReplacePrefixMatch", rd.Path.Type)
			}
		}
		r.Redirect = red
	case gatewayv1.HTTPRouteFilterURLRewrite:
		uw := f.URLRewrite
		if uw == nil {
			return fmt.Errorf("urlRewrite is missing")
		}
		rw := &model.Rewrite{}
		if uw.Hostname != nil {
			rw.Authority = string(*uw.Hostname)
		}
		if uw.Path != nil {
			switch uw.Path.Type {
			case gatewayv1.FullPathHTTPPathModifier:
				if uw.Path.ReplaceFullPath == nil {
					return fmt.Errorf("path.replaceFullPath is missing")
				}
				// The whole path, whatever matched: a regex over all of it.
				rw.URIRegex = &model.RegexRewrite{Pattern: "^.*$", Substitution: strings.ReplaceAll(*uw.Path.ReplaceFullPath, "$", "$$")}
			case gatewayv1.PrefixMatchHTTPPathModifier:
				if uw.Path.ReplacePrefixMatch == nil {
					return fmt.Errorf("path.replacePrefixMatch is missing")
				}
				prefix, ok := onePrefix(r.Matches)
				if !ok {
					return fmt.Errorf("replacePrefixMatch needs every match of the rule to be one PathPrefix match")
				}
				// Gateway API replaces the matched prefix on a path-segment
				// boundary: "/api" with "/v2" turns "/api/x" into "/v2/x".
				repl := strings.ReplaceAll(*uw.Path.ReplacePrefixMatch, "$", "$$")
				p := strings.TrimSuffix(prefix, "/")
				if strings.HasSuffix(repl, "/") && repl != "/" {
					repl = strings.TrimSuffix(repl, "/")
				}
				if repl == "/" {
					repl = ""
				}
				rw.URIRegex = &model.RegexRewrite{Pattern: "^" + regexp.QuoteMeta(p) + "(/.*)?$", Substitution: repl + "${1}"}
				if repl == "" { // to the root: "/api" → "/", "/api/x" → "/x"
					rw.URIRegex = &model.RegexRewrite{Pattern: "^" + regexp.QuoteMeta(p) + "(?:/(.*))?$", Substitution: "/${1}"}
				}
			default:
				return fmt.Errorf("path.type %q is not one of ReplaceFullPath, ReplacePrefixMatch", uw.Path.Type)
			}
		}
		r.Rewrite = rw
	case gatewayv1.HTTPRouteFilterRequestMirror:
		m := f.RequestMirror
		if m == nil {
			return fmt.Errorf("requestMirror is missing")
		}
		d, ok := lb.backend(rt.kind, rt.namespace, rt.name, gatewayv1.BackendRef{BackendObjectReference: m.BackendRef}, defaultPort)
		if !ok {
			return fmt.Errorf("mirror backend %s does not resolve", m.BackendRef.Name)
		}
		pct := 100.0
		switch {
		case m.Percent != nil:
			pct = float64(*m.Percent)
		case m.Fraction != nil:
			den := int32(100)
			if m.Fraction.Denominator != nil {
				den = *m.Fraction.Denominator
			}
			if den <= 0 || m.Fraction.Numerator < 0 || m.Fraction.Numerator > den {
				return fmt.Errorf("mirror fraction %d/%d is not between 0 and 1", m.Fraction.Numerator, den)
			}
			pct = 100 * float64(m.Fraction.Numerator) / float64(den)
		}
		r.Mirrors = append(r.Mirrors, model.Mirror{Cluster: d.Cluster, Subset: d.Subset, Percent: pct})
	case gatewayv1.HTTPRouteFilterCORS:
		c := f.CORS
		if c == nil {
			return fmt.Errorf("cors is missing")
		}
		p := &model.CORSPolicy{}
		for _, o := range c.AllowOrigins {
			s := string(o)
			if s == "*" {
				p.AllowOrigins = append(p.AllowOrigins, model.StringMatch{Regex: ".*"})
			} else {
				p.AllowOrigins = append(p.AllowOrigins, model.StringMatch{Exact: s})
			}
		}
		for _, m := range c.AllowMethods {
			p.AllowMethods = append(p.AllowMethods, string(m))
		}
		for _, h := range c.AllowHeaders {
			p.AllowHeaders = append(p.AllowHeaders, string(h))
		}
		for _, h := range c.ExposeHeaders {
			p.ExposeHeaders = append(p.ExposeHeaders, string(h))
		}
		if c.MaxAge != 0 {
			p.MaxAge = time.Duration(c.MaxAge) * time.Second
		}
		if c.AllowCredentials != nil {
			p.AllowCredentials = *c.AllowCredentials
		}
		r.CORS = p
	case gatewayv1.HTTPRouteFilterExternalAuth:
		x, err := lb.externalAuth(rt, f.ExternalAuth, r.Origin+"/"+r.Name, defaultPort)
		if err != nil {
			return err
		}
		r.ExtAuthz = x
	case gatewayv1.HTTPRouteFilterExtensionRef:
		name := "<none>"
		if f.ExtensionRef != nil {
			name = string(f.ExtensionRef.Kind) + "/" + string(f.ExtensionRef.Name)
		}
		return fmt.Errorf("ExtensionRef %s is not supported by meshlet", name)
	default:
		return fmt.Errorf("filter type %q is not supported by meshlet", f.Type)
	}
	return nil
}

func headerFilter(f *gatewayv1.HTTPHeaderFilter) model.HeaderOps {
	var h model.HeaderOps
	if f == nil {
		return h
	}
	for _, s := range f.Set {
		if h.Set == nil {
			h.Set = map[string]string{}
		}
		h.Set[strings.ToLower(string(s.Name))] = s.Value
	}
	for _, a := range f.Add {
		if h.Add == nil {
			h.Add = map[string]string{}
		}
		h.Add[strings.ToLower(string(a.Name))] = a.Value
	}
	for _, r := range f.Remove {
		h.Remove = append(h.Remove, strings.ToLower(r))
	}
	return h
}

func mergeHeaderOps(a, b model.HeaderOps) model.HeaderOps {
	out := model.HeaderOps{Remove: append(append([]string(nil), a.Remove...), b.Remove...)}
	for _, src := range []model.HeaderOps{a, b} {
		for k, v := range src.Set {
			if out.Set == nil {
				out.Set = map[string]string{}
			}
			out.Set[k] = v
		}
		for k, v := range src.Add {
			if out.Add == nil {
				out.Add = map[string]string{}
			}
			out.Add[k] = v
		}
	}
	return out
}

func allExact(ms []model.RouteMatch) bool {
	if len(ms) == 0 {
		return false
	}
	for _, m := range ms {
		if m.URI == nil || m.URI.Exact == "" {
			return false
		}
	}
	return true
}

// onePrefix returns the path prefix shared by every match of a rule.
func onePrefix(ms []model.RouteMatch) (string, bool) {
	if len(ms) == 0 {
		return "/", true // a rule without matches matches the prefix "/"
	}
	var p string
	for i, m := range ms {
		if m.URI == nil || m.URI.PathPrefix == "" {
			return "", false
		}
		if i > 0 && m.URI.PathPrefix != p {
			return "", false
		}
		p = m.URI.PathPrefix
	}
	return p, true
}

// envoySubstitution turns an Istio/Envoy regex rewrite (`\2/instance/\1`,
// RE2 with backslash group references) into Go's expansion syntax
// ("${2}/instance/${1}"), escaping a literal "$".
func envoySubstitution(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		switch c := s[i]; {
		case c == '$':
			b.WriteString("$$")
		case c == '\\' && i+1 < len(s) && s[i+1] >= '0' && s[i+1] <= '9':
			b.WriteString("${" + string(s[i+1]) + "}")
			i++
		default:
			b.WriteByte(c)
		}
	}
	return b.String()
}
