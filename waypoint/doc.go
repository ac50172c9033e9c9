// Package waypoint is meshlet's L7 proxy: the waypoint for a namespace or a
// service, and the ingress gateway. Proxy is an http.Handler whose ServeHTTP
// shows one request's whole flow, in the order Istio's Envoy filter chain
// applies it:
//
//  1. the path is normalized once (see normalizePath: merge slashes, resolve
//     dot segments, decode %2F and %5C, reject malformed escapes) and that
//     one view is used for routing, authorization and the upstream request;
//     client-supplied internal headers (XFCC, peer metadata) are dropped;
//  2. JWTs are validated (RequestAuthentication semantics: invalid → 401,
//     missing → anonymous); this comes before routing, as Envoy's jwt_authn
//     filter does, so that claim headers it outputs (and strips when a
//     client sends them) are what route matches see;
//  3. the route is chosen: the virtual host of the service the client
//     dialled (Peer.DestinationService), else by Host; then the first
//     match in Istio order (a Gateway API PathPrefix matches whole
//     segments of the normalized path);
//  4. AuthorizationPolicy is evaluated by pkg/policy (DENY, then ALLOW),
//     after JWT because requestPrincipals and request.auth.* need its
//     result; an unmatched request is 404 only if authorization allows it;
//  5. CORS preflights, direct responses and redirects are answered;
//  6. the local rate limit is applied (429, flag RL; routes of a virtual
//     host with one origin and name, as meshd's split of one rule, share a
//     bucket);
//  7. fault delays and aborts are injected (DI, FI);
//  8. a weighted destination is chosen, mirrors are sent fire-and-forget
//     (bounded, dropped when too many are in flight);
//  9. the request is forwarded through the cluster's circuit breaker
//     (overflow → 503 UO) and load balancer, with per-try timeouts and
//     retries (Envoy's retry_on conditions; retries prefer endpoints not
//     yet tried; between tries a RetryPolicy.Backoff is waited at least,
//     growing to 10x, else Envoy's default jitter: see retryBackoff),
//     feeding outlier detection; retries are bounded per cluster by
//     maxRetries or a retry budget: Envoy's concurrent one (a retry over
//     it is not made, the answer stands, UO) or, with an interval, Gateway
//     API's rate (retryRate: a retry over it is not made and the client
//     is answered 503, UO);
//  10. response headers are edited and the body streamed back with trailers
//     (gRPC) and flushing, or the connection is handed over after a 101
//     (WebSocket only: other upgrades such as h2c are dropped, since an
//     upgraded tunnel would bypass routing and policy);
//  11. Istio's request metrics and a JSON access log line (when the
//     Telemetry's CEL filter, if any, holds: pkg/logfilter) are recorded; the
//     W3C trace context is continued (or started, sampled at
//     Options.TraceSampling) with a span per request handed to
//     Options.ExportSpan, where an OTLP exporter plugs in.
//
// Serve detects the protocol per connection: HTTP/1.1, HTTP/2 with prior
// knowledge, TLS with ALPN, or anything else, which is forwarded as TCP to
// Config.TCPCluster after L4 authorization. HTTP/1.x (plaintext or TLS) is
// served by the waypoint's own loop, h1Server: one goroutine per connection,
// reused buffers, a flush only when no pipelined request waits, and stricter
// framing than net/http (a malformed or ambiguous request is refused, never
// forwarded); HTTP/2 by net/http's server. Upstream connections are opened
// through Options.DialContext so that HBONE can be plugged in; inbound, an
// HBONE server's handler wraps each CONNECT stream in a StreamConn (Meta
// holding the verified peer), Pushes it to a ConnListener that Serve
// accepts from, and waits for StreamConn.Done; a Peer hook finds the stream
// through ConnFromContext. The
// configuration (pkg/model L7 types plus pkg/policy policies) is swapped
// atomically by Update; clusters whose definition did not change keep their
// pools and outlier state, and unchanged rate limits keep their buckets.
//
// The upstream protocol is HTTP/2 (h2c) for gRPC requests and for clusters
// marked HTTP2, HTTP/1.1 otherwise, whatever the client spoke. A cluster's
// TrafficPolicy.TLS originates TLS on every upstream connection
// (originateTLS: the handshake is part of the dial, ALPN h2 or http/1.1; a
// server that fails verification is a connection failure, UF). HTTP/2 goes
// through h2Transport, x/net's http2.Transport over a pool of its own
// (h2Pool) that retires connections by maxRequestsPerConnection and
// maxConnectionDuration and drains them (GOAWAY, then closed once their
// streams end), as Envoy does; HTTP/1.1 through h1Client, a keep-alive pool
// that sends each request on the handler's goroutine (cheaper per request
// than the transport's goroutines per connection), with the same wire code
// as h1Server (h1wire.go).
//
// Known limits: a request body is buffered up front (for retries and
// mirrors) only when its length is known and at most
// Options.MaxBufferedBody; other bodies (gRPC, chunked) are streamed while a
// copy of up to that size is kept, so they can be retried once fully read
// but are not mirrored. Outlier ejection ends lazily at the first pick
// after baseEjectionTime × ejections.
//
// This package must not know about Kubernetes or Istio API objects (meshd
// translates them into pkg/model), and must not open HBONE itself.
package waypoint
