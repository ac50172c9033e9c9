package accesslog

import (
	"encoding/json"
	"strings"
	"testing"
	"time"
)

type values struct {
	fields    map[string]string
	req, resp map[string]string
	start     time.Time
}

func (v values) Field(n string) string    { return v.fields[n] }
func (v values) Request(n string) string  { return v.req[n] }
func (v values) Response(n string) string { return v.resp[n] }
func (v values) Start() time.Time         { return v.start }

var sample = values{
	fields: map[string]string{"RESPONSE_CODE": "503", "RESPONSE_FLAGS": "UF", "BYTES_SENT": "91", "DURATION": "12",
		"UPSTREAM_CLUSTER_RAW": "outbound|80||web.shop.svc.cluster.local", "DOWNSTREAM_REMOTE_ADDRESS": "198.18.0.7:40000", "PROTOCOL": "HTTP/1.1"},
	req:   map[string]string{":method": "GET", ":path": "/cart?id=1", ":authority": "web", "x-request-id": "abc", "user-agent": "curl/8"},
	resp:  map[string]string{"x-envoy-upstream-service-time": "10"},
	start: time.Date(2026, 12, 6, 19, 30, 1, 234567891, time.UTC),
}

// TestTextFormat: a text format writes each operator's value (a dash when
// unknown), headers by name with a fallback, length limits and Envoy's
// START_TIME patterns; Istio's default text format parses and writes its
// fields in order.
func TestTextFormat(t *testing.T) {
	for format, want := range map[string]string{
		`%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %RESPONSE_CODE% %RESPONSE_FLAGS% %UPSTREAM_HOST%`: "GET /cart?id=1 503 UF -\n",
		`[%START_TIME%] %REQ(USER-AGENT):4% 100%%`:                                                           "[2026-12-06T19:30:01.234Z] curl 100%\n",
		`%START_TIME(%Y/%m/%dT%H:%M:%S.%3f)% %START_TIME(%s)%` + "\n":                                        "2026/12/06T19:30:01.234 1796585401\n",
		`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% %TRAILER(grpc-status)%`:                                       "10 -\n",
	} {
		f, err := ParseText(format)
		if err != nil {
			t.Fatalf("ParseText(%q): %v", format, err)
		}
		if got := string(f.Append(nil, sample)); got != want {
			t.Errorf("%q wrote %q; want %q", format, got, want)
		}
	}
	f, err := ParseText(IstioText)
	if err != nil {
		t.Fatalf("Istio's default text format: %v", err)
	}
	got := string(f.Append(nil, sample))
	if !strings.HasPrefix(got, `[2026-12-06T19:30:01.234Z] "GET /cart?id=1 HTTP/1.1" 503 UF - - "-" - 91 12 10 "-" "curl/8" "abc" "web" "-" outbound|80||web.shop.svc.cluster.local`) {
		t.Errorf("Istio's default text format wrote %q", got)
	}
}

// TestLabelsFormat: a JSON format writes one object per line, keys sorted,
// numbers unquoted, an unknown single operator as null, and mixed values
// as strings, escaped.
func TestLabelsFormat(t *testing.T) {
	f, err := ParseLabels(map[string]string{"code": "%RESPONSE_CODE%", "sent": "%BYTES_SENT%", "host": "%UPSTREAM_HOST%",
		"line": `%REQ(:METHOD)% "%REQ(:PATH)%"`, "client": "%DOWNSTREAM_REMOTE_ADDRESS%"})
	if err != nil {
		t.Fatal(err)
	}
	got := string(f.Append(nil, sample))
	want := `{"client":"198.18.0.7:40000","code":503,"host":null,"line":"GET \"/cart?id=1\"","sent":91}` + "\n"
	if got != want {
		t.Errorf("wrote %s; want %s", got, want)
	}
	var m map[string]any
	if err := json.Unmarshal([]byte(got), &m); err != nil {
		t.Errorf("not JSON: %v", err)
	}
}

// TestFormatErrors: what a proxy cannot write is refused with the reason.
func TestFormatErrors(t *testing.T) {
	for format, want := range map[string]string{
		"%RESPONSE_CODE":            "no closing %",
		"%FILTER_STATE(x)%":         "is not one meshlet's proxies write",
		"%REQ()%":                   "needs a header name",
		"%REQ(x):abc%":              "no length limit",
		"%RESPONSE_CODE(x)%":        "takes no argument",
		strings.Repeat("x", 9<<10):  "at most",
		"%REQ(:PATH%":               "no closing %",
		"%DYNAMIC_METADATA(istio)%": "is not one",
		"%START_TIME(%s%":           "no closing %",
	} {
		if _, err := ParseText(format); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseText(%.40q) = %v; want an error with %q", format, err, want)
		}
	}
	if _, err := ParseLabels(map[string]string{"a": "%NOPE%"}); err == nil || !strings.Contains(err.Error(), `key "a"`) {
		t.Errorf("ParseLabels with a bad value = %v; want the key named", err)
	}
	if _, err := ParseLabels(nil); err == nil {
		t.Error("an empty JSON format was accepted")
	}
}
