package waypoint

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	"golang.org/x/net/http/httpguts"
	"google.golang.org/protobuf/proto"

	"github.com/meshlet/meshlet/pkg/model"
)

// External authorization (CUSTOM AuthorizationPolicies): the proxy asks
// the policy's provider about a request, as Envoy's ext_authz filter does
// for Istio, over HTTP (envoyExtAuthzHttp) or gRPC (envoyExtAuthzGrpc,
// envoy.service.auth.v3.Authorization/Check). Checks go to the provider's
// cluster like any request: its endpoints, its pooled connections, HBONE
// to endpoints in the mesh. A gRPC check is one unary call written on that
// cluster's HTTP/2 transport rather than through a grpc.ClientConn of its
// own, which would dial around the cluster's pool, load balancing and
// HBONE.

// maxAuthzBody bounds what is read of a provider's answer.
const maxAuthzBody = 64 << 10

// defaultAuthzBody is includeRequestBodyInCheck's size without
// maxRequestBytes.
const defaultAuthzBody = 1 << 20

// extAuthz is a compiled provider.
type extAuthz struct {
	spec model.ExtAuthz
	up   *upstream // nil: the provider's service is unknown, checks fail
}

// newExtAuthz compiles provider spec over the config's clusters.
func newExtAuthz(spec model.ExtAuthz, clusters map[string]*cluster) *extAuthz {
	x := &extAuthz{spec: spec}
	if cl := clusters[spec.Cluster]; cl != nil {
		x.up = cl.all
	}
	return x
}

// authzVerdict is the provider's answer to one request.
type authzVerdict struct {
	allow bool
	// upstream are headers to set on the request sent upstream (allowed);
	// remove are headers to drop from it.
	upstream http.Header
	remove   []string
	// downstream are headers for the client: on the upstream's response
	// when allowed, on the denial otherwise.
	downstream http.Header
	// status and body are the denial sent to the client.
	status int
	body   []byte
	// details says why, for the access log (Envoy's response details).
	details string
}

// authzRequest is what a check tells the provider about a request.
type authzRequest struct {
	req  *http.Request
	path string // normalized path with the query
	peer Peer
	id   string // x-request-id
	body []byte // nil unless the provider asks for it
}

