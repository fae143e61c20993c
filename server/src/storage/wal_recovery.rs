//! Reading the WAL back at startup: segment listing, record scanning,
//! torn-tail detection and the replay of truncation/snapshot records.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::wal::{WalError, WalOptions};
use super::wal_fs::{ReadSeek, WalFs};
use super::wal_record::{
    FRAME_HEADER_BYTES, FrameError, HeaderError, SEGMENT_HEADER_BYTES, SYNCED_BODY_BYTES,
    SegmentHeader, WalRecord, decode_frame, frame_body_len,
};
use crate::raft::{Entry, HardState};

/// Segment file extension.
pub(crate) const SEGMENT_EXT: &str = ".wal";

/// The file name of segment `seq`.
pub(crate) fn segment_name(seq: u64) -> String {
    format!("{seq:020}{SEGMENT_EXT}")
}

/// Parses a segment file name back to its sequence number.
fn parse_segment_name(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(SEGMENT_EXT)?;
    if stem.len() != 20 || !stem.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    stem.parse().ok()
}

/// Sequence numbers of the segments in `dir`, oldest first, checked to be
/// consecutive (a hole means a segment was lost).
pub(crate) fn list_segments(fs: &dyn WalFs, dir: &Path) -> Result<Vec<u64>, WalError> {
    let names = fs.list(dir).map_err(|e| WalError::io(dir, e))?;
    let mut seqs: Vec<u64> = names.iter().filter_map(|n| parse_segment_name(n)).collect();
    seqs.sort_unstable();
    for pair in seqs.windows(2) {
        if pair[1] != pair[0] + 1 {
            return Err(WalError::MissingSegment {
                dir: dir.to_path_buf(),
                seq: pair[0] + 1,
            });
        }
    }
    Ok(seqs)
}

/// The log state rebuilt by replaying records in order.
#[derive(Debug, Default)]
pub(crate) struct ReplayState {
    /// Live entries, consecutive.
    pub entries: Vec<Entry>,
    /// The newest hard state record.
    pub hard_state: HardState,
    /// The newest snapshot marker `(index, term)`.
    pub snapshot: Option<(u64, u64)>,
}

impl ReplayState {
    /// Highest index the log covers (entries or snapshot).
    pub fn last_index(&self) -> u64 {
        let last_entry = self.entries.last().map_or(0, |e| e.index);
        last_entry.max(self.snapshot.map_or(0, |s| s.0))
    }

    /// Applies one record; `Err` carries a reason when the record breaks
    /// log continuity.
    fn apply(&mut self, rec: WalRecord) -> Result<(), String> {
        match rec {
            WalRecord::Entry(e) => {
                if let Some(last) = self.entries.last()
                    && e.index != last.index + 1
                {
                    return Err(format!(
                        "entry index {} does not follow {}",
                        e.index, last.index
                    ));
                }
                self.entries.push(e);
            }
            WalRecord::HardState(hs) => self.hard_state = hs,
            WalRecord::Truncate { from_index } => self.truncate_from(from_index),
            WalRecord::Snapshot { index, term } => {
                self.snapshot = Some((index, term));
                // As the in-memory log (`MemStorage::apply_snapshot`): the
                // entries after the snapshot survive only when the log
                // holds the snapshot's own entry (same index and term). A
                // snapshot installed over a log that diverged there (stale
                // entries from an older term) or that ends before it
                // discards the whole log.
                let first = self.entries.first().map_or(0, |e| e.index);
                let at = usize::try_from(index.wrapping_sub(first)).ok();
                let matches = match at.and_then(|i| self.entries.get(i)) {
                    Some(e) => e.term == term,
                    // Compaction removed the entry's segment: what is left
                    // follows the snapshot.
                    None => first > index,
                };
                if !matches {
                    self.entries.clear();
                }
            }
            // Durability claims matter only to torn-tail detection.
            WalRecord::Synced { .. } => {}
        }
        Ok(())
    }

