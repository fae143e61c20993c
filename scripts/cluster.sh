#!/usr/bin/env bash
# Starts (or stops) a 3-node Titan cluster on localhost, with the original
# command line and nothing else:
#   titan-server -id=node1 -port=5001 -client-port=6001 \
#     -advertise-client-addr=localhost:6001 -peers="node2:localhost:5002:6002,node3:localhost:5003:6003"
# (gRPC 700n and HTTP 8079+n are derived from the client port by titan-server).
#
#   scripts/cluster.sh start   # build, start node1..node3, wait for a leader
#   scripts/cluster.sh stop    # SIGTERM all three, wait for exit
#   scripts/cluster.sh status  # show who runs and who leads
# State lives in ${TITAN_CLUSTER_DIR:-./.titan-cluster}: the nodes run there,
# so their data is in data/node1..3 (titan-server's default ./data/<id>),
# next to node1..3.log and node1..3.pid. Finding the leader only reads metrics,
# so starting leaves the keyspace as it was (empty on a fresh cluster).
set -euo pipefail

# shellcheck source=scripts/lib/leader.sh
source "$(dirname "$0")/lib/leader.sh"

DIR="${TITAN_CLUSTER_DIR:-./.titan-cluster}"
BIN="${TITAN_BIN:-${CARGO_TARGET_DIR:-./target}/release/titan-server}"
NODES=(1 2 3)
# Seconds to wait for a leader after starting.
LEADER_WAIT_S=10

peers_for() {
  local me=$1 out=()
  for n in "${NODES[@]}"; do
    [[ $n == "$me" ]] && continue
    out+=("node$n:localhost:500$n:600$n")
  done
  (IFS=,; echo "${out[*]}")
}

start_node() {
  local n=$1 bin
  bin=$(realpath "$BIN")
  (cd "$DIR" && exec "$bin" -id="node$n" -port="500$n" -client-port="600$n" \
    -advertise-client-addr="localhost:600$n" -peers="$(peers_for "$n")") \
    >>"$DIR/node$n.log" 2>&1 &
  echo $! >"$DIR/node$n.pid"
}

running() { [[ -f $DIR/node$1.pid ]] && kill -0 "$(cat "$DIR/node$1.pid")" 2>/dev/null; }

# The hint names the current leader's port for writes and a follower's for reads.
print_hint() {
  local l=$1 f
  f=$(( l % 3 + 1 ))
  cat <<MSG
cluster up; leader is node$l (client port 600$l)

Talk to it with nc (GET works on every node; writes go to the leader, and a
follower answers ERR NOT_LEADER localhost:600$l):
  echo 'SET greeting hello world' | nc -q1 localhost 600$l
  echo 'GET greeting' | nc -q1 localhost 600$f
  echo 'PING' | nc -q1 localhost 600$f
Metrics: curl localhost:$(http_port "$l")/metrics   Logs: $DIR/node*.log
Stop:    make cluster-stop
MSG
}

cmd_start() {
  if [[ ! -x $BIN ]]; then
    echo "building titan-server (release)..."
    cargo build --release -p titan-server --bin titan-server
  fi
  mkdir -p "$DIR"
  for n in "${NODES[@]}"; do
    if running "$n"; then
      echo "node$n already running"
    else
      start_node "$n"
    fi
  done
  local l
  for _ in $(seq 1 $((LEADER_WAIT_S * 10))); do
    if l=$(leader_number); then
      print_hint "$l"
      return 0
    fi
    sleep 0.1
  done
  echo "no leader after ${LEADER_WAIT_S}s; see $DIR/node*.log" >&2
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
    if running "$n"; then
      echo "node$n running (pid $(cat "$DIR/node$n.pid"))"
    else
      echo "node$n stopped"
    fi
  done
  local l
  if l=$(leader_number); then echo "leader is node$l"; else echo "no leader"; fi
}

case "${1:-start}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  *) echo "usage: $0 start|stop|status" >&2; exit 2 ;;
esac
