//! CI's half of fuzzing: every committed corpus file
//! (`server/fuzz/corpus/<target>/*`, grown by `scripts/fuzz.sh`) and every
//! target's seeds run through the same target function the AFL harness runs
//! (`titan_server::fuzzing`), under the same allocation cap. A failure names
//! the file; reproduce it with the harness binary (`<target> < file`).

use std::path::{Path, PathBuf};

use titan_server::fuzzing::{self, CappedAlloc, TARGETS};

#[global_allocator]
static ALLOC: CappedAlloc = CappedAlloc;

/// The committed corpora stay small enough to review and clone.
const MAX_CORPUS_TOTAL_BYTES: u64 = 512 << 10;

fn corpus_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus")
}

fn corpus_files(target: &str) -> Vec<PathBuf> {
    let dir = corpus_root().join(target);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("corpus folder {} is missing: {e}", dir.display()))
        .map(|e| e.expect("readable corpus entry").path())
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files
}

/// Replays seeds and corpus through `target`; returns how many inputs ran.
fn replay(target: &str) -> usize {
    let f = fuzzing::target(target).expect("a known target");
    for (n, seed) in fuzzing::seeds(target).iter().enumerate() {
        let run = std::panic::catch_unwind(|| f(seed));
        assert!(run.is_ok(), "{target}: seed {n} broke a property");
    }
    let files = corpus_files(target);
    for path in &files {
        let data = std::fs::read(path).expect("readable corpus file");
        let run = std::panic::catch_unwind(|| f(&data));
        assert!(run.is_ok(), "{target}: {} broke a property", path.display());
    }
    assert!(!files.is_empty(), "{target}: the committed corpus is empty");
    files.len()
}

#[test]
fn tcp_line_parser_corpus_keeps_framing_and_round_trips() {
    replay("tcp_line_parser");
}

#[test]
fn wal_record_corpus_round_trips_and_recovers_idempotently() {
    replay("wal_record");
}

#[test]
fn snapshot_decode_corpus_decodes_canonically_or_fails_cleanly() {
    replay("snapshot_decode");
}

#[test]
fn state_machine_command_corpus_applies_consistently() {
    replay("state_machine_command");
}

#[test]
fn grpc_request_corpus_passes_the_edge_checks() {
    replay("grpc_request");
}

#[test]
fn every_corpus_folder_belongs_to_a_target_and_all_stay_small() {
    let mut total = 0;
    for entry in std::fs::read_dir(corpus_root()).expect("corpus root") {
        let path = entry.expect("entry").path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(
            TARGETS.iter().any(|(t, _)| *t == name),
            "corpus folder {name} has no target"
        );
        for file in corpus_files(name) {
            total += std::fs::metadata(file).expect("metadata").len();
        }
    }
    assert!(
        total <= MAX_CORPUS_TOTAL_BYTES,
        "corpora hold {total} bytes, budget {MAX_CORPUS_TOTAL_BYTES}"
    );
}
