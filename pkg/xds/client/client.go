// Package client is the xDS delta client of node agents and waypoints: it
// connects to meshd over TLS with the service account token as per-RPC
// credentials, subscribes to meshlet's resource types, applies each delta to
// a local store after a validation hook (ACK, or NACK with the hook's error),
// and reconnects with backoff, resuming with initial_resource_versions so the
// server resends only what changed. The store keeps the last good state
// while meshd is away.
//
// This package must not interpret the resources: consumers read the store or
// react to OnChange.
package client

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand/v2"
	"sync"
	"time"

	core "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	discovery "github.com/envoyproxy/go-control-plane/envoy/service/discovery/v3"
	statuspb "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/resolver/dns"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/structpb"
)

// Options configures a Client.
type Options struct {
	// Address is meshd's host:port (15012). Required.
	Address string
	// TLS is the client TLS config; its RootCAs should hold meshd's root
	// (the istio-ca-root-cert ConfigMap). Required.
	TLS *tls.Config
	// Token returns the current service account token; it is called for
	// every stream so a rotated token is picked up. Required.
	Token func(ctx context.Context) (string, error)
	// NodeID is the xDS node id, as xdsnode.Principal.NodeID builds it. Required.
	NodeID string
	// Types are the type URLs to subscribe to (wildcard). Required.
	Types []string
	// Validate is called for every resource of a response before any is
	// applied; an error NACKs the whole response and keeps the old state.
	// Nil accepts everything.
	Validate func(typeURL, name string, msg proto.Message) error
	// OnChange is called after a response was applied, with the names
	// updated and removed (both may be empty). It runs on the stream's
	// goroutine: keep it short. Nil means no callback.
	OnChange func(typeURL string, updated, removed []string)
	// Metadata, when set, is called for every new stream and sent as the
	// node's metadata (e.g. xdsnode.CertsMetadata). Nil sends none.
	Metadata func() *structpb.Struct
	// MinBackoff and MaxBackoff bound the wait between reconnects.
	// Zero means 100ms and 5s.
	MinBackoff, MaxBackoff time.Duration
	// DialOptions are added to the gRPC dial (e.g. a custom dialer).
	DialOptions []grpc.DialOption
	// Logger receives connection events. Nil means slog.Default().
	Logger *slog.Logger
}

// maxResponseSize bounds one xDS response a client accepts.
const maxResponseSize = 256 << 20

// Resource is one stored resource.
type Resource struct {
	// Version is the server's version of this resource.
	Version string
	// Message is the decoded resource.
	Message proto.Message
}

// Client holds the local store. Run it with Run.
type Client struct {
	opts Options
	log  *slog.Logger

	mu        sync.RWMutex
	store     map[string]map[string]Resource // type URL → name → resource
	connected bool
	lastErr   error
	synced    map[string]bool
	syncedCh  chan struct{}
}

// New checks opts and returns a Client with an empty store.
func New(opts Options) (*Client, error) {
	switch {
	case opts.Address == "":
		return nil, errors.New("new xds client: Options.Address is required (meshd's host:15012)")
	case opts.TLS == nil:
		return nil, errors.New("new xds client: Options.TLS is required: meshd is served only over TLS")
	case opts.Token == nil:
		return nil, errors.New("new xds client: Options.Token is required (the service account token)")
	case opts.NodeID == "":
		return nil, errors.New("new xds client: Options.NodeID is required")
	case len(opts.Types) == 0:
		return nil, errors.New("new xds client: Options.Types is empty: nothing to subscribe to")
	}
	if opts.MinBackoff <= 0 {
		opts.MinBackoff = 100 * time.Millisecond
	}
	if opts.MaxBackoff <= 0 {
		opts.MaxBackoff = 5 * time.Second
	}
	if opts.Logger == nil {
		opts.Logger = slog.Default()
	}
	c := &Client{opts: opts, log: opts.Logger, store: map[string]map[string]Resource{}, synced: map[string]bool{}, syncedCh: make(chan struct{})}
	for _, t := range opts.Types {
		c.store[t] = map[string]Resource{}
	}
	return c, nil
}

// Get returns one stored resource.
func (c *Client) Get(typeURL, name string) (Resource, bool) {
	c.mu.RLock()
	defer c.mu.RUnlock()
	r, ok := c.store[typeURL][name]
	return r, ok
}

