#!/usr/bin/env bash
# Assembles Titan's container image without Docker, from release binaries, as a
# docker-archive tarball (what `docker save` writes; `ctr -n k8s.io images
# import` and `kind load image-archive` accept it).
#
#   cargo build --release --locked --bin titan-server --bin titan-operator --bin titanctl
#   scripts/image.sh [--tag REPO:TAG] [--out FILE]   # default ghcr.io/titan-dev/titan:VERSION
#   scripts/image.sh --config                        # prints the image's runtime config (JSON)
#
# The image is what the Dockerfile describes: the same entrypoint
# (/usr/local/bin/titan-server), user and group 65532 (`titan`), working dir
# /var/lib/titan (0750, owned by 65532), exposed ports and labels;
# scripts/ci/check-packaging.sh checks the two agree. The difference is the
# userland: instead of Debian slim it holds the binaries' own shared libraries
# (copied from this Debian bookworm host, the Dockerfile's runtime base) and
# busybox-static for /bin/sh (the operator's entry script) and the few tools
# the pods use (chown in the storage fix-up init container, hostname).
#
# Env: TITAN_RELEASE_DIR: where the binaries are (target/release, or
# $CARGO_TARGET_DIR/release; CI points it at the debug build it already has).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
# shellcheck source=scripts/lib/docker-archive.sh
source "${ROOT}/scripts/lib/docker-archive.sh"

VERSION="$(sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "${ROOT}/Cargo.toml")"
RELEASE_DIR="${TITAN_RELEASE_DIR:-${CARGO_TARGET_DIR:-${ROOT}/target}/release}"
BINARIES=(titan-server titan-operator titanctl)
UID_GID=65532
DATA_DIR=/var/lib/titan
# busybox applets the image links; /bin/sh is the one the pods need.
APPLETS=(sh hostname chown chmod id ls cat mkdir rm sleep env stat)

TAG="ghcr.io/titan-dev/titan:${VERSION}"
OUT=""
PRINT_CONFIG=0

log() { echo "image.sh: $*" >&2; }

# The image's runtime config: keep it equal to the Dockerfile's LABEL, USER,
# WORKDIR, EXPOSE and ENTRYPOINT (check-packaging.sh compares them).
image_config() {
  jq -n --arg version "${VERSION}" --arg user "${UID_GID}:${UID_GID}" --arg dir "${DATA_DIR}" '{
    User: $user,
    WorkingDir: $dir,
    Entrypoint: ["/usr/local/bin/titan-server"],
    Env: ["PATH=/usr/local/bin:/usr/bin:/bin"],
    ExposedPorts: {"5001/tcp": {}, "6001/tcp": {}, "7001/tcp": {}, "8080/tcp": {}},
    Labels: {
      "org.opencontainers.image.title": "titan",
      "org.opencontainers.image.description": "Titan: Kubernetes-native replicated key-value database and its operator",
      "org.opencontainers.image.version": $version,
      "org.opencontainers.image.licenses": "Apache-2.0"
    }
  }'
}

# Copies a binary's shared libraries (and the loader) into the rootfs at their paths.
copy_libraries() {
  local rootfs="$1" bin="$2" lib
  for lib in $(ldd "${bin}" | grep -o '/[^ ]*'); do
    mkdir -p "${rootfs}$(dirname "${lib}")"
    cp -L "${lib}" "${rootfs}${lib}"
  done
}

build_rootfs() {
  local rootfs="$1" b applet
  mkdir -p "${rootfs}/usr/local/bin" "${rootfs}/bin" "${rootfs}/etc" "${rootfs}/tmp" "${rootfs}${DATA_DIR}"
  chmod 1777 "${rootfs}/tmp"
  for b in "${BINARIES[@]}"; do
    [[ -x "${RELEASE_DIR}/${b}" ]] || {
      log "missing ${RELEASE_DIR}/${b}: build the release binaries first"
      exit 1
    }
    cp "${RELEASE_DIR}/${b}" "${rootfs}/usr/local/bin/${b}"
    copy_libraries "${rootfs}" "${RELEASE_DIR}/${b}"
  done
  cp /bin/busybox "${rootfs}/bin/busybox"
  for applet in "${APPLETS[@]}"; do ln -s busybox "${rootfs}/bin/${applet}"; done
  printf 'root:x:0:0:root:/root:/bin/sh\ntitan:x:%s:%s:titan:%s:/usr/sbin/nologin\n' \
    "${UID_GID}" "${UID_GID}" "${DATA_DIR}" >"${rootfs}/etc/passwd"
  printf 'root:x:0:\ntitan:x:%s:\n' "${UID_GID}" >"${rootfs}/etc/group"
  printf 'hosts: files dns\n' >"${rootfs}/etc/nsswitch.conf"
  chown "${UID_GID}:${UID_GID}" "${rootfs}${DATA_DIR}"
  chmod 0750 "${rootfs}${DATA_DIR}"
}

main() {
  while [[ $# -gt 0 ]]; do
    case "$1" in
      --tag) TAG="$2"; shift 2 ;;
      --out) OUT="$2"; shift 2 ;;
      --config) PRINT_CONFIG=1; shift ;;
      *) log "unknown argument $1"; exit 2 ;;
    esac
  done
  if [[ ${PRINT_CONFIG} -eq 1 ]]; then
    image_config
    return
  fi
  [[ $(id -u) -eq 0 ]] || { log "needs root (the layer holds files owned by ${UID_GID})"; exit 1; }
  OUT="${OUT:-${ROOT}/target/titan-image.tar}"
  local work
  work="$(mktemp -d)"
  build_rootfs "${work}/rootfs"
  docker_archive "${OUT}" "${TAG}" "${work}/rootfs" "$(image_config)"
  rm -rf "${work}"
  log "wrote ${OUT} (${TAG}, $(du -h "${OUT}" | cut -f1))"
}

main "$@"
