#!/usr/bin/env bash
# End-to-end test of Titan on the real one-node Kubernetes 1.20 of
# scripts/ci/k8s-node.sh (no Docker, no registry): the same scenario as
# tests/e2e/kind.sh (whose steps it reuses), on real pods, with the image
# assembled by scripts/image.sh and a busybox tool image as the client.
#
#   scripts/ci/k8s-node.sh build && scripts/ci/k8s-node.sh start
#   cargo build --release --locked --bin titan-server --bin titan-operator --bin titanctl \
#     --example s3_test_server
#   tests/e2e/node.sh
#
# Phases: image import; helm install; 3-member TitanCluster with
# storage.fixPermissions (the host-path provisioner ignores fsGroup); wait
# Available; writes through the Service following ERR NOT_LEADER; from then on
# a second writer sends through the NAME-leader Service without following
# redirects and must never get ERR NOT_LEADER (connection errors while the
# label moves are allowed); delete the leader pod while both write; scale
# 3 -> 5 -> 3; rolling update; on-demand and scheduled snapshots in status;
# one member's PVC and pod deleted (it comes back under a new Raft identity,
# joining, no re-bootstrap); paused: true holds a scale-up until unpaused;
# after every phase every acknowledged write is read back from every member by
# its per-pod name; a TitanBackup into an S3 server on the node, then new
# clusters from spec.bootstrap.fromBackup (a damaged copy is refused; the
# backup itself serves every acknowledged write); then delete the
# TitanCluster and helm uninstall, and
# nothing of it is left. Finally a short run on the second storage setup
# (StorageClass world-writable: 0777 volumes, no fixPermissions): install,
# Available, writes, leader pod delete under load, per-member check, cleanup.
# Prints a timeline with each phase's duration at the end (and on failure).
#
# Env: ARTIFACTS_DIR (./e2e-artifacts), E2E_PHASES (all; or a space-separated
# subset of: rollout snapshot pvc-loss paused restore tls cleanup world-writable,
# run after the core phases); TITAN_S3_TEST_SERVER (the s3_test_server
# example binary, default next to the release binaries).
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
LEADER_WRITER_MAX_S=1800
LEADER_WRITER_LOG=""
LEADER_WRITER_PID=""
# The storage lines the TitanCluster gets (install); the second setup swaps them.
STORAGE_LINES='    fixPermissions: true'
# How long a paused cluster is watched for not acting on a replicas change.
PAUSE_HOLD_S=20
# How long a deleted cluster's pods may take to be torn down by the kubelet.
POD_TEARDOWN_TIMEOUT_S=180

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
  [ -n "${LEADER_WRITER_PID}" ] && kill "${LEADER_WRITER_PID}" 2>/dev/null
  [ -n "${S3_PID}" ] && kill "${S3_PID}" 2>/dev/null
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
    -e "s|^  storage:\$|  imagePullPolicy: IfNotPresent\n  storage:\n${STORAGE_LINES}|" \
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
  [ -n "${LEADER_WRITER_LOG}" ] && [ -f "${LEADER_WRITER_LOG}" ] &&
    sed -n 's/^OK //p' "${LEADER_WRITER_LOG}"
  [ -f "${ARTIFACTS_DIR}/.acked-extra" ] && cat "${ARTIFACTS_DIR}/.acked-extra"
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

# Writes through the NAME-leader Service, never following a redirect: one line
# per attempt, "OK key value", "CONNERR key" (no reply: no endpoint while the
# leader label moves, or the connection dropped) or "REPLY key <reply>".
leader_writer() {
  local n=0 reply deadline=$((SECONDS + LEADER_WRITER_MAX_S))
  while [ "${SECONDS}" -lt "${deadline}" ]; do
    n=$((n + 1))
    reply="$(nc_request "${TC}-leader:6001" "SET lw-${n} lw_${n}")" || reply=""
    case "${reply}" in
      OK) echo "OK lw-${n} lw_${n}" ;;
      "") echo "CONNERR lw-${n}" && sleep 1 ;;
      *) echo "REPLY lw-${n} ${reply}" ;;
    esac
  done
}

