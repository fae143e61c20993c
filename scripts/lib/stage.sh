#!/usr/bin/env bash
# Stage timing for CI and test scripts: `stage NAME` closes the previous stage
# (printing how long it took) and opens a new one; the EXIT trap closes the
# last. Source it, then call `stage "what runs now"`.

STAGE_NAME=""
STAGE_STARTED=0
STAGE_SCRIPT_STARTED=$SECONDS

stage_close() {
  if [ -n "${STAGE_NAME}" ]; then
    printf '== done: %s (%ds; %ds since start; %s free on disk)\n' "${STAGE_NAME}" \
      "$((SECONDS - STAGE_STARTED))" "$((SECONDS - STAGE_SCRIPT_STARTED))" \
      "$(df -h --output=avail . 2>/dev/null | tail -1 | tr -d ' ')"
  fi
  STAGE_NAME=""
}

stage() {
  stage_close
  STAGE_NAME="$1"
  STAGE_STARTED=$SECONDS
  printf '== %s\n' "${STAGE_NAME}"
}

trap stage_close EXIT
