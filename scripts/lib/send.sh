#!/usr/bin/env bash
# Shared by scripts/cluster.sh and scripts/chaos-demo.sh (sourced, not run).

# One request/reply over bash's /dev/tcp (works without nc installed).
send() { # $1 = port, $2 = request line
  local reply=""
  { exec 3<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
  printf '%s\n' "$2" >&3
  IFS= read -r -t 5 reply <&3 || true
  exec 3>&-
  printf '%s' "$reply"
}
