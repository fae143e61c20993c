#!/usr/bin/env bash
# Starts (or stops) a 3-node Titan cluster on localhost.
#   scripts/cluster.sh start   # build, start node1..node3, wait for a leader
#   scripts/cluster.sh stop    # SIGTERM all three, wait for exit
#   scripts/cluster.sh status  # show who runs and who leads
# State lives in ${TITAN_CLUSTER_DIR:-./.titan-cluster} (data dirs, logs, pids).
set -euo pipefail

# shellcheck source=scripts/lib/send.sh
source "$(dirname "$0")/lib/send.sh"

DIR="${TITAN_CLUSTER_DIR:-./.titan-cluster}"
BIN="${TITAN_BIN:-./target/release/titan-server}"
NODES=(1 2 3)

peers_for() {
  local me=$1 out=()
  for n in "${NODES[@]}"; do
    [[ $n == "$me" ]] && continue
    out+=("node$n:localhost:500$n:600$n")
  done
  (IFS=,; echo "${out[*]}")
}

start_node() {
  local n=$1
  "$BIN" -id="node$n" -port="500$n" -client-port="600$n" \
    -advertise-client-addr="localhost:600$n" --advertise-peer-addr="localhost:500$n" \
    --advertise-grpc-addr="localhost:700$n" --grpc-port="700$n" --http-port="808$n" \
    --data-dir="$DIR/node$n" -peers="$(peers_for "$n")" \
    >>"$DIR/node$n.log" 2>&1 &
  echo $! >"$DIR/node$n.pid"
}

leader() {
  for n in "${NODES[@]}"; do
    if reply=$(send "600$n" 'SET __leader_probe 1') && [[ $reply == OK ]]; then
      echo "node$n"
      return 0
    fi
  done
  return 1
}

cmd_start() {
  if [[ ! -x $BIN ]]; then
    echo "building titan-server (release)..."
    cargo build --release -p titan-server --bin titan-server
  fi
  mkdir -p "$DIR"
  for n in "${NODES[@]}"; do
    if [[ -f $DIR/node$n.pid ]] && kill -0 "$(cat "$DIR/node$n.pid")" 2>/dev/null; then
      echo "node$n already running"
    else
      start_node "$n"
    fi
  done
  for _ in $(seq 1 100); do
    if l=$(leader); then
      echo "cluster up; leader is $l"
      cat <<MSG

Talk to it with nc (any node serves GET; writes go to the leader):
  echo 'SET greeting hello world' | nc -q1 localhost 6001
  echo 'GET greeting' | nc -q1 localhost 6002
  echo 'PING' | nc -q1 localhost 6003
Metrics: curl localhost:8081/metrics   Logs: $DIR/node*.log
Stop:    make cluster-stop
MSG
      return 0
    fi
    sleep 0.1
  done
  echo "no leader after 10s; see $DIR/node*.log" >&2
  return 1
}

cmd_stop() {
  for n in "${NODES[@]}"; do
    local pidf="$DIR/node$n.pid"
    [[ -f $pidf ]] || continue
    local pid
    pid=$(cat "$pidf")
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$pid" 2>/dev/null || true
    rm -f "$pidf"
    echo "node$n stopped"
  done
}

cmd_status() {
  for n in "${NODES[@]}"; do
    if [[ -f $DIR/node$n.pid ]] && kill -0 "$(cat "$DIR/node$n.pid")" 2>/dev/null; then
      echo "node$n running (pid $(cat "$DIR/node$n.pid"))"
    else
      echo "node$n stopped"
    fi
  done
  leader || echo "no leader"
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
