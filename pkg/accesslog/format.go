// Package accesslog formats access log lines with Envoy's command
// operators (%RESPONSE_CODE%, %REQ(:AUTHORITY)%, %START_TIME(%s)% ...), as
// Istio's access log formats write them: a text format (meshConfig
// accessLogFormat, an envoyFileAccessLog provider's logFormat.text) or a
// JSON object whose values are formats (accessLogEncoding JSON,
// logFormat.labels). meshd parses formats to reject bad ones before they
// reach a proxy; proxies parse them once per config and format a line per
// request or connection from what they recorded (Values).
package accesslog

import (
	"encoding/json"
	"fmt"
	"maps"
	"slices"
	"strconv"
	"strings"
	"time"
)

// IstioText is Istio's default text format (EnvoyTextLogFormat), which an
// envoyFileAccessLog provider without a logFormat writes.
const IstioText = `[%START_TIME%] "%REQ(:METHOD)% %REQ(X-ENVOY-ORIGINAL-PATH?:PATH)% %PROTOCOL%" ` +
	`%RESPONSE_CODE% %RESPONSE_FLAGS% %RESPONSE_CODE_DETAILS% %CONNECTION_TERMINATION_DETAILS% ` +
	`"%UPSTREAM_TRANSPORT_FAILURE_REASON%" %BYTES_RECEIVED% %BYTES_SENT% %DURATION% ` +
	`%RESP(X-ENVOY-UPSTREAM-SERVICE-TIME)% "%REQ(X-FORWARDED-FOR)%" "%REQ(USER-AGENT)%" "%REQ(X-REQUEST-ID)%" ` +
	`"%REQ(:AUTHORITY)%" "%UPSTREAM_HOST%" %UPSTREAM_CLUSTER_RAW% %UPSTREAM_LOCAL_ADDRESS% ` +
	`%DOWNSTREAM_LOCAL_ADDRESS% %DOWNSTREAM_REMOTE_ADDRESS% %REQUESTED_SERVER_NAME% %ROUTE_NAME%` + "\n"

// Fields are the operators without argument a Values answers, each with
// whether its value is a number (written unquoted in JSON).
var Fields = map[string]bool{
	"PROTOCOL": false, "UPSTREAM_PROTOCOL": false,
	"RESPONSE_CODE": true, "RESPONSE_FLAGS": false, "RESPONSE_CODE_DETAILS": false, "GRPC_STATUS": false,
	"CONNECTION_TERMINATION_DETAILS": false, "UPSTREAM_TRANSPORT_FAILURE_REASON": false,
	"BYTES_RECEIVED": true, "BYTES_SENT": true, "DURATION": true, "REQUEST_DURATION": true, "RESPONSE_DURATION": true,
	"UPSTREAM_HOST": false, "UPSTREAM_CLUSTER": false, "UPSTREAM_CLUSTER_RAW": false, "UPSTREAM_LOCAL_ADDRESS": false,
	"DOWNSTREAM_LOCAL_ADDRESS": false, "DOWNSTREAM_LOCAL_ADDRESS_WITHOUT_PORT": false, "DOWNSTREAM_LOCAL_PORT": true,
	"DOWNSTREAM_REMOTE_ADDRESS": false, "DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT": false, "DOWNSTREAM_REMOTE_PORT": true,
	"DOWNSTREAM_DIRECT_REMOTE_ADDRESS": false, "DOWNSTREAM_DIRECT_REMOTE_ADDRESS_WITHOUT_PORT": false,
	"DOWNSTREAM_PEER_URI_SAN": false, "REQUESTED_SERVER_NAME": false, "ROUTE_NAME": false,
	"HOSTNAME": false, "TRACE_ID": false,
}

// Values are what a proxy recorded of one request (or relayed connection).
type Values interface {
	// Field is the value of one of Fields; "" when not known.
	Field(name string) string
	// Request and Response are a header's value ("" when absent); the
	// pseudo-headers :method, :path, :authority and :scheme included.
	Request(name string) string
	Response(name string) string
	// Start is when the request began.
	Start() time.Time
}

// Format is a parsed format.
type Format struct {
	text   []segment // a text format
	labels []label   // a JSON format, by key
	// OmitEmpty leaves out of a JSON line the keys of a single operator
	// whose value is not known, rather than writing null.
	OmitEmpty bool
}

