//! WAL on-disk encoding: the segment header and CRC-framed records.
//!
//! ```text
//! segment header (32 B): magic "TITANWAL" | version u32 | seq u64 | first_index u64 | crc32 u32
//! record frame:          len u32 | crc32 u32 | type u8 | payload (len - 1 bytes)
//!                        crc32 covers the len bytes, the type and the payload
//! Entry      (type 1):   index u64 | term u64 | kind u8 | data
//! HardState  (type 2):   term u64 | vote u64 | commit u64
//! Truncate   (type 3):   from_index u64   (drop entries >= from_index)
//! Snapshot   (type 4):   index u64 | term u64 (a snapshot covers the log up to index)
//! Synced     (type 5):   nonce u64 | synced_bytes u64
//! ```
//! All integers are little-endian. Decoding never panics and never allocates
//! more than the record's checked length.
//!
//! Format version 2: every segment's preamble ends
//! with a `Synced` record carrying a random per-segment nonce, and every
//! write batch ends with a `Synced` record: "when this batch was written,
//! the first `synced_bytes` bytes of this segment were durable". A batch
//! counts only once its trailer is read (a torn batch is dropped whole).
//! Recovery uses these claims, and only those with the segment's nonce (a client
//! value cannot forge one), to tell a torn unsynced tail (no claim covers
//! the bad frame: truncate) from damage to durable data (refuse). Version 1
//! segments (no nonce) are still read with the old, stricter rule, and
//! writing continues in a new version 2 segment. Version 1 binaries refuse
//! version 2 segments ("unsupported format version"): no downgrade.

use crate::raft::{Entry, EntryKind, HardState};

/// Segment file magic.
pub const SEGMENT_MAGIC: &[u8; 8] = b"TITANWAL";
/// Segment format version written by this code.
pub const SEGMENT_VERSION: u32 = 2;
/// Oldest segment format version this code still reads.
pub const MIN_READABLE_SEGMENT_VERSION: u32 = 1;
/// Size of the segment header in bytes.
pub const SEGMENT_HEADER_BYTES: usize = 32;
/// Size of a record frame header (`len` + `crc`) in bytes.
pub const FRAME_HEADER_BYTES: usize = 8;

/// Encoded frame size of a Truncate record (header, type, index).
pub const TRUNCATE_FRAME_BYTES: usize = FRAME_HEADER_BYTES + 1 + 8;
/// Encoded frame size of a HardState record (header, type, term, vote, commit).
pub const HARD_STATE_FRAME_BYTES: usize = FRAME_HEADER_BYTES + 1 + 24;
const TYPE_ENTRY: u8 = 1;
const TYPE_HARD_STATE: u8 = 2;
const TYPE_TRUNCATE: u8 = 3;
const TYPE_SNAPSHOT: u8 = 4;
const TYPE_SYNCED: u8 = 5;
/// Body length of a `Synced` record (type + nonce + synced_bytes).
pub const SYNCED_BODY_BYTES: u32 = 17;

/// One logical WAL record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalRecord {
    /// A Raft log entry.
    Entry(Entry),
    /// The Raft hard state as of this point in the log.
    HardState(HardState),
    /// Entries with `index >= from_index` written earlier are void (a
    /// follower's conflicting suffix).
    Truncate {
        /// First index removed.
        from_index: u64,
    },
    /// A snapshot covers the log up to `index` (written by compaction).
    Snapshot {
        /// Last index the snapshot includes.
        index: u64,
        /// Term of that entry.
        term: u64,
    },
    /// Ends every batch (and starts every segment): the first
    /// `synced_bytes` bytes of this segment were durable when it was written.
    Synced {
        /// The segment's random nonce (set by its preamble record).
        nonce: u64,
        /// Durable length of the segment at write time (0 in the preamble).
        synced_bytes: u64,
    },
}

