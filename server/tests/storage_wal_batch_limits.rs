//! Regression: the Raft core's per-Ready byte
//! accounting and the WAL's batch limit use one size function
//! (`raft::entry_record_bytes`), so a burst of large values can never build
//! a batch the WAL refuses.

use std::path::Path;

use titan_server::raft::{
    Config, ENTRY_RECORD_OVERHEAD_BYTES, Entry, EntryKind, HardState, MemStorage, RawNode, Role,
    Storage,
};
use titan_server::storage::wal::BATCH_NON_ENTRY_BYTES;
use titan_server::storage::{Wal, WalError, WalOptions};

/// Small limits so the boundary is cheap to reach.
fn small_limits() -> WalOptions {
    WalOptions {
        max_record_bytes: 64 << 10,
        max_batch_bytes: 1 << 20,
        ..WalOptions::default()
    }
}

fn entry(index: u64, data_len: usize) -> Entry {
    Entry {
        index,
        term: 1,
        kind: EntryKind::Normal,
        data: vec![0xab; data_len],
    }
}

/// Entries starting at `first` whose record bytes add up to exactly `total`
/// (full-size records, then one that takes the rest).
fn entries_totalling(first: u64, total: usize, opts: &WalOptions) -> Vec<Entry> {
    let record_max = opts.max_entry_data_bytes() + ENTRY_RECORD_OVERHEAD_BYTES;
    let mut out = Vec::new();
    let mut left = total;
    while left >= record_max + ENTRY_RECORD_OVERHEAD_BYTES {
        out.push(entry(first + out.len() as u64, opts.max_entry_data_bytes()));
        left -= record_max;
    }
    out.push(entry(
        first + out.len() as u64,
        left - ENTRY_RECORD_OVERHEAD_BYTES,
    ));
    out
}

fn open(dir: &Path, opts: WalOptions) -> Wal {
    Wal::open(dir, opts).expect("open wal").0
}

#[test]
fn a_batch_of_exactly_the_ready_budget_with_truncate_and_hard_state_is_accepted() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_limits();
    let budget = opts.max_entry_bytes_per_batch();
    let wal = open(dir.path(), opts.clone());
    wal.append(&[entry(1, 10), entry(2, 10)], None).unwrap();
    // Starts at index 2: the batch also carries a Truncate record.
    let batch = entries_totalling(2, budget, &opts);
    let total: usize = batch.iter().map(Entry::size_bytes).sum();
    assert_eq!(total, budget);
    let hs = HardState {
        term: u64::MAX,
        vote: u64::MAX,
        commit: 1,
    };
    wal.append(&batch, Some(hs))
        .expect("the budget fits one batch");
    assert_eq!(
        budget + BATCH_NON_ENTRY_BYTES,
        small_limits().max_batch_bytes as usize
    );
}

#[test]
fn one_byte_over_the_batch_limit_is_refused_as_too_large() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_limits();
    let wal = open(dir.path(), opts.clone());
    wal.append(&[entry(1, 10), entry(2, 10)], None).unwrap();
    let mut batch = entries_totalling(2, opts.max_entry_bytes_per_batch(), &opts);
    batch.last_mut().unwrap().data.push(0);
    let err = wal
        .append(&batch, Some(HardState::default()))
        .expect_err("over the batch limit");
    assert!(matches!(err, WalError::TooLarge { .. }), "{err}");
}

#[test]
fn a_record_of_exactly_max_entry_data_bytes_is_accepted_and_one_more_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_limits();
    let wal = open(dir.path(), opts.clone());
    let max = opts.max_entry_data_bytes();
    wal.append(&[entry(1, max)], None).unwrap();
    let err = wal.append(&[entry(2, max + 1)], None).unwrap_err();
    assert!(matches!(err, WalError::TooLarge { .. }), "{err}");
}

