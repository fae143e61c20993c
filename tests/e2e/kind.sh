#!/usr/bin/env bash
# End-to-end test of Titan on a throwaway kind cluster. Needs docker, kind,
# kubectl and helm; runs unchanged on a laptop or a GitHub Actions runner.
#
#   tests/e2e/kind.sh
#
#  1. create a kind cluster            6. delete the leader pod: data survives, new leader
#  2. build the image, kind load it    7. scale 3 -> 5 -> 3, membership in status follows
#  3. helm install, apply the example  8. change the image tag: rolling update keeps quorum
#  4. wait for Available               9. snapshot on request (annotation) shows in status
#  5. write and read through nc       10. on failure, collect logs into $ARTIFACTS_DIR
#
# Env: KIND_CLUSTER_NAME (titan-e2e), KEEP_CLUSTER=1 to keep it afterwards,
#      REUSE_CLUSTER=1 to use an existing cluster of that name,
#      SKIP_BUILD=1 to load an already built image, ARTIFACTS_DIR (./e2e-artifacts).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CLUSTER="${KIND_CLUSTER_NAME:-titan-e2e}"
ARTIFACTS_DIR="${ARTIFACTS_DIR:-${ROOT}/e2e-artifacts}"
IMAGE_REPO="${E2E_IMAGE_REPO:-localhost/titan}"
TAG_A="e2e-a"
TAG_B="e2e-b"
OPERATOR_NS="titan-system"
TITAN_NS="titan"
TC="titan"
CLIENT_POD="titan-client"
CLIENT_IMAGE="busybox:1.36"
KEY_COUNT=20

# Named bounds for every wait (seconds) and retry loop.
AVAILABLE_TIMEOUT_S=300
LEADER_CHANGE_TIMEOUT_S=120
SCALE_TIMEOUT_S=300
ROLLOUT_TIMEOUT_S=600
SNAPSHOT_TIMEOUT_S=120
POLL_INTERVAL_S=2
NC_TIMEOUT_S=5
MAX_REDIRECTS=3
MAX_WRITE_ATTEMPTS=15

log() { printf '[%s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

k() { kubectl --context "kind-${CLUSTER}" "$@"; }
kt() { k -n "${TITAN_NS}" "$@"; }

tc_field() { kt get tc "${TC}" -o "jsonpath=$1" 2>/dev/null || true; }

# Polls `$2...` until it succeeds or $1 seconds pass.
wait_until() {
  local timeout_s="$1"
  shift
  local deadline=$((SECONDS + timeout_s))
  until "$@"; do
    [ "${SECONDS}" -lt "${deadline}" ] || return 1
    sleep "${POLL_INTERVAL_S}"
  done
}

# ------------------------------------------------------------ step 10: logs

collect_logs() {
  log "collecting diagnostics into ${ARTIFACTS_DIR}"
  mkdir -p "${ARTIFACTS_DIR}"
  k get all,tc,pvc,pdb,cm,lease -A -o wide >"${ARTIFACTS_DIR}/objects.txt" 2>&1 || true
  kt get tc "${TC}" -o yaml >"${ARTIFACTS_DIR}/titancluster.yaml" 2>&1 || true
  kt describe tc,sts,pods >"${ARTIFACTS_DIR}/describe-titan.txt" 2>&1 || true
  k -n "${OPERATOR_NS}" describe deploy,pods >"${ARTIFACTS_DIR}/describe-operator.txt" 2>&1 || true
  k get events -A --sort-by=.lastTimestamp >"${ARTIFACTS_DIR}/events.txt" 2>&1 || true
  local ns pod
  for ns in "${OPERATOR_NS}" "${TITAN_NS}"; do
    for pod in $(k -n "${ns}" get pods -o name 2>/dev/null); do
      k -n "${ns}" logs "${pod}" --all-containers >"${ARTIFACTS_DIR}/${ns}-${pod#pod/}.log" 2>&1 || true
      k -n "${ns}" logs "${pod}" --all-containers --previous \
        >"${ARTIFACTS_DIR}/${ns}-${pod#pod/}.previous.log" 2>/dev/null || true
    done
  done
  kind export logs "${ARTIFACTS_DIR}/kind" --name "${CLUSTER}" >/dev/null 2>&1 || true
}

on_exit() {
  local rc=$?
  if [ "${rc}" -ne 0 ]; then
    collect_logs
    log "e2e FAILED (exit ${rc}); diagnostics in ${ARTIFACTS_DIR}"
  fi
  if [ "${KEEP_CLUSTER:-0}" != 1 ] && [ "${REUSE_CLUSTER:-0}" != 1 ]; then
    kind delete cluster --name "${CLUSTER}" >/dev/null 2>&1 || true
  fi
  exit "${rc}"
}

# ----------------------------------------------------------- client over nc

# Sends one request line to host:port from the client pod and prints the reply.
nc_request() {
  local addr="$1" line="$2"
  kt exec "${CLIENT_POD}" -- sh -c \
    "printf '%s\n' \"\$1\" | nc -w ${NC_TIMEOUT_S} \"\${2%:*}\" \"\${2##*:}\"" \
    sh "${line}" "${addr}" 2>/dev/null | tr -d '\r'
}

# SET through the client Service, following ERR NOT_LEADER redirects; retries
# ERR UNAVAILABLE (mid-election). Succeeds only on OK.
titan_set() {
  local key="$1" value="$2" attempt redirects addr reply
  for attempt in $(seq 1 "${MAX_WRITE_ATTEMPTS}"); do
    addr="${TC}:6001"
    for redirects in $(seq 0 "${MAX_REDIRECTS}"); do
      reply="$(nc_request "${addr}" "SET ${key} ${value}")" || reply=""
      case "${reply}" in
        OK) return 0 ;;
        "ERR NOT_LEADER "*) addr="${reply#ERR NOT_LEADER }" ;;
        *) break ;;
      esac
    done
    log "SET ${key}: '${reply}' (attempt ${attempt}/${MAX_WRITE_ATTEMPTS}, ${redirects} redirects)"
    sleep "${POLL_INTERVAL_S}"
  done
  return 1
}

