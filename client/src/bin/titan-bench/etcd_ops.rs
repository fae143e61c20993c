//! The etcd v3 KV requests titan-bench sends: one code path for Titan's etcd
//! API (`--target titan-etcd`) and for etcd itself (`--target etcd`), so both
//! systems get byte-identical requests. The request builders and the reading
//! of a Txn reply are pure and unit-tested; [`etcd_op`] sends them.

use crate::conn::{Op, OpError, OpSettings, Outcome, grpc_error};
use titan_proto::etcdserverpb as etcdpb;
use tonic::transport::Channel;

use etcdpb::compare::{CompareResult, CompareTarget, TargetUnion};
use etcdpb::request_op::Request;
use etcdpb::response_op::Response;

/// etcd's range end for "every key starting with `prefix`": the prefix with
/// its last byte below 0xff incremented and the rest dropped; `\0` (every key
/// from `prefix` on) when all bytes are 0xff or the prefix is empty.
pub fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0]
}

/// A single-key read (`--op get`).
pub fn get_request(key: &str, serializable: bool) -> etcdpb::RangeRequest {
    etcdpb::RangeRequest {
        key: key.as_bytes().to_vec(),
        serializable,
        ..Default::default()
    }
}

/// A paged prefix read (`--op range`): from `key` to `range_end`, at most
/// `limit` keys, like one page of a kube-apiserver LIST.
pub fn range_request(
    key: &str,
    range_end: &[u8],
    limit: i64,
    serializable: bool,
) -> etcdpb::RangeRequest {
    etcdpb::RangeRequest {
        key: key.as_bytes().to_vec(),
        range_end: range_end.to_vec(),
        limit,
        serializable,
        ..Default::default()
    }
}

/// The kube-apiserver's optimistic update: `If(mod_revision(key) ==
/// expected) Then(Put key value) Else(Get key)`. With `expected == 0` this is
/// its create (`the key must not exist`).
pub fn txn_request(key: &str, value: &[u8], expected_mod_revision: i64) -> etcdpb::TxnRequest {
    let key = key.as_bytes().to_vec();
    etcdpb::TxnRequest {
        compare: vec![etcdpb::Compare {
            result: CompareResult::Equal as i32,
            target: CompareTarget::Mod as i32,
            key: key.clone(),
            range_end: Vec::new(),
            target_union: Some(TargetUnion::ModRevision(expected_mod_revision)),
        }],
        success: vec![etcdpb::RequestOp {
            request: Some(Request::RequestPut(etcdpb::PutRequest {
                key: key.clone(),
                value: value.to_vec(),
                ..Default::default()
            })),
        }],
        failure: vec![etcdpb::RequestOp {
            request: Some(Request::RequestRange(etcdpb::RangeRequest {
                key,
                ..Default::default()
            })),
        }],
    }
}

/// What a Txn reply says about the key: the put's revision when the compare
/// held, else the key's current `mod_revision` from the failure branch's Get
/// (0 when the key does not exist). None if the reply lacks what it must carry.
pub fn txn_outcome(resp: &etcdpb::TxnResponse) -> Option<Outcome> {
    if resp.succeeded {
        let revision = resp.header.as_ref()?.revision;
        return Some(Outcome::Txn {
            succeeded: true,
            mod_revision: revision,
        });
    }
    let mod_revision = match resp.responses.first()?.response.as_ref()? {
        Response::ResponseRange(range) => range.kvs.first().map_or(0, |kv| kv.mod_revision),
        _ => return None,
    };
    Some(Outcome::Txn {
        succeeded: false,
        mod_revision,
    })
}

/// Keys per page of [`list_revisions`].
const LIST_PAGE_KEYS: i64 = 1000;

/// The mod_revision of every key under `prefix`, by paged keys-only Ranges
/// (the LIST a kube-apiserver's cache starts from). Bounded by the key count.
pub async fn list_revisions(
    addr: &str,
    prefix: &str,
) -> anyhow::Result<std::collections::HashMap<String, i64>> {
    let ch = crate::conn::channel(addr)
        .await
        .map_err(|e| anyhow::anyhow!("cannot connect to {addr}: {e:?}"))?;
    let mut kv = etcdpb::kv_client::KvClient::new(ch);
    let end = prefix_end(prefix.as_bytes());
    let mut from = prefix.as_bytes().to_vec();
    let mut out = std::collections::HashMap::new();
    loop {
        let req = etcdpb::RangeRequest {
            key: from.clone(),
            range_end: end.clone(),
            limit: LIST_PAGE_KEYS,
            keys_only: true,
            ..Default::default()
        };
        let resp = kv.range(req).await?.into_inner();
        for item in &resp.kvs {
            out.insert(
                String::from_utf8_lossy(&item.key).into_owned(),
                item.mod_revision,
            );
        }
        match resp.kvs.last() {
            Some(last) if resp.more => from = next_key(&last.key),
            _ => return Ok(out),
        }
    }
}