/// Why a frame could not be decoded. Recovery turns this into either a torn
/// tail or a hard error depending on where it happened.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// Fewer bytes than a frame header, or than the frame's length says.
    #[error("record is cut short: need {needed} bytes, {available} available")]
    Short {
        /// Bytes the frame needs.
        needed: u64,
        /// Bytes actually present.
        available: u64,
    },
    /// The length field is zero or above `max_record_bytes`.
    #[error("record length {len} is outside 1..={max}")]
    BadLength {
        /// The length field as read.
        len: u32,
        /// The configured maximum.
        max: u32,
    },
    /// The checksum does not match.
    #[error("record checksum mismatch (stored {stored:#010x}, computed {computed:#010x})")]
    Checksum {
        /// CRC stored in the frame.
        stored: u32,
        /// CRC computed over the frame.
        computed: u32,
    },
    /// The checksum matches but the body is not a known, well-formed record.
    #[error("malformed record body: {0}")]
    Malformed(&'static str),
}

/// A little-endian cursor over a byte slice that never panics.
pub(crate) struct ByteReader<'a> {
    buf: &'a [u8],
}

impl<'a> ByteReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }
    pub(crate) fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.buf.len() < n {
            return None;
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Some(head)
    }
    pub(crate) fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    pub(crate) fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .and_then(|b| b.try_into().ok())
            .map(u32::from_le_bytes)
    }
    pub(crate) fn u64(&mut self) -> Option<u64> {
        self.take(8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    }
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }
    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }
}

impl WalRecord {
    /// Appends this record's frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        encode_frame(out, |out| self.encode_body(out));
    }

    /// Appends an entry record's frame without cloning the entry.
    pub fn encode_entry_into(e: &Entry, out: &mut Vec<u8>) {
        encode_frame(out, |out| encode_entry_body(e, out));
    }

    fn encode_body(&self, out: &mut Vec<u8>) {
        match self {
            WalRecord::Entry(e) => encode_entry_body(e, out),
            WalRecord::HardState(hs) => {
                out.push(TYPE_HARD_STATE);
                out.extend_from_slice(&hs.term.to_le_bytes());
                out.extend_from_slice(&hs.vote.to_le_bytes());
                out.extend_from_slice(&hs.commit.to_le_bytes());
            }
            WalRecord::Truncate { from_index } => {
                out.push(TYPE_TRUNCATE);
                out.extend_from_slice(&from_index.to_le_bytes());
            }
            WalRecord::Snapshot { index, term } => {
                out.push(TYPE_SNAPSHOT);
                out.extend_from_slice(&index.to_le_bytes());
                out.extend_from_slice(&term.to_le_bytes());
            }
            WalRecord::Synced {
                nonce,
                synced_bytes,
            } => {
                out.push(TYPE_SYNCED);
                out.extend_from_slice(&nonce.to_le_bytes());
                out.extend_from_slice(&synced_bytes.to_le_bytes());
            }
        }
    }

    /// Encoded frame size of an entry record: the shared
    /// [`crate::raft::entry_record_bytes`], which a test checks against
    /// this encoder.
    pub fn entry_frame_bytes(e: &Entry) -> usize {
        e.size_bytes()
    }
}

