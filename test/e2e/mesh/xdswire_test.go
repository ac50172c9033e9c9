package meshtest

// A client of meshd's two gRPC services written from the wire format alone
// (protowire over a raw gRPC codec), independent of pkg/xds/client and
// pkg/ca: the lab tests speak to meshd as any xDS client or Istio CA client
// would, so a bug shared by both sides of our own code cannot hide. Only the
// fields the tests read are decoded.

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"sync"

	"google.golang.org/grpc"
	"google.golang.org/grpc/metadata"
	"google.golang.org/protobuf/encoding/protowire"
)

const (
	deltaADSMethod   = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources"
	createCertMethod = "/istio.v1.auth.IstioCertificateService/CreateCertificate"
)

// rawCodec passes already-encoded protobuf bytes through gRPC.
type rawCodec struct{}

func (rawCodec) Marshal(v any) ([]byte, error) { return *(v.(*[]byte)), nil }
func (rawCodec) Unmarshal(data []byte, v any) error {
	*(v.(*[]byte)) = append([]byte(nil), data...)
	return nil
}
func (rawCodec) Name() string { return "proto" }

func withToken(ctx context.Context, token string) context.Context {
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+token)
}

// createCertificate calls IstioCertificateService.CreateCertificate:
// request {1: csr PEM, 3: validity seconds}, response {1: repeated cert PEM}.
func createCertificate(ctx context.Context, conn *grpc.ClientConn, token string, csrPEM []byte, ttlSeconds int64) ([]string, error) {
	var req []byte
	req = protowire.AppendTag(req, 1, protowire.BytesType)
	req = protowire.AppendBytes(req, csrPEM)
	req = protowire.AppendTag(req, 3, protowire.VarintType)
	req = protowire.AppendVarint(req, uint64(ttlSeconds))
	var resp []byte
	if err := conn.Invoke(withToken(ctx, token), createCertMethod, &req, &resp, grpc.ForceCodec(rawCodec{})); err != nil {
		return nil, err
	}
	var chain []string
	err := eachField(resp, func(num protowire.Number, v []byte) {
		if num == 1 {
			chain = append(chain, string(v))
		}
	})
	return chain, err
}

// eachField calls fn for every length-delimited field of msg (varints and
// fixed fields are skipped).
func eachField(msg []byte, fn func(num protowire.Number, v []byte)) error {
	for len(msg) > 0 {
		num, typ, n := protowire.ConsumeTag(msg)
		if n < 0 {
			return protowire.ParseError(n)
		}
		msg = msg[n:]
		if typ == protowire.BytesType {
			v, m := protowire.ConsumeBytes(msg)
			if m < 0 {
				return protowire.ParseError(m)
			}
			fn(num, v)
			msg = msg[m:]
			continue
		}
		m := protowire.ConsumeFieldValue(num, typ, msg)
		if m < 0 {
			return protowire.ParseError(m)
		}
		msg = msg[m:]
	}
	return nil
}

// deltaResource is one resource of a DeltaDiscoveryResponse.
type deltaResource struct {
	Name, Version string
	Value         []byte // the Any's value: the resource's own encoding
}

// deltaResponse is the part of a DeltaDiscoveryResponse the tests read.
type deltaResponse struct {
	TypeURL   string
	Nonce     string
	Resources []deltaResource
	Removed   []string
}

func decodeDeltaResponse(b []byte) (deltaResponse, error) {
	var r deltaResponse
	var inner error
	err := eachField(b, func(num protowire.Number, v []byte) {
		switch num {
		case 2: // resources
			var res deltaResource
			inner = errors.Join(inner, eachField(v, func(num protowire.Number, v []byte) {
				switch num {
				case 1:
					res.Version = string(v)
				case 2: // google.protobuf.Any {1: type_url, 2: value}
					inner = errors.Join(inner, eachField(v, func(num protowire.Number, v []byte) {
						if num == 2 {
							res.Value = v
						}
					}))
				case 3:
					res.Name = string(v)
				}
			}))
			r.Resources = append(r.Resources, res)
		case 4:
			r.TypeURL = string(v)
		case 5:
			r.Nonce = string(v)
		case 6:
			r.Removed = append(r.Removed, string(v))
		}
	})
	return r, errors.Join(err, inner)
}

// deltaRequest encodes a DeltaDiscoveryRequest: node {1: id}, type_url,
// response_nonce, and error_detail {1: code, 2: message} for a NACK.
func deltaRequest(nodeID, typeURL, nonce, nackMessage string) []byte {
	var node []byte
	node = protowire.AppendTag(node, 1, protowire.BytesType)
	node = protowire.AppendString(node, nodeID)
	var b []byte
	b = protowire.AppendTag(b, 1, protowire.BytesType)
	b = protowire.AppendBytes(b, node)
	b = protowire.AppendTag(b, 2, protowire.BytesType)
	b = protowire.AppendString(b, typeURL)
	if nonce != "" {
		b = protowire.AppendTag(b, 6, protowire.BytesType)
		b = protowire.AppendString(b, nonce)
	}
	if nackMessage != "" {
		var st []byte
		st = protowire.AppendTag(st, 1, protowire.VarintType)
		st = protowire.AppendVarint(st, 3) // INVALID_ARGUMENT
		st = protowire.AppendTag(st, 2, protowire.BytesType)
		st = protowire.AppendString(st, nackMessage)
		b = protowire.AppendTag(b, 7, protowire.BytesType)
		b = protowire.AppendBytes(b, st)
	}
	return b
}

