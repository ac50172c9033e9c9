package waypoint

import (
	"bufio"
	"net/http"
)

// reqFields is a request's header fields as the proxy reads and edits them
// on its way through: normalize, route, authorize, build the upstream
// request. An HTTP/1.1 request's fields stay a list of the fields as they
// came (names canonical, values substrings of the one head string) and its
// Header stays nil: the list's lookups are a scan of a handful of fields,
// not a hash each, and the upstream head is written in the client's field
// order, without a map built, filled, iterated and dropped per request.
// Code that needs an http.Header (JWT, ext_authz, CORS, sessions, mirrors,
// an HTTP/2 upstream, access log formats reading all fields, …) asks for it
// (header): the map is built once from the list, set as the Header of the
// requests the fields belong to (bind), and every later call reads and
// edits that map. A request that came with a map (HTTP/2, or handed to
// ServeHTTP by another server) is in map mode from the start.
//
// Its methods take names as http.Header's do (any case); the hot path
// passes canonical ones.
type reqFields struct {
	m    http.Header // the fields, once in map mode
	list []field     // the fields while m is nil
	reqs [2]*http.Request
}

type field struct{ k, v string }

// mapFields is the fields of a request that has a header map.
func mapFields(req *http.Request) *reqFields {
	if req.Header == nil {
		req.Header = http.Header{}
	}
	return &reqFields{m: req.Header, reqs: [2]*http.Request{req}}
}

// bind makes r one of the requests whose Header is the fields' map once
// there is one (the upstream request, a copy of the client's).
func (f *reqFields) bind(r *http.Request) {
	r.Header = f.m
	if f.reqs[0] == nil || f.reqs[0] == r {
		f.reqs[0] = r
		return
	}
	f.reqs[1] = r
}

// listed returns the fields and true while they are a list (m is nil).
func (f *reqFields) listed() ([]field, bool) { return f.list, f.m == nil }

// cloneHeader returns a map of the fields that shares nothing with them
// (a mirrored request's own), leaving them a list or a map as they are.
func (f *reqFields) cloneHeader() http.Header {
	if f.m != nil {
		return f.m.Clone()
	}
	return buildHeader(len(f.list), func(i int) (string, string) { return f.list[i].k, f.list[i].v })
}

// header returns the fields as a map, building it on the first call.
func (f *reqFields) header() http.Header {
	if f.m != nil {
		return f.m
	}
	m := f.cloneHeader()
	f.m, f.list = m, nil
	for _, r := range f.reqs {
		if r != nil {
			r.Header = m
		}
	}
	return m
}

// get returns the first value of the field named k, canonical.
func (f *reqFields) get(k string) string {
	if f.m != nil {
		return get(f.m, k)
	}
	for i := range f.list {
		if f.list[i].k == k {
			return f.list[i].v
		}
	}
	return ""
}

// has reports whether a field named k (canonical) is present.
func (f *reqFields) has(k string) bool {
	if f.m != nil {
		_, ok := f.m[k]
		return ok
	}
	for i := range f.list {
		if f.list[i].k == k {
			return true
		}
	}
	return false
}

// values returns the values of the field named k (canonical): in the
// list's case a new slice, nil when there are none.
func (f *reqFields) values(k string) []string {
	if f.m != nil {
		return f.m[k]
	}
	var vv []string
	for i := range f.list {
		if f.list[i].k == k {
			vv = append(vv, f.list[i].v)
		}
	}
	return vv
}

// appendValues appends the values of the field named k (canonical) to dst
// and reports whether there is one.
func (f *reqFields) appendValues(dst []string, k string) ([]string, bool) {
	if f.m != nil {
		vv, ok := f.m[k]
		return vv, ok
	}
	present := false
	for i := range f.list {
		if f.list[i].k == k {
			dst, present = append(dst, f.list[i].v), true
		}
	}
	return dst, present
}

