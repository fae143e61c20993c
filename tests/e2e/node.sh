#!/usr/bin/env bash
# End-to-end test of Titan on the real one-node Kubernetes 1.20 of
# scripts/ci/k8s-node.sh (no Docker, no registry): the same scenario as
# tests/e2e/kind.sh (whose steps it reuses), on real pods, with the image
# assembled by scripts/image.sh and a busybox tool image as the client.
#
#   scripts/ci/k8s-node.sh build && scripts/ci/k8s-node.sh start
#   cargo build --release --locked --bin titan-server --bin titan-operator --bin titanctl
#   tests/e2e/node.sh
#
# Phases: image import; helm install; 3-member TitanCluster with
# storage.fixPermissions (the host-path provisioner ignores fsGroup); wait
# Available; writes through the Service following ERR NOT_LEADER; delete the
# leader pod while a writer runs; scale 3 -> 5 -> 3; after every phase every
# acknowledged write is read back from every member by its per-pod name; then
# delete the TitanCluster and helm uninstall, and nothing of it is left.
# Prints a timeline with each phase's duration at the end (and on failure).
#
# Env: ARTIFACTS_DIR (./e2e-artifacts), E2E_PHASES (all; or a space-separated
# subset of: rollout snapshot cleanup, run after the core phases).
set -euo pipefail

E2E_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=tests/e2e/kind.sh
source "${E2E_ROOT}/tests/e2e/kind.sh"

NODE="${E2E_ROOT}/scripts/ci/k8s-node.sh"
IMAGE_REPO="localhost/titan"
CLIENT_IMAGE="localhost/titan-tools:1"
eval "$("${NODE}" env)"
NODE_KUBECTL="${TITAN_TOOLS_CACHE:-${HOME}/.cache/titan-tools}/k8s-node/kubectl"
# Reads of one member before its missing writes count as lost.
MEMBER_READ_ATTEMPTS=15
# Bound of the background writer's run (it is stopped explicitly before).
WRITER_MAX_S=900
WRITER_LOG=""
WRITER_PID=""

k() { "${NODE_KUBECTL}" "$@"; }

TIMELINE=()
PHASE=""
PHASE_STARTED=${SECONDS}

phase() {
  phase_done
  PHASE="$1"
  PHASE_STARTED=${SECONDS}
  log "== ${PHASE}"
}

phase_done() {
  [ -n "${PHASE}" ] && TIMELINE+=("$(printf '%-52s %4ds' "${PHASE}" "$((SECONDS - PHASE_STARTED))")")
  PHASE=""
}

print_timeline() {
  printf '\ne2e timeline (phase, duration):\n' >&2
  local line
  for line in "${TIMELINE[@]}"; do printf '  %s\n' "${line}" >&2; done
}

node_on_exit() {
  local rc=$?
  [ -n "${WRITER_PID}" ] && kill "${WRITER_PID}" 2>/dev/null
  if [ "${rc}" -ne 0 ]; then
    TIMELINE+=("$(printf '%-52s %4ds FAILED' "${PHASE}" "$((SECONDS - PHASE_STARTED))")")
    PHASE=""
    collect_logs
    log "e2e FAILED (exit ${rc}); diagnostics in ${ARTIFACTS_DIR}"
  fi
  phase_done
  print_timeline
  exit "${rc}"
}

import_images() {
  local tar
  tar="$(mktemp --suffix=.tar)"
  "${E2E_ROOT}/scripts/image.sh" --tag "${IMAGE_REPO}:${TAG_A}" --out "${tar}"
  "${NODE}" import "${tar}" >/dev/null
  "${E2E_ROOT}/scripts/image.sh" --tag "${IMAGE_REPO}:${TAG_B}" --out "${tar}"
  "${NODE}" import "${tar}" >/dev/null
  rm -f "${tar}"
}

install() {
  helm upgrade --install titan-operator "${E2E_ROOT}/charts/titan-operator" \
    --namespace "${OPERATOR_NS}" --create-namespace \
    --set image.repository="${IMAGE_REPO}" --set image.tag="${TAG_A}" \
    --set image.pullPolicy=IfNotPresent --set replicaCount=1 --wait --timeout 180s
  k create namespace "${TITAN_NS}" --dry-run=client -o yaml | k apply -f -
  sed -e "s|^\(  image:\).*|\1 ${IMAGE_REPO}:${TAG_A}|" \
    -e 's|^  storage:$|  imagePullPolicy: IfNotPresent\n  storage:\n    fixPermissions: true|' \
    "${E2E_ROOT}/manifests/examples/titancluster.yaml" | kt apply -f -
  kt delete pod "${CLIENT_POD}" --ignore-not-found --wait=true
  kt run "${CLIENT_POD}" --image="${CLIENT_IMAGE}" --image-pull-policy=Never \
    --restart=Never -- sleep 86400
}

