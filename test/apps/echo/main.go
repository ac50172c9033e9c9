// Command echo is the lab's test application: an HTTP/1.1 + h2c server and a
// gRPC server that answer with the pod that served the request (name,
// namespace, version label, node), the headers and client address it saw and
// the protocol, and that can be told to fail, delay or return a status code.
// `echo client` makes N requests from inside a pod and prints a summary by pod
// and version, for tests and the demo. `echo authz` is an HTTP external
// authorizer (Envoy's ext_authz protocol) for CUSTOM AuthorizationPolicies;
// `echo otlp` an OpenTelemetry collector's OTLP/gRPC trace receiver that logs
// the spans it gets.
//
// Environment (set from the downward API in the manifests): POD_NAME,
// POD_NAMESPACE, VERSION (the pod's version label), NODE_NAME, POD_IP; ports:
// HTTP_PORT (default 8080, flag -http) and GRPC_PORT (default 9090, flag
// -grpc). Requests steer the answer with ?status=503, ?delay=200ms, ?fail=50
// (percent answered 503) and ?size=N (payload bytes), or the same as
// X-Echo-Status/-Delay/-Fail/-Size headers; /healthz answers ok.
//
// HTTP/2 cleartext is net/http's own (Server.Protocols with unencrypted
// HTTP/2, prior knowledge); x/net's h2c package is deprecated. gRPC uses the
// generated echopb service.
//
// It must stay a plain workload: no mesh logic, no Kubernetes API calls; all it
// knows about its pod comes from the environment (the downward API).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	args := os.Args[1:]
	var err error
	switch {
	case len(args) > 0 && args[0] == "client":
		err = runClient(ctx, args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "authz":
		err = runAuthz(ctx, args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "otlp":
		err = runOTLP(ctx, args[1:], os.Stdout)
	case len(args) > 0 && args[0] == "serve":
		err = runServe(ctx, args[1:])
	default:
		err = runServe(ctx, args)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "echo:", err)
		os.Exit(1)
	}
}