// Get, Values, Set, Add and Del are http.Header's, for code shared with
// header maps (policy, header operations, rate limit keys).
func (f *reqFields) Get(k string) string      { return f.get(http.CanonicalHeaderKey(k)) }
func (f *reqFields) Values(k string) []string { return f.values(http.CanonicalHeaderKey(k)) }
func (f *reqFields) Set(k, v string)          { f.set(http.CanonicalHeaderKey(k), v) }
func (f *reqFields) Add(k, v string)          { f.add(http.CanonicalHeaderKey(k), v) }
func (f *reqFields) Del(k string)             { f.del(http.CanonicalHeaderKey(k)) }
func (f *reqFields) setValues(k string, vv []string) {
	if f.m != nil {
		f.m[k] = vv
		return
	}
	f.del(k)
	for _, v := range vv {
		f.list = append(f.list, field{k, v})
	}
}

// set replaces the fields named k (canonical) by one with value v, where
// the first of them was (at the end when there was none).
func (f *reqFields) set(k, v string) {
	if f.m != nil {
		f.m[k] = []string{v}
		return
	}
	at := -1
	n := 0
	for i := range f.list {
		if f.list[i].k == k {
			if at >= 0 {
				continue // a later duplicate: dropped
			}
			at = n
			f.list[i].v = v
		}
		f.list[n] = f.list[i]
		n++
	}
	f.list = f.list[:n]
	if at < 0 {
		f.list = append(f.list, field{k, v})
	}
}

// add appends a field named k (canonical).
func (f *reqFields) add(k, v string) {
	if f.m != nil {
		f.m[k] = append(f.m[k], v)
		return
	}
	f.list = append(f.list, field{k, v})
}

// del removes the fields named k (canonical).
func (f *reqFields) del(k string) {
	if f.m != nil {
		delete(f.m, k)
		return
	}
	f.deleteIf(func(name string) bool { return name == k })
}

// deleteIf removes the fields whose canonical name match reports.
func (f *reqFields) deleteIf(match func(string) bool) {
	if f.m != nil {
		deleteHeaders(f.m, match)
		return
	}
	n := 0
	for _, fl := range f.list {
		if !match(fl.k) {
			f.list[n] = fl
			n++
		}
	}
	clear(f.list[n:])
	f.list = f.list[:n]
}

// hasToken reports whether a field named k (canonical) lists token, as
// hasToken reads a map's values.
func (f *reqFields) hasToken(k, token string) bool {
	if f.m != nil {
		return hasToken(f.m[k], token)
	}
	return listHasToken(f.list, k, token)
}

func listHasToken(list []field, k, token string) bool {
	for i := range list {
		if list[i].k == k && hasToken([]string{list[i].v}, token) {
			return true
		}
	}
	return false
}

// headerEditor is what header operations edit: an http.Header, or a
// request's reqFields.
type headerEditor interface {
	Set(k, v string)
	Add(k, v string)
	Del(k string)
}

// removeHop drops the hop-by-hop fields and those the Connection field
// names (removeHopHeaders' rule), keeping Upgrade if keepUpgrade.
func (f *reqFields) removeHop(keepUpgrade bool) {
	if f.m != nil {
		removeHopHeaders(f.m, keepUpgrade)
		return
	}
	var buf [2]string
	listed := buf[:0]
	for _, fl := range f.list {
		if fl.k == "Connection" {
			listed = append(listed, fl.v)
		}
	}
	f.deleteIf(func(k string) bool {
		if isHopHeader(k) {
			return !keepUpgrade || k != "Upgrade"
		}
		return len(listed) > 0 && hasToken(listed, k)
	})
}

// writeFields writes a reqFields list as writeRequest writes a header
// map's fields, in the list's order (the client's).
func writeFields(bw *bufio.Writer, list []field) {
	for i := range list {
		switch k := list[i].k; k {
		case "Host", "Content-Length", "Transfer-Encoding", "Trailer":
		default:
			if isToken(k) {
				writeFieldValue(bw, k, list[i].v)
			}
		}
	}
}
