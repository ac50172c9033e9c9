package main

import (
	"context"
	"fmt"
	"math/rand/v2"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/peer"
	"google.golang.org/grpc/status"

	"github.com/meshlet/meshlet/test/apps/echo/echopb"
)

// grpcEcho implements echopb.EchoServer.
type grpcEcho struct {
	echopb.UnimplementedEchoServer
	id Identity
}

// answer applies the request's instructions and builds the response.
func (g *grpcEcho) answer(ctx context.Context, req *echopb.EchoRequest, seq int32) (*echopb.EchoResponse, error) {
	if req.GetDelayMs() < 0 || req.GetDelayMs() > 60000 {
		return nil, status.Errorf(codes.InvalidArgument, "delay_ms=%d: want 0-60000", req.GetDelayMs())
	}
	if d := time.Duration(req.GetDelayMs()) * time.Millisecond; d > 0 {
		select {
		case <-time.After(d):
		case <-ctx.Done():
			return nil, status.FromContextError(ctx.Err()).Err()
		}
	}
	if c := req.GetStatus(); c != 0 {
		if c < 0 || c > 16 {
			return nil, status.Errorf(codes.InvalidArgument, "status=%d: want a gRPC code 0-16", c)
		}
		return nil, status.Errorf(codes.Code(c), "status %s on purpose", codes.Code(c))
	}
	if p := req.GetFailPercent(); p > 0 && rand.IntN(100) < int(p) {
		return nil, status.Errorf(codes.Unavailable, "failed on purpose (fail_percent=%d)", p)
	}
	resp := &echopb.EchoResponse{
		Message: req.GetMessage(), Pod: g.id.Pod, Namespace: g.id.Namespace, Version: g.id.Version,
		Node: g.id.Node, PodIp: g.id.PodIP, Protocol: "grpc", Headers: map[string]string{}, Seq: seq,
	}
	if p, ok := peer.FromContext(ctx); ok {
		resp.ClientAddr = p.Addr.String()
	}
	if md, ok := metadata.FromIncomingContext(ctx); ok {
		for k, v := range md {
			resp.Headers[k] = fmt.Sprint(v)
		}
	}
	return resp, nil
}

// Echo answers one call.
func (g *grpcEcho) Echo(ctx context.Context, req *echopb.EchoRequest) (*echopb.EchoResponse, error) {
	return g.answer(ctx, req, 0)
}

// EchoStream answers count times (1 when zero, at most 1000).
func (g *grpcEcho) EchoStream(req *echopb.EchoStreamRequest, stream grpc.ServerStreamingServer[echopb.EchoResponse]) error {
	n := req.GetCount()
	if n <= 0 {
		n = 1
	}
	if n > 1000 {
		return status.Errorf(codes.InvalidArgument, "count=%d: want at most 1000", n)
	}
	for i := int32(0); i < n; i++ {
		if i > 0 && req.GetIntervalMs() > 0 {
			select {
			case <-time.After(time.Duration(req.GetIntervalMs()) * time.Millisecond):
			case <-stream.Context().Done():
				return status.FromContextError(stream.Context().Err()).Err()
			}
		}
		resp, err := g.answer(stream.Context(), req.GetRequest(), i)
		if err != nil {
			return err
		}
		if err := stream.Send(resp); err != nil {
			return err
		}
	}
	return nil
}