    fn truncate_from(&mut self, from_index: u64) {
        let first = self.entries.first().map_or(0, |e| e.index);
        let keep = from_index.saturating_sub(first);
        self.entries
            .truncate(usize::try_from(keep).unwrap_or(usize::MAX));
    }
}

/// What scanning one segment found.
#[derive(Debug)]
pub(crate) struct SegmentScan {
    /// Bytes up to the end of the last valid record.
    pub valid_bytes: u64,
    /// Highest entry index written in the segment (0 if none).
    pub max_entry_index: u64,
    /// Bytes dropped from a torn tail (last segment only).
    pub dropped_bytes: u64,
    /// Whether the header itself was torn (the segment must be recreated).
    pub header_torn: bool,
    /// The segment's nonce (first `Synced` record); `None` in a version 1
    /// segment, whose tail is judged by the old, stricter rule.
    pub nonce: Option<u64>,
}

/// Where a bad frame was found and why.
struct BadFrame {
    offset: u64,
    reason: String,
}

/// Scans one segment into `state`. `is_last` enables torn-tail handling.
pub(crate) fn scan_segment(
    fs: &dyn WalFs,
    path: &Path,
    seq: u64,
    is_last: bool,
    opts: &WalOptions,
    state: &mut ReplayState,
) -> Result<SegmentScan, WalError> {
    let file_len = fs.len(path).map_err(|e| WalError::io(path, e))?;
    let mut reader = BufReader::with_capacity(
        1 << 20,
        fs.open_read(path).map_err(|e| WalError::io(path, e))?,
    );
    let mut scan = SegmentScan {
        valid_bytes: SEGMENT_HEADER_BYTES as u64,
        max_entry_index: 0,
        dropped_bytes: 0,
        header_torn: false,
        nonce: None,
    };
    let bad = match read_header(&mut reader, file_len, seq) {
        Ok(()) => scan_records(&mut reader, path, file_len, opts, state, &mut scan)?,
        Err(reason) => {
            scan.header_torn = true;
            scan.valid_bytes = 0;
            Some(BadFrame { offset: 0, reason })
        }
    };
    if let Some(bad) = bad {
        let tail = TailCheck {
            is_last,
            file_len,
            nonce: scan.nonce,
        };
        resolve_bad_frame(path, tail, opts, bad, reader.into_inner())?;
        scan.dropped_bytes = file_len - scan.valid_bytes;
    }
    Ok(scan)
}

fn read_header(reader: &mut impl Read, file_len: u64, seq: u64) -> Result<(), String> {
    if file_len < SEGMENT_HEADER_BYTES as u64 {
        return Err(format!("segment header cut short ({file_len} bytes)"));
    }
    let mut buf = [0u8; SEGMENT_HEADER_BYTES];
    reader.read_exact(&mut buf).map_err(|e| e.to_string())?;
    match SegmentHeader::decode(&buf) {
        Ok(h) if h.seq == seq => Ok(()),
        Ok(h) => Err(format!(
            "header sequence {} does not match file name {seq}",
            h.seq
        )),
        Err(HeaderError::Zeroed) => Err("segment header is zero-filled".into()),
        Err(e) => Err(e.to_string()),
    }
}

