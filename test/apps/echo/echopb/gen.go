// Package echopb holds the echo test app's gRPC service: Echo and a server
// stream, generated from echo.proto by protoc (Debian's 3.21) with the
// protoc-gen-go and protoc-gen-go-grpc pinned as tools in the ROOT go.mod, and
// committed so that `go build` needs no protoc. It must hold no logic.
package echopb

//go:generate sh -c "protoc --plugin=protoc-gen-go=$(cd ../../../.. && go tool -n protoc-gen-go) --plugin=protoc-gen-go-grpc=$(cd ../../../.. && go tool -n protoc-gen-go-grpc) --go_out=. --go_opt=paths=source_relative --go-grpc_out=. --go-grpc_opt=paths=source_relative echo.proto"
