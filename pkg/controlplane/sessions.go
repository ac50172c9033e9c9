package controlplane

import (
	"crypto/sha256"
	"encoding/hex"
	"slices"
	"strconv"
	"strings"
	"time"

	gatewayv1 "sigs.k8s.io/gateway-api/apis/v1"

	"github.com/meshlet/meshlet/pkg/model"
)

// Session persistence (strong session affinity) from Gateway API route
// rules' sessionPersistence (GEP-1619) and from Istio's Service labels
// istio.io/persistent-session (a cookie: "name" or "name:path") and
// istio.io/persistent-session-header (a header name). Istio honours the
// labels only with PILOT_ENABLE_PERSISTENT_SESSION_FILTER set; meshlet
// always does: the label is the user's explicit ask.

const (
	labelPersistentSession       = "istio.io/persistent-session"
	labelPersistentSessionHeader = "istio.io/persistent-session-header"
)

// ruleSession translates rule's sessionPersistence of route kind ns/name
// (rule names the rule in messages and, without a sessionName, in the
// generated one); nil when there is none or it is invalid (reported on the
// route, the rule then balances as usual).
func (lb *l7Builder) ruleSession(kind, ns, name, rule string, sp *gatewayv1.SessionPersistence) *model.SessionPersistence {
	if sp == nil {
		return nil
	}
	warn := func(format string, args ...any) *model.SessionPersistence {
		lb.bd.rejecter(kind, ns, name).warn(rule+".sessionPersistence: "+format+"; the rule balances without it", args...)
		return nil
	}
	// A unique name per rule when none is given (GEP-1619): rules never
	// share sessions, even to the same Service.
	id := kind + " " + ns + "/" + name + " " + rule
	sum := sha256.Sum256([]byte(kind + "/" + ns + "/" + name + "/" + rule))
	sessionName := "meshlet-session-" + hex.EncodeToString(sum[:5])
	if sp.SessionName != nil && *sp.SessionName != "" {
		sessionName = *sp.SessionName
		// GEP-1619: two rules must not share sessions; one name for both
		// makes each overwrite the other's token when a client uses both.
		if lb.bd.sessionNames == nil {
			lb.bd.sessionNames = map[string]string{}
		}
		if first, ok := lb.bd.sessionNames[sessionName]; !ok {
			lb.bd.sessionNames[sessionName] = id
		} else if first != id {
			lb.bd.rejecter(kind, ns, name).warn("%s.sessionPersistence: sessionName %q is also %s's: a client of both rules loses its session to each in turn; give each rule its own name", rule, sessionName, first)
		}
	}
	s := &model.SessionPersistence{Cookie: sessionName}
	if sp.Type != nil && *sp.Type == gatewayv1.HeaderBasedSessionPersistence {
		s = &model.SessionPersistence{Header: sessionName}
	}
	if sp.AbsoluteTimeout != nil {
		d, err := time.ParseDuration(string(*sp.AbsoluteTimeout))
		if err != nil || d <= 0 {
			return warn("absoluteTimeout %q is not a positive duration (such as \"1h\")", *sp.AbsoluteTimeout)
		}
		s.Timeout = d
	}
	if c := sp.CookieConfig; c != nil && c.LifetimeType != nil && *c.LifetimeType == gatewayv1.PermanentCookieLifetimeType {
		if s.Cookie == "" {
			return warn("cookieConfig is for type Cookie")
		}
		if s.Timeout == 0 {
			return warn("a Permanent cookie needs absoluteTimeout (its lifetime)")
		}
		s.Permanent = true
	}
	if err := s.Validate(); err != nil {
		return warn("%v", err)
	}
	return s
}

// ruleLabel names rule i of a route in messages and generated names: by
// its name when it has one (stable when rules are added before it).
func ruleLabel(i int, name *gatewayv1.SectionName) string {
	if name != nil && *name != "" {
		return "rules[" + string(*name) + "]"
	}
	return "rules[" + strconv.Itoa(i) + "]"
}

