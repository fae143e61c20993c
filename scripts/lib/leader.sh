#!/usr/bin/env bash
# Read-only leader discovery for the local 3-node cluster (sourced, not run).
# Shared by scripts/cluster.sh and scripts/chaos-demo.sh. Nothing here writes
# to the keyspace: the leader is found from each node's Prometheus metrics.
#
# Node n (1..3) uses the original ports: peer 500n, client 600n, and the ports
# titan-server derives from the client port: gRPC 700n, HTTP 8079+n.

# HTTP port of node $1 (client port + 2079, the server's documented rule).
http_port() { echo $((8079 + $1)); }

# GET $2 from 127.0.0.1:$1 over bash's /dev/tcp (no curl needed); prints the
# whole response, headers included. Fails when nothing listens.
http_get() {
  local line
  { exec 4<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf 'GET %s HTTP/1.0\r\nHost: localhost\r\n\r\n' "$2" >&4
  while IFS= read -r -t 5 line <&4; do printf '%s\n' "${line%$'\r'}"; done
  exec 4>&-
}

# Prints the number n of the node whose metrics say it leads
# (`titan_raft_is_leader 1`); fails when no node does.
leader_number() {
  local n metrics
  for n in 1 2 3; do
    # Read the whole response first: `grep -q` in a pipe could stop the reader
    # early, and under `set -o pipefail` that SIGPIPE reads as "not leader".
    metrics=$(http_get "$(http_port "$n")" /metrics 2>/dev/null) || continue
    if grep -qx 'titan_raft_is_leader 1' <<<"$metrics"; then
      echo "$n"
      return 0
    fi
  done
  return 1
}