/// The smallest key after `key`.
pub fn next_key(key: &[u8]) -> Vec<u8> {
    let mut next = key.to_vec();
    next.push(0);
    next
}

/// Sends one operation over etcd's KV service.
pub async fn etcd_op(
    mut kv: etcdpb::kv_client::KvClient<Channel>,
    op: &Op,
    s: &OpSettings,
) -> Result<Outcome, OpError> {
    let result = match op {
        Op::Put { key } => {
            let req = etcdpb::PutRequest {
                key: key.clone().into(),
                value: s.value.as_bytes().to_vec(),
                ..Default::default()
            };
            kv.put(req).await.map(|_| Outcome::Done)
        }
        Op::Get { key } => kv
            .range(get_request(key, s.serializable))
            .await
            .map(|_| Outcome::Done),
        Op::Range { key } => kv
            .range(range_request(
                key,
                &s.range_end,
                s.range_limit,
                s.serializable,
            ))
            .await
            .map(|_| Outcome::Done),
        Op::Txn {
            key,
            expected_mod_revision,
        } => {
            let req = txn_request(key, s.value.as_bytes(), *expected_mod_revision);
            let resp = kv.txn(req).await.map_err(|status| grpc_error(&status))?;
            return txn_outcome(resp.get_ref()).ok_or(OpError::Failed("bad_txn_reply"));
        }
        Op::Cas { .. } => return Err(OpError::Failed("unsupported")),
    };
    result.map_err(|status| grpc_error(&status))
}

#[cfg(test)]
mod tests {
    use super::*;
    use titan_proto::mvccpb;

    #[test]
    fn prefix_end_increments_the_last_byte_below_0xff() {
        assert_eq!(prefix_end(b"bench/"), b"bench0".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
        assert_eq!(prefix_end(b"\xff\xff"), vec![0]);
        assert_eq!(prefix_end(b""), vec![0]);
    }

    #[test]
    fn next_key_is_the_key_with_a_zero_byte() {
        assert_eq!(next_key(b"k/1"), b"k/1\0".to_vec());
        assert!(next_key(b"k/1").as_slice() > &b"k/1"[..]);
        assert!(next_key(b"k/1").as_slice() < &b"k/10"[..]);
    }

    #[test]
    fn range_request_carries_the_page_bounds() {
        let r = range_request("k/00000005", b"k0", 10, true);
        assert_eq!(
            (r.key.as_slice(), r.range_end.as_slice()),
            (&b"k/00000005"[..], &b"k0"[..])
        );
        assert_eq!((r.limit, r.serializable), (10, true));
    }

    #[test]
    fn txn_compares_mod_revision_then_puts_else_gets() {
        let t = txn_request("k/1", b"v", 42);
        let c = &t.compare[0];
        assert_eq!(c.result, CompareResult::Equal as i32);
        assert_eq!(c.target, CompareTarget::Mod as i32);
        assert_eq!(c.target_union, Some(TargetUnion::ModRevision(42)));
        assert!(matches!(
            &t.success[0].request,
            Some(Request::RequestPut(p)) if p.key == b"k/1" && p.value == b"v"
        ));
        assert!(matches!(
            &t.failure[0].request,
            Some(Request::RequestRange(r)) if r.key == b"k/1" && r.range_end.is_empty()
        ));
    }

    fn header(revision: i64) -> Option<etcdpb::ResponseHeader> {
        Some(etcdpb::ResponseHeader {
            revision,
            ..Default::default()
        })
    }

    #[test]
    fn a_successful_txn_reports_the_put_revision() {
        let resp = etcdpb::TxnResponse {
            header: header(77),
            succeeded: true,
            ..Default::default()
        };
        assert_eq!(
            txn_outcome(&resp),
            Some(Outcome::Txn {
                succeeded: true,
                mod_revision: 77
            })
        );
    }

    #[test]
    fn a_failed_txn_reports_the_current_mod_revision_or_zero_when_absent() {
        let range = |kvs: Vec<mvccpb::KeyValue>| etcdpb::TxnResponse {
            header: header(90),
            succeeded: false,
            responses: vec![etcdpb::ResponseOp {
                response: Some(Response::ResponseRange(etcdpb::RangeResponse {
                    kvs,
                    ..Default::default()
                })),
            }],
        };
        let kv = mvccpb::KeyValue {
            mod_revision: 12,
            ..Default::default()
        };
        let failed = |mod_revision| {
            Some(Outcome::Txn {
                succeeded: false,
                mod_revision,
            })
        };
        assert_eq!(txn_outcome(&range(vec![kv])), failed(12));
        assert_eq!(txn_outcome(&range(vec![])), failed(0));
        let empty = etcdpb::TxnResponse::default();
        assert_eq!(txn_outcome(&empty), None);
    }
}