# Reads every acknowledged key from one member over one connection (GETs
# pipelined through the client pod) and prints the replies, one per line.
member_replies() {
  local member="$1" requests="$2"
  kt exec -i "${CLIENT_POD}" -- nc -w "${NC_TIMEOUT_S}" "${member}.${TC}-peers" 6001 \
    <"${requests}" 2>/dev/null | tr -d '\r' || true
}

# Every key the writer or the steps got OK for, read back from every current
# member by its per-pod name. A member that just restarted may still be
# catching up or missing from DNS: its read is retried, bounded.
verify_everywhere() {
  local members m attempt work n
  members="$(tc_field '{range .status.members[*]}{.name}{"\n"}{end}')"
  [ -n "${members}" ] || die "status.members is empty"
  work="$(mktemp -d)"
  acknowledged_writes >"${work}/acked"
  awk '{print "GET " $1}' "${work}/acked" >"${work}/requests"
  awk '{print "VALUE " $2}' "${work}/acked" >"${work}/want"
  n="$(wc -l <"${work}/acked")"
  for m in ${members}; do
    for attempt in $(seq 1 "${MEMBER_READ_ATTEMPTS}"); do
      member_replies "${m}" "${work}/requests" >"${work}/got-${m}"
      cmp -s "${work}/want" "${work}/got-${m}" && break
      [ "${attempt}" -lt "${MEMBER_READ_ATTEMPTS}" ] || {
        diff "${work}/want" "${work}/got-${m}" | head -5 >&2 || true
        rm -rf "${work}"
        die "member ${m} does not return every acknowledged write (${n} keys)"
      }
      sleep "${POLL_INTERVAL_S}"
    done
  done
  rm -rf "${work}"
  log "all ${n} acknowledged writes present on: $(echo "${members}" | tr '\n' ' ')"
}

# key value pairs acknowledged so far: the steps' keys and the writer's log.
acknowledged_writes() {
  local p i
  for p in before after-failover; do
    if [ -f "${ARTIFACTS_DIR}/.wrote-${p}" ]; then
      for i in $(seq 1 "${KEY_COUNT}"); do echo "${p}-${i} value_${p}_${i}"; done
    fi
  done
  [ -n "${WRITER_LOG}" ] && [ -f "${WRITER_LOG}" ] && sed -n 's/^OK //p' "${WRITER_LOG}"
  return 0
}

# Keys with spaces do not fit the per-member check: write underscore values.
write_keys() {
  local prefix="$1" i
  for i in $(seq 1 "${KEY_COUNT}"); do
    titan_set "${prefix}-${i}" "value_${prefix}_${i}" || die "SET ${prefix}-${i} failed"
  done
  mkdir -p "${ARTIFACTS_DIR}" && touch "${ARTIFACTS_DIR}/.wrote-${prefix}"
  log "wrote ${KEY_COUNT} keys '${prefix}-*'"
}

# Reads through the Service. Right after a pod is deleted the Service can
# still send a new connection to it (endpoints lag): an empty reply (connection
# closed) is retried, bounded; a wrong value fails at once.
verify_keys() {
  local prefix="$1" i reply attempt
  for i in $(seq 1 "${KEY_COUNT}"); do
    for attempt in $(seq 1 "${MEMBER_READ_ATTEMPTS}"); do
      reply="$(titan_get "${prefix}-${i}" || true)"
      [ -z "${reply}" ] || break
      log "GET ${prefix}-${i}: no reply (attempt ${attempt}/${MEMBER_READ_ATTEMPTS})"
      sleep "${POLL_INTERVAL_S}"
    done
    [ "${reply}" = "VALUE value_${prefix}_${i}" ] ||
      die "GET ${prefix}-${i}: expected 'VALUE value_${prefix}_${i}', got '${reply}'"
  done
  log "read back ${KEY_COUNT} keys '${prefix}-*'"
}

