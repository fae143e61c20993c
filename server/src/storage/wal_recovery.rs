//! Reading the WAL back at startup: segment listing, record scanning,
//! torn-tail detection and the replay of truncation/snapshot records.

use std::io::{self, BufReader, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use super::wal::{WalError, WalOptions};
use super::wal_fs::{ReadSeek, WalFs};
use super::wal_record::{
    FRAME_HEADER_BYTES, FrameError, HeaderError, SEGMENT_HEADER_BYTES, SegmentHeader, WalRecord,
    decode_frame, frame_body_len,
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
                if self.entries.last().is_some_and(|e| e.index < index) {
                    self.entries.clear();
                }
            }
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
        resolve_bad_frame(path, is_last, file_len, opts, bad, reader.into_inner())?;
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

/// Reads records until EOF or the first bad frame (returned).
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
    while offset < file_len {
        let rec = match read_frame(reader, file_len - offset, opts.max_record_bytes, &mut buf) {
            Ok(Ok((rec, _))) => rec,
            Ok(Err(e)) => {
                return Ok(Some(BadFrame {
                    offset,
                    reason: e.to_string(),
                }));
            }
            Err(e) => return Err(WalError::io(path, e)),
        };
        if let WalRecord::Entry(e) = &rec {
            scan.max_entry_index = scan.max_entry_index.max(e.index);
        }
        state
            .apply(rec)
            .map_err(|reason| WalError::corrupt(path, offset, reason))?;
        offset += buf.len() as u64;
        scan.valid_bytes = offset;
    }
    Ok(None)
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

/// Decides whether a bad frame is a torn tail (`Ok`) or corruption (`Err`).
/// It is a torn tail only in the last segment and only if no valid record
/// starts anywhere after it: a valid record after a bad one means data that
/// was once durable is damaged, and the node must stop rather than skip it.
fn resolve_bad_frame(
    path: &Path,
    is_last: bool,
    file_len: u64,
    opts: &WalOptions,
    bad: BadFrame,
    mut reader: Box<dyn ReadSeek>,
) -> Result<(), WalError> {
    if !is_last {
        return Err(WalError::corrupt(path, bad.offset, bad.reason));
    }
    let tail_len = file_len - bad.offset;
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
    if let Some(pos) = first_valid_frame_after(&tail, opts.max_record_bytes) {
        let reason = format!(
            "{}; a valid record follows at offset {}",
            bad.reason,
            bad.offset + pos as u64
        );
        return Err(WalError::corrupt(path, bad.offset, reason));
    }
    Ok(())
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