// check asks the provider; a failure (no endpoint, an error, a timeout, an
// HTTP 5xx) lets the request by with failOpen and denies it with
// statusOnError (403) otherwise.
func (x *extAuthz) check(ctx context.Context, ar *authzRequest) authzVerdict {
	timeout := x.spec.Timeout
	if timeout == 0 {
		timeout = model.ExtAuthzDefaultTimeout
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var v authzVerdict
	var err error
	if x.up == nil {
		err = errors.New("the provider's service is not in the mesh")
	} else if x.spec.GRPC {
		v, err = x.checkGRPC(ctx, ar)
	} else {
		v, err = x.checkHTTP(ctx, ar)
	}
	if err == nil {
		return v
	}
	if x.spec.FailOpen {
		return authzVerdict{allow: true, details: "ext_authz_error_failed_open"}
	}
	status := x.spec.StatusOnError
	if status == 0 {
		status = http.StatusForbidden
	}
	return authzVerdict{status: status, details: "ext_authz_error"}
}

// send picks an endpoint of the provider's cluster and sends r there.
func (x *extAuthz) send(r *http.Request, h2 bool) (*http.Response, error) {
	return sendVia(x.up, r, h2)
}

// sendVia sends a request of the proxy's own (an authorizer's check, a
// span export) to an endpoint of up, picked and reported on as for any
// request (load balancing, outlier detection), over its pooled
// connections: HTTP/2 when h2 (gRPC). r's URL host becomes the endpoint's
// address; its Host stays the service's authority.
func sendVia(up *upstream, r *http.Request, h2 bool) (*http.Response, error) {
	ep, err := up.pick(nil, up.hashKey(mapFields(r), r.URL.RawQuery, Peer{}))
	if err != nil {
		return nil, err
	}
	r.URL.Host = ep.addr
	ep.active.Add(1)
	defer ep.active.Add(-1)
	resp, err := up.transport(h2, r).RoundTrip(r)
	code := 0
	if err == nil {
		code = resp.StatusCode
		answerHeader(resp) // the verdict reads the fields as a map
	}
	up.report(ep, code)
	return resp, err
}

// checkHTTP is Envoy's HTTP ext_authz: the request's method, path (behind
// pathPrefix), Host and the headers the provider lists, with no body
// unless asked; 200 allows, any other answer below 500 is the denial the
// client gets.
func (x *extAuthz) checkHTTP(ctx context.Context, ar *authzRequest) (authzVerdict, error) {
	s := &x.spec
	r, err := http.NewRequestWithContext(ctx, ar.req.Method, "http://authz"+s.PathPrefix+ar.path, bytes.NewReader(ar.body))
	if err != nil {
		return authzVerdict{}, fmt.Errorf("check request: %w", err)
	}
	r.Host = ar.req.Host
	for k, vv := range ar.req.Header {
		if matchHeader(s.IncludeRequestHeaders, k) {
			r.Header[k] = vv
		}
	}
	for k, v := range s.AdditionalHeaders {
		r.Header.Set(k, v)
	}
	r.ContentLength = int64(len(ar.body))
	resp, err := x.send(r, false)
	if err != nil {
		return authzVerdict{}, err
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(resp.Body, maxAuthzBody))
	if err != nil {
		return authzVerdict{}, fmt.Errorf("read the answer: %w", err)
	}
	switch {
	case resp.StatusCode == http.StatusOK:
		v := authzVerdict{allow: true, upstream: http.Header{}, downstream: http.Header{}, details: "ext_authz_ok"}
		for k, vv := range resp.Header {
			if upstreamHeader(s.HeadersToUpstreamOnAllow, k) {
				v.upstream[k] = vv
			}
			if matchHeader(s.HeadersToDownstreamOnAllow, k) {
				v.downstream[k] = vv
			}
		}
		return v, nil
	case resp.StatusCode >= 500 || resp.StatusCode < 200:
		return authzVerdict{}, fmt.Errorf("the provider answered %d", resp.StatusCode)
	}
	v := authzVerdict{status: resp.StatusCode, body: body, downstream: http.Header{}, details: "ext_authz_denied"}
	for k, vv := range resp.Header {
		switch http.CanonicalHeaderKey(k) {
		case "Content-Length", "Transfer-Encoding", "Connection", "Host", "Date":
			continue
		case "Path", "Status", "Www-Authenticate", "Location":
			v.downstream[k] = vv // always, as Envoy adds them to the list
			continue
		}
		if len(s.HeadersToDownstreamOnDeny) == 0 || matchHeader(s.HeadersToDownstreamOnDeny, k) {
			v.downstream[k] = vv
		}
	}
	return v, nil
}

// checkGRPC calls envoy.service.auth.v3.Authorization/Check: about a
// request, or, without one (ar.req nil), about a connection relayed whole,
// which is told by its source and destination only, as Envoy's network
// ext_authz filter tells it.
func (x *extAuthz) checkGRPC(ctx context.Context, ar *authzRequest) (authzVerdict, error) {
	attrs := &authv3.AttributeContext{
		Source:      &authv3.AttributeContext_Peer{Address: socketAddress(ar.peer.IP, 0), Principal: spiffeURI(ar.peer.Principal)},
		Destination: &authv3.AttributeContext_Peer{Address: socketAddress(ar.peer.DestinationIP, ar.peer.DestinationPort)},
	}
	if ar.req != nil {
		attrs.Request = &authv3.AttributeContext_Request{Http: x.httpAttributes(ar)}
	}
	msg, err := proto.Marshal(&authv3.CheckRequest{Attributes: attrs})
	if err != nil {
		return authzVerdict{}, fmt.Errorf("encode the check: %w", err)
	}
	return x.callCheck(ctx, msg)
}

// httpAttributes describe ar's request to a gRPC provider.
func (x *extAuthz) httpAttributes(ar *authzRequest) *authv3.AttributeContext_HttpRequest {
	req := ar.req
	headers := make(map[string]string, len(req.Header)+1)
	for k, vv := range req.Header {
		if len(x.spec.IncludeRequestHeaders) == 0 || matchHeader(x.spec.IncludeRequestHeaders, k) {
			headers[strings.ToLower(k)] = strings.Join(vv, ",")
		}
	}
	headers[":authority"] = req.Host
	headers[":method"] = req.Method
	headers[":path"] = ar.path
	query := ""
	if _, q, ok := strings.Cut(ar.path, "?"); ok {
		query = q
	}
	scheme := "http"
	if req.TLS != nil {
		scheme = "https"
	}
	hr := &authv3.AttributeContext_HttpRequest{
		Id: ar.id, Method: req.Method, Headers: headers, Path: ar.path, Host: req.Host,
		Scheme: scheme, Query: query, Size: req.ContentLength, Protocol: req.Proto,
	}
	if ar.body != nil {
		hr.RawBody = ar.body
	}
	return hr
}

// callCheck sends one encoded CheckRequest and reads the provider's verdict.
func (x *extAuthz) callCheck(ctx context.Context, msg []byte) (authzVerdict, error) {
	frame := grpcFrame(msg)
	r, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://authz/envoy.service.auth.v3.Authorization/Check", bytes.NewReader(frame))
	if err != nil {
		return authzVerdict{}, err
	}
	r.Host = x.spec.Authority
	r.Header["Content-Type"] = []string{"application/grpc"}
	r.Header["Te"] = []string{"trailers"}
	if d, ok := ctx.Deadline(); ok {
		r.Header["Grpc-Timeout"] = []string{strconv.FormatInt(max(time.Until(d).Milliseconds(), 1), 10) + "m"}
	}
	r.ContentLength = int64(len(frame))
	resp, err := x.send(r, true)
	if err != nil {
		return authzVerdict{}, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return authzVerdict{}, fmt.Errorf("the provider answered HTTP %d", resp.StatusCode)
	}
	payload, err := readGRPCMessage(resp.Body)
	if err != nil {
		return authzVerdict{}, err
	}
	io.Copy(io.Discard, io.LimitReader(resp.Body, maxAuthzBody)) // to the trailers
	st := resp.Trailer.Get("Grpc-Status")
	if st == "" {
		st = resp.Header.Get("Grpc-Status") // trailers-only
	}
	if st != "0" {
		return authzVerdict{}, fmt.Errorf("the provider's call failed: grpc-status %s %s", st, resp.Trailer.Get("Grpc-Message"))
	}
	var cr authv3.CheckResponse
	if err := proto.Unmarshal(payload, &cr); err != nil {
		return authzVerdict{}, fmt.Errorf("decode the answer: %w", err)
	}
	if cr.GetStatus().GetCode() == 0 {
		ok := cr.GetOkResponse()
		v := authzVerdict{allow: true, upstream: http.Header{}, downstream: http.Header{}, remove: ok.GetHeadersToRemove(), details: "ext_authz_ok"}
		addHeaderOptions(v.upstream, ok.GetHeaders())
		addHeaderOptions(v.downstream, ok.GetResponseHeadersToAdd())
		return v, nil
	}
	denied := cr.GetDeniedResponse()
	v := authzVerdict{status: http.StatusForbidden, body: []byte(denied.GetBody()), downstream: http.Header{}, details: "ext_authz_denied"}
	if c := int(denied.GetStatus().GetCode()); c >= 200 && c <= 599 {
		v.status = c
	}
	addHeaderOptions(v.downstream, denied.GetHeaders())
	return v, nil
}

// readGRPCMessage reads one length-prefixed gRPC message (uncompressed),
// bounded by maxAuthzBody.
func readGRPCMessage(r io.Reader) ([]byte, error) {
	var hdr [5]byte
	if _, err := io.ReadFull(r, hdr[:]); err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	n := binary.BigEndian.Uint32(hdr[1:])
	if hdr[0] != 0 || n > maxAuthzBody {
		return nil, fmt.Errorf("the answer is compressed or larger than %d bytes", maxAuthzBody)
	}
	b := make([]byte, n)
	if _, err := io.ReadFull(r, b); err != nil {
		return nil, fmt.Errorf("read the answer: %w", err)
	}
	return b, nil
}

// addHeaderOptions applies Envoy header options: set, unless the option
// asks to append (ext_authz's default is to overwrite).
func addHeaderOptions(h http.Header, opts []*corev3.HeaderValueOption) {
	for _, o := range opts {
		k, val := o.GetHeader().GetKey(), o.GetHeader().GetValue()
		if val == "" && len(o.GetHeader().GetRawValue()) > 0 {
			val = string(o.GetHeader().GetRawValue())
		}
		// From the network: only valid header fields, and no pseudo-header.
		if !httpguts.ValidHeaderFieldName(k) || !httpguts.ValidHeaderFieldValue(val) {
			continue
		}
		//lint:ignore SA1019 authorizers still send the deprecated append field, which Envoy still reads.
		if o.GetAppend().GetValue() || o.GetAppendAction() == corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD {
			h.Add(k, val)
		} else {
			h.Set(k, val)
		}
	}
}

func socketAddress(ip netip.Addr, port uint32) *corev3.Address {
	if !ip.IsValid() {
		return nil
	}
	return &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{
		Address: ip.String(), PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: port},
	}}}
}