// List returns a copy of the stored resources of one type, by name.
func (c *Client) List(typeURL string) map[string]Resource {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]Resource, len(c.store[typeURL]))
	for k, v := range c.store[typeURL] {
		out[k] = v
	}
	return out
}

// Connected reports whether a stream is currently open.
func (c *Client) Connected() bool {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.connected
}

// LastError is the error that ended the last stream, nil if none did.
func (c *Client) LastError() error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.lastErr
}

// Synced is closed once a first response of every subscribed type was applied.
func (c *Client) Synced() <-chan struct{} { return c.syncedCh }

// connectParams are how a client of meshd (xDS here, certificate requests
// on the node agent's and the waypoint's own connections) reconnects: at
// most 5 s between attempts, and an attempt that gets no answer (a Service
// VIP whose endpoints kube-proxy has not programmed yet drops the SYN) is
// given up after 5 s and made again.
//
// Why: gRPC's defaults back off to 120 s and let one attempt hang 20 s.
// After meshd was down or rolled for a minute, agents then reached the new
// meshd tens of seconds after it was ready, and the pods enrolled meanwhile
// waited that long for their certificates (their CSRs wait for the
// connection).
var connectParams = grpc.ConnectParams{
	Backoff:           backoff.Config{BaseDelay: 250 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
	MinConnectTimeout: 5 * time.Second,
}

// meshdReresolve is how soon after a failed connection attempt a client
// of meshd may look meshd's name up again (SetMeshdResolution).
const meshdReresolve = 5 * time.Second

// SetMeshdResolution makes gRPC look a name up again at most every 5 s
// (gRPC's default: 30 s) when connections to it fail. meshd's Service,
// deleted and made again (an uninstall and a reinstall, a helm release
// replacing meshctl's), has a new address while DNS caches still answer
// the old one for up to their TTL (CoreDNS: 30 s): a client that resolved
// then tried only the dead address until 30 s after that, so pods enrolled
// meanwhile got no certificate for up to a minute. Call it at start-up,
// before any gRPC connection (it sets a process-wide default).
func SetMeshdResolution() { dns.SetMinResolutionInterval(meshdReresolve) }

// WithMeshdReconnect is the dial option for every gRPC connection to meshd
// (see connectParams): the node agent's and the waypoint's certificate
// connections use it as the xDS client does.
func WithMeshdReconnect() grpc.DialOption { return grpc.WithConnectParams(connectParams) }

// Run connects and keeps the store up to date until ctx ends, reconnecting
// with exponential backoff and jitter. It returns ctx's error.
func (c *Client) Run(ctx context.Context) error {
	conn, err := grpc.NewClient(c.opts.Address, append([]grpc.DialOption{
		grpc.WithTransportCredentials(credentials.NewTLS(c.opts.TLS)),
		grpc.WithPerRPCCredentials(tokenCreds{c.opts.Token}),
		WithMeshdReconnect(),
		// The first address-index response of a large cluster (10k pods)
		// is larger than gRPC's default 4 MiB receive limit.
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(maxResponseSize)),
		// Notice a meshd replica that vanished without closing the
		// connection, so the client fails over instead of waiting on a
		// dead stream (the server permits pings this often).
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: 30 * time.Second, Timeout: 10 * time.Second, PermitWithoutStream: true}),
	}, c.opts.DialOptions...)...)
	if err != nil {
		return fmt.Errorf("dial meshd %s: %w", c.opts.Address, err)
	}
	defer conn.Close()
	ads := discovery.NewAggregatedDiscoveryServiceClient(conn)
	backoff := c.opts.MinBackoff
	for {
		start := time.Now()
		err := c.stream(ctx, ads)
		c.mu.Lock()
		c.connected = false
		if ctx.Err() == nil {
			c.lastErr = err
		}
		c.mu.Unlock()
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if time.Since(start) > c.opts.MaxBackoff {
			backoff = c.opts.MinBackoff
		}
		wait := backoff/2 + rand.N(backoff/2+1)
		c.log.Warn("xds client: stream ended, reconnecting", "addr", c.opts.Address, "in", wait, "err", err)
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(wait):
		}
		backoff = min(2*backoff, c.opts.MaxBackoff)
	}
}

