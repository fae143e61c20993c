#!/usr/bin/env bash
# A real one-node Kubernetes 1.20.2 on this machine, for the e2e tier.
#
#   scripts/ci/k8s-node.sh build    # build + cache the binaries and the pause image
#   scripts/ci/k8s-node.sh start    # start the node, wait until it is Ready
#   scripts/ci/k8s-node.sh status   # what runs; exit 0 only when the node is Ready
#   scripts/ci/k8s-node.sh stop     # stop everything, undo every host change, check it
#   scripts/ci/k8s-node.sh env      # prints `export KUBECONFIG=... TITAN_NODE_IP=...` for eval
#   scripts/ci/k8s-node.sh kubectl ARGS...      # the node's kubectl 1.20 as admin
#   scripts/ci/k8s-node.sh import IMAGE.tar     # docker-archive into the node's containerd
#   scripts/ci/k8s-node.sh world-writable-pvs N  # N PVs of StorageClass world-writable
#
# Binaries: kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kube-proxy and kubectl 1.20.2 from ONE `make` over Debian's `kubernetes` source
# (scripts/lib/kube-build.sh, shared with scripts/ci/kube-apiserver.sh), etcd from
# Debian. Runtime: Debian containerd + runc with their own config, root, state and
# socket (cgroupfs, restrict_oom_score_adj). Network: a CNI bridge titan0
# 10.88.0.1/16 (the node IP), pods get no default route and no masquerade; the
# Service range 10.96.0.0/16 is routed on-link to the bridge. DNS: dnsmasq on the
# bridge address answers cluster.local from a hosts file that a small loop writes
# from `kubectl get services,endpoints`. Storage: the host-path provisioner
# (always /tmp/hostpath_pv) behind the default StorageClass `standard`, whose
# directories are root-owned 0750 and ignore fsGroup; and StorageClass
# `world-writable` of static host-path PVs in 0777 directories (what kind's
# local-path provisioner gives), both made on demand by `world-writable-pvs`.
#
# Needs root. Env: K8S_NODE_STATE (/var/lib/titan-k8s), TITAN_TOOLS_CACHE.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
# shellcheck source=scripts/lib/kube-build.sh
source "${ROOT}/scripts/lib/kube-build.sh"
# shellcheck source=scripts/lib/docker-archive.sh
source "${ROOT}/scripts/lib/docker-archive.sh"

BIN_DIR="${KUBE_CACHE_DIR}/k8s-node"
STATE="${K8S_NODE_STATE:-/var/lib/titan-k8s}"
PKI="${STATE}/pki"
LOGS="${STATE}/logs"
PIDS="${STATE}/pids"
CTR_SOCK="${STATE}/containerd/containerd.sock"
KUBECONFIG_ADMIN="${STATE}/admin.kubeconfig"
NODE_NAME="titan-node"
BRIDGE="titan0"
NODE_IP="10.88.0.1"
POD_CIDR="10.88.0.0/16"
SERVICE_CIDR="10.96.0.0/16"
API_SERVICE_IP="10.96.0.1"
API_PORT=6443
ETCD_PORT=12379
ETCD_PEER_PORT=12380
PAUSE_IMAGE="localhost/titan-pause:3.4"
# busybox-static as a tool image for test client pods (nc, nslookup, sh).
TOOLS_IMAGE="localhost/titan-tools:1"
HOSTPATH_PV_DIR="/tmp/hostpath_pv"
NODE_BINARIES=(kube-apiserver kube-controller-manager kube-scheduler kubelet kube-proxy kubectl)
# Sysctls the node needs; their previous values are saved and restored on stop.
SYSCTLS=(net.ipv4.ip_forward net.bridge.bridge-nf-call-iptables)
# Bounds of every wait.
READY_TIMEOUT_S=180
STOP_POD_TIMEOUT_S=60
PROCESS_STOP_TIMEOUT_S=20
DNS_RESYNC_S=2

