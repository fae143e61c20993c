#!/usr/bin/env bash
# Opt-in process-level soak (not in CI): real titan-server processes, each in
# its own network namespace with its own address and a small tmpfs disk, a
# seeded nemesis (partition, kill -9, SIGSTOP/SIGCONT, netem delay/loss, full
# disk, add/promote/remove/replace members), clients recording a history
# that is checked for linearizability at the end, and etcd watchers whose
# streams must agree with the committed history. Needs root.
#
#   scripts/soak.sh                  # 5 minutes, random seed
#   scripts/soak.sh 2                # 2 minutes
#   scripts/soak.sh 5 --seed 1234    # replay a run's fault schedule
#
# Extra arguments go to the driver (soak/src/bin/titan-soak; see --help):
# --keys, --clients, --slots. This script only builds, creates the hub
# namespace (bridge 10.99.0.1/24) the driver runs in, and removes every
# namespace named tsoak-* (and the processes in them) on exit, even on failure.
#
# Knobs (environment):
#   SOAK_WORK  work directory: tmpfs mount points and node logs (default /tmp/titan-soak)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
MINUTES="${1:-5}"
shift || true
WORK="${SOAK_WORK:-/tmp/titan-soak}"
HUB="tsoak-hub"
TARGET_DIR="${CARGO_TARGET_DIR:-${ROOT}/target}"

log() { printf 'soak.sh: %s\n' "$*" >&2; }

ensure_tools() {
  if [ "$(id -u)" -ne 0 ]; then
    log "needs root (network namespaces, nft, tc, tmpfs mounts)"
    exit 2
  fi
  local missing=()
  command -v ip >/dev/null 2>&1 || missing+=(iproute2)
  command -v tc >/dev/null 2>&1 || missing+=(iproute2)
  command -v nft >/dev/null 2>&1 || missing+=(nftables)
  if [ "${#missing[@]}" -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
  fi
}

# Kills the node processes and the driver (by pid), deletes the namespaces
# (which removes their veths) and unmounts any tmpfs left under $WORK.
cleanup() {
  local ns pid
  # Node processes, by the ids the driver recorded (checked to still be ours).
  if [ -f "${WORK}/pids" ]; then
    while read -r pid; do
      if grep -qa titan-server "/proc/${pid}/cmdline" 2>/dev/null; then
        kill -CONT "${pid}" 2>/dev/null || true
        kill -9 "${pid}" 2>/dev/null || true
      fi
    done <"${WORK}/pids"
    rm -f "${WORK}/pids"
  fi
  for ns in $(ip netns list 2>/dev/null | awk '$1 ~ /^tsoak-/ { print $1 }'); do
    for pid in $(ip netns pids "${ns}" 2>/dev/null); do
      kill -CONT "${pid}" 2>/dev/null || true
      kill -9 "${pid}" 2>/dev/null || true
    done
    ip netns del "${ns}" 2>/dev/null || true
  done
  if [ -d "${WORK}" ]; then
    awk -v w="${WORK}/" 'index($2, w) == 1 { print $2 }' /proc/mounts | while read -r m; do
      umount -l "${m}" 2>/dev/null || true
    done
  fi
}

create_hub() {
  ip netns add "${HUB}"
  ip -n "${HUB}" link set lo up
  ip -n "${HUB}" link add br0 type bridge
  ip -n "${HUB}" addr add 10.99.0.1/24 dev br0
  ip -n "${HUB}" link set br0 up
}

main() {
  ensure_tools
  log "building titan-server and titan-soak (release)"
  (cd "${ROOT}" && cargo build --release --locked -p titan-server --bin titan-server \
    -p titan-soak --bin titan-soak >&2)
  cleanup
  trap cleanup EXIT
  trap 'exit 130' INT TERM
  create_hub
  mkdir -p "${WORK}"
  ip netns exec "${HUB}" "${TARGET_DIR}/release/titan-soak" --minutes "${MINUTES}" \
    --bin "${TARGET_DIR}/release/titan-server" --work "${WORK}" "$@"
}

main "$@"