type label struct {
	key  string
	segs []segment
}

// segment is literal text, or an operator.
type segment struct {
	lit    string
	op     string // "" for literal text
	args   []string
	maxLen int // 0: no limit
}

// ParseText parses a text format; a line without a final newline gets one.
func ParseText(f string) (*Format, error) {
	segs, err := parse(f)
	if err != nil {
		return nil, err
	}
	if !strings.HasSuffix(f, "\n") {
		segs = append(segs, segment{lit: "\n"})
	}
	return &Format{text: segs}, nil
}

// ParseLabels parses a JSON format: each value is a format of its own.
func ParseLabels(labels map[string]string) (*Format, error) {
	if len(labels) == 0 {
		return nil, fmt.Errorf("a JSON format needs at least one key")
	}
	f := &Format{}
	for _, k := range slices.Sorted(maps.Keys(labels)) {
		segs, err := parse(labels[k])
		if err != nil {
			return nil, fmt.Errorf("key %q: %w", k, err)
		}
		f.labels = append(f.labels, label{key: k, segs: segs})
	}
	return f, nil
}

// maxFormat bounds a format's length, as a config value from users.
const maxFormat = 8 << 10

func parse(f string) ([]segment, error) {
	if len(f) > maxFormat {
		return nil, fmt.Errorf("format of %d bytes; at most %d", len(f), maxFormat)
	}
	var segs []segment
	var lit strings.Builder
	for i := 0; i < len(f); {
		c := f[i]
		if c != '%' {
			lit.WriteByte(c)
			i++
			continue
		}
		if i+1 < len(f) && f[i+1] == '%' { // %% is a literal %
			lit.WriteByte('%')
			i += 2
			continue
		}
		end := closing(f, i+1)
		if end < 0 {
			return nil, fmt.Errorf("operator at byte %d has no closing %%", i)
		}
		seg, err := parseOp(f[i+1 : end])
		if err != nil {
			return nil, err
		}
		if lit.Len() > 0 {
			segs = append(segs, segment{lit: lit.String()})
			lit.Reset()
		}
		segs = append(segs, seg)
		i = end + 1
	}
	if lit.Len() > 0 {
		segs = append(segs, segment{lit: lit.String()})
	}
	return segs, nil
}

// closing is the index of the % that ends the operator starting at i,
// skipping what is inside parentheses (START_TIME's argument has %s).
func closing(f string, i int) int {
	depth := 0
	for ; i < len(f); i++ {
		switch f[i] {
		case '(':
			depth++
		case ')':
			depth--
		case '%':
			if depth == 0 {
				return i
			}
		}
	}
	return -1
}

func parseOp(s string) (segment, error) {
	seg := segment{}
	name, rest := s, ""
	if p := strings.IndexByte(s, '('); p >= 0 {
		q := strings.LastIndexByte(s, ')')
		if q < p {
			return seg, fmt.Errorf("operator %%%s%%: unbalanced parentheses", s)
		}
		name, rest = s[:p], s[q+1:]
		seg.args = []string{s[p+1 : q]}
	} else if p := strings.IndexByte(s, ':'); p >= 0 {
		name, rest = s[:p], s[p:]
	}
	if rest != "" {
		n, err := strconv.Atoi(strings.TrimPrefix(rest, ":"))
		if !strings.HasPrefix(rest, ":") || err != nil || n <= 0 {
			return seg, fmt.Errorf("operator %%%s%%: %q is no length limit (:N)", s, rest)
		}
		seg.maxLen = n
	}
	seg.op = name
	switch name {
	case "REQ", "RESP", "TRAILER":
		if len(seg.args) != 1 || seg.args[0] == "" {
			return seg, fmt.Errorf("operator %%%s%%: %s needs a header name, %s(name) or %s(name?alternative)", s, name, name, name)
		}
		h, alt, _ := strings.Cut(seg.args[0], "?")
		seg.args = []string{strings.ToLower(h)}
		if alt != "" {
			seg.args = append(seg.args, strings.ToLower(alt))
		}
	case "START_TIME":
	default:
		if _, ok := Fields[name]; !ok {
			return seg, fmt.Errorf("operator %%%s%% is not one meshlet's proxies write (%s, REQ, RESP, START_TIME)", s, strings.Join(slices.Sorted(maps.Keys(Fields)), ", "))
		}
		if len(seg.args) > 0 {
			return seg, fmt.Errorf("operator %%%s%% takes no argument", s)
		}
	}
	return seg, nil
}

