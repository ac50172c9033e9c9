#!/usr/bin/env bash
# bench-datapath.sh: the node agent's L4 data path (eBPF capture + HBONE,
# mutual TLS 1.3) against no mesh and against an HAProxy mutual-TLS pair on
# the same path, in one run on the lab (a real 2-node Kubernetes on this
# machine). Results, with the issue's targets and whether each is met, go to
# test/bench/results/datapath.txt.
#
# Paths, all from a client pod on lab-node-1 to pod IPs (no Service):
#   direct-local   namespace not enrolled, server pod on lab-node-1
#   direct-remote  namespace not enrolled, server pod on lab-node-2
#   mesh-local     namespace istio.io/dataplane-mode=ambient, server on node 1
#   mesh-remote    the same across nodes (agent on node 1 -> agent on node 2)
#   haproxy        the direct client -> haproxy in node 1's netns (plaintext in,
#                  TLS 1.3 out with a client certificate) -> haproxy in node 2's
#                  netns (verify required) -> the direct server pod on node 2
# Each path gets fortio at a fixed 1000 req/s, 16 connections, 1 KiB request
# bodies echoed back (p50/p90/p99), and iperf3 with one stream for 10 s; the
# node agents' and haproxys' CPU comes from /proc/<pid>/stat over the fortio
# run, their RSS from /proc/<pid>/status. BENCH_ROUNDS rounds (default 3) of
# every path, medians kept. Then 50 pods of a small Deployment are enrolled on
# node 1 and that agent's RSS is read 15 s after they are ready and again a
# minute later (the steady state, which the target line uses).
#
# The lab is shared: the whole run holds /tmp/meshlet-lab.lock (flock), waits
# (bounded) for a lab of another checkout to go, and takes the lab down at the
# end only if it brought it up. Traffic stays on 198.18.0.0/15; every process
# it starts is stopped by PID, every namespace it makes is deleted.
#   env: BENCH_DURATION (fortio, default 20s), BENCH_ROUNDS (3),
#        BENCH_LOCK_WAIT / BENCH_LAB_WAIT (seconds to wait for the lock / for
#        another lab to go; default 7200 / 5400), BENCH_PERF=0 skips the perf
#        profile of the agent.
set -euo pipefail
cd "$(dirname "$0")/../.."
. test/scripts/perfstat.sh # syscall_events, syscalls_per_request
root=$PWD

lock=/tmp/meshlet-lab.lock
if [ "${MESHLET_LAB_LOCKED:-}" != 1 ]; then
  echo "bench-datapath: waiting for the lab lock $lock (other lab users hold it while they run)" >&2
  # -o: the lock stays with flock itself, never with a daemon this script starts.
  exec env MESHLET_LAB_LOCKED=1 flock -o -w "${BENCH_LOCK_WAIT:-7200}" "$lock" "$0" "$@"
fi
echo "bench-datapath: holding $lock"

[ "$(id -u)" = 0 ] || { echo "bench-datapath: the lab needs root" >&2; exit 1; }
cache=${MESHLET_CACHE:-$HOME/.cache/meshlet}
out=$root/test/bench/results/datapath.txt
dur=${BENCH_DURATION:-20s}
rounds=${BENCH_ROUNDS:-3}
qps=1000
conns=16
iperf_secs=10
labdir=$root/.lab
lab=$root/bin/lab
kubectl() { "$lab" kubectl "$@"; }
export KUBECONFIG=$labdir/kubeconfig
nsd=bench-direct
nsm=bench-mesh
node1=lab-node-1 node2=lab-node-2
ip1=198.18.0.11 ip2=198.18.0.12

WITH_BENCH=1 test/scripts/deps.sh
fortio=$cache/fortio-v1.66.5/fortio # built by deps.sh above

tmp=$(mktemp -d)
pids=()
started_lab=0 installed_mesh=0 made_ns=0
cleanup() {
  set +e
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null; done
  if [ "$made_ns" = 1 ] && [ "$started_lab" = 0 ]; then
    kubectl delete namespace "$nsd" "$nsm" --ignore-not-found --wait=true --timeout=3m >/dev/null
  fi
  if [ "$started_lab" = 1 ]; then
    "$lab" down
  elif [ "$installed_mesh" = 1 ]; then
    "$tmp/meshctl" uninstall -y >/dev/null
  fi
  rm -rf "$tmp"
}
trap cleanup EXIT

