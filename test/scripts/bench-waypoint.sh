#!/usr/bin/env bash
# bench-waypoint.sh: the waypoint's L7 proxy against nginx (Debian) as a
# reverse proxy on the same path, and against no proxy at all, in one run on
# this machine: fortio at a fixed 1000 requests/s (p50/p90/p99 of a 1 KiB
# answer) and at its maximum rate, with each proxy's CPU (from /proc) and
# RSS. Both proxies get one core (nginx: one worker; waypoint: GOMAXPROCS=1);
# the backend is nginx serving a static 1 KiB file. A minimal Go relay
# (test/bench/relay: copies heads and bodies, nothing else) runs beside them
# on one core too: the floor of a Go proxy here, so that what the waypoint
# spends above it is its own work. Results, with the ratios the issue sets
# as targets, go to test/bench/results/waypoint.txt.
# Everything listens on 127.0.0.1 and is stopped by PID at exit.
# BENCH_PROFILE=DIR also writes the waypoint's pprof CPU profile of the
# max-rate run (cpu.pprof) and its heap and allocs profiles after it, from
# its loopback admin port, to DIR: `go tool pprof DIR/cpu.pprof`.
# BENCH_NOTE="..." is written into the results' header (what changed).
# BENCH_ROUNDS (default 3) rounds run every proxy in turn; each result is
# the round with the median proxy CPU per request.
# BENCH_PERF=0 skips the last run per proxy that counts system calls per
# request by kind (perf stat).
set -euo pipefail
cd "$(dirname "$0")/../.."
. test/scripts/perfstat.sh # syscall_events, syscalls_per_request
root=$PWD
cache=${MESHLET_CACHE:-$HOME/.cache/meshlet}
out=$root/test/bench/results/waypoint.txt
dur=${BENCH_DURATION:-10s}
rounds=${BENCH_ROUNDS:-3}
profile=${BENCH_PROFILE:-}
admin=""
if [ -n "$profile" ]; then mkdir -p "$profile"; profile=$(cd "$profile" && pwd); admin=127.0.0.1:18090; fi

WITH_BENCH=1 test/scripts/deps.sh
fortio=$cache/fortio-v1.66.5/fortio # built by deps.sh above

