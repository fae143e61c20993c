#!/usr/bin/env bash
# Standard Titan benchmark matrix, and the same matrix against etcd when
# etcd is installed (Debian: apt-get install etcd-server etcd-client).
#
#   scripts/bench.sh                 # 1/16/64/256 clients x put/get, 5 s per cell
#   BENCH_SECS=10 BENCH_CLIENTS="16 64" scripts/bench.sh
#
# Knobs (environment):
#   BENCH_SECS      measured seconds per cell                  (default 5)
#   BENCH_WARMUP    unmeasured warm-up seconds per cell        (default 1)
#   BENCH_CLIENTS   client counts                              (default "1 16 64 256")
#   BENCH_OPS       op mixes                                   (default "put get")
#   BENCH_VALUE     value size in bytes                        (default 256)
#   BENCH_KEYS      key count                                  (default 10000)
#   BENCH_TITAN_PROTO  titan-tcp or titan-grpc                 (default titan-tcp)
#   BENCH_ETCD      0 to skip etcd even if installed           (default 1)
#   BENCH_TITAN     0 to skip Titan (etcd only)                (default 1)
#   BENCH_OUT       output directory                           (default ./bench-results)
#   BENCH_DATA_DIR  parent of the nodes' data dirs; put it on the disk you
#                   want to measure (default: $TMPDIR or /tmp)
#   TITAN_BIN       titan-server binary  (default ./target/release/titan-server)
#   BENCH_BIN       titan-bench binary   (default ./target/release/titan-bench)
#
# Both systems get the same load: closed-loop clients, one connection per
# client, writes sent to the leader (Titan: by NOT_LEADER redirect; etcd: the
# script finds the leader with `etcdctl endpoint status`), linearizable reads
# spread over all three members. Results: $BENCH_OUT/results.md plus one JSON
# summary per cell.
set -euo pipefail

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

WORK="$(mktemp -d -p "${BENCH_DATA_DIR:-${TMPDIR:-/tmp}}" titan-bench.XXXXXX)"
PIDS=()