start_leader_writer() {
  LEADER_WRITER_LOG="${ARTIFACTS_DIR}/leader-writer.log"
  mkdir -p "${ARTIFACTS_DIR}"
  : >"${LEADER_WRITER_LOG}"
  leader_writer >>"${LEADER_WRITER_LOG}" &
  LEADER_WRITER_PID=$!
}

# No write through NAME-leader ever got ERR NOT_LEADER.
check_leader_writer() {
  local log="${LEADER_WRITER_LOG}" bad
  [ -n "${log}" ] || return 0
  bad="$(grep -c 'ERR NOT_LEADER' "${log}" || true)"
  [ "${bad}" = 0 ] || {
    grep 'ERR NOT_LEADER' "${log}" | head -5 >&2
    die "${bad} writes through ${TC}-leader got ERR NOT_LEADER"
  }
  log "leader Service writer: $(grep -c '^OK' "${log}" || true) acknowledged," \
    "$(grep -c '^CONNERR' "${log}" || true) connection errors," \
    "$(grep -c '^REPLY' "${log}" || true) other replies, 0 NOT_LEADER"
}

stop_leader_writer() {
  [ -n "${LEADER_WRITER_PID}" ] || return 0
  kill "${LEADER_WRITER_PID}" 2>/dev/null || true
  wait "${LEADER_WRITER_PID}" 2>/dev/null || true
  LEADER_WRITER_PID=""
  check_leader_writer
}

# The rolling update of kind.sh, with values the per-member check can read
# back: every write acknowledged during it is recorded.
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
    titan_set "rollout-${n}" "rollout_${n}" || die "write failed during the rolling update"
    echo "rollout-${n} rollout_${n}" >>"${ARTIFACTS_DIR}/.acked-extra"
    sleep "${POLL_INTERVAL_S}"
  done
  log "rollout done; ${n} writes succeeded during it"
  verify_keys before
  verify_keys after-failover
}

snapshot_time_moved() {
  local now
  now="$(tc_field '{.status.lastSnapshot.time}')"
  [ -n "${now}" ] && [ "${now}" != "$1" ]
}

# spec.snapshot.intervalSeconds: a scheduled round shows in status (a new
# lastSnapshot.time, the request token untouched), then the schedule goes back.
scheduled_snapshot_phase() {
  local before token
  before="$(tc_field '{.status.lastSnapshot.time}')"
  token="$(tc_field '{.status.lastSnapshot.requestToken}')"
  kt patch "tc/${TC}" --type merge -p '{"spec":{"snapshot":{"intervalSeconds":5}}}'
  wait_until "${SNAPSHOT_TIMEOUT_S}" snapshot_time_moved "${before}" ||
    die "no scheduled snapshot in status within ${SNAPSHOT_TIMEOUT_S}s (lastSnapshot.time still ${before})"
  [ "$(tc_field '{.status.lastSnapshot.requestToken}')" = "${token}" ] ||
    die "a scheduled snapshot changed the request token"
  kt patch "tc/${TC}" --type merge -p '{"spec":{"snapshot":{"intervalSeconds":600}}}'
  log "scheduled snapshot: $(tc_field '{.status.lastSnapshot}')"
}

pvc_uid() { kt get pvc "$1" -o jsonpath='{.metadata.uid}' 2>/dev/null || true; }

member_id_of() { tc_field "{.status.members[?(@.name==\"$1\")].id}"; }

member_replaced() {
  local id
  id="$(member_id_of "$1")"
  [ -n "${id}" ] && [ "${id}" != "$2" ] && membership_is 3
}