step() { printf '\n== %s\n' "$*" >&2; }

# One lab per machine: a lab of another checkout (a CI clone) is waited out,
# until for a minute none of these was seen: a `lab up`/`lab supervise` of
# it (every running lab has its supervisor), a `go test` in its test module
# (which brings one lab up and down per package). A bridge left by a lab
# whose supervisor is gone (a run killed before its `lab down`) is no lab:
# `lab up` below cleans it up.
foreign() {
  local pid cwd
  if ps -eo args= | awk -v me="$root/" '$1 ~ /\/lab$/ && ($2 == "up" || $2 == "supervise") && index($1, me) != 1 { f = 1 } END { exit !f }'; then
    return 0
  fi
  for pid in $(pgrep -x go); do
    cwd=$(readlink "/proc/$pid/cwd" 2>/dev/null) || continue
    if tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q '^go test ' && [ -d "$cwd/lab/kubelet" ] && [ "$cwd" != "$root/test" ]; then
      return 0
    fi
  done
  return 1
}
wait_s=${BENCH_LAB_WAIT:-5400} quiet=0 said=0
for ((i = 0; i * 10 < wait_s && quiet < 60; i++)); do
  if foreign; then
    [ "$said" = 1 ] || echo "bench-datapath: another checkout's lab runs; waiting up to ${wait_s}s for it to go" >&2
    said=1 quiet=0
  else
    quiet=$((quiet + 10))
  fi
  sleep 10
done
if [ "$quiet" -lt 60 ]; then echo "bench-datapath: another checkout's lab still runs after ${wait_s}s; giving up" >&2; exit 1; fi

step "lab up"
make -s lab
CGO_ENABLED=0 go build -tags grpcnotrace -o "$tmp/meshctl" ./cmd/meshctl
if ! "$lab" status 2>/dev/null | grep -q '^lab: running'; then started_lab=1; fi
"$lab" up --nodes 2
digest() { sha256sum "$labdir/bin/$1" 2>/dev/null | cut -c1-64; }
before="$(digest node-agent) $(digest meshlet-cni) $(digest meshd)"
"$lab" build >/dev/null
after="$(digest node-agent) $(digest meshlet-cni) $(digest meshd)"

step "meshctl install --profile default"
if ! kubectl -n meshlet-system get daemonset meshlet-node-agent >/dev/null 2>&1; then installed_mesh=1; fi
if [ "$installed_mesh" = 0 ] && [ "$before" != "$after" ]; then
  # The mesh runs an older build: restart it so the run measures this tree.
  kubectl -n meshlet-system rollout restart daemonset/meshlet-node-agent deployment/meshd
fi
"$tmp/meshctl" install --profile default -y --timeout 4m
kubectl -n meshlet-system rollout status daemonset/meshlet-node-agent --timeout=3m
kubectl -n meshlet-system rollout status deployment/meshd --timeout=3m

