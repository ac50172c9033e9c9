package main

import (
	"context"
	"encoding/hex"
	"flag"
	"fmt"
	"io"
	"net"
	"sync"

	collectortrace "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/grpc"
)

// runOTLP serves an OpenTelemetry collector's OTLP/gRPC trace receiver
// (TraceService/Export, the generated OTLP types) that logs each span it
// receives as one line: "span trace=<id> parent=<id> name=<name>
// service=<service.name> code=<http status> status=<OTLP status code>".
// The lab's tracing tests read those lines from the pod's log.
func runOTLP(ctx context.Context, args []string, log io.Writer) error {
	fs := flag.NewFlagSet("echo otlp", flag.ContinueOnError)
	addr := fs.String("grpc", "4317", "port or address to receive OTLP/gRPC on")
	if err := fs.Parse(args); err != nil {
		return err
	}
	l, err := net.Listen("tcp", listenAddr(*addr))
	if err != nil {
		return fmt.Errorf("listen on %s: %w", *addr, err)
	}
	s := grpc.NewServer()
	collectortrace.RegisterTraceServiceServer(s, &otlpReceiver{log: log})
	go func() {
		<-ctx.Done()
		s.GracefulStop()
	}()
	return s.Serve(l)
}

type otlpReceiver struct {
	collectortrace.UnimplementedTraceServiceServer
	mu  sync.Mutex
	log io.Writer
}

func (o *otlpReceiver) Export(_ context.Context, req *collectortrace.ExportTraceServiceRequest) (*collectortrace.ExportTraceServiceResponse, error) {
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.GetResourceSpans() {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.GetKey() == "service.name" {
				service = kv.GetValue().GetStringValue()
			}
		}
		for _, ss := range rs.GetScopeSpans() {
			for _, sp := range ss.GetSpans() {
				code := ""
				for _, kv := range sp.GetAttributes() {
					if kv.GetKey() == "http.response.status_code" {
						code = kv.GetValue().GetStringValue()
					}
				}
				fmt.Fprintf(o.log, "span trace=%s parent=%s name=%s service=%s code=%s status=%d\n", hex.EncodeToString(sp.GetTraceId()),
					hex.EncodeToString(sp.GetParentSpanId()), sp.GetName(), service, code, sp.GetStatus().GetCode())
			}
		}
	}
	return &collectortrace.ExportTraceServiceResponse{}, nil
}
