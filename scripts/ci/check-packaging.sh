#!/usr/bin/env bash
# Checks everything about packaging that can be checked without a Docker engine:
#
#   1. shellcheck on every shell script in the repo (*.sh and .ci/run);
#   2. hadolint on the Dockerfile (when hadolint is available);
#   3. one version everywhere: Cargo workspace = Chart appVersion = Dockerfile VERSION;
#      scripts/image.sh (the image without Docker) has the Dockerfile's config;
#   4. `helm lint --strict` is clean (no warnings) and `helm template` renders,
#      with default values and with every optional object switched on;
#   5. generated files equal what they are generated from:
#        manifests/crd.yaml                  = `titan-operator crd`
#        charts/titan-operator/crds/*.yaml   = manifests/crd.yaml
#        charts/titan-operator/files/rbac.yaml = manifests/rbac.yaml (the operator's RBAC source)
#        manifests/operator.yaml             = the chart rendered with default values
#   6. when KUBEBUILDER_ASSETS names a kube-apiserver + etcd (see
#      scripts/ci/kube-apiserver.sh), the rendered manifests pass
#      `kubectl apply --dry-run=server` against a real API server.
#
# Usage: scripts/ci/check-packaging.sh            # check, exit 1 on any failure
#        scripts/ci/check-packaging.sh --update   # regenerate the generated files
# Env:   TITAN_SKIP_CARGO=1  skip the step that runs `cargo run -p titan-operator -- crd`
#        KUBEBUILDER_ASSETS  directory with kube-apiserver and etcd for step 6
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
CHART_DIR="${ROOT}/charts/titan-operator"
CRD_FILE="${ROOT}/manifests/crd.yaml"
CHART_CRD_FILE="${CHART_DIR}/crds/titanclusters.titan.dev.yaml"
CHART_RBAC_FILE="${CHART_DIR}/files/rbac.yaml"
OPERATOR_MANIFEST="${ROOT}/manifests/operator.yaml"
EXAMPLE_CLUSTER="${ROOT}/manifests/examples/titancluster.yaml"
# The operator's single source of truth for its RBAC rules.
OPERATOR_RBAC_SOURCE="${ROOT}/manifests/rbac.yaml"
# Release name and namespace that manifests/operator.yaml is rendered with.
RELEASE_NAME="titan-operator"
RELEASE_NAMESPACE="titan-system"
# Seconds to wait for the throwaway kube-apiserver to report ready.
APISERVER_READY_TIMEOUT_S=60

PASSED=0
FAILED=0
SKIPPED=0
FAILED_STEPS=()
WORK="$(mktemp -d)"
APISERVER_PIDS=()

log() { printf '%s\n' "$*" >&2; }

cleanup() {
  local pid
  for pid in "${APISERVER_PIDS[@]}"; do
    kill "${pid}" 2>/dev/null || true
    wait "${pid}" 2>/dev/null || true
  done
  rm -rf "${WORK}"
}
trap cleanup EXIT

# Runs one named check, records pass/fail, and keeps going so that one run
# reports every problem.
step() {
  local name="$1"
  shift
  log "--- ${name}"
  if "$@"; then
    PASSED=$((PASSED + 1))
    log "ok: ${name}"
  else
    FAILED=$((FAILED + 1))
    FAILED_STEPS+=("${name}")
    log "FAILED: ${name}"
  fi
}

skip() {
  SKIPPED=$((SKIPPED + 1))
  log "--- skipped: $*"
}

# Fails with a unified diff and the fix when a generated file is stale.
same_as_generated() {
  local committed="$1" generated="$2" how="$3"
  if [ ! -f "${committed}" ]; then
    log "${committed#"${ROOT}"/} is missing; it is generated from ${how}."
    log "Run: scripts/ci/check-packaging.sh --update"
    return 1
  fi
  if ! diff -u "${committed}" "${generated}" >"${WORK}/diff.txt"; then
    head -n 80 "${WORK}/diff.txt" >&2
    log "${committed#"${ROOT}"/} differs from what ${how} generates (diff above)."
    log "Run: scripts/ci/check-packaging.sh --update, review and commit the result."
    return 1
  fi
}

# ---------------------------------------------------------------- generators

render_operator_manifest() {
  cat <<EOF
# GENERATED FILE, do not edit: charts/titan-operator rendered with default values
# (release "${RELEASE_NAME}", namespace "${RELEASE_NAMESPACE}") by
# scripts/ci/check-packaging.sh --update. Install with:
#   kubectl apply --server-side -f manifests/crd.yaml -f manifests/operator.yaml
---
apiVersion: v1
kind: Namespace
metadata:
  name: ${RELEASE_NAMESPACE}
  labels:
    app.kubernetes.io/part-of: titan
    pod-security.kubernetes.io/enforce: baseline
    pod-security.kubernetes.io/warn: restricted
EOF
  helm template "${RELEASE_NAME}" "${CHART_DIR}" --namespace "${RELEASE_NAMESPACE}"
}

