// Package logfilter compiles and evaluates the filters of the Telemetry
// API's access logging (accessLogging[].filter.expression): CEL expressions
// over Envoy's request attributes, such as
//
//	response.code >= 400
//	request.url_path.startsWith('/api') && request.duration > duration('500ms')
//	request.headers['x-debug'] == 'true'
//
// meshd compiles an expression to refuse a Telemetry whose filter is not
// valid, and the waypoint compiles it once per configuration and evaluates
// it for every request: a line is written only when the filter is true. An
// expression that fails for a request (a header that is not there, a type
// mismatch) counts as false, as Envoy's CEL filter treats an error.
//
// The same attributes feed the Telemetry API's metric tagOverrides: a
// Value is an expression whose result labels a request's metrics
// (request.host, string(response.code), request.headers['x-tenant']).
//
// The attributes are Envoy's names (request.*, response.*, source.*,
// destination.*, connection.*, upstream.*) for what a waypoint knows of a
// request; attribute maps not listed in Attributes are unknown and refused
// when the expression is compiled.
package logfilter

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/google/cel-go/cel"
)

// maxExpression bounds an expression's length: it comes from a user's
// Telemetry object and is compiled by meshd and every proxy it applies to.
const maxExpression = 4096

// costLimit bounds one evaluation (CEL's runtime cost units): a filter runs
// for every request and must not cost more than the request.
const costLimit = 10000

// Filter is a compiled expression.
type Filter struct {
	expr string
	prg  cel.Program
}

// attributeNames are the top-level variables an expression may use.
var attributeNames = []string{"request", "response", "source", "destination", "connection", "upstream"}

var env = func() *cel.Env {
	opts := []cel.EnvOption{}
	for _, n := range attributeNames {
		opts = append(opts, cel.Variable(n, cel.MapType(cel.StringType, cel.DynType)))
	}
	e, err := cel.NewEnv(opts...)
	if err != nil {
		panic(fmt.Sprintf("logfilter: CEL environment: %v", err))
	}
	return e
}()

// Compile checks expr and prepares it for evaluation. The expression must
// be boolean.
func Compile(expr string) (*Filter, error) {
	prg, err := program("filter", expr, "a condition (bool), e.g. response.code >= 400", cel.BoolType)
	if err != nil {
		return nil, err
	}
	return &Filter{expr: expr, prg: prg}, nil
}

// program compiles expr, a what expression ("filter", "value") whose type
// must be one of types (or dyn, known only at run time; want says so in
// the error), bounded in size and in the cost of one evaluation.
func program(what, expr, want string, types ...*cel.Type) (cel.Program, error) {
	if expr == "" {
		return nil, fmt.Errorf("the %s expression is empty", what)
	}
	if len(expr) > maxExpression {
		return nil, fmt.Errorf("the %s expression is %d bytes; at most %d", what, len(expr), maxExpression)
	}
	ast, iss := env.Compile(expr)
	if iss.Err() != nil {
		return nil, fmt.Errorf("%s expression %q: %w", what, expr, iss.Err())
	}
	if t := ast.OutputType(); t != cel.DynType && !slices.ContainsFunc(types, t.IsExactType) {
		return nil, fmt.Errorf("%s expression %q is of type %s; it must be %s", what, expr, t, want)
	}
	prg, err := env.Program(ast, cel.CostLimit(costLimit))
	if err != nil {
		return nil, fmt.Errorf("%s expression %q: %w", what, expr, err)
	}
	return prg, nil
}

// String is the expression.
func (f *Filter) String() string { return f.expr }

