//! The `grpc_request` fuzz target's body (see [`crate::fuzzing`]). It lives
//! here because only `transport/` may know the protobuf types: it decodes a
//! `titan.v1.KV` request body as tonic would and runs the service's own edge
//! conversion (`kv_service::*_from_pb`) on it.
//!
//! Properties: decoding never panics; a decoded message re-encodes to bytes
//! that decode to the same message; the edge keeps keys, values and
//! conditions exactly; a range is bounded (`1..=MAX_RANGE_LIMIT`) and a
//! prefix range covers exactly the keys with that prefix; a refused request
//! says why with `INVALID_ARGUMENT` or `RESOURCE_EXHAUSTED`; and every value
//! the edge accepts can later be served over TCP as exactly one reply line.

use prost::Message;
use tonic::{Code, Status};

use titan_proto::v1 as pb;

use super::kv_service::{MAX_RANGE_LIMIT, delete_from_pb, get_from_pb, put_from_pb, range_from_pb};
use crate::api::protocol::Reply;
use crate::node::{Condition, ReadQuery, WriteOp};

/// Runs one input: `selector u8 | protobuf body`.
pub fn kv_request(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    match selector % 4 {
        0 => {
            if let Some(r) = decode_round_trip::<pb::GetRequest>(body) {
                let key = r.key.clone();
                if let Some((k, _)) = accepted(get_from_pb(r)) {
                    assert_eq!(k, key);
                }
            }
        }
        1 => {
            if let Some(r) = decode_round_trip::<pb::PutRequest>(body) {
                check_put(r);
            }
        }
        2 => {
            if let Some(r) = decode_round_trip::<pb::DeleteRequest>(body) {
                check_delete(r);
            }
        }
        _ => {
            if let Some(r) = decode_round_trip::<pb::RangeRequest>(body) {
                check_range(r);
            }
        }
    }
}

fn decode_round_trip<M: Message + Default + PartialEq>(body: &[u8]) -> Option<M> {
    let msg = M::decode(body).ok()?;
    let again = M::decode(msg.encode_to_vec().as_slice());
    assert!(again.is_ok_and(|m| m == msg), "protobuf round trip differs");
    Some(msg)
}

/// `Some` for an accepted request; a refusal must carry a client error code.
fn accepted<T>(r: Result<T, Status>) -> Option<T> {
    match r {
        Ok(v) => Some(v),
        Err(s) => {
            assert!(
                matches!(s.code(), Code::InvalidArgument | Code::ResourceExhausted),
                "refused with {:?}: {}",
                s.code(),
                s.message()
            );
            assert!(!s.message().is_empty());
            None
        }
    }
}

fn cond_matches(pb_cond: Option<&pb::Condition>, cond: Condition) -> bool {
    let want = match pb_cond.and_then(|c| c.kind.as_ref()) {
        Some(pb::condition::Kind::ExpectedVersion(v)) => Condition::ExpectedVersion(*v),
        Some(pb::condition::Kind::MustBeAbsent(true)) => Condition::MustBeAbsent,
        _ => Condition::None,
    };
    want == cond
}

fn check_put(r: pb::PutRequest) {
    let (key, value, pb_cond) = (r.key.clone(), r.value.clone(), r.condition);
    match accepted(put_from_pb(r)) {
        Some(WriteOp::Put {
            key: k,
            value: v,
            cond,
        }) => {
            assert!(k == key && v == value && cond_matches(pb_cond.as_ref(), cond));
            // The stored value will be served by `GET` over TCP.
            crate::fuzzing::assert_one_line(&Reply::Value(v));
        }
        Some(other) => panic!("a Put became {other:?}"),
        None => {}
    }
}

fn check_delete(r: pb::DeleteRequest) {
    let (key, pb_cond) = (r.key.clone(), r.condition);
    match accepted(delete_from_pb(r)) {
        Some(WriteOp::Delete { key: k, cond }) => {
            assert!(k == key && cond_matches(pb_cond.as_ref(), cond));
        }
        Some(other) => panic!("a Delete became {other:?}"),
        None => {}
    }
}

fn check_range(r: pb::RangeRequest) {
    let prefix = r.prefix.clone();
    let Some((query, _)) = accepted(range_from_pb(r)) else {
        return;
    };
    let ReadQuery::Range {
        start, end, limit, ..
    } = query
    else {
        panic!("a Range became {query:?}");
    };
    assert!((1..=MAX_RANGE_LIMIT).contains(&limit), "limit {limit}");
    if prefix.is_empty() {
        return;
    }
    let in_range = |k: &[u8]| k >= &start[..] && (end.is_empty() || k < &end[..]);
    let with_prefix = [prefix.as_slice(), &[0xff; 3]].concat();
    assert!(in_range(&prefix) && in_range(&with_prefix));
    // The first key after the prefix space is outside the range.
    if !end.is_empty() {
        assert!(!end.starts_with(&prefix) && !in_range(&end));
    }
}

/// One valid body per call, prefixed with its selector.
pub fn seeds() -> Vec<Vec<u8>> {
    let cond = |kind| Some(pb::Condition { kind: Some(kind) });
    let with = |selector: u8, body: Vec<u8>| [vec![selector], body].concat();
    vec![
        with(
            0,
            pb::GetRequest {
                key: b"k".to_vec(),
                consistency: pb::Consistency::Serializable as i32,
            }
            .encode_to_vec(),
        ),
        with(
            1,
            pb::PutRequest {
                key: b"k".to_vec(),
                value: b"v".to_vec(),
                condition: cond(pb::condition::Kind::ExpectedVersion(3)),
            }
            .encode_to_vec(),
        ),
        with(
            2,
            pb::DeleteRequest {
                key: b"k".to_vec(),
                condition: cond(pb::condition::Kind::MustBeAbsent(true)),
            }
            .encode_to_vec(),
        ),
        with(
            3,
            pb::RangeRequest {
                prefix: b"user:\xff".to_vec(),
                limit: 20_000,
                ..Default::default()
            }
            .encode_to_vec(),
        ),
        with(
            3,
            pb::RangeRequest {
                start: b"a".to_vec(),
                end: b"b".to_vec(),
                ..Default::default()
            }
            .encode_to_vec(),
        ),
    ]
}