# Deletes one follower's PVC and pod: the pod comes back on a new, empty
# volume, joins under a new Raft identity (the operator removes the old one)
# and the cluster never bootstraps again.
pvc_loss_phase() {
  local leader victim old_id old_uid cluster_id deadline
  leader="$(tc_field '{.status.leader}')"
  victim="$(tc_field '{range .status.members[*]}{.name}{"\n"}{end}' | grep -vx "${leader}" | sort | tail -1)"
  old_id="$(member_id_of "${victim}")"
  old_uid="$(pvc_uid "data-${victim}")"
  cluster_id="$(kt get configmap "${TC}-config" -o 'jsonpath={.data.cluster-id}')"
  if [ -z "${victim}" ] || [ -z "${old_id}" ] || [ -z "${old_uid}" ]; then
    die "no follower to replace"
  fi
  log "deleting PVC data-${victim} and pod ${victim} (member id ${old_id})"
  kt delete pvc "data-${victim}" --wait=false
  # The claim goes once no scheduled pod uses it; a pod the StatefulSet made
  # meanwhile still names the old claim, so it is deleted until the claim is gone.
  deadline=$((SECONDS + SCALE_TIMEOUT_S))
  while [ "$(pvc_uid "data-${victim}")" = "${old_uid}" ]; do
    [ "${SECONDS}" -lt "${deadline}" ] || die "PVC data-${victim} was never deleted"
    kt delete pod "${victim}" --ignore-not-found --wait=true --timeout=60s >/dev/null
    sleep "${POLL_INTERVAL_S}"
  done
  kt delete pod "${victim}" --ignore-not-found --wait=true --timeout=60s >/dev/null
  wait_until "${SCALE_TIMEOUT_S}" member_replaced "${victim}" "${old_id}" ||
    die "${victim} did not come back as a new member: $(tc_field '{.status.members}')"
  [ "$(kt get configmap "${TC}-config" -o 'jsonpath={.data.cluster-id}')" = "${cluster_id}" ] ||
    die "the cluster id changed"
  if kt logs "${victim}" -c titan | grep -q 'bootstrapping a new cluster'; then
    die "${victim} bootstrapped a new cluster on its empty volume"
  fi
  log "${victim}: member id ${old_id} -> $(member_id_of "${victim}"), new PVC, joined, no re-bootstrap"
}

pvc_count_is() { [ "$(kt get pvc -o name | grep -c "/data-${TC}-" || true)" = "$1" ]; }

# scale_to, then also until the removed members' PVCs are deleted (the last
# step of a scale-down, after membership already shows the new size).
scale_and_settle() {
  scale_to "$1"
  wait_until "${SCALE_TIMEOUT_S}" pvc_count_is "$1" ||
    die "expected $1 data PVCs after scaling, found: $(kt get pvc -o name | tr '\n' ' ')"
}

phase_is() { [ "$(tc_field '{.status.phase}')" = "$1" ]; }

# paused: true: a replicas change is not acted on (no StatefulSet change, no
# new pod) until unpaused; then the cluster scales and comes back to 3.
paused_phase() {
  kt patch "tc/${TC}" --type merge -p '{"spec":{"paused":true}}'
  wait_until 60 phase_is Paused || die "phase never became Paused"
  kt scale "tc/${TC}" --replicas=5
  sleep "${PAUSE_HOLD_S}"
  [ "$(kt get statefulset "${TC}" -o 'jsonpath={.spec.replicas}')" = 3 ] ||
    die "a paused cluster changed its StatefulSet"
  ! kt get pod "${TC}-3" >/dev/null 2>&1 || die "a paused cluster started pod ${TC}-3"
  log "paused for ${PAUSE_HOLD_S}s: replicas 5 not acted on (StatefulSet 3, no ${TC}-3)"
  kt patch "tc/${TC}" --type merge -p '{"spec":{"paused":false}}'
  wait_until "${SCALE_TIMEOUT_S}" membership_is 5 ||
    die "unpaused cluster did not reach 5 members: $(tc_field '{.status.members}')"
  log "unpaused: 5 members"
  scale_and_settle 3
  kt get tc "${TC}" -o wide >&2
}

