//! The state machine's command codec: client commands as carried in Raft
//! entries. Pure and
//! panic-free on any input; every count is checked against the bytes left
//! before anything is allocated for it.
//!
//! Command encoding (first byte = tag):
//! ```text
//! 1 Put     | cond | key_len u32 | key | value (rest)      (titan.v1, TCP)
//! 2 Delete  | cond | key_len u32 | key                    (titan.v1, TCP)
//! 3 Txn     | txn                                         (etcd KV)
//! 4 Compact | revision i64                                (etcd KV)
//! 5 LeaseGrant  | id i64 | ttl_s i64                      (etcd Lease)
//! 6 LeaseRevoke | id i64                                  (etcd Lease; also expiry)
//! cond:  0 none | 1 expected-version u64 | 2 must-be-absent
//! txn:   n u32, n × compare | n u32, n × op | n u32, n × op   (success, failure)
//! compare: result u8 | target u8 | key bytes | range_end bytes | operand
//!          (bytes for a value compare, i64 otherwise)
//! op:    1 range  | key | range_end | limit revision i64 | sort order u8
//!                 | sort target u8 | flags u8 | min/max mod, min/max create i64
//!        2 put    | key | value | lease i64 | flags u8
//!        3 delete | key | range_end | flags u8
//!        4 txn    | txn
//! bytes: len u32 | data;   all integers little-endian
//! ```
//! Tags 1 and 2 are the pre-MVCC format: old WAL entries still decode.
//!
//! An entry payload may wrap one command in a proposer tag, written by a
//! follower that forwarded the command to the leader so it recognises the
//! entry when it applies it (the state machine ignores the tag):
//! ```text
//! 7 Proposer | node id u64 | nonce u64 | command
//! ```
//!
//! The snapshot body's layout (key histories, the lease table) is in the
//! `titan-snapfile` crate; `snapshot_codec` maps the store onto it.

use super::mvcc::{
    Compare, CompareResult, CompareTarget, DeleteRangeRequest, MAX_TXN_DEPTH, PutRequest,
    RangeRequest, RequestOp, SortOrder, SortTarget, TxnRequest,
};
use super::state_machine::DecodeError;
use super::wal_record::ByteReader;

/// A precondition on a titan.v1/TCP write, checked against the key's
/// current `mod_revision` (the "version" of the titan.v1 API).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Condition {
    /// Unconditional.
    None,
    /// The key must exist with exactly this mod_revision.
    ExpectedVersion(u64),
    /// The key must not exist.
    MustBeAbsent,
}

/// A client write as carried in a Normal entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Set `key` to `value` if `cond` holds.
    Put {
        /// The key.
        key: Vec<u8>,
        /// The new value.
        value: Vec<u8>,
        /// Precondition.
        cond: Condition,
    },
    /// Remove `key` if `cond` holds.
    Delete {
        /// The key.
        key: Vec<u8>,
        /// Precondition.
        cond: Condition,
    },
    /// An etcd transaction (Put, DeleteRange and Txn all travel as one).
    Txn(TxnRequest),
    /// Drop history below a revision.
    Compact(i64),
    /// Grant a lease (the proposer chose the id and raised the TTL).
    LeaseGrant {
        /// Lease id (never 0).
        id: i64,
        /// TTL in seconds.
        ttl_s: i64,
    },
    /// Revoke a lease and delete its keys (a client revoke or an expiry).
    LeaseRevoke(i64),
}

const OP_PUT: u8 = 1;
const OP_DELETE: u8 = 2;
const OP_TXN: u8 = 3;
const OP_COMPACT: u8 = 4;
const OP_LEASE_GRANT: u8 = 5;
const OP_LEASE_REVOKE: u8 = 6;
const OP_PROPOSER: u8 = 7;
/// Bytes the proposer tag adds in front of a command.
pub const PROPOSER_TAG_BYTES: usize = 17;

/// Who proposed an entry: a member and its per-write nonce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProposerTag {
    /// The member that forwarded the command.
    pub node: u64,
    /// Unique per forwarded write on that member.
    pub nonce: u64,
}

impl ProposerTag {
    /// `command` (an encoded [`Command`]) wrapped in this tag.
    pub fn wrap(&self, command: &[u8]) -> Vec<u8> {
        let mut out = Vec::with_capacity(PROPOSER_TAG_BYTES + command.len());
        out.push(OP_PROPOSER);
        out.extend_from_slice(&self.node.to_le_bytes());
        out.extend_from_slice(&self.nonce.to_le_bytes());
        out.extend_from_slice(command);
        out
    }