log() { printf '[%s] k8s-node.sh: %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }
die() {
  log "FAIL: $*"
  exit 1
}

kctl() { "${BIN_DIR}/kubectl" --kubeconfig "${KUBECONFIG_ADMIN}" "$@"; }

# ------------------------------------------------------------------ build

have_binaries() {
  local b
  for b in "${NODE_BINARIES[@]}" etcd pause.tar tools.tar; do
    [[ -s "${BIN_DIR}/${b}" ]] || return 1
  done
}

build_pause() {
  local tree="$1" work
  work="$(mktemp -d)"
  mkdir -p "${work}/rootfs"
  gcc -static -O2 -o "${work}/rootfs/pause" "${tree}/build/pause/linux/pause.c"
  docker_archive "${BIN_DIR}/pause.tar" "${PAUSE_IMAGE}" "${work}/rootfs" \
    '{"Entrypoint":["/pause"],"User":"65535:65535"}'
  rm -rf "${work}"
}

build_tools_image() {
  local work applet
  work="$(mktemp -d)"
  mkdir -p "${work}/rootfs/bin" "${work}/rootfs/tmp"
  cp /bin/busybox "${work}/rootfs/bin/busybox"
  for applet in $(/bin/busybox --list); do
    [[ "${applet}" == busybox ]] || ln -s busybox "${work}/rootfs/bin/${applet}"
  done
  docker_archive "${BIN_DIR}/tools.tar" "${TOOLS_IMAGE}" "${work}/rootfs" \
    '{"Cmd":["/bin/sh"],"Env":["PATH=/bin"]}'
  rm -rf "${work}"
}

cmd_build() {
  if have_binaries; then
    log "binaries cached in ${BIN_DIR}"
    return
  fi
  local started=${SECONDS}
  KUBE_EXTRA_PACKAGES="containerd runc containernetworking-plugins dnsmasq-base busybox-static gcc libc6-dev iptables jq openssl" \
    kube_install_packages
  local tree missing=() b
  tree="$(kube_tree)"
  for b in "${NODE_BINARIES[@]}"; do
    [[ -n "$(kube_built "${tree}" "${b}")" ]] || missing+=("${b}")
  done
  if [[ ${#missing[@]} -gt 0 ]]; then kube_make "${tree}" "${missing[@]}"; fi
  mkdir -p "${BIN_DIR}"
  for b in "${NODE_BINARIES[@]}" etcd; do
    [[ -s "${BIN_DIR}/${b}" ]] && continue
    if [[ "${b}" == etcd ]]; then cp -L "$(command -v etcd || echo /usr/bin/etcd)" "${BIN_DIR}/etcd"
    else cp "$(kube_built "${tree}" "${b}")" "${BIN_DIR}/${b}"; fi
  done
  [[ -s "${BIN_DIR}/pause.tar" ]] || build_pause "${tree}"
  [[ -s "${BIN_DIR}/tools.tar" ]] || build_tools_image
  have_binaries || die "binaries incomplete in ${BIN_DIR}"
  log "build done in $((SECONDS - started))s: ${BIN_DIR}"
}

# ------------------------------------------------------------------ pki

# Signs a client/server certificate: NAME CN ORG [SANS].
sign_cert() {
  local name="$1" cn="$2" org="$3" sans="${4:-}"
  local subj="/CN=${cn}"
  [[ -n "${org}" ]] && subj="/O=${org}${subj}"
  openssl req -new -newkey rsa:2048 -nodes -subj "${subj}" \
    -keyout "${PKI}/${name}.key" -out "${PKI}/${name}.csr" 2>/dev/null
  local ext="${PKI}/${name}.ext"
  printf 'basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth,clientAuth\n' >"${ext}"
  [[ -n "${sans}" ]] && printf 'subjectAltName=%s\n' "${sans}" >>"${ext}"
  openssl x509 -req -in "${PKI}/${name}.csr" -CA "${PKI}/ca.crt" -CAkey "${PKI}/ca.key" \
    -CAcreateserial -days 30 -extfile "${ext}" -out "${PKI}/${name}.crt" 2>/dev/null
}

# Writes a kubeconfig for a component with a client certificate.
write_kubeconfig() {
  local name="$1"
  cat >"${STATE}/${name}.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: titan
  cluster: {certificate-authority: ${PKI}/ca.crt, server: "https://${NODE_IP}:${API_PORT}"}
users:
- name: ${name}
  user: {client-certificate: ${PKI}/${name}.crt, client-key: ${PKI}/${name}.key}
contexts:
- name: titan
  context: {cluster: titan, user: ${name}}
current-context: titan
EOF
}

make_pki() {
  mkdir -p "${PKI}"
  openssl req -x509 -new -newkey rsa:2048 -nodes -subj "/CN=titan-k8s-ca" -days 30 \
    -keyout "${PKI}/ca.key" -out "${PKI}/ca.crt" 2>/dev/null
  openssl genrsa -out "${PKI}/sa.key" 2048 2>/dev/null
  openssl rsa -in "${PKI}/sa.key" -pubout -out "${PKI}/sa.pub" 2>/dev/null
  sign_cert apiserver kube-apiserver "" \
    "IP:${NODE_IP},IP:${API_SERVICE_IP},IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost"
  sign_cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
  sign_cert kubelet-server "${NODE_NAME}" "" "IP:${NODE_IP},DNS:${NODE_NAME}"
  sign_cert admin admin system:masters
  sign_cert controller-manager system:kube-controller-manager ""
  sign_cert scheduler system:kube-scheduler ""
  sign_cert kubelet "system:node:${NODE_NAME}" system:nodes
  sign_cert kube-proxy system:kube-proxy ""
  local c
  for c in admin controller-manager scheduler kubelet kube-proxy; do write_kubeconfig "${c}"; done
}

# ------------------------------------------------------------------ host network

save_sysctls() {
  local s
  : >"${STATE}/sysctls.saved"
  for s in "${SYSCTLS[@]}"; do
    echo "${s}=$(sysctl -n "${s}")" >>"${STATE}/sysctls.saved"
    sysctl -qw "${s}=1"
  done
}

restore_sysctls() {
  [[ -f "${STATE}/sysctls.saved" ]] || return 0
  local line
  while IFS= read -r line; do sysctl -qw "${line}" || true; done <"${STATE}/sysctls.saved"
  rm -f "${STATE}/sysctls.saved"
}

setup_network() {
  ip link add "${BRIDGE}" type bridge
  ip addr add "${NODE_IP}/16" dev "${BRIDGE}"
  ip link set "${BRIDGE}" up
  # No dummy netdev in this kernel: route the Service range on-link to the bridge.
  ip route add "${SERVICE_CIDR}" dev "${BRIDGE}"
  save_sysctls
  mkdir -p "${STATE}/cni/net.d"
  cat >"${STATE}/cni/net.d/10-titan.conflist" <<EOF
{"cniVersion": "0.4.0", "name": "titan", "plugins": [
  {"type": "bridge", "bridge": "${BRIDGE}", "isGateway": false, "ipMasq": false,
   "hairpinMode": true,
   "ipam": {"type": "host-local", "dataDir": "${STATE}/cni/ipam",
            "ranges": [[{"subnet": "${POD_CIDR}", "rangeStart": "10.88.1.1", "gateway": "${NODE_IP}"}]],
            "routes": [{"dst": "${SERVICE_CIDR}", "gw": "${NODE_IP}"}]}},
  {"type": "loopback"}]}
EOF
}

# Removes every KUBE-* rule and chain in every table of one iptables family.
clean_iptables_family() {
  local ipt="$1" table rule chain
  for table in filter nat mangle; do
    "${ipt}-save" -t "${table}" 2>/dev/null | grep -E '^-A [A-Z]+ .*KUBE-' | grep -vE '^-A KUBE-' |
      while IFS= read -r rule; do
        # shellcheck disable=SC2086  # the rule is a word list, as iptables-save wrote it
        eval "${ipt} -t ${table} -D ${rule#-A }" 2>/dev/null || true
      done || true
    for chain in $("${ipt}-save" -t "${table}" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
      "${ipt}" -t "${table}" -F "${chain}" 2>/dev/null || true
    done
    for chain in $("${ipt}-save" -t "${table}" 2>/dev/null | sed -n 's/^:\(KUBE-[^ ]*\) .*/\1/p'); do
      "${ipt}" -t "${table}" -X "${chain}" 2>/dev/null || true
    done
  done
}

teardown_network() {
  clean_iptables_family iptables
  clean_iptables_family ip6tables
  ip route del "${SERVICE_CIDR}" dev "${BRIDGE}" 2>/dev/null || true
  ip link del "${BRIDGE}" 2>/dev/null || true
  restore_sysctls
}

# ------------------------------------------------------------------ processes

# Starts NAME in the background with its log, recording its pid.
run_bg() {
  local name="$1"
  shift
  mkdir -p "${LOGS}" "${PIDS}"
  setsid "$@" >"${LOGS}/${name}.log" 2>&1 </dev/null &
  echo $! >"${PIDS}/${name}"
}

pid_of() {
  local f="${PIDS}/$1"
  [[ -f "${f}" ]] && kill -0 "$(cat "${f}")" 2>/dev/null && cat "${f}"
}

stop_process() {
  local name="$1" pid
  pid="$(pid_of "${name}")" || {
    rm -f "${PIDS}/${name}"
    return 0
  }
  kill "${pid}" 2>/dev/null || true
  local deadline=$((SECONDS + PROCESS_STOP_TIMEOUT_S))
  while kill -0 "${pid}" 2>/dev/null && [[ ${SECONDS} -lt ${deadline} ]]; do sleep 0.2; done
  kill -9 "${pid}" 2>/dev/null || true
  rm -f "${PIDS}/${name}"
}

wait_for() {
  local label="$1" timeout_s="$2"
  shift 2
  local deadline=$((SECONDS + timeout_s))
  until "$@" >/dev/null 2>&1; do
    [[ ${SECONDS} -lt ${deadline} ]] || die "${label} not ready after ${timeout_s}s (logs in ${LOGS})"
    sleep 0.5
  done
}

start_containerd() {
  mkdir -p "${STATE}/containerd"
  cat >"${STATE}/containerd/config.toml" <<EOF
version = 2
root = "${STATE}/containerd/root"
state = "${STATE}/containerd/state"
[grpc]
  address = "${CTR_SOCK}"
[ttrpc]
  address = "${CTR_SOCK}.ttrpc"
[debug]
  address = ""
[metrics]
  address = ""
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "${PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "${STATE}/cni/net.d"
EOF
  run_bg containerd containerd --config "${STATE}/containerd/config.toml"
  wait_for containerd 30 ctr --address "${CTR_SOCK}" version
  ctr --address "${CTR_SOCK}" -n k8s.io images import "${BIN_DIR}/pause.tar" >/dev/null
  ctr --address "${CTR_SOCK}" -n k8s.io images import "${BIN_DIR}/tools.tar" >/dev/null
}

start_control_plane() {
  run_bg etcd "${BIN_DIR}/etcd" --data-dir "${STATE}/etcd" \
    --listen-client-urls "http://127.0.0.1:${ETCD_PORT}" --advertise-client-urls "http://127.0.0.1:${ETCD_PORT}" \
    --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORT}" \
    --initial-cluster "default=http://127.0.0.1:${ETCD_PEER_PORT}" --unsafe-no-fsync
  run_bg kube-apiserver "${BIN_DIR}/kube-apiserver" --etcd-servers "http://127.0.0.1:${ETCD_PORT}" \
    --bind-address "${NODE_IP}" --advertise-address "${NODE_IP}" --secure-port "${API_PORT}" \
    --insecure-port 0 --service-cluster-ip-range "${SERVICE_CIDR}" \
    --tls-cert-file "${PKI}/apiserver.crt" --tls-private-key-file "${PKI}/apiserver.key" \
    --client-ca-file "${PKI}/ca.crt" --authorization-mode Node,RBAC \
    --service-account-key-file "${PKI}/sa.pub" --service-account-signing-key-file "${PKI}/sa.key" \
    --service-account-issuer "https://kubernetes.default.svc.cluster.local" \
    --kubelet-client-certificate "${PKI}/apiserver-kubelet-client.crt" \
    --kubelet-client-key "${PKI}/apiserver-kubelet-client.key" \
    --kubelet-preferred-address-types InternalIP --allow-privileged
  wait_for kube-apiserver 90 kctl get --raw /readyz
  run_bg kube-controller-manager "${BIN_DIR}/kube-controller-manager" \
    --kubeconfig "${STATE}/controller-manager.kubeconfig" --bind-address 127.0.0.1 \
    --service-account-private-key-file "${PKI}/sa.key" --root-ca-file "${PKI}/ca.crt" \
    --cluster-signing-cert-file "${PKI}/ca.crt" --cluster-signing-key-file "${PKI}/ca.key" \
    --use-service-account-credentials --enable-hostpath-provisioner --leader-elect=false \
    --service-cluster-ip-range "${SERVICE_CIDR}" --port 0
  run_bg kube-scheduler "${BIN_DIR}/kube-scheduler" --kubeconfig "${STATE}/scheduler.kubeconfig" \
    --bind-address 127.0.0.1 --leader-elect=false --port 0
}

start_node() {
  mkdir -p "${STATE}/kubelet"
  printf '# titan k8s node: no upstream resolver\n' >"${STATE}/resolv.conf"
  cat >"${STATE}/kubelet.yaml" <<EOF
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
address: ${NODE_IP}
healthzBindAddress: 127.0.0.1
cgroupDriver: cgroupfs
failSwapOn: false
resolvConf: ${STATE}/resolv.conf
clusterDNS: [${NODE_IP}]
clusterDomain: cluster.local
tlsCertFile: ${PKI}/kubelet-server.crt
tlsPrivateKeyFile: ${PKI}/kubelet-server.key
authentication:
  anonymous: {enabled: false}
  x509: {clientCAFile: ${PKI}/ca.crt}
  webhook: {enabled: false}
authorization: {mode: AlwaysAllow}
# Absolute floors: on a large shared CI disk even 1% is gigabytes, and other
# jobs' builds filling it must not evict the test's pods.
evictionHard: {memory.available: "50Mi", nodefs.available: "256Mi", imagefs.available: "256Mi"}
evictionPressureTransitionPeriod: 10s
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
serializeImagePulls: false
EOF
  run_bg kubelet "${BIN_DIR}/kubelet" --config "${STATE}/kubelet.yaml" \
    --kubeconfig "${STATE}/kubelet.kubeconfig" --root-dir "${STATE}/kubelet" \
    --container-runtime remote --container-runtime-endpoint "unix://${CTR_SOCK}" \
    --node-ip "${NODE_IP}" --hostname-override "${NODE_NAME}" --pod-infra-container-image "${PAUSE_IMAGE}"
  run_bg kube-proxy "${BIN_DIR}/kube-proxy" --kubeconfig "${STATE}/kube-proxy.kubeconfig" \
    --hostname-override "${NODE_NAME}" --proxy-mode iptables --cluster-cidr "${POD_CIDR}" \
    --bind-address "${NODE_IP}" --healthz-bind-address 127.0.0.1:10256 --metrics-bind-address 127.0.0.1:10249 \
    --conntrack-max-per-core 0 --conntrack-tcp-timeout-established 0 --conntrack-tcp-timeout-close-wait 0
}

# One pass of the DNS feed: services (ClusterIP), headless endpoints and
# per-pod hostnames into a hosts file, moved into place atomically.
dns_hosts() {
  local services endpoints
  services="$(kctl get services -A -o json)" || return 1
  endpoints="$(kctl get endpoints -A -o json)" || return 1
  jq -rn --argjson s "${services}" --argjson e "${endpoints}" '
    ($s.items | map({key: "\(.metadata.namespace)/\(.metadata.name)", value: .spec.clusterIP}) | from_entries) as $ip
    | ($s.items[] | select(.spec.clusterIP != "None" and .spec.clusterIP != null)
        | "\(.spec.clusterIP) \(.metadata.name).\(.metadata.namespace).svc.cluster.local"),
      ($e.items[] | . as $ep | (.subsets // [])[] | (.addresses // [])[]
        | (if $ip["\($ep.metadata.namespace)/\($ep.metadata.name)"] == "None"
             then "\(.ip) \($ep.metadata.name).\($ep.metadata.namespace).svc.cluster.local" else empty end),
          (if .hostname then "\(.ip) \(.hostname).\($ep.metadata.name).\($ep.metadata.namespace).svc.cluster.local" else empty end))'
}

dns_loop() {
  local dir="${STATE}/dns/hosts"
  while true; do
    if dns_hosts >"${STATE}/dns/hosts.next" 2>/dev/null; then
      mv "${STATE}/dns/hosts.next" "${dir}/cluster"
    fi
    sleep "${DNS_RESYNC_S}"
  done
}

start_dns() {
  mkdir -p "${STATE}/dns/hosts"
  : >"${STATE}/dns/hosts/cluster"
  run_bg dnsmasq dnsmasq --keep-in-foreground --conf-file=/dev/null --no-resolv --no-hosts \
    --local=/cluster.local/ --hostsdir="${STATE}/dns/hosts" --listen-address="${NODE_IP}" \
    --bind-interfaces --user=root --pid-file= --log-facility=-
  run_bg dns-feed "$0" dns-loop
}

node_ready() {
  [[ "$(kctl get node "${NODE_NAME}" -o 'jsonpath={.status.conditions[?(@.type=="Ready")].status}' 2>/dev/null)" == True ]]
}

install_addons() {
  kctl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: standard
  annotations: {storageclass.kubernetes.io/is-default-class: "true"}
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
}

# N host-path PVs of StorageClass world-writable in 0777 directories under
# HOSTPATH_PV_DIR (so stop removes them); reclaim Delete, which the host-path
# deleter honours for paths under /tmp.
world_writable_pvs() {
  local n="$1" i dir
  kctl apply -f - >/dev/null <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: world-writable
provisioner: kubernetes.io/no-provisioner
volumeBindingMode: WaitForFirstConsumer
EOF
  for i in $(seq 1 "${n}"); do
    dir="${HOSTPATH_PV_DIR}/world-writable-${i}"
    mkdir -p "${dir}"
    chmod 0777 "${dir}"
    kctl apply -f - >/dev/null <<EOF
apiVersion: v1
kind: PersistentVolume
metadata:
  name: world-writable-${i}
spec:
  storageClassName: world-writable
  capacity: {storage: 1Gi}
  accessModes: [ReadWriteOnce]
  persistentVolumeReclaimPolicy: Delete
  hostPath: {path: ${dir}, type: Directory}
EOF
  done
}

cmd_start() {
  [[ $(id -u) -eq 0 ]] || die "needs root"
  have_binaries || die "binaries missing: run '$0 build' first"
  [[ ! -d "${STATE}" ]] || die "${STATE} exists: run '$0 stop' first"
  ip link show "${BRIDGE}" >/dev/null 2>&1 && die "bridge ${BRIDGE} exists: run '$0 stop' first"
  local started=${SECONDS}
  mkdir -p "${STATE}" "${LOGS}" "${PIDS}"
  make_pki
  setup_network
  start_containerd
  start_control_plane
  start_node
  start_dns
  wait_for "node ${NODE_NAME}" "${READY_TIMEOUT_S}" node_ready
  install_addons
  wait_for "default ServiceAccount" 60 kctl -n default get serviceaccount default
  log "node Ready in $((SECONDS - started))s; export KUBECONFIG=${KUBECONFIG_ADMIN}"
}

# ------------------------------------------------------------------ stop

# Pids of the containerd shims of our containerd (their command line names our socket).
shim_pids() {
  local p
  for p in /proc/[0-9]*; do
    if { tr '\0' ' ' <"${p}/cmdline"; } 2>/dev/null | grep -q "containerd-shim.*${CTR_SOCK}"; then
      echo "${p#/proc/}"
    fi
  done
}

# Deletes every pod through the API and waits until the kubelet has torn the
# sandboxes down (CNI DEL releases their addresses and veths).
drain_pods() {
  pid_of kubelet >/dev/null && pid_of kube-apiserver >/dev/null || return 0
  stop_process kube-controller-manager
  stop_process kube-scheduler
  kctl delete pods --all -A --grace-period=0 --force --wait=false >/dev/null 2>&1 || true
  local deadline=$((SECONDS + STOP_POD_TIMEOUT_S))
  while [[ ${SECONDS} -lt ${deadline} ]]; do
    if ! ip -o link show master "${BRIDGE}" 2>/dev/null | grep -q .; then return 0; fi
    sleep 1
  done
  log "pods still attached to ${BRIDGE} after ${STOP_POD_TIMEOUT_S}s"
}

unmount_state() {
  local m
  awk -v s="${STATE}" 'index($2, s) == 1 {print $2}' /proc/self/mounts | sort -r |
    while IFS= read -r m; do umount -l "${m}" 2>/dev/null || true; done || true
}

cmd_stop() {
  [[ -d "${STATE}" ]] || {
    log "not running"
    check_clean
    return
  }
  drain_pods
  local p
  for p in dns-feed dnsmasq kube-proxy kubelet kube-scheduler kube-controller-manager kube-apiserver etcd; do
    stop_process "${p}"
  done
  # kube-proxy --cleanup leaves the kubelet's own chains; teardown_network removes all KUBE-*.
  "${BIN_DIR}/kube-proxy" --cleanup >/dev/null 2>&1 || true
  stop_process containerd
  for p in $(shim_pids); do kill -9 "${p}" 2>/dev/null || true; done
  unmount_state
  teardown_network
  rm -rf "${STATE}" "${HOSTPATH_PV_DIR}"
  check_clean
}

# Fails when anything the node made is still on the host.
check_clean() {
  local left=()
  [[ -z "$(shim_pids)" ]] || left+=("containerd shims")
  pgrep -f "${STATE}" >/dev/null && left+=("processes naming ${STATE}")
  grep -q " ${STATE}" /proc/self/mounts && left+=("mounts under ${STATE}")
  ip link show "${BRIDGE}" >/dev/null 2>&1 && left+=("bridge ${BRIDGE}")
  ip route show "${SERVICE_CIDR}" | grep -q . && left+=("route ${SERVICE_CIDR}")
  iptables-save 2>/dev/null | grep -q 'KUBE-' && left+=("iptables KUBE-* rules")
  ip6tables-save 2>/dev/null | grep -q 'KUBE-' && left+=("ip6tables KUBE-* rules")
  [[ ! -e "${HOSTPATH_PV_DIR}" ]] || left+=("${HOSTPATH_PV_DIR}")
  [[ ! -e "${STATE}/sysctls.saved" ]] || left+=("unrestored sysctls")
  if [[ ${#left[@]} -gt 0 ]]; then die "left behind: ${left[*]}"; fi
  log "stopped; nothing left behind"
}

cmd_status() {
  local p rc=0
  for p in etcd kube-apiserver kube-controller-manager kube-scheduler containerd kubelet kube-proxy dnsmasq dns-feed; do
    if pid_of "${p}" >/dev/null; then echo "${p}: running (pid $(pid_of "${p}"))"; else
      echo "${p}: not running"
      rc=1
    fi
  done
  if node_ready; then echo "node ${NODE_NAME}: Ready"; else
    echo "node ${NODE_NAME}: not Ready"
    rc=1
  fi
  return "${rc}"
}

case "${1:-}" in
  build) cmd_build ;;
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  env) printf 'export KUBECONFIG=%s\nexport TITAN_NODE_IP=%s\n' "${KUBECONFIG_ADMIN}" "${NODE_IP}" ;;
  import)
    shift
    ctr --address "${CTR_SOCK}" -n k8s.io images import "$@"
    ;;
  kubectl)
    shift
    kctl "$@"
    ;;
  world-writable-pvs) world_writable_pvs "${2:?usage: $0 world-writable-pvs N}" ;;
  dns-loop) dns_loop ;;
  *)
    echo "usage: $0 build|start|stop|status|env|kubectl ARGS..." >&2
    exit 2
    ;;
esac