// withCookiePath gives each route split from a rule with a session cookie
// the cookie Path GEP-1619 reads from its path match: the exact path, the
// path prefix, a regular expression's literal prefix up to its last '/';
// "/" for a route matching every path. Routes share the Session otherwise.
func withCookiePath(r *model.L7Route) {
	if r.Session == nil || r.Session.Cookie == "" {
		return
	}
	var m *model.StringMatch
	if len(r.Matches) == 1 {
		m = r.Matches[0].URI
	}
	s := *r.Session
	s.CookiePath = sessionCookiePath(m)
	r.Session = &s
}

// sessionCookiePath is the cookie Path for routes matching m (see
// withCookiePath); a plain prefix (Istio's, gRPC services') is cut back to
// its last '/', for the cookie to cover whole path segments.
func sessionCookiePath(m *model.StringMatch) string {
	var p string
	switch {
	case m == nil || m.IgnoreCase:
		return "/"
	case m.Exact != "":
		p = m.Exact
	case m.PathPrefix != "":
		p = m.PathPrefix
	case m.Prefix != "":
		p = m.Prefix[:strings.LastIndexByte(m.Prefix, '/')+1]
	case m.Regex != "":
		re, err := model.CompileRegex(m.Regex)
		if err != nil {
			return "/"
		}
		lit, _ := re.LiteralPrefix()
		p = lit[:strings.LastIndexByte(lit, '/')+1]
	}
	if !strings.HasPrefix(p, "/") || strings.ContainsAny(p, ";,\" \t\r\n\x00") {
		return "/"
	}
	if len(p) > 1 {
		p = strings.TrimSuffix(p, "/")
	}
	return p
}

// labelSession is the session persistence a Service's labels ask for: the
// cookie label ("name" or "name:path") wins over the header label; nil
// without either, or when the value is not valid (reported on the Service
// through r).
func labelSession(r *rejections, labels map[string]string) *model.SessionPersistence {
	var s *model.SessionPersistence
	var label string
	if v := labels[labelPersistentSession]; v != "" {
		label = labelPersistentSession
		cookie, path, _ := strings.Cut(v, ":")
		s = &model.SessionPersistence{Cookie: cookie, CookiePath: path}
	} else if v := labels[labelPersistentSessionHeader]; v != "" {
		label = labelPersistentSessionHeader
		s = &model.SessionPersistence{Header: v}
	} else {
		return nil
	}
	if err := s.Validate(); err != nil {
		r.warn("label %s: %v; requests to it balance without session persistence", label, err)
		return nil
	}
	return s
}

// finishSessions gives the routes of cfg without session persistence of
// their own the one their first destination's Service asks for by label (a
// route rule's sessionPersistence wins over it, as GEP-1619 has a rule's
// win over its backends'), then drops the draining endpoints of the
// clusters no session route sends to: they only serve pinned sessions, and
// the other configs need not change while a pod terminates.
func (bd *build) finishSessions(cfg *model.L7Config) {
	pinned := map[string]bool{} // clusters some session route sends to
	for li := range cfg.Listeners {
		for vi := range cfg.Listeners[li].VirtualHosts {
			routes := cfg.Listeners[li].VirtualHosts[vi].Routes
			for i := range routes {
				r := &routes[i]
				if r.Session == nil && len(bd.svcSessions) > 0 && len(r.Destinations) > 0 && r.Destinations[0].Cluster != "" {
					_, host, _ := strings.Cut(r.Destinations[0].Cluster, "||")
					r.Session = bd.svcSessions[bd.hostOwners[host]]
				}
				if r.Session != nil {
					for _, d := range r.Destinations {
						pinned[d.Cluster] = true
					}
				}
			}
		}
	}
	for i := range cfg.Clusters {
		c := &cfg.Clusters[i]
		if !pinned[c.Name] && slices.ContainsFunc(c.Endpoints, func(e model.L7Endpoint) bool { return e.Draining }) {
			c.Endpoints = slices.DeleteFunc(slices.Clone(c.Endpoints), func(e model.L7Endpoint) bool { return e.Draining })
		}
	}
}
