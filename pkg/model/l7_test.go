package model

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func validL7() *L7Config {
	return &L7Config{
		Listeners: []L7Listener{{
			Name: "http",
			VirtualHosts: []VirtualHost{{
				Name:    "reviews",
				Domains: []string{"reviews.default.svc.cluster.local", "*"},
				Routes: []L7Route{{
					Name:    "canary",
					Matches: []RouteMatch{{URI: &StringMatch{Prefix: "/api"}, Headers: []HeaderMatch{{Name: "end-user", Value: StringMatch{Regex: "jason|ann"}}}}},
					Destinations: []WeightedDestination{
						{Cluster: "reviews", Subset: "v1", Weight: 90},
						{Cluster: "reviews", Subset: "v2", Weight: 10},
					},
					Retries: &RetryPolicy{Attempts: 3, PerTryTimeout: time.Second, RetryOn: []string{"5xx", "connect-failure", "503"}},
					Fault:   &FaultInjection{Abort: &FaultAbort{HTTPStatus: 503, Percent: 10}},
					Mirrors: []Mirror{{Cluster: "reviews", Subset: "v2", Percent: 100}},
				}},
			}},
		}},
		Clusters: []L7Cluster{{
			Name:      "reviews",
			Endpoints: []L7Endpoint{{Address: "10.0.0.1:9080", Labels: map[string]string{"version": "v1"}}, {Address: "[fd00::1]:9080", Labels: map[string]string{"version": "v2"}}},
			Subsets:   []Subset{{Name: "v1", Labels: map[string]string{"version": "v1"}}, {Name: "v2", Labels: map[string]string{"version": "v2"}}},
			Traffic:   TrafficPolicy{LB: LBPolicy{Simple: LBRoundRobin}, Outlier: &OutlierDetection{Consecutive5xxErrors: 5}},
		}},
		JWTProviders: []JWTProvider{{Name: "example", Issuer: "https://issuer.example", JWKSURI: "https://issuer.example/jwks.json"}},
	}
}