// Attributes is what the proxy knows of one request, by Envoy's attribute
// names.
type Attributes struct {
	Method, Path, URLPath, Host, Scheme, Protocol, ID, UserAgent, Referer string
	RequestHeaders                                                        map[string]string // lower-case names
	Time                                                                  time.Time
	Duration                                                              time.Duration
	RequestSize                                                           int64

	Code          int
	CodeDetails   string
	GRPCStatus    string
	ResponseSize  int64
	ResponseFlags string

	SourceAddress, DestinationAddress string
	SourcePort, DestinationPort       int
	SourcePrincipal                   string // the peer's SPIFFE ID
	MutualTLS                         bool
	RequestedServerName               string

	UpstreamAddress string

	// Connection marks the attributes of a connection forwarded whole: it
	// has no request.* or response.*, and an expression reading them fails.
	Connection bool
}

// Match reports whether the filter holds for a; an evaluation error is
// false.
func (f *Filter) Match(a *Attributes) bool {
	out, _, err := f.prg.Eval(a.activation())
	if err != nil {
		return false
	}
	b, ok := out.Value().(bool)
	return ok && b
}

// Value is a compiled expression whose result is a metric label's value:
// the tagOverrides of the Telemetry API's metrics (value: request.host,
// string(destination.port), request.headers['x-user']).
type Value struct {
	expr string
	prg  cel.Program
}

// Unknown is a Value's result when it cannot be evaluated for a request, as
// Istio's stats plugin labels what it cannot compute.
const Unknown = "unknown"

// CompileValue checks expr and prepares it for evaluation. Its result must
// be a string, a number or a boolean (formatted as CEL's string() does).
func CompileValue(expr string) (*Value, error) {
	prg, err := program("value", expr, "a string, a number or a boolean, e.g. request.host or string(destination.port)",
		cel.StringType, cel.IntType, cel.UintType, cel.DoubleType, cel.BoolType)
	if err != nil {
		return nil, err
	}
	return &Value{expr: expr, prg: prg}, nil
}

// String is the expression.
func (v *Value) String() string { return v.expr }

// maxValue bounds a label value taken from a request (a header, a path):
// longer ones are cut.
const maxValue = 256

// Eval is the expression's value for a, Unknown when it fails or is of
// another type (a map, a list), never longer than maxValue bytes.
func (v *Value) Eval(a *Attributes) string {
	out, _, err := v.prg.Eval(a.activation())
	if err != nil {
		return Unknown
	}
	var s string
	switch x := out.Value().(type) {
	case string:
		s = x
	case int64:
		s = strconv.FormatInt(x, 10)
	case uint64:
		s = strconv.FormatUint(x, 10)
	case float64:
		s = strconv.FormatFloat(x, 'g', -1, 64)
	case bool:
		s = strconv.FormatBool(x)
	default:
		return Unknown
	}
	if len(s) > maxValue {
		s = strings.ToValidUTF8(s[:maxValue], "")
	}
	return s
}

// activation is a's variables by Envoy's attribute names.
func (a *Attributes) activation() map[string]any {
	vars := map[string]any{
		"request": map[string]any{}, "response": map[string]any{},
		"source":      map[string]any{"address": a.SourceAddress, "port": a.SourcePort, "principal": a.SourcePrincipal},
		"destination": map[string]any{"address": a.DestinationAddress, "port": a.DestinationPort},
		"connection": map[string]any{
			"mtls": a.MutualTLS, "requested_server_name": a.RequestedServerName,
			"uri_san_peer_certificate": a.SourcePrincipal,
		},
		"upstream": map[string]any{"address": a.UpstreamAddress},
	}
	if !a.Connection {
		vars["request"] = map[string]any{
			"method": a.Method, "path": a.Path, "url_path": a.URLPath, "host": a.Host, "scheme": a.Scheme,
			"protocol": a.Protocol, "id": a.ID, "useragent": a.UserAgent, "referer": a.Referer,
			"headers": a.RequestHeaders, "time": a.Time, "duration": a.Duration,
			"size": a.RequestSize, "total_size": a.RequestSize,
		}
		vars["response"] = map[string]any{
			"code": a.Code, "code_details": a.CodeDetails, "grpc_status": a.GRPCStatus,
			"size": a.ResponseSize, "total_size": a.ResponseSize, "flags": a.ResponseFlags,
		}
	}
	return vars
}
