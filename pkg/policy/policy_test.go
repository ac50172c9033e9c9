package policy

import (
	"net/http"
	"net/netip"
	"strings"
	"testing"
)

func req(mut func(r *Request)) *Request {
	r := &Request{
		SourcePrincipal: "spiffe://cluster.local/ns/default/sa/sleep",
		SourceNamespace: "default",
		SourceIP:        netip.MustParseAddr("198.18.0.10"),
		DestinationIP:   netip.MustParseAddr("198.18.0.20"),
		DestinationPort: 8000,
		Host:            "httpbin.foo.svc.cluster.local:8000",
		Method:          "GET",
		Path:            "/info",
		Headers:         http.Header{},
	}
	if mut != nil {
		mut(r)
	}
	return r
}

// The policies below are the examples of Istio's AuthorizationPolicy reference
// and its authorization tasks, translated field by field.
var (
	allowNothing = &Policy{Namespace: "foo", Name: "allow-nothing"}
	allowAll     = &Policy{Namespace: "foo", Name: "allow-all", Rules: []Rule{{}}}
	denyAll      = &Policy{Namespace: "foo", Name: "deny-all", Action: Deny, Rules: []Rule{{}}}
	// "allow requests from sleep or namespace test to GET /info* or POST /data,
	// when the request has a valid JWT issued by https://accounts.google.com"
	httpbin = &Policy{Namespace: "foo", Name: "httpbin", Action: Allow, Rules: []Rule{{
		From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}, {Namespaces: []string{"test"}}},
		To:   []Operation{{Methods: []string{"GET"}, Paths: []string{"/info*"}}, {Methods: []string{"POST"}, Paths: []string{"/data"}}},
		When: []Condition{{Key: "request.auth.claims[iss]", Values: []string{"https://accounts.google.com"}}},
	}}}
	// "deny requests from the dev namespace to POST"
	denyDevPost = &Policy{Namespace: "foo", Name: "deny-dev-post", Action: Deny, Rules: []Rule{{
		From: []Source{{Namespaces: []string{"dev"}}},
		To:   []Operation{{Methods: []string{"POST"}}},
	}}}
	// "deny requests to /admin unless from a request principal" (notRequestPrincipals)
	requireJWT = &Policy{Namespace: "foo", Name: "require-jwt", Action: Deny, Rules: []Rule{{
		From: []Source{{NotRequestPrincipals: []string{"*"}}},
	}}}
	// "deny paths under /admin, by suffix .secret, on any host but foo.com"
	denyAdmin = &Policy{Namespace: "foo", Name: "deny-admin", Action: Deny, Rules: []Rule{{
		To: []Operation{{Paths: []string{"/admin*", "*.secret"}}},
	}}}
	onlyPort = &Policy{Namespace: "foo", Name: "only-8000-from-ipblock", Rules: []Rule{{
		From: []Source{{IPBlocks: []string{"198.18.0.0/24"}, NotIPBlocks: []string{"198.18.0.66"}}},
		To:   []Operation{{Ports: []string{"8000"}}},
	}}}
	headerWhen = &Policy{Namespace: "foo", Name: "header", Rules: []Rule{{
		When: []Condition{{Key: "request.headers[version]", Values: []string{"v1", "v2"}}},
	}}}
	hosts = &Policy{Namespace: "foo", Name: "hosts", Rules: []Rule{{
		To: []Operation{{Hosts: []string{"*.foo.svc.cluster.local", "Example.COM"}}},
	}}}
)

func googleAuth() *Auth {
	return &Auth{Principal: "https://accounts.google.com/alice", Claims: map[string]any{"iss": "https://accounts.google.com", "groups": []any{"admin", "dev"}}}
}

