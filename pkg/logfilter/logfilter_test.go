package logfilter

import (
	"strings"
	"testing"
	"time"
)

func TestCompile(t *testing.T) {
	for _, tt := range []struct {
		expr, err string
	}{
		{"response.code >= 400", ""},
		{"request.headers['x-debug'] == 'true' || response.code >= 500", ""},
		{"request.duration > duration('500ms')", ""},
		{"", "empty"},
		{"response.code >=", "Syntax error"},
		{"responses.code >= 400", "undeclared reference to 'responses'"},
		{"response.code + 1", "must be a condition"},
		{"'not a condition'", "must be a condition"},
		{strings.Repeat("a", maxExpression+1), "at most"},
	} {
		_, err := Compile(tt.expr)
		switch {
		case tt.err == "" && err != nil:
			t.Errorf("Compile(%.40q) = %v; want ok", tt.expr, err)
		case tt.err != "" && (err == nil || !strings.Contains(err.Error(), tt.err)):
			t.Errorf("Compile(%.40q) = %v; want an error containing %q", tt.expr, err, tt.err)
		}
	}
}

// TestMatch: the expressions Istio's documentation and users write, over one
// request's attributes.
func TestMatch(t *testing.T) {
	a := &Attributes{
		Method: "GET", Path: "/api/items?x=1", URLPath: "/api/items", Host: "shop.example", Scheme: "http", Protocol: "HTTP/1.1",
		RequestHeaders: map[string]string{"x-debug": "true", "user-agent": "curl/8"}, UserAgent: "curl/8",
		Time: time.Unix(1700000000, 0), Duration: 750 * time.Millisecond, Code: 503, CodeDetails: "upstream_reset",
		ResponseFlags: "UF", SourceAddress: "10.0.0.1", SourcePort: 40000, SourcePrincipal: "spiffe://cluster.local/ns/shop/sa/web",
		DestinationAddress: "10.0.0.2", DestinationPort: 8080, MutualTLS: true,
	}
	for _, tt := range []struct {
		expr string
		want bool
	}{
		{"response.code >= 400", true},
		{"response.code < 400", false},
		{"response.code == 503 && response.flags == 'UF'", true},
		{"request.headers['x-debug'] == 'true'", true},
		{"request.headers['x-missing'] == 'true'", false}, // no such key: an error, false
		{"request.url_path.startsWith('/api') && request.method == 'GET'", true},
		{"request.path.contains('?')", true},
		{"request.duration > duration('500ms')", true},
		{"request.duration > duration('1s')", false},
		{"source.principal.endsWith('/sa/web') && connection.mtls", true},
		{"destination.port == 8080 && source.address == '10.0.0.1'", true},
		{"!(request.url_path in ['/healthz', '/ready'])", true},
		{"response.flags", false}, // dyn, a string at run time: not a condition
	} {
		f, err := Compile(tt.expr)
		if err != nil {
			t.Fatalf("Compile(%q): %v", tt.expr, err)
		}
		if got := f.Match(a); got != tt.want {
			t.Errorf("%s: %v; want %v", tt.expr, got, tt.want)
		}
	}
}

// TestValue: the tag values Istio's documentation shows, and what a request
// that lacks the attribute or a result that is no scalar gives.
func TestValue(t *testing.T) {
	a := &Attributes{
		Method: "POST", URLPath: "/api/items", Host: "shop.example", Code: 201,
		RequestHeaders:  map[string]string{"x-tenant": "acme", "x-long": strings.Repeat("é", 200)},
		DestinationPort: 8080, MutualTLS: true, Duration: 1500 * time.Millisecond,
	}
	for _, tt := range []struct{ expr, want string }{
		{"request.host", "shop.example"},
		{"string(destination.port)", "8080"},
		{"destination.port", "8080"},
		{"request.headers['x-tenant']", "acme"},
		{"request.headers['x-missing']", Unknown},
		{"'v1'", "v1"},
		{"connection.mtls", "true"},
		{"response.code >= 500 ? 'server' : 'ok'", "ok"},
		{"request.headers", Unknown},  // a map is no label value
		{"request.duration", Unknown}, // nor is a duration
		{"request.headers['x-long']", strings.Repeat("é", 128)},
	} {
		v, err := CompileValue(tt.expr)
		if err != nil {
			t.Fatalf("CompileValue(%q): %v", tt.expr, err)
		}
		if got := v.Eval(a); got != tt.want {
			t.Errorf("%s = %.40q; want %.40q", tt.expr, got, tt.want)
		}
	}
	for _, tt := range []struct{ expr, err string }{
		{"", "empty"},
		{"requests.host", "undeclared reference"},
		{"duration('1s')", "must be a string, a number or a boolean"},
		{"[1, 2]", "must be a string"},
	} {
		if _, err := CompileValue(tt.expr); err == nil || !strings.Contains(err.Error(), tt.err) {
			t.Errorf("CompileValue(%q) = %v; want an error containing %q", tt.expr, err, tt.err)
		}
	}
}
