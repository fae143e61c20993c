#!/usr/bin/env bash
# Coverage-guided fuzzing on the stable toolchain (AFL++ through cargo-afl).
# Opt-in: CI does not run this; CI replays the committed corpora instead
# (server/tests/fuzz_corpus_replay.rs).
#
#   scripts/fuzz.sh                 # every target, 600 s each
#   scripts/fuzz.sh 180             # every target, 180 s each
#   scripts/fuzz.sh 60 wal_record   # one target
#
# For each target it: builds the AFL harness (server/fuzz), seeds an empty
# corpus, fuzzes from the committed corpus for the given seconds, prints the
# fuzzer's figures (executions, edges, crashes), copies crashing inputs to
# server/fuzz/artifacts/<target>/ with a command to reproduce each, and merges
# the new queue into server/fuzz/corpus/<target>/ after minimizing it with
# afl-cmin (files named by content hash, each at most FUZZ_MAX_INPUT_BYTES).
# Exits 1 if any target found a crash.
#
# Installs what it needs, idempotently: cargo-afl from crates.io (its AFL++
# build), and make/cc from apt when missing.
#
# Knobs (environment):
#   FUZZ_TARGET_DIR       cargo target dir for the instrumented build (default target/afl)
#   FUZZ_WORK_DIR         AFL output folders (default target/fuzz-work)
#   FUZZ_MAX_INPUT_BYTES  largest input AFL generates and we commit (default 4096)
#   FUZZ_CORPUS_BUDGET_BYTES  most bytes committed per target (default 65536)
#   FUZZ_EXEC_TIMEOUT_MS  per-input timeout; slower inputs are saved as hangs (default 2000)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
SECONDS_PER_TARGET="${1:-600}"
shift || true
ALL_TARGETS=(tcp_line_parser wal_record snapshot_decode state_machine_command grpc_request)
if [ "$#" -gt 0 ]; then TARGETS=("$@"); else TARGETS=("${ALL_TARGETS[@]}"); fi

FUZZ_DIR="${ROOT}/server/fuzz"
CORPUS_ROOT="${FUZZ_DIR}/corpus"
ARTIFACTS_ROOT="${FUZZ_DIR}/artifacts"
TARGET_DIR="${FUZZ_TARGET_DIR:-${ROOT}/target/afl}"
WORK_DIR="${FUZZ_WORK_DIR:-${ROOT}/target/fuzz-work}"
MAX_INPUT_BYTES="${FUZZ_MAX_INPUT_BYTES:-4096}"
CORPUS_BUDGET_BYTES="${FUZZ_CORPUS_BUDGET_BYTES:-65536}"
EXEC_TIMEOUT_MS="${FUZZ_EXEC_TIMEOUT_MS:-2000}"
CARGO_AFL_VERSION="^0.18"
BIN_DIR="${TARGET_DIR}/release"

log() { printf 'fuzz.sh: %s\n' "$*" >&2; }

# AFL++ refuses to start on machines it has not tuned unless told these are fine.
export AFL_SKIP_CPUFREQ=1 AFL_I_DONT_CARE_ABOUT_MISSING_CRASHES=1 AFL_NO_UI=1
export AFL_NO_AFFINITY=1

ensure_tools() {
  if ! command -v make >/dev/null 2>&1 || ! command -v cc >/dev/null 2>&1; then
    log "apt-get install make gcc (needed to build AFL++)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends make gcc >&2
  fi
  if ! cargo afl --version >/dev/null 2>&1; then
    log "cargo install cargo-afl ${CARGO_AFL_VERSION}"
    cargo install cargo-afl --version "${CARGO_AFL_VERSION}" --locked >&2
  fi
  local out
  # Builds AFL++ once per toolchain; a second call says it is already built.
  if ! out="$(cargo afl config --build 2>&1)"; then
    case "${out}" in
      *"already built"*) ;;
      *) log "${out}"; return 1 ;;
    esac
  fi
}

build_harness() {
  log "building the instrumented harness into ${TARGET_DIR}"
  (cd "${FUZZ_DIR}" && CARGO_TARGET_DIR="${TARGET_DIR}" cargo afl build --release --locked >&2)
  "${BIN_DIR}/write_seeds" "${CORPUS_ROOT}" >&2
}

# Prints one key's value from an AFL fuzzer_stats file.
stat() {
  awk -F' *: *' -v k="$1" '$1 == k { print $2 }' "$2"
}

