package waypoint

import (
	"encoding/base64"
	"encoding/binary"
	"hash/fnv"
	"net/http"
	"time"

	"github.com/meshlet/meshlet/pkg/model"
)

// Session persistence (model.SessionPersistence): a route's client is given
// a token naming the destination and endpoint that answered it, and its
// requests carrying the token go back there. The token is
//
//	version (1 byte) | destination key (8) | endpoint key (8) | expiry (8, Unix seconds, 0: none)
//
// in unpadded base64url: keys are FNV-64a hashes of the destination's
// cluster and subset, and of the endpoint's address with its workload and
// identity, so the token tells nothing of the pod's address, and a pod
// address reused by another workload does not take the old one's sessions.
// The token is not signed: a client that edits it can only pick among the
// route's own endpoints (as it could by retrying) or lengthen its own
// session, nothing another client sees.

const (
	sessionVersion  = 1
	sessionTokenLen = 1 + 8 + 8 + 8
)

// routeSession is a route's compiled session persistence.
type routeSession struct {
	spec   *model.SessionPersistence
	header string // spec.Header in canonical form, as request headers are keyed
}

func newRouteSession(spec *model.SessionPersistence) *routeSession {
	return &routeSession{spec: spec, header: http.CanonicalHeaderKey(spec.Header)}
}

// upstreamKey identifies a destination (cluster and subset) in tokens.
func upstreamKey(cluster, subset string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(cluster))
	h.Write([]byte{0})
	h.Write([]byte(subset))
	return h.Sum64()
}

// endpointKey identifies an endpoint in tokens.
func endpointKey(addr, workload, identity string) uint64 {
	h := fnv.New64a()
	h.Write([]byte(addr))
	h.Write([]byte{0})
	h.Write([]byte(workload))
	h.Write([]byte{0})
	h.Write([]byte(identity))
	return h.Sum64()
}

// token is the request's session token, "" without one.
func (s *routeSession) token(req *http.Request) string {
	if s.header != "" {
		return get(req.Header, s.header)
	}
	// Of several cookies of that name (a path's and its parent's), the
	// first is the most specific (RFC 6265 section 5.4).
	c, err := req.Cookie(s.spec.Cookie)
	if err != nil {
		return ""
	}
	return c.Value
}

// target is the destination and endpoint of the route that the request's
// token names, when it names one and has not expired; nil, nil otherwise.
func (s *routeSession) target(r *route, req *http.Request, now time.Time) (*dest, *endpoint) {
	tok := s.token(req)
	if len(tok) != base64.RawURLEncoding.EncodedLen(sessionTokenLen) {
		return nil, nil
	}
	var b [sessionTokenLen]byte
	if n, err := base64.RawURLEncoding.Decode(b[:], []byte(tok)); err != nil || n != sessionTokenLen || b[0] != sessionVersion {
		return nil, nil
	}
	dk, ek := binary.BigEndian.Uint64(b[1:9]), binary.BigEndian.Uint64(b[9:17])
	if exp := binary.BigEndian.Uint64(b[17:25]); exp != 0 && uint64(now.Unix()) >= exp {
		return nil, nil
	}
	for i := range r.dests {
		d := &r.dests[i]
		if d.up == nil || d.key != dk {
			continue
		}
		for _, eps := range [][]*endpoint{d.up.endpoints, d.up.draining} {
			for _, e := range eps {
				if e.key == ek {
					return d, e
				}
			}
		}
	}
	return nil, nil
}

// issue is the token for d and ep, given now.
func (s *routeSession) issue(d *dest, ep *endpoint, now time.Time) string {
	var b [sessionTokenLen]byte
	b[0] = sessionVersion
	binary.BigEndian.PutUint64(b[1:9], d.key)
	binary.BigEndian.PutUint64(b[9:17], ep.key)
	if t := s.spec.Timeout; t > 0 {
		binary.BigEndian.PutUint64(b[17:25], uint64(now.Add(t).Unix()))
	}
	return base64.RawURLEncoding.EncodeToString(b[:])
}

// give sets the token for d and ep on the response header h. A cookie is
// HttpOnly and SameSite=Lax (the GEP-1619 asks for Strict by default; Lax
// keeps a session when the user follows a link to the site, and the cookie
// only routes, it authenticates nothing), Secure when the client's
// connection is TLS, and lasts the browser session unless Permanent.
func (s *routeSession) give(h http.Header, req *http.Request, d *dest, ep *endpoint, now time.Time) {
	tok := s.issue(d, ep, now)
	if s.header != "" {
		h[s.header] = []string{tok}
		return
	}
	c := http.Cookie{Name: s.spec.Cookie, Value: tok, Path: s.spec.CookiePath, HttpOnly: true, SameSite: http.SameSiteLaxMode, Secure: req.TLS != nil}
	if c.Path == "" {
		c.Path = "/"
	}
	if s.spec.Permanent {
		c.MaxAge = int(s.spec.Timeout / time.Second)
	}
	h.Add("Set-Cookie", c.String())
}