step "namespaces $nsd (not enrolled) and $nsm (ambient), client and server pods"
kubectl delete namespace "$nsd" "$nsm" --ignore-not-found --wait=true --timeout=3m >/dev/null
made_ns=1
kubectl create namespace "$nsd" >/dev/null
kubectl create namespace "$nsm" >/dev/null
kubectl label namespace "$nsm" istio.io/dataplane-mode=ambient >/dev/null
pods_yaml() { # the client (sleeps; load runs in it like kubectl exec) and two servers
  cat <<EOF
apiVersion: v1
kind: Pod
metadata: {name: client, labels: {app: client}}
spec:
  nodeSelector: {kubernetes.io/hostname: $node1}
  terminationGracePeriodSeconds: 1
  containers:
  - {name: client, image: meshlet.dev/echo:latest, command: [sleep, infinity]}
EOF
  for s in local:$node1 remote:$node2; do
    cat <<EOF
---
apiVersion: v1
kind: Pod
metadata: {name: srv-${s%%:*}, labels: {app: srv}}
spec:
  nodeSelector: {kubernetes.io/hostname: ${s#*:}}
  terminationGracePeriodSeconds: 1
  containers:
  - name: fortio
    image: meshlet.dev/echo:latest
    command: [$fortio, server, -http-port, "8080", -grpc-port, disabled, -redirect-port, disabled,
              -tcp-port, disabled, -udp-port, disabled, -ui-path=]
    readinessProbe: {tcpSocket: {port: 8080}, periodSeconds: 1}
  - name: iperf3
    image: meshlet.dev/echo:latest
    command: [iperf3, -s, -p, "5201"]
    readinessProbe: {tcpSocket: {port: 5201}, periodSeconds: 1}
EOF
  done
}
for ns in "$nsd" "$nsm"; do pods_yaml | kubectl -n "$ns" apply -f - >/dev/null; done
for ns in "$nsd" "$nsm"; do
  kubectl -n "$ns" wait --for=condition=Ready pod/client pod/srv-local pod/srv-remote --timeout=3m >/dev/null
done
podip() { kubectl -n "$1" get pod "$2" -o jsonpath='{.status.podIP}'; }

# record ns pod: the lab kubelet's record of a running pod (netns, cgroup, pids).
record() {
  local uid; uid=$(kubectl -n "$1" get pod "$2" -o jsonpath='{.metadata.uid}')
  ls "$labdir"/nodes/*/pods/"$1_$2_$uid".json
}
# in_pod ns pod argv...: run argv in the pod's netns, mount namespace and
# container cgroup, as kubectl exec would (the mesh captures by cgroup), for at
# most two minutes.
in_pod() {
  local rec; rec=$(record "$1" "$2"); shift 2
  local netns pid cg
  netns=$(jq -r .netns "$rec")
  pid=$(jq -r '.containers | to_entries[0].value.pid' "$rec")
  cg=$(jq -r '.cgroup + "/" + (.containers | to_entries[0].key)' "$rec")
  timeout 120 bash -c 'echo $$ > "$0/cgroup.procs" && exec nsenter --target "$1" --mount --net="$2" -- "${@:3}"' \
    "$cg" "$pid" "$netns" "$@"
}
# agent_pid node: the node agent process on node.
agent_pid() {
  local pod; pod=$(kubectl -n meshlet-system get pod -l app.kubernetes.io/name=meshlet-node-agent \
    --field-selector "spec.nodeName=$1,status.phase=Running" -o json |
    jq -r '[.items[] | select(.metadata.deletionTimestamp == null)][0].metadata.name')
  jq -r '.containers["node-agent"].pid' "$(record meshlet-system "$pod")"
}
a1=$(agent_pid $node1) a2=$(agent_pid $node2)
for p in $a1 $a2; do
  grep -q node-agent "/proc/$p/cmdline" || { echo "bench-datapath: pid $p is not a node agent" >&2; exit 1; }
done

step "HAProxy mutual-TLS pair: $node1 ($ip1) -> $node2 ($ip2)"
ssl=$tmp/ssl; mkdir -p "$ssl"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 -subj /CN=bench-ca \
  -keyout "$ssl/ca.key" -out "$ssl/ca.pem" 2>/dev/null
for who in server:serverAuth client:clientAuth; do
  n=${who%%:*}
  openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=haproxy-$n" \
    -keyout "$ssl/$n.key" -out "$ssl/$n.csr" 2>/dev/null
  printf 'subjectAltName=DNS:haproxy-%s\nextendedKeyUsage=%s\n' "$n" "${who#*:}" > "$ssl/$n.ext"
  openssl x509 -req -in "$ssl/$n.csr" -CA "$ssl/ca.pem" -CAkey "$ssl/ca.key" -CAcreateserial -days 1 \
    -extfile "$ssl/$n.ext" -out "$ssl/$n.crt" 2>/dev/null
  cat "$ssl/$n.crt" "$ssl/$n.key" > "$ssl/$n.pem"
done
srv_remote=$(podip "$nsd" srv-remote)
haproxy_cfg() { # side: the config of one end, two ports each (fortio 8080, iperf3 5201)
  cat <<EOF
global
  maxconn 4096
  ssl-default-bind-options ssl-min-ver TLSv1.3
  ssl-default-server-options ssl-min-ver TLSv1.3
defaults
  mode tcp
  timeout connect 5s
  timeout client 120s
  timeout server 120s
EOF
  for p in 8080 5201; do
    if [ "$1" = client ]; then
      printf 'listen p%s\n  bind %s:1%s\n  server s %s:2%s ssl crt %s ca-file %s verify required verifyhost haproxy-server\n' \
        "$p" "$ip1" "$p" "$ip2" "$p" "$ssl/client.pem" "$ssl/ca.pem"
    else
      printf 'listen p%s\n  bind %s:2%s ssl crt %s ca-file %s verify required\n  server s %s:%s\n' \
        "$p" "$ip2" "$p" "$ssl/server.pem" "$ssl/ca.pem" "$srv_remote" "$p"
    fi
  done
}
haproxy_cfg client > "$tmp/haproxy-client.cfg"
haproxy_cfg server > "$tmp/haproxy-server.cfg"
ip netns exec mlab-$node2 haproxy -db -f "$tmp/haproxy-server.cfg" >"$tmp/haproxy-server.log" 2>&1 &
hs=$!; pids+=("$hs")
ip netns exec mlab-$node1 haproxy -db -f "$tmp/haproxy-client.cfg" >"$tmp/haproxy-client.log" 2>&1 &
hc=$!; pids+=("$hc")
sleep 1
kill -0 "$hs" "$hc" || { cat "$tmp"/haproxy-*.log >&2; exit 1; }

# target name -> "ns host fortio-port iperf-port"
declare -A target=(
  [direct-local]="$nsd $(podip "$nsd" srv-local) 8080 5201"
  [direct-remote]="$nsd $srv_remote 8080 5201"
  [mesh-local]="$nsm $(podip "$nsm" srv-local) 8080 5201"
  [mesh-remote]="$nsm $(podip "$nsm" srv-remote) 8080 5201"
  [haproxy]="$nsd $ip1 18080 15201"
)
paths=(direct-local direct-remote mesh-local mesh-remote haproxy)

ticks=$(getconf CLK_TCK)
cpu_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat"))); done; echo "$t"; }
sys_of() { local t=0 p; for p in "$@"; do t=$((t + $(awk '{print $15}' "/proc/$p/stat"))); done; echo "$t"; }
rss_mb() { local t=0 p; for p in "$@"; do t=$((t + $(awk '/VmRSS/{print $2}' "/proc/$p/status"))); done; echo "scale=1; $t / 1024" | bc; }
# rss_split pid: "<anonymous> MB heap and stacks + <file-backed> MB (the binary)"
rss_split() { awk '/RssAnon/{a=$2} /RssFile/{f=$2} END {printf "%.1f MB anonymous + %.1f MB file-backed (the binary)\n", a/1024, f/1024}' "/proc/$1/status"; }
# agent_counts: from one read of the node 1 agent's metrics, "<mTLS> <GCs>":
# the connections it tunnelled with mutual TLS for the ambient namespace,
# and the garbage collections its Go runtime ran, so far.
agent_counts() { curl -s --max-time 5 "http://$ip1:15020/metrics" |
  awk -v ns="source_workload_namespace=\"$nsm\"" 'index($0, "istio_tcp_connections_opened_total{") == 1 &&
    index($0, "reporter=\"source\"") && index($0, "connection_security_policy=\"mutual_tls\"") && index($0, ns) { s += $NF }
    $1 == "go_gc_duration_seconds_count" { gc = $2 }
    END { printf "%d %d\n", s, gc }'; }

rss_idle=$(rss_mb "$a1")
load0=$(cut -d' ' -f1-3 /proc/loadavg)
read -r mtls0 gc0 <<<"$(agent_counts)"; gct0=$(date +%s)

# measure path round: one line "path round qps p50 p90 p99 gbit/s a1-cores a1-sys a2-cores haproxy-cores"
measure() {
  local name=$1 r=$2
  read -r ns host fport iport <<<"${target[$name]}"
  local url="http://$host:$fport/"
  in_pod "$ns" client "$fortio" load -quiet -qps "$qps" -c "$conns" -t 2s -payload-size 1024 "$url" >/dev/null 2>&1 || true
  local c1 s1 c2 ch t0 t1
  c1=$(cpu_of "$a1"); s1=$(sys_of "$a1"); c2=$(cpu_of "$a2"); ch=$(cpu_of "$hc" "$hs"); t0=$(date +%s.%N)
  if ! in_pod "$ns" client "$fortio" load -quiet -qps "$qps" -c "$conns" -t "$dur" -payload-size 1024 -json - "$url" \
      >"$tmp/$name-$r.json" 2>"$tmp/$name-$r.log"; then
    echo "fortio over $name failed:" >&2; tail -5 "$tmp/$name-$r.log" >&2; exit 1
  fi
  t1=$(date +%s.%N)
  local el; el=$(echo "$t1 - $t0" | bc -l)
  local k1 ks1 k2 kh
  k1=$(echo "($(cpu_of "$a1") - $c1) / $ticks / $el" | bc -l)
  ks1=$(echo "($(sys_of "$a1") - $s1) / $ticks / $el" | bc -l)
  k2=$(echo "($(cpu_of "$a2") - $c2) / $ticks / $el" | bc -l)
  kh=$(echo "($(cpu_of "$hc" "$hs") - $ch) / $ticks / $el" | bc -l)
  local errs; errs=$(jq '[.RetCodes | to_entries[] | select(.key != "200") | .value] | add // 0' "$tmp/$name-$r.json")
  [ "$errs" = 0 ] || { echo "fortio over $name: $errs requests without a 200" >&2; exit 1; }
  if ! in_pod "$ns" client iperf3 -c "$host" -p "$iport" -t "$iperf_secs" -J >"$tmp/$name-$r.iperf.json" 2>&1; then
    echo "iperf3 over $name failed:" >&2; tail -5 "$tmp/$name-$r.iperf.json" >&2; exit 1
  fi
  local gbps; gbps=$(jq '.end.sum_received.bits_per_second / 1e9' "$tmp/$name-$r.iperf.json")
  jq -r --arg p "$name" --arg r "$r" --arg g "$gbps" --arg k1 "$k1" --arg ks1 "$ks1" --arg k2 "$k2" --arg kh "$kh" \
    'def pct(q): .DurationHistogram.Percentiles[] | select(.Percentile == q) | .Value * 1000;
     [$p, $r, .ActualQPS, pct(50), pct(90), pct(99), $g, $k1, $ks1, $k2, $kh] | @tsv' "$tmp/$name-$r.json"
}

step "$rounds rounds: fortio $qps req/s x $dur, iperf3 ${iperf_secs}s, over ${paths[*]}"
: > "$tmp/results"
for ((r = 1; r <= rounds; r++)); do
  for p in "${paths[@]}"; do
    measure "$p" "$r" | tee -a "$tmp/results" >&2
  done
done
read -r mtls1 gc1 <<<"$(agent_counts)"; gct1=$(date +%s)
load1=$(cut -d' ' -f1-3 /proc/loadavg)
rss_load=$(rss_mb "$a1"); rss2_load=$(rss_mb "$a2")
rss_hap=$(rss_mb "$hc" "$hs")

# Where the client-side agent's CPU goes, from perf over one more mesh-remote run.
profile=""
if [ "${BENCH_PERF:-1}" = 1 ] && command -v perf >/dev/null; then
  step "perf profile of the $node1 agent over a mesh-remote run"
  read -r ns host fport _ <<<"${target[mesh-remote]}"
  in_pod "$ns" client "$fortio" load -quiet -qps "$qps" -c "$conns" -t 21s -payload-size 1024 "http://$host:$fport/" >/dev/null 2>&1 &
  lp=$!; pids+=("$lp")
  sleep 1
  if timeout 60 perf record -q -e cpu-clock -F 999 -g -p "$a1" -o "$tmp/perf.data" -- sleep 10 >/dev/null 2>&1; then
    # sed reads to the end: a reader that stops early (head) would SIGPIPE perf.
    profile=$(perf report -q -i "$tmp/perf.data" --no-children --sort sym --stdio -g none 2>/dev/null |
      sed -n '/^ *$/d; s/^ */    /; 1,15p') || true
  fi
  # Then the agent's system calls by kind, over 8 s of the same run (the
  # tracepoints slow each call a little: not during the measured rounds).
  if timeout 30 perf stat -x, -e "$(syscall_events read recvmsg writev write epoll_pwait futex nanosleep)" -p "$a1" -o "$tmp/syscalls.csv" -- sleep 8 >/dev/null 2>&1; then
    syscalls=$(syscalls_per_request "$tmp/syscalls.csv" $((qps * 8))) || true
  fi
  wait "$lp" || true
fi

step "agent RSS with 50 enrolled pods on $node1"
enrolled_before=$(kubectl -n "$nsm" get pods --field-selector spec.nodeName=$node1 --no-headers | wc -l)
cat <<EOF | kubectl -n "$nsm" apply -f - >/dev/null
apiVersion: apps/v1
kind: Deployment
metadata: {name: idle}
spec:
  replicas: $((50 - enrolled_before))
  selector: {matchLabels: {app: idle}}
  template:
    metadata: {labels: {app: idle}}
    spec:
      nodeSelector: {kubernetes.io/hostname: $node1}
      terminationGracePeriodSeconds: 1
      containers:
      - name: echo
        image: meshlet.dev/echo:latest
        readinessProbe: {httpGet: {path: /healthz, port: 8080}, periodSeconds: 2}
EOF
kubectl -n "$nsm" rollout status deployment/idle --timeout=6m >/dev/null
enrolled=$(kubectl -n "$nsm" get pods --field-selector spec.nodeName=$node1,status.phase=Running --no-headers | wc -l)
sleep 15 # let the agent settle (certificates, listeners) before reading RSS
rss_50_early=$(rss_mb "$a1"); split_50_early=$(rss_split "$a1")
# The agent checks every 15 s whether a burst (here: 50 enrollments) left
# heap behind and returns it once allocation is quiet: read again after
# four of its checks, the steady state of an agent with 50 idle pods.
sleep 60
rss_50=$(rss_mb "$a1"); split_50=$(rss_split "$a1")

# Medians over the rounds.
med() { # path column(1-based in the results line)
  awk -v p="$1" -v c="$2" '$1 == p { print $c }' "$tmp/results" | sort -g |
    awk '{ v[NR] = $1 } END { printf "%.6f\n", NR % 2 ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}
declare -A Q P50 P90 P99 G K1 KS1 K2 KH
for p in "${paths[@]}"; do
  Q[$p]=$(med "$p" 3); P50[$p]=$(med "$p" 4); P90[$p]=$(med "$p" 5); P99[$p]=$(med "$p" 6)
  G[$p]=$(med "$p" 7); K1[$p]=$(med "$p" 8); KS1[$p]=$(med "$p" 9); K2[$p]=$(med "$p" 10); KH[$p]=$(med "$p" 11)
done
calc() { echo "$*" | bc -l; }
f3() { printf "%.3f" "$1"; }
f2() { printf "%.2f" "$1"; }
ratio() { if [ "$(calc "$2 <= 0")" = 1 ]; then echo "n/a"; else f2 "$(calc "$1 / $2")"; fi; }
base() { case $1 in *-local) echo direct-local ;; *) echo direct-remote ;; esac; }
met() { if [ "$(calc "$1")" = 1 ]; then echo "MET"; else echo "NOT MET"; fi; }

hap_add99=$(calc "${P99[haproxy]} - ${P99[direct-remote]}")
mr_add99=$(calc "${P99[mesh-remote]} - ${P99[direct-remote]}")
per1k() { calc "$1 / (${Q[$2]} / 1000)"; } # cores at the measured rate -> per 1000 req/s
cpu1=$(per1k "${K1[mesh-remote]}" mesh-remote)
dirty=$(git status --porcelain --untracked-files=no -- cmd node-agent pkg bpf | wc -l)

{
  echo "# data path: node agent (eBPF + HBONE mTLS) vs HAProxy mTLS pair vs no mesh — $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "# $(go version | awk '{print $3, $4}'), $(nproc) CPUs, kernel $(uname -r), $(git rev-parse --short HEAD)$([ "$dirty" = 0 ] || echo " + $dirty uncommitted files in cmd/ node-agent/ pkg/ bpf/"), $(haproxy -v | head -1 | awk '{print "HAProxy", $3}'), $(iperf3 --version | head -1 | awk '{print $1, $2}'), fortio 1.66.5"
  echo "# lab: 2 nodes (netns on one bridge, one kernel); client pod on $node1; pod IPs, no Service; mesh: meshctl install --profile default"
  echo "# fortio -qps $qps -c $conns -t $dur -payload-size 1024 (1 KiB POST echoed); iperf3 -t $iperf_secs, one stream; median of $rounds rounds"
  echo "# load average before/after the rounds: $load0 / $load1 (the machine is shared: other jobs add noise)"
  echo "# haproxy: mode tcp, TLS 1.3, ECDSA P-256 certs, client cert verify required, default threads; node agent: default profile"
  echo
  printf "%-14s %7s %8s %8s %8s %10s %10s %10s %9s %9s\n" path req/s "p50 ms" "p90 ms" "p99 ms" "+p99 ms" "+p99/hap" "Gbit/s" "x direct" "x haproxy"
  for p in "${paths[@]}"; do
    b=$(base "$p")
    add="-"; addh="-"
    if [ "$b" != "$p" ]; then
      add=$(f3 "$(calc "${P99[$p]} - ${P99[$b]}")")
      case $p in mesh-remote | haproxy) addh=$(ratio "$add" "$hap_add99") ;; esac
    fi
    printf "%-14s %7.0f %8.3f %8.3f %8.3f %10s %10s %10.2f %9s %9s\n" "$p" "${Q[$p]}" "${P50[$p]}" "${P90[$p]}" "${P99[$p]}" \
      "$add" "$addh" "${G[$p]}" "$(ratio "${G[$p]}" "${G[$b]}")" "$(ratio "${G[$p]}" "${G[haproxy]}")"
  done
  echo "(+p99: p99 minus direct on the same path — direct-local for *-local, direct-remote otherwise; x direct / x haproxy: throughput ratios)"
  echo
  echo "CPU during the fortio runs (cores; per 1000 req/s = cores / (req/s / 1000)):"
  printf "  %-14s %22s %16s %14s\n" path "$node1 agent" "$node2 agent" "haproxy pair"
  for p in "${paths[@]}"; do
    printf "  %-14s %10.3f (%.3f sys) %16.3f %14.3f\n" "$p" "${K1[$p]}" "${KS1[$p]}" "${K2[$p]}" "${KH[$p]}"
  done
  echo
  echo "node agent RSS ($node1): idle $rss_idle MB; after the load $rss_load MB ($node2: $rss2_load MB); with $enrolled enrolled pods on $node1 $rss_50_early MB 15 s after they were ready ($split_50_early), $rss_50 MB a minute later ($split_50)"
  echo "haproxy pair RSS after the load: $rss_hap MB"
  echo "mutual-TLS connections the $node1 agent opened for $nsm during the runs: $((mtls1 - mtls0))"
  echo "garbage collections the $node1 agent ran during the runs: $((gc1 - gc0)) in $((gct1 - gct0)) s"
  echo
  echo "targets:"
  printf "  added p99 across nodes <= half of HAProxy's:  mesh %s ms, haproxy %s ms (ratio %s, target <= 0.5)   %s\n" \
    "$(f3 "$mr_add99")" "$(f3 "$hap_add99")" "$(ratio "$mr_add99" "$hap_add99")" "$(met "$mr_add99 <= 0.5 * $hap_add99")"
  printf "  throughput across nodes >= HAProxy's:         mesh %.2f Gbit/s, haproxy %.2f Gbit/s (ratio %s, target >= 1)   %s\n" \
    "${G[mesh-remote]}" "${G[haproxy]}" "$(ratio "${G[mesh-remote]}" "${G[haproxy]}")" "$(met "${G[mesh-remote]} >= ${G[haproxy]}")"
  printf "  agent CPU < 0.03 cores per 1000 req/s:        %s (client node, mesh-remote; server node %s; same node %s)   %s\n" \
    "$(f3 "$cpu1")" "$(f3 "$(per1k "${K2[mesh-remote]}" mesh-remote)")" "$(f3 "$(per1k "${K1[mesh-local]}" mesh-local)")" "$(met "$cpu1 < 0.03")"
  printf "  agent RSS < 20 MB with 50 enrolled pods:      %s MB with %s pods   %s\n" "$rss_50" "$enrolled" "$(met "$rss_50 < 20")"
  printf "    (steady state, a minute after the pods were ready; 15 s after: %s MB)\n" "$rss_50_early"
  if [ -n "${syscalls:-}" ]; then
    echo
    echo "$node1 agent system calls per request (perf stat over 8 s of mesh-remote at $qps req/s): $syscalls"
  fi
  if [ -n "$profile" ]; then
    echo
    echo "where the $node1 agent's CPU goes (perf -e cpu-clock over 10 s of mesh-remote at $qps req/s, self time by symbol):"
    echo "$profile"
  fi
} | tee "$out.tmp"
mv "$out.tmp" "$out"
echo "kept in $out"