func TestEvaluate(t *testing.T) {
	tests := []struct {
		name       string
		policies   []*Policy
		req        *Request
		wantAllow  bool
		wantPolicy string
	}{
		{name: "no policy allows", req: req(nil), wantAllow: true},
		{name: "allow-nothing denies", policies: []*Policy{allowNothing}, req: req(nil)},
		{name: "allow-all allows", policies: []*Policy{allowAll}, req: req(nil), wantAllow: true, wantPolicy: "foo/allow-all"},
		{name: "deny-all beats allow-all", policies: []*Policy{allowAll, denyAll}, req: req(nil), wantPolicy: "foo/deny-all"},
		{name: "httpbin example: principal, GET /info, google JWT", policies: []*Policy{httpbin}, req: req(func(r *Request) { r.Auth = googleAuth() }), wantAllow: true, wantPolicy: "foo/httpbin"},
		{name: "httpbin example: namespace test, POST /data", policies: []*Policy{httpbin}, req: req(func(r *Request) {
			r.SourcePrincipal, r.SourceNamespace, r.Method, r.Path, r.Auth = "cluster.local/ns/test/sa/x", "test", "POST", "/data", googleAuth()
		}), wantAllow: true, wantPolicy: "foo/httpbin"},
		{name: "httpbin example: POST /info is not listed", policies: []*Policy{httpbin}, req: req(func(r *Request) { r.Method, r.Auth = "POST", googleAuth() })},
		{name: "httpbin example: no JWT fails the when", policies: []*Policy{httpbin}, req: req(nil)},
		{name: "httpbin example: other principal and namespace", policies: []*Policy{httpbin}, req: req(func(r *Request) {
			r.SourcePrincipal, r.SourceNamespace, r.Auth = "cluster.local/ns/prod/sa/x", "prod", googleAuth()
		})},
		{name: "deny dev POST", policies: []*Policy{allowAll, denyDevPost}, req: req(func(r *Request) { r.SourceNamespace, r.Method = "dev", "POST" }), wantPolicy: "foo/deny-dev-post"},
		{name: "dev GET is allowed", policies: []*Policy{allowAll, denyDevPost}, req: req(func(r *Request) { r.SourceNamespace = "dev" }), wantAllow: true, wantPolicy: "foo/allow-all"},
		{name: "notRequestPrincipals denies without a token", policies: []*Policy{requireJWT}, req: req(nil), wantPolicy: "foo/require-jwt"},
		{name: "notRequestPrincipals allows with a token", policies: []*Policy{requireJWT}, req: req(func(r *Request) { r.Auth = googleAuth() }), wantAllow: true},
		{name: "prefix path denied", policies: []*Policy{denyAdmin}, req: req(func(r *Request) { r.Path = "/admin/users" }), wantPolicy: "foo/deny-admin"},
		{name: "suffix path denied", policies: []*Policy{denyAdmin}, req: req(func(r *Request) { r.Path = "/x/key.secret" }), wantPolicy: "foo/deny-admin"},
		{name: "other path allowed", policies: []*Policy{denyAdmin}, req: req(func(r *Request) { r.Path = "/public/admin" }), wantAllow: true},
		{name: "ip block and port", policies: []*Policy{onlyPort}, req: req(nil), wantAllow: true, wantPolicy: "foo/only-8000-from-ipblock"},
		{name: "notIpBlocks excludes", policies: []*Policy{onlyPort}, req: req(func(r *Request) { r.SourceIP = netip.MustParseAddr("198.18.0.66") })},
		{name: "wrong port", policies: []*Policy{onlyPort}, req: req(func(r *Request) { r.DestinationPort = 9000 })},
		{name: "header when matches", policies: []*Policy{headerWhen}, req: req(func(r *Request) { r.Headers = http.Header{"Version": {"v2"}} }), wantAllow: true, wantPolicy: "foo/header"},
		{name: "header when misses", policies: []*Policy{headerWhen}, req: req(func(r *Request) { r.Headers = http.Header{"Version": {"v3"}} })},
		{name: "host suffix ignores port", policies: []*Policy{hosts}, req: req(nil), wantAllow: true, wantPolicy: "foo/hosts"},
		{name: "host is case-insensitive", policies: []*Policy{hosts}, req: req(func(r *Request) { r.Host = "example.com" }), wantAllow: true, wantPolicy: "foo/hosts"},
		{name: "host with a trailing dot", policies: []*Policy{hosts}, req: req(func(r *Request) { r.Host = "example.com.:80" }), wantAllow: true, wantPolicy: "foo/hosts"},
		{name: "other host", policies: []*Policy{hosts}, req: req(func(r *Request) { r.Host = "evil.com" })},
		{name: "principals with spiffe prefix", policies: []*Policy{{Namespace: "foo", Name: "p", Rules: []Rule{{From: []Source{{Principals: []string{"spiffe://cluster.local/ns/default/*"}}}}}}}, req: req(nil), wantAllow: true, wantPolicy: "foo/p"},
		{name: "principals * needs an identity", policies: []*Policy{{Namespace: "foo", Name: "p", Rules: []Rule{{From: []Source{{Principals: []string{"*"}}}}}}}, req: req(func(r *Request) { r.SourcePrincipal = "" })},
		{name: "nested claim list", policies: []*Policy{{Namespace: "foo", Name: "c", Rules: []Rule{{When: []Condition{{Key: "request.auth.claims[groups]", Values: []string{"admin"}}}}}}}, req: req(func(r *Request) { r.Auth = googleAuth() }), wantAllow: true, wantPolicy: "foo/c"},
		{name: "audit never decides", policies: []*Policy{{Namespace: "foo", Name: "audit", Action: Audit, Rules: []Rule{{}}}}, req: req(nil), wantAllow: true},
		{name: "dry-run deny is not enforced", policies: []*Policy{{Namespace: "foo", Name: "dry", Action: Deny, DryRun: true, Rules: []Rule{{}}}}, req: req(nil), wantAllow: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			d := Evaluate(tt.policies, tt.req)
			if d.Allow != tt.wantAllow || d.Policy != tt.wantPolicy {
				t.Errorf("Evaluate() = {Allow:%v Policy:%q Reason:%q}; want {Allow:%v Policy:%q}", d.Allow, d.Policy, d.Reason, tt.wantAllow, tt.wantPolicy)
			}
		})
	}
}