# Backup and restore on real pods: an S3-compatible server on the node's
# address (s3s-fs over a directory, operator/examples/s3_test_server.rs), a
# TitanBackupSchedule whose first run backs the cluster up into it, then two
# new clusters with
# spec.bootstrap.fromBackup: one on a damaged copy (Degraded, BackupCorrupt,
# no StatefulSet), one on the backup itself, which must serve every write
# acknowledged before the backup from every member.
S3_ADDR="${TITAN_NODE_IP:-10.88.0.1}:19000"
S3_BUCKET="e2e"
S3_PID=""
RESTORED_TC="titan-restored"
DAMAGED_TC="titan-damaged"

start_s3() {
  local server="${TITAN_S3_TEST_SERVER:-${TITAN_RELEASE_DIR:-${E2E_ROOT}/target/release}/examples/s3_test_server}"
  [ -x "${server}" ] || die "no ${server}: cargo build --example s3_test_server -p titan-operator"
  mkdir -p "${ARTIFACTS_DIR}/s3"
  "${server}" "${S3_ADDR}" "${ARTIFACTS_DIR}/s3" e2e-ak e2e-sk "${S3_BUCKET}" \
    >"${ARTIFACTS_DIR}/s3.log" 2>&1 &
  S3_PID=$!
  wait_until 30 grep -q listening "${ARTIFACTS_DIR}/s3.log" || die "S3 test server did not start"
}

stop_s3() {
  [ -n "${S3_PID}" ] || return 0
  kill "${S3_PID}" 2>/dev/null || true
  wait "${S3_PID}" 2>/dev/null || true
  S3_PID=""
}

BACKUP=""
no_backups_left() { [ -z "$(kt get tbk -o name 2>/dev/null)" ]; }
scheduled_backup_exists() { [ -n "$(kt get tbk -l titan.dev/backup-schedule=e2e-schedule -o name 2>/dev/null)" ]; }
backup_field() { kt get tbk "${BACKUP}" -o "jsonpath=$1" 2>/dev/null || true; }
backup_completed() { [ "$(backup_field '{.status.phase}')" = Completed ]; }

# Whether no pod of TitanCluster $1 is left (running or terminating).
instance_pods_gone() { [ -z "$(kt get pods -l app.kubernetes.io/instance="$1" -o name)" ]; }

# Deletes TitanCluster $1 and then its retained data PVCs. The kubelet may
# take a while to tear a stopped pod down (its volumes stay in use until
# then), so the PVCs are deleted once the pods are gone.
delete_cluster_and_volumes() {
  kt delete tc "$1" --wait=true --timeout=120s
  wait_until "${POD_TEARDOWN_TIMEOUT_S}" instance_pods_gone "$1" ||
    die "pods of $1 left after its deletion: $(kt get pods -l app.kubernetes.io/instance="$1" -o wide)"
  kt delete pvc -l app.kubernetes.io/instance="$1" --wait=true --timeout=120s
}

# A TitanCluster named $1 restored from object $2 (checksum $3, or none).
# A 3-member TitanCluster $1 of the e2e image on the current storage, with
# the spec lines $2 (indented two spaces) added.
apply_tc() {
  kt apply -f - <<YAML
apiVersion: titan.dev/v1alpha1
kind: TitanCluster
metadata:
  name: $1
spec:
  replicas: 3
  image: ${IMAGE_REPO}:${TAG_A}
  imagePullPolicy: IfNotPresent
  storage:
    size: 1Gi
${STORAGE_LINES}
$2
YAML
}

apply_restored_cluster() {
  local name="$1" key="$2" sha="$3"
  apply_tc "${name}" "  bootstrap:
    fromBackup:
      s3:
        bucket: ${S3_BUCKET}
        key: ${key}
        endpoint: http://${S3_ADDR}
        allowHttp: true
        credentialsSecret: s3-creds
${sha:+      sha256: ${sha}}"
}

degraded_reason_is() {
  [ "$(kt get tc "$1" -o 'jsonpath={.status.conditions[?(@.type=="Degraded")].reason}' 2>/dev/null)" = "$2" ]
}