generate_crd() {
  (cd "${ROOT}" && cargo run --quiet --locked -p titan-operator -- crd)
}

update_generated() {
  if [ "${TITAN_SKIP_CARGO:-0}" != 1 ]; then
    generate_crd >"${CRD_FILE}"
  fi
  cp "${CRD_FILE}" "${CHART_CRD_FILE}"
  cp "${OPERATOR_RBAC_SOURCE}" "${CHART_RBAC_FILE}"
  render_operator_manifest >"${OPERATOR_MANIFEST}"
  log "regenerated: manifests/crd.yaml, chart crds/, chart files/rbac.yaml, manifests/operator.yaml"
}

# -------------------------------------------------------------------- checks

list_shell_scripts() {
  (cd "${ROOT}" && git ls-files --cached --others --exclude-standard -- '*.sh' '.ci/run' |
    sort -u | while read -r f; do [ -f "${f}" ] && printf '%s\n' "${f}"; done)
}

check_shellcheck() {
  local scripts
  mapfile -t scripts < <(list_shell_scripts)
  log "shellcheck: ${#scripts[@]} scripts"
  [ "${#scripts[@]}" -gt 0 ] || return 0
  (cd "${ROOT}" && shellcheck --external-sources "${scripts[@]}")
}

check_hadolint() {
  hadolint "${ROOT}/Dockerfile"
}

workspace_version() {
  sed -n '/^\[workspace.package\]/,/^\[/s/^version *= *"\([^"]*\)".*/\1/p' "${ROOT}/Cargo.toml"
}

check_versions() {
  local crate chart docker
  crate="$(workspace_version)"
  chart="$(sed -n 's/^appVersion: *"\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' "${CHART_DIR}/Chart.yaml")"
  docker="$(sed -n 's/^ARG VERSION=\(.*\)$/\1/p' "${ROOT}/Dockerfile")"
  log "crate ${crate}, chart appVersion ${chart}, Dockerfile VERSION ${docker}"
  if [ -z "${crate}" ] || [ "${crate}" != "${chart}" ] || [ "${crate}" != "${docker}" ]; then
    log "versions differ: set Chart.yaml appVersion and the Dockerfile's ARG VERSION to ${crate}"
    return 1
  fi
  grep -q "image: ghcr.io/titan-dev/titan:${crate}\$" "${EXAMPLE_CLUSTER}" || {
    log "manifests/examples/titancluster.yaml must use image tag ${crate}"
    return 1
  }
}

# scripts/image.sh builds the image without Docker: its runtime config must be
# the one the Dockerfile describes (entrypoint, user, working dir, ports,
# labels with the version substituted, and the data dir's owner and mode).
dockerfile_config() {
  local df="${WORK}/runtime-stage" version
  version="$(workspace_version)"
  # Only the last stage describes the image.
  tac "${ROOT}/Dockerfile" | sed '/^FROM /q' | tac >"${df}"
  local labels
  labels="$(sed -n '/^LABEL /,/[^\\]$/p' "${df}" | grep -o '[a-z.]*="[^"]*"' |
    sed "s/\${VERSION}/${version}/" |
    jq -R 'capture("(?<k>[^=]*)=\"(?<v>.*)\"") | {(.k): .v}' | jq -s 'add')"
  jq -n --argjson entry "$(sed -n 's/^ENTRYPOINT //p' "${df}")" \
    --arg user "$(sed -n 's/^USER //p' "${df}")" \
    --arg dir "$(sed -n 's/^WORKDIR //p' "${df}")" \
    --arg ports "$(sed -n 's/^EXPOSE //p' "${df}")" --argjson labels "${labels}" '{
      User: $user, WorkingDir: $dir, Entrypoint: $entry, Labels: $labels,
      ExposedPorts: ($ports | split(" ") | map({("\(.)/tcp"): {}}) | add)}'
}

