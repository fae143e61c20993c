//! Fuzz-target bodies: one function per target, shared by the AFL harness
//! (`server/fuzz`, driven by `scripts/fuzz.sh`) and the corpus replay test
//! (`server/tests/fuzz_corpus_replay.rs`), so CI replays every committed
//! corpus file through exactly the code the fuzzer ran.
//!
//! Each function takes arbitrary bytes, drives one decoder of untrusted input
//! and panics only when a property breaks: no decoder panics, a decoded value
//! re-encodes to the bytes it came from (or to a canonical form that decodes
//! to the same value), and no single allocation exceeds
//! [`MAX_SINGLE_ALLOC_BYTES`] (enforced by [`CappedAlloc`], which the harness
//! and the replay test install as their global allocator).
//!
//! Not part of the server's API: hidden from the docs, used only by tooling.

use std::alloc::{GlobalAlloc, Layout, System};
use std::io::Cursor;
use std::path::Path;
use std::sync::Arc;

use crate::api::protocol::{Check, Reply, Request, check, parse};
use crate::raft::{ConfChange, ConfChangeType, Entry, EntryKind, HardState};
use crate::storage::mvcc_codec::command_bytes;
use crate::storage::snapshot_codec::{decode_snapshot, encode_snapshot, verify_snapshot};
use crate::storage::wal_fs::SimFs;
use crate::storage::wal_record::{
    FRAME_HEADER_BYTES, SEGMENT_HEADER_BYTES, SegmentHeader, WalRecord, decode_frame,
};
use crate::storage::wal_recovery::segment_name;
use crate::storage::{
    ApplyError, ApplyOutcome, Command, SnapshotLimits, StateMachine, Wal, WalOptions,
};

/// Largest single allocation any target may make. Every decoder here runs
/// with limits of at most 64 KiB and inputs of at most 1 MiB (AFL's default),
/// so an allocation of this size means a length field was trusted.
pub const MAX_SINGLE_ALLOC_BYTES: usize = 32 << 20;

/// A global allocator that refuses any single allocation above
/// [`MAX_SINGLE_ALLOC_BYTES`]: the process then aborts with "memory
/// allocation of N bytes failed", which the fuzzer records as a crash.
pub struct CappedAlloc;

