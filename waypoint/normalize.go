package waypoint

import (
	"errors"
	"strings"
)

// errBadPath is answered with 400.
var errBadPath = errors.New("invalid request path")

// normalizePath is the one view of a path that route matching, authorization
// and the upstream all see (the normalized path is what is forwarded, so a
// backend cannot interpret it differently from the policy). It is Istio's
// DECODE_AND_MERGE_SLASHES normalization, the strictest of Istio's
// pathNormalization modes, chosen as the default because it is the one that
// makes a DENY on a path prefix hold:
//
//  1. The path must start with "/"; NUL, control characters, "#" and
//     malformed percent-escapes are rejected (400).
//  2. Percent-escapes of unreserved characters (ALPHA DIGIT - . _ ~) are
//     decoded (RFC 3986 section 6.2.2.2); %2F and %5C (escaped slash and
//     backslash) are decoded to "/" (Envoy's UNESCAPE_AND_FORWARD); other
//     escapes are kept with upper-case hex; %00 is rejected.
//  3. "\" is treated as "/".
//  4. Runs of "/" are merged into one.
//  5. "." and ".." segments are resolved (RFC 3986 section 5.2.4); ".."
//     never climbs above the root.
//
// Case is preserved: paths are case-sensitive, in policy as in routing.
// The query string is not part of the path and is passed through unchanged.
func normalizePath(raw string) (string, error) {
	if raw == "" || raw[0] != '/' {
		return "", errBadPath
	}
	if clean, err := alreadyNormal(raw); err != nil {
		return "", err
	} else if clean {
		return raw, nil
	}
	var b strings.Builder
	b.Grow(len(raw))
	for i := 0; i < len(raw); i++ {
		c := raw[i]
		switch {
		case c < 0x20 || c == 0x7f || c == '#':
			return "", errBadPath
		case c == '\\':
			b.WriteByte('/')
		case c == '%':
			if i+2 >= len(raw) || !isHex(raw[i+1]) || !isHex(raw[i+2]) {
				return "", errBadPath
			}
			d := unhex(raw[i+1])<<4 | unhex(raw[i+2])
			i += 2
			switch {
			case d == 0 || d < 0x20 || d == 0x7f:
				return "", errBadPath
			case d == '/' || d == '\\':
				b.WriteByte('/')
			case isUnreserved(d):
				b.WriteByte(d)
			default:
				b.WriteByte('%')
				b.WriteByte(upperHex(d >> 4))
				b.WriteByte(upperHex(d & 0xf))
			}
		default:
			b.WriteByte(c)
		}
	}
	return removeDotSegments(b.String()), nil
}

// alreadyNormal is the allocation-free fast path: it reports whether raw
// has no escapes, backslashes, empty or dot segments.
func alreadyNormal(raw string) (bool, error) {
	segStart := 0
	for i := 0; i <= len(raw); i++ {
		if i < len(raw) {
			c := raw[i]
			switch {
			case c < 0x20 || c == 0x7f || c == '#':
				return false, errBadPath
			case c == '%' || c == '\\':
				return false, nil
			case c != '/':
				continue
			}
		}
		if i > 0 {
			seg := raw[segStart:i]
			if seg == "." || seg == ".." || (seg == "" && i < len(raw)) {
				return false, nil
			}
		}
		segStart = i + 1
	}
	return true, nil
}

// removeDotSegments merges slashes and resolves "." and ".." segments.
func removeDotSegments(p string) string {
	segs := strings.Split(p, "/")
	out := make([]string, 0, len(segs))
	trailing := false
	for i, s := range segs {
		last := i == len(segs)-1
		switch s {
		case "", ".":
			trailing = last && i > 0
		case "..":
			if len(out) > 0 {
				out = out[:len(out)-1]
			}
			trailing = last
		default:
			out = append(out, s)
			trailing = false
		}
	}
	res := "/" + strings.Join(out, "/")
	if trailing && len(out) > 0 {
		res += "/"
	}
	return res
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case '0' <= c && c <= '9':
		return c - '0'
	case 'a' <= c && c <= 'f':
		return c - 'a' + 10
	}
	return c - 'A' + 10
}

func upperHex(n byte) byte { return "0123456789ABCDEF"[n] }

func isUnreserved(c byte) bool {
	return 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z' || '0' <= c && c <= '9' ||
		c == '-' || c == '.' || c == '_' || c == '~'
}
