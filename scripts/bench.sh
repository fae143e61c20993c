#!/usr/bin/env bash
# Standard Titan benchmark matrix, and the same matrix against etcd when
# etcd is installed (Debian: apt-get install etcd-server etcd-client).
#
#   scripts/bench.sh                 # 1/16/64/256 clients x put/get, 5 s per cell
#   scripts/bench.sh --quick         # 1/16 clients x put/get, 1 s per cell, no warm-up
#   scripts/bench.sh --etcd-api      # through the etcd v3 API on both systems:
#                                    # put/range/txn x 1/16/64/256 clients, then
#                                    # watch fan-out (1000 watchers) and 10000 leases
#   scripts/bench.sh --etcd-api --quick   # the same, short (1/16 clients, 1 s cells)
#   scripts/bench.sh --help          # this text
#   BENCH_SECS=10 BENCH_CLIENTS="16 64" scripts/bench.sh
#
# Knobs (environment):
#   BENCH_SECS      measured seconds per cell                  (default 5)
#   BENCH_WARMUP    unmeasured warm-up seconds per cell        (default 1)
#   BENCH_CLIENTS   client counts                              (default "1 16 64 256")
#   BENCH_OPS       op mixes                                   (default "put get")
#   BENCH_VALUE     value size in bytes                        (default 256)
#   BENCH_KEYS      key count                                  (default 10000)
#   BENCH_TITAN_PROTO  titan-tcp or titan-grpc                 (default titan-tcp;
#                      --etcd-api: titan-etcd, Titan's etcd API on 700n)
#   BENCH_RANGE_LIMIT  keys per page of --op range             (default 10)
#   BENCH_WATCHERS     watchers in the fan-out run             (default 1000)
#   BENCH_WATCH_RATE   puts/s into the watched prefix, 0 = max (default 200)
#   BENCH_WATCH_WRITERS  writers of the fan-out run            (default 4)
#   BENCH_WATCH_SECS   writing seconds of the fan-out run      (default 10)
#   BENCH_LEASES       leases kept alive                       (default 10000)
#   BENCH_LEASE_TTL    their TTL in seconds (renewed every TTL/3) (default 10)
#   BENCH_LEASE_SECS   seconds they are kept alive             (default 30)
#   BENCH_ETCD      0 to skip etcd even if installed           (default 1)
#   BENCH_TITAN     0 to skip Titan (etcd only)                (default 1)
#   BENCH_OUT       output directory                           (default ./bench-results)
#   BENCH_DATA_DIR  parent of the nodes' data dirs; put it on the disk you
#                   want to measure (default: $TMPDIR or /tmp)
#   TITAN_BIN       titan-server binary  (default ./target/release/titan-server)
#   BENCH_BIN       titan-bench binary   (default ./target/release/titan-bench)
#
# With --etcd-api both systems are loaded through the etcd v3 API by the same
# titan-bench code (Titan: --target titan-etcd; etcd: --target etcd), every
# request spread over all three members (both forward writes from followers
# to their leader). Otherwise both get the same load: closed-loop clients, one
# connection per client, writes sent to the leader (Titan: by NOT_LEADER redirect; etcd: the
# script finds the leader with `etcdctl endpoint status`), linearizable reads
# spread over all three members. Results: $BENCH_OUT/results.md plus one JSON
# summary per cell.
#
# Titan is started and stopped by scripts/cluster.sh (the original ports
# 500n/600n/700n, state in $WORK/titan); the table is `titan-bench table`
# (medians and Titan/etcd ratios) over the JSON summaries.
set -euo pipefail

SCRIPTS="$(cd "$(dirname "$0")" && pwd)"

QUICK=0
ETCD_API=0
for arg in "$@"; do
  case $arg in
    -h | --help)
      sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'
      exit 0
      ;;
    --quick) QUICK=1 ;;
    --etcd-api) ETCD_API=1 ;;
    *)
      echo "usage: $0 [--quick] [--etcd-api] [--help]" >&2
      exit 2
      ;;
  esac
done
if [[ $QUICK == 1 ]]; then
  : "${BENCH_SECS:=1}" "${BENCH_WARMUP:=0}" "${BENCH_CLIENTS:=1 16}" "${BENCH_KEYS:=1000}"
  : "${BENCH_WATCH_SECS:=2}" "${BENCH_WATCH_RATE:=100}" "${BENCH_LEASES:=1000}"
  : "${BENCH_LEASE_TTL:=5}" "${BENCH_LEASE_SECS:=4}"
fi
if [[ $ETCD_API == 1 ]]; then
  : "${BENCH_OPS:=put range txn}" "${BENCH_TITAN_PROTO:=titan-etcd}"
fi

