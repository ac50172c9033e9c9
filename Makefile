# meshlet — run `make` for the list of targets.
SHELL := /bin/bash
.DEFAULT_GOAL := help

export GOFLAGS ?= -buildvcs=false
# Expensive builds (the lab's Kubernetes binaries) are cached here, outside the
# clone, keyed by their pinned versions, so a fresh clone reuses them.
export MESHLET_CACHE ?= $(HOME)/.cache/meshlet

BIN := bin
GO_TEST_TIMEOUT ?= 25m

.PHONY: help deps build generate lint test unit e2e bench demo lab clean check-generate

help: ## show this help
	@awk 'BEGIN{FS=":.*## "} /^[a-zA-Z0-9_-]+:.*## /{printf "  \033[36m%-16s\033[0m %s\n", $$1, $$2}' $(MAKEFILE_LIST)

deps: ## install the Debian packages and Go tools the build and tests need (idempotent)
	@test/scripts/deps.sh

build: ## build every meshlet binary into bin/
	go build -o $(BIN)/ ./cmd/...

generate: ## regenerate eBPF bindings (bpf2go, Debian's clang) and protobuf code
	go generate ./...

check-generate: generate ## fail if `make generate` changes any committed file
	@git diff --exit-code --stat -- . || { echo "make generate left a diff: commit the regenerated files" >&2; exit 1; }

lint: deps ## go vet and staticcheck (pinned in go.mod) over both modules
	go vet ./...
	cd test && go vet ./...
	go tool staticcheck ./...

unit: deps ## the product module's tests (pure Go and kernel tests; kernel tests need root)
	test/scripts/gotest.sh . -count=1 -timeout $(GO_TEST_TIMEOUT) ./...

e2e: deps ## the lab tests: a real Kubernetes cluster on this machine (needs root)
	test/scripts/gotest.sh test -count=1 -p 1 -timeout 60m ./...

test: unit e2e ## everything CI runs: unit, kernel and lab tests

bench: deps ## benchmarks, results in test/bench/results/
	WITH_BENCH=1 test/scripts/deps.sh
	go test -run '^$$' -bench . -benchmem ./...

lab: ## build the lab tool into bin/lab (then: bin/lab up | status | kubectl ... | down)
	cd test && go build -o ../$(BIN)/lab ./lab/cmd/lab

demo: deps lab ## bring the lab up and run the mesh with the sample app and traffic
	$(BIN)/lab up --nodes 2

clean: ## remove build output (the lab must be down first: bin/lab down)
	rm -rf $(BIN)
