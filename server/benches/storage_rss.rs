//! Memory use of the state machine: 1M keys of 16 B with 256 B values,
//! reported as resident-set growth (from /proc/self/status) against the raw
//! key + value bytes. Target: at most 2x raw.
//!
//! Run: `cargo bench -p titan-server --bench storage_rss`

use titan_server::raft::{Entry, EntryKind};
use titan_server::storage::{Command, Condition, StateMachine};

const KEYS: u64 = 1_000_000;
const KEY_BYTES: usize = 16;
const VALUE_BYTES: usize = 256;

/// Resident set size in bytes, from `VmRSS` in /proc/self/status.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn main() {
    let before = rss_bytes();
    let mut sm = StateMachine::new();
    for i in 1..=KEYS {
        let cmd = Command::Put {
            key: format!("{i:016}").into_bytes(),
            value: vec![(i % 251) as u8; VALUE_BYTES],
            cond: Condition::None,
        };
        sm.apply(&Entry {
            index: i,
            term: 1,
            kind: EntryKind::Normal,
            data: cmd.encode(),
        });
    }
    let after = rss_bytes();
    let raw = KEYS * (KEY_BYTES + VALUE_BYTES) as u64;
    let used = after.saturating_sub(before);
    println!(
        "state machine 1M keys: RSS growth {:.1} MiB, raw {:.1} MiB, ratio {:.2}x (RSS before {:.1} MiB, after {:.1} MiB)",
        used as f64 / 1048576.0,
        raw as f64 / 1048576.0,
        used as f64 / raw as f64,
        before as f64 / 1048576.0,
        after as f64 / 1048576.0
    );
    assert_eq!(sm.len() as u64, KEYS);
}