// SAFETY: every call is forwarded unchanged to `System`, except oversize
// requests, which return null as the `GlobalAlloc` contract allows.
unsafe impl GlobalAlloc for CappedAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.size() > MAX_SINGLE_ALLOC_BYTES {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if new_size > MAX_SINGLE_ALLOC_BYTES {
            return std::ptr::null_mut();
        }
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

/// A fuzz target's body.
pub type TargetFn = fn(&[u8]);

/// Every target by name (the name is the harness binary and corpus folder).
pub const TARGETS: &[(&str, TargetFn)] = &[
    ("tcp_line_parser", tcp_line_parser),
    ("wal_record", wal_record),
    ("snapshot_decode", snapshot_decode),
    ("state_machine_command", state_machine_command),
    ("grpc_request", grpc_request),
];

/// Looks a target up by name.
pub fn target(name: &str) -> Option<TargetFn> {
    TARGETS.iter().find(|(n, _)| *n == name).map(|(_, f)| *f)
}

/// Line limit for the TCP target: small, so oversize handling runs often.
const TCP_MAX_LINE_BYTES: usize = 64;

/// The TCP line protocol: framing with [`check`], then [`parse`] on each
/// line. `check` never claims bytes that do not exist; every parsed request
/// renders back to a line that parses to the same request; every reply the
/// request can produce (including the error text) is exactly one line.
pub fn tcp_line_parser(data: &[u8]) {
    let mut rest = data;
    loop {
        match check(rest, TCP_MAX_LINE_BYTES) {
            Check::Complete { line_len, consumed } => {
                assert!(line_len <= TCP_MAX_LINE_BYTES && line_len < consumed);
                assert!(consumed <= rest.len() && rest[consumed - 1] == b'\n');
                assert!(!rest[..line_len].contains(&b'\n'));
                tcp_line_round_trip(&rest[..line_len]);
                rest = &rest[consumed..];
            }
            Check::Incomplete => {
                assert!(rest.len() <= TCP_MAX_LINE_BYTES + 1 && !rest.contains(&b'\n'));
                break;
            }
            Check::TooLong => {
                assert!(rest.len() > TCP_MAX_LINE_BYTES);
                break;
            }
        }
    }
    tcp_line_round_trip(data);
}

fn tcp_line_round_trip(line: &[u8]) {
    let req = match parse(line) {
        Ok(req) => req,
        Err(e) => return assert_one_line(&Reply::Err(e.to_string())),
    };
    let rendered = match &req {
        Request::Get { key } => [b"GET ".as_slice(), key].concat(),
        Request::Set { key, value } => {
            assert_one_line(&Reply::Value(value.clone()));
            [b"SET ".as_slice(), key, b" ", value].concat()
        }
        Request::Delete { key } => [b"DELETE ".as_slice(), key].concat(),
        Request::Ping => b"PING".to_vec(),
    };
    assert_eq!(parse(&rendered), Ok(req), "re-rendered line {rendered:?}");
}

/// A reply must be one line: exactly one `\n`, at the end, and no `\r`.
pub fn assert_one_line(reply: &Reply) {
    let mut out = Vec::new();
    reply.encode(&mut out);
    let newlines = out.iter().filter(|&&b| b == b'\n').count();
    assert!(
        newlines == 1 && out.last() == Some(&b'\n') && !out.contains(&b'\r'),
        "reply {reply:?} is not exactly one line: {out:?}"
    );
}

/// Record limit for the WAL target.
const WAL_MAX_RECORD_BYTES: u32 = 1 << 16;

/// The WAL: a stream of record frames decodes frame by frame, each decoded
/// record re-encodes to exactly its frame; a segment header decodes only if
/// it re-encodes to the same 32 bytes; and the same bytes, as the body of a
/// segment, either recover or fail cleanly, and a recovered WAL reopens to
/// the same state (recovery is idempotent).
pub fn wal_record(data: &[u8]) {
    let mut rest = data;
    while let Ok((record, used)) = decode_frame(rest, WAL_MAX_RECORD_BYTES) {
        assert!(used > FRAME_HEADER_BYTES && used <= rest.len());
        assert!(used - FRAME_HEADER_BYTES <= WAL_MAX_RECORD_BYTES as usize);
        let mut again = Vec::new();
        record.encode_into(&mut again);
        assert_eq!(again, &rest[..used], "re-encoded {record:?}");
        if let WalRecord::Entry(e) = &record {
            assert_eq!(WalRecord::entry_frame_bytes(e), used);
        }
        rest = &rest[used..];
    }
    if let Some(header) = data.first_chunk::<SEGMENT_HEADER_BYTES>()
        && let Ok(h) = SegmentHeader::decode(header)
    {
        assert_eq!(&h.encode(), header);
    }
    wal_segment_recovery(data);
}

/// What a recovery found, compared across two opens.
type Recovered = (HardState, Option<(u64, u64)>, Vec<Entry>);

fn wal_segment_recovery(body: &[u8]) {
    let fs = SimFs::new();
    let dir = Path::new("/fuzz/wal");
    let header = SegmentHeader {
        seq: 1,
        first_index: 1,
    };
    let segment = [header.encode().as_slice(), body].concat();
    fs.write_all(&dir.join(segment_name(1)), segment);
    let opts = WalOptions {
        segment_bytes: 1 << 20,
        max_record_bytes: WAL_MAX_RECORD_BYTES,
        max_batch_bytes: 1 << 20,
        max_tail_scan_bytes: 1 << 20,
        fs: Arc::new(fs),
        ..WalOptions::default()
    };
    let open = |opts: &WalOptions| -> Option<Recovered> {
        let (wal, rec) = Wal::open(dir, opts.clone()).ok()?;
        drop(wal);
        Some((rec.hard_state, rec.snapshot, rec.entries))
    };
    if let Some(first) = open(&opts) {
        let entries = &first.2;
        assert!(entries.windows(2).all(|w| w[1].index == w[0].index + 1));
        let second = open(&opts);
        assert_eq!(second.as_ref(), Some(&first), "reopen differs");
    }
}

/// Limits for the snapshot target: small, so limit checks run often.
const SNAPSHOT_LIMITS: SnapshotLimits = SnapshotLimits {
    max_header_bytes: 1 << 16,
    max_key_bytes: 1 << 12,
    max_value_bytes: 1 << 12,
    max_leases: 1 << 12,
};

/// The snapshot decoder: [`decode_snapshot`] and [`verify_snapshot`] agree;
/// a decoded snapshot has exactly its header's key count, index and members;
/// re-encoding it gives the same body bytes and decodes to the same state.
pub fn snapshot_decode(data: &[u8]) {
    let decoded = decode_snapshot(&mut Cursor::new(data), &SNAPSHOT_LIMITS);
    let verified = verify_snapshot(&mut Cursor::new(data), &SNAPSHOT_LIMITS);
    let (header, sm) = match (decoded, verified) {
        (Ok((header, sm)), Ok(v)) => {
            assert_eq!(v, header);
            (header, sm)
        }
        (Err(_), Err(_)) => return,
        (d, v) => panic!("decode and verify disagree: {:?} vs {:?}", d.err(), v.err()),
    };
    assert_eq!(sm.len() as u64, header.key_count);
    assert_eq!(sm.applied_index(), header.meta.index);
    assert_eq!(sm.members(), &header.members);
    let again = encode_or_panic(&header.meta, &sm);
    assert_eq!(body_of(&again), body_of(data), "body is not canonical");
    let Ok((header2, sm2)) = decode_snapshot(&mut Cursor::new(&again), &SNAPSHOT_LIMITS) else {
        panic!("a re-encoded snapshot does not decode");
    };
    assert_eq!(header2, header);
    assert!(
        sm2.iter().eq(sm.iter()),
        "contents differ after a round trip"
    );
    assert_eq!(encode_or_panic(&header2.meta, &sm2), again);
}

fn encode_or_panic(meta: &crate::raft::SnapshotMeta, sm: &StateMachine) -> Vec<u8> {
    let mut out = Vec::new();
    if let Err(e) = encode_snapshot(&mut out, meta, sm) {
        panic!("encoding into memory failed: {e}");
    }
    out
}

/// The bytes after the header (magic, version, length, body, CRC).
fn body_of(snapshot: &[u8]) -> &[u8] {
    let len = snapshot
        .get(12..16)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u32::from_le_bytes) as usize;
    snapshot.get(16 + len + 4..).unwrap_or_default()
}

