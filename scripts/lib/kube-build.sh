#!/usr/bin/env bash
# Kubernetes 1.20.2 built from Debian bookworm's `kubernetes` source package,
# shared by scripts/ci/kube-apiserver.sh (API server tier) and
# scripts/ci/k8s-node.sh (one real node). Source it; it defines:
#
#   kube_tree                 unpacks the source once, prints the tree path
#   kube_make TREE CMD...     `make WHAT="cmd/CMD ..."` in the tree (static, no cgo)
#   kube_built TREE NAME      prints the path of a built binary (empty when absent)
#
# There is no prebuilt Kubernetes in any registry we can reach. Everything is
# cached under ${TITAN_TOOLS_CACHE:-~/.cache/titan-tools}/kube-build.

KUBE_CACHE_DIR="${TITAN_TOOLS_CACHE:-${HOME}/.cache/titan-tools}"
KUBE_BUILD_DIR="${KUBE_CACHE_DIR}/kube-build"

kube_log() { echo "kube-build: $*" >&2; }

# Writes a deb-src twin of the machine's own deb822 apt sources, so the source
# package comes from whatever mirror this machine is configured to use. No
# mirror host is named here.
kube_write_src_list() {
  local src_list=/etc/apt/sources.list.d/titan-src.sources
  [[ -f "${src_list}" ]] && return 0
  local stock
  stock="$(find /etc/apt/sources.list.d -maxdepth 1 -name '*.sources' ! -name 'titan-*' | sort)"
  if [[ -z "${stock}" ]]; then
    kube_log "no deb822 apt sources in /etc/apt/sources.list.d; add a deb-src entry for the kubernetes source package by hand"
    return 1
  fi
  # shellcheck disable=SC2086  # one path per line, none with spaces
  sed -e 's/^Types:.*$/Types: deb-src/' ${stock} >"${src_list}"
}

# Installs the build packages plus the packages named in KUBE_EXTRA_PACKAGES.
kube_install_packages() {
  local extra=()
  read -r -a extra <<<"${KUBE_EXTRA_PACKAGES:-}"
  kube_write_src_list
  kube_log "installing build packages (apt)"
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq \
    etcd-server golang-go rsync make golang-github-modern-go-reflect2-dev dpkg-dev "${extra[@]}" >&2
}

kube_fetch_source() {
  mkdir -p "${KUBE_BUILD_DIR}/dl"
  if [[ -z "$(find "${KUBE_BUILD_DIR}/dl" -maxdepth 1 -name "kubernetes_*.orig.tar.*")" ]]; then
    kube_log "downloading the kubernetes source package"
    (cd "${KUBE_BUILD_DIR}/dl" && apt-get source --download-only kubernetes >&2)
  fi
}

# Prints the unpacked source tree, unpacking it first when needed.
kube_tree() {
  local tree="${KUBE_BUILD_DIR}/gopath/src/k8s.io/kubernetes"
  if [[ -d "${tree}/cmd/kube-apiserver" ]]; then
    echo "${tree}"
    return
  fi
  kube_fetch_source
  kube_log "unpacking the source"
  rm -rf "${KUBE_BUILD_DIR}/unpack" && mkdir -p "${KUBE_BUILD_DIR}/unpack"
  local orig
  orig="$(find "${KUBE_BUILD_DIR}/dl" -maxdepth 1 -name "kubernetes_*.orig.tar.*" | head -n1)"
  tar -xf "${orig}" -C "${KUBE_BUILD_DIR}/unpack"
  local top
  top="$(find "${KUBE_BUILD_DIR}/unpack" -mindepth 1 -maxdepth 1 -type d | head -n1)"
  mkdir -p "$(dirname "${tree}")"
  rm -rf "${tree}"
  mv "${top}" "${tree}"
  # The vendored reflect2 v1.0.1 is broken on Go >= 1.18; Debian's copy works.
  rm -rf "${tree}/vendor/github.com/modern-go/reflect2"
  cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "${tree}/vendor/github.com/modern-go/reflect2"
  echo "${tree}"
}

# Builds the named commands (kube-apiserver, kubelet, ...) in one make run.
kube_make() {
  local tree="$1"
  shift
  local what=()
  local cmd
  for cmd in "$@"; do what+=("cmd/${cmd}"); done
  kube_log "building $* (several minutes)"
  (
    cd "${tree}" || exit 1
    export GOPATH="${KUBE_BUILD_DIR}/gopath" GO111MODULE=off CGO_ENABLED=0
    export GOCACHE="${KUBE_BUILD_DIR}/gocache"
    make WHAT="${what[*]}" >&2
  )
}

# Prints the path of the built binary NAME, or nothing when it is not built.
kube_built() {
  local tree="$1" name="$2"
  find "${tree}/_output" -type f -name "${name}" -perm -u+x 2>/dev/null | grep '/bin/' | head -n1
}
