#!/usr/bin/env bash
# deps.sh installs what building and testing meshlet needs on a Debian machine,
# and does nothing when it is already there. Called by make; safe to rerun.
set -euo pipefail
# Tools built here are cached outside the clone, in $MESHLET_CACHE (as the
# Makefile and the lab's build cache have it).
cache=${MESHLET_CACHE:-$HOME/.cache/meshlet}

# Debian packages: the kernel-side tools the lab and the data path use, clang
# for `make generate`, protoc for pkg/api, and the benchmark peers (and perf,
# which the benchmarks profile and count system calls with).
pkgs=(iproute2 iptables nftables conntrack ipset ethtool tcpdump
      clang llvm libbpf-dev protobuf-compiler jq curl socat ca-certificates)
if [ "${WITH_BENCH:-}" = 1 ]; then pkgs+=(haproxy nginx iperf3 wrk bc linux-perf); fi
# Debian's prometheus stands for the prom/prometheus image of the demo
# profile in the lab (the tutorial test and make demo query it).
pkgs+=(prometheus)

missing=()
for p in "${pkgs[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "deps: missing Debian packages: ${missing[*]}; run as root (or: sudo apt-get install ${missing[*]})" >&2
    exit 1
  fi
  echo "deps: installing ${missing[*]}"
  stamp="$cache/apt-updated"
  mkdir -p "$(dirname "$stamp")"
  if [ ! -f "$stamp" ] || [ -n "$(find "$stamp" -mmin +1440)" ]; then
    apt-get update -qq
    touch "$stamp"
  fi
  # Packages with a daemon (prometheus, nginx, haproxy) must not start it on
  # the machine: the lab and the benchmarks run their own copies.
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d
    trap 'rm -f /usr/sbin/policy-rc.d' EXIT
  fi
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || { echo "deps: go is not on PATH; install Go 1.26 (see README)" >&2; exit 1; }
# Go tools are pinned in go.mod (tool directives); fetching them here keeps the
# first `go tool` call from looking like a hang.
go mod download
# The test module's too: the lab's kubelets build the CNI plugins from it
# inside the node network namespaces, where the module proxy cannot be
# reached, so every module must be in the cache before the lab comes up.
(cd "$(dirname "$0")/.." && go mod download)

# helm, for the lab test that installs and upgrades the chart as a helm user
# does; built once from its module (pinned here and in test/e2e/mesh
# helm_test.go) into the cache, outside the clone.
helm_version=v3.22.0
helm_bin="$cache/helm-${helm_version}/helm"
if [ ! -x "$helm_bin" ]; then
  echo "deps: building helm ${helm_version} (once, cached in $(dirname "$helm_bin"))"
  GOBIN="$(dirname "$helm_bin")" go install "helm.sh/helm/v3/cmd/helm@${helm_version}"
fi

# fortio, the load generator the tutorial's circuit-breaking step bursts with
# (as Istio's task does); pinned here and in test/e2e/mesh/tutorial_test.go.
fortio_version=v1.66.5
fortio_bin="$cache/fortio-${fortio_version}/fortio"
if [ ! -x "$fortio_bin" ]; then
  echo "deps: building fortio ${fortio_version} (once, cached in $(dirname "$fortio_bin"))"
  GOBIN="$(dirname "$fortio_bin")" go install "fortio.org/fortio@${fortio_version}"
fi
