#!/usr/bin/env bash
# demo.sh: the mesh on the lab, for a person. Brings the lab up, installs
# meshlet with meshctl, enrolls a namespace, deploys the echo app across both
# nodes, drives traffic from inside a pod, and prints what the mesh saw.
# Run by `make demo` (as root). Leaves the lab running; `bin/lab down` ends it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
lab=$root/bin/lab
meshctl=$root/bin/meshctl
export KUBECONFIG=$root/.lab/kubeconfig
kubectl=$root/.lab/bin/kubectl
ns=demo

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab up (a real 2-node Kubernetes cluster on this machine)"
"$lab" up --nodes 2

step "meshctl install (profile minimal: meshd + node agents)"
# The demo profile also runs Prometheus, whose image the lab cannot run yet.
"$meshctl" install --profile minimal -y --timeout 3m

step "enroll namespace $ns (istio.io/dataplane-mode=ambient) and deploy echo"
"$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$meshctl" ambient enable "$ns"
"$kubectl" -n "$ns" apply -f "$root/test/scripts/demo-echo.yaml"
"$kubectl" -n "$ns" rollout status deploy/echo --timeout=3m
"$kubectl" -n "$ns" get pods -o wide

step "traffic: 20 fresh connections from one pod to the echo Service"
rec=$(ls "$root"/.lab/nodes/*/pods/${ns}_echo-*.json | head -n1)
netns=$(jq -r .netns "$rec"); cgroup=$(jq -r .cgroup "$rec"); node=$(jq -r .node "$rec")
nodeip=$("$kubectl" get node "$node" -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
svc=$("$kubectl" -n "$ns" get svc echo -o jsonpath='{.spec.clusterIP}')
# Like kubectl exec: inside the pod's netns and its container's cgroup (the
# mesh captures by cgroup).
for _ in $(seq 20); do
  sh -c 'echo $$ > "$1/echo/cgroup.procs" && exec nsenter --net="$2" "$3" client -json -n 1 -timeout 5s "$4"' _ \
    "$cgroup" "$netns" "$root/.lab/bin/echo" "http://$svc:8080/"
done | jq -rs '"answered \(map(.ok) | add)/20; by pod:",
  (map(.byPod // {} | to_entries[]) | group_by(.key)[] | "  \(.[0].key)  \(map(.value) | add)")'

step "what the source node agent ($node, $nodeip:15020) reports"
nsenter --net=/var/run/netns/mlab-"$node" curl -s "http://$nodeip:15020/metrics" |
  grep -E "^(istio_tcp_connections_opened_total|meshlet_kernel_redirect_decisions_total\{decision=\"captured_tcp\")" |
  grep "\"$ns\"" | sed 's/^/  /'

cat <<MSG

The mesh is running. Poke it further:
  export KUBECONFIG=$KUBECONFIG
  $kubectl get pods -A -o wide
  $meshctl analyze -A
  nsenter --net=/var/run/netns/mlab-$node curl -s http://$nodeip:15020/metrics | grep ^istio_
  $lab down        # when done: removes everything the lab made
MSG
