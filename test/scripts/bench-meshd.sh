#!/usr/bin/env bash
# bench-meshd.sh runs meshd's benchmarks (issue 3) and keeps the figures in
# test/bench/results/meshd.txt: push latency from one change to 1000
# subscribed clients (p50/p99), meshd's heap with 10,000 pods and 1,000
# services, the rebuild cost of one pod change, and CSRs signed per second
# on one core. Targets: p99 push < 1 s, heap < 300 MB, >= 1000 CSRs/s.
set -euo pipefail
cd "$(dirname "$0")/../.."
out=test/bench/results/meshd.txt
mkdir -p "$(dirname "$out")"
{
  echo "# meshd benchmarks — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(go version | cut -d' ' -f3-), $(nproc) CPUs, $(git rev-parse --short HEAD 2>/dev/null || echo unknown)"
  echo "# targets: PushLatency1000Clients p99-ms < 1000; MeshdMemory10kPods heap-MB < 300; SignCSR >= 1000 CSRs/s on one core (ns/op <= 1000000 at -cpu 1)"
  go test -run '^$' -bench 'PushLatency1000Clients' -benchtime 5x ./pkg/xds/
  go test -run '^$' -bench 'MeshdMemory10kPods|RebuildOnePodChanged' -benchtime 3x ./pkg/controlplane/
  go test -run '^$' -bench 'SignCSR' -cpu 1 ./pkg/ca/
} 2>&1 | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "kept in $out"