check_image_matches_dockerfile() {
  local want got
  want="$(dockerfile_config | jq -S .)"
  got="$("${ROOT}/scripts/image.sh" --config | jq -S 'del(.Env)')"
  if [ "${want}" != "${got}" ]; then
    log "scripts/image.sh --config differs from the Dockerfile:"
    diff <(echo "${want}") <(echo "${got}") >&2 || true
    return 1
  fi
  # The data dir: created 0750 and owned by the image user in both.
  local user="${want#*\"User\": \"}"
  user="${user%%:*}"
  if ! grep -q "install -d -o ${user} -g ${user} -m 0750 /var/lib/titan" "${ROOT}/Dockerfile" ||
    ! grep -q "^UID_GID=${user}\$" "${ROOT}/scripts/image.sh" ||
    ! grep -qF "chmod 0750 \"\${rootfs}\${DATA_DIR}\"" "${ROOT}/scripts/image.sh"; then
    log "the data dir's owner (${user}) or mode (0750) differs between Dockerfile and scripts/image.sh"
    return 1
  fi
}

# Every optional object switched on, so lint/template cover all templates.
ALL_ON=(--set cluster.create=true --set metrics.serviceMonitor.enabled=true
  --set replicaCount=2 --set cluster.storage.storageClassName=standard)

check_helm_lint() {
  local args out
  for args in "" "${ALL_ON[*]}"; do
    # shellcheck disable=SC2086 # args is a list of --set flags, split on purpose.
    out="$(helm lint --strict "${CHART_DIR}" ${args} 2>&1)" || {
      log "${out}"
      return 1
    }
    log "${out}"
    if grep -qE '\[(WARNING|ERROR)\]' <<<"${out}"; then
      log "helm lint reported warnings"
      return 1
    fi
  done
}

check_helm_template() {
  helm template "${RELEASE_NAME}" "${CHART_DIR}" --namespace "${RELEASE_NAMESPACE}" \
    >"${WORK}/default.yaml" || return 1
  helm template "${RELEASE_NAME}" "${CHART_DIR}" --namespace "${RELEASE_NAMESPACE}" \
    --include-crds "${ALL_ON[@]}" >"${WORK}/all-on.yaml" || return 1
  local kinds
  kinds="$(grep -E '^kind: ' "${WORK}/all-on.yaml" | sort | uniq -c | tr -s ' ' | paste -sd, -)"
  log "rendered (all on):${kinds}"
  local kind
  for kind in CustomResourceDefinition ServiceAccount ClusterRole ClusterRoleBinding Role \
    RoleBinding Deployment Service ServiceMonitor TitanCluster; do
    grep -qx "kind: ${kind}" "${WORK}/all-on.yaml" || {
      log "helm template did not render a ${kind}"
      return 1
    }
  done
  check_helm_rejects "cluster.replicas=10" --set cluster.replicas=10 || return 1
  check_helm_rejects "an unknown value" --set clusterr.create=true || return 1
  check_helm_rejects "renewal slower than the lease" \
    --set leaderElection.renewIntervalMilliseconds=20000 || return 1
  check_helm_rejects "serviceAccount.create=false without a name" \
    --set serviceAccount.create=false || return 1
  # An existing ServiceAccount: none rendered, the pods and bindings use it.
  helm template x "${CHART_DIR}" --set serviceAccount.create=false \
    --set serviceAccount.name=existing >"${WORK}/existing-sa.yaml" || return 1
  if grep -qx 'kind: ServiceAccount' "${WORK}/existing-sa.yaml" ||
    [ "$(grep -cE '^ *(serviceAccountName|name): existing$' "${WORK}/existing-sa.yaml")" -ne 3 ]; then
    log "serviceAccount.name=existing is not used by the Deployment and both bindings"
    return 1
  fi
}

# Fails unless `helm template` refuses the given values.
check_helm_rejects() {
  local what="$1"
  shift
  if helm template x "${CHART_DIR}" "$@" >/dev/null 2>&1; then
    log "the chart accepted ${what}"
    return 1
  fi
}

check_crd_generated() {
  generate_crd >"${WORK}/crd.yaml" || return 1
  same_as_generated "${CRD_FILE}" "${WORK}/crd.yaml" "\`titan-operator crd\`"
}

check_chart_crd() {
  same_as_generated "${CHART_CRD_FILE}" "${CRD_FILE}" "manifests/crd.yaml (copied)"
}

check_chart_rbac() {
  same_as_generated "${CHART_RBAC_FILE}" "${OPERATOR_RBAC_SOURCE}" \
    "${OPERATOR_RBAC_SOURCE#"${ROOT}"/} (copied)"
}

check_operator_manifest() {
  render_operator_manifest >"${WORK}/operator.yaml" || return 1
  same_as_generated "${OPERATOR_MANIFEST}" "${WORK}/operator.yaml" "the chart (default values)"
}

# ------------------------------------------------------- real kube-apiserver

free_port() {
  python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'
}

