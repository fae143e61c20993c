//! [`AdminClient`]: the `titan.v1.Admin` service (status, membership,
//! leadership transfer, snapshots) as `titanctl` and operators use it. Admin
//! is served on each node's peer port (default 5001).

use crate::backoff::{Backoff, jitter_seed};
use crate::config::ClientConfig;
use crate::error::{Error, Result};
use crate::pool::ChannelPool;
use crate::redirect::{Failure, classify};
use std::future::Future;
use std::time::Instant;
use titan_proto::v1 as pb;
use titan_proto::v1::admin_client::AdminClient as PbAdmin;
use tonic::transport::Channel;

/// Admin API client. Status calls go to one named node; membership and
/// leadership calls are sent to the leader found through `Status`.
#[derive(Debug)]
pub struct AdminClient {
    /// Endpoints (peer ports) and retry bounds.
    config: ClientConfig,
    /// One channel per admin endpoint.
    pool: ChannelPool,
}

impl AdminClient {
    /// Validates the config; dials nothing yet.
    pub fn connect(config: ClientConfig) -> Result<Self> {
        let pool = ChannelPool::for_config(&config)?;
        Ok(AdminClient { config, pool })
    }

    /// The configured admin endpoints.
    pub fn endpoints(&self) -> &[String] {
        &self.config.endpoints
    }

    /// `Status` of the node at `endpoint` (one attempt, request timeout).
    pub async fn status_of(&self, endpoint: &str) -> Result<pb::StatusResponse> {
        self.once(endpoint, |mut admin| async move {
            admin.status(pb::StatusRequest {}).await
        })
        .await
    }

    /// `Status` of the first configured endpoint that answers.
    pub async fn status_any(&self) -> Result<(String, pb::StatusResponse)> {
        let mut last = String::from("no endpoint tried");
        for endpoint in &self.config.endpoints {
            match self.status_of(endpoint).await {
                Ok(status) => return Ok((endpoint.clone(), status)),
                Err(err) => last = format!("{endpoint}: {err}"),
            }
        }
        Err(Error::RetriesExhausted {
            attempts: self.config.endpoints.len() as u32,
            elapsed_ms: 0,
            last,
        })
    }

    /// `TakeSnapshot` on the node at `endpoint`.
    pub async fn take_snapshot(&self, endpoint: &str) -> Result<pb::TakeSnapshotResponse> {
        self.once(endpoint, |mut admin| async move {
            admin.take_snapshot(pb::TakeSnapshotRequest {}).await
        })
        .await
    }

    /// `MergeValueLog` on the node at `endpoint`.
    pub async fn merge_value_log(&self, endpoint: &str) -> Result<pb::MergeValueLogResponse> {
        self.once(endpoint, |mut admin| async move {
            admin.merge_value_log(pb::MergeValueLogRequest {}).await
        })
        .await
    }

    /// Adds a member as a learner (on the leader).
    pub async fn add_member(&self, req: pb::AddMemberRequest) -> Result<pb::MembershipResponse> {
        self.on_leader(|mut admin| {
            let req = req.clone();
            async move { admin.add_member(req).await }
        })
        .await
    }

    /// Promotes a learner to voter (on the leader).
    pub async fn promote_member(&self, id: u64) -> Result<pb::MembershipResponse> {
        self.on_leader(|mut admin| async move {
            admin.promote_member(pb::PromoteMemberRequest { id }).await
        })
        .await
    }

    /// Removes a member (on the leader).
    pub async fn remove_member(&self, id: u64) -> Result<pb::MembershipResponse> {
        self.on_leader(|mut admin| async move {
            admin.remove_member(pb::RemoveMemberRequest { id }).await
        })
        .await
    }

    /// Asks the leader to hand leadership to `target_id` (0 = its choice).
    pub async fn transfer_leadership(
        &self,
        target_id: u64,
    ) -> Result<pb::TransferLeadershipResponse> {
        self.on_leader(|mut admin| async move {
            admin
                .transfer_leadership(pb::TransferLeadershipRequest { target_id })
                .await
        })
        .await
    }

    /// The leader's admin (peer) address, from any node's `Status`.
    pub async fn leader_endpoint(&self) -> Result<String> {
        let (endpoint, status) = self.status_any().await?;
        if status.leader_id == 0 || status.leader_peer_addr.is_empty() {
            return Err(Error::RetriesExhausted {
                attempts: 1,
                elapsed_ms: 0,
                last: format!("{endpoint} knows no leader"),
            });
        }
        Ok(status.leader_peer_addr)
    }

    /// Runs a leader-only call: find the leader, call it; on `NOT_LEADER` or a
    /// refused connection, rediscover and retry within the retry bounds.
    /// Membership changes are idempotent at the server (adding an existing
    /// member or removing a missing one is rejected, not repeated), so an
    /// unknown outcome is retried too.
    async fn on_leader<T, F, Fut>(&self, mut f: F) -> Result<T>
    where
        F: FnMut(PbAdmin<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let retry = &self.config.retry;
        let started = Instant::now();
        let mut backoff = Backoff::new(retry.backoff_min, retry.backoff_max, jitter_seed());
        let mut last = String::from("no attempt made");
        for attempt in 1..=retry.max_attempts {
            if started.elapsed() >= retry.overall_deadline {
                break;
            }
            match self.leader_endpoint().await {
                Ok(leader) => match self.try_once(&leader, &mut f).await {
                    Ok(value) => return Ok(value),
                    Err(Failure::Permanent(code, message)) => {
                        return Err(Error::Rejected { code, message });
                    }
                    Err(failure) => last = format!("attempt {attempt} on {leader}: {failure:?}"),
                },
                Err(err) => last = err.to_string(),
            }
            tokio::time::sleep(backoff.next_delay()).await;
        }
        Err(Error::RetriesExhausted {
            attempts: retry.max_attempts,
            elapsed_ms: started.elapsed().as_millis() as u64,
            last,
        })
    }

    async fn once<T, F, Fut>(&self, endpoint: &str, mut f: F) -> Result<T>
    where
        F: FnMut(PbAdmin<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        match self.try_once(endpoint, &mut f).await {
            Ok(value) => Ok(value),
            Err(Failure::Permanent(code, message)) => Err(Error::Rejected { code, message }),
            Err(failure) => Err(Error::RetriesExhausted {
                attempts: 1,
                elapsed_ms: 0,
                last: format!("{endpoint}: {failure:?}"),
            }),
        }
    }

    async fn try_once<T, F, Fut>(
        &self,
        endpoint: &str,
        f: &mut F,
    ) -> std::result::Result<T, Failure>
    where
        F: FnMut(PbAdmin<Channel>) -> Fut,
        Fut: Future<Output = std::result::Result<tonic::Response<T>, tonic::Status>>,
    {
        let channel = self
            .pool
            .get(endpoint)
            .await
            .map_err(Failure::NotExecuted)?;
        let timeout = self.config.request_timeout;
        match tokio::time::timeout(timeout, f(PbAdmin::new(channel))).await {
            Ok(Ok(resp)) => Ok(resp.into_inner()),
            Ok(Err(status)) => {
                let failure = classify(&status);
                if !matches!(failure, Failure::Permanent(..) | Failure::NotLeader { .. }) {
                    self.pool.evict(endpoint);
                }
                Err(failure)
            }
            Err(_) => {
                self.pool.evict(endpoint);
                Err(Failure::Unknown(format!(
                    "no reply from {endpoint} within {timeout:?}"
                )))
            }
        }
    }
}
