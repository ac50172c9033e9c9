#!/usr/bin/env bash
# demo.sh: the tutorial's story on the lab, for a person. Brings the lab up,
# installs meshlet (demo profile: meshd, node agents, ingress gateway,
# Prometheus), enrolls a namespace with a waypoint, deploys the booking app
# (deploy/examples/booking), exposes it through the ingress gateway, splits
# order-service 80/20, turns on STRICT mutual TLS for the namespace, drives
# traffic and prints
# what the mesh saw. Run by `make demo` (as root). Leaves the lab running;
# `bin/lab down` ends it.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
lab=$root/bin/lab
meshctl=$root/bin/meshctl
export KUBECONFIG=$root/.lab/kubeconfig
kubectl=$root/.lab/bin/kubectl
ex=$root/deploy/examples/booking
ns=booking

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

step "lab up (a real 2-node Kubernetes cluster on this machine)"
"$lab" up --nodes 2
"$lab" build >/dev/null   # the images of this checkout, the booking app among them

step "meshctl install --profile demo (meshd, node agents, ingress gateway, Prometheus)"
"$meshctl" install --profile demo -y --timeout 4m

step "enroll namespace $ns with a waypoint, deploy the booking app"
"$kubectl" create namespace "$ns" --dry-run=client -o yaml | "$kubectl" apply -f - >/dev/null
"$meshctl" ambient enable "$ns"
"$meshctl" waypoint apply -n "$ns" --enroll-namespace
"$kubectl" -n "$ns" rollout status deploy/waypoint --timeout=3m
"$kubectl" -n "$ns" apply -f "$ex/booking.yaml" -f "$ex/order-v2.yaml" -f "$ex/gateway.yaml" -f "$ex/routing.yaml"
for d in booking-v1 order-v1 order-v2 inventory-v1 shipping-v1; do
  "$kubectl" -n "$ns" rollout status "deploy/$d" --timeout=3m
done
# STRICT mutual TLS for the namespace (deploy/examples/booking/security.yaml
# does it mesh-wide, in the root namespace).
"$kubectl" -n "$ns" apply -f - <<'YAML'
apiVersion: security.istio.io/v1
kind: PeerAuthentication
metadata: {name: default}
spec: {mtls: {mode: STRICT}}
YAML
"$kubectl" -n "$ns" get pods -o wide

node1=$("$kubectl" get node lab-node-1 -o jsonpath='{.status.addresses[?(@.type=="InternalIP")].address}')
port=$("$kubectl" -n meshlet-system get svc istio-ingressgateway -o jsonpath='{.spec.ports[?(@.port==80)].nodePort}')
url="http://$node1:$port/api/v1/booking"

step "traffic: 100 bookings through the ingress gateway ($url), 5 as the test user jason"
for _ in $(seq 30); do curl -s -o /dev/null "$url" && break; sleep 1; done
for _ in $(seq 100); do curl -s --max-time 5 "$url"; echo; done |
  jq -rs '"bookings answered: \(map(select(.service == "booking")) | length)/100",
          "order-service by version (VirtualService 80/20):",
          (map(.order.version // "error") | group_by(.)[] | "  \(.[0])  \(length)")'
for _ in $(seq 5); do curl -s --max-time 5 -H 'end-user: jason' "$url"; echo; done |
  jq -rs '"test user jason: order \(map(.order.version) | unique | join(","))"'

step "what the mesh saw (Prometheus from the demo profile)"
prom=$("$kubectl" -n meshlet-system get pod -l app.kubernetes.io/name=prometheus -o jsonpath='{.items[0].status.podIP}')
q() { curl -s --max-time 5 "http://$prom:9090/api/v1/query" --data-urlencode "query=$1" |
  jq -r --arg l "$2" '.data.result[] | "  \($l)\(.metric | to_entries | map(select(.key | test("^(destination_workload|connection_security_policy|response_code|decision|workload)$"))) | map("\(.key)=\(.value)") | join(" "))  \(.value[1])"'; }
echo "waiting for a scrape (15s)..."; sleep 20
echo "waypoint requests by destination and code:"
q "sum by (destination_workload, response_code) (istio_requests_total{reporter=\"waypoint\",destination_workload_namespace=\"$ns\"})" ""
echo "node agents' TCP connections by security policy (mutual_tls = the tunnel):"
q "sum by (destination_workload, connection_security_policy) (istio_tcp_connections_opened_total{reporter=\"destination\",destination_workload_namespace=\"$ns\"})" ""
echo "kernel: connect-time redirect decisions:"
q "sum by (decision) (meshlet_kernel_redirect_decisions_total{namespace=\"$ns\"})" ""

step "meshctl status"
"$meshctl" status || true

cat <<MSG

The mesh is running with the booking app. Poke it further:
  export KUBECONFIG=$KUBECONFIG
  curl -s $url | jq .                       # a booking through the ingress gateway
  $meshctl proxy-status                     # every node agent and waypoint, synced or not
  $meshctl analyze -n $ns                   # configuration problems
  $kubectl -n $ns apply -f $ex/jwt.yaml     # then a JWT is required for booking-service
  curl -s http://$prom:9090/api/v1/query --data-urlencode 'query=istio_requests_total' | jq .
  $lab down                                 # when done: removes everything the lab made
MSG