    /// The tag an entry payload carries, if any.
    pub fn of(payload: &[u8]) -> Option<ProposerTag> {
        if payload.first() != Some(&OP_PROPOSER) {
            return None;
        }
        let mut r = ByteReader::new(&payload[1..]);
        Some(ProposerTag {
            node: r.u64()?,
            nonce: r.u64()?,
        })
    }
}

/// The command bytes of an entry payload: past a proposer tag if there is
/// a whole one, else the payload itself.
pub fn command_bytes(payload: &[u8]) -> &[u8] {
    match ProposerTag::of(payload) {
        Some(_) => &payload[PROPOSER_TAG_BYTES..],
        None => payload,
    }
}

const REQ_RANGE: u8 = 1;
const REQ_PUT: u8 = 2;
const REQ_DELETE: u8 = 3;
const REQ_TXN: u8 = 4;

impl Condition {
    fn encode_into(&self, out: &mut Vec<u8>) {
        match self {
            Condition::None => out.push(0),
            Condition::ExpectedVersion(v) => {
                out.push(1);
                out.extend_from_slice(&v.to_le_bytes());
            }
            Condition::MustBeAbsent => out.push(2),
        }
    }

    fn decode(r: &mut ByteReader<'_>) -> Result<Self, DecodeError> {
        match r.u8().ok_or(DecodeError::Short)? {
            0 => Ok(Condition::None),
            1 => Ok(Condition::ExpectedVersion(
                r.u64().ok_or(DecodeError::Short)?,
            )),
            2 => Ok(Condition::MustBeAbsent),
            t => Err(DecodeError::UnknownTag(t)),
        }
    }
}

impl Command {
    /// The entry payload.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::new();
        match self {
            Command::Put { key, value, cond } => {
                out.reserve(14 + key.len() + value.len());
                out.push(OP_PUT);
                cond.encode_into(&mut out);
                put_bytes(&mut out, key);
                out.extend_from_slice(value);
            }
            Command::Delete { key, cond } => {
                out.push(OP_DELETE);
                cond.encode_into(&mut out);
                put_bytes(&mut out, key);
            }
            Command::Txn(t) => {
                out.push(OP_TXN);
                encode_txn(&mut out, t);
            }
            Command::Compact(rev) => {
                out.push(OP_COMPACT);
                out.extend_from_slice(&rev.to_le_bytes());
            }
            Command::LeaseGrant { id, ttl_s } => {
                out.push(OP_LEASE_GRANT);
                put_i64s(&mut out, &[*id, *ttl_s]);
            }
            Command::LeaseRevoke(id) => {
                out.push(OP_LEASE_REVOKE);
                put_i64s(&mut out, &[*id]);
            }
        }
        out
    }

    /// Encodes a [`Command::Txn`] without owning the request.
    pub fn encode_txn(t: &TxnRequest) -> Vec<u8> {
        let mut out = vec![OP_TXN];
        encode_txn(&mut out, t);
        out
    }

    /// Inverse of [`Command::encode`]; never panics.
    pub fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let mut r = ByteReader::new(buf);
        let cmd = match r.u8().ok_or(DecodeError::Short)? {
            op @ (OP_PUT | OP_DELETE) => return decode_legacy(op, &mut r),
            OP_TXN => Command::Txn(decode_txn(&mut r, 0)?),
            OP_COMPACT => Command::Compact(i64_(&mut r)?),
            OP_LEASE_GRANT => Command::LeaseGrant {
                id: i64_(&mut r)?,
                ttl_s: i64_(&mut r)?,
            },
            OP_LEASE_REVOKE => Command::LeaseRevoke(i64_(&mut r)?),
            t => return Err(DecodeError::UnknownTag(t)),
        };
        if !r.is_empty() {
            return Err(DecodeError::Trailing);
        }
        Ok(cmd)
    }
}

/// The lease command an entry payload carries, if it is one (the node's
/// lease clock follows grants and revokes without decoding other entries).
pub fn lease_command(payload: &[u8]) -> Option<Command> {
    let buf = command_bytes(payload);
    match buf.first() {
        Some(&(OP_LEASE_GRANT | OP_LEASE_REVOKE)) => Command::decode(buf).ok(),
        _ => None,
    }
}