# GET through the client Service (any member serves linearizable reads).
titan_get() {
  nc_request "${TC}:6001" "GET $1"
}

write_keys() {
  local prefix="$1" i
  for i in $(seq 1 "${KEY_COUNT}"); do
    titan_set "${prefix}-${i}" "value ${prefix} ${i}" || die "SET ${prefix}-${i} failed"
  done
  log "wrote ${KEY_COUNT} keys '${prefix}-*'"
}

verify_keys() {
  local prefix="$1" i reply
  for i in $(seq 1 "${KEY_COUNT}"); do
    reply="$(titan_get "${prefix}-${i}")"
    [ "${reply}" = "VALUE value ${prefix} ${i}" ] ||
      die "GET ${prefix}-${i}: expected 'VALUE value ${prefix} ${i}', got '${reply}'"
  done
  log "read back ${KEY_COUNT} keys '${prefix}-*'"
}

# --------------------------------------------------------------- the steps

step1_create_cluster() {
  if [ "${REUSE_CLUSTER:-0}" = 1 ] && kind get clusters | grep -qx "${CLUSTER}"; then
    log "1. reusing kind cluster ${CLUSTER}"
    return
  fi
  log "1. creating kind cluster ${CLUSTER}"
  kind create cluster --name "${CLUSTER}" --wait 180s
}

step2_build_and_load() {
  if [ "${SKIP_BUILD:-0}" != 1 ]; then
    log "2. building ${IMAGE_REPO}:${TAG_A}"
    docker build -t "${IMAGE_REPO}:${TAG_A}" "${ROOT}"
  fi
  # The second tag is the same image; step 8 only needs a pod-template change.
  docker tag "${IMAGE_REPO}:${TAG_A}" "${IMAGE_REPO}:${TAG_B}"
  kind load docker-image --name "${CLUSTER}" "${IMAGE_REPO}:${TAG_A}" "${IMAGE_REPO}:${TAG_B}"
}

step3_install() {
  log "3. helm install, then apply the example TitanCluster"
  helm upgrade --install titan-operator "${ROOT}/charts/titan-operator" \
    --kube-context "kind-${CLUSTER}" --namespace "${OPERATOR_NS}" --create-namespace \
    --set image.repository="${IMAGE_REPO}" --set image.tag="${TAG_A}" \
    --set image.pullPolicy=Never --set replicaCount=2 --wait --timeout 180s
  k create namespace "${TITAN_NS}" --dry-run=client -o yaml | k apply -f -
  sed "s|^\(  image:\).*|\1 ${IMAGE_REPO}:${TAG_A}|" "${ROOT}/manifests/examples/titancluster.yaml" |
    kt apply -f -
  kt delete pod "${CLIENT_POD}" --ignore-not-found --wait=true
  kt run "${CLIENT_POD}" --image="${CLIENT_IMAGE}" --restart=Never -- sleep 86400
}

step4_wait_available() {
  log "4. waiting for condition Available"
  kt wait "tc/${TC}" --for=condition=Available --timeout="${AVAILABLE_TIMEOUT_S}s"
  kt wait "pod/${CLIENT_POD}" --for=condition=Ready --timeout=120s
  kt get tc "${TC}"
}

step5_write_read() {
  log "5. write and read through nc"
  [ "$(nc_request "${TC}:6001" PING)" = PONG ] || die "PING did not answer PONG"
  write_keys before
  verify_keys before
}

new_leader_elected() {
  local leader
  leader="$(tc_field '{.status.leader}')"
  [ -n "${leader}" ] && [ "${leader}" != "$1" ]
}