SECS="${BENCH_SECS:-5}"
WARMUP="${BENCH_WARMUP:-1}"
CLIENTS="${BENCH_CLIENTS:-1 16 64 256}"
OPS="${BENCH_OPS:-put get}"
VALUE="${BENCH_VALUE:-256}"
KEYS="${BENCH_KEYS:-10000}"
TITAN_PROTO="${BENCH_TITAN_PROTO:-titan-tcp}"
RUN_ETCD="${BENCH_ETCD:-1}"
RUN_TITAN="${BENCH_TITAN:-1}"
OUT="${BENCH_OUT:-./bench-results}"
TITAN_BIN="${TITAN_BIN:-./target/release/titan-server}"
BENCH_BIN="${BENCH_BIN:-./target/release/titan-bench}"
RANGE_LIMIT="${BENCH_RANGE_LIMIT:-10}"
WATCHERS="${BENCH_WATCHERS:-1000}"
WATCH_RATE="${BENCH_WATCH_RATE:-200}"
WATCH_WRITERS="${BENCH_WATCH_WRITERS:-4}"
WATCH_SECS="${BENCH_WATCH_SECS:-10}"
LEASES="${BENCH_LEASES:-10000}"
LEASE_TTL="${BENCH_LEASE_TTL:-10}"
LEASE_SECS="${BENCH_LEASE_SECS:-30}"

WORK="$(mktemp -d -p "${BENCH_DATA_DIR:-${TMPDIR:-/tmp}}" titan-bench.XXXXXX)"
PIDS=()

# scripts/cluster.sh with this run's binary and state dir.
titan_cluster() { TITAN_CLUSTER_DIR="$WORK/titan" TITAN_BIN="$TITAN_BIN" "$SCRIPTS/cluster.sh" "$1"; }

stop_titan() {
  [[ -d $WORK/titan ]] && titan_cluster stop >/dev/null
  return 0
}

cleanup() {
  stop_titan
  for pid in "${PIDS[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${PIDS[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  rm -rf "$WORK"
}
trap cleanup EXIT

log() { printf '%s\n' "$*" >&2; }

build() {
  if [[ $RUN_TITAN == 1 && ! -x $TITAN_BIN ]]; then
    log "building titan-server (release)..."
    cargo build --release -p titan-server --bin titan-server
  fi
  if [[ ! -x $BENCH_BIN ]]; then
    log "building titan-bench (release)..."
    cargo build --release -p titan-client --bin titan-bench
  fi
}

# --- Titan ---------------------------------------------------------------
start_titan() {
  if ! titan_cluster start >"$WORK/titan-start.log"; then
    tail -n 20 "$WORK"/titan/node*.log >&2 || true
    return 1
  fi
  log "titan: $(head -n 1 "$WORK/titan-start.log")"
}

titan_endpoints() {
  case $TITAN_PROTO in
    titan-grpc | titan-etcd) echo "localhost:7001,localhost:7002,localhost:7003" ;;
    *) echo "localhost:6001,localhost:6002,localhost:6003" ;;
  esac
}

# --- etcd ----------------------------------------------------------------
ETCD_CLIENT_PORTS=(23791 23792 23793)
ETCD_PEER_PORTS=(23801 23802 23803)

start_etcd() {
  local cluster="" i
  for i in 0 1 2; do
    cluster+="e$((i + 1))=http://127.0.0.1:${ETCD_PEER_PORTS[$i]},"
  done
  cluster="${cluster%,}"
  for i in 0 1 2; do
    local name="e$((i + 1))"
    mkdir -p "$WORK/etcd/$name"
    etcd --name "$name" --data-dir "$WORK/etcd/$name" \
      --listen-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
      --advertise-client-urls "http://127.0.0.1:${ETCD_CLIENT_PORTS[$i]}" \
      --listen-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ETCD_PEER_PORTS[$i]}" \
      --initial-cluster "$cluster" --initial-cluster-state new \
      --initial-cluster-token titan-bench --log-level warn \
      >>"$WORK/etcd/$name.log" 2>&1 &
    PIDS+=("$!")
  done
  for _ in $(seq 1 100); do
    if etcd_leader >/dev/null 2>&1; then
      log "etcd: leader is $(etcd_leader)"
      return 0
    fi
    sleep 0.2
  done
  log "etcd: no leader after 20 s; logs in $WORK/etcd"
  return 1
}

etcd_all_endpoints() {
  local eps=() p
  for p in "${ETCD_CLIENT_PORTS[@]}"; do eps+=("127.0.0.1:$p"); done
  (IFS=,; echo "${eps[*]}")
}

# The client address of etcd's current leader. `endpoint status` prints one
# line per member: endpoint, ID, version, DB size, IS LEADER, ...
etcd_leader() {
  ETCDCTL_API=3 etcdctl --endpoints "$(etcd_all_endpoints)" endpoint status -w simple 2>/dev/null |
    awk -F', *' '$5 == "true" { sub("^http://", "", $1); print $1; found = 1 } END { exit !found }'
}