cleanup() {
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
titan_peers_for() {
  local me=$1 out=()
  for n in 1 2 3; do
    [[ $n == "$me" ]] && continue
    out+=("node$n:localhost:500$n:600$n")
  done
  (IFS=,; echo "${out[*]}")
}

start_titan() {
  for n in 1 2 3; do
    mkdir -p "$WORK/titan/node$n"
    "$TITAN_BIN" -id="node$n" -port="500$n" -client-port="600$n" \
      -advertise-client-addr="localhost:600$n" --advertise-peer-addr="localhost:500$n" \
      --advertise-grpc-addr="localhost:700$n" --grpc-port="700$n" --http-port="808$n" \
      --data-dir="$WORK/titan/node$n" -peers="$(titan_peers_for "$n")" \
      >>"$WORK/titan/node$n.log" 2>&1 &
    PIDS+=("$!")
  done
  # Wait for a leader: a write succeeds somewhere.
  for _ in $(seq 1 100); do
    for n in 1 2 3; do
      if reply=$(titan_send "600$n" 'SET __bench_probe 1') && [[ $reply == OK ]]; then
        log "titan: leader is node$n"
        return 0
      fi
    done
    sleep 0.2
  done
  log "titan: no leader after 20 s; logs in $WORK/titan"
  tail -n 20 "$WORK"/titan/node*.log >&2 || true
  return 1
}

titan_send() { # $1 = port, $2 = request line
  local reply=""
  exec 3<>"/dev/tcp/127.0.0.1/$1" 2>/dev/null || return 1
  printf '%s\n' "$2" >&3
  IFS= read -r -t 5 reply <&3 || true
  exec 3>&-
  printf '%s' "${reply%$'\r'}"
}

titan_endpoints() {
  case $TITAN_PROTO in
    titan-grpc) echo "localhost:7001,localhost:7002,localhost:7003" ;;
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

# The client address of etcd's current leader.
etcd_leader() {
  local status
  status=$(ETCDCTL_API=3 etcdctl --endpoints "$(etcd_all_endpoints)" endpoint status -w json 2>/dev/null)
  python3 -c '
import json, sys
for s in json.loads(sys.argv[1]):
    st = s["Status"]
    if st["header"]["member_id"] == st["leader"]:
        print(s["Endpoint"].replace("http://", "")); sys.exit(0)
sys.exit(1)' "$status"
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
    if [[ $op == put ]]; then endpoints=$(etcd_leader); else endpoints=$(etcd_all_endpoints); fi
  fi
  log "== $system $op clients=$clients"
  "$BENCH_BIN" --target "$target" --endpoints "$endpoints" --op "$op" \
    --clients "$clients" --duration-secs "$SECS" --warmup-secs "$WARMUP" \
    --value-size "$VALUE" --keys "$KEYS" --json --quiet \
    >"$OUT/$system-$op-$clients.json"
}

preload() { # $1 = system
  local system=$1 target endpoints
  if [[ $system == titan ]]; then
    target=$TITAN_PROTO endpoints=$(titan_endpoints)
  else
    target=etcd endpoints=$(etcd_leader)
  fi
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
}

field() { # $1 = json file, $2 = python expression over `s`
  [[ -f $1 ]] || { echo "-"; return; }
  python3 -c 'import json,sys; s=json.load(open(sys.argv[1])); print(eval(sys.argv[2]))' "$1" "$2"
}

lat() { # $1 = json file, $2 = percentile field (p50, p99, ...): milliseconds
  field "$1" "\"%.2f\" % (s[\"latency_us\"][\"$2\"] / 1000)"
}

write_table() {
  local md="$OUT/results.md" have_etcd=$1
  {
    echo "# Titan benchmark ($(date -u +%Y-%m-%dT%H:%MZ))"
    echo
    echo "3 nodes on loopback, $(nproc) cores. ${SECS}s per cell after ${WARMUP}s warm-up, ${VALUE} B values, ${KEYS} keys, uniform keys, closed-loop clients, Titan via $TITAN_PROTO."
    echo
    if [[ $have_etcd == 1 ]]; then
      echo "| op | clients | Titan ops/s | etcd ops/s | ratio | Titan p50 ms | etcd p50 ms | Titan p99 ms | etcd p99 ms | Titan errors | etcd errors |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"
    else
      echo "| op | clients | Titan ops/s | p50 ms | p95 ms | p99 ms | p99.9 ms | max ms | errors |"
      echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
    fi
    for op in $OPS; do
      for c in $CLIENTS; do
        local t="$OUT/titan-$op-$c.json" e="$OUT/etcd-$op-$c.json"
        local tput
        tput=$(field "$t" '"%.0f" % s["throughput_ops_s"]')
        if [[ $have_etcd == 1 ]]; then
          local eput ratio
          eput=$(field "$e" '"%.0f" % s["throughput_ops_s"]')
          ratio=$(python3 -c 'import sys; t,e=sys.argv[1:]; print("%.2fx" % (float(t)/float(e)) if e not in ("-","0") and t != "-" else "-")' "$tput" "$eput")
          echo "| $op | $c | $tput | $eput | $ratio | $(lat "$t" p50) | $(lat "$e" p50) | $(lat "$t" p99) | $(lat "$e" p99) | $(field "$t" 's["errors_total"]') | $(field "$e" 's["errors_total"]') |"
        else
          echo "| $op | $c | $tput | $(lat "$t" p50) | $(lat "$t" p95) | $(lat "$t" p99) | $(lat "$t" p999) | $(lat "$t" max) | $(field "$t" 's["errors_total"]') |"
        fi
      done
    done
  } >"$md"
  cat "$md"
}

main() {
  mkdir -p "$OUT"
  build
  local have_etcd=0
  if [[ $RUN_ETCD == 1 ]] && command -v etcd >/dev/null && command -v etcdctl >/dev/null; then
    have_etcd=1
  fi
  if [[ $RUN_TITAN == 1 ]]; then
    start_titan
    run_matrix titan
    # Stop Titan before etcd runs, so the two never share the CPUs.
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    PIDS=()
  fi
  if [[ $have_etcd == 1 ]]; then
    start_etcd
    run_matrix etcd
  elif [[ $RUN_ETCD == 1 ]]; then
    log "etcd not installed; Titan only (apt-get install etcd-server etcd-client to compare)"
  fi
  write_table "$have_etcd"
}

main "$@"