restored_pvcs_gone() { [ -z "$(kt get pvc -l app.kubernetes.io/instance="${RESTORED_TC}" -o name)" ]; }

restore_phase() {
  local key sha object
  stop_leader_writer # every acknowledged write then precedes the backup
  start_s3
  kt create secret generic s3-creds --from-literal=AWS_ACCESS_KEY_ID=e2e-ak \
    --from-literal=AWS_SECRET_ACCESS_KEY=e2e-sk --dry-run=client -o yaml | kt apply -f -
  # The backup comes from a schedule: its first run is created at once.
  kt apply -f - <<YAML
apiVersion: titan.dev/v1alpha1
kind: TitanBackupSchedule
metadata:
  name: e2e-schedule
spec:
  intervalSeconds: 3600
  template:
    cluster: ${TC}
    destination:
      s3:
        bucket: ${S3_BUCKET}
        prefix: e2e
        endpoint: http://${S3_ADDR}
        allowHttp: true
        credentialsSecret: s3-creds
YAML
  wait_until 60 scheduled_backup_exists || die "the schedule created no TitanBackup: $(kt get tbs e2e-schedule -o 'jsonpath={.status}')"
  BACKUP="$(kt get tbs e2e-schedule -o 'jsonpath={.status.lastBackup}')"
  wait_until 120 backup_completed ||
    die "backup ${BACKUP} not Completed: $(backup_field '{.status}')"
  key="$(backup_field '{.status.objectKey}')"
  sha="$(backup_field '{.status.sha256}')"
  log "backup ${key}: $(backup_field '{.status.sizeBytes}') bytes, sha256 ${sha}"

  object="${ARTIFACTS_DIR}/s3/${S3_BUCKET}/${key}"
  cp "${object}" "${object}.damaged"
  printf '\377' | dd of="${object}.damaged" bs=1 seek=100 conv=notrunc status=none
  apply_restored_cluster "${DAMAGED_TC}" "${key}.damaged" ""
  wait_until 90 degraded_reason_is "${DAMAGED_TC}" BackupCorrupt ||
    die "${DAMAGED_TC}: $(kt get tc "${DAMAGED_TC}" -o 'jsonpath={.status}')"
  [ -z "$(kt get sts "${DAMAGED_TC}" --ignore-not-found -o name)" ] ||
    die "a damaged backup got a StatefulSet"
  log "${DAMAGED_TC}: Degraded/BackupCorrupt, no StatefulSet, no pod"
  kt delete tc "${DAMAGED_TC}" --wait=true --timeout=60s

  apply_restored_cluster "${RESTORED_TC}" "${key}" "${sha}"
  kt wait "tc/${RESTORED_TC}" --for=condition=Available --timeout="${AVAILABLE_TIMEOUT_S}s" ||
    die "restored cluster not Available: $(kt get tc "${RESTORED_TC}" -o 'jsonpath={.status}')"
  kt logs "${RESTORED_TC}-0" -c restore-backup | grep -q '^fetched ' ||
    die "${RESTORED_TC}-0 did not fetch the backup"
  TC="${RESTORED_TC}" verify_everywhere
  delete_cluster_and_volumes "${RESTORED_TC}"
  wait_until 60 restored_pvcs_gone || die "restored cluster's PVCs left"
  # The schedule's TitanBackups go with it (owner references).
  kt delete tbs e2e-schedule --wait=true
  wait_until 60 no_backups_left || die "TitanBackups left: $(kt get tbk -o name)"
  kt delete secret s3-creds
  stop_s3
}

# spec.tls: a cluster whose certificates the operator issues. Available
# means its members formed over mutual TLS and the operator reached every
# Admin API with its own client certificate.
TLS_TC="titan-tls"
TLS_KEYS=10
TLS_DIR=/etc/titan/tls
# A member rotates a renewed certificate within the kubelet's Secret sync plus
# the server's 10 s file poll.
TLS_ROTATION_TIMEOUT_S=240

