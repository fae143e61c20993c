#!/usr/bin/env bash
# Runs every test Titan has: unit tests, the Raft simulator, storage crash and
# property tests, process-level cluster tests (real titan-server processes on
# loopback), operator tests (builders, mock API server, real kube-apiserver
# tier), the packaging checks (shellcheck, helm lint/template, generated
# manifests up to date) and, as root, the e2e scenario on a real one-node
# Kubernetes (scripts/ci/k8s-node.sh, tests/e2e/node.sh).
#
# It installs what it needs (cargo-nextest, helm, shellcheck, kube-apiserver +
# etcd built from Debian's sources and cached under ~/.cache/titan-tools,
# Debian's etcd-client for the etcdctl tier).
# Set TITAN_SKIP_APISERVER=1 to skip building the kube-apiserver (its tier
# then reports itself skipped).
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=scripts/lib/stage.sh
. scripts/lib/stage.sh

if ! cargo nextest --version >/dev/null 2>&1; then
  stage "installing cargo-nextest"
  cargo install cargo-nextest --locked
fi

# The etcdctl tier (server/tests/cluster_etcdctl.rs) runs Debian's etcdctl 3.4.
if ! command -v etcdctl >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1; then
  stage "installing etcd-client (etcdctl)"
  sudo_cmd=""
  if [ "$(id -u)" != 0 ]; then sudo_cmd="sudo"; fi
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq etcd-client
fi

if [ -x scripts/ci/tools.sh ]; then
  stage "packaging tools (helm, shellcheck, hadolint; cached)"
  tools_bin=$(scripts/ci/tools.sh)
  export PATH="$tools_bin:$PATH"
fi

if [ -z "${KUBEBUILDER_ASSETS:-}" ] && [ "${TITAN_SKIP_APISERVER:-0}" != 1 ] \
  && [ -x scripts/ci/kube-apiserver.sh ]; then
  stage "kube-apiserver + etcd assets (built once from Debian sources, cached)"
  KUBEBUILDER_ASSETS=$(scripts/ci/kube-apiserver.sh)
  export KUBEBUILDER_ASSETS
fi

# The operator's process tier drives real titan-server binaries.
stage "building titan-server"
cargo build --locked -p titan-server --bin titan-server
export TITAN_SERVER_BIN="${CARGO_TARGET_DIR:-$PWD/target}/debug/titan-server"

# With every prerequisite in place, a tier that would skip is a failure.
if [ -n "${KUBEBUILDER_ASSETS:-}" ]; then
  export TITAN_REQUIRE_ALL_TIERS=1
fi

stage "cargo nextest (all workspace tests)"
cargo nextest run --workspace --locked --profile ci

stage "doc tests"
cargo test --workspace --doc --locked

if [ -x scripts/ci/check-packaging.sh ]; then
  stage "packaging checks"
  scripts/ci/check-packaging.sh
fi

# The real-Kubernetes tier: one node (Kubernetes 1.20.2 built from Debian's
# sources, containerd, CNI bridge) started on this machine, the e2e scenario
# on real pods, then a stop that must leave nothing behind. It needs root;
# where root is available the node is expected to start, and a node that does
# not start is a failure. TITAN_SKIP_K8S_NODE=1 skips the tier.
if [ "${TITAN_SKIP_K8S_NODE:-0}" = 1 ] || [ "$(id -u)" != 0 ]; then
  echo "== k8s node tier: skipped (needs root; TITAN_SKIP_K8S_NODE=${TITAN_SKIP_K8S_NODE:-0})"
else
  stage "k8s node: build the node binaries and images (cached)"
  scripts/ci/k8s-node.sh build
  stage "k8s node: binaries for the image (debug), and the e2e's S3 server"
  cargo build --locked --bin titan-server --bin titan-operator --bin titanctl \
    --example s3_test_server
  stage "k8s node: start (until Ready)"
  scripts/ci/k8s-node.sh stop
  trap 'scripts/ci/k8s-node.sh stop || true; stage_close' EXIT
  scripts/ci/k8s-node.sh start
  stage "k8s node: e2e scenario on real pods (tests/e2e/node.sh)"
  TITAN_RELEASE_DIR="${CARGO_TARGET_DIR:-$PWD/target}/debug" tests/e2e/node.sh
  stage "k8s node: stop (nothing left behind)"
  trap stage_close EXIT
  scripts/ci/k8s-node.sh stop
fi
