#!/usr/bin/env bash
# Chaos demo: write, kill -9 the leader, show the new leader, restart the old
# one, and check that no acknowledged write was lost.
set -euo pipefail

# shellcheck source=scripts/lib/send.sh
source "$(dirname "$0")/lib/send.sh"
# shellcheck source=scripts/lib/leader.sh
source "$(dirname "$0")/lib/leader.sh"

DIR="${TITAN_CLUSTER_DIR:-./.titan-cluster}"
export TITAN_CLUSTER_DIR="$DIR"
here=$(cd "$(dirname "$0")" && pwd)
ACKED="$DIR/acked.txt"

"$here/cluster.sh" start
: >"$ACKED"

# Client port of the current leader, found without writing (lib/leader.sh).
leader_port() {
  local n
  n=$(leader_number) || return 1
  echo "600$n"
}

write_batch() { # $1 = first key number, $2 = count
  local port
  port=$(leader_port) || { echo "no leader"; return 0; }
  for i in $(seq "$1" $(($1 + $2 - 1))); do
    if [[ $(send "$port" "SET key$i value$i") == OK ]]; then
      echo "key$i value$i" >>"$ACKED"
    fi
  done
}

echo "== writing 200 keys"
write_batch 1 200
old=$(leader_port); old_node=${old#600}
echo "== leader is node$old_node; kill -9"
kill -9 "$(cat "$DIR/node$old_node.pid")"
start=$(date +%s%N)
until new=$(leader_port); do sleep 0.05; done
echo "== new leader node${new#600} after $(( ($(date +%s%N) - start) / 1000000 )) ms"
echo "== writing 200 more keys"
write_batch 201 200
echo "== restarting node$old_node"
rm -f "$DIR/node$old_node.pid"
"$here/cluster.sh" start >/dev/null
sleep 1
lost=0
while read -r key value; do
  for n in 1 2 3; do
    got=$(send "600$n" "GET $key" || true)
    if [[ $got != "VALUE $value" ]]; then
      echo "LOST on node$n: $key -> $got"; lost=$((lost + 1))
    fi
  done
done <"$ACKED"
echo "== $(wc -l <"$ACKED") acknowledged writes checked on 3 nodes; lost: $lost"
[[ $lost -eq 0 ]]