func TestL7ConfigValidate(t *testing.T) {
	tests := []struct {
		name    string
		mutate  func(c *L7Config)
		wantErr string // substring; empty means valid
	}{
		{name: "valid", mutate: func(*L7Config) {}},
		{name: "no listeners", mutate: func(c *L7Config) { c.Listeners = nil }, wantErr: "no listeners"},
		{name: "two listeners on one port", mutate: func(c *L7Config) {
			c.Listeners[0].Port = 80
			second := c.Listeners[0]
			second.Name = "again"
			c.Listeners = append(c.Listeners, second)
		}, wantErr: `port 80 is listener`},
		{name: "two listeners on any port (HBONE)", mutate: func(c *L7Config) {
			c.Listeners[0].Port = 0
			second := c.Listeners[0]
			second.Name = "again"
			c.Listeners = append(c.Listeners, second)
		}},
		{name: "passthrough beside plaintext hosts", mutate: func(c *L7Config) {
			c.Listeners[0].Passthrough = []PassthroughRoute{{Name: "p", SNIHosts: []string{"a.example.com"}, Destinations: c.Listeners[0].VirtualHosts[0].Routes[0].Destinations}}
		}, wantErr: "a port serves HTTP or TLS"},
		{name: "tcp route beside hosts", mutate: func(c *L7Config) {
			c.Listeners[0].TCP = &TCPRoute{Name: "t", Destinations: c.Listeners[0].VirtualHosts[0].Routes[0].Destinations}
		}, wantErr: "a tcp route takes the whole port"},
		{name: "tcp route alone", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts = nil
			c.Listeners[0].TCP = &TCPRoute{Name: "t", Destinations: []WeightedDestination{{Cluster: "nope", Weight: 1}}}
		}, wantErr: `tcp "t": destination cluster "nope" is not defined`},
		{name: "unknown cluster", mutate: func(c *L7Config) { c.Listeners[0].VirtualHosts[0].Routes[0].Destinations[0].Cluster = "nope" }, wantErr: `unknown cluster "nope"`},
		{name: "unknown subset", mutate: func(c *L7Config) { c.Listeners[0].VirtualHosts[0].Routes[0].Destinations[0].Subset = "v9" }, wantErr: `no subset "v9"`},
		{name: "zero weights", mutate: func(c *L7Config) {
			d := c.Listeners[0].VirtualHosts[0].Routes[0].Destinations
			d[0].Weight, d[1].Weight = 0, 0
		}, wantErr: "all weights are zero"},
		{name: "direct response destination", mutate: func(c *L7Config) {
			d := c.Listeners[0].VirtualHosts[0].Routes[0].Destinations
			d[1] = WeightedDestination{Weight: 10, DirectResponse: &DirectResponse{Status: 500}}
		}},
		{name: "direct response destination with cluster", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Destinations[1].DirectResponse = &DirectResponse{Status: 500}
		}, wantErr: "set cluster or directResponse, not both"},
		{name: "direct response destination status", mutate: func(c *L7Config) {
			d := c.Listeners[0].VirtualHosts[0].Routes[0].Destinations
			d[1] = WeightedDestination{Weight: 10, DirectResponse: &DirectResponse{Status: 600}}
		}, wantErr: "destinations[1]: directResponse: status 600 out of range"},
		{name: "bad regex", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].Headers[0].Value.Regex = "(unclosed"
		}, wantErr: "compile regex"},
		{name: "huge regex", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].URI = &StringMatch{Regex: "[a-z]{600}x{600}"}
		}, wantErr: "over the limit"},
		{name: "two match kinds", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].URI = &StringMatch{Prefix: "/a", Exact: "/a"}
		}, wantErr: "exactly one of exact, prefix or regex"},
		{name: "path prefix", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].URI = &StringMatch{PathPrefix: "/api/"}
		}},
		{name: "path prefix and prefix", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].URI = &StringMatch{Prefix: "/a", PathPrefix: "/a"}
		}, wantErr: "exactly one of exact, prefix or regex"},
		{name: "path prefix without slash", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].URI = &StringMatch{PathPrefix: "api"}
		}, wantErr: `pathPrefix "api" does not start with /`},
		{name: "header path prefix and exact", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Matches[0].Headers[0].Value = StringMatch{Exact: "a", PathPrefix: "/a"}
		}, wantErr: "more than one of"},
		{name: "redirect and destinations", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Redirect = &Redirect{URI: "/x"}
		}, wantErr: "exactly one of destinations, redirect or directResponse"},
		{name: "bad retryOn", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Retries.RetryOn = []string{"sometimes"}
		}, wantErr: `retryOn "sometimes"`},
		{name: "negative backoff", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Retries.Backoff = -time.Millisecond
		}, wantErr: "backoff must not be negative"},
		{name: "fault percent", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].Fault.Abort.Percent = 101
		}, wantErr: "out of range 0-100"},
		{name: "bad domain", mutate: func(c *L7Config) { c.Listeners[0].VirtualHosts[0].Domains = []string{"a*.b"} }, wantErr: "domain"},
		{name: "bad endpoint", mutate: func(c *L7Config) { c.Clusters[0].Endpoints[0].Address = "10.0.0.1" }, wantErr: "want host:port"},
		{name: "endpoint identity not SPIFFE", mutate: func(c *L7Config) { c.Clusters[0].Endpoints[0].Identity = "ns/app/sa/reviews" }, wantErr: `identity "ns/app/sa/reviews": want a spiffe:// ID`},
		{name: "via waypoint without a port", mutate: func(c *L7Config) {
			c.Clusters[0].Endpoints[0].Via = &L7Via{Waypoint: NamespacedName{"app", "wp"}, Address: "10.96.9.9", Identity: "spiffe://cluster.local/ns/app/sa/wp"}
		}, wantErr: `waypoint app/wp address "10.96.9.9": want ip:port`},
		{name: "via waypoint without an identity", mutate: func(c *L7Config) {
			c.Clusters[0].Endpoints[0].Via = &L7Via{Waypoint: NamespacedName{"app", "wp"}, Address: "10.96.9.9:15008"}
		}, wantErr: `waypoint app/wp identity "": want a spiffe:// ID`},
		{name: "passthrough", mutate: func(c *L7Config) { c.Clusters[0].Traffic.LB.Simple = LBPassthrough }, wantErr: "PASSTHROUGH"},
		{name: "two hash keys", mutate: func(c *L7Config) {
			c.Clusters[0].Traffic.LB.ConsistentHash = &ConsistentHash{Header: "x", SourceIP: true}
		}, wantErr: "consistentHash"},
		{name: "jwt without keys", mutate: func(c *L7Config) { c.JWTProviders[0].JWKSURI = "" }, wantErr: "set jwks or jwksUri"},
		{name: "jwt bad uri", mutate: func(c *L7Config) { c.JWTProviders[0].JWKSURI = "file:///etc/passwd" }, wantErr: "want an http(s) URL"},
		{name: "header op on host", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].RequestHeaders.Set = map[string]string{"Host": "x"}
		}, wantErr: "rewrite.authority"},
		{name: "rate limit without tokens", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].RateLimit = &RateLimit{FillInterval: time.Second}
		}, wantErr: "maxTokens"},
		{name: "rate limit key", mutate: func(c *L7Config) {
			c.Listeners[0].VirtualHosts[0].Routes[0].RateLimit = &RateLimit{MaxTokens: 1, FillInterval: time.Second, Key: "cookie:x"}
		}, wantErr: "header:<name>"},
		{name: "duplicate cluster", mutate: func(c *L7Config) { c.Clusters = append(c.Clusters, c.Clusters[0]) }, wantErr: "duplicate cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := validL7()
			tt.mutate(c)
			err := c.Validate()
			switch {
			case tt.wantErr == "" && err != nil:
				t.Fatalf("Validate() = %v; want nil", err)
			case tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)):
				t.Fatalf("Validate() = %v; want error containing %q", err, tt.wantErr)
			}
		})
	}
}

func TestCompileRegexAnchored(t *testing.T) {
	re, err := CompileRegex("/api/v[0-9]+")
	if err != nil {
		t.Fatal(err)
	}
	for in, want := range map[string]bool{"/api/v1": true, "/api/v12": true, "/x/api/v1": false, "/api/v1/extra": false} {
		if got := re.MatchString(in); got != want {
			t.Errorf("CompileRegex(/api/v[0-9]+).MatchString(%q) = %v; want %v", in, got, want)
		}
	}
}

// TestRetryPolicyBackoffOmitted: a policy without a backoff encodes as it
// did before the field existed, so a waypoint that decodes strictly and
// knows no Backoff still takes it.
func TestRetryPolicyBackoffOmitted(t *testing.T) {
	tests := []struct {
		rp   RetryPolicy
		want bool // "Backoff" in the JSON
	}{
		{RetryPolicy{Attempts: 2, PerTryTimeout: time.Second}, false},
		{RetryPolicy{Attempts: 2, Backoff: 100 * time.Millisecond}, true},
	}
	for _, tt := range tests {
		b, err := json.Marshal(tt.rp)
		if err != nil {
			t.Fatal(err)
		}
		if got := strings.Contains(string(b), `"Backoff"`); got != tt.want {
			t.Errorf("json.Marshal(%+v) = %s; Backoff present %v, want %v", tt.rp, b, got, tt.want)
		}
	}
}