# titanctl in member 0 of the TLS cluster, trusting the mounted cluster CA.
tls_ctl() { kt exec "${TLS_TC}-0" -c titan -- titanctl --timeout-ms 5000 "$@"; }
tls_member() { echo "${TLS_TC}-$1.${TLS_TC}-peers:$2"; }

# The count of successful peer-certificate reloads member $1 reports.
tls_reloads() {
  kt exec "${CLIENT_POD}" -- wget -qO- "http://$(tls_member "$1" 8080)/metrics" 2>/dev/null |
    sed -n 's/^titan_tls_reloads_total{port="peer",outcome="ok"} \([0-9]*\).*/\1/p'
}
tls_reloaded() { [ "$(tls_reloads 1)" -gt "$1" ] 2>/dev/null; }
tls_secret_has() { [ -n "$(kt get secret "${TLS_TC}-tls" -o "jsonpath={.data.$1}" 2>/dev/null)" ]; }

# Whether the TLS StatefulSet's template passes --client-tls-ca.
tls_template_requires_client_certs() {
  kt get sts "${TLS_TC}" -o 'jsonpath={.spec.template.spec.containers[0].command[2]}' |
    grep -q -- '--client-tls-ca'
}

# Whether all three TLS pods run the StatefulSet's update revision and are Ready.
tls_pods_updated() {
  local rev pods
  rev="$(kt get sts "${TLS_TC}" -o 'jsonpath={.status.updateRevision}')"
  pods="$(kt get pods -l app.kubernetes.io/instance="${TLS_TC}" -o \
    'jsonpath={range .items[*]}{.metadata.labels.controller-revision-hash} {.status.conditions[?(@.type=="Ready")].status}{"\n"}{end}')"
  [ -n "${rev}" ] && [ "$(grep -c "^${rev} True$" <<<"${pods}")" -eq 3 ]
}

# spec.tls.clientAuth and a client certificate for an application, switched
# on for the running cluster: the operator issues the Secret, the pods roll,
# then the gRPC port refuses a client without a certificate and serves the
# issued one (from this host, to a pod IP, verified as the pod's DNS name).
tls_client_auth() {
  local ctl="${TITAN_RELEASE_DIR:-${E2E_ROOT}/target/release}/titanctl" f ip reply
  local secret="${TLS_TC}-client-e2e-app" dir="${ARTIFACTS_DIR}/client-e2e-app"
  kt patch tc "${TLS_TC}" --type=merge \
    -p '{"spec":{"tls":{"clientAuth":true,"clientCertificates":["e2e-app"]}}}' >/dev/null
  wait_until 60 tls_template_requires_client_certs ||
    die "the StatefulSet does not pass --client-tls-ca after clientAuth was set"
  wait_until "${ROLLOUT_TIMEOUT_S}" tls_pods_updated ||
    die "the TLS pods did not roll for clientAuth: $(kt get pods -l app.kubernetes.io/instance="${TLS_TC}" -o wide)"
  kt wait "tc/${TLS_TC}" --for=condition=Available --timeout=120s >/dev/null ||
    die "TLS cluster not Available after switching clientAuth on"
  mkdir -p "${dir}"
  for f in ca.crt tls.crt tls.key; do
    kt get secret "${secret}" -o "jsonpath={.data.${f//./\\.}}" | base64 -d >"${dir}/${f}" ||
      die "Secret ${secret} has no ${f}"
  done
  tls_ctl --endpoints "$(tls_member 1 7001)" --cacert "${TLS_DIR}/ca.crt" get tls-1 >/dev/null 2>&1 &&
    die "a client without a certificate was served under clientAuth"
  ip="$(kt get pod "${TLS_TC}-1" -o 'jsonpath={.status.podIP}')"
  reply="$("${ctl}" --timeout-ms 5000 --endpoints "${ip}:7001" --tls-server-name "${TLS_TC}-1.${TLS_TC}-peers" \
    --cacert "${dir}/ca.crt" --cert "${dir}/tls.crt" --key "${dir}/tls.key" get tls-1 2>&1)" ||
    die "the issued client certificate was refused: ${reply}"
  [ "${reply}" = "v1" ] || die "tls-1 read with the issued certificate is '${reply}', want v1"
  log "clientAuth on a running cluster: pods rolled, a client without a certificate refused, CN=e2e-app served"
}