tmp=$(mktemp -d)
chmod 755 "$tmp" # nginx workers (www-data) read the payload
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for f in "$tmp"/*.pid; do [ -f "$f" ] && kill "$(cat "$f")" 2>/dev/null || true; done
  sleep 0.5
  rm -rf "$tmp"
}
trap cleanup EXIT

CGO_ENABLED=0 go build -tags grpcnotrace -o "$tmp/waypoint" ./cmd/waypoint
(cd test && CGO_ENABLED=0 go build -o "$tmp/relay" ./bench/relay)
head -c 1024 /dev/zero | tr '\0' 'x' > "$tmp/payload"

nginx_conf() { # name port body
  mkdir -p "$tmp/$1"
  cat > "$tmp/$1/nginx.conf" <<EOF
worker_processes 1;
pid $tmp/$1.pid;
error_log $tmp/$1/error.log;
daemon on;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $tmp/$1; proxy_temp_path $tmp/$1; fastcgi_temp_path $tmp/$1; uwsgi_temp_path $tmp/$1; scgi_temp_path $tmp/$1;
  upstream backend { server 127.0.0.1:18000; keepalive 64; }
  server {
    listen 127.0.0.1:$2;
    $3
  }
}
EOF
  nginx -c "$tmp/$1/nginx.conf" -p "$tmp/$1"
}
nginx_conf backend 18000 "location / { root $tmp; try_files /payload =404; }"
nginx_conf proxy 18081 "location / { proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection \"\"; }"

cat > "$tmp/waypoint.json" <<EOF
{"L7": {"Listeners": [{"Name": "http", "Port": 18080, "VirtualHosts": [{"Name": "bench", "Domains": ["*"],
  "Routes": [{"Name": "all", "Destinations": [{"Cluster": "backend", "Weight": 100}]}]}]}],
  "Clusters": [{"Name": "backend", "Endpoints": [{"Address": "127.0.0.1:18000"}]}]}}
EOF
GOMAXPROCS=1 "$tmp/waypoint" --config-file "$tmp/waypoint.json" --listen 127.0.0.1:18080 --metrics-addr "" --admin-addr "$admin" --access-log=false &
pids+=($!)
wp=$!
GOMAXPROCS=1 "$tmp/relay" 127.0.0.1:18082 127.0.0.1:18000 &
pids+=($!)
relay=$!
for port in 18000 18080 18081 18082; do
  for _ in $(seq 50); do curl -sf -o /dev/null "http://127.0.0.1:$port/" && break; sleep 0.1; done
done

ticks=$(getconf CLK_TCK)
# cpu_of pid...: total user+system ticks of the processes; sys_of: system only.
cpu_of() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo $t; }
sys_of() { local t=0; for p in "$@"; do t=$((t + $(awk '{print $15}' "/proc/$p/stat"))); done; echo $t; }
rss_kb() { local t=0; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo $t; }
nginx_pids() { local m; m=$(cat "$tmp/proxy.pid"); echo "$m $(pgrep -P "$m" | tr '\n' ' ')"; }

# run name port qps -> prints "qps p50 p90 p99 cores syscores" (cores used by the proxy's
# processes, and of them in the kernel)
run() {
  local name=$1 port=$2 qps=$3 procs=""
  case $name in waypoint) procs=$wp ;; nginx) procs=$(nginx_pids) ;; relay) procs=$relay ;; esac
  local c0=0 s0=0; [ -n "$procs" ] && c0=$(cpu_of $procs) && s0=$(sys_of $procs)
  local t0; t0=$(date +%s.%N) prof=""
  if [ -n "$profile" ] && [ "$name" = waypoint ] && [ "$qps" = 0 ] && [ "$round" = 1 ]; then
    # The CPU profile covers the run but its first and last second.
    (sleep 1; curl -sf -o "$profile/cpu.pprof" "http://$admin/debug/pprof/profile?seconds=$(( ${dur%s} - 2 ))") &
    prof=$!
  fi
  if ! "$fortio" load -quiet -qps "$qps" -c 16 -t "$dur" -json "$tmp/$name-$qps.json" "http://127.0.0.1:$port/" >"$tmp/$name-$qps.log" 2>&1; then
    echo "fortio against $name failed:" >&2; tail -5 "$tmp/$name-$qps.log" >&2; exit 1
  fi
  local t1; t1=$(date +%s.%N)
  if [ -n "$prof" ]; then
    wait "$prof" || echo "bench: no CPU profile from the waypoint" >&2
    curl -sf -o "$profile/heap.pprof" "http://$admin/debug/pprof/heap"
    curl -sf -o "$profile/allocs.pprof" "http://$admin/debug/pprof/allocs"
  fi
  local cores=0 sys=0
  if [ -n "$procs" ]; then
    cores=$(echo "($(cpu_of $procs) - $c0) / $ticks / ($t1 - $t0)" | bc -l)
    sys=$(echo "($(sys_of $procs) - $s0) / $ticks / ($t1 - $t0)" | bc -l)
  fi
  jq -r --arg cores "$cores" --arg sys "$sys" '[.ActualQPS, (.DurationHistogram.Percentiles[] | select(.Percentile==50) | .Value*1000),
     (.DurationHistogram.Percentiles[] | select(.Percentile==90) | .Value*1000),
     (.DurationHistogram.Percentiles[] | select(.Percentile==99) | .Value*1000), ($cores|tonumber), ($sys|tonumber)] | @tsv' "$tmp/$name-$qps.json"
}

# median_run: of the runs on stdin (one "qps p50 p90 p99 cores" line each),
# the one with the median proxy CPU per request (for direct, median req/s).
median_run() {
  awk '{ k = ($5 > 0) ? $5 / $1 : -$1; printf "%.12f\t%s\n", k, $0 }' | sort -g | cut -f2- | sed -n "$(( (rounds + 1) / 2 ))p"
}

# Each proxy is run in rounds, interleaved, and the median round kept: a
# burst of load from another job on this machine then skews one round of
# one proxy, not the comparison.
declare -A fixed max fixed_runs max_runs
for round in $(seq "$rounds"); do
  for name in direct waypoint nginx relay; do
    case $name in direct) port=18000 ;; waypoint) port=18080 ;; nginx) port=18081 ;; relay) port=18082 ;; esac
    fixed_runs[$name]+="$(run "$name" "$port" 1000)"$'\n'
    max_runs[$name]+="$(run "$name" "$port" 0)"$'\n'
  done
done
for name in direct waypoint nginx relay; do
  fixed[$name]=$(printf '%s' "${fixed_runs[$name]}" | median_run)
  max[$name]=$(printf '%s' "${max_runs[$name]}" | median_run)
done
wp_rss=$(rss_kb $wp); ng_rss=$(rss_kb $(nginx_pids))

# System calls per request by kind at full load, one more run per proxy
# under perf stat (its tracepoints slow each call: never in the rounds
# above). What the two proxies do differently in the kernel shows here.
declare -A syscalls
if [ "${BENCH_PERF:-1}" = 1 ] && command -v perf >/dev/null; then
  sc_events=$(syscall_events read recvfrom recvmsg writev write epoll_wait epoll_pwait futex nanosleep getsockopt)
  for name in waypoint nginx; do
    case $name in waypoint) port=18080 procs=$wp ;; nginx) port=18081 procs=$(nginx_pids) ;; esac
    perf stat -x, -e "$sc_events" -p "$(echo $procs | tr ' ' ,)" -o "$tmp/$name-sys.csv" -- sleep "$(( ${dur%s} + 1 ))" >/dev/null 2>&1 &
    sp=$!
    sleep 0.5
    "$fortio" load -quiet -qps 0 -c 16 -t "$dur" -json "$tmp/$name-sys.json" "http://127.0.0.1:$port/" >/dev/null 2>&1 || true
    wait "$sp" || true
    reqs=$(jq '.DurationHistogram.Count' "$tmp/$name-sys.json" 2>/dev/null || echo 0)
    if [ "${reqs:-0}" -gt 0 ] && [ -s "$tmp/$name-sys.csv" ]; then
      syscalls[$name]=$(syscalls_per_request "$tmp/$name-sys.csv" "$reqs")
    fi
  done
fi

{
  echo "# waypoint vs nginx vs direct — $(date -u +%Y-%m-%dT%H:%M:%SZ), $(go version | awk '{print $3, $4}'), $(nproc) CPUs, $(git rev-parse --short HEAD)"
  echo "# fortio -c 16 -t $dur, 1 KiB answers from an nginx static backend; proxies on one core each; median of $rounds interleaved rounds"
  echo "# relay: a minimal Go HTTP/1.1 relay (test/bench/relay), the floor of a Go proxy on this machine"
  if [ -n "${BENCH_NOTE:-}" ]; then echo "# changes: $BENCH_NOTE"; fi
  echo "# targets: waypoint CPU <= 0.1 core per 1000 req/s; RSS < 40 MB; max req/s per core >= nginx's"
  echo
  printf "%-9s %10s %9s %9s %9s %12s\n" "fixed1k" "req/s" "p50 ms" "p90 ms" "p99 ms" "proxy cores"
  for name in direct waypoint nginx relay; do
    read -r q p50 p90 p99 c _ <<<"${fixed[$name]}"
    printf "%-9s %10.0f %9.3f %9.3f %9.3f %12.3f\n" "$name" "$q" "$p50" "$p90" "$p99" "$c"
  done
  echo
  printf "%-9s %10s %9s %12s %14s\n" "max" "req/s" "p99 ms" "proxy cores" "req/s per core"
  for name in direct waypoint nginx relay; do
    read -r q p50 p90 p99 c _ <<<"${max[$name]}"
    per="-"; if [ "$name" != direct ]; then per=$(printf "%.0f" "$(echo "$q / $c" | bc -l)"); fi
    printf "%-9s %10.0f %9.3f %12.3f %14s\n" "$name" "$q" "$p99" "$c" "$per"
  done
  echo
  read -r _ _ _ wp99 wc _ <<<"${fixed[waypoint]}"; read -r _ _ _ ng99 nc _ <<<"${fixed[nginx]}"; read -r _ _ _ d99 _ <<<"${fixed[direct]}"
  read -r wq _ _ _ wmc wms <<<"${max[waypoint]}"; read -r nq _ _ _ nmc nms <<<"${max[nginx]}"
  read -r rq _ _ _ rmc rms <<<"${max[relay]}"
  printf "waypoint cores per 1000 req/s:   %.3f (target <= 0.1)\n" "$wc"
  printf "nginx cores per 1000 req/s:      %.3f\n" "$nc"
  printf "waypoint RSS:                    %.1f MB (target < 40); nginx proxy RSS %.1f MB\n" "$(echo "$wp_rss/1024" | bc -l)" "$(echo "$ng_rss/1024" | bc -l)"
  printf "added p99 at 1000 req/s:         waypoint %.3f ms, nginx %.3f ms\n" "$(echo "$wp99 - $d99" | bc -l)" "$(echo "$ng99 - $d99" | bc -l)"
  printf "max req/s per core, waypoint/nginx: %.2f (target >= 1)\n" "$(echo "($wq / $wmc) / ($nq / $nmc)" | bc -l)"
  printf "max req/s per core, relay/nginx:    %.2f (the Go floor)\n" "$(echo "($rq / $rmc) / ($nq / $nmc)" | bc -l)"
  # Where a request's CPU goes at full load: the proxy's own code (user)
  # against the kernel's work for its system calls (system), which for a
  # loopback write includes delivering the bytes to the reader.
  us() { echo "($1) * 1000000 / ($2)" | bc -l; }
  printf "CPU per request at full load:    waypoint %.1f us user + %.1f us system; nginx %.1f us user + %.1f us system; relay %.1f us user + %.1f us system\n" \
    "$(us "$wmc - $wms" "$wq")" "$(us "$wms" "$wq")" "$(us "$nmc - $nms" "$nq")" "$(us "$nms" "$nq")" "$(us "$rmc - $rms" "$rq")" "$(us "$rms" "$rq")"
  if [ -n "${syscalls[waypoint]:-}${syscalls[nginx]:-}" ]; then
    echo
    echo "system calls per request at full load (perf stat over one more run each):"
    echo "  waypoint: ${syscalls[waypoint]:-not measured}"
    echo "  nginx:    ${syscalls[nginx]:-not measured}"
  fi
} | tee "$out"
