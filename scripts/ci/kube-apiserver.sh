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
BUILD_DIR="${CACHE_DIR}/kube-build"

log() { echo "kube-apiserver.sh: $*" >&2; }

have_assets() {
  [[ -x "${ASSETS_DIR}/kube-apiserver" && -x "${ASSETS_DIR}/etcd" && -x "${ASSETS_DIR}/kubectl" ]]
}

# Writes a deb-src twin of the machine's own deb822 apt sources, so the source
# package comes from whatever mirror this machine is configured to use. No
# mirror host is named here.
write_src_list() {
  local src_list=/etc/apt/sources.list.d/titan-src.sources
  [[ -f "${src_list}" ]] && return 0
  local stock
  stock="$(find /etc/apt/sources.list.d -maxdepth 1 -name '*.sources' ! -name 'titan-*' | sort)"
  if [[ -z "${stock}" ]]; then
    log "no deb822 apt sources in /etc/apt/sources.list.d; add a deb-src entry for the kubernetes source package by hand"
    return 1
  fi
  # shellcheck disable=SC2086  # one path per line, none with spaces
  sed -e 's/^Types:.*$/Types: deb-src/' ${stock} >"${src_list}"
}

install_packages() {
  write_src_list
  log "installing build packages (apt)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    etcd-server golang-go rsync make golang-github-modern-go-reflect2-dev dpkg-dev >&2
}

fetch_source() {
  mkdir -p "${BUILD_DIR}/dl"
  if [[ -z "$(find "${BUILD_DIR}/dl" -maxdepth 1 -name "kubernetes_*.orig.tar.*")" ]]; then
    log "downloading the kubernetes source package"
    (cd "${BUILD_DIR}/dl" && apt-get source --download-only kubernetes >&2)
  fi
}

unpack_source() {
  local tree="${BUILD_DIR}/gopath/src/k8s.io/kubernetes"
  if [[ -d "${tree}/cmd/kube-apiserver" ]]; then
    echo "${tree}"
    return
  fi
  log "unpacking the source"
  rm -rf "${BUILD_DIR}/unpack" && mkdir -p "${BUILD_DIR}/unpack"
  local orig
  orig="$(find "${BUILD_DIR}/dl" -maxdepth 1 -name "kubernetes_*.orig.tar.*" | head -n1)"
  tar -xf "${orig}" -C "${BUILD_DIR}/unpack"
  local top
  top="$(find "${BUILD_DIR}/unpack" -mindepth 1 -maxdepth 1 -type d | head -n1)"
  mkdir -p "$(dirname "${tree}")"
  rm -rf "${tree}"
  mv "${top}" "${tree}"
  # The vendored reflect2 v1.0.1 is broken on Go >= 1.18; Debian's copy works.
  rm -rf "${tree}/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "${tree}/vendor/github.com/modern-go/reflect2"
  echo "${tree}"
}

build_apiserver() {
  local tree="$1"
  log "building kube-apiserver (several minutes)"
  (
    cd "${tree}"
    export GOPATH="${BUILD_DIR}/gopath" GO111MODULE=off CGO_ENABLED=0
    export GOCACHE="${BUILD_DIR}/gocache"
    make WHAT="cmd/kube-apiserver cmd/kube-controller-manager" >&2
  )
}

collect_assets() {
  local tree="$1"
  mkdir -p "${ASSETS_DIR}"
  local out
  out="$(find "${tree}/_output" -type f -name kube-apiserver -perm -u+x | head -n1)"
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
  install_packages
  fetch_source
  local tree
  tree="$(unpack_source)"
  if [[ ! -x "${tree}/_output/bin/kube-apiserver" ]] && \
     ! find "${tree}/_output" -type f -name kube-apiserver 2>/dev/null | grep -q .; then
    build_apiserver "${tree}"
  fi
  collect_assets "${tree}"
  have_assets || { log "assets incomplete in ${ASSETS_DIR}"; exit 1; }
  log "ready: ${ASSETS_DIR}"
  echo "${ASSETS_DIR}"
}

main "$@"