# Starts etcd and kube-apiserver on free loopback ports and writes a kubeconfig
# with a static system:masters token to ${WORK}/kubeconfig.
start_apiserver() {
  local assets="$1" etcd_port peer_port api_port token
  etcd_port="$(free_port)"
  peer_port="$(free_port)"
  api_port="$(free_port)"
  token="check-packaging-$$"
  mkdir -p "${WORK}/etcd" "${WORK}/certs" || return 1
  "${assets}/etcd" --data-dir "${WORK}/etcd" \
    --listen-client-urls "http://127.0.0.1:${etcd_port}" \
    --advertise-client-urls "http://127.0.0.1:${etcd_port}" \
    --listen-peer-urls "http://127.0.0.1:${peer_port}" >"${WORK}/etcd.log" 2>&1 &
  APISERVER_PIDS+=("$!")
  printf '%s,admin,admin,system:masters\n' "${token}" >"${WORK}/tokens.csv"
  openssl genrsa -out "${WORK}/sa.key" 2048 2>/dev/null || return 1
  # --insecure-port exists (and must be switched off) only before 1.24.
  local legacy=()
  if "${assets}/kube-apiserver" --version | grep -qE 'v1\.(1[0-9]|2[0-3])\.'; then
    legacy=(--insecure-port 0)
  fi
  "${assets}/kube-apiserver" --etcd-servers "http://127.0.0.1:${etcd_port}" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "${api_port}" \
    "${legacy[@]}" --cert-dir "${WORK}/certs" --token-auth-file "${WORK}/tokens.csv" \
    --authorization-mode RBAC --service-cluster-ip-range 10.0.0.0/24 \
    --service-account-issuer https://kubernetes.default.svc \
    --service-account-key-file "${WORK}/sa.key" \
    --service-account-signing-key-file "${WORK}/sa.key" >"${WORK}/apiserver.log" 2>&1 &
  APISERVER_PIDS+=("$!")
  cat >"${WORK}/kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
  - name: local
    cluster: {server: "https://127.0.0.1:${api_port}", insecure-skip-tls-verify: true}
users:
  - name: admin
    user: {token: "${token}"}
contexts:
  - name: local
    context: {cluster: local, user: admin}
current-context: local
EOF
  wait_apiserver_ready
}

wait_apiserver_ready() {
  local deadline=$((SECONDS + APISERVER_READY_TIMEOUT_S))
  until kubectl --kubeconfig "${WORK}/kubeconfig" get --raw /readyz >/dev/null 2>&1; do
    if [ "${SECONDS}" -ge "${deadline}" ]; then
      log "kube-apiserver not ready after ${APISERVER_READY_TIMEOUT_S}s; log tail:"
      tail -n 30 "${WORK}/apiserver.log" >&2
      return 1
    fi
    sleep 1
  done
}

kc() { kubectl --kubeconfig "${WORK}/kubeconfig" "$@"; }

# Installs the CRD for real (a custom resource cannot be dry-run without it), then
# dry-runs every rendered object server-side, then applies them with SSA.
# (Steps run inside `if`, where `set -e` is off, hence the explicit `|| return`.)
check_apiserver_apply() {
  start_apiserver "${KUBEBUILDER_ASSETS}" || return 1
  kc apply --server-side -f "${CRD_FILE}" >&2 || return 1
  kc wait --for condition=established --timeout=30s \
    crd/titanclusters.titan.dev crd/titanbackups.titan.dev >&2 || return 1
  kc create namespace "${RELEASE_NAMESPACE}" >&2 || return 1
  # The generated manifest holds its own Namespace; everything else must dry-run.
  kc apply --server-side --dry-run=server -f "${OPERATOR_MANIFEST}" >&2 || return 1
  helm template "${RELEASE_NAME}" "${CHART_DIR}" --namespace "${RELEASE_NAMESPACE}" \
    --set cluster.create=true --set replicaCount=2 >"${WORK}/with-cluster.yaml" || return 1
  kc apply --server-side --dry-run=server -f "${WORK}/with-cluster.yaml" >&2 || return 1
  kc apply --server-side --dry-run=server -n default -f "${EXAMPLE_CLUSTER}" >&2 || return 1
  # Real server-side apply, as `kubectl apply --server-side` users will run it.
  kc apply --server-side -f "${OPERATOR_MANIFEST}" >&2 || return 1
  kc apply --server-side -n default -f "${EXAMPLE_CLUSTER}" >&2 || return 1
  kc -n default scale tc/titan --replicas=5 >&2 || return 1
  if [ "$(kc -n default get tc/titan -o jsonpath='{.spec.replicas}')" != 5 ]; then
    log "kubectl scale did not update spec.replicas through the scale subresource"
    return 1
  fi
  check_rbac_wiring
}