/// The state machine: a [`Command`] decodes only from its exact encoding;
/// then the input, cut into entries (`kind u8 | len u8 | data`), is applied
/// and each outcome is checked against the map, a replayed entry changes
/// nothing, and the final state survives a snapshot round trip.
pub fn state_machine_command(data: &[u8]) {
    if let Ok(cmd) = Command::decode(data) {
        assert_eq!(cmd.encode(), data, "decoded {cmd:?}");
    }
    let mut sm = StateMachine::new();
    let mut rest = data;
    let mut index = 0;
    while let [kind, len, tail @ ..] = rest {
        let len = usize::from(*len).min(tail.len());
        index += 1;
        let kind = match kind % 3 {
            0 => EntryKind::Normal,
            1 => EntryKind::ConfChange,
            _ => EntryKind::Noop,
        };
        let entry = Entry {
            index,
            term: 1,
            kind,
            data: tail[..len].to_vec(),
        };
        apply_and_check(&mut sm, &entry);
        rest = &tail[len..];
    }
    let meta = crate::raft::SnapshotMeta {
        index: sm.applied_index(),
        ..Default::default()
    };
    let bytes = encode_or_panic(&meta, &sm);
    let limits = SnapshotLimits::default();
    let Ok((_, loaded)) = decode_snapshot(&mut Cursor::new(&bytes), &limits) else {
        panic!("a state machine's own snapshot does not decode");
    };
    assert!(loaded.iter().eq(sm.iter()) && loaded.members() == sm.members());
}