// wireXDS is a delta ADS stream subscribed (wildcard) to some types. It
// keeps a store by type and name, ACKs every response unless nack says
// otherwise, and records what changed.
type wireXDS struct {
	nodeID string
	stream grpc.ClientStream
	nack   func(typeURL, name string) string // non-empty: NACK the response with this message

	mu      sync.Mutex
	store   map[string]map[string]deltaResource
	log     []string // "update <type> <name>", "remove <type> <name>", "nack <type> <nonce>"
	synced  map[string]bool
	err     error
	changed chan struct{}
}

func dialWireXDS(ctx context.Context, conn *grpc.ClientConn, token, nodeID string, types []string, nack func(typeURL, name string) string) (*wireXDS, error) {
	desc := &grpc.StreamDesc{StreamName: "DeltaAggregatedResources", ServerStreams: true, ClientStreams: true}
	st, err := conn.NewStream(withToken(ctx, token), desc, deltaADSMethod, grpc.ForceCodec(rawCodec{}))
	if err != nil {
		return nil, fmt.Errorf("open delta ADS stream: %w", err)
	}
	x := &wireXDS{nodeID: nodeID, stream: st, nack: nack, store: map[string]map[string]deltaResource{}, synced: map[string]bool{}, changed: make(chan struct{}, 1)}
	for _, t := range types {
		x.store[t] = map[string]deltaResource{}
		req := deltaRequest(nodeID, t, "", "")
		if err := st.SendMsg(&req); err != nil {
			return nil, fmt.Errorf("subscribe to %s: %w", t, err)
		}
	}
	go x.recv()
	return x, nil
}

func (x *wireXDS) recv() {
	for {
		var b []byte
		err := x.stream.RecvMsg(&b)
		if err == nil {
			err = x.handle(b)
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = errors.New("stream closed by meshd")
			}
			x.mu.Lock()
			x.err = err
			x.mu.Unlock()
			x.notify()
			return
		}
	}
}

func (x *wireXDS) handle(b []byte) error {
	r, err := decodeDeltaResponse(b)
	if err != nil {
		return fmt.Errorf("decode DeltaDiscoveryResponse: %w", err)
	}
	var refuse string
	if x.nack != nil {
		for _, res := range r.Resources {
			if m := x.nack(r.TypeURL, res.Name); m != "" {
				refuse = m
				break
			}
		}
	}
	x.mu.Lock()
	if refuse != "" {
		x.log = append(x.log, "nack "+r.TypeURL+" "+r.Nonce)
	} else {
		for _, res := range r.Resources {
			x.store[r.TypeURL][res.Name] = res
			x.log = append(x.log, "update "+r.TypeURL+" "+res.Name)
		}
		for _, n := range r.Removed {
			delete(x.store[r.TypeURL], n)
			x.log = append(x.log, "remove "+r.TypeURL+" "+n)
		}
		x.synced[r.TypeURL] = true
	}
	x.mu.Unlock()
	x.notify()
	req := deltaRequest(x.nodeID, r.TypeURL, r.Nonce, refuse)
	return x.stream.SendMsg(&req)
}

func (x *wireXDS) notify() {
	select {
	case x.changed <- struct{}{}:
	default:
	}
}

// get returns a stored resource.
func (x *wireXDS) get(typeURL, name string) (deltaResource, bool) {
	x.mu.Lock()
	defer x.mu.Unlock()
	r, ok := x.store[typeURL][name]
	return r, ok
}

// names returns the stored names of a type.
func (x *wireXDS) names(typeURL string) []string {
	x.mu.Lock()
	defer x.mu.Unlock()
	var out []string
	for n := range x.store[typeURL] {
		out = append(out, n)
	}
	return out
}

// saw reports whether entry is in the change log.
func (x *wireXDS) saw(entry string) bool {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, e := range x.log {
		if e == entry {
			return true
		}
	}
	return false
}

// count returns how many log entries start with prefix.
func (x *wireXDS) count(prefix string) int {
	x.mu.Lock()
	defer x.mu.Unlock()
	n := 0
	for _, e := range x.log {
		if strings.HasPrefix(e, prefix) {
			n++
		}
	}
	return n
}

// state returns the stream's error and whether every type got a first response.
func (x *wireXDS) state(types []string) (bool, error) {
	x.mu.Lock()
	defer x.mu.Unlock()
	for _, t := range types {
		if !x.synced[t] {
			return false, x.err
		}
	}
	return true, x.err
}