func TestEvaluateAuditAndDryRun(t *testing.T) {
	audit := &Policy{Namespace: "foo", Name: "audit", Action: Audit, Rules: []Rule{{To: []Operation{{Paths: []string{"/info"}}}}}}
	dry := &Policy{Namespace: "foo", Name: "dry", Action: Deny, DryRun: true, Rules: []Rule{{}}}
	d := Evaluate([]*Policy{audit, dry}, req(nil))
	if !d.Allow || d.Audit != "foo/audit" {
		t.Fatalf("Evaluate() = %+v; want allowed with Audit foo/audit", d)
	}
	if d.Shadow == nil || d.Shadow.Allow || d.Shadow.Policy != "foo/dry" {
		t.Fatalf("Evaluate().Shadow = %+v; want a shadow deny by foo/dry", d.Shadow)
	}
	if d := Evaluate([]*Policy{audit}, req(nil)); d.Shadow != nil {
		t.Errorf("Evaluate() without dry-run policies has Shadow %+v; want nil", d.Shadow)
	}
}

func TestEvaluateL4(t *testing.T) {
	allowWithPath := &Policy{Namespace: "foo", Name: "allow-path", Rules: []Rule{{
		From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}},
		To:   []Operation{{Paths: []string{"/info"}}},
	}}}
	allowL4 := &Policy{Namespace: "foo", Name: "allow-l4", Rules: []Rule{{
		From: []Source{{Principals: []string{"cluster.local/ns/default/sa/sleep"}}},
		To:   []Operation{{Ports: []string{"8000"}}},
		When: []Condition{{Key: "source.ip", Values: []string{"198.18.0.0/16"}}},
	}}}
	denyGetFromDev := &Policy{Namespace: "foo", Name: "deny-get-dev", Action: Deny, Rules: []Rule{{
		From: []Source{{Namespaces: []string{"dev"}}},
		To:   []Operation{{Methods: []string{"GET"}}},
	}}}
	tests := []struct {
		name            string
		policies        []*Policy
		req             *Request
		wantAllow       bool
		wantUnmatchable bool
	}{
		{name: "L4-only allow matches", policies: []*Policy{allowL4}, req: req(nil), wantAllow: true},
		{name: "allow rule with a path matches nothing at L4", policies: []*Policy{allowWithPath}, req: req(nil), wantUnmatchable: true},
		{name: "the same request passes at L7", policies: []*Policy{allowWithPath}, req: req(nil), wantAllow: true},
		{name: "deny with a method denies every dev connection at L4", policies: []*Policy{allowL4, denyGetFromDev}, req: req(func(r *Request) { r.SourceNamespace = "dev"; r.Method = "POST" }), wantUnmatchable: true},
		{name: "deny with a method still spares other namespaces", policies: []*Policy{allowL4, denyGetFromDev}, req: req(nil), wantAllow: true, wantUnmatchable: true},
		{name: "requestPrincipals deny denies all at L4", policies: []*Policy{requireJWT}, req: req(func(r *Request) { r.Auth = googleAuth() }), wantUnmatchable: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			eval := EvaluateL4
			if strings.Contains(tt.name, "at L7") {
				eval = Evaluate
			}
			d := eval(tt.policies, tt.req)
			if d.Allow != tt.wantAllow || (len(d.Unmatchable) > 0) != tt.wantUnmatchable {
				t.Errorf("EvaluateL4() = {Allow:%v Reason:%q Unmatchable:%v}; want Allow %v, unmatchable %v", d.Allow, d.Reason, d.Unmatchable, tt.wantAllow, tt.wantUnmatchable)
			}
		})
	}
}

