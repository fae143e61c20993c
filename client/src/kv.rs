//! Key-value operations over `etcdserverpb.KV`: get, put, delete, range,
//! the compare-and-set helpers (each one etcd txn) and general txns.
//!
//! The client's "version" of a key is its etcd `mod_revision`; a CAS
//! compares it inside a txn whose failure branch reads the key back, so a
//! conflict reports the current version in the same round trip.

use crate::client::{Client, OnUnknown};
use crate::error::Result;
use crate::txn::{Compare, CompareField, CompareOp, Txn, TxnOp, TxnOpResult, TxnResult};
use crate::types::{
    CasResult, Consistency, DeleteResult, KeyValue, RangePage, RangeQuery, revision_u64,
};
use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::kv_client::KvClient;

/// The store revision in a response header (0 when absent).
fn header_revision(header: Option<pb::ResponseHeader>) -> u64 {
    revision_u64(header.map_or(0, |h| h.revision))
}

/// A txn that writes `write` if `compares` hold, else reads `key` back.
fn cas_txn(key: &[u8], compares: Vec<Compare>, write: TxnOp) -> Txn {
    Txn {
        compares,
        success: vec![write],
        failure: vec![TxnOp::Get {
            key: key.to_vec(),
            prefix: false,
        }],
    }
}

/// "The key exists and its version (mod_revision) is `v`".
fn at_version(key: &[u8], v: u64) -> Vec<Compare> {
    let v = i64::try_from(v).unwrap_or(i64::MAX);
    vec![
        Compare::new(key, CompareOp::Greater, CompareField::Create(0)),
        Compare::new(key, CompareOp::Equal, CompareField::Mod(v)),
    ]
}

/// The version a failed CAS read back (0 = absent).
fn current_version(result: &TxnResult) -> u64 {
    match result.results.first() {
        Some(TxnOpResult::Get(kvs)) => kvs.first().map_or(0, |kv| kv.version),
        _ => 0,
    }
}

impl Client {
    /// Reads `key`. Returns the value and its version, or `None` if absent.
    pub async fn get(
        &self,
        key: impl Into<Vec<u8>>,
        consistency: Consistency,
    ) -> Result<Option<(Vec<u8>, u64)>> {
        let req = pb::RangeRequest {
            key: key.into(),
            serializable: consistency.serializable(),
            ..Default::default()
        };
        let page = self.range_pb(req).await?;
        Ok(page.kvs.into_iter().next().map(|kv| (kv.value, kv.version)))
    }

    /// Writes `key = value` unconditionally; returns the new version.
    ///
    /// Returns [`crate::Error::OutcomeUnknown`] if the request was sent and
    /// no answer came back; it is not retried then, since that could apply it
    /// twice around someone else's write.
    pub async fn put(&self, key: impl Into<Vec<u8>>, value: impl Into<Vec<u8>>) -> Result<u64> {
        self.put_with_lease(key, value, 0).await
    }

    /// Like [`Client::put`], attaching the key to lease `lease` (0 = none).
    /// The key is deleted when the lease is revoked or expires. A lease that
    /// does not exist is refused (`Rejected` with `NOT_FOUND`).
    pub async fn put_with_lease(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        lease: i64,
    ) -> Result<u64> {
        let req = pb::PutRequest {
            key: key.into(),
            value: value.into(),
            lease,
            ..Default::default()
        };
        let done = self
            .run(OnUnknown::Fail("put"), &req.key, |channel| {
                let req = req.clone();
                async move { KvClient::new(channel).put(req).await }
            })
            .await?;
        Ok(header_revision(done.value.header))
    }

    /// Deletes `key` unconditionally (succeeds also when it did not exist).
    /// Like [`Client::put`], never retried after an unknown outcome.
    pub async fn delete(&self, key: impl Into<Vec<u8>>) -> Result<DeleteResult> {
        let req = pb::DeleteRangeRequest {
            key: key.into(),
            ..Default::default()
        };
        let done = self
            .run(OnUnknown::Fail("delete"), &req.key, |channel| {
                let req = req.clone();
                async move { KvClient::new(channel).delete_range(req).await }
            })
            .await?;
        Ok(DeleteResult {
            existed: done.value.deleted > 0,
            version: header_revision(done.value.header),
        })
    }

    /// Writes `key = value` only if the key's version is `expected_version`.
    ///
    /// Safe under unknown outcomes: the client retries (a second execution
    /// would fail the condition) and, if the retry reports a conflict, reads the
    /// key back: if it now holds `value`, the earlier attempt applied and
    /// `Applied` is returned with the key's current version.
    pub async fn put_if_version(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
        expected_version: u64,
    ) -> Result<CasResult> {
        let key = key.into();
        let compares = at_version(&key, expected_version);
        self.conditional_put(key, value.into(), compares).await
    }