tls_phase() {
  local i m reply before
  apply_tc "${TLS_TC}" "  tls:
    enabled: true"
  kt wait "tc/${TLS_TC}" --for=condition=Available --timeout="${AVAILABLE_TIMEOUT_S}s" ||
    die "TLS cluster not Available: $(kt get tc "${TLS_TC}" -o 'jsonpath={.status}')"
  [ "$(kt get secret "${TLS_TC}-ca" -o 'jsonpath={.type}')" = kubernetes.io/tls ] ||
    die "no CA Secret ${TLS_TC}-ca"
  for i in $(seq 1 "${TLS_KEYS}"); do
    tls_ctl --endpoints "${TLS_TC}:7001" --cacert "${TLS_DIR}/ca.crt" set "tls-${i}" "v${i}" >/dev/null ||
      die "set tls-${i} over TLS failed"
  done
  for m in 0 1 2; do
    for i in $(seq 1 "${TLS_KEYS}"); do
      reply="$(tls_ctl --endpoints "$(tls_member "${m}" 7001)" --cacert "${TLS_DIR}/ca.crt" get "tls-${i}" 2>&1)" ||
        die "get tls-${i} from member ${m} over TLS: ${reply}"
      [ "${reply}" = "v${i}" ] || die "member ${m}: tls-${i} is '${reply}', want v${i}"
    done
  done
  log "${TLS_KEYS} writes over TLS, read back from each member verified by the cluster CA"
  # Refusals: plaintext gRPC, an Admin call without a client certificate,
  # and the plaintext TCP port from outside the pod.
  tls_ctl --endpoints "$(tls_member 1 7001)" get tls-1 >/dev/null 2>&1 &&
    die "a plaintext gRPC read was served"
  tls_ctl --admin-endpoints "$(tls_member 1 5001)" --cacert "${TLS_DIR}/ca.crt" status >/dev/null 2>&1 &&
    die "an Admin call without a client certificate was served"
  tls_ctl --admin-endpoints "$(tls_member 1 5001)" --cacert "${TLS_DIR}/ca.crt" \
    --cert "${TLS_DIR}/${TLS_TC}-0.crt" --key "${TLS_DIR}/${TLS_TC}-0.key" status >/dev/null ||
    die "an Admin call with a member certificate was refused"
  # A member's certificate is not the admin identity: it may read Status
  # but not change the cluster (--admin-allowed-cn titan-operator).
  reply="$(tls_ctl --admin-endpoints "$(tls_member 1 5001)" --cacert "${TLS_DIR}/ca.crt" \
    --cert "${TLS_DIR}/${TLS_TC}-0.crt" --key "${TLS_DIR}/${TLS_TC}-0.key" snapshot 2>&1)" &&
    die "a snapshot was taken with a member certificate: ${reply}"
  case "${reply}" in
    *"CN=${TLS_TC}-0"*) ;;
    *) die "a member certificate's TakeSnapshot failed for another reason: ${reply}" ;;
  esac
  [ -z "$(nc_request "$(tls_member 0 6001)" "GET tls-1")" ] ||
    die "the plaintext TCP port answered from outside the pod"
  log "refused: plaintext gRPC, Admin without a client certificate, a member certificate's TakeSnapshot, TCP from outside the pod"
  # Rotation: member 1's certificate goes missing from the Secret; the
  # operator issues a new one and the running member picks it up.
  # (no series until the first reload)
  before="$(tls_reloads 1)"
  before="${before:-0}"
  kt patch secret "${TLS_TC}-tls" --type=json \
    -p "[{\"op\":\"remove\",\"path\":\"/data/${TLS_TC}-1.crt\"}]" >/dev/null
  kt annotate tc "${TLS_TC}" --overwrite "e2e.titan.dev/poke=$(date +%s)" >/dev/null
  wait_until 60 tls_secret_has "${TLS_TC}-1\\.crt" || die "the operator did not re-issue ${TLS_TC}-1.crt"
  wait_until "${TLS_ROTATION_TIMEOUT_S}" tls_reloaded "${before}" ||
    die "member 1 did not reload its new certificate (reloads: $(tls_reloads 1))"
  tls_ctl --endpoints "$(tls_member 1 7001)" --cacert "${TLS_DIR}/ca.crt" get tls-1 >/dev/null ||
    die "member 1 does not serve TLS after its certificate was renewed"
  kt wait "tc/${TLS_TC}" --for=condition=Available --timeout=60s >/dev/null ||
    die "TLS cluster not Available after the renewal"
  log "member 1 reloaded its re-issued certificate without a restart and serves"
  tls_client_auth
  delete_cluster_and_volumes "${TLS_TC}"
}