// stream runs one ADS delta stream until it fails.
func (c *Client) stream(ctx context.Context, ads discovery.AggregatedDiscoveryServiceClient) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	str, err := ads.DeltaAggregatedResources(ctx)
	if err != nil {
		return fmt.Errorf("open delta stream: %w", err)
	}
	node := &core.Node{Id: c.opts.NodeID}
	if c.opts.Metadata != nil {
		node.Metadata = c.opts.Metadata()
	}
	for _, t := range c.opts.Types {
		req := &discovery.DeltaDiscoveryRequest{Node: node, TypeUrl: t, InitialResourceVersions: c.versions(t)}
		if err := str.Send(req); err != nil {
			return fmt.Errorf("subscribe to %s: %w", t, streamError(str, err))
		}
	}
	for {
		resp, err := str.Recv()
		if err != nil {
			return fmt.Errorf("receive: %w", err)
		}
		c.mu.Lock()
		c.connected = true
		c.mu.Unlock()
		ack := &discovery.DeltaDiscoveryRequest{TypeUrl: resp.GetTypeUrl(), ResponseNonce: resp.GetNonce()}
		if err := c.apply(resp); err != nil {
			c.log.Warn("xds client: rejecting config", "type", resp.GetTypeUrl(), "version", resp.GetSystemVersionInfo(), "err", err)
			ack.ErrorDetail = &statuspb.Status{Code: int32(codes.InvalidArgument), Message: err.Error()}
		}
		if err := str.Send(ack); err != nil {
			return fmt.Errorf("ack %s: %w", resp.GetTypeUrl(), streamError(str, err))
		}
	}
}

// streamError turns the io.EOF a failed Send returns into the stream's
// status, which only Recv reports.
func streamError(str grpc.ClientStream, err error) error {
	if !errors.Is(err, io.EOF) {
		return err
	}
	if rerr := str.RecvMsg(new(discovery.DeltaDiscoveryResponse)); rerr != nil {
		return rerr
	}
	return err
}

func (c *Client) versions(typeURL string) map[string]string {
	c.mu.RLock()
	defer c.mu.RUnlock()
	out := make(map[string]string, len(c.store[typeURL]))
	for name, r := range c.store[typeURL] {
		out[name] = r.Version
	}
	return out
}

// apply decodes and validates every resource of resp, then applies all of
// them, or none.
func (c *Client) apply(resp *discovery.DeltaDiscoveryResponse) error {
	t := resp.GetTypeUrl()
	if _, ok := c.store[t]; !ok {
		return fmt.Errorf("unsubscribed type %q", t)
	}
	decoded := make(map[string]Resource, len(resp.GetResources()))
	updated := make([]string, 0, len(resp.GetResources()))
	for _, r := range resp.GetResources() {
		if r.GetResource().GetTypeUrl() != t {
			return fmt.Errorf("resource %q has type %q in a %q response", r.GetName(), r.GetResource().GetTypeUrl(), t)
		}
		msg, err := r.GetResource().UnmarshalNew()
		if err != nil {
			return fmt.Errorf("decode %s %q: %w", t, r.GetName(), err)
		}
		if c.opts.Validate != nil {
			if err := c.opts.Validate(t, r.GetName(), msg); err != nil {
				return fmt.Errorf("validate %q: %w", r.GetName(), err)
			}
		}
		decoded[r.GetName()] = Resource{Version: r.GetVersion(), Message: msg}
		updated = append(updated, r.GetName())
	}
	c.mu.Lock()
	for name, r := range decoded {
		c.store[t][name] = r
	}
	for _, name := range resp.GetRemovedResources() {
		delete(c.store[t], name)
	}
	if !c.synced[t] {
		c.synced[t] = true
		if len(c.synced) == len(c.opts.Types) {
			close(c.syncedCh)
		}
	}
	c.mu.Unlock()
	if c.opts.OnChange != nil {
		c.opts.OnChange(t, updated, resp.GetRemovedResources())
	}
	return nil
}

// tokenCreds sends the service account token on every RPC, only over TLS.
type tokenCreds struct {
	token func(context.Context) (string, error)
}

func (t tokenCreds) GetRequestMetadata(ctx context.Context, _ ...string) (map[string]string, error) {
	tok, err := t.token(ctx)
	if err != nil {
		return nil, fmt.Errorf("read service account token: %w", err)
	}
	return map[string]string{"authorization": "Bearer " + tok}, nil
}

func (tokenCreds) RequireTransportSecurity() bool { return true }