# --- running cells ---------------------------------------------------------
run_cell() { # $1 = system (titan|etcd), $2 = op, $3 = clients
  local system=$1 op=$2 clients=$3 target endpoints
  if [[ $system == titan ]]; then
    target=$TITAN_PROTO
    endpoints=$(titan_endpoints)
    # Writes start at node1 and follow NOT_LEADER to the leader.
  else
    target=etcd
    if [[ $op == put && $ETCD_API == 0 ]]; then endpoints=$(etcd_leader); else endpoints=$(etcd_all_endpoints); fi
  fi
  log "== $system $op clients=$clients"
  "$BENCH_BIN" --target "$target" --endpoints "$endpoints" --op "$op" \
    --clients "$clients" --duration-secs "$SECS" --warmup-secs "$WARMUP" \
    --value-size "$VALUE" --keys "$KEYS" --range-limit "$RANGE_LIMIT" --json --quiet \
    >"$OUT/$system-$op-$clients.json"
}

# The etcd-API-only runs: watch fan-out, then leases kept alive.
run_watch_lease() { # $1 = system
  local system=$1 target=etcd endpoints
  endpoints=$(etcd_all_endpoints)
  if [[ $system == titan ]]; then target=$TITAN_PROTO endpoints=$(titan_endpoints); fi
  log "== $system watch watchers=$WATCHERS rate=$WATCH_RATE/s"
  "$BENCH_BIN" --target "$target" --endpoints "$endpoints" --op watch \
    --watchers "$WATCHERS" --clients "$WATCH_WRITERS" --rate "$WATCH_RATE" \
    --duration-secs "$WATCH_SECS" --value-size "$VALUE" --key-prefix watch/ --json --quiet \
    >"$OUT/$system-watch-$WATCHERS.json"
  log "== $system lease leases=$LEASES ttl=${LEASE_TTL}s"
  "$BENCH_BIN" --target "$target" --endpoints "$endpoints" --op lease \
    --leases "$LEASES" --lease-ttl-secs "$LEASE_TTL" --clients 64 \
    --duration-secs "$LEASE_SECS" --json --quiet \
    >"$OUT/$system-lease-$LEASES.json"
}

preload() { # $1 = system
  local system=$1 target endpoints
  if [[ $system == titan ]]; then
    target=$TITAN_PROTO endpoints=$(titan_endpoints)
  else
    target=etcd endpoints=$(etcd_leader)
  fi
  if [[ $ETCD_API == 1 && $system == etcd ]]; then endpoints=$(etcd_all_endpoints); fi
  "$BENCH_BIN" --target "$target" --endpoints "$endpoints" --op put --clients 64 \
    --ops 1 --preload --value-size "$VALUE" --keys "$KEYS" --json --quiet >/dev/null
}

run_matrix() { # $1 = system
  preload "$1"
  for op in $OPS; do
    for c in $CLIENTS; do
      run_cell "$1" "$op" "$c"
    done
  done
  if [[ $ETCD_API == 1 ]]; then run_watch_lease "$1"; fi
}

write_table() {
  local md="$OUT/results.md" files=() system op c
  # Row order follows BENCH_OPS and BENCH_CLIENTS; Titan first (the ratio's numerator).
  for system in titan etcd; do
    for op in $OPS; do
      for c in $CLIENTS; do
        if [[ -f $OUT/$system-$op-$c.json ]]; then files+=("$OUT/$system-$op-$c.json"); fi
      done
    done
    for f in "$OUT/$system-watch-$WATCHERS.json" "$OUT/$system-lease-$LEASES.json"; do
      if [[ $ETCD_API == 1 && -f $f ]]; then files+=("$f"); fi
    done
  done
  {
    echo "# Titan benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "3 nodes on loopback, $(nproc) cores. ${SECS}s per cell after ${WARMUP}s warm-up, ${VALUE} B values, ${KEYS} keys, uniform keys, closed-loop clients, Titan via $TITAN_PROTO."
    if [[ $ETCD_API == 1 ]]; then
      echo "range: pages of $RANGE_LIMIT keys; txn: compare mod_revision then put, else get."
      echo "watch: clients = watchers ($WATCHERS on one prefix), ops/s = events delivered/s, latency = put sent to event received; $WATCH_WRITERS writers at $WATCH_RATE puts/s (0 = max) for ${WATCH_SECS}s."
      echo "lease: clients = leases kept alive ($LEASES, TTL ${LEASE_TTL}s, renewed every TTL/3 for ${LEASE_SECS}s), ops/s = keep-alive responses/s, latency = keep-alive round trip; errors include leases lost."
    fi
    echo
    "$BENCH_BIN" table "${files[@]}"
  } >"$md"
  cat "$md"
}

main() {
  mkdir -p "$OUT"
  # The table reads every summary in $OUT: drop an earlier run's.
  rm -f "$OUT"/titan-*.json "$OUT"/etcd-*.json "$OUT"/results.md
  build
  local have_etcd=0
  if [[ $RUN_ETCD == 1 ]] && command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    have_etcd=1
  fi
  if [[ $RUN_TITAN == 1 ]]; then
    start_titan
    run_matrix titan
    # Stop Titan before etcd runs, so the two never share the CPUs.
    stop_titan
  fi
  if [[ $have_etcd == 1 ]]; then
    start_etcd
    run_matrix etcd
  elif [[ $RUN_ETCD == 1 ]]; then
    log "etcd not installed; Titan only (apt-get install etcd-server etcd-client to compare)"
  fi
  write_table
}

main "$@"