/// A leader with a large burst of max-size proposals hands them out over
/// several Readys, each of which the WAL accepts, and every one commits.
#[test]
fn a_burst_of_max_size_values_commits_through_a_real_wal() {
    let dir = tempfile::tempdir().unwrap();
    let opts = small_limits();
    let wal = open(dir.path(), opts.clone());
    let mut cfg = Config::new(1);
    cfg.max_ready_entry_bytes = opts.max_entry_bytes_per_batch();
    cfg.max_uncommitted_bytes = 64 << 20;
    let storage = MemStorage::new_bootstrapped(&[(1, vec![])]);
    let mut node = RawNode::new(&cfg, storage).unwrap();
    // The bootstrap entries are in MemStorage only; mirror them into the WAL.
    let last = node.storage().last_index();
    let boot = node.storage().entries(1, last + 1, usize::MAX).unwrap();
    wal.append(&boot, None).unwrap();
    node.campaign();
    drive(&mut node, &wal);
    assert_eq!(node.status().role, Role::Leader);
    let value_len = opts.max_entry_data_bytes();
    let burst = 3 * (opts.max_batch_bytes as usize) / value_len;
    let (first, _) = node
        .propose_batch(vec![vec![7u8; value_len]; burst])
        .unwrap();
    let readys = drive(&mut node, &wal);
    let last = first + burst as u64 - 1;
    assert_eq!(node.status().commit, last, "every value committed");
    assert_eq!(node.status().applied, last);
    assert!(readys >= 3, "the burst was split over {readys} Readys");
}

/// Persists every Ready into `wal` (and MemStorage) until quiet; returns how
/// many Readys carried entries.
fn drive(node: &mut RawNode<MemStorage>, wal: &Wal) -> usize {
    let mut with_entries = 0;
    for _ in 0..1000 {
        if !node.has_ready() {
            break;
        }
        let rd = node.ready();
        wal.append(&rd.entries, rd.hard_state)
            .expect("the WAL accepts every Ready");
        with_entries += usize::from(!rd.entries.is_empty());
        node.storage_mut().append(&rd.entries).unwrap();
        if let Some(hs) = rd.hard_state {
            node.storage_mut().set_hard_state(hs);
        }
        node.advance(rd);
    }
    with_entries
}

/// A follower handed more than one Ready's worth of entries persists them
/// over several Readys; its ack waits for the last one, and the durable
/// commit index never points past what is durable.
#[test]
fn a_follower_acks_a_large_append_only_after_every_entry_is_handed_out() {
    use titan_server::raft::{Message, MessageType};
    let mut cfg = Config::new(2);
    cfg.max_ready_entry_bytes = 100 << 10;
    let storage = MemStorage::new_bootstrapped(&[(1, vec![]), (2, vec![])]);
    let mut node = RawNode::new(&cfg, storage).unwrap();
    let last = node.storage().last_index();
    let last_term = node.storage().term(last).unwrap();
    let term = last_term + 1;
    let mut append = Message::new(MessageType::Append, 1, 2, term);
    append.index = last;
    append.log_term = last_term;
    append.entries = (1..=4)
        .map(|i| Entry {
            index: last + i,
            term,
            kind: EntryKind::Normal,
            data: vec![1; 40 << 10],
        })
        .collect();
    append.commit = last + 4;
    node.step(append).unwrap();
    let rd = node.ready();
    assert_eq!(rd.entries.len(), 2, "two 40 KiB entries fit 100 KiB");
    assert!(
        rd.persisted_messages.is_empty(),
        "no ack before all are durable"
    );
    let commit = rd.hard_state.map_or(0, |h| h.commit);
    assert!(
        commit <= last + 2,
        "durable commit {commit} past durable entries"
    );
    node.storage_mut().append(&rd.entries).unwrap();
    node.advance(rd);
    let rd = node.ready();
    assert_eq!(rd.entries.last().map(|e| e.index), Some(last + 4));
    let ack = rd
        .persisted_messages
        .iter()
        .find(|m| m.msg_type == MessageType::AppendResp)
        .expect("ack once the rest is handed out");
    assert_eq!((ack.index, ack.reject), (last + 4, false));
    assert_eq!(rd.hard_state.map(|h| h.commit), Some(last + 4));
}