    /// Writes `key = value` only if the key does not exist. Unknown outcomes
    /// are resolved as for [`Client::put_if_version`].
    pub async fn put_if_absent(
        &self,
        key: impl Into<Vec<u8>>,
        value: impl Into<Vec<u8>>,
    ) -> Result<CasResult> {
        let key = key.into();
        let absent = vec![Compare::new(
            key.as_slice(),
            CompareOp::Equal,
            CompareField::Create(0),
        )];
        self.conditional_put(key, value.into(), absent).await
    }

    /// Deletes `key` only if its version is `expected_version`.
    ///
    /// After an unknown outcome the client retries; if the retry conflicts
    /// because the key is now absent, the earlier attempt is taken to have
    /// applied and `Applied { version: 0 }` is returned (the delete's own
    /// revision is then not known).
    pub async fn delete_if_version(
        &self,
        key: impl Into<Vec<u8>>,
        expected_version: u64,
    ) -> Result<CasResult> {
        let key = key.into();
        let write = TxnOp::Delete {
            key: key.clone(),
            prefix: false,
        };
        let txn = cas_txn(&key, at_version(&key, expected_version), write);
        let done = self.send_txn(&txn, &key, OnUnknown::RetryAndFlag).await?;
        let current = current_version(&done.value);
        Ok(match (done.value.succeeded, done.after_unknown, current) {
            (true, _, _) => CasResult::Applied {
                version: done.value.revision,
            },
            (false, true, 0) => CasResult::Applied { version: 0 },
            (false, _, current_version) => CasResult::Conflict { current_version },
        })
    }

    /// Reads a key range or prefix (see [`RangeQuery`]).
    pub async fn range(&self, query: RangeQuery) -> Result<RangePage> {
        self.range_pb(query.to_pb()).await
    }

    /// Runs a transaction. Never retried after an unknown outcome (a branch
    /// may hold unconditional writes): that is [`crate::Error::OutcomeUnknown`].
    pub async fn txn(&self, txn: &Txn) -> Result<TxnResult> {
        let key = txn
            .compares
            .first()
            .map(|c| c.key.clone())
            .unwrap_or_default();
        Ok(self
            .send_txn(txn, &key, OnUnknown::Fail("txn"))
            .await?
            .value)
    }

    async fn range_pb(&self, req: pb::RangeRequest) -> Result<RangePage> {
        let done = self
            .run(OnUnknown::Retry, &req.key, |channel| {
                let req = req.clone();
                async move { KvClient::new(channel).range(req).await }
            })
            .await?;
        let resp = done.value;
        Ok(RangePage {
            kvs: resp.kvs.into_iter().map(KeyValue::from_pb).collect(),
            more: resp.more,
            revision: resp.header.map_or(0, |h| h.revision),
        })
    }

    async fn send_txn(
        &self,
        txn: &Txn,
        key: &[u8],
        on_unknown: OnUnknown,
    ) -> Result<crate::client::Attempted<TxnResult>> {
        let req = txn.to_pb();
        let done = self
            .run(on_unknown, key, |channel| {
                let req = req.clone();
                async move { KvClient::new(channel).txn(req).await }
            })
            .await?;
        Ok(crate::client::Attempted {
            value: TxnResult::from_pb(done.value),
            after_unknown: done.after_unknown,
        })
    }

    async fn conditional_put(
        &self,
        key: Vec<u8>,
        value: Vec<u8>,
        compares: Vec<Compare>,
    ) -> Result<CasResult> {
        let write = TxnOp::Put {
            key: key.clone(),
            value: value.clone(),
            lease: 0,
        };
        let txn = cas_txn(&key, compares, write);
        let done = self.send_txn(&txn, &key, OnUnknown::RetryAndFlag).await?;
        if done.value.succeeded {
            return Ok(CasResult::Applied {
                version: done.value.revision,
            });
        }
        if !done.after_unknown {
            return Ok(CasResult::Conflict {
                current_version: current_version(&done.value),
            });
        }
        // An earlier attempt may have applied: the current value tells.
        match self.get(key, Consistency::Linearizable).await? {
            Some((current, version)) if current == value => Ok(CasResult::Applied { version }),
            Some((_, version)) => Ok(CasResult::Conflict {
                current_version: version,
            }),
            None => Ok(CasResult::Conflict { current_version: 0 }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_cas_reports_the_version_it_read_back() {
        let kv = KeyValue {
            key: b"k".to_vec(),
            value: b"v".to_vec(),
            version: 9,
            create_revision: 3,
            modifications: 2,
            lease: 0,
        };
        let read_back = TxnResult {
            succeeded: false,
            revision: 12,
            results: vec![TxnOpResult::Get(vec![kv])],
        };
        assert_eq!(current_version(&read_back), 9);
        let absent = TxnResult {
            succeeded: false,
            revision: 12,
            results: vec![TxnOpResult::Get(Vec::new())],
        };
        assert_eq!(current_version(&absent), 0);
    }

    #[test]
    fn a_version_compare_also_requires_the_key_to_exist() {
        let compares = at_version(b"k", 0);
        assert_eq!(
            compares,
            vec![
                Compare::new("k", CompareOp::Greater, CompareField::Create(0)),
                Compare::new("k", CompareOp::Equal, CompareField::Mod(0)),
            ]
        );
    }
}
