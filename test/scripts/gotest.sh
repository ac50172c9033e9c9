#!/usr/bin/env bash
# gotest.sh runs `go test` over one module and, under CI=true, fails the run if
# any test skipped: CI runs as root on a kernel with every feature the tests
# need, so a skip there means a test did not run, and that is a failure.
#   usage: gotest.sh <module dir> [go test args...]
set -uo pipefail
dir=$1; shift
log=$(mktemp)
trap 'rm -f "$log"' EXIT
(cd "$dir" && go test -v "$@") >"$log" 2>&1
rc=$?
# Show failures and package lines, not the whole -v stream.
grep -E '^(--- FAIL|FAIL|ok |panic:|--- SKIP)|^\s+\S+\.go:[0-9]+:' "$log" || true
if [ $rc -ne 0 ]; then
  echo "go test in $dir failed; full log follows" >&2
  grep -v -E '^(=== (RUN|PAUSE|CONT)|--- PASS)' "$log" | tail -n 300 >&2
  exit $rc
fi
# Where the time went: the slowest top-level tests (make test is to stay
# under 30 minutes on a warm machine).
echo "slowest tests in $dir:"
sed -n -E 's/^--- (PASS|FAIL): ([^ ]+) \(([0-9.]+)s\)$/\3 \2/p' "$log" | sort -rn | head -n 8 |
  awk '{ printf "  %8.1fs %s\n", $1, $2 }'
if [ "${CI:-}" = true ] && grep -q -- '--- SKIP' "$log"; then
  echo "CI=true: these tests skipped, and under CI a skipped test is a failed test:" >&2
  grep -A2 -- '--- SKIP' "$log" >&2
  exit 1
fi