fn apply_and_check(sm: &mut StateMachine, entry: &Entry) {
    let outcome = sm.apply(entry);
    assert_eq!(sm.applied_index(), entry.index);
    match (&outcome, entry.kind) {
        (ApplyOutcome::Write(w), EntryKind::Normal) => {
            let Ok(cmd) = Command::decode(command_bytes(&entry.data)) else {
                panic!("a write ran from bytes that do not decode");
            };
            check_write(sm, &cmd, w.succeeded);
        }
        (ApplyOutcome::Rejected(ApplyError::MalformedCommand(_)), EntryKind::Normal) => {
            assert!(Command::decode(command_bytes(&entry.data)).is_err());
        }
        // The store refused a well-formed command (e.g. a put with a lease
        // that was never granted): nothing changed but the applied index.
        (ApplyOutcome::Rejected(ApplyError::Mvcc(_)), EntryKind::Normal) => {
            assert!(Command::decode(command_bytes(&entry.data)).is_ok());
        }
        (ApplyOutcome::ConfChange(cc), EntryKind::ConfChange) => check_conf_change(sm, cc),
        (ApplyOutcome::Rejected(_), EntryKind::ConfChange)
        | (ApplyOutcome::Noop, EntryKind::Noop) => {}
        (other, kind) => panic!("{kind:?} entry gave {other:?}"),
    }
    let before: Vec<_> = sm.iter().collect();
    let replay = sm.apply(entry);
    assert!(matches!(
        replay,
        ApplyOutcome::Rejected(ApplyError::AlreadyApplied { .. })
    ));
    assert!(sm.iter().eq(before));
}

/// A key's version is its `mod_revision`: a successful put carries the
/// store's current revision; a refused one left the key older than that.
fn check_write(sm: &StateMachine, cmd: &Command, succeeded: bool) {
    let revision = u64::try_from(sm.kv().revision()).unwrap_or(0);
    match (cmd, succeeded) {
        (Command::Put { key, value, .. }, true) => {
            let stored = sm.get(key).expect("in-memory reads cannot fail");
            assert!(stored.is_some_and(|v| *v.value == **value && v.version == revision));
        }
        (Command::Delete { key, .. }, true) => assert!(sm.get(key).is_ok_and(|v| v.is_none())),
        (Command::Put { key, .. } | Command::Delete { key, .. }, false) => {
            assert!(
                sm.get(key)
                    .is_ok_and(|v| v.is_none_or(|v| v.version <= revision))
            );
        }
        // Their outcomes are checked by the MVCC store's own model tests;
        // here they must only apply without panicking and replay as no-ops.
        (Command::Txn(_) | Command::Compact(_), _) => {}
        (Command::LeaseGrant { id, ttl_s }, true) => {
            assert!(sm.kv().lease(*id).is_some_and(|l| l.ttl_s == *ttl_s));
        }
        (Command::LeaseRevoke(id), true) => assert!(sm.kv().lease(*id).is_none()),
        (Command::LeaseGrant { .. } | Command::LeaseRevoke(_), false) => {}
    }
}

fn check_conf_change(sm: &StateMachine, cc: &ConfChange) {
    match cc.change {
        ConfChangeType::AddLearner => assert!(sm.members().contains_key(&cc.node_id)),
        ConfChangeType::RemoveNode => assert!(!sm.members().contains_key(&cc.node_id)),
        ConfChangeType::PromoteLearner => {}
    }
}

