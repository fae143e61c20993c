#!/usr/bin/env bash
# Builds (once) and caches a kube-apiserver + etcd + kubectl set for the
# operator's real-API-server test tier, envtest style.
#
# Usage: scripts/ci/kube-apiserver.sh            # prints the assets dir on stdout
#        export KUBEBUILDER_ASSETS="$(scripts/ci/kube-apiserver.sh)"
#
# There is no prebuilt kube-apiserver in any registry we can reach, so this
# builds 1.20.2 from Debian bookworm's `kubernetes` source package (see
# docs in TESTENV). etcd comes from Debian's `etcd-server`, kubectl from the
# host. Idempotent: when the cache already holds all three binaries it only
# prints the directory.
set -euo pipefail

CACHE_DIR="${TITAN_TOOLS_CACHE:-${HOME}/.cache/titan-tools}"
ASSETS_DIR="${CACHE_DIR}/kubebuilder-assets"

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/lib/kube-build.sh
source "${ROOT}/scripts/lib/kube-build.sh"

log() { echo "kube-apiserver.sh: $*" >&2; }

have_assets() {
  [[ -x "${ASSETS_DIR}/kube-apiserver" && -x "${ASSETS_DIR}/etcd" && -x "${ASSETS_DIR}/kubectl" ]]
}

collect_assets() {
  local tree="$1"
  mkdir -p "${ASSETS_DIR}"
  local out
  out="$(kube_built "${tree}" kube-apiserver)"
  cp "${out}" "${ASSETS_DIR}/kube-apiserver"
  local kcm
  kcm="$(dirname "${out}")/kube-controller-manager"
  if [[ -x "${kcm}" ]]; then cp "${kcm}" "${ASSETS_DIR}/kube-controller-manager"; fi
  # Copies, not links: the cache directory must work when restored on a fresh CI runner.
  cp -L "$(command -v etcd || echo /usr/bin/etcd)" "${ASSETS_DIR}/etcd"
  cp -L "$(command -v kubectl)" "${ASSETS_DIR}/kubectl"
}

main() {
  if have_assets; then
    echo "${ASSETS_DIR}"
    return
  fi
  kube_install_packages
  local tree
  tree="$(kube_tree)"
  if [[ -z "$(kube_built "${tree}" kube-apiserver)" ]]; then
    kube_make "${tree}" kube-apiserver kube-controller-manager
  fi
  collect_assets "${tree}"
  have_assets || { log "assets incomplete in ${ASSETS_DIR}"; exit 1; }
  log "ready: ${ASSETS_DIR}"
  echo "${ASSETS_DIR}"
}

main "$@"