step6_kill_leader() {
  local old_leader
  old_leader="$(tc_field '{.status.leader}')"
  [ -n "${old_leader}" ] || die "status.leader is empty"
  log "6. deleting leader pod ${old_leader}"
  kt delete pod "${old_leader}" --wait=false
  wait_until "${LEADER_CHANGE_TIMEOUT_S}" new_leader_elected "${old_leader}" ||
    die "no new leader within ${LEADER_CHANGE_TIMEOUT_S}s (status.leader still '${old_leader}')"
  log "new leader: $(tc_field '{.status.leader}')"
  verify_keys before
  write_keys after-failover
  kt wait "tc/${TC}" --for=condition=Available --timeout="${AVAILABLE_TIMEOUT_S}s"
}

# True when status lists exactly $1 members, all ready voters (no learners).
membership_is() {
  local want="$1" count voters
  count="$(tc_field '{range .status.members[*]}{.name}{"\n"}{end}' | grep -c . || true)"
  voters="$(tc_field '{range .status.members[?(@.ready==true)]}{.role}{"\n"}{end}' |
    grep -cE '^(leader|follower)$' || true)"
  [ "${count}" = "${want}" ] && [ "${voters}" = "${want}" ] &&
    [ "$(tc_field '{.status.readyReplicas}')" = "${want}" ]
}

scale_to() {
  local n="$1"
  log "7. kubectl scale tc/${TC} --replicas=${n}"
  kt scale "tc/${TC}" --replicas="${n}"
  wait_until "${SCALE_TIMEOUT_S}" membership_is "${n}" ||
    die "membership did not reach ${n} ready voters: $(tc_field '{.status.members}')"
  log "members: $(tc_field '{range .status.members[*]}{.name}={.role} {end}')"
}

step7_scale() {
  scale_to 5
  verify_keys before
  scale_to 3
  verify_keys after-failover
  kt wait "tc/${TC}" --for=condition=Available --timeout="${AVAILABLE_TIMEOUT_S}s"
}

# The Titan pods' label selector, as the scale subresource publishes it.
titan_selector() {
  local selector
  selector="$(tc_field '{.status.selector}')"
  [ -n "${selector}" ] || die "status.selector is empty"
  printf '%s\n' "${selector}"
}

ready_titan_pods() {
  kt get pods -l "$1" \
    -o jsonpath='{range .items[*]}{.status.containerStatuses[0].ready}{"\n"}{end}' |
    grep -c '^true$' || true
}

all_pods_run_image() {
  local images
  images="$(kt get pods -l "$2" \
    -o jsonpath='{range .items[*]}{.spec.containers[0].image}{"\n"}{end}' | sort -u)"
  [ "${images}" = "$1" ] && membership_is 3
}

step8_rolling_update() {
  local target="${IMAGE_REPO}:${TAG_B}" quorum=2 ready n=0 selector
  selector="$(titan_selector)"
  log "8. rolling update to ${target}"
  kt patch "tc/${TC}" --type merge -p "{\"spec\":{\"image\":\"${target}\"}}"
  local deadline=$((SECONDS + ROLLOUT_TIMEOUT_S))
  until all_pods_run_image "${target}" "${selector}"; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "rolling update not done in ${ROLLOUT_TIMEOUT_S}s"
    ready="$(ready_titan_pods "${selector}")"
    [ "${ready}" -ge "${quorum}" ] || die "quorum lost during rollout: ${ready} ready pods"
    n=$((n + 1))
    titan_set "rollout-${n}" "during rollout" || die "write failed during the rolling update"
    sleep "${POLL_INTERVAL_S}"
  done
  log "rollout done; ${n} writes succeeded during it"
  verify_keys before
  verify_keys after-failover
}

snapshot_recorded() {
  [ "$(tc_field '{.status.lastSnapshot.requestToken}')" = "$1" ]
}

step9_snapshot() {
  local token="e2e-${RANDOM}${RANDOM}"
  log "9. requesting snapshot ${token}"
  kt annotate "tc/${TC}" "titan.dev/snapshot-request=${token}" --overwrite
  wait_until "${SNAPSHOT_TIMEOUT_S}" snapshot_recorded "${token}" ||
    die "status.lastSnapshot.requestToken never became ${token}"
  log "snapshot: $(tc_field '{.status.lastSnapshot}')"
}

main() {
  local tool
  for tool in docker kind kubectl helm; do
    command -v "${tool}" >/dev/null 2>&1 || die "${tool} is required"
  done
  trap on_exit EXIT
  step1_create_cluster
  step2_build_and_load
  step3_install
  step4_wait_available
  step5_write_read
  step6_kill_leader
  step7_scale
  step8_rolling_update
  step9_snapshot
  log "e2e passed"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
  main "$@"
fi