# The second storage setup: static host-path PVs in 0777 directories (like
# kind's local-path), no fixPermissions; a short scenario on fresh state.
world_writable_phase() {
  rm -f "${ARTIFACTS_DIR}"/.wrote-* "${ARTIFACTS_DIR}/.acked-extra"
  WRITER_LOG=""
  LEADER_WRITER_LOG=""
  STORAGE_LINES='    storageClassName: world-writable'
  "${NODE}" world-writable-pvs 3
  install
  step4_wait_available
  [ -z "$(kt get pod "${TC}-0" -o 'jsonpath={.spec.initContainers}')" ] ||
    die "fixPermissions is off, yet the pods have an init container"
  step5_write_read
  start_writer
  start_leader_writer
  step6_kill_leader
  stop_writer
  stop_leader_writer
  verify_everywhere
  cleanup_phase
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
  # Static PVs: the host-path deleter removes their /tmp directories; the
  # objects go with them (deleted here when the deleter is slower).
  k get pv -o name | grep '/world-writable-' | xargs -r "${NODE_KUBECTL}" delete --wait=false >/dev/null 2>&1 || true
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
  start_leader_writer
  phase "delete the leader pod under load" && step6_kill_leader && verify_everywhere
  check_leader_writer
  phase "scale 3 -> 5 under load" && scale_and_settle 5 && verify_everywhere
  phase "scale 5 -> 3 under load" && scale_and_settle 3 && stop_writer && verify_everywhere
  check_leader_writer
  local extra
  for extra in ${E2E_PHASES:-rollout snapshot pvc-loss paused restore tls cleanup world-writable}; do
    case "${extra}" in
      rollout)
        phase "rolling update to ${TAG_B}" && step8_rolling_update && verify_everywhere
        check_leader_writer
        ;;
      snapshot)
        phase "on-demand snapshot in status" && step9_snapshot
        phase "scheduled snapshot in status" && scheduled_snapshot_phase
        ;;
      pvc-loss)
        phase "delete a member's PVC + pod: new identity" && pvc_loss_phase && verify_everywhere
        check_leader_writer
        ;;
      paused)
        phase "paused holds replicas 5; unpause; back to 3" && paused_phase && verify_everywhere
        check_leader_writer
        ;;
      restore)
        phase "backup to S3, restore into new clusters" && restore_phase
        ;;
      tls)
        phase "spec.tls: mTLS cluster, refusals, certificate renewal" && tls_phase
        ;;
      cleanup)
        stop_leader_writer
        phase "delete tc + helm uninstall leaves nothing" && cleanup_phase
        ;;
      world-writable)
        phase "world-writable volumes: install .. leader delete" && world_writable_phase
        ;;
      *) die "unknown phase ${extra}" ;;
    esac
  done
  phase_done
  log "e2e on the real node passed"
}

node_main "$@"