/// gRPC request validation: the first byte picks the `titan.v1.KV` call,
/// the rest is its protobuf body, decoded as tonic would and passed through
/// the service's own conversion and checks (see
/// [`crate::transport::kv_fuzz::kv_request`]).
pub fn grpc_request(data: &[u8]) {
    crate::transport::kv_fuzz::kv_request(data);
}

/// Seed inputs per target: a few valid encodings, so the fuzzer starts
/// inside the format rather than at its magic bytes. `scripts/fuzz.sh`
/// writes them into an empty corpus; the replay test runs them too.
pub fn seeds(name: &str) -> Vec<Vec<u8>> {
    match name {
        "tcp_line_parser" => tcp_seeds(),
        "wal_record" => wal_seeds(),
        "snapshot_decode" => snapshot_seeds(),
        "state_machine_command" => command_seeds(),
        "grpc_request" => crate::transport::kv_fuzz::seeds(),
        _ => Vec::new(),
    }
}

fn tcp_seeds() -> Vec<Vec<u8>> {
    let lines: [&[u8]; 5] = [
        b"GET k\n",
        b"SET user:1 {\"a\": 1}\r\nGET user:1\n",
        b"DELETE k\nDEL k\nPING\n",
        b"set k \tv\nFLY k\n\n",
        b"GET k\x01\nSET k v\x00\n",
    ];
    let mut seeds: Vec<Vec<u8>> = lines.iter().map(|l| l.to_vec()).collect();
    seeds.push([b"SET k ".as_slice(), &[b'x'; 80], b"\nPING\n"].concat());
    seeds
}

fn wal_seeds() -> Vec<Vec<u8>> {
    let records = [
        WalRecord::Entry(Entry {
            index: 1,
            term: 1,
            kind: EntryKind::Normal,
            data: command_seeds().swap_remove(0),
        }),
        WalRecord::HardState(HardState {
            term: 1,
            vote: 1,
            commit: 1,
        }),
        WalRecord::Truncate { from_index: 1 },
        WalRecord::Snapshot { index: 1, term: 1 },
    ];
    let mut all = Vec::new();
    let mut seeds = Vec::new();
    for r in &records {
        let mut one = Vec::new();
        r.encode_into(&mut one);
        all.extend_from_slice(&one);
        seeds.push(one);
    }
    seeds.push(all);
    seeds
}

fn snapshot_seeds() -> Vec<Vec<u8>> {
    let mut sm = StateMachine::new();
    let mut index = 0;
    for data in command_seeds() {
        index += 1;
        sm.apply(&Entry {
            index,
            term: 1,
            kind: EntryKind::Normal,
            data,
        });
    }
    let mut meta = crate::raft::SnapshotMeta {
        index,
        term: 1,
        ..Default::default()
    };
    meta.conf.voters.insert(1);
    meta.conf.learners.insert(2);
    vec![
        encode_or_panic(&meta, &sm),
        encode_or_panic(&Default::default(), &StateMachine::new()),
    ]
}

fn command_seeds() -> Vec<Vec<u8>> {
    use crate::storage::Condition;
    [
        Command::Put {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            cond: Condition::None,
        },
        Command::Put {
            key: b"user:1".to_vec(),
            value: b"{\"a\": 1}".to_vec(),
            cond: Condition::ExpectedVersion(1),
        },
        Command::Delete {
            key: b"k".to_vec(),
            cond: Condition::MustBeAbsent,
        },
    ]
    .iter()
    .map(Command::encode)
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::protocol::ParseError;

    #[test]
    fn every_target_accepts_its_seeds_and_empty_input() {
        for (name, f) in TARGETS {
            f(&[]);
            let seeds = seeds(name);
            assert!(!seeds.is_empty(), "{name} has no seeds");
            for s in seeds {
                f(&s);
            }
        }
    }

    #[test]
    fn parse_error_text_is_one_line() {
        assert_one_line(&Reply::Err(
            ParseError::UnknownCommand("a\nb".into()).to_string(),
        ));
    }
}