/// Reads records until EOF or the first bad frame (returned). Once the
/// segment's nonce is known (format version 2), records count only when the
/// `Synced` trailer that ends their batch is read, so a torn batch is
/// dropped whole and `valid_bytes` always ends at a batch boundary.
fn scan_records(
    reader: &mut impl Read,
    path: &Path,
    file_len: u64,
    opts: &WalOptions,
    state: &mut ReplayState,
    scan: &mut SegmentScan,
) -> Result<Option<BadFrame>, WalError> {
    let mut buf = Vec::new();
    let mut offset = SEGMENT_HEADER_BYTES as u64;
    let mut pending: Vec<WalRecord> = Vec::new();
    while offset < file_len {
        let bad = move |reason: String| Ok(Some(BadFrame { offset, reason }));
        let rec = match read_frame(reader, file_len - offset, opts.max_record_bytes, &mut buf) {
            Ok(Ok((rec, _))) => rec,
            Ok(Err(e)) => return bad(e.to_string()),
            Err(e) => return Err(WalError::io(path, e)),
        };
        offset += buf.len() as u64;
        let ends_batch = match (&rec, scan.nonce) {
            (WalRecord::Synced { nonce, .. }, None) => {
                scan.nonce = Some(*nonce);
                true
            }
            (WalRecord::Synced { nonce, .. }, Some(ours)) if *nonce != ours => {
                return bad(format!(
                    "batch trailer carries nonce {nonce:#x}, not the segment's"
                ));
            }
            (WalRecord::Synced { .. }, Some(_)) => true,
            (_, None) => {
                apply_record(rec, path, offset, state, scan)?;
                scan.valid_bytes = offset;
                continue;
            }
            (_, Some(_)) => false,
        };
        if ends_batch {
            for r in pending.drain(..) {
                apply_record(r, path, offset, state, scan)?;
            }
            scan.valid_bytes = offset;
        } else {
            pending.push(rec);
        }
    }
    if !pending.is_empty() {
        let reason = "the last batch has no trailer (torn write)".to_string();
        return Ok(Some(BadFrame {
            offset: scan.valid_bytes,
            reason,
        }));
    }
    Ok(None)
}

fn apply_record(
    rec: WalRecord,
    path: &Path,
    offset: u64,
    state: &mut ReplayState,
    scan: &mut SegmentScan,
) -> Result<(), WalError> {
    if let WalRecord::Entry(e) = &rec {
        scan.max_entry_index = scan.max_entry_index.max(e.index);
    }
    state
        .apply(rec)
        .map_err(|reason| WalError::corrupt(path, offset, reason))
}

type FrameResult = Result<(WalRecord, usize), FrameError>;

/// Reads one frame (bounded by `remaining` and `max_record_bytes`) into `buf`.
fn read_frame(
    reader: &mut impl Read,
    remaining: u64,
    max_record_bytes: u32,
    buf: &mut Vec<u8>,
) -> io::Result<FrameResult> {
    let short = |needed: u64| FrameError::Short {
        needed,
        available: remaining,
    };
    if remaining < FRAME_HEADER_BYTES as u64 {
        return Ok(Err(short(FRAME_HEADER_BYTES as u64)));
    }
    buf.clear();
    buf.resize(FRAME_HEADER_BYTES, 0);
    reader.read_exact(buf)?;
    let body_len = match frame_body_len(buf, max_record_bytes) {
        Ok(n) => n,
        Err(e) => return Ok(Err(e)),
    };
    let total = (FRAME_HEADER_BYTES + body_len) as u64;
    if total > remaining {
        return Ok(Err(short(total)));
    }
    buf.resize(FRAME_HEADER_BYTES + body_len, 0);
    reader.read_exact(&mut buf[FRAME_HEADER_BYTES..])?;
    Ok(decode_frame(buf, max_record_bytes))
}

/// What the torn-tail decision needs to know about the segment.
struct TailCheck {
    is_last: bool,
    file_len: u64,
    nonce: Option<u64>,
}