fn decode_legacy(op: u8, r: &mut ByteReader<'_>) -> Result<Command, DecodeError> {
    let cond = Condition::decode(r)?;
    let key = bytes(r)?;
    if op == OP_PUT {
        return Ok(Command::Put {
            key,
            value: r.rest().to_vec(),
            cond,
        });
    }
    if !r.is_empty() {
        return Err(DecodeError::Trailing);
    }
    Ok(Command::Delete { key, cond })
}

fn put_bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn put_i64s(out: &mut Vec<u8>, vs: &[i64]) {
    for v in vs {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

fn flags(bits: &[bool]) -> u8 {
    bits.iter()
        .enumerate()
        .fold(0, |acc, (i, b)| acc | (u8::from(*b) << i))
}

fn encode_txn(out: &mut Vec<u8>, t: &TxnRequest) {
    out.extend_from_slice(&(t.compare.len() as u32).to_le_bytes());
    for c in &t.compare {
        encode_compare(out, c);
    }
    for ops in [&t.success, &t.failure] {
        out.extend_from_slice(&(ops.len() as u32).to_le_bytes());
        for op in ops {
            encode_op(out, op);
        }
    }
}

fn encode_compare(out: &mut Vec<u8>, c: &Compare) {
    out.push(match c.result {
        CompareResult::Equal => 0,
        CompareResult::Greater => 1,
        CompareResult::Less => 2,
        CompareResult::NotEqual => 3,
    });
    let (tag, operand) = match &c.target {
        CompareTarget::Version(v) => (0, *v),
        CompareTarget::Create(v) => (1, *v),
        CompareTarget::Mod(v) => (2, *v),
        CompareTarget::Value(_) => (3, 0),
        CompareTarget::Lease(v) => (4, *v),
    };
    out.push(tag);
    put_bytes(out, &c.key);
    put_bytes(out, &c.range_end);
    match &c.target {
        CompareTarget::Value(v) => put_bytes(out, v),
        _ => put_i64s(out, &[operand]),
    }
}

fn encode_op(out: &mut Vec<u8>, op: &RequestOp) {
    match op {
        RequestOp::Range(r) => {
            out.push(REQ_RANGE);
            put_bytes(out, &r.key);
            put_bytes(out, &r.range_end);
            put_i64s(out, &[r.limit, r.revision]);
            out.push(r.sort_order as u8);
            out.push(r.sort_target as u8);
            out.push(flags(&[r.keys_only, r.count_only]));
            let filters = [
                r.min_mod_revision,
                r.max_mod_revision,
                r.min_create_revision,
                r.max_create_revision,
            ];
            put_i64s(out, &filters);
        }
        RequestOp::Put(p) => {
            out.push(REQ_PUT);
            put_bytes(out, &p.key);
            put_bytes(out, &p.value);
            put_i64s(out, &[p.lease]);
            out.push(flags(&[p.prev_kv, p.ignore_value, p.ignore_lease]));
        }
        RequestOp::DeleteRange(d) => {
            out.push(REQ_DELETE);
            put_bytes(out, &d.key);
            put_bytes(out, &d.range_end);
            out.push(flags(&[d.prev_kv]));
        }
        RequestOp::Txn(t) => {
            out.push(REQ_TXN);
            encode_txn(out, t);
        }
    }
}

fn bytes(r: &mut ByteReader<'_>) -> Result<Vec<u8>, DecodeError> {
    let len = r.u32().ok_or(DecodeError::Short)? as usize;
    Ok(r.take(len).ok_or(DecodeError::Short)?.to_vec())
}

fn i64_(r: &mut ByteReader<'_>) -> Result<i64, DecodeError> {
    Ok(r.u64().ok_or(DecodeError::Short)? as i64)
}

fn bit(f: u8, i: u8) -> bool {
    f & (1 << i) != 0
}

/// A count whose elements take at least one byte each: never more than the
/// bytes left, so a hostile count cannot force a large allocation.
fn count(r: &mut ByteReader<'_>) -> Result<usize, DecodeError> {
    let n = r.u32().ok_or(DecodeError::Short)? as usize;
    let left = r.remaining();
    if n > left {
        return Err(DecodeError::Short);
    }
    Ok(n)
}

fn decode_txn(r: &mut ByteReader<'_>, depth: usize) -> Result<TxnRequest, DecodeError> {
    if depth > MAX_TXN_DEPTH {
        return Err(DecodeError::UnknownTag(REQ_TXN));
    }
    let n = count(r)?;
    let mut compare = Vec::with_capacity(n);
    for _ in 0..n {
        compare.push(decode_compare(r)?);
    }
    let mut branches = [Vec::new(), Vec::new()];
    for ops in &mut branches {
        let n = count(r)?;
        ops.reserve(n);
        for _ in 0..n {
            ops.push(decode_op(r, depth)?);
        }
    }
    let [success, failure] = branches;
    Ok(TxnRequest {
        compare,
        success,
        failure,
    })
}

fn decode_compare(r: &mut ByteReader<'_>) -> Result<Compare, DecodeError> {
    let result = match r.u8().ok_or(DecodeError::Short)? {
        0 => CompareResult::Equal,
        1 => CompareResult::Greater,
        2 => CompareResult::Less,
        3 => CompareResult::NotEqual,
        t => return Err(DecodeError::UnknownTag(t)),
    };
    let tag = r.u8().ok_or(DecodeError::Short)?;
    let key = bytes(r)?;
    let range_end = bytes(r)?;
    let target = match tag {
        0 => CompareTarget::Version(i64_(r)?),
        1 => CompareTarget::Create(i64_(r)?),
        2 => CompareTarget::Mod(i64_(r)?),
        3 => CompareTarget::Value(bytes(r)?),
        4 => CompareTarget::Lease(i64_(r)?),
        t => return Err(DecodeError::UnknownTag(t)),
    };
    Ok(Compare {
        result,
        target,
        key,
        range_end,
    })
}

fn decode_op(r: &mut ByteReader<'_>, depth: usize) -> Result<RequestOp, DecodeError> {
    Ok(match r.u8().ok_or(DecodeError::Short)? {
        REQ_RANGE => RequestOp::Range(decode_range(r)?),
        REQ_PUT => {
            let (key, value, lease) = (bytes(r)?, bytes(r)?, i64_(r)?);
            let f = r.u8().ok_or(DecodeError::Short)?;
            RequestOp::Put(PutRequest {
                key,
                value,
                lease,
                prev_kv: bit(f, 0),
                ignore_value: bit(f, 1),
                ignore_lease: bit(f, 2),
            })
        }
        REQ_DELETE => {
            let (key, range_end) = (bytes(r)?, bytes(r)?);
            let f = r.u8().ok_or(DecodeError::Short)?;
            RequestOp::DeleteRange(DeleteRangeRequest {
                key,
                range_end,
                prev_kv: bit(f, 0),
            })
        }
        REQ_TXN => RequestOp::Txn(decode_txn(r, depth + 1)?),
        t => return Err(DecodeError::UnknownTag(t)),
    })
}

fn decode_range(r: &mut ByteReader<'_>) -> Result<RangeRequest, DecodeError> {
    let (key, range_end) = (bytes(r)?, bytes(r)?);
    let (limit, revision) = (i64_(r)?, i64_(r)?);
    let sort_order = match r.u8().ok_or(DecodeError::Short)? {
        0 => SortOrder::None,
        1 => SortOrder::Ascend,
        2 => SortOrder::Descend,
        t => return Err(DecodeError::UnknownTag(t)),
    };
    let sort_target = match r.u8().ok_or(DecodeError::Short)? {
        0 => SortTarget::Key,
        1 => SortTarget::Version,
        2 => SortTarget::Create,
        3 => SortTarget::Mod,
        4 => SortTarget::Value,
        t => return Err(DecodeError::UnknownTag(t)),
    };
    let f = r.u8().ok_or(DecodeError::Short)?;
    Ok(RangeRequest {
        key,
        range_end,
        limit,
        revision,
        sort_order,
        sort_target,
        keys_only: bit(f, 0),
        count_only: bit(f, 1),
        min_mod_revision: i64_(r)?,
        max_mod_revision: i64_(r)?,
        min_create_revision: i64_(r)?,
        max_create_revision: i64_(r)?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample_txn() -> TxnRequest {
        TxnRequest {
            compare: vec![
                Compare {
                    result: CompareResult::Greater,
                    target: CompareTarget::Mod(7),
                    key: b"a".to_vec(),
                    range_end: b"b".to_vec(),
                },
                Compare {
                    result: CompareResult::NotEqual,
                    target: CompareTarget::Value(b"v".to_vec()),
                    key: b"k".to_vec(),
                    range_end: Vec::new(),
                },
            ],
            success: vec![
                RequestOp::Put(PutRequest {
                    key: b"k".to_vec(),
                    value: b"v2".to_vec(),
                    lease: 0,
                    prev_kv: true,
                    ignore_value: false,
                    ignore_lease: true,
                }),
                RequestOp::Range(RangeRequest {
                    key: b"a".to_vec(),
                    range_end: vec![0],
                    limit: 3,
                    sort_order: SortOrder::Descend,
                    sort_target: SortTarget::Mod,
                    count_only: true,
                    max_create_revision: 9,
                    ..RangeRequest::default()
                }),
            ],
            failure: vec![
                RequestOp::DeleteRange(DeleteRangeRequest {
                    key: b"x".to_vec(),
                    range_end: b"y".to_vec(),
                    prev_kv: true,
                }),
                RequestOp::Txn(TxnRequest::default()),
            ],
        }
    }

    #[test]
    fn every_command_kind_round_trips() {
        let cmds = [
            Command::Put {
                key: b"k".to_vec(),
                value: b"v v".to_vec(),
                cond: Condition::ExpectedVersion(4),
            },
            Command::Delete {
                key: b"k".to_vec(),
                cond: Condition::MustBeAbsent,
            },
            Command::Txn(sample_txn()),
            Command::Compact(42),
            Command::LeaseGrant {
                id: 0x1234_5678,
                ttl_s: 60,
            },
            Command::LeaseRevoke(-3),
        ];
        for cmd in cmds {
            assert_eq!(Command::decode(&cmd.encode()), Ok(cmd));
        }
    }

    #[test]
    fn txn_decode_rejects_every_truncation_and_trailing_bytes() {
        let buf = Command::Txn(sample_txn()).encode();
        for cut in 0..buf.len() {
            assert!(Command::decode(&buf[..cut]).is_err(), "cut {cut}");
        }
        let mut long = buf.clone();
        long.push(0);
        assert_eq!(Command::decode(&long), Err(DecodeError::Trailing));
    }

    #[test]
    fn a_huge_count_is_refused_before_allocating() {
        let mut buf = vec![OP_TXN];
        buf.extend_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(Command::decode(&buf), Err(DecodeError::Short));
    }

    #[test]
    fn txn_nesting_beyond_the_limit_is_refused() {
        let mut t = TxnRequest::default();
        for _ in 0..=MAX_TXN_DEPTH + 1 {
            t = TxnRequest {
                success: vec![RequestOp::Txn(t)],
                ..TxnRequest::default()
            };
        }
        assert!(Command::decode(&Command::Txn(t).encode()).is_err());
    }

    #[test]
    fn lease_commands_are_recognised_and_other_entries_are_not() {
        let grant = Command::LeaseGrant { id: 7, ttl_s: 5 };
        assert_eq!(lease_command(&grant.encode()), Some(grant));
        assert_eq!(lease_command(&Command::Compact(3).encode()), None);
        assert_eq!(lease_command(&[OP_LEASE_REVOKE, 1]), None, "truncated");
    }

    /// A proposer tag wraps any command: the tag reads back, the command
    /// bytes behind it decode as before (lease commands too), and a cut
    /// tag is no tag, so its payload fails to decode instead of running.
    #[test]
    fn a_proposer_tag_wraps_a_command_and_a_cut_tag_is_refused() {
        let tag = ProposerTag {
            node: 3,
            nonce: u64::MAX - 1,
        };
        let grant = Command::LeaseGrant { id: 9, ttl_s: 5 };
        for cmd in [
            Command::Txn(sample_txn()),
            Command::Compact(8),
            grant.clone(),
        ] {
            let payload = tag.wrap(&cmd.encode());
            assert_eq!(ProposerTag::of(&payload), Some(tag));
            assert_eq!(Command::decode(command_bytes(&payload)), Ok(cmd));
        }
        assert_eq!(lease_command(&tag.wrap(&grant.encode())), Some(grant));
        let plain = Command::Compact(8).encode();
        assert_eq!(
            (ProposerTag::of(&plain), command_bytes(&plain)),
            (None, &plain[..])
        );
        let payload = tag.wrap(&plain);
        for cut in 0..PROPOSER_TAG_BYTES {
            assert_eq!(ProposerTag::of(&payload[..cut]), None, "cut {cut}");
            assert!(
                Command::decode(command_bytes(&payload[..cut])).is_err(),
                "cut {cut}"
            );
        }
    }
}