report() {
  local target="$1" stats="$2/default/fuzzer_stats"
  if [ ! -f "${stats}" ]; then
    log "${target}: no fuzzer_stats (AFL did not start)"
    return 1
  fi
  printf '%-22s execs=%s execs/s=%s corpus=%s edges=%s/%s (%s) crashes=%s hangs=%s\n' \
    "${target}" "$(stat execs_done "${stats}")" "$(stat execs_per_sec "${stats}")" \
    "$(stat corpus_count "${stats}")" "$(stat edges_found "${stats}")" \
    "$(stat total_edges "${stats}")" "$(stat bitmap_cvg "${stats}")" \
    "$(stat saved_crashes "${stats}")" "$(stat saved_hangs "${stats}")"
}

# Copies crashing inputs out of the AFL folder; returns 1 if there were any.
collect_crashes() {
  local target="$1" out="$2" found=0 f dest
  for f in "${out}"/default/crashes/id:*; do
    [ -e "${f}" ] || continue
    found=1
    dest="${ARTIFACTS_ROOT}/${target}/crash-$(sha1sum <"${f}" | cut -c1-16)"
    mkdir -p "${ARTIFACTS_ROOT}/${target}"
    cp "${f}" "${dest}"
    log "${target}: CRASH saved as ${dest}; reproduce: ${BIN_DIR}/${target} < ${dest}"
  done
  [ "${found}" -eq 0 ]
}

# Minimizes committed corpus + new queue with afl-cmin and writes the result
# back, smallest files first, within the byte budget.
merge_corpus() {
  local target="$1" out="$2" corpus="${CORPUS_ROOT}/$1" all="$2/merge-in" min="$2/merge-out"
  rm -rf "${all}" "${min}"
  mkdir -p "${all}"
  cp "${corpus}"/* "${all}/" 2>/dev/null || true
  cp "${out}"/default/queue/id:* "${all}/" 2>/dev/null || true
  # The bash afl-cmin: the python one `cargo afl cmin` picks records no
  # tuples from a persistent-mode Rust harness and would keep nothing.
  local afl_bin
  afl_bin="$(dirname "$(find "${XDG_DATA_HOME:-${HOME}/.local/share}/afl.rs" \
    -path '*/afl/bin/afl-cmin.bash' | head -1)")"
  AFL_PATH="${afl_bin}" PATH="${afl_bin}:${PATH}" "${afl_bin}/afl-cmin.bash" \
    -i "${all}" -o "${min}" -- "${BIN_DIR}/${target}" >/dev/null 2>&1 || true
  if [ -z "$(ls -A "${min}" 2>/dev/null)" ]; then
    log "${target}: afl-cmin kept nothing; corpus left unchanged"
    return 0
  fi
  local staged="$2/merge-staged" used=0 size f
  rm -rf "${staged}"
  mkdir -p "${staged}"
  while read -r size f; do
    [ "${size}" -le "${MAX_INPUT_BYTES}" ] || continue
    [ $((used + size)) -le "${CORPUS_BUDGET_BYTES}" ] || break
    cp "${f}" "${staged}/$(sha1sum <"${f}" | cut -c1-16)"
    used=$((used + size))
  done < <(find "${min}" -type f -printf '%s %p\n' | sort -n)
  rm -rf "${corpus}"
  mv "${staged}" "${corpus}"
  log "${target}: corpus now $(find "${corpus}" -type f | wc -l) files, ${used} bytes"
}

fuzz_one() {
  local target="$1" out="${WORK_DIR}/$1"
  rm -rf "${out}"
  mkdir -p "${out}"
  log "${target}: fuzzing for ${SECONDS_PER_TARGET}s"
  # The generous per-exec timeout (+: skip, not abort on, a slow seed) keeps
  # a busy shared machine from failing the dry run; real execs take ~20 us.
  cargo afl fuzz -i "${CORPUS_ROOT}/${target}" -o "${out}" -V "${SECONDS_PER_TARGET}" \
    -G "${MAX_INPUT_BYTES}" -t "${EXEC_TIMEOUT_MS}+" -- "${BIN_DIR}/${target}" >"${out}/afl.log" 2>&1 || {
    log "${target}: afl-fuzz failed; see ${out}/afl.log"
    tail -20 "${out}/afl.log" >&2
    return 1
  }
}

main() {
  ensure_tools
  build_harness
  local target failed=0 summary=()
  for target in "${TARGETS[@]}"; do
    fuzz_one "${target}" || { failed=1; continue; }
    summary+=("$(report "${target}" "${WORK_DIR}/${target}")") || failed=1
    collect_crashes "${target}" "${WORK_DIR}/${target}" || failed=1
    merge_corpus "${target}" "${WORK_DIR}/${target}"
  done
  printf '\n== fuzz summary (%ss per target)\n' "${SECONDS_PER_TARGET}"
  printf '%s\n' "${summary[@]}"
  if [ "${failed}" -ne 0 ]; then
    log "crashes or failures above; crashing inputs are in ${ARTIFACTS_ROOT}"
    return 1
  fi
}

main