/// Decides whether a bad frame is a torn tail (`Ok`) or corruption (`Err`).
/// Only the last segment can have a torn tail. In a version 2 segment the
/// bad frame is corruption only if a later `Synced` record with the
/// segment's nonce claims bytes past it were durable: then data that was
/// once fsynced is damaged. Otherwise it lies in the unsynced tail, where a
/// valid-looking frame after it proves nothing (pages of an unsynced write
/// persist in any order, and a client value can embed a frame). A version 1
/// segment (no nonce) keeps the old rule: any valid frame after it refuses.
fn resolve_bad_frame(
    path: &Path,
    seg: TailCheck,
    opts: &WalOptions,
    bad: BadFrame,
    mut reader: Box<dyn ReadSeek>,
) -> Result<(), WalError> {
    if !seg.is_last {
        return Err(WalError::corrupt(path, bad.offset, bad.reason));
    }
    let tail_len = seg.file_len - bad.offset;
    if tail_len > opts.max_tail_scan_bytes {
        let reason = format!(
            "{}; the {tail_len}-byte tail exceeds max_tail_scan_bytes {}",
            bad.reason, opts.max_tail_scan_bytes
        );
        return Err(WalError::corrupt(path, bad.offset, reason));
    }
    let mut tail = Vec::new();
    let read = reader
        .seek(SeekFrom::Start(bad.offset))
        .and_then(|_| reader.take(tail_len).read_to_end(&mut tail));
    read.map_err(|e| WalError::io(path, e))?;
    let at = |pos: usize| bad.offset + pos as u64;
    let evidence = match seg.nonce {
        Some(nonce) => {
            durable_claim_after(&tail, nonce, bad.offset, opts.max_record_bytes).map(|(pos, n)| {
                format!(
                    "a later batch at offset {} records {n} bytes as durable",
                    at(pos)
                )
            })
        }
        None => first_valid_frame_after(&tail, opts.max_record_bytes)
            .map(|pos| format!("a valid record follows at offset {}", at(pos))),
    };
    match evidence {
        Some(evidence) => {
            let reason = format!("{}; {evidence}", bad.reason);
            Err(WalError::corrupt(path, bad.offset, reason))
        }
        None => Ok(()),
    }
}

/// The first `Synced` record inside `tail` (which starts at segment offset
/// `bad_offset`) that carries `nonce` and claims bytes past `bad_offset`
/// were durable: `(position in tail, synced_bytes)`.
pub(crate) fn durable_claim_after(
    tail: &[u8],
    nonce: u64,
    bad_offset: u64,
    max_record_bytes: u32,
) -> Option<(usize, u64)> {
    // A Synced frame's length field is always the same; skip other offsets cheaply.
    let synced_len = SYNCED_BODY_BYTES.to_le_bytes();
    let starts = (1..tail.len()).filter(|&pos| tail[pos..].starts_with(&synced_len));
    starts
        .into_iter()
        .find_map(|pos| match decode_frame(&tail[pos..], max_record_bytes) {
            Ok((
                WalRecord::Synced {
                    nonce: n,
                    synced_bytes,
                },
                _,
            )) if n == nonce && synced_bytes > bad_offset => Some((pos, synced_bytes)),
            _ => None,
        })
}

/// The offset (> 0) of the first well-formed frame inside `tail`, if any.
pub(crate) fn first_valid_frame_after(tail: &[u8], max_record_bytes: u32) -> Option<usize> {
    (1..tail.len()).find(|&pos| decode_frame(&tail[pos..], max_record_bytes).is_ok())
}

/// Everything recovered from the WAL directory, plus per-segment facts the
/// writer needs to continue.
pub(crate) struct Recovered {
    pub state: ReplayState,
    pub segments: Vec<RecoveredSegment>,
    pub dropped_tail_bytes: u64,
}

/// One segment as found on disk.
pub(crate) struct RecoveredSegment {
    pub seq: u64,
    pub path: PathBuf,
    pub scan: SegmentScan,
}

/// Scans every segment in `dir`, oldest first.
pub(crate) fn recover_dir(
    fs: &dyn WalFs,
    dir: &Path,
    opts: &WalOptions,
) -> Result<Recovered, WalError> {
    let seqs = list_segments(fs, dir)?;
    let mut state = ReplayState::default();
    let mut segments = Vec::with_capacity(seqs.len());
    let mut dropped_tail_bytes = 0;
    for (i, &seq) in seqs.iter().enumerate() {
        let path = dir.join(segment_name(seq));
        let scan = scan_segment(fs, &path, seq, i + 1 == seqs.len(), opts, &mut state)?;
        if scan.dropped_bytes > 0 {
            tracing::warn!(
                file = %path.display(),
                offset = scan.valid_bytes,
                dropped_bytes = scan.dropped_bytes,
                "WAL: truncating torn tail of the last segment"
            );
        }
        dropped_tail_bytes += scan.dropped_bytes;
        segments.push(RecoveredSegment { seq, path, scan });
    }
    Ok(Recovered {
        state,
        segments,
        dropped_tail_bytes,
    })
}
