//! Leases over `etcdserverpb.Lease`: grant, revoke, keep-alive, time to
//! live and the list of leases. Keys put with a lease
//! ([`Client::put_with_lease`]) vanish when it is revoked or expires.
//!
//! Retry rules: grant (the server picks the id) and revoke are writes and
//! never resent after an unknown outcome; keep-alive, time-to-live and the
//! list are idempotent and retried like reads. A follower forwards every
//! lease call to the leader, so any endpoint works.

use crate::client::{Client, OnUnknown};
use crate::error::{Error, Result};
use titan_proto::etcdserverpb as pb;
use titan_proto::etcdserverpb::lease_client::LeaseClient;

/// A granted lease.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LeaseGrant {
    /// The lease id (to attach keys, keep alive, revoke).
    pub id: i64,
    /// The TTL the server granted, in seconds (it may raise a tiny one).
    pub ttl_s: i64,
}

/// What the leader knows about one lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeaseInfo {
    /// The lease id.
    pub id: i64,
    /// Seconds left before it expires; -1 when the lease does not exist
    /// (never granted, revoked or expired), as etcd reports it.
    pub remaining_s: i64,
    /// The TTL it was granted with, in seconds (0 when it does not exist).
    pub granted_ttl_s: i64,
    /// The keys attached to it, when asked for.
    pub keys: Vec<Vec<u8>>,
}

impl LeaseInfo {
    /// Whether the lease exists.
    pub fn exists(&self) -> bool {
        self.remaining_s >= 0
    }
}

/// The key used to label a lease in errors.
fn lease_label(id: i64) -> Vec<u8> {
    format!("lease {id:x}").into_bytes()
}

impl Client {
    /// Grants a lease of `ttl_s` seconds with a server-chosen id.
    pub async fn lease_grant(&self, ttl_s: i64) -> Result<LeaseGrant> {
        let req = pb::LeaseGrantRequest { ttl: ttl_s, id: 0 };
        let done = self
            .run(OnUnknown::Fail("lease grant"), b"", |channel| async move {
                LeaseClient::new(channel).lease_grant(req).await
            })
            .await?;
        let resp = done.value;
        if !resp.error.is_empty() {
            return Err(Error::Rejected {
                code: tonic::Code::FailedPrecondition,
                message: resp.error,
            });
        }
        Ok(LeaseGrant {
            id: resp.id,
            ttl_s: resp.ttl,
        })
    }

    /// Revokes lease `id`, deleting every key attached to it in one
    /// revision. A lease that does not exist is `Rejected` with `NOT_FOUND`.
    pub async fn lease_revoke(&self, id: i64) -> Result<()> {
        let req = pb::LeaseRevokeRequest { id };
        self.run(
            OnUnknown::Fail("lease revoke"),
            &lease_label(id),
            |channel| async move { LeaseClient::new(channel).lease_revoke(req).await },
        )
        .await?;
        Ok(())
    }

    /// Refreshes lease `id` once (one keep-alive on a short-lived stream);
    /// returns its TTL in seconds, or 0 when the lease no longer exists.
    /// Call it well within the TTL (etcd clients use a third of it).
    pub async fn lease_keep_alive_once(&self, id: i64) -> Result<i64> {
        let done = self
            .run(OnUnknown::Retry, &lease_label(id), |channel| async move {
                let once = futures::stream::iter([pb::LeaseKeepAliveRequest { id }]);
                let resp = LeaseClient::new(channel).lease_keep_alive(once).await?;
                let mut answers = resp.into_inner();
                match answers.message().await? {
                    Some(answer) => Ok(tonic::Response::new(answer)),
                    None => Err(tonic::Status::unavailable(
                        "keep-alive stream closed without an answer; not applied",
                    )),
                }
            })
            .await?;
        Ok(done.value.ttl)
    }

    /// The lease's remaining and granted TTL, and its keys when `keys`.
    pub async fn lease_time_to_live(&self, id: i64, keys: bool) -> Result<LeaseInfo> {
        let req = pb::LeaseTimeToLiveRequest { id, keys };
        let done = self
            .run(OnUnknown::Retry, &lease_label(id), |channel| async move {
                LeaseClient::new(channel).lease_time_to_live(req).await
            })
            .await?;
        let resp = done.value;
        Ok(LeaseInfo {
            id,
            remaining_s: resp.ttl,
            granted_ttl_s: resp.granted_ttl,
            keys: resp.keys,
        })
    }

    /// The ids of every live lease.
    pub async fn leases(&self) -> Result<Vec<i64>> {
        let done = self
            .run(OnUnknown::Retry, b"", |channel| async move {
                LeaseClient::new(channel)
                    .lease_leases(pb::LeaseLeasesRequest {})
                    .await
            })
            .await?;
        Ok(done.value.leases.into_iter().map(|l| l.id).collect())
    }
}