/// Writes a frame around whatever `body` appends: length, CRC, body.
fn encode_frame(out: &mut Vec<u8>, body: impl FnOnce(&mut Vec<u8>)) {
    let start = out.len();
    out.extend_from_slice(&[0; FRAME_HEADER_BYTES]);
    body(out);
    let len = u32::try_from(out.len() - start - FRAME_HEADER_BYTES).unwrap_or(u32::MAX);
    out[start..start + 4].copy_from_slice(&len.to_le_bytes());
    let crc = frame_crc(&out[start..start + 4], &out[start + FRAME_HEADER_BYTES..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

fn encode_entry_body(e: &Entry, out: &mut Vec<u8>) {
    out.push(TYPE_ENTRY);
    out.extend_from_slice(&e.index.to_le_bytes());
    out.extend_from_slice(&e.term.to_le_bytes());
    out.push(e.kind as u8);
    out.extend_from_slice(&e.data);
}

fn frame_crc(len_bytes: &[u8], body: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(len_bytes);
    h.update(body);
    h.finalize()
}

/// Parses the frame header at the start of `buf`; returns the body length.
/// Checks the length against `max_record_bytes` and the bytes available.
pub fn frame_body_len(buf: &[u8], max_record_bytes: u32) -> Result<usize, FrameError> {
    let mut r = ByteReader::new(buf);
    let len = r.u32().ok_or(FrameError::Short {
        needed: FRAME_HEADER_BYTES as u64,
        available: buf.len() as u64,
    })?;
    if len == 0 || len > max_record_bytes {
        return Err(FrameError::BadLength {
            len,
            max: max_record_bytes,
        });
    }
    Ok(len as usize)
}

/// Decodes one frame from the start of `buf`. Returns the record and the
/// number of bytes it occupied. This is the fuzzed entry point.
pub fn decode_frame(buf: &[u8], max_record_bytes: u32) -> Result<(WalRecord, usize), FrameError> {
    let len = frame_body_len(buf, max_record_bytes)?;
    let total = FRAME_HEADER_BYTES + len;
    if buf.len() < total {
        return Err(FrameError::Short {
            needed: total as u64,
            available: buf.len() as u64,
        });
    }
    let stored = u32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    let body = &buf[FRAME_HEADER_BYTES..total];
    let computed = frame_crc(&buf[0..4], body);
    if stored != computed {
        return Err(FrameError::Checksum { stored, computed });
    }
    Ok((decode_body(body)?, total))
}

fn decode_body(body: &[u8]) -> Result<WalRecord, FrameError> {
    let mut r = ByteReader::new(body);
    let short = FrameError::Malformed("record body too short");
    let rec = match r.u8().ok_or(short.clone())? {
        TYPE_ENTRY => {
            let index = r.u64().ok_or(short.clone())?;
            let term = r.u64().ok_or(short.clone())?;
            let kind = r.u8().ok_or(short.clone())?;
            let kind =
                EntryKind::from_u8(kind).ok_or(FrameError::Malformed("unknown entry kind"))?;
            let data = r.rest().to_vec();
            WalRecord::Entry(Entry {
                index,
                term,
                kind,
                data,
            })
        }
        TYPE_HARD_STATE => WalRecord::HardState(HardState {
            term: r.u64().ok_or(short.clone())?,
            vote: r.u64().ok_or(short.clone())?,
            commit: r.u64().ok_or(short.clone())?,
        }),
        TYPE_TRUNCATE => WalRecord::Truncate {
            from_index: r.u64().ok_or(short.clone())?,
        },
        TYPE_SNAPSHOT => WalRecord::Snapshot {
            index: r.u64().ok_or(short.clone())?,
            term: r.u64().ok_or(short.clone())?,
        },
        TYPE_SYNCED => WalRecord::Synced {
            nonce: r.u64().ok_or(short.clone())?,
            synced_bytes: r.u64().ok_or(short)?,
        },
        _ => return Err(FrameError::Malformed("unknown record type")),
    };
    if !r.is_empty() {
        return Err(FrameError::Malformed("trailing bytes in record"));
    }
    Ok(rec)
}

/// The decoded header at the start of every segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SegmentHeader {
    /// Sequence number; must match the file name.
    pub seq: u64,
    /// Index the next entry had when the segment was created.
    pub first_index: u64,
}

/// Why a segment header is unusable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HeaderError {
    /// Every byte is zero (a pre-allocated or never-written header).
    #[error("segment header is zero-filled")]
    Zeroed,
    /// Bad magic, checksum or version.
    #[error("segment header is invalid: {0}")]
    Invalid(&'static str),
}

impl SegmentHeader {
    /// Encodes the 32-byte header.
    pub fn encode(&self) -> [u8; SEGMENT_HEADER_BYTES] {
        let mut out = [0u8; SEGMENT_HEADER_BYTES];
        out[0..8].copy_from_slice(SEGMENT_MAGIC);
        out[8..12].copy_from_slice(&SEGMENT_VERSION.to_le_bytes());
        out[12..20].copy_from_slice(&self.seq.to_le_bytes());
        out[20..28].copy_from_slice(&self.first_index.to_le_bytes());
        let crc = crc32fast::hash(&out[0..28]);
        out[28..32].copy_from_slice(&crc.to_le_bytes());
        out
    }

    /// Decodes and validates a header.
    pub fn decode(buf: &[u8; SEGMENT_HEADER_BYTES]) -> Result<Self, HeaderError> {
        if buf.iter().all(|b| *b == 0) {
            return Err(HeaderError::Zeroed);
        }
        let mut r = ByteReader::new(buf);
        let bad = HeaderError::Invalid("truncated");
        if r.take(8) != Some(SEGMENT_MAGIC.as_slice()) {
            return Err(HeaderError::Invalid("bad magic"));
        }
        let version = r.u32().ok_or(bad.clone())?;
        let seq = r.u64().ok_or(bad.clone())?;
        let first_index = r.u64().ok_or(bad.clone())?;
        let crc = r.u32().ok_or(bad)?;
        if crc != crc32fast::hash(&buf[0..28]) {
            return Err(HeaderError::Invalid("checksum mismatch"));
        }
        if !(MIN_READABLE_SEGMENT_VERSION..=SEGMENT_VERSION).contains(&version) {
            return Err(HeaderError::Invalid(
                "unsupported format version (written by a newer titan-server?)",
            ));
        }
        Ok(Self { seq, first_index })
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn frame_size_constants_match_the_encoder() {
        use crate::raft::{ENTRY_RECORD_OVERHEAD_BYTES, EntryKind, HardState};
        for len in [0usize, 1, 1000] {
            let e = Entry {
                index: u64::MAX,
                term: 7,
                kind: EntryKind::Normal,
                data: vec![9; len],
            };
            let mut out = Vec::new();
            WalRecord::encode_entry_into(&e, &mut out);
            assert_eq!(out.len(), len + ENTRY_RECORD_OVERHEAD_BYTES);
            assert_eq!(out.len(), WalRecord::entry_frame_bytes(&e));
        }
        let mut out = Vec::new();
        WalRecord::Truncate { from_index: 1 }.encode_into(&mut out);
        assert_eq!(out.len(), TRUNCATE_FRAME_BYTES);
        out.clear();
        WalRecord::HardState(HardState::default()).encode_into(&mut out);
        assert_eq!(out.len(), HARD_STATE_FRAME_BYTES);
    }

    use super::*;

    fn samples() -> Vec<WalRecord> {
        vec![
            WalRecord::Entry(Entry {
                index: 7,
                term: 3,
                kind: EntryKind::Normal,
                data: b"payload".to_vec(),
            }),
            WalRecord::Entry(Entry {
                index: 8,
                term: 3,
                kind: EntryKind::Noop,
                data: Vec::new(),
            }),
            WalRecord::HardState(HardState {
                term: 3,
                vote: 2,
                commit: 7,
            }),
            WalRecord::Truncate { from_index: 5 },
            WalRecord::Snapshot { index: 4, term: 2 },
            WalRecord::Synced {
                nonce: 0xfeed,
                synced_bytes: 4096,
            },
        ]
    }

    #[test]
    fn every_record_kind_round_trips() {
        for rec in samples() {
            let mut buf = Vec::new();
            rec.encode_into(&mut buf);
            assert_eq!(decode_frame(&buf, 1 << 20), Ok((rec, buf.len())));
        }
    }

    #[test]
    fn any_flipped_bit_is_detected() {
        let mut buf = Vec::new();
        samples()[0].encode_into(&mut buf);
        for byte in 0..buf.len() {
            for bit in 0..8 {
                let mut bad = buf.clone();
                bad[byte] ^= 1 << bit;
                assert!(
                    decode_frame(&bad, 1 << 20).is_err(),
                    "byte {byte} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn length_beyond_limit_or_buffer_is_rejected_without_allocating() {
        let mut buf = u32::MAX.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 4]);
        assert!(matches!(
            decode_frame(&buf, 1 << 20),
            Err(FrameError::BadLength { .. })
        ));
        let mut buf = 100u32.to_le_bytes().to_vec();
        buf.extend_from_slice(&[0; 10]);
        assert!(matches!(
            decode_frame(&buf, 1 << 20),
            Err(FrameError::Short { .. })
        ));
        assert!(matches!(
            decode_frame(&[0; 8], 1 << 20),
            Err(FrameError::BadLength { len: 0, .. })
        ));
    }

    #[test]
    fn segment_header_round_trips_and_rejects_zeroes_and_flips() {
        let h = SegmentHeader {
            seq: 9,
            first_index: 1234,
        };
        let enc = h.encode();
        assert_eq!(SegmentHeader::decode(&enc), Ok(h));
        assert_eq!(
            SegmentHeader::decode(&[0; SEGMENT_HEADER_BYTES]),
            Err(HeaderError::Zeroed)
        );
        let mut bad = enc;
        bad[15] ^= 1;
        assert!(matches!(
            SegmentHeader::decode(&bad),
            Err(HeaderError::Invalid(_))
        ));
    }
}