func TestValidate(t *testing.T) {
	tests := []struct {
		name    string
		p       *Policy
		wantErr string
	}{
		{name: "ok", p: httpbin},
		{name: "custom without a provider", p: &Policy{Name: "x", Action: Custom}, wantErr: "provider.name"},
		{name: "custom", p: &Policy{Name: "x", Action: Custom, Provider: "ext-authz"}},
		{name: "unknown action", p: &Policy{Name: "x", Action: "LOG"}, wantErr: "unknown action"},
		{name: "bad cidr", p: &Policy{Name: "x", Rules: []Rule{{From: []Source{{IPBlocks: []string{"10.0.0.0/33"}}}}}}, wantErr: "ip block"},
		{name: "bad port", p: &Policy{Name: "x", Rules: []Rule{{To: []Operation{{Ports: []string{"http"}}}}}}, wantErr: "port"},
		{name: "unknown key", p: &Policy{Name: "x", Rules: []Rule{{When: []Condition{{Key: "request.time", Values: []string{"x"}}}}}}, wantErr: "not supported"},
		{name: "header key without name", p: &Policy{Name: "x", Rules: []Rule{{When: []Condition{{Key: "request.headers", Values: []string{"x"}}}}}}, wantErr: "request.headers[name]"},
		{name: "path template", p: &Policy{Name: "x", Rules: []Rule{{To: []Operation{{Paths: []string{"/a/{*}/b"}}}}}}, wantErr: "path templates"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.p.Validate()
			if tt.wantErr == "" {
				if err != nil {
					t.Fatalf("Validate() = %v; want nil", err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("Validate() = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

// TestCustom: a matching CUSTOM policy names its provider for the caller to
// ask and leaves DENY and ALLOW to decide the rest; one that does not match
// asks nothing; at L4 a match denies (fail closed), unless the caller asks
// providers about connections (EvaluateTCP: a waypoint relaying TCP).
func TestCustom(t *testing.T) {
	admin := &Policy{Namespace: "foo", Name: "ext", Action: Custom, Provider: "authz", Rules: []Rule{{To: []Operation{{Paths: []string{"/admin*"}}}}}}
	l4 := &Policy{Namespace: "foo", Name: "ext-l4", Action: Custom, Provider: "authz", Rules: []Rule{{To: []Operation{{Ports: []string{"8080"}}}}}}
	deny := &Policy{Namespace: "foo", Name: "deny", Action: Deny, Rules: []Rule{{To: []Operation{{Methods: []string{"DELETE"}}}}}}
	for _, tt := range []struct {
		name      string
		policies  []*Policy
		req       *Request
		l4        bool
		wantAllow bool
		wantCheck string
		tcp       bool // EvaluateTCP instead of EvaluateL4
	}{
		{"matching: ask the provider", []*Policy{admin}, &Request{Path: "/admin/users", Method: "GET"}, false, true, "authz", false},
		{"not matching: nothing to ask", []*Policy{admin}, &Request{Path: "/public", Method: "GET"}, false, true, "", false},
		{"matching and denied locally too", []*Policy{admin, deny}, &Request{Path: "/admin/users", Method: "DELETE"}, false, false, "authz", false},
		{"dry-run: nothing to ask", []*Policy{{Namespace: "foo", Name: "dry", Action: Custom, Provider: "authz", DryRun: true, Rules: []Rule{{}}}}, &Request{Path: "/"}, false, true, "", false},
		{"L4 match: denied", []*Policy{l4}, &Request{DestinationPort: 8080}, true, false, "", false},
		{"L4 no match: allowed", []*Policy{l4}, &Request{DestinationPort: 9090}, true, true, "", false},
		{"L4 rule with L7 attributes: denied", []*Policy{admin}, &Request{DestinationPort: 8080}, true, false, "", false},
		{"TCP match: ask the provider", []*Policy{admin}, &Request{DestinationPort: 8080}, true, true, "authz", true},
		{"TCP match, denied locally too", []*Policy{admin, {Namespace: "foo", Name: "deny-port", Action: Deny, Rules: []Rule{{To: []Operation{{Ports: []string{"8080"}}}}}}},
			&Request{DestinationPort: 8080}, true, false, "authz", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var d Decision
			switch {
			case tt.tcp:
				d = EvaluateTCP(tt.policies, tt.req)
			case tt.l4:
				d = EvaluateL4(tt.policies, tt.req)
			default:
				d = Evaluate(tt.policies, tt.req)
			}
			if d.Allow != tt.wantAllow || d.Check != tt.wantCheck || (d.Check != "" && d.CheckPolicy != "foo/ext") {
				t.Errorf("decision = {Allow:%v Check:%q CheckPolicy:%q Reason:%q}; want allow %v, check %q", d.Allow, d.Check, d.CheckPolicy, d.Reason, tt.wantAllow, tt.wantCheck)
			}
		})
	}
}