// Append writes the line for v to dst.
func (f *Format) Append(dst []byte, v Values) []byte {
	if f.labels == nil {
		for _, s := range f.text {
			dst = s.append(dst, v, true)
		}
		return dst
	}
	dst = append(dst, '{')
	first := true
	for _, l := range f.labels {
		single := len(l.segs) == 1 && l.segs[0].op != ""
		var val string
		if single {
			val = l.segs[0].value(v)
			if val == "" && f.OmitEmpty {
				continue
			}
		}
		if !first {
			dst = append(dst, ',')
		}
		first = false
		dst = appendJSONString(dst, l.key)
		dst = append(dst, ':')
		if single {
			// One operator: null when unknown, a number when it is one.
			s := l.segs[0]
			switch {
			case val == "":
				dst = append(dst, "null"...)
			case Fields[s.op]:
				if _, err := strconv.ParseInt(val, 10, 64); err == nil {
					dst = append(dst, val...)
					break
				}
				dst = appendJSONString(dst, val)
			default:
				dst = appendJSONString(dst, val)
			}
			continue
		}
		var b []byte
		for _, s := range l.segs {
			b = s.append(b, v, true)
		}
		dst = appendJSONString(dst, string(b))
	}
	return append(dst, '}', '\n')
}

func appendJSONString(dst []byte, s string) []byte {
	b, _ := json.Marshal(s)
	return append(dst, b...)
}

func (s *segment) append(dst []byte, v Values, dash bool) []byte {
	if s.op == "" {
		return append(dst, s.lit...)
	}
	val := s.value(v)
	if val == "" && dash {
		val = "-"
	}
	return append(dst, val...)
}

// value is the operator's value, cut to its length limit; "" when unknown.
func (s *segment) value(v Values) string {
	var val string
	switch s.op {
	case "REQ", "RESP":
		get := v.Request
		if s.op == "RESP" {
			get = v.Response
		}
		for _, h := range s.args {
			if val = get(h); val != "" {
				break
			}
		}
	case "TRAILER":
	case "START_TIME":
		val = startTime(v.Start(), s.args)
	default:
		val = v.Field(s.op)
	}
	if s.maxLen > 0 && len(val) > s.maxLen {
		val = val[:s.maxLen]
	}
	return val
}

// startTime formats t as Envoy does: RFC 3339 with milliseconds by
// default, or an strftime-like pattern (%Y %m %d %H %M %S %z %s, %3f %6f
// %9f %f for fractions of a second).
func startTime(t time.Time, args []string) string {
	t = t.UTC()
	if len(args) == 0 || args[0] == "" {
		return t.Format("2006-01-02T15:04:05.000Z")
	}
	p := args[0]
	var b strings.Builder
	for i := 0; i < len(p); i++ {
		if p[i] != '%' || i+1 >= len(p) {
			b.WriteByte(p[i])
			continue
		}
		i++
		switch p[i] {
		case 'Y':
			fmt.Fprintf(&b, "%04d", t.Year())
		case 'm':
			fmt.Fprintf(&b, "%02d", int(t.Month()))
		case 'd':
			fmt.Fprintf(&b, "%02d", t.Day())
		case 'H':
			fmt.Fprintf(&b, "%02d", t.Hour())
		case 'M':
			fmt.Fprintf(&b, "%02d", t.Minute())
		case 'S':
			fmt.Fprintf(&b, "%02d", t.Second())
		case 'z':
			b.WriteString("+0000")
		case 's':
			b.WriteString(strconv.FormatInt(t.Unix(), 10))
		case 'f':
			fmt.Fprintf(&b, "%09d", t.Nanosecond())
		case '3', '6', '9':
			if i+1 < len(p) && p[i+1] == 'f' {
				digits := int(p[i] - '0')
				fmt.Fprintf(&b, "%09d", t.Nanosecond())
				s := b.String()
				b.Reset()
				b.WriteString(s[:len(s)-9+digits])
				i++
				continue
			}
			b.WriteByte('%')
			b.WriteByte(p[i])
		case '%':
			b.WriteByte('%')
		default:
			b.WriteByte('%')
			b.WriteByte(p[i])
		}
	}
	return b.String()
}