// upstreamHeader reports whether the provider's answer header k goes on the
// request sent upstream, by patterns (HeadersToUpstreamOnAllow): framing
// and hop-by-hop fields never do, the answer's own representation fields
// only when named, and "*" takes the rest.
func upstreamHeader(patterns []string, k string) bool {
	k = http.CanonicalHeaderKey(k)
	switch {
	case isHopHeader(k) || k == "Content-Length" || k == "Host" || k == "Authority":
		return false
	case k == "Content-Type" || k == "Content-Encoding" || k == "Date" || k == "Server":
		return slices.ContainsFunc(patterns, func(p string) bool { return strings.EqualFold(p, k) })
	}
	return slices.Contains(patterns, "*") || matchHeader(patterns, k)
}

// matchHeader reports whether header name k matches one of patterns:
// exact, "prefix*" or "*suffix", case-insensitive.
func matchHeader(patterns []string, k string) bool {
	for _, p := range patterns {
		switch {
		case strings.HasSuffix(p, "*") && len(p) > 1:
			if len(k) >= len(p)-1 && strings.EqualFold(k[:len(p)-1], p[:len(p)-1]) {
				return true
			}
		case strings.HasPrefix(p, "*") && len(p) > 1:
			if len(k) >= len(p)-1 && strings.EqualFold(k[len(k)-len(p)+1:], p[1:]) {
				return true
			}
		case strings.EqualFold(p, k):
			return true
		}
	}
	return false
}

// authzBody reads up to the provider's limit of the request's body for the
// check and puts what it read back in front of the rest. ok is false when
// the body is larger and partial bodies are not allowed (413).
func authzBody(req *http.Request, b *model.ExtAuthzBody) (body []byte, ok bool, err error) {
	limit := b.MaxBytes
	if limit == 0 {
		limit = defaultAuthzBody
	}
	if req.Body == nil || req.Body == http.NoBody {
		return []byte{}, true, nil
	}
	buf, err := io.ReadAll(io.LimitReader(req.Body, limit+1))
	if err != nil {
		return nil, false, err
	}
	req.Body = struct {
		io.Reader
		io.Closer
	}{io.MultiReader(bytes.NewReader(buf), req.Body), req.Body}
	if int64(len(buf)) > limit {
		if !b.AllowPartial {
			return nil, false, nil
		}
		buf = buf[:limit]
	}
	return buf, true, nil
}