# A writer under load: sequential SETs through the Service, one line per
# acknowledged write ("OK key value"); failures are logged, not fatal.
writer() {
  local n=0 deadline=$((SECONDS + WRITER_MAX_S))
  while [ "${SECONDS}" -lt "${deadline}" ]; do
    n=$((n + 1))
    if titan_set "load-${n}" "load_${n}" 2>/dev/null; then echo "OK load-${n} load_${n}"; else echo "FAIL load-${n}"; fi
  done
}

start_writer() {
  WRITER_LOG="${ARTIFACTS_DIR}/writer.log"
  mkdir -p "${ARTIFACTS_DIR}"
  : >"${WRITER_LOG}"
  writer >>"${WRITER_LOG}" &
  WRITER_PID=$!
}

stop_writer() {
  [ -n "${WRITER_PID}" ] || return 0
  kill "${WRITER_PID}" 2>/dev/null || true
  wait "${WRITER_PID}" 2>/dev/null || true
  WRITER_PID=""
  log "writer: $(grep -c '^OK' "${WRITER_LOG}" || true) acknowledged, $(grep -c '^FAIL' "${WRITER_LOG}" || true) failed"
}

owned_objects_gone() {
  [ -z "$(k get statefulsets,pods,services,configmaps,poddisruptionbudgets -n "${TITAN_NS}" \
    -l app.kubernetes.io/instance="${TC}" -o name 2>/dev/null)" ] &&
    [ -z "$(k get deployments,pods -n "${OPERATOR_NS}" -o name 2>/dev/null)" ]
}

volumes_gone() {
  [ -z "$(k get pvc -n "${TITAN_NS}" -o name 2>/dev/null)" ] && [ -z "$(k get pv -o name 2>/dev/null)" ]
}

# Deleting the TitanCluster garbage-collects what it owns but retains the data
# PVCs (by design: data outlives the resource); deleting those releases the
# host-path volumes.
cleanup_phase() {
  kt delete pod "${CLIENT_POD}" --wait=false
  kt delete tc "${TC}" --wait=true --timeout=120s
  helm uninstall titan-operator --namespace "${OPERATOR_NS}" --wait --timeout 120s
  wait_until 120 owned_objects_gone ||
    die "objects left after delete: $(k get all,cm,pdb -n "${TITAN_NS}" -o name) $(k get all -n "${OPERATOR_NS}" -o name)"
  local retained
  retained="$(k get pvc -n "${TITAN_NS}" -o name | grep -c . || true)"
  [ "${retained}" = 3 ] || die "expected the 3 data PVCs to be retained, found ${retained}"
  log "owned objects gone; ${retained} data PVCs retained as documented; deleting them"
  kt delete pvc --all --wait=true --timeout=60s
  wait_until 120 volumes_gone || die "volumes left: $(k get pvc,pv -A -o name)"
  k get crd titanclusters.titan.dev >/dev/null 2>&1 && log "CRD kept (helm keeps crds/ on uninstall)"
  return 0
}

node_main() {
  local tool
  PATH="$("${E2E_ROOT}/scripts/ci/tools.sh"):${PATH}"
  for tool in helm ctr; do command -v "${tool}" >/dev/null 2>&1 || die "${tool} is required"; done
  "${NODE}" status >/dev/null || die "the node is not Ready: run scripts/ci/k8s-node.sh start"
  rm -rf "${ARTIFACTS_DIR}"
  trap node_on_exit EXIT
  phase "build + import image (scripts/image.sh)" && import_images
  phase "helm install + TitanCluster (3, fixPermissions)" && install
  phase "wait Available" && step4_wait_available
  phase "write/read through the Service (NOT_LEADER)" && step5_write_read && verify_everywhere
  start_writer
  phase "delete the leader pod under load" && step6_kill_leader && verify_everywhere
  phase "scale 3 -> 5 under load" && scale_to 5 && verify_everywhere
  phase "scale 5 -> 3 under load" && scale_to 3 && stop_writer && verify_everywhere
  local extra
  for extra in ${E2E_PHASES:-rollout snapshot cleanup}; do
    case "${extra}" in
      rollout) phase "rolling update to ${TAG_B}" && step8_rolling_update && verify_everywhere ;;
      snapshot) phase "on-demand snapshot in status" && step9_snapshot ;;
      cleanup) phase "delete tc + helm uninstall leaves nothing" && cleanup_phase ;;
      *) die "unknown phase ${extra}" ;;
    esac
  done
  phase_done
  log "e2e on the real node passed"
}

node_main "$@"