# The applied bindings really give the operator's ServiceAccount what it needs,
# and no more: "namespace verb resource", asked with `kubectl auth can-i --as`
# ("*" as the namespace means across all namespaces).
RBAC_ALLOWED=("* watch titanclusters.titan.dev" "default patch titanclusters.titan.dev/status"
  "default patch statefulsets.apps" "default delete persistentvolumeclaims"
  "default delete networkpolicies.networking.k8s.io"
  "* watch titanbackups.titan.dev" "default patch titanbackups.titan.dev/status"
  "default get secrets" "default create secrets" "default patch secrets"
  "${RELEASE_NAMESPACE} update leases.coordination.k8s.io")
RBAC_DENIED=("default list secrets" "* watch secrets" "default update leases.coordination.k8s.io"
  "default delete titanclusters.titan.dev" "default patch titanbackups.titan.dev")

# "RESOURCE/SUB" asks about the subresource: `kubectl auth can-i` itself would
# read it as the object named SUB.
can_i() {
  local ns="$1" verb="$2" resource="$3" scope sub=()
  local sa="system:serviceaccount:${RELEASE_NAMESPACE}:${RELEASE_NAME}"
  if [ "${ns}" = "*" ]; then scope=(--all-namespaces); else scope=(-n "${ns}"); fi
  if [[ ${resource} == */* ]]; then
    sub=(--subresource "${resource#*/}")
    resource=${resource%%/*}
  fi
  kc auth can-i --as "${sa}" "${scope[@]}" "${sub[@]}" "${verb}" "${resource}" >/dev/null 2>&1
}

check_rbac_wiring() {
  local triple ns verb resource
  for triple in "${RBAC_ALLOWED[@]}"; do
    read -r ns verb resource <<<"${triple}"
    can_i "${ns}" "${verb}" "${resource}" || {
      log "the operator's ServiceAccount cannot ${verb} ${resource} (namespace ${ns})"
      return 1
    }
  done
  for triple in "${RBAC_DENIED[@]}"; do
    read -r ns verb resource <<<"${triple}"
    if can_i "${ns}" "${verb}" "${resource}"; then
      log "the operator's ServiceAccount may ${verb} ${resource} in ${ns}: not least privilege"
      return 1
    fi
  done
  log "RBAC: ${#RBAC_ALLOWED[@]} needed permissions granted, ${#RBAC_DENIED[@]} others denied"
}

# ---------------------------------------------------------------------- main

main() {
  local tools
  tools="$("${ROOT}/scripts/ci/tools.sh")"
  export PATH="${tools}:${PATH}"

  if [ "${1:-}" = "--update" ]; then
    update_generated
    return 0
  fi

  step "shellcheck on all shell scripts" check_shellcheck
  if command -v hadolint >/dev/null 2>&1; then
    step "hadolint Dockerfile" check_hadolint
  else
    skip "hadolint (not available on $(uname -m))"
  fi
  step "one version in Cargo.toml, Chart.yaml, Dockerfile, example" check_versions
  step "scripts/image.sh builds what the Dockerfile describes" check_image_matches_dockerfile
  step "helm lint --strict (no warnings)" check_helm_lint
  step "helm template renders every object" check_helm_template
  if [ "${TITAN_SKIP_CARGO:-0}" = 1 ]; then
    skip "manifests/crd.yaml vs titan-operator crd (TITAN_SKIP_CARGO=1)"
  else
    step "manifests/crd.yaml equals \`titan-operator crd\`" check_crd_generated
  fi
  step "chart crds/ equals manifests/crd.yaml" check_chart_crd
  step "chart files/rbac.yaml equals manifests/rbac.yaml" check_chart_rbac
  step "manifests/operator.yaml equals the rendered chart" check_operator_manifest
  if [ -n "${KUBEBUILDER_ASSETS:-}" ] && [ -x "${KUBEBUILDER_ASSETS}/kube-apiserver" ]; then
    step "kubectl apply --dry-run=server against kube-apiserver" check_apiserver_apply
  else
    skip "kube-apiserver dry-run (set KUBEBUILDER_ASSETS=\$(scripts/ci/kube-apiserver.sh))"
  fi

  log "check-packaging: ${PASSED} passed, ${FAILED} failed, ${SKIPPED} skipped"
  if [ "${FAILED}" -gt 0 ]; then
    log "failed steps: ${FAILED_STEPS[*]}"
    return 1
  fi
}

main "$@"
